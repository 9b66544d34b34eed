"""The README's suite tables, in Markdown, from a finished suite run.

    python benchmarks/suite_tables.py [--results results] [--subset NAME=PAIR,PAIR,...]

Reads ``results/suite.tsv`` (the ``suite`` rule) and ``results/{pair}/evaluation.json`` of every
pair in it, and prints: per pair, the target and the side effects the benchmark measured beside
what mneme and the activation-difference baseline predict; every predictor's mean scores over
the development and the held-out pairs; each pair's side-effect F1 / AUROC; and, per group, how
many of the side effects that were losses and of those that were gains each predictor found,
and how many categories it predicted that did not move; last, where each predictor ranks the
intervention's own category and how often it predicts it. Nothing is
computed here that the workflow did not write: the tables are a view of its files, except that
``--subset`` adds the mean over a named subset of the pairs (taken as the suite's own means are:
an undefined value is left out) beside the suite's groups.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow_scripts"))

from mneme.suite import MEAN  # noqa: E402 (the mean rows' pair names)

# display order and names of the predictors (suite.tsv's ``predictor`` column)
NAMES = {
    "mneme_provenance": "mneme, provenance route",
    "mneme_contexts": "mneme, contexts route",
    "mneme_explanations": "mneme, explanations route",
    "activation_diff": "activation difference",
    "decoder_norm_only": "decoder-norm only",
    "provenance_only": "provenance only (F13 count)",
    "all_positive": "all positive",
    "random_at_prevalence": "random at prevalence (expected)",
    "oracle": "oracle",
    "truth_split_half": "truth, split half (noise ceiling)",
}
MEANS = tuple(MEAN.values())


def fmt(x: object) -> str:
    return "n/a" if x is None or pd.isna(x) else f"{float(x):.2f}"


def fmt_rank(x: object) -> str:
    """A rank: whole numbers without decimals (a shared tie keeps its half)."""
    return fmt(x).removesuffix(".00")


def md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def predicted(ev: dict, name: str) -> str:
    table = ev["predictors"][name]["per_category"]
    return ", ".join(sorted(r["category"] for r in table if r["predicted"])) or "none"


def pair_table(suite: pd.DataFrame, results: Path) -> str:
    holdout = set(suite.loc[suite["group"] == "holdout", "pair"])
    rows = []
    for pair in _pairs(suite):
        ev = json.loads((results / pair / "evaluation.json").read_text())
        gt = {r["category"]: r for r in ev["ground_truth"]}
        target = ", ".join(f"{t} ({gt[t]['delta']:+.2f})" for t in ev["target"] if t in gt)
        side = [r for c, r in gt.items() if c not in ev["target"] and r["affected"]]
        effects = ", ".join(
            f"{r['category']} {r['delta']:+.2f}" for r in sorted(side, key=lambda r: r["delta"])
        )
        label = f"{pair} (held out)" if pair in holdout else pair
        rows.append(
            [label, target, effects or "none", predicted(ev, "mneme"), predicted(ev, "activation_diff")]
        )
    return md(
        [
            "pair",
            "target (change)",
            "side effects measured",
            "mneme predicts",
            "activation difference predicts",
        ],
        rows,
    )


def _pairs(suite: pd.DataFrame) -> list[str]:
    return [p for p in dict.fromkeys(suite["pair"]) if p not in MEANS]


def with_subset(suite: pd.DataFrame, name: str, pairs: list[str]) -> pd.DataFrame:
    """``suite`` with the mean over ``pairs`` per (predictor, scope) as pair ``name``."""
    if missing := sorted(set(pairs) - set(_pairs(suite))):
        raise SystemExit(f"--subset {name}: {missing} not in suite.tsv")
    sub = suite[suite["pair"].isin(pairs)]
    values = ["accuracy", "precision", "recall", "f1", "auroc", "spearman", "direction_accuracy"]
    values += [v for v in ("target_found", "target_rank") if v in suite.columns]
    means = sub.groupby(["predictor", "scope"], sort=False).agg(
        {"uses": "first", **dict.fromkeys(values, "mean")}
    )
    return pd.concat([suite, means.reset_index().assign(pair=name)], ignore_index=True)


def scores_table(suite: pd.DataFrame, extra: tuple[str, ...] = ()) -> str:
    def get(pair: str, name: str, scope: str, metric: str) -> object:
        row = suite[(suite["pair"] == pair) & (suite["predictor"] == name) & (suite["scope"] == scope)]
        return row[metric].iloc[0] if len(row) else None

    groups = [m for m in MEANS if (suite["pair"] == m).any()] + list(extra)
    header = ["predictor", "uses"]
    for g in groups:
        header += [
            f"side-effect F1, {g}",
            f"side-effect AUROC, {g}",
            f"accuracy (all), {g}",
            f"direction accuracy, {g}",
        ]
    rows = []
    for name, label in NAMES.items():
        if not (suite["predictor"] == name).any():
            continue
        uses = suite.loc[suite["predictor"] == name, "uses"].iloc[0]
        row = [label, str(uses)]
        for g in groups:
            row += [fmt(get(g, name, "side_effects", m)) for m in ("f1", "auroc")]
            row += [fmt(get(g, name, "all", "accuracy")), fmt(get(g, name, "all", "direction_accuracy"))]
        rows.append(row)
    return md(header, rows)


def per_pair_table(suite: pd.DataFrame) -> str:
    side = suite[suite["scope"] == "side_effects"]
    pairs = _pairs(suite)
    rows = []
    for name, label in NAMES.items():
        sub = side[side["predictor"] == name].set_index("pair")
        if sub.empty:
            continue
        rows.append(
            [label]
            + [
                f"{fmt(sub.at[p, 'f1'])} / {fmt(sub.at[p, 'auroc'])}" if p in sub.index else "n/a"
                for p in pairs
            ]
        )
    return md(["side-effect F1 / AUROC"] + pairs, rows)


def target_table(suite: pd.DataFrame, pairs: list[str], extra: tuple[str, ...] = ()) -> str:
    """Per predictor: the rank of the intervention's own category among all categories by score
    (1 = top) on each of ``pairs``, its mean rank per group, and per group the share of pairs
    whose target was predicted."""
    if "target_rank" not in suite.columns:
        return "suite.tsv has no target columns (made before they existed)"
    every = suite[suite["scope"] == "all"]
    groups = [m for m in MEANS if (suite["pair"] == m).any()] + list(extra)
    rows = []
    for name, label in NAMES.items():
        sub = every[every["predictor"] == name].set_index("pair")
        if sub.empty:
            continue
        ranks = [fmt_rank(sub.at[p, "target_rank"]) if p in sub.index else "n/a" for p in pairs]
        means = [fmt(sub.at[g, "target_rank"]) if g in sub.index else "n/a" for g in groups]
        found = [fmt(sub.at[g, "target_found"]) if g in sub.index else "n/a" for g in groups]
        rows.append([label, *ranks, *means, *found])
    header = ["target rank (1 = top)", *pairs]
    header += [f"mean rank, {g}" for g in groups] + [f"target found, {g}" for g in groups]
    return md(header, rows)


def by_direction_table(suite: pd.DataFrame, results: Path) -> str:
    """Per predictor and group: side-effect losses found / measured, gains found / measured,
    false positives (side-effect categories predicted that did not move), counted over pairs."""
    groups = {
        g: [p for p in _pairs(suite) if (suite.loc[suite["pair"] == p, "group"] == g).any()] for g in MEAN
    }
    evs = {p: json.loads((results / p / "evaluation.json").read_text()) for p in _pairs(suite)}
    rows = []
    for name, label in NAMES.items():
        if not any(
            name in ev["predictors"] and ev["predictors"][name]["per_category"] for ev in evs.values()
        ):
            continue
        row = [label]
        for pairs in groups.values():
            counts = {"lost": [0, 0], "gained": [0, 0], "fp": 0}
            for p in pairs:
                ev = evs[p]
                pred = {r["category"]: r["predicted"] for r in ev["predictors"][name]["per_category"]}
                for r in ev["ground_truth"]:
                    if r["category"] in ev["target"]:
                        continue
                    hit = bool(pred.get(r["category"]))
                    if r["affected"]:
                        c = counts["lost" if r["delta"] < 0 else "gained"]
                        c[0], c[1] = c[0] + hit, c[1] + 1
                    else:
                        counts["fp"] += hit
            row += [
                f"{counts['lost'][0]} / {counts['lost'][1]}",
                f"{counts['gained'][0]} / {counts['gained'][1]}",
            ]
            row.append(str(counts["fp"]))
        rows.append(row)
    header = ["predictor"]
    for g in groups:
        header += [f"losses found, {g}", f"gains found, {g}", f"false positives, {g}"]
    return md(header, rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--subset", action="append", default=[], help="NAME=PAIR,PAIR,...: its mean too")
    args = ap.parse_args()
    suite = pd.read_csv(args.results / "suite.tsv", sep="\t")
    per_pair, table, every_pair = per_pair_table(suite), pair_table(suite, args.results), _pairs(suite)
    directions = by_direction_table(suite, args.results)
    extra = []
    for spec in args.subset:
        name, _, pairs = spec.partition("=")
        suite = with_subset(suite, name, pairs.split(","))
        extra.append(name)
    for title, text in (
        ("Per pair", table),
        ("Scores (means over the pairs of each group)", scores_table(suite, tuple(extra))),
        ("Per pair, side effects", per_pair),
        ("The intervention's own category", target_table(suite, every_pair, tuple(extra))),
        ("Side effects found, by the way they moved (counts over the pairs of each group)", directions),
    ):
        print(f"## {title}\n\n{text}\n")


if __name__ == "__main__":
    main()
