"""Side-effect prediction scoring (method.md §4.1, F13).

Four pieces:

- :func:`ground_truth` – per category c, is the fine-tuned model's benchmark score different from
  the base model's? ``y_c = |Δ_c| >= threshold AND significant``. Items are paired by ``item_id``
  (both models answer the same items). Tests: paired bootstrap over items of the mean difference
  (default), two-proportion z-test (0/1 scores only) or a paired t-test.
- :func:`predict` – F13, from the category table of a pair only (never the benchmark items).
- :func:`metrics` / :func:`direction_metrics` – confusion-matrix metrics over the category units.
- :func:`baselines` – all-positive, random at prevalence (analytic expectation), decoder-norm only,
  provenance only, oracle.

:func:`evaluate_pair` assembles everything into one JSON-serialisable dict.

Direction convention (used for both truth and prediction): ``-1`` = degraded, ``+1`` = improved,
``0`` = unchanged / not predicted. A *suppressed* latent (the fine-tune weakened a base feature) is
evidence of degradation (``-1``); an *amplified* latent (the fine-tune strengthened or created a
feature) is evidence of ``+1``. The predicted direction is ``sign(n_amplified - n_suppressed)``.

Metric conventions for empty denominators: precision with no predicted positive and recall with
no true positive are undefined and reported as NaN (``None`` in JSON) and listed under
``undefined``; F1 is NaN when precision or recall is, and 0 when both are 0.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

NONE_LABEL = "none"  # same value as mneme.explainer_prompts.NONE_LABEL
FLAGGED = ("amplified", "suppressed")
CONTROL = "unchanged"
TESTS = ("bootstrap", "two_proportion", "paired_t")
METHODS = ("count", "enrichment")
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
PREDICT_COLUMNS = [
    "category",
    "n_amplified",
    "n_suppressed",
    "n",
    "predicted",
    "direction",
    "share_flagged",
    "share_control",
    "enrichment",
]


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
) -> pd.DataFrame:
    """Per category: n, base_mean, ft_mean, delta (ft − base), p_value, significant, affected, direction.

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
    return pd.DataFrame(rows, columns=GROUND_TRUTH_COLUMNS)


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
    categories_df: pd.DataFrame,
    categories: Sequence[str],
    min_latents: int = 1,
    method: str = "count",
    enrichment: float = 2.0,
    controls: pd.DataFrame | None = None,
    general_category: str | None = "general",
    column: str = "category",
) -> pd.DataFrame:
    """F13 per category: n_amplified, n_suppressed, n, predicted, direction (+ enrichment columns).

    ``categories_df`` has ``latent``, ``direction`` and the mapping column ``column``. Flagged
    latents are the amplified and suppressed ones; latents mapped to ``none`` / NaN or to
    ``general_category`` are never evidence.

    - ``count``: predicted when ``n_amplified + n_suppressed >= min_latents``.
    - ``enrichment``: share of flagged latents mapped to c (denominator: all flagged latents)
      over the share of control latents mapped to c; control latents are ``controls`` (same
      mapping column) or, by default, the ``unchanged`` rows of ``categories_df``. Predicted when
      ``ratio >= enrichment`` and ``n >= 1`` (ratio = inf when no control maps to c).

    Direction (see module doc): ``sign(n_amplified - n_suppressed)`` for predicted categories, else 0.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {list(METHODS)}")
    df = categories_df
    labels = df[column]
    ok = _evidence_mask(labels, general_category)
    direction = df["direction"].astype("object")
    amp = df[ok & (direction == "amplified")][column].astype(str).value_counts()
    sup = df[ok & (direction == "suppressed")][column].astype(str).value_counts()
    n_flagged = int(direction.isin(FLAGGED).sum())
    ctrl_counts: pd.Series | None = None
    n_ctrl = 0
    if method == "enrichment":
        ctrl = controls if controls is not None else df[direction == CONTROL]
        n_ctrl = int(len(ctrl))
        if n_ctrl == 0:
            raise ValueError("enrichment prediction needs control (unchanged) latents; none given")
        cok = _evidence_mask(ctrl[column], general_category)
        ctrl_counts = ctrl[cok][column].astype(str).value_counts()
    rows = []
    for cat in categories:
        c = str(cat)
        n_amp, n_sup = int(amp.get(c, 0)), int(sup.get(c, 0))
        n = n_amp + n_sup
        share_f = share_c = ratio = np.nan
        if method == "count":
            predicted = n >= min_latents
        else:
            assert ctrl_counts is not None
            share_f = n / n_flagged if n_flagged else 0.0
            share_c = int(ctrl_counts.get(c, 0)) / n_ctrl
            if share_c > 0:
                ratio = share_f / share_c
            else:
                ratio = math.inf if share_f > 0 else np.nan
            predicted = bool(n >= 1 and not math.isnan(ratio) and ratio >= enrichment)
        rows.append(
            {
                "category": cat,
                "n_amplified": n_amp,
                "n_suppressed": n_sup,
                "n": n,
                "predicted": bool(predicted),
                "direction": int(np.sign(n_amp - n_sup)) if predicted else 0,
                "share_flagged": share_f,
                "share_control": share_c,
                "enrichment": ratio,
            }
        )
    return pd.DataFrame(rows, columns=PREDICT_COLUMNS)


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
        "f1": _f1(prec, rec),
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


def direction_metrics(
    truth_dir: pd.Series | Sequence[int], pred_dir: pd.Series | Sequence[int]
) -> dict[str, Any]:
    """Direction-aware scores over units with labels in {−1, 0, +1}.

    ``direction_accuracy``: share of units whose 3-way label matches. ``sign_agreement``: among
    units where both truth and prediction are non-zero, share with the same sign (NaN if none);
    ``n_both`` is that count.
    """
    if isinstance(truth_dir, pd.Series) and isinstance(pred_dir, pd.Series):
        pred_dir = pred_dir.reindex(truth_dir.index)
    t = np.sign(np.asarray(truth_dir, dtype=float)).astype(int)
    p = np.sign(np.asarray(pred_dir, dtype=float)).astype(int)
    both = (t != 0) & (p != 0)
    n_both = int(both.sum())
    return {
        "direction_accuracy": _div(int(np.sum(t == p)), int(t.size)),
        "sign_agreement": _div(int(np.sum(t[both] == p[both])), n_both),
        "n_both": n_both,
        "n": int(t.size),
    }


# ---------------------------------------------------------------------------------------------
# baselines


def provenance_argmax(category_mass: pd.DataFrame) -> pd.Series:
    """latent → category with the largest share (ties by name) from category_mass.parquet."""
    if category_mass is None or category_mass.empty:
        return pd.Series(dtype=object)
    g = category_mass[["latent", "category", "share"]].copy()
    g["share"] = g["share"].astype(float).fillna(0.0)
    g = g.sort_values(["latent", "share", "category"], ascending=[True, False, True])
    top = g.drop_duplicates("latent", keep="first")
    return pd.Series(top["category"].astype(str).to_numpy(), index=top["latent"].astype(int).to_numpy())


def decoder_norm_table(
    attribution: pd.DataFrame,
    categories_df: pd.DataFrame | None = None,
    category_mass: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Pseudo category table for the "decoder-norm only" baseline.

    Latents with ``delta_bin`` ft_only (→ amplified) or base_only (→ suppressed), dead ones
    excluded; each mapped by the pair's category table when the latent is in it with a label,
    else by the provenance argmax of ``category_mass`` (else ``none``). Column ``source`` says which.
    """
    a = attribution
    keep = a["delta_bin"].isin(["ft_only", "base_only"])
    if "direction" in a:
        keep &= a["direction"].astype("object") != "dead"
    a = a[keep]
    lat = a["latent"].astype(int).to_numpy()
    table = pd.Series(dtype=object)
    if categories_df is not None and not categories_df.empty:
        c = categories_df.dropna(subset=["category"])
        table = pd.Series(c["category"].astype(str).to_numpy(), index=c["latent"].astype(int).to_numpy())
        table = table[~table.index.duplicated()]
    prov = provenance_argmax(category_mass) if category_mass is not None else pd.Series(dtype=object)
    cats, source = [], []
    for j in lat:
        if j in table.index:
            cats.append(table[j])
            source.append("table")
        elif j in prov.index:
            cats.append(prov[j])
            source.append("provenance")
        else:
            cats.append(NONE_LABEL)
            source.append("none")
    direction = np.where(a["delta_bin"].to_numpy() == "ft_only", "amplified", "suppressed")
    return pd.DataFrame({"latent": lat, "direction": direction, "category": cats, "source": source})


