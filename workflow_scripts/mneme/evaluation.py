"""Side-effect prediction scoring (docs/method.md, "Evaluation").

- :func:`ground_truth` – per category c, did the fine-tuned model's benchmark score move, beyond
  the move of the general (untagged) items? ``y_c = |Δ_c − Δ_general| >= threshold AND
  significant``; the raw change is kept beside it. Items are paired by ``item_id`` (both models
  answer the same items). Tests: paired bootstrap over items (default), two-proportion z-test
  (0/1 scores only) or a paired t-test.
- the predictors, none of which sees a benchmark item: mneme's routes (:mod:`mneme.prediction`)
  and the baselines: activation difference (no crosscoder), decoder-norm only, provenance only
  (the F13 count rule, :func:`predict`), all positive, random at prevalence, oracle.
- :func:`score_predictor` – accuracy / precision / recall / F1, AUROC of the score against
  affected and Spearman against |change|, over all categories and over the side effects only
  (the categories outside the pair's target), direction accuracy, and whether the pair's own
  target was found and where it ranks (:func:`target_rank`).

:func:`evaluate_pair` assembles everything into one JSON-serialisable dict.

Direction convention (truth and prediction): ``-1`` = degraded, ``+1`` = improved, ``0`` =
unchanged / not predicted.

Metric conventions for empty denominators: precision with no predicted positive and recall with
no true positive are undefined and reported as NaN (``None`` in JSON) and listed under
``undefined``; F1 is ``2tp / (2tp + fp + fn)``, so 0 when nothing predicted was right and
undefined only when there were no positives and none was predicted (no error at all).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from mneme.category_file import NONE_LABEL

FLAGGED = ("amplified", "suppressed")
CONTROL = "unchanged"
TESTS = ("bootstrap", "two_proportion", "paired_t")
GROUND_TRUTHS = ("specific", "median", "raw")
GROUND_TRUTH_COLUMNS = [
    "category",
    "n",
    "base_mean",
    "ft_mean",
    "delta",
    "p_value",
    "significant",
    "affected",
    "direction",
]
PREDICT_COLUMNS = ["category", "n_amplified", "n_suppressed", "n", "predicted", "score", "direction"]


# ---------------------------------------------------------------------------------------------
# ground truth


def _category_seed(seed: int, category: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(str(category).encode("utf-8"))])


def bootstrap_p(diff: np.ndarray, n_boot: int = 2000, rng: np.random.Generator | None = None) -> float:
    """Two-sided p of "mean paired difference = 0" from a bootstrap over items.

    p = 2·min(P*(mean ≤ 0), P*(mean ≥ 0)) with the (k+1)/(B+1) correction, capped at 1.
    A constant zero difference gives p = 1.
    """
    diff = np.asarray(diff, dtype=float)
    n = diff.size
    if n == 0:
        return float("nan")
    if np.all(diff == 0):
        return 1.0
    rng = rng if rng is not None else np.random.default_rng(0)
    means = np.empty(n_boot)
    chunk = max(1, int(2_000_000 // max(n, 1)))
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = diff[idx].mean(axis=1)
    lo = (np.sum(means <= 0) + 1) / (n_boot + 1)
    hi = (np.sum(means >= 0) + 1) / (n_boot + 1)
    return float(min(1.0, 2 * min(lo, hi)))


def two_proportion_p(base: np.ndarray, ft: np.ndarray) -> float:
    """Two-sided pooled two-proportion z-test for 0/1 scores."""
    base, ft = np.asarray(base, dtype=float), np.asarray(ft, dtype=float)
    for arr in (base, ft):
        if not np.isin(arr, (0.0, 1.0)).all():
            raise ValueError("two_proportion test needs 0/1 scores (multiple_choice)")
    n1, n2 = base.size, ft.size
    if n1 == 0 or n2 == 0:
        return float("nan")
    p1, p2 = base.mean(), ft.mean()
    pool = (base.sum() + ft.sum()) / (n1 + n2)
    se = math.sqrt(pool * (1 - pool) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = (p2 - p1) / se
    return float(2 * stats.norm.sf(abs(z)))


def paired_t_p(base: np.ndarray, ft: np.ndarray) -> float:
    """Two-sided paired t-test (scipy). Constant zero difference → 1, constant non-zero → 0."""
    base, ft = np.asarray(base, dtype=float), np.asarray(ft, dtype=float)
    if base.size < 2:
        return float("nan")
    diff = ft - base
    if np.all(diff == diff[0]):
        return 1.0 if diff[0] == 0 else 0.0
    return float(stats.ttest_rel(ft, base).pvalue)


def two_proportion_counts_p(s1: float, n1: float, s2: float, n2: float) -> float:
    """Two-sided pooled two-proportion z-test from counts: ``s`` successes out of ``n`` trials."""
    if n1 <= 0 or n2 <= 0:
        return float("nan")
    pool = (s1 + s2) / (n1 + n2)
    se = math.sqrt(pool * (1 - pool) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = (s2 / n2 - s1 / n1) / se
    return float(2 * stats.norm.sf(abs(z)))


def is_aggregate(items: pd.DataFrame, task: str) -> bool:
    """Whether the rows of ``task`` are per-task aggregates (an accuracy over ``n`` samples, lm_eval)."""
    if "n" not in items.columns:
        return False
    n = items.loc[items["task"] == task, "n"]
    return bool(len(n)) and bool(n.notna().all())


def pair_items(base_items: pd.DataFrame, ft_items: pd.DataFrame, task: str) -> pd.DataFrame:
    """Inner join of the two models' item scores of one task on ``item_id``.

    Columns: item_id, category (the base row's), base, ft; for per-task aggregates (rows with a
    sample count ``n``, see :func:`is_aggregate`) also n_base and n_ft. Unpaired items are dropped.
    """
    agg = is_aggregate(base_items, task), is_aggregate(ft_items, task)
    if agg[0] != agg[1]:
        raise ValueError(
            f"task {task!r}: one model's results are per-task aggregates (with `n`) and the other's are not"
        )
    extra = ["n"] if agg[0] else []
    b = base_items[base_items["task"] == task][["item_id", "category", "score", *extra]]
    f = ft_items[ft_items["task"] == task][["item_id", "score", *extra]]
    if b["item_id"].duplicated().any() or f["item_id"].duplicated().any():
        raise ValueError(f"duplicate item_id within task {task!r}")
    out = b.merge(f, on="item_id", how="inner", suffixes=("_base", "_ft"))
    out = out.rename(columns={"score_base": "base", "score_ft": "ft"})
    columns = ["item_id", "category", "base", "ft"] + (["n_base", "n_ft"] if extra else [])
    return out[columns].reset_index(drop=True)


def ground_truth(
    base_items: pd.DataFrame,
    ft_items: pd.DataFrame,
    task: str,
    threshold: float,
    test: str = "bootstrap",
    alpha: float = 0.05,
    n_boot: int = 2000,
    seed: int = 0,
    categories: Sequence[str] | None = None,
    reference: str | None = None,
    median_of: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Per category: n, base_mean, ft_mean, delta (ft − base), p_value, significant, affected, direction.

    With ``reference`` (the benchmark's general, untagged category) the effect of a category is
    *specific*: its change beyond the reference's change, ``delta_c − delta_ref``, tested by
    :func:`specific_p` (a fine-tune that teaches the benchmark's format moves every category by
    about the same amount, which says nothing about the intervention). Then ``delta``,
    ``p_value``, ``significant``, ``affected`` and ``direction`` are the specific ones and the raw
    change stays beside them as ``raw_delta``, ``raw_p_value``, ``raw_affected``. Without a
    reference row in the items the raw change is used (``reference`` is then reported as None).
    With ``median_of`` (the categories outside the target) the reference is instead the median
    change of those categories (:func:`median_reference`): robust to a few affected categories,
    and not moved by the intervention the way untagged text that shares the target's domain is.

    ``affected = |delta| >= threshold and p_value < alpha``; ``direction`` is ``sign(delta)`` for
    affected categories, else 0. ``categories`` adds categories without items (n = 0, NaN stats,
    not affected) and fixes the row order; by default the categories present in the items.

    Per-task aggregates (lm_eval rows: an accuracy ``score`` over ``n`` samples) are pooled per
    category (successes Σ score·n over trials Σ n, ``n`` = the base model's trials) and compared
    with the two-proportion z-test on those counts; no other test applies to them.
    """
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; known: {list(TESTS)}")
    paired = pair_items(base_items, ft_items, task)
    aggregate = "n_base" in paired.columns
    if aggregate and test != "two_proportion":
        raise ValueError(
            f"task {task!r} has per-task aggregate results (accuracy over n samples, no items to "
            f"resample or pair): use test 'two_proportion', not {test!r}"
        )
    cats = list(categories) if categories is not None else sorted(paired["category"].astype(str).unique())
    groups = {str(k): g for k, g in paired.groupby("category", sort=False)}
    rows = []
    for cat in cats:
        g = groups.get(str(cat))
        if g is None or g.empty:
            rows.append(
                {"category": cat, "n": 0, "base_mean": np.nan, "ft_mean": np.nan, "delta": np.nan}
                | {"p_value": np.nan, "significant": False, "affected": False, "direction": 0}
            )
            continue
        if aggregate:
            rows.append(_aggregate_row(cat, g, threshold, alpha))
            continue
        base, ft = g["base"].to_numpy(float), g["ft"].to_numpy(float)
        delta = float(ft.mean() - base.mean())
        if test == "bootstrap":
            p = bootstrap_p(ft - base, n_boot=n_boot, rng=_category_seed(seed, cat))
        elif test == "two_proportion":
            p = two_proportion_p(base, ft)
        else:
            p = paired_t_p(base, ft)
        significant = bool(not math.isnan(p) and p < alpha)
        affected = bool(significant and abs(delta) >= threshold)
        rows.append(
            {
                "category": cat,
                "n": int(len(g)),
                "base_mean": float(base.mean()),
                "ft_mean": float(ft.mean()),
                "delta": delta,
                "p_value": float(p),
                "significant": significant,
                "affected": affected,
                "direction": int(np.sign(delta)) if affected else 0,
            }
        )
    out = pd.DataFrame(rows, columns=GROUND_TRUTH_COLUMNS)
    out["raw_delta"], out["raw_p_value"], out["raw_affected"] = out["delta"], out["p_value"], out["affected"]
    out["reference"] = None
    members = [str(c) for c in median_of or () if str(c) in groups]
    if median_of is not None:
        if not members:
            return out
        label = f"median of {len(members)} categories"
        # one resample per group, shared by every category's test and by the median itself
        draws = {
            c: _change_draws(g, aggregate, n_boot, _category_seed(seed, f"{c}-median"))
            for c, g in groups.items()
        }
        median_point, median_draws = median_reference(draws, members)
    else:
        ref = groups.get(str(reference)) if reference is not None else None
        if ref is None or ref.empty:
            return out
        label = str(reference)
    for i, cat in enumerate(out["category"]):
        g = groups.get(str(cat))
        if g is None or g.empty or str(cat) == str(reference):
            continue
        if median_of is not None:
            point, resampled = draws[str(cat)]
            delta, p = point - median_point, _two_sided(resampled - median_draws, n_boot)
        else:
            delta, p = specific_change(g, ref, aggregate, n_boot, _category_seed(seed, f"{cat}-{label}"))
        significant = bool(not math.isnan(p) and p < alpha)
        affected = bool(significant and abs(delta) >= threshold)
        out.loc[i, ["delta", "p_value", "significant", "affected", "direction"]] = [
            delta,
            p,
            significant,
            affected,
            int(np.sign(delta)) if affected else 0,
        ]
    out["reference"] = label
    return out


