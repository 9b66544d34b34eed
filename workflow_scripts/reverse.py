"""Rule reverse: retrain the fine-tuned model on the contexts of a side-effect category's latents
(and on a random control) and measure how much of the side effect comes back."""

import json
import logging

import pandas as pd

from mneme.evaluation import to_jsonable
from mneme.latent_stats import read_topk
from mneme.logs import set_threads, setup_logging
from mneme.reversal import run_reversal

log = logging.getLogger("mneme.reverse")


def category_means(results: pd.DataFrame, task: str) -> dict[str, float]:
    """Mean score per category of one benchmark task (the evaluation's ground-truth task)."""
    rows = results[results["task"] == task]
    return {str(c): float(v) for c, v in rows.groupby("category")["score"].mean().items()}


def reversal_categories(evaluation: dict, requested: list[str] | None, target: list[str]) -> list[str]:
    """The configured categories, else the predicted side effects (predicted, not the target)."""
    if requested is not None:
        return list(requested)
    return [
        r["category"] for r in evaluation["per_category"] if r["prediction"] and r["category"] not in target
    ]


def make_scorer(smk, collected: list[pd.DataFrame]):
    """score_fn(model, tokenizer) -> {category: mean score} on the pair's benchmark items.

    The items are rebuilt from the same config as the benchmark rule (deterministic), so the
    retrained models are scored on exactly the items the base and fine-tuned models were.
    """
    bench, task = smk.params.benchmark, smk.params.task
    kind = bench["kind"]
    if kind == "gcide":
        from mneme.benchmark import items_from_options, score_loaded

        items = items_from_options(dict(smk.params.gcide), bench)

        def score(model, tokenizer) -> dict[str, float]:
            res = score_loaded(model, tokenizer, items, bench["batch_size"], bench["max_len"], tasks=[task])
            collected.append(res)
            return category_means(res, task)

        return score
    if kind == "mmlu":
        from mneme.mmlu import load_items, score_loaded

        local = {"categories": smk.input.mmlu_categories, "path": smk.input.get("mmlu_data")}
        items, shots = load_items({**bench, "mmlu": {**bench["mmlu"], **local}})

        def score(model, tokenizer) -> dict[str, float]:
            res = score_loaded(model, tokenizer, items, shots, bench["batch_size"], bench["mmlu"]["max_len"])
            collected.append(res)
            return category_means(res, task)

        return score
    raise ValueError(f"benchmark.kind {kind!r}: the reversal stage re-scores models itself (gcide or mmlu)")


def main(smk) -> None:
    setup_logging(smk.log[0])
    set_threads(smk.threads)
    opts = dict(smk.params.options)
    requested = opts.pop("categories")
    target = list(smk.params.target)
    with open(smk.input.evaluation) as fh:
        evaluation = json.load(fh)
    cats = reversal_categories(evaluation, requested, target)
    log.info("reversal categories %s (target %s)", cats, target)
    task = smk.params.task
    collected: list[pd.DataFrame] = []
    result = run_reversal(
        smk.input.finetuned,
        smk.input.tokens,
        pd.read_parquet(smk.input.attribution),
        pd.read_parquet(smk.input.categories),
        pd.read_parquet(smk.input.category_mass),
        read_topk(smk.input.topk),
        cats,
        make_scorer(smk, collected),
        category_means(pd.read_parquet(smk.input.base_results), task),
        category_means(pd.read_parquet(smk.input.ft_results), task),
        target_categories=target,
        options=opts,
        device="auto",
    )
    result.update(pair=smk.wildcards.pair, task=task, target=target, requested=requested)
    with open(smk.output.result, "w") as fh:
        json.dump(to_jsonable(result), fh, indent=2, allow_nan=False)
    runs = [(c, arm) for c in result["categories"] if c["status"] == "ok" for arm in ("targeted", "control")]
    frames = [
        df.assign(reversal_category=c["category"], arm=arm)
        for (c, arm), df in zip(runs, collected, strict=True)
    ]
    items = (
        pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["reversal_category", "arm"])
    )
    items.to_parquet(smk.output.scored, index=False)
    for c in result["categories"]:
        log.info(
            "%s: %s R targeted %s control %s",
            c["category"],
            c["status"],
            c.get("recovery_targeted"),
            c.get("recovery_control"),
        )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
