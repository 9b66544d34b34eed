"""Rule evaluate: score every predictor of the pair against the measured benchmark change."""

import json

import pandas as pd

from mneme.evaluation import evaluate_pair
from mneme.logs import setup_logging


def main(smk) -> None:
    log = setup_logging(smk.log[0])
    context = smk.input.get("context_categories")
    result = evaluate_pair(
        pd.read_parquet(smk.input.base),
        pd.read_parquet(smk.input.finetuned),
        attribution=pd.read_parquet(smk.input.attribution),
        category_mass=pd.read_parquet(smk.input.category_mass),
        activation_diff=pd.read_parquet(smk.input.activation_diff),
        labels=pd.read_parquet(smk.input.categories),
        context_membership=pd.read_parquet(context) if context else None,
        target=smk.params.target,
        meta={"pair": smk.wildcards.pair},
        **smk.params.options,
    )
    with open(smk.output[0], "w") as fh:
        json.dump(result, fh, indent=2, allow_nan=False)
    for name, p in result["predictors"].items():
        m, s = p["metrics"]["all"], p["metrics"]["side_effects"]
        log.info(
            "%-20s all: acc %s f1 %s auroc %s | side effects: acc %s f1 %s auroc %s",
            name,
            *(round(v, 3) if isinstance(v, float) else v for v in (m["accuracy"], m["f1"], m.get("auroc"))),
            *(round(v, 3) if isinstance(v, float) else v for v in (s["accuracy"], s["f1"], s.get("auroc"))),
        )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