def _two_sided(boot: np.ndarray, n_boot: int) -> float:
    """Two-sided bootstrap p of a statistic against 0 from its resampled values."""
    if np.all(boot == 0):
        return 1.0
    lo = (np.sum(boot <= 0) + 1) / (n_boot + 1)
    hi = (np.sum(boot >= 0) + 1) / (n_boot + 1)
    return float(min(1.0, 2 * min(lo, hi)))


def _change_draws(
    g: pd.DataFrame, aggregate: bool, n_boot: int, rng: np.random.Generator
) -> tuple[float, np.ndarray]:
    """A group's change (ft − base) and ``n_boot`` resampled values of it: a bootstrap over its
    paired items, or for per-task aggregates a parametric one (each pooled accuracy redrawn as a
    binomial proportion over its sample count)."""
    if aggregate:
        n_b, n_f = int(g["n_base"].sum()), int(g["n_ft"].sum())
        p_b = float((g["base"] * g["n_base"]).sum()) / n_b
        p_f = float((g["ft"] * g["n_ft"]).sum()) / n_f
        return p_f - p_b, rng.binomial(n_f, p_f, n_boot) / n_f - rng.binomial(n_b, p_b, n_boot) / n_b
    d = g["ft"].to_numpy(float) - g["base"].to_numpy(float)
    return float(d.mean()), d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)


