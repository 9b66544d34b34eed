"""Rule suite: every predictor's metrics over the config's pairs, and the sensitivity grid."""

import json

import pandas as pd

from mneme.logs import setup_logging
from mneme.suite import sensitivity, suite_table


def main(smk) -> None:
    log = setup_logging(smk.log[0])
    inputs = {}
    for pair in smk.params.pairs:
        with open(smk.input[f"{pair}.evaluation"]) as fh:
            files = {"evaluation": json.load(fh)}
        for key in ("attribution", "category_mass", "activation_diff"):
            files[key] = pd.read_parquet(smk.input[f"{pair}.{key}"])
        files["labels"] = pd.read_parquet(smk.input[f"{pair}.categories"])
        context = f"{pair}.context_categories"
        if context in smk.input.keys():
            files["context_membership"] = pd.read_parquet(smk.input[context])
        inputs[pair] = files
    holdout = smk.params.holdout
    table = suite_table({p: f["evaluation"] for p, f in inputs.items()}, holdout)
    table.to_csv(smk.output.table, sep="\t", index=False)
    mean = table[table["pair"].str.startswith("mean") & (table["scope"] == "side_effects")]
    log.info(
        "side effects, mean over %d pairs (%d held out):\n%s",
        len(inputs),
        len(holdout),
        mean.to_string(index=False),
    )
    if not smk.params.robust:
        log.warning(
            "attribution.mode is not robust: the sensitivity grid (robust mode) marks no row as this run's"
        )
    grid = sensitivity(
        inputs,
        general_category=smk.params.general,
        holdout=holdout,
        defaults=smk.params.defaults if smk.params.robust else None,
        eligibility=smk.params.eligibility,
    )
    grid.to_csv(smk.output.sensitivity, sep="\t", index=False)
    log.info("sensitivity:\n%s", grid.to_string(index=False))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
