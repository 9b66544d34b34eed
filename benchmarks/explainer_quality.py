"""Explanation quality of one or more interpret runs, side by side.

    python benchmarks/explainer_quality.py LABEL=results/ [LABEL=DIR ...]

Each DIR holds ``{pair}/explanations.jsonl`` files (a results folder, or a copy of one run's
files). Per label and pair, and over all pairs, prints: latents explained; the mean detection
balanced accuracy (F15) and that of its control (another latent's explanation on the same
items); the share of explanations that beat their control; the share of detection judgments
that could not be read; and, on the raw answers, the share
that repeat a sentence, that end cut off (no end punctuation after the last marker), and that
have no ``[EXPLANATION]:`` marker at all; and the mean length in words of the explanation that
today's parser takes from each raw answer, with the share of those that still repeat a sentence.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow_scripts"))

from mneme.explainer_prompts import EXPLANATION_MARKER, parse_explanation  # noqa: E402

_SENT = re.compile(r"[^.!?]+[.!?]+")


def repeats_a_sentence(text: str) -> bool:
    sents = [re.sub(r"[^a-z0-9]+", " ", s.lower()).strip() for s in _SENT.findall(text or "")]
    sents = [s for s in sents if s]
    return len(sents) != len(set(sents))


def cut_off(text: str) -> bool:
    tail = (text or "").split(EXPLANATION_MARKER)[-1].strip()
    return bool(tail) and tail[-1] not in ".!?\"')"


def summarise(df: pd.DataFrame) -> dict:
    raw = df["raw_answer"].fillna("").astype(str)
    expl = raw.map(parse_explanation)  # today's parser for every run, so runs compare
    row = {
        "n": len(df),
        "explained": int((expl != "").sum()),
        "detection_ba": df.get("detection_balanced_accuracy", pd.Series(dtype=float)).mean(),
        "control_ba": df.get("control_balanced_accuracy", pd.Series(dtype=float)).mean(),
        "beats_control": df.get("beats_control", pd.Series(dtype=float)).dropna().astype(float).mean(),
        "unparsed": df["detection_n_unparsed"].sum() / df["detection_n"].sum()
        if "detection_n" in df
        else None,
        "raw_repeats": raw.map(repeats_a_sentence).mean(),
        "raw_cut_off": raw.map(cut_off).mean(),
        "no_marker": (~raw.str.contains(re.escape(EXPLANATION_MARKER), case=False)).mean(),
        "words": expl.str.split().map(len).mean(),
        "parsed_repeats": expl.map(repeats_a_sentence).mean(),
    }
    return row


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit(__doc__)
    rows = []
    for arg in argv:
        label, _, folder = arg.partition("=")
        frames = []
        for path in sorted(Path(folder).glob("*/explanations.jsonl")):
            df = pd.read_json(path, lines=True)
            if df.empty:
                continue
            rows.append({"run": label, "pair": path.parent.name, **summarise(df)})
            frames.append(df)
        if frames:
            rows.append({"run": label, "pair": "ALL", **summarise(pd.concat(frames, ignore_index=True))})
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main(sys.argv[1:])
