"""Detection scores (F15) of the explanations of finished pairs, for several prompt versions.

    python benchmarks/detection_quality.py LABEL=CONFIG[,OVERLAY...] [...] [--pairs bio-rmu law-ga] \
        [--judge yes_no] [--out results/detection_quality]

Each LABEL names a prompt version: the ``interpret:`` section of the config files given (merged
left to right, as ``--configfile`` does), for example ``now=config/config.yaml`` and
``v1=config/config.yaml,benchmarks/explainer-v1.yaml``. For every pair (``results/{pair}/``, a
finished run) and version, the same latents as the workflow's interpret stage are explained with
that prompt (answers come from the pair's cache when the workflow, or an earlier run of this
script, asked them already) and every explanation is judged on its held-out examples, beside its
control, by ``--judge``. One vLLM server serves every request. Judgments are added to the pair's
cache, so a later workflow run with ``interpret.score: true`` asks none of them again.

Prints per version and pair, and over all pairs: latents scored, mean detection balanced accuracy
and its control, the share beating their control, the share of unreadable judgments, and the wall
time. Per-latent tables are written to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow_scripts"))

from mneme.interpret import (  # noqa: E402
    explainer_id_for,
    interpret_latents,
    open_backend,
    select_latents,
    with_defaults,
)
from mneme.models import load_tokenizer  # noqa: E402


def merged(paths: list[str]) -> dict:
    """Config files merged key by key, later files winning (what Snakemake's --configfile does)."""

    def merge(a: dict, b: dict) -> dict:
        out = copy.deepcopy(a)
        for k, v in b.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    cfg: dict = {}
    for p in paths:
        cfg = merge(cfg, yaml.safe_load(Path(p).read_text()) or {})
    return cfg


def summary(df: pd.DataFrame) -> dict:
    scored = df[df["detection_balanced_accuracy"].notna()] if "detection_balanced_accuracy" in df else df[:0]
    return {
        "scored": len(scored),
        "detection_ba": scored["detection_balanced_accuracy"].mean(),
        "control_ba": scored["control_balanced_accuracy"].mean(),
        "beats_control": scored["beats_control"].dropna().astype(float).mean(),
        "unreadable": scored["detection_n_unparsed"].sum() / max(1, scored["detection_n"].sum()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("versions", nargs="+", help="LABEL=CONFIG[,OVERLAY...]")
    ap.add_argument("--pairs", nargs="+", default=["bio-rmu", "med-rmu", "law-ga", "math-ft"])
    ap.add_argument("--results", default="results")
    ap.add_argument("--judge", default=None, help="interpret.prompt.detection.judge (default: the config's)")
    ap.add_argument("--out", default="results/detection_quality")
    args = ap.parse_args()
    versions = {}
    for arg in args.versions:
        label, _, files = arg.partition("=")
        cfg = with_defaults(merged(files.split(","))["interpret"] | {"score": True})
        if args.judge:
            cfg["prompt"]["detection"]["judge"] = args.judge
        versions[label] = cfg
    first = next(iter(versions.values()))
    model = first["vllm"]["model"]
    explainer_dir = Path(args.results, "models", model)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    with open_backend(first, explainer_dir, server_log=out_dir / "server.log") as backend:
        for label, cfg in versions.items():
            frames = []
            for pair in args.pairs:
                pdir = Path(args.results, pair)
                contexts = pd.read_parquet(pdir / "contexts.parquet")
                latents = select_latents(
                    pd.read_parquet(pdir / "attribution.parquet"), contexts, cfg["top_k"], cfg["directions"]
                )
                tok = load_tokenizer(explainer_dir)  # the pairs' base model: the same tokenizer
                t0 = time.monotonic()
                df = interpret_latents(
                    contexts,
                    latents,
                    tok,
                    backend,
                    pdir / "cache" / "interpret.jsonl",
                    cfg["prompt"],
                    explainer_id_for(cfg, explainer_dir),
                    score=True,
                    on_error="skip",
                )
                seconds = time.monotonic() - t0
                df.to_json(out_dir / f"{label}-{pair}.jsonl", orient="records", lines=True)
                rows.append({"version": label, "pair": pair, **summary(df), "seconds": seconds})
                frames.append(df)
                print(rows[-1], flush=True)
            rows.append({"version": label, "pair": "ALL", **summary(pd.concat(frames, ignore_index=True))})
    table = pd.DataFrame(rows)
    table.to_csv(out_dir / "summary.tsv", sep="\t", index=False)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
