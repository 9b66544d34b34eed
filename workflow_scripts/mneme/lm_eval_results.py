"""Import lm-evaluation-harness results as per-category benchmark scores.

``lm_eval --output_path DIR`` writes ``DIR/<model>/results_<timestamp>.json``; since 0.4 it has::

    {"results": {"arc_easy": {"alias": "arc_easy", "acc,none": 0.75, "acc_stderr,none": 0.01,
                              "acc_norm,none": 0.7, "acc_norm_stderr,none": 0.01},
                 "mmlu": {"alias": "mmlu", "acc,none": 0.25, ...},          # a group
                 "mmlu_anatomy": {"alias": "  - anatomy", "acc,none": 0.3, ...}, ...},
     "groups": {"mmlu": {...}, "mmlu_stem": {...}},
     "group_subtasks": {"mmlu": ["mmlu_stem", ...], "mmlu_stem": ["mmlu_anatomy", ...], "arc_easy": []},
     "n-samples": {"arc_easy": {"original": 2376, "effective": 2376}, "mmlu_anatomy": {...}},
     "n-shot": {...}, "versions": {...}, "configs": {...}, "config": {...}, ...}

Metric keys are ``"<metric>,<filter>"`` (filter ``none`` for log-likelihood tasks). Older files
(0.3) have plain keys (``"acc"``, ``"acc_stderr"``) and no ``n-samples``; the sample count of
each task must then come from the config (``benchmark.lm_eval.n_samples``).

Only leaf tasks are scored: a group (listed under ``groups``, with sub-tasks under
``group_subtasks``, or, when the file has ``n-samples``, a task without a sample count) is an
aggregate of tasks that are themselves in the file, so counting it would count its questions twice.
A leaf task's category is, in order: its own entry in ``task_categories``, the entry of its
nearest enclosing group in ``task_categories``, or, for ``mmlu_<subject>`` (also
``hendrycksTest-<subject>`` and variants ending in ``_<subject>``), the MMLU subject map.
Unmapped tasks are skipped with a log line.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

log = logging.getLogger("mneme.lm_eval")

TASK = "lm_eval"
RESULT_COLUMNS = ["item_id", "category", "task", "score", "n", "metric", "stderr"]


def find_results_file(path: str | os.PathLike) -> Path:
    """``path`` itself, or the newest ``results*.json`` under one model's directory.

    ``lm_eval --output_path DIR`` puts each model's files in ``DIR/<model>/``; given ``DIR`` with
    several models, picking the newest file would silently read another model's results (and
    measure a change of 0), so results in more than one folder are an error.
    """
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        found = sorted(p.rglob("results*.json"), key=lambda f: (f.name, str(f)))
        if not found:
            raise FileNotFoundError(f"{p}: no results*.json (lm_eval --output_path) under it")
        folders = sorted({str(f.parent) for f in found})
        if len(folders) > 1:
            raise ValueError(
                f"{p}: results files of several models ({', '.join(folders)}); "
                "give each model its own folder or file in benchmark.lm_eval.files"
            )
        if len(found) > 1:
            log.info("%s: %d results files, using the newest %s", p, len(found), found[-1])
        return found[-1]
    raise FileNotFoundError(f"{p}: lm-evaluation-harness results file not found")


def load_results(path: str | os.PathLike) -> dict:
    """The parsed results JSON; it must have a ``results`` mapping."""
    f = find_results_file(path)
    data = json.loads(f.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ValueError(f"{f}: not an lm-evaluation-harness results file (no top-level `results` mapping)")
    data["_path"] = str(f)
    return data


def group_structure(data: Mapping) -> tuple[set[str], dict[str, str]]:
    """``(groups, parent)``: the aggregate tasks, and each sub-task's enclosing group."""
    groups = set(data.get("groups") or {})
    parent: dict[str, str] = {}
    for group, subs in (data.get("group_subtasks") or {}).items():
        if subs:
            groups.add(group)
            for sub in subs:
                parent.setdefault(sub, group)
    n_samples = data.get("n-samples")
    if isinstance(n_samples, dict) and n_samples:
        groups |= {t for t in data["results"] if t not in n_samples}
    return groups, parent


