"""Rule benchmark: scores of one model per category, by `benchmark.kind`.

gcide: item-level scores on the built-in GCIDE tasks; mmlu: item-level MMLU answers;
lm_eval: per-task accuracies imported from the model's lm-evaluation-harness results file.
"""

from mneme.benchmark import items_from_options, score_model, summarise
from mneme.logs import set_threads, setup_logging


def gcide(smk, opts, log):
    items = items_from_options(dict(smk.params.gcide), opts)
    log.info("%d items in %d categories, tasks %s", len(items), items["category"].nunique(), opts["tasks"])
    results = score_model(
        smk.input.model, items, batch_size=opts["batch_size"], max_len=opts["max_len"], tasks=opts["tasks"]
    )
    return results, summarise(results)


def mmlu(smk, opts, log):
    from mneme import mmlu

    local = {"categories": smk.input.mmlu_categories, "path": smk.input.get("mmlu_data")}
    results = mmlu.run(smk.input.model, {**opts, "mmlu": {**opts["mmlu"], **local}})
    return results, summarise(results)


def lm_eval(smk, opts, log):
    from mneme import lm_eval_results, mmlu

    lm = opts["lm_eval"]
    results = lm_eval_results.read_task_results(
        smk.input.results,
        task_categories=lm["task_categories"],
        subject_map=mmlu.load_subject_map(smk.input.mmlu_categories),
        metric=lm["metric"],
        n_samples=lm["n_samples"],
    )
    log.info(
        "%d tasks from %s in %d categories", len(results), smk.input.results, results["category"].nunique()
    )
    return results, lm_eval_results.summarise(results)


def main(smk) -> None:
    log = setup_logging(smk.log[0])
    opts = smk.params.options
    if opts["kind"] != "lm_eval":
        set_threads(smk.threads)
    results, summary = {"gcide": gcide, "mmlu": mmlu, "lm_eval": lm_eval}[opts["kind"]](smk, opts, log)
    results.to_parquet(smk.output.results, index=False)
    summary.to_csv(smk.output.summary, sep="\t", index=False)
    log.info("per-category scores:\n%s", summary.to_string(index=False))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
