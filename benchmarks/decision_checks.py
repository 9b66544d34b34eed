"""Offline checks of the category decision on a finished suite run: variants that were tried
and not built, so that the README's statements about them can be re-measured.

    python benchmarks/decision_checks.py [--results results] [--subset NAME=PAIR,PAIR,...]
                                         [--leave-out CATEGORY]

For every pair of ``results/suite.tsv`` it reads the workflow's own files (``evaluation.json``
for the truth, ``attribution.parquet``, ``category_mass.parquet``, ``activation_diff.parquet``),
re-scores the provenance route under each variant with the configured decision (the
``reference`` and ``z_pred`` in ``evaluation.json``) and prints the mean side-effect F1, AUROC
and all-category accuracy per group, then the z of ``law`` (the most frequent false positive)
per pair and variant, and the rank of the pair's own target. Nothing of the benchmark enters a
score; the truth only scores it. ``--subset`` adds the mean over a named subset of the pairs
beside the development and held-out groups (as ``suite_tables.py --subset``); ``--leave-out``
scores every variant without one category (and without the pairs aimed at it), to see how much
of a variant's score that category carries.

Last, a diagnostic that does use the truth: for each predictor with a per-category score (mneme's
routes, the activation difference), the best side-effect F1 that any threshold on that score
reaches on each pair, the threshold chosen per pair with the truth. It is an upper bound on what
a decision rule could make of the score's ranking, not a predictor: where it is high and the
configured decision is low, the ranking is right and the threshold is what fails.

Variants (each changes one thing against ``default``, the workflow's own setting):
- ``reconstruction``, ``error``: the change is the capped robust z of the log ratio on that beta
  target instead of the configured one (``attribution.target``; ``reconstruction`` was the
  default before the activation target);
- ``lift``: lift-weighted membership (``evaluate.membership: lift``);
- ``no_dense``: the latents active in more than half of all contexts left out;
- ``precision``: the change is the capped robust z of ``log_change * sqrt(n_contexts)``, as if
  each log ratio's noise fell with the square root of the contexts it was seen in;
- ``stratified``: the robust z of the log ratio is taken within each fifth of the latents by
  ``n_contexts`` (median and MAD of latents seen about as often), so a rare latent's change is
  measured against the spread of other rare latents rather than against the whole dictionary;
- ``signed``: the change keeps its sign (the capped robust z itself, amplified positive, not its
  magnitude), so a category scores high when its latents were amplified more than general
  text's and low when they were suppressed more.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "workflow_scripts"))
sys.path.insert(0, str(HERE))

from suite_tables import fmt, fmt_rank, md  # noqa: E402 (the README tables' formatting)

from mneme import prediction as pr  # noqa: E402
from mneme.attribution import robust_z  # noqa: E402
from mneme.evaluation import score_predictor  # noqa: E402

# a variant maps (attribution, membership, corpus prior) to (change c_j, membership w_jc)
Variant = Callable[[pd.DataFrame, pd.DataFrame, pd.Series], tuple[pd.Series, pd.DataFrame]]
Z_CAP = 10.0  # the attribution's strength cap (attribution.z_cap's default)


def default(att: pd.DataFrame, mass: pd.DataFrame, prior: pd.Series) -> tuple[pd.Series, pd.DataFrame]:
    return pr.eligible_change(att), mass


def _target(name: str) -> Variant:
    def variant(att: pd.DataFrame, mass: pd.DataFrame, prior: pd.Series) -> tuple[pd.Series, pd.DataFrame]:
        live = att[(att["direction"] != "dead") & np.isfinite(att[f"log_change_{name}"].astype(float))]
        z = robust_z(live[f"log_change_{name}"].to_numpy(float), np.ones(len(live), bool))
        return pd.Series(np.minimum(np.abs(z), Z_CAP), index=live["latent"].to_numpy(int)), mass

    return variant


def lift(att: pd.DataFrame, mass: pd.DataFrame, prior: pd.Series) -> tuple[pd.Series, pd.DataFrame]:
    return pr.eligible_change(att), pr.lift_membership(mass, prior)


def no_dense(att: pd.DataFrame, mass: pd.DataFrame, prior: pd.Series) -> tuple[pd.Series, pd.DataFrame]:
    change = pr.eligible_change(att)
    n_ctx = att.set_index("latent")["n_contexts"].reindex(change.index)
    return change[n_ctx <= 0.5 * n_ctx.max()], mass


def precision(att: pd.DataFrame, mass: pd.DataFrame, prior: pd.Series) -> tuple[pd.Series, pd.DataFrame]:
    live = att[(att["direction"] != "dead") & np.isfinite(att["log_change"].astype(float))]
    x = live["log_change"].to_numpy(float) * np.sqrt(live["n_contexts"].clip(lower=1).to_numpy(float))
    z = robust_z(x, np.ones(len(x), bool))
    return pd.Series(np.minimum(np.abs(z), Z_CAP), index=live["latent"].to_numpy(int)), mass


def stratified(att: pd.DataFrame, mass: pd.DataFrame, prior: pd.Series) -> tuple[pd.Series, pd.DataFrame]:
    live = att[(att["direction"] != "dead") & np.isfinite(att["log_change"].astype(float))]
    x = live["log_change"].to_numpy(float)
    n_ctx = live["n_contexts"].to_numpy(float)
    edges = np.quantile(n_ctx, np.linspace(0, 1, 6)[1:-1])
    stratum = np.searchsorted(edges, n_ctx, side="right")
    z = np.full(len(x), np.nan)
    for s in np.unique(stratum):
        z[stratum == s] = robust_z(x, stratum == s)[stratum == s]
    return pd.Series(np.minimum(np.abs(z), Z_CAP), index=live["latent"].to_numpy(int)), mass


def signed(att: pd.DataFrame, mass: pd.DataFrame, prior: pd.Series) -> tuple[pd.Series, pd.DataFrame]:
    live = att[(att["direction"] != "dead") & np.isfinite(att["change_z"].astype(float))]
    z = np.clip(live["change_z"].to_numpy(float), -Z_CAP, Z_CAP)
    return pd.Series(z, index=live["latent"].to_numpy(int)), mass


VARIANTS: dict[str, Variant] = {
    "default": default,
    "reconstruction": _target("reconstruction"),
    "error": _target("error"),
    "lift": lift,
    "no_dense": no_dense,
    "precision": precision,
    "stratified": stratified,
    "signed": signed,
}


def pair_scores(
    results: Path, pair: str, leave_out: str | None = None
) -> dict[str, tuple[dict, pd.DataFrame]]:
    """Per variant: (score_predictor's metrics, the per-category table) of one pair; with
    ``leave_out``, that category is dropped from the truth and the table before scoring."""
    ev = json.loads((results / pair / "evaluation.json").read_text())
    cfg = ev["config"]
    general = cfg["general_category"]
    att = pd.read_parquet(results / pair / "attribution.parquet")
    mass = pr.membership_from_long(pd.read_parquet(results / pair / "category_mass.parquet"), "mass")
    tokens = pd.read_parquet(results / pair / "activation_diff.parquet").set_index("category")["n_tokens"]
    prior = tokens / tokens.sum()
    truth = pd.DataFrame(ev["ground_truth"])
    truth = truth[truth["category"] != leave_out]
    reference = general if cfg.get("reference", "corpus") == "general" else None
    out = {}
    for name, variant in VARIANTS.items():
        change, member = variant(att, mass, prior)
        table = pr.category_scores(
            change, member, ev["categories"] + [general], z_pred=cfg["z_pred"], reference=reference
        )
        table = table[table["category"].isin(ev["categories"]) & (table["category"] != leave_out)]
        table = table.reset_index(drop=True)
        out[name] = (score_predictor(truth, table, ev["target"]), table)
    return out


def best_threshold_f1(truth: pd.DataFrame, table: pd.DataFrame, target: list[str]) -> float:
    """The side-effect F1 of the best top-k cut of ``table``'s score (k >= 1), by the truth."""
    side = truth[~truth["category"].isin(target)].set_index("category")["affected"].astype(bool)
    score = table.set_index("category")["score"].astype(float).reindex(side.index).fillna(-np.inf)
    hits = side.loc[score.sort_values(ascending=False, kind="stable").index].to_numpy()
    if not hits.any():
        return float("nan")
    k = np.arange(1, len(hits) + 1)
    return float(np.max(2 * np.cumsum(hits) / (k + hits.sum())))


BEST_OF = ("mneme_provenance", "mneme_contexts", "mneme_explanations", "activation_diff")


def mean_of(values: list) -> str:
    """The mean of the defined values, as the suite's means are taken (undefined left out)."""
    v = [x for x in values if x is not None and np.isfinite(x)]
    return fmt(np.mean(v)) if v else "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--subset", action="append", default=[], help="NAME=PAIR,PAIR,...: its mean too")
    ap.add_argument("--leave-out", default=None, help="a category to score without")
    args = ap.parse_args()
    results = args.results
    suite = pd.read_csv(results / "suite.tsv", sep="\t")
    pairs = suite.loc[~suite["pair"].str.startswith("mean"), ["pair", "group"]].drop_duplicates()
    evs = {p: json.loads((results / p / "evaluation.json").read_text()) for p in pairs["pair"]}
    every = [p for p in pairs["pair"] if args.leave_out not in evs[p]["target"]]
    groups = {
        g: [p for p in pairs.loc[pairs["group"] == g, "pair"] if p in every] for g in ("dev", "holdout")
    }
    for spec in args.subset:
        name, _, members = spec.partition("=")
        if missing := sorted(set(members.split(",")) - set(pairs["pair"])):
            raise SystemExit(f"--subset {name}: {missing} not in suite.tsv")
        groups[name] = [p for p in members.split(",") if p in every]
    scores = {p: pair_scores(results, p, args.leave_out) for p in every}
    rows = []
    for name in VARIANTS:
        row = [name]
        for members in groups.values():
            ms = [scores[p][name][0] for p in members]
            for scope, key in (("side_effects", "f1"), ("side_effects", "auroc"), ("all", "accuracy")):
                row.append(mean_of([m[scope][key] for m in ms]))
        rows.append(row)
    header = [f"{m}, {g}" for g in groups for m in ("side-effect F1", "AUROC", "accuracy")]
    without = f" (without {args.leave_out})" if args.leave_out else ""
    print(f"## Provenance route, variants of the decision{without}\n")
    print(md(["variant", *header], rows))
    print("\n## z of law per pair (predicted at z >= z_pred)\n")
    law = [
        [name] + [fmt(scores[p][name][1].set_index("category")["score"].get("law")) for p in every]
        for name in VARIANTS
    ]
    print(md(["variant", *every], law))
    print("\n## Rank of the pair's own target among all categories by score (1 = top)\n")
    ranks = [[name] + [fmt_rank(scores[p][name][0]["target"]["rank"]) for p in every] for name in VARIANTS]
    print(md(["variant", *every], ranks))
    print("\n## Best side-effect F1 of a threshold chosen per pair with the truth (an upper bound)\n")
    best = []
    for name in BEST_OF:
        values = {
            p: best_threshold_f1(
                pd.DataFrame(evs[p]["ground_truth"]), pd.DataFrame(ev_pred), evs[p]["target"]
            )
            for p in every
            if (ev_pred := evs[p]["predictors"].get(name, {}).get("per_category"))
        }
        means = [mean_of([values.get(p) for p in members]) for members in groups.values()]
        best.append([name, *(fmt(values.get(p)) for p in every), *means])
    print(md(["predictor", *every, *(f"mean, {g}" for g in groups)], best))


if __name__ == "__main__":
    main()