def metric_value(entry: Mapping, metric: str, task: str, where: str) -> tuple[float, float, str]:
    """``(value, stderr, key)`` of ``metric`` in one task's results.

    ``metric`` is a name (``acc`` finds ``acc,none``, the single ``acc,<filter>`` or plain
    ``acc``) or a full key (``exact_match,strict-match``). The error names the task and the
    metrics it has.
    """
    if metric in entry:
        key = metric
    elif f"{metric},none" in entry:
        key = f"{metric},none"
    else:
        keys = [k for k in entry if k.startswith(f"{metric},")]
        if len(keys) != 1:
            available = sorted(
                k for k in entry if k != "alias" and "_stderr" not in k and isinstance(entry[k], (int, float))
            )
            hint = f" (several filters: {keys}; name one, e.g. {keys[0]!r})" if keys else ""
            raise ValueError(
                f"{where}: task {task!r} has no metric {metric!r}{hint}; available: {', '.join(available) or 'none'}"
            )
        key = keys[0]
    name, _, filt = key.partition(",")
    stderr = entry.get(f"{name}_stderr,{filt}" if filt else f"{name}_stderr")
    value = entry[key]
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{where}: task {task!r} metric {key!r} is {value!r}, not a number")
    return float(value), float(stderr) if isinstance(stderr, (int, float)) else math.nan, key


def mmlu_subject(task: str, subject_map: Mapping[str, str]) -> str | None:
    """The MMLU subject of a harness task name (``mmlu_anatomy``, ``hendrycksTest-anatomy``, ...)."""
    if task.startswith("hendrycksTest-"):
        s = task[len("hendrycksTest-") :]
        return s if s in subject_map else None
    if not task.startswith("mmlu"):
        return None
    if task.startswith("mmlu_") and task[5:] in subject_map:
        return task[5:]
    matches = [s for s in subject_map if task.endswith(f"_{s}")]
    return max(matches, key=len) if matches else None


def task_category(
    task: str,
    parent: Mapping[str, str],
    task_categories: Mapping[str, str],
    subject_map: Mapping[str, str],
) -> str | None:
    """Explicit mapping of the task, else of its nearest enclosing group, else the MMLU subject map."""
    node, seen = task, set()
    while node is not None and node not in seen:
        if node in task_categories:
            return task_categories[node]
        seen.add(node)
        node = parent.get(node)
    subject = mmlu_subject(task, subject_map)
    return subject_map[subject] if subject is not None else None


def sample_count(data: Mapping, task: str, n_samples: Mapping[str, int]) -> int | None:
    entry = (data.get("n-samples") or {}).get(task)
    if isinstance(entry, Mapping):
        n = entry.get("effective", entry.get("original"))
        if isinstance(n, int) and n > 0:
            return n
    n = n_samples.get(task)
    return int(n) if n is not None else None


def read_task_results(
    path: str | os.PathLike,
    task_categories: Mapping[str, str] | None = None,
    subject_map: Mapping[str, str] | None = None,
    metric: str = "acc",
    n_samples: Mapping[str, int] | None = None,
) -> pd.DataFrame:
    """One row per scored leaf task (``RESULT_COLUMNS``): ``item_id`` = task name, ``score`` = the
    metric (an accuracy), ``n`` = its number of samples, ``metric`` = the key read.

    ``n`` comes from the file's ``n-samples`` (``effective``, i.e. after ``--limit``), else from
    ``n_samples``; a mapped task with neither is an error that says so.
    """
    data = load_results(path)
    where = data["_path"]
    task_categories, subject_map, n_samples = task_categories or {}, subject_map or {}, n_samples or {}
    groups, parent = group_structure(data)
    rows, no_n, skipped = [], [], []
    for task, entry in data["results"].items():
        if task in groups:
            log.info("%s: %r is a group of other tasks, not scored itself", where, task)
            continue
        category = task_category(task, parent, task_categories, subject_map)
        if category is None:
            skipped.append(task)
            continue
        value, stderr, key = metric_value(entry, metric, task, where)
        n = sample_count(data, task, n_samples)
        if n is None:
            no_n.append(task)
            continue
        rows.append(
            {
                "item_id": task,
                "category": category,
                "task": TASK,
                "score": value,
                "n": n,
                "metric": key,
                "stderr": stderr,
            }
        )
    if skipped:
        log.info("%s: tasks with no category, skipped: %s", where, ", ".join(skipped))
    if no_n:
        raise ValueError(
            f"{where}: no sample count for task(s) {', '.join(no_n)} (the file has no `n-samples` entry "
            "for them); give them in benchmark.lm_eval.n_samples"
        )
    if not rows:
        log.warning("%s: no task is mapped to a category", where)
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Per category and task: ``n_tasks``, ``n`` (samples) and ``mean`` (pooled Σ acc·n / Σ n)."""
    df = results.assign(successes=results["score"] * results["n"])
    g = df.groupby(["category", "task"], sort=True)
    out = g.agg(n_tasks=("item_id", "count"), n=("n", "sum"), successes=("successes", "sum")).reset_index()
    out["mean"] = out["successes"] / out["n"]
    return out.drop(columns="successes")
