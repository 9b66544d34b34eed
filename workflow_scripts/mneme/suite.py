"""Scores across the pairs of one config (the organism suite), and their sensitivity to settings.

A prediction rule is judged on several organisms, never one. :func:`suite_table` puts every
predictor's metrics of every pair in one long table with the mean over pairs beside them;
:func:`sensitivity` re-runs the decision of mneme's routes over a small grid of its settings
(the log-ratio target, strength cap and minimum number of contexts of the attribution, the z of the category
decision, the provenance route's membership weight, the reference a category is compared
with) on the pairs' own files, and reports the mean side-effect F1 and AUROC per setting, so a
reader can see whether the defaults sit on a plateau or on a peak.

Pairs marked ``holdout`` are kept out of both: their mean is reported apart (pair
``mean_holdout``) and the grid is computed per group, so a default chosen on the development
pairs is checked on pairs it was not chosen on.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mneme import prediction as pr
from mneme.attribution import robust_z
from mneme.evaluation import predictor_tables, score_predictor

SCOPES = ("side_effects", "all")
METRICS = ("accuracy", "precision", "recall", "f1", "auroc", "spearman")
GRID = {
    "z_pred": (0.0, 1.0, 2.0, 3.0, 5.0, 8.0),
    "target": ("activation", "reconstruction", "error"),
    "z_cap": (5.0, 10.0, 1e9),
    "min_contexts": (1, 5, 20),
    "membership": ("mass", "lift"),
    "reference": ("corpus", "general"),
}


# The grid's settings (suite_sensitivity.tsv's setting columns, which the report reads): those
# of the category decision itself, and those that re-derive the attribution first. They live
# here, not in mneme.contracts, which the early stages import: renaming a column of the grid
# must not re-run them.
DECISION_SETTINGS = ("z_pred", "membership", "reference")
ATTRIBUTION_SETTINGS = ("target", "z_cap", "min_contexts")

MEAN = {"dev": "mean", "holdout": "mean_holdout"}


def groups(pairs: Sequence[str], holdout: Sequence[str] = ()) -> dict[str, list[str]]:
    """The pairs of each group (``dev``, and ``holdout`` when there is one), in config order."""
    out = {"dev": [p for p in pairs if p not in holdout], "holdout": [p for p in pairs if p in holdout]}
    return {g: ps for g, ps in out.items() if ps}


def suite_table(evaluations: Mapping[str, Mapping[str, Any]], holdout: Sequence[str] = ()) -> pd.DataFrame:
    """One row per (pair, predictor, scope) with every metric and the pair's ``group`` (``dev`` or
    ``holdout``), then the mean over the development pairs per (predictor, scope) as pair
    ``mean`` and over the ``holdout`` pairs as ``mean_holdout``. The all-categories rows also
    carry the direction accuracy and the pair's own target (``target_found``, ``target_rank``;
    NaN for an evaluation.json made before they existed). An undefined value is left out of a
    mean; F1 is undefined only for a pair with nothing to find and nothing predicted, and
    ``n_pairs_f1`` says over how many pairs the mean F1 was taken."""
    rows = []
    for pair, ev in evaluations.items():
        group = "holdout" if pair in holdout else "dev"
        for name, p in ev["predictors"].items():
            for scope in SCOPES:
                m = p["metrics"][scope]
                row = {"pair": pair, "group": group, "predictor": name, "uses": p["uses"], "scope": scope}
                row |= {k: m.get(k) for k in METRICS}
                row["direction_accuracy"] = p["metrics"]["direction"]["accuracy"] if scope == "all" else None
                # the intervention's own category: found (predicted) and its rank by score
                own = p["metrics"].get("target", {})
                row["target_found"] = own.get("found") if scope == "all" else None
                row["target_rank"] = own.get("rank") if scope == "all" else None
                row["tp"], row["fp"], row["fn"], row["tn"] = (m.get(k) for k in ("tp", "fp", "fn", "tn"))
                rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    value_cols = list(METRICS) + ["direction_accuracy", "target_found", "target_rank"]
    df[value_cols] = df[value_cols].astype(float)
    parts = [df]
    for group, pairs in groups(list(evaluations), holdout).items():
        sub = df[df["pair"].isin(pairs)]
        means = sub.groupby(["predictor", "scope"], sort=False).agg(
            {"uses": "first", **{c: "mean" for c in value_cols}, "pair": "count"}
        )
        means = means.rename(columns={"pair": "n_pairs"})
        means["n_pairs_f1"] = sub.groupby(["predictor", "scope"], sort=False)["f1"].count()
        means = means.reset_index()
        means["pair"], means["group"] = MEAN[group], group
        parts.append(means)
    return pd.concat(parts, ignore_index=True)


def _restrength(
    attribution: pd.DataFrame,
    target: str,
    z_cap: float,
    min_contexts: int,
    min_active: int = 1,
    min_freq: float = 0.0,
) -> pd.DataFrame:
    """The robust-mode attribution under other settings: the z of ``log_change_<target>`` over the
    latents eligible with ``min_contexts`` (and the run's ``min_active`` and ``min_freq``), its
    strength capped at ``z_cap``: what :func:`mneme.attribution.attribute` computes in robust mode
    from the same betas (a test checks it). The directions and effects stay the run's: they do
    not enter the grid's metrics."""
    a = attribution.copy()
    a["log_change"] = a[f"log_change_{target}"]
    n_ctx = a["n_contexts"].to_numpy()
    eligible = (
        (a["reason"].astype(str) != "dead").to_numpy()
        & (a["n_active"].to_numpy() >= min_active)
        & (a["freq"].fillna(0.0).to_numpy(float) >= min_freq)
        & ((n_ctx < 0) | (n_ctx >= min_contexts))
    )
    z = robust_z(a["log_change"].to_numpy(float), eligible)
    a["strength"] = np.minimum(np.abs(z), z_cap)
    a["direction"] = np.where(
        eligible, np.where(a["direction"] == "dead", "unchanged", a["direction"]), "dead"
    )
    return a


def sensitivity(
    pairs: Mapping[str, Mapping[str, Any]],
    grid: Mapping[str, Sequence[float]] = GRID,
    general_category: str = "general",
    holdout: Sequence[str] = (),
    defaults: Mapping[str, float] | None = None,
    eligibility: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Mean side-effect F1 / AUROC (and all-category accuracy) of each mneme route per setting,
    per group of pairs (``dev``, and ``holdout`` when some pairs are held out). ``defaults`` (the
    config's value of each grid setting) marks the rows of the configured setting (``default``);
    ``eligibility`` holds the attribution's ``min_active`` and ``min_freq``, which the grid keeps.

    ``pairs`` maps a pair to its inputs: ``evaluation`` (the evaluation.json dict, for the ground
    truth, the target and the categories), ``attribution``, ``category_mass``, ``activation_diff``
    and optionally ``labels`` and ``context_membership`` tables.
    """
    frames = [
        _sensitivity({p: pairs[p] for p in members}, grid, general_category, eligibility or {}).assign(
            group=group
        )
        for group, members in groups(list(pairs), holdout).items()
    ]
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if defaults is not None and not out.empty:
        out["default"] = np.logical_and.reduce([_is(out[k], v) for k, v in defaults.items()])
    return out


def _is(column: pd.Series, value: Any) -> np.ndarray:
    """Rows of a grid column equal to a setting: numbers up to rounding, names exactly."""
    if isinstance(value, str):
        return (column.astype(str) == value).to_numpy()
    return np.isclose(column.astype(float), float(value))


def _sensitivity(
    pairs: Mapping[str, Mapping[str, Any]],
    grid: Mapping[str, Sequence[float]],
    general_category: str,
    eligibility: Mapping[str, float],
) -> pd.DataFrame:
    if missing := sorted(set(GRID) - set(grid)):
        raise ValueError(
            f"the sensitivity grid needs a value list for each of {sorted(GRID)}; missing {missing}"
        )
    rows = []
    # z_pred only re-decides the score tables: they are computed once per other setting
    others = [k for k in GRID if k != "z_pred"]
    for values in itertools.product(*(grid[k] for k in others)):
        setting = dict(zip(others, values))
        tables = [
            (inputs["evaluation"], _route_tables(inputs, setting, general_category, eligibility))
            for inputs in pairs.values()
        ]
        for z_pred in grid["z_pred"]:
            scores: dict[str, list[dict[str, Any]]] = {}
            for ev, routes in tables:
                truth = pd.DataFrame(ev["ground_truth"])
                for name, table in routes.items():
                    m = score_predictor(truth, pr.decide(table, z_pred), ev["target"])
                    scores.setdefault(name, []).append(m)
            for name, ms in scores.items():
                rows.append(
                    {
                        "route": name.removeprefix("mneme_"),
                        **{k: z_pred if k == "z_pred" else setting[k] for k in GRID},
                        "side_effect_f1": _mean(m["side_effects"]["f1"] for m in ms),
                        "side_effect_auroc": _mean(m["side_effects"]["auroc"] for m in ms),
                        "accuracy": _mean(m["all"]["accuracy"] for m in ms),
                        "n_pairs": len(ms),
                    }
                )
    return pd.DataFrame(rows)


def _route_tables(
    inputs: Mapping[str, Any],
    setting: Mapping[str, Any],
    general_category: str,
    eligibility: Mapping[str, float],
) -> dict[str, pd.DataFrame]:
    """mneme's per-category score tables of one pair under ``setting`` (every grid key but
    ``z_pred``; the tables are decided at z_pred 0 and re-decided by the caller)."""
    ev = inputs["evaluation"]
    attribution = _restrength(
        inputs["attribution"],
        setting["target"],
        setting["z_cap"],
        int(setting["min_contexts"]),
        **eligibility,
    )
    tables = predictor_tables(
        ev["categories"],
        attribution=attribution,
        category_mass=inputs["category_mass"],
        activation_diff=inputs["activation_diff"],
        labels=inputs.get("labels"),
        context_membership=inputs.get("context_membership"),
        general_category=general_category,
        z_pred=0.0,
        **{k: setting[k] for k in DECISION_SETTINGS if k != "z_pred"},
    )
    return {name: table for name, table in tables.items() if name.startswith("mneme_")}


def _mean(values) -> float:
    v = np.array([x for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")
