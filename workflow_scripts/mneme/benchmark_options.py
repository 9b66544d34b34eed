"""What the benchmark stage needs from the config: the rule's params and its inputs per kind.

Kept apart from :mod:`mneme.benchmark` (and free of pandas and torch) because the workflow imports
it while parsing the Snakefile, on every `snakemake` call.
"""

from __future__ import annotations

from collections.abc import Callable

KINDS = ("gcide", "mmlu", "lm_eval")
_GCIDE_KEYS = (
    "categories",
    "n_per_category",
    "n_general",
    "n_choices",
    "seed",
    "batch_size",
    "max_len",
    "tasks",
)


def kind_options(bench: dict) -> dict:
    """The part of the config's ``benchmark`` section the configured kind uses (the rule's params),
    so that editing another kind's settings does not re-run the benchmark.

    ``lm_eval.files`` is left out: each model's file is an input of its own job.
    """
    kind = bench["kind"]
    if kind == "gcide":
        return {"kind": kind, **{k: bench[k] for k in _GCIDE_KEYS}}
    if kind == "mmlu":
        return {"kind": kind, "seed": bench["seed"], "batch_size": bench["batch_size"], "mmlu": bench["mmlu"]}
    if kind == "lm_eval":
        lm = {k: v for k, v in bench["lm_eval"].items() if k != "files"}
        return {"kind": kind, "lm_eval": lm, "mmlu": {"categories": bench["mmlu"]["categories"]}}
    raise ValueError(f"benchmark.kind: unknown kind {kind!r}; known: {list(KINDS)}")


def mmlu_inputs(bench: dict, resolve: Callable[[str], str]) -> dict:
    """The MMLU category file, and the local MMLU data when given (``mmlu_data``)."""
    out = {"mmlu_categories": resolve(bench["mmlu"]["categories"])}
    if bench["mmlu"]["path"]:
        out["mmlu_data"] = resolve(bench["mmlu"]["path"])
    return out


def kind_inputs(bench: dict, model: str, model_dir: str, resolve: Callable[[str], str]) -> dict:
    """Named inputs of one model's benchmark job besides the code (the GCIDE category file is
    the rule's own): the prepared model (gcide, mmlu), the MMLU category file (mmlu, lm_eval),
    the local MMLU data when given (mmlu) and the model's results file (lm_eval, no model).

    ``resolve`` turns a config path into one that exists (:func:`mneme.config.resolve_path`
    bound to the workflow directory).
    """
    kind = bench["kind"]
    if kind == "gcide":
        return {"model": model_dir}
    if kind == "mmlu":
        return {"model": model_dir, **mmlu_inputs(bench, resolve)}
    if kind == "lm_eval":
        files = bench["lm_eval"]["files"]
        if model not in files:
            raise ValueError(f"benchmark.lm_eval.files: no results file for model {model!r}")
        return {"results": resolve(files[model]), "mmlu_categories": resolve(bench["mmlu"]["categories"])}
    raise ValueError(f"benchmark.kind: unknown kind {kind!r}; known: {list(KINDS)}")
