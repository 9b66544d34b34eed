"""Rule evaluate: score the pair's category prediction against the measured benchmark change."""

import json

import pandas as pd

from mneme.evaluation import evaluate_pair
from mneme.logs import setup_logging


def main(smk) -> None:
    log = setup_logging(smk.log[0])
    opts = dict(smk.params.options)
    result = evaluate_pair(
        pd.read_parquet(smk.input.base),
        pd.read_parquet(smk.input.finetuned),
        pd.read_parquet(smk.input.categories),
        attribution=pd.read_parquet(smk.input.attribution),
        category_mass=pd.read_parquet(smk.input.category_mass),
        meta={"pair": smk.wildcards.pair},
        **opts,
    )
    with open(smk.output[0], "w") as fh:
        json.dump(result, fh, indent=2, allow_nan=False)
    for name, m in result["metrics"].items():
        log.info(
            "%-28s accuracy %s precision %s recall %s f1 %s",
            name,
            m.get("accuracy"),
            m.get("precision"),
            m.get("recall"),
            m.get("f1"),
        )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
