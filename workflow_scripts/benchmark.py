"""Rule benchmark: item-level scores of one model on the built-in GCIDE category tasks."""

from mneme.benchmark import build_items, score_model, summarise
from mneme.logs import set_threads, setup_logging


def main(smk) -> None:
    log = setup_logging(smk.log[0])
    set_threads(smk.threads)
    opts = smk.params.options
    items = build_items(
        dict(smk.params.gcide),
        categories=opts["categories"],
        n_per_category=opts["n_per_category"],
        n_choices=opts["n_choices"],
        seed=opts["seed"],
    )
    log.info("%d items in %d categories", len(items), items["category"].nunique())
    results = score_model(smk.input.model, items, batch_size=opts["batch_size"], max_len=opts["max_len"])
    results.to_parquet(smk.output.results, index=False)
    summary = summarise(results)
    summary.to_csv(smk.output.summary, sep="\t", index=False)
    log.info("per-category scores:\n%s", summary.to_string(index=False))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