def median_reference(
    draws: Mapping[str, tuple[float, np.ndarray]], members: Sequence[str]
) -> tuple[float, np.ndarray]:
    """The median change of ``members`` and its value in each resample, from each group's
    ``(change, resampled changes)`` (:func:`_change_draws`, every group resampled independently).
    A category's change beyond it is tested on the difference in the same resamples, so a member
    enters its own reference consistently."""
    point = float(np.median([draws[c][0] for c in members]))
    return point, np.median(np.column_stack([draws[c][1] for c in members]), axis=1)


def specific_change(
    g: pd.DataFrame, ref: pd.DataFrame, aggregate: bool, n_boot: int, rng: np.random.Generator
) -> tuple[float, float]:
    """``(delta_c − delta_ref, two-sided p)`` of a category's change beyond the reference's.

    Item-level results: a bootstrap that resamples the paired differences of both groups
    independently (different items), p as in :func:`bootstrap_p`. Per-task aggregates: a z-test on
    the difference of the two accuracy changes, each change's variance from its two proportions.
    """
    if aggregate:

        def change(h: pd.DataFrame) -> tuple[float, float]:
            n_b, n_f = float(h["n_base"].sum()), float(h["n_ft"].sum())
            p_b = float((h["base"] * h["n_base"]).sum()) / n_b
            p_f = float((h["ft"] * h["n_ft"]).sum()) / n_f
            return p_f - p_b, p_b * (1 - p_b) / n_b + p_f * (1 - p_f) / n_f

        (d_c, v_c), (d_r, v_r) = change(g), change(ref)
        se = math.sqrt(v_c + v_r)
        delta = d_c - d_r
        return delta, (1.0 if delta == 0 else 0.0) if se == 0 else float(2 * stats.norm.sf(abs(delta) / se))
    dc = g["ft"].to_numpy(float) - g["base"].to_numpy(float)
    dr = ref["ft"].to_numpy(float) - ref["base"].to_numpy(float)
    delta = float(dc.mean() - dr.mean())
    chunk = max(1, int(2_000_000 // max(dc.size + dr.size, 1)))
    means = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        ic = rng.integers(0, dc.size, size=(stop - start, dc.size))
        ir = rng.integers(0, dr.size, size=(stop - start, dr.size))
        means[start:stop] = dc[ic].mean(axis=1) - dr[ir].mean(axis=1)
    return delta, _two_sided(means, n_boot)


def split_half_truth(
    base_items: pd.DataFrame,
    ft_items: pd.DataFrame,
    task: str,
    *,
    target: Sequence[str] = (),
    n_splits: int = 50,
    seed: int = 0,
    **truth_options: Any,
) -> dict[str, Any] | None:
    """The ground truth's own noise ceiling: how well half of the benchmark items predict the
    other half's truth, as a predictor's metrics (means over ``n_splits`` random halvings).

    Each split halves every category's items (the reference's too) at random; the truth of one
    half (:func:`ground_truth` with ``truth_options``, its ``|delta|`` as the score and its
    direction) is scored against the other's by :func:`score_predictor`. Each half has half the
    items, so the ceiling of the full benchmark is higher than this: it is a conservative bound
    on how much any predictor can agree with the truth. None for per-task aggregates (no items
    to halve) or ``n_splits = 0``.
    """
    paired = pair_items(base_items, ft_items, task)
    if n_splits < 1 or "n_base" in paired.columns or paired.empty:
        return None
    rng = np.random.default_rng([seed, zlib.crc32(task.encode())])
    runs = []
    for _ in range(n_splits):
        half = pd.Series(False, index=paired.index)
        for _, g in paired.groupby("category", sort=False):
            half[rng.permutation(g.index.to_numpy())[: len(g) // 2]] = True
        ids = [set(paired.loc[m, "item_id"]) for m in (half, ~half)]
        a, b = (
            ground_truth(
                base_items[base_items["item_id"].isin(i)],
                ft_items[ft_items["item_id"].isin(i)],
                task,
                **truth_options,
            )
            for i in ids
        )
        pred = pd.DataFrame(
            {
                "category": a["category"],
                "predicted": a["affected"].astype(bool),
                "score": np.abs(a["delta"].to_numpy(float)),
                "direction": a["direction"],
            }
        )
        runs.append(score_predictor(b, pred, target))
    return {
        part: {k: _nanmean(r[part].get(k) for r in runs) for k in runs[0][part] if k != "undefined"}
        for part in runs[0]
    }


def _nanmean(values: Iterable[Any]) -> float:
    v = np.array([np.nan if x is None else x for x in values], dtype=float)
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def _aggregate_row(cat: str, g: pd.DataFrame, threshold: float, alpha: float) -> dict[str, Any]:
    """Ground-truth row of one category from per-task accuracies pooled by their sample counts."""
    n_b, n_f = float(g["n_base"].sum()), float(g["n_ft"].sum())
    s_b = float((g["base"] * g["n_base"]).sum())
    s_f = float((g["ft"] * g["n_ft"]).sum())
    base_mean = s_b / n_b if n_b else float("nan")
    ft_mean = s_f / n_f if n_f else float("nan")
    delta = ft_mean - base_mean
    p = two_proportion_counts_p(s_b, n_b, s_f, n_f)
    significant = bool(not math.isnan(p) and p < alpha)
    affected = bool(significant and abs(delta) >= threshold)
    return {
        "category": cat,
        "n": int(n_b),
        "base_mean": base_mean,
        "ft_mean": ft_mean,
        "delta": delta,
        "p_value": float(p),
        "significant": significant,
        "affected": affected,
        "direction": int(np.sign(delta)) if affected else 0,
    }


# ---------------------------------------------------------------------------------------------
# prediction (F13)


def _evidence_mask(labels: pd.Series, general_category: str | None) -> pd.Series:
    lab = labels.astype("object")
    bad = lab.isna() | (lab == NONE_LABEL)
    if general_category is not None:
        bad |= lab == general_category
    return ~bad


def predict(
    labels_df: pd.DataFrame,
    categories: Sequence[str],
    min_latents: int = 1,
    general_category: str | None = "general",
    column: str = "category",
) -> pd.DataFrame:
    """F13 count rule per category: ``n_amplified``, ``n_suppressed``, ``n``, ``predicted``
    (``n >= min_latents``), ``score`` (= ``n``) and ``direction`` (``sign(n_amplified - n_suppressed)``).

    ``labels_df`` has ``latent``, ``direction`` and the label column ``column``; latents labelled
    ``none`` / NaN or ``general_category`` are never evidence.
    """
    df = labels_df
    ok = _evidence_mask(df[column], general_category)
    direction = df["direction"].astype("object")
    amp = df[ok & (direction == "amplified")][column].astype(str).value_counts()
    sup = df[ok & (direction == "suppressed")][column].astype(str).value_counts()
    rows = []
    for cat in categories:
        n_amp, n_sup = int(amp.get(str(cat), 0)), int(sup.get(str(cat), 0))
        n = n_amp + n_sup
        predicted = n >= min_latents
        rows.append(
            {
                "category": cat,
                "n_amplified": n_amp,
                "n_suppressed": n_sup,
                "n": n,
                "predicted": bool(predicted),
                "score": float(n),
                "direction": int(np.sign(n_amp - n_sup)) if predicted else 0,
            }
        )
    return pd.DataFrame(rows, columns=PREDICT_COLUMNS)


def provenance_lift_labels(category_mass: pd.DataFrame, prior: pd.Series) -> pd.Series:
    """latent -> the category whose share of the latent's activation mass is largest *relative to
    the category's share of the corpus tokens* (``prior``, by category); raw shares would give
    every latent to the biggest categories. Ties by name."""
    g = category_mass[category_mass["category"].astype(str).isin(prior.index)].copy()
    g["lift"] = g["share"].astype(float) / g["category"].astype(str).map(prior).astype(float)
    g = g.sort_values(["latent", "lift", "category"], ascending=[True, False, True])
    top = g.drop_duplicates("latent", keep="first")
    return pd.Series(top["category"].astype(str).to_numpy(), index=top["latent"].astype(int).to_numpy())


# ---------------------------------------------------------------------------------------------
# metrics


def _div(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def _f1(p: float, r: float) -> float:
    if math.isnan(p) or math.isnan(r):
        return float("nan")
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def _finish(acc: float, prec: float, rec: float, tp, fp, fn, tn, n) -> dict[str, Any]:
    out: dict[str, Any] = {
        "accuracy": acc,
        "precision": prec,
        "recall": rec,
        # F1 = 2tp / (2tp + fp + fn): 0 when nothing was found though something was there (or
        # something was predicted that was not), undefined only when there was nothing to find and
        # nothing was predicted
        "f1": _f1(prec, rec) if (tp + fp + fn) == 0 or tp > 0 else 0.0,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "n": n,
    }
    out["undefined"] = [k for k in ("accuracy", "precision", "recall", "f1") if math.isnan(out[k])]
    return out


def metrics(truth: pd.Series | Sequence[bool], pred: pd.Series | Sequence[bool]) -> dict[str, Any]:
    """Standard (micro) confusion-matrix metrics over category units.

    Series are aligned on their index (must hold the same labels); plain sequences by position.
    Keys: accuracy, precision, recall, f1, tp, fp, fn, tn, n, undefined (names of NaN metrics).
    """
    if isinstance(truth, pd.Series) and isinstance(pred, pd.Series):
        if set(truth.index) != set(pred.index):
            raise ValueError("truth and pred must cover the same categories")
        pred = pred.reindex(truth.index)
    t = np.asarray(truth, dtype=bool)
    p = np.asarray(pred, dtype=bool)
    if t.shape != p.shape:
        raise ValueError("truth and pred differ in length")
    tp, fp = int(np.sum(t & p)), int(np.sum(~t & p))
    fn, tn = int(np.sum(t & ~p)), int(np.sum(~t & ~p))
    n = int(t.size)
    return _finish(_div(tp + tn, n), _div(tp, tp + fp), _div(tp, tp + fn), tp, fp, fn, tn, n)


def random_expected_metrics(prevalence: float, n: int) -> dict[str, Any]:
    """Expected metrics of predicting "affected" at random with probability p = prevalence.

    accuracy = p² + (1−p)², precision = recall = F1 = p; counts are expectations (floats).
    p = 0 leaves precision, recall and F1 undefined (NaN).
    """
    p = float(prevalence)
    prec = rec = p if p > 0 else float("nan")
    out = _finish(
        p * p + (1 - p) ** 2, prec, rec, n * p * p, n * p * (1 - p), n * p * (1 - p), n * (1 - p) ** 2, n
    )
    if p > 0:
        out["f1"] = p
    return out


def auroc(labels: Sequence[bool], scores: Sequence[float]) -> float:
    """Area under the ROC curve of ``scores`` for ``labels`` (Mann-Whitney, ties count one half);
    NaN scores rank lowest; NaN when one class is empty."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=float)
    s = np.where(np.isnan(s), -np.inf, s)
    pos, neg = s[y], s[~y]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation over the pairs where both are finite (NaN if < 3 or constant)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan")
    return float(stats.spearmanr(x[ok], y[ok]).statistic)


def target_rank(scores: pd.Series, target: Sequence[str]) -> float:
    """Where the intervention's own category lands in a predictor's ranking of all categories:
    the rank (1 = highest score) of the best-scored target category among the categories that
    are not targets, ties shared (a category tied with ``k`` others counts half of them as
    above it), NaN scores ranked lowest; NaN without a target among ``scores``' index. With
    several targets, the others are left out, so two targets on top both rank 1.

    Why: a predictor that cannot find the category the intervention was aimed at has not seen the
    intervention, and its side effects are then read off whatever else moved. Side-effect metrics
    leave the target out, and all-category accuracy hides one miss among eleven; this shows it."""
    s = scores.astype(float).fillna(-np.inf)
    hit = [c for c in target if c in s.index]
    if not hit:
        return float("nan")
    best = max(float(s[c]) for c in hit)
    others = s.drop(hit)
    return 1.0 + int((others > best).sum()) + int((others == best).sum()) / 2


def score_predictor(truth: pd.DataFrame, pred: pd.DataFrame, target: Sequence[str] = ()) -> dict[str, Any]:
    """Every metric of one predictor against the ground truth.

    ``truth`` has ``category, affected, direction, delta``; ``pred`` has ``category, predicted``
    and optionally ``score`` (for AUROC against affected and Spearman against ``|delta|``) and
    ``direction``. ``all`` covers every category, ``side_effects`` the categories outside
    ``target`` (the intervention's own categories), ``direction`` the share of categories both
    predicted and affected whose predicted sign is right (NaN when the predictor gives none),
    ``target`` whether the intervention's own categories were predicted (``found``, the share of
    them) and where the best of them ranks by score (``rank``, :func:`target_rank`).
    """
    t = truth.set_index(truth["category"].astype(str))
    p = pred.set_index(pred["category"].astype(str)).reindex(t.index)
    out: dict[str, Any] = {}
    side = ~t.index.isin([str(c) for c in target])
    for name, mask in (("all", np.ones(len(t), bool)), ("side_effects", side)):
        tt, pp = t[mask], p[mask]
        m = metrics(
            tt["affected"].astype(bool).to_numpy(), pp["predicted"].fillna(False).astype(bool).to_numpy()
        )
        if "score" in pp:
            m["auroc"] = auroc(tt["affected"].to_numpy(bool), pp["score"].to_numpy(float))
            m["spearman"] = spearman(pp["score"].to_numpy(float), np.abs(tt["delta"].to_numpy(float)))
        out[name] = m
    both = t["affected"].astype(bool) & p["predicted"].fillna(False).astype(bool)
    if "direction" in p and (p["direction"].fillna(0) != 0).any():
        right = int((np.sign(p.loc[both, "direction"]) == np.sign(t.loc[both, "direction"])).sum())
        out["direction"] = {"accuracy": _div(right, int(both.sum())), "n": int(both.sum())}
    else:
        out["direction"] = {"accuracy": float("nan"), "n": int(both.sum())}
    hit = [str(c) for c in target if str(c) in t.index]
    out["target"] = {
        "found": _div(int(p.loc[hit, "predicted"].fillna(False).astype(bool).sum()), len(hit)),
        "rank": target_rank(p["score"], hit) if "score" in p else float("nan"),
        "n_categories": len(t),
    }
    return out


def constant_predictions(truth: pd.DataFrame, kind: str, seed: int = 0) -> pd.DataFrame:
    """The reference predictors: ``all_positive``, ``random`` (one seeded draw at the truth's
    prevalence, random scores) and ``oracle`` (the truth, scored by ``|delta|``)."""
    cats = truth["category"].astype(str).to_numpy()
    affected = truth["affected"].astype(bool).to_numpy()
    if kind == "all_positive":
        return pd.DataFrame({"category": cats, "predicted": True, "score": 1.0, "direction": 0})
    if kind == "random":
        rng = np.random.default_rng(seed)
        score = rng.random(len(cats))
        return pd.DataFrame(
            {"category": cats, "predicted": score < affected.mean(), "score": score, "direction": 0}
        )
    if kind == "oracle":
        score = np.abs(truth["delta"].to_numpy(float)) * affected
        return pd.DataFrame(
            {"category": cats, "predicted": affected, "score": score, "direction": truth["direction"]}
        )
    raise ValueError(f"unknown reference predictor {kind!r}")


# ---------------------------------------------------------------------------------------------
# assembly


def to_jsonable(obj: Any) -> Any:
    """Recursively convert numpy / pandas scalars to Python; NaN and ±inf become None."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, pd.DataFrame):
        return [to_jsonable(r) for r in obj.to_dict(orient="records")]
    if isinstance(obj, pd.Series):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (list, tuple, set)) or (
        isinstance(obj, Iterable) and not isinstance(obj, (str, bytes))
    ):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if obj is None or isinstance(obj, str):
        return obj
    if obj is pd.NA or obj is pd.NaT:
        return None
    return str(obj)


def predictor_tables(
    categories: Sequence[str],
    *,
    attribution: pd.DataFrame,
    category_mass: pd.DataFrame,
    activation_diff: pd.DataFrame,
    labels: pd.DataFrame | None = None,
    context_membership: pd.DataFrame | None = None,
    general_category: str = "general",
    z_pred: float,
    membership: str,
    reference: str,
    min_latents: int = 1,
) -> dict[str, pd.DataFrame]:
    """Every predictor's per-category table (``category, predicted, score, direction, ...``), from
    the pair's own files only: mneme's routes (those whose inputs are given) and the baselines
    that are not constant. See :mod:`mneme.prediction` for the routes; ``membership`` (``mass``
    or ``lift``) is the provenance route's latent-to-category weight, ``reference`` (``corpus`` or
    ``general``) what a category's change is compared with, for the predictors that read corpus
    labels (the label-free routes always take the corpus mean)."""
    from mneme import prediction as pr

    if membership not in pr.MEMBERSHIPS:
        raise ValueError(f"evaluate.membership must be one of {pr.MEMBERSHIPS}, got {membership!r}")
    if reference not in pr.REFERENCES:
        raise ValueError(f"evaluate.reference must be one of {pr.REFERENCES}, got {reference!r}")
    cats = list(categories)
    every = cats + [general_category]
    ref = general_category if reference == "general" else None
    if ref is not None and not (category_mass["category"].astype(str) == ref).any():
        raise ValueError(
            f"evaluate.reference: general compares a category with the latents of the general "
            f"category {ref!r}, but no latent is active on a document of it (category_mass has "
            f"{sorted(category_mass['category'].astype(str).unique())}): give the diffing corpus "
            f"some {ref!r} documents or set evaluate.reference: corpus"
        )

    def scores(change: pd.Series, member: pd.DataFrame, label_free: bool = False, **kw) -> pd.DataFrame:
        # a label-free route has no general text to compare with: it keeps the corpus mean
        reference = None if label_free else ref
        return pr.category_scores(change, member, every, z_pred=z_pred, reference=reference, **kw)

    change = pr.eligible_change(attribution)
    effect = pd.Series(attribution["effect"].to_numpy(), index=attribution["latent"].to_numpy(int))
    prior = activation_diff.set_index(activation_diff["category"].astype(str))["n_tokens"].astype(float)
    prior = prior / prior.sum()
    mass = pr.membership_from_long(category_mass, "mass")
    provenance = pr.lift_membership(mass, prior) if membership == "lift" else mass
    out = {"mneme_provenance": scores(change, provenance, effect=effect)}
    if context_membership is not None and len(context_membership):
        member = pr.membership_from_long(context_membership, "weight")
        out["mneme_contexts"] = scores(change, member, label_free=True, effect=effect)
    if labels is not None and len(labels):
        lab = labels.set_index(labels["latent"].astype(int))["category"]
        member = pr.single_label_membership(lab)
        out["mneme_explanations"] = scores(
            change.reindex(member.index).dropna(), member, label_free=True, effect=effect
        )
    out = {k: v[v["category"].isin(cats)].reset_index(drop=True) for k, v in out.items()}
    out["activation_diff"] = pr.activation_diff_scores(activation_diff, cats, general_category)
    dn = scores(pr.decoder_norm_change(attribution), mass)
    out["decoder_norm_only"] = dn[dn["category"].isin(cats)].reset_index(drop=True)
    prov = provenance_lift_labels(category_mass, prior)
    flagged = attribution[attribution["direction"].isin(FLAGGED)]
    table = pd.DataFrame(
        {"latent": flagged["latent"].to_numpy(int), "direction": flagged["direction"].to_numpy()}
    )
    table["category"] = table["latent"].map(prov)
    out["provenance_only"] = predict(table, cats, min_latents=min_latents, general_category=general_category)
    return out


# what each predictor uses: the report and the tables label them so
PREDICTOR_USES = {
    "mneme_provenance": "crosscoder + corpus labels",
    "mneme_contexts": "crosscoder, label-free (top contexts)",
    "mneme_explanations": "crosscoder, label-free (LLM explanations)",
    "activation_diff": "activations + corpus labels, no crosscoder",
    "decoder_norm_only": "crosscoder decoder norms + corpus labels",
    "provenance_only": "crosscoder flags (F13 count) + corpus labels",
    "all_positive": "nothing",
    "random_at_prevalence": "the truth's prevalence (expected value)",
    "oracle": "the benchmark (upper bound)",
    "truth_split_half": "half the benchmark items, scored on the other half (the truth's noise ceiling)",
}


def _random_expected(truth: pd.DataFrame, target: Sequence[str]) -> dict[str, Any]:
    """Expected metrics of a random predictor at the prevalence of each subset (AUROC 0.5)."""
    out: dict[str, Any] = {}
    side = ~truth["category"].astype(str).isin([str(c) for c in target])
    for name, mask in (("all", np.ones(len(truth), bool)), ("side_effects", side.to_numpy())):
        aff = truth["affected"].astype(bool).to_numpy()[mask]
        m = random_expected_metrics(float(aff.mean()) if aff.size else float("nan"), int(aff.size))
        m["auroc"], m["spearman"] = 0.5, 0.0
        out[name] = m
    out["direction"] = {"accuracy": float("nan"), "n": 0}
    out["target"] = _random_target(truth, target)
    return out


def _random_target(truth: pd.DataFrame, target: Sequence[str]) -> dict[str, Any]:
    """The expected target entry of a predictor that predicts each category with the
    prevalence's probability and orders them at random. Each of the ``m`` non-target categories
    lands above all ``k`` targets with probability ``1 / (k + 1)``, so the best target's rank
    (:func:`target_rank`) is ``1 + m / (k + 1)`` on average; ``found`` is the prevalence. NaN,
    as for every predictor, when the pair has no target among the categories."""
    cats = truth["category"].astype(str)
    k = int(cats.isin([str(c) for c in target]).sum())
    if k == 0:
        return {"found": float("nan"), "rank": float("nan"), "n_categories": len(truth)}
    prevalence = float(truth["affected"].astype(bool).mean())
    return {"found": prevalence, "rank": 1.0 + (len(truth) - k) / (k + 1), "n_categories": len(truth)}


def evaluate_pair(
    base_items: pd.DataFrame,
    ft_items: pd.DataFrame,
    *,
    attribution: pd.DataFrame,
    category_mass: pd.DataFrame,
    activation_diff: pd.DataFrame,
    labels: pd.DataFrame | None = None,
    context_membership: pd.DataFrame | None = None,
    target: Sequence[str] = (),
    categories: Sequence[str] | None = None,
    task: str = "multiple_choice",
    threshold: float = 0.05,
    test: str = "bootstrap",
    alpha: float = 0.05,
    n_boot: int = 2000,
    truth: str = "median",
    route: str = "provenance",
    z_pred: float = 0.0,
    min_latents: int = 1,
    membership: str = "mass",
    reference: str = "general",
    general_category: str = "general",
    seed: int = 0,
    n_splits: int = 50,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Ground truth, every predictor and its metrics for one model pair (JSON-serialisable).

    ``categories`` (the evaluation units) defaults to the categories of the benchmark items of
    ``task`` minus ``general_category``. ``route`` names the mneme route reported as ``mneme``.
    Keys: ``config``, ``meta``, ``categories``, ``target``, ``prevalence`` (all / side effects),
    ``ground_truth`` (per category, raw and specific change), ``per_category`` (truth beside the
    ``mneme`` prediction), ``predictors`` (per predictor: what it uses, its table and metrics),
    ``metrics`` (per predictor, all categories), ``side_effect_metrics`` and ``direction``.
    """
    if truth not in GROUND_TRUTHS:
        raise ValueError(f"evaluate.truth must be one of {GROUND_TRUTHS}, got {truth!r}")
    if categories is None:
        cats = sorted(set(base_items.loc[base_items["task"] == task, "category"].astype(str)))
        cats = [c for c in cats if c != general_category]
    else:
        cats = list(categories)
    target = [str(c) for c in target]
    truth_options = {
        "threshold": threshold,
        "test": test,
        "alpha": alpha,
        "n_boot": n_boot,
        "seed": seed,
        "categories": cats,
        "reference": general_category if truth == "specific" else None,
        "median_of": [c for c in cats if c not in target] if truth == "median" else None,
    }
    gt = ground_truth(base_items, ft_items, task, **truth_options)
    tables = predictor_tables(
        cats,
        attribution=attribution,
        category_mass=category_mass,
        activation_diff=activation_diff,
        labels=labels,
        context_membership=context_membership,
        general_category=general_category,
        z_pred=z_pred,
        min_latents=min_latents,
        membership=membership,
        reference=reference,
    )
    key = f"mneme_{route}"
    if key not in tables:
        raise ValueError(f"evaluate.route {route!r} has no inputs for this pair (have {sorted(tables)})")
    tables = {"mneme": tables[key], **tables}
    for kind in ("all_positive", "oracle"):
        tables[kind] = constant_predictions(gt, kind)
    predictors: dict[str, Any] = {}
    for name, table in tables.items():
        uses = PREDICTOR_USES.get(name, PREDICTOR_USES[key] if name == "mneme" else "")
        predictors[name] = {
            "uses": uses,
            "per_category": table,
            "metrics": score_predictor(gt, table, target),
        }
    predictors["random_at_prevalence"] = {
        "uses": PREDICTOR_USES["random_at_prevalence"],
        "per_category": [],
        "metrics": _random_expected(gt, target),
    }
    ceiling = split_half_truth(base_items, ft_items, task, target=target, n_splits=n_splits, **truth_options)
    if ceiling is not None:
        predictors["truth_split_half"] = {
            "uses": PREDICTOR_USES["truth_split_half"],
            "per_category": [],
            "metrics": ceiling,
        }
    mn = tables["mneme"].set_index("category")
    table = gt.copy()
    table["prediction"] = table["category"].map(mn["predicted"]).fillna(False).astype(bool)
    table["pred_score"] = table["category"].map(mn["score"])
    table["pred_direction"] = table["category"].map(mn["direction"]).fillna(0).astype(int)
    table = table.rename(columns={"affected": "truth"})
    side = ~gt["category"].astype(str).isin(target)
    config = {
        "task": task,
        "threshold": threshold,
        "test": test,
        "alpha": alpha,
        "n_boot": n_boot,
        "truth": truth,
        "route": route,
        "z_pred": z_pred,
        "min_latents": min_latents,
        "membership": membership,
        "reference": reference,
        "general_category": general_category,
        "seed": seed,
        "n_splits": n_splits,
    }
    out = {
        "config": config,
        "meta": dict(meta or {}),
        "categories": cats,
        "target": target,
        "prevalence": {
            "all": float(gt["affected"].mean()) if len(gt) else float("nan"),
            "side_effects": float(gt.loc[side, "affected"].mean()) if side.any() else float("nan"),
        },
        "ground_truth": gt,
        "per_category": table,
        "predictors": predictors,
        "metrics": {k: v["metrics"]["all"] for k, v in predictors.items()},
        "side_effect_metrics": {k: v["metrics"]["side_effects"] for k, v in predictors.items()},
        "direction": predictors["mneme"]["metrics"]["direction"],
    }
    return to_jsonable(out)