def baselines(
    truth: pd.Series,
    categories: Sequence[str] | None = None,
    categories_df: pd.DataFrame | None = None,
    attribution: pd.DataFrame | None = None,
    category_mass: pd.DataFrame | None = None,
    min_latents: int = 1,
    general_category: str | None = "general",
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Baseline metrics: all_positive, random_at_prevalence (analytic expectation),
    random_at_prevalence_draw (one seeded draw), decoder_norm_only (needs ``attribution``),
    provenance_only (needs ``categories_df`` with ``category_provenance``), oracle (pred = truth).

    ``truth`` is a bool Series indexed by category; ``categories`` defaults to its index.
    """
    cats = list(categories) if categories is not None else list(truth.index)
    truth = truth.reindex(cats).fillna(False).astype(bool)
    n = len(cats)
    prev = float(truth.mean()) if n else float("nan")
    out: dict[str, dict[str, Any]] = {}
    out["all_positive"] = metrics(truth, pd.Series(True, index=truth.index))
    out["random_at_prevalence"] = random_expected_metrics(prev, n)
    rng = np.random.default_rng(seed)
    out["random_at_prevalence_draw"] = metrics(truth, pd.Series(rng.random(n) < prev, index=truth.index))
    if attribution is not None:
        dn = decoder_norm_table(attribution, categories_df, category_mass)
        pr = predict(dn, cats, min_latents=min_latents, general_category=general_category)
        out["decoder_norm_only"] = metrics(truth, pd.Series(pr["predicted"].to_numpy(), index=cats))
    if categories_df is not None and "category_provenance" in categories_df:
        pr = predict(
            categories_df,
            cats,
            min_latents=min_latents,
            general_category=general_category,
            column="category_provenance",
        )
        out["provenance_only"] = metrics(truth, pd.Series(pr["predicted"].to_numpy(), index=cats))
    out["oracle"] = metrics(truth, truth)
    return out


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


def evaluate_pair(
    base_items: pd.DataFrame,
    ft_items: pd.DataFrame,
    categories_df: pd.DataFrame,
    categories: Sequence[str] | None = None,
    attribution: pd.DataFrame | None = None,
    category_mass: pd.DataFrame | None = None,
    task: str = "multiple_choice",
    threshold: float = 0.05,
    test: str = "bootstrap",
    alpha: float = 0.05,
    n_boot: int = 2000,
    method: str = "count",
    min_latents: int = 1,
    enrichment: float = 2.0,
    controls: pd.DataFrame | None = None,
    general_category: str | None = "general",
    seed: int = 0,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Ground truth + F13 prediction + metrics (mneme and baselines) for one model pair.

    ``categories`` (the evaluation units) defaults to the categories of the benchmark items of
    ``task`` minus ``general_category``. Returns a JSON-serialisable dict with keys ``config``,
    ``categories``, ``prevalence``, ``per_category`` (one record per category: truth columns,
    prediction columns prefixed ``pred_``), ``metrics`` (``mneme`` and each baseline) and
    ``direction`` (direction-aware scores of mneme).
    """
    if categories is None:
        cats = sorted(set(base_items.loc[base_items["task"] == task, "category"].astype(str)))
        cats = [c for c in cats if c != general_category]
    else:
        cats = list(categories)
    gt = ground_truth(
        base_items,
        ft_items,
        task,
        threshold,
        test=test,
        alpha=alpha,
        n_boot=n_boot,
        seed=seed,
        categories=cats,
    )
    pr = predict(
        categories_df,
        cats,
        min_latents=min_latents,
        method=method,
        enrichment=enrichment,
        controls=controls,
        general_category=general_category,
    )
    truth = pd.Series(gt["affected"].to_numpy(bool), index=cats)
    pred = pd.Series(pr["predicted"].to_numpy(bool), index=cats)
    table = gt.merge(pr.add_prefix("pred_").rename(columns={"pred_category": "category"}), on="category")
    table = table.rename(columns={"affected": "truth", "pred_predicted": "prediction"})
    mets = {"mneme": metrics(truth, pred)}
    mets.update(
        baselines(
            truth,
            cats,
            categories_df=categories_df,
            attribution=attribution,
            category_mass=category_mass,
            min_latents=min_latents,
            general_category=general_category,
            seed=seed,
        )
    )
    config = {
        "task": task,
        "threshold": threshold,
        "test": test,
        "alpha": alpha,
        "n_boot": n_boot,
        "method": method,
        "min_latents": min_latents,
        "enrichment": enrichment,
        "general_category": general_category,
        "seed": seed,
    }
    out = {
        "config": config,
        "meta": dict(meta or {}),
        "categories": cats,
        "prevalence": float(truth.mean()) if len(cats) else float("nan"),
        "per_category": table,
        "metrics": mets,
        "direction": direction_metrics(gt["direction"].to_numpy(), pr["direction"].to_numpy()),
    }
    return to_jsonable(out)
