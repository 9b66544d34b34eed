"""How much of the spread of the latents' log beta ratios is row-sampling noise? A jackknife.

    python benchmarks/beta_jackknife.py [--results results] [--folds 10] [--max-rows N] PAIR [PAIR ...]

For each pair it re-runs latent scaling (:mod:`mneme.latent_scaling`) on the pair's own crosscoder
and stores (the stores are named in ``results/{pair}/crosscoder/config.json``), with the row
batches dealt round-robin into ``--folds`` folds, and forms every leave-one-fold-out beta table
from the fold sums. It prints, per target (reconstruction, error, activation), the median
jackknife standard error of the latents' signed log change next to the spread between latents
(1.4826 MAD of the log changes over the live latents), the correlation of the standard error
with ``log(1 + n_active)``, and how many live latents have no standard error (active in one fold
only: the noisiest, so the median is a lower bound when there are many). ``--max-rows`` must be
the run's ``scaling.max_rows`` (default: the whole training split, as the schema's). The eligibility and the log change are those of
:func:`mneme.attribution.attribute` with the workflow's settings in ``attribution.parquet``.

If the standard error is far below the spread, the between-latent spread (and with it the
robust z) is not explained by which rows the betas were estimated on: it is a property of the
crosscoder itself, which no per-latent sampling correction can remove.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow_scripts"))

from mneme.activation_store import PairedStores, iter_row_batches  # noqa: E402
from mneme.attribution import MAD_SCALE, TARGETS, attribute, decoder_geometry  # noqa: E402
from mneme.crosscoder import load_crosscoder  # noqa: E402
from mneme.latent_scaling import BetaAccumulator, _to_x, crosscoder_train_stop, resolve_rows  # noqa: E402

SUMS = ("dots", "sum_f2", "sum_f", "n_active")  # the accumulator's additive statistics


def fold_betas(
    cc_dir: Path, folds: int, max_rows: int | None = None, batch_rows: int = 4096
) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """The full beta table and the ``folds`` leave-one-fold-out tables of one crosscoder."""
    cc = load_crosscoder(cc_dir).eval()
    stores_cfg = json.loads((cc_dir / "config.json").read_text())["stores"]
    stores = PairedStores(stores_cfg["base"], stores_cfg["finetuned"])
    lo, hi = resolve_rows(stores, crosscoder_train_stop(cc_dir, stores), None, max_rows)
    if -(-(hi - lo) // batch_rows) < folds:
        raise SystemExit(f"{hi - lo} rows make fewer than {folds} batches of {batch_rows}: use fewer --folds")
    accs = [BetaAccumulator(cc) for _ in range(folds)]
    for i, (_, xb, xf) in enumerate(iter_row_batches(stores, lo, hi, batch_rows)):
        accs[i % folds].update(_to_x(xb, xf, torch.device("cpu")))
    total = BetaAccumulator(cc)
    for acc in accs:
        for name in SUMS:
            getattr(total, name).add_(getattr(acc, name))
    loo = []
    for acc in accs:
        rest = BetaAccumulator(cc)
        for name in SUMS:
            getattr(rest, name).copy_(getattr(total, name) - getattr(acc, name))
        loo.append(rest.betas())
    return total.betas(), loo


def jackknife(results: Path, pair: str, folds: int, max_rows: int | None) -> list[list[str]]:
    """One row per target: median SE, between-latent spread, their ratio, corr(SE, log(1 +
    n_active)) and the live latents without a standard error."""
    cc_dir = results / pair / "crosscoder"
    cc = load_crosscoder(cc_dir)
    geometry = decoder_geometry(cc.W_dec.detach().numpy(), cc.b_dec.detach().numpy())
    latents = pd.read_parquet(results / pair / "latents.parquet")
    run = pd.read_parquet(results / pair / "attribution.parquet")
    settings = json.loads((results / pair / "attribution_summary.json").read_text())["thresholds"]
    settings = {k: v for k, v in settings.items() if k in ("min_freq", "min_active", "min_contexts")}
    full, loo = fold_betas(cc_dir, folds, max_rows)
    att = attribute(latents, full, geometry=geometry, **settings)
    live = (att["direction"] != "dead").to_numpy() & (run["direction"] != "dead").to_numpy()
    rows = []
    for target in TARGETS:
        col = f"log_change_{target}"
        ls = np.stack([attribute(latents, b, geometry=geometry, **settings)[col].to_numpy() for b in loo])
        se = np.sqrt((folds - 1) / folds * ((ls - ls.mean(0)) ** 2).sum(0))
        finite = live & np.isfinite(att[col].to_numpy())
        ok = finite & np.isfinite(se)
        lc = att[col].to_numpy()[ok]
        spread = MAD_SCALE * float(np.median(np.abs(lc - np.median(lc))))
        corr = np.corrcoef(se[ok], np.log1p(att["n_active"].to_numpy()[ok]))[0, 1]
        med = float(np.median(se[ok]))
        no_se = int((finite & ~np.isfinite(se)).sum())
        rows.append(
            [pair, target, f"{med:.4f}", f"{spread:.4f}", f"{med / spread:.2f}", f"{corr:.2f}", str(no_se)]
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pairs", nargs="+")
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--max-rows", type=int, default=None, help="the run's scaling.max_rows")
    args = ap.parse_args()
    torch.set_num_threads(2)
    head = [
        "pair",
        "target",
        "median jackknife SE",
        "spread (1.4826 MAD)",
        "SE / spread",
        "corr(SE, log(1 + n_active))",
        "live latents without an SE",
    ]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for pair in args.pairs:
        t0 = time.perf_counter()
        for row in jackknife(args.results, pair, args.folds, args.max_rows):
            print("| " + " | ".join(row) + " |", flush=True)
        print(f"<!-- {pair}: {time.perf_counter() - t0:.0f} s -->", file=sys.stderr)


if __name__ == "__main__":
    main()
