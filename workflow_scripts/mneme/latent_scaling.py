"""Latent scaling (method.md F11): closed-form betas for every latent in one streaming pass.

For latent ``j`` with probe vector ``v_j`` and per-token targets ``y_i``, ``beta_j`` minimises
``sum_i ||beta * f_ij * v_j - y_i||^2``, so::

    beta_j = B_j / (||v_j||^2 * C_j),   B_j = sum_i f_ij <v_j, y_i>,   C_j = sum_i f_ij^2

(undefined, NaN here, when ``C_j = 0``). ``f`` is the threshold encoding (F8) of the normalised pair.
For each model ``m`` (base, ft) there are three targets:

- ``activation``:     ``y_i = x_{m,i}``;
- ``reconstruction``: ``y_i = x_hat_{m,i}`` (the crosscoder's reconstruction, with ``b_dec``);
- ``error``:          ``y_i = x_{m,i} - x_hat_{m,i} + f_ij d_j^m`` (latent ``j``'s own contribution put
  back), i.e. ``B_j = sum_i f_ij <v_j, e_{m,i}> + (v_j . d_j^m) C_j`` with ``e = x - x_hat``;

and two probes: ``v_j = d_j^f`` (the fine-tuned decoder, as in the reference code) and ``v_j = d_j^b``
(the base decoder, needed to score latents that the fine-tuning suppressed, whose ``d_j^f`` is ~0).

**One pass, sparse** (the batched form of method.md F11). Per batch, with the four target vectors
``Y_i = [e_b, e_f, x_hat_b, x_hat_f]`` of every token (``e = x - x_hat``), the per-latent sums
``A_j = sum_i f_ij Y_i`` are formed from the active pairs only (``f_ij > 0``; an ``embedding_bag`` over
the token rows grouped by latent, weighted by ``f_ij``): ``O(nnz * 4d)`` instead of the dense
``O(B * 4d * h)`` of ``Y^T F``. Then ``B_j += <v_j, A_j>`` for both probes ``v_j`` in ``{d_j^b, d_j^f}``
(``O(h * d)``), accumulated in float64 with ``C_j``. No per-nnz vectors are materialised, and no loop
runs over latents (latents are only cut into blocks to bound the memory of ``A``). The activation
target needs no extra work: ``x = e + x_hat``.

The pass uses the training split only (rows ``< train_stop``, the same tail split as the trainer,
:func:`mneme.paired_loader.split_train_val` with the crosscoder's ``val_tokens``), optionally limited
by ``row_range`` and ``max_rows``.

Output ``betas.parquet`` (one row per latent): ``beta_{target}_{model}_{probe}`` for target in
``reconstruction, error, activation``, model in ``base, ft``, probe in ``ftdec, basedec``; the F11
ratios with the fine-tuned probe ``nu_r = beta^{b,r} / beta^{f,r}``, ``nu_eps = beta^{b,eps} /
beta^{f,eps}``; their mirrors with the base probe ``mu_r = beta^{f,r} / beta^{b,r}``,
``mu_eps = beta^{f,eps} / beta^{b,eps}`` (F12); the activation-target ratios ``nu_a`` (ft probe) and
``nu_a_basedec`` (base probe), both base / ft; ``sum_f2`` (= C), ``sum_f``, ``n_active`` (tokens with
``f > 0``). Ratios are plain quotients (NaN / inf / negative values are left for
:mod:`mneme.attribution` to interpret). ``scaling_cost.json`` next to it records the wall time of this
pass and of a plain inference pass (read + encode + decode) over the same rows.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mneme.activation_store import PairedStores, iter_row_batches
from mneme.contracts import beta_column
from mneme.crosscoder import CrossCoder, load_crosscoder, row_offsets
from mneme.paired_loader import split_train_val

LOG = logging.getLogger("mneme.latent_scaling")

TARGETS = ("reconstruction", "error", "activation")
MODELS = ("base", "ft")
PROBES = ("ftdec", "basedec")  # v = d^f (reference), v = d^b (mirror for suppressed latents)
COST_FILE = "scaling_cost.json"
# floats of the per-batch sums A = Y^T F held at once (latents are processed in blocks of
# BLOCK_FLOATS // (4 d)); 2**26 floats = 256 MiB
BLOCK_FLOATS = 2**26


def closed_form_beta(f: np.ndarray, v: np.ndarray, y: np.ndarray) -> float:
    """``argmin_beta sum_i ||beta f_i v - y_i||^2`` for one latent: ``f`` ``[n]``, ``v`` ``[d]``,
    ``y`` ``[n, d]``; NaN if ``sum f^2 = 0`` or ``v = 0``."""
    f, v, y = np.asarray(f, np.float64), np.asarray(v, np.float64), np.asarray(y, np.float64)
    den = float(v @ v) * float(f @ f)
    if den == 0:
        return float("nan")
    return float(f @ (y @ v)) / den


def crosscoder_train_stop(cc_dir: str | os.PathLike, stores: PairedStores) -> int:
    """First validation row of the crosscoder's training split (the trainer's tail split)."""
    cfg = json.loads((Path(cc_dir) / "config.json").read_text())
    val_tokens = (cfg.get("training_config") or {}).get("val_tokens")
    if val_tokens is None:
        LOG.warning("%s records no val_tokens; latent scaling uses every row of the store", cc_dir)
        return stores.n_rows
    man = stores.base.manifest
    per_ctx = None
    if man.get("context_len") is not None:
        per_ctx = int(man["context_len"]) - int(man.get("first_position") or 0)
    stop = split_train_val(stores.n_rows, int(val_tokens), per_ctx)
    recorded = cfg.get("n_train_rows")
    if recorded is not None and (cfg.get("stores") or {}).get("n_rows") == stores.n_rows and recorded != stop:
        raise ValueError(f"training split mismatch: config says {recorded} training rows, recomputed {stop}")
    return stop


def resolve_rows(
    stores: PairedStores, train_stop: int, row_range: tuple[int, int] | None, max_rows: int | None
) -> tuple[int, int]:
    """The row interval a latent-scaling pass reads: training rows, ``row_range``, ``max_rows``."""
    lo, hi = 0, train_stop
    if row_range is not None:
        lo, hi = max(lo, int(row_range[0])), min(hi, int(row_range[1]))
    if max_rows is not None:
        hi = min(hi, lo + int(max_rows))
    if hi <= lo:
        raise ValueError(f"no rows to use for latent scaling (range [{lo}, {hi}), train_stop={train_stop})")
    return lo, hi


class BetaAccumulator:
    """Sufficient statistics of F11 for all latents, updated batch by batch.

    ``dots[j, t, p] = sum_i f_ij <v^p_j, Y_t,i>`` for targets ``Y = (e_b, e_f, x_hat_b, x_hat_f)`` and
    probes ``v^0 = d^b``, ``v^1 = d^f``; ``sum_f2[j] = C_j``; ``sum_f``; ``n_active``.
    """

    def __init__(self, cc: CrossCoder) -> None:
        if cc.n_models != 2:
            raise ValueError("latent scaling needs a two-model crosscoder")
        self.cc = cc
        h = cc.dict_size
        dev = cc.dec_weight.device
        self.dots = torch.zeros(h, 4, 2, dtype=torch.float64, device=dev)
        self.sum_f2 = torch.zeros(h, dtype=torch.float64, device=dev)
        self.sum_f = torch.zeros(h, dtype=torch.float64, device=dev)
        self.n_active = torch.zeros(h, dtype=torch.int64, device=dev)
        self.n_rows = 0
        self.nnz = 0

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Add a batch of normalised activations ``x`` ``[B, 2, d]``."""
        cc = self.cc
        d, h = cc.d_model, cc.dict_size
        code = cc.encode_sparse(x, use_threshold=True)
        x_hat = cc.decode_sparse(code)  # [B, 2, d]
        targets = torch.cat([x - x_hat, x_hat], dim=1).reshape(x.shape[0], 4 * d)  # e_b, e_f, x^_b, x^_f
        table = cc.dec_weight.detach()  # [h, 2d]: row j = [d_j^b ; d_j^f]
        vals = code.vals.float()
        order = torch.argsort(code.cols, stable=True)
        cols, rows, w = code.cols[order], code.rows[order], vals[order]
        block = max(1, BLOCK_FLOATS // (4 * d))
        bounds = torch.searchsorted(cols, torch.arange(0, h + block, block, device=cols.device)).tolist()
        for i, b0 in enumerate(range(0, h, block)):
            lo, hi = bounds[i], bounds[i + 1]
            if lo == hi:
                continue
            b1 = min(b0 + block, h)
            # A[j] = sum_i f_ij y_i over the active pairs of latents [b0, b1): the sparse A = Y^T F
            a = F.embedding_bag(
                rows[lo:hi],
                targets,
                row_offsets(cols[lo:hi] - b0, b1 - b0),
                mode="sum",
                per_sample_weights=w[lo:hi],
            )
            probes = table[b0:b1].view(b1 - b0, 2, d)
            self.dots[b0:b1] += torch.einsum("jtd,jpd->jtp", a.view(b1 - b0, 4, d), probes).double()
        self.sum_f2.index_add_(0, code.cols, (vals * vals).double())
        self.sum_f.index_add_(0, code.cols, vals.double())
        self.n_active += torch.bincount(code.cols, minlength=h)
        self.n_rows += x.shape[0]
        self.nnz += vals.numel()

    @torch.no_grad()
    def betas(self) -> pd.DataFrame:
        """The beta table (see the module docstring)."""
        w = self.cc.W_dec.detach().double().cpu()  # [2, h, d]
        probes = {"basedec": w[0], "ftdec": w[1]}
        p_index = {"basedec": 0, "ftdec": 1}
        c, dots = self.sum_f2.cpu(), self.dots.cpu()
        out: dict[str, np.ndarray] = {"latent": np.arange(self.cc.dict_size, dtype=np.int64)}
        with np.errstate(divide="ignore", invalid="ignore"):
            for probe, v in probes.items():
                p = p_index[probe]
                den = (v * v).sum(-1) * c
                for m, model in enumerate(MODELS):
                    b_err = dots[:, m, p] + (v * w[m]).sum(-1) * c
                    b_rec = dots[:, 2 + m, p]
                    b_act = dots[:, m, p] + dots[:, 2 + m, p]
                    for target, num in (("reconstruction", b_rec), ("error", b_err), ("activation", b_act)):
                        beta = torch.where(den > 0, num / den.clamp_min(1e-300), torch.nan)
                        out[beta_column(target, model, probe)] = beta.numpy()
            col = beta_column
            out["nu_r"] = (
                out[col("reconstruction", "base", "ftdec")] / out[col("reconstruction", "ft", "ftdec")]
            )
            out["nu_eps"] = out[col("error", "base", "ftdec")] / out[col("error", "ft", "ftdec")]
            out["mu_r"] = (
                out[col("reconstruction", "ft", "basedec")] / out[col("reconstruction", "base", "basedec")]
            )
            out["mu_eps"] = out[col("error", "ft", "basedec")] / out[col("error", "base", "basedec")]
            out["nu_a"] = out[col("activation", "base", "ftdec")] / out[col("activation", "ft", "ftdec")]
            out["nu_a_basedec"] = (
                out[col("activation", "base", "basedec")] / out[col("activation", "ft", "basedec")]
            )
        out["sum_f2"] = c.numpy()
        out["sum_f"] = self.sum_f.cpu().numpy()
        out["n_active"] = self.n_active.cpu().numpy()
        return pd.DataFrame(out)


def _to_x(xb: np.ndarray, xf: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.stack([xb, xf], axis=1)).to(device)


@torch.no_grad()
def inference_pass(
    cc: CrossCoder, stores: PairedStores, start: int, stop: int, batch_rows: int = 4096
) -> dict:
    """Time a plain read + threshold encode + decode pass over ``[start, stop)`` (the cost baseline)."""
    device = next(cc.parameters()).device
    t0 = time.perf_counter()
    n = 0
    for _, xb, xf in iter_row_batches(stores, start, stop, batch_rows):
        x = _to_x(xb, xf, device)
        cc.decode_sparse(cc.encode_sparse(x, use_threshold=True))
        n += len(xb)
    return {"seconds": time.perf_counter() - t0, "rows": n}


@torch.no_grad()
def compute_betas(
    crosscoder_dir: str | os.PathLike,
    base_manifest: str | os.PathLike,
    ft_manifest: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    max_rows: int | None = None,
    row_range: tuple[int, int] | None = None,
    batch_rows: int = 4096,
    time_inference: bool = True,
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """Closed-form betas (F11) for every latent, both models, three targets, both probes; one pass.

    Writes ``out_path`` (parquet, via a temporary name) and ``scaling_cost.json`` in the same folder
    (wall time of this pass and, if ``time_inference``, of a plain inference pass over the same rows,
    and their ratio). Returns the beta table.
    """
    cc = load_crosscoder(crosscoder_dir, device=device).eval()
    stores = PairedStores(base_manifest, ft_manifest)
    if stores.d_model != cc.d_model:
        raise ValueError(f"crosscoder d_model {cc.d_model} != store d_model {stores.d_model}")
    train_stop = crosscoder_train_stop(crosscoder_dir, stores)
    lo, hi = resolve_rows(stores, train_stop, row_range, max_rows)
    dev = next(cc.parameters()).device
    LOG.info(
        "latent scaling: %d latents, rows [%d, %d) of %d (training split ends at %d)",
        cc.dict_size, lo, hi, stores.n_rows, train_stop,
    )  # fmt: skip
    acc = BetaAccumulator(cc)
    t0 = time.perf_counter()
    t_log = t0
    read_s = 0.0
    t_read = time.perf_counter()
    for _, xb, xf in iter_row_batches(stores, lo, hi, batch_rows):
        read_s += time.perf_counter() - t_read
        acc.update(_to_x(xb, xf, dev))
        if time.perf_counter() - t_log > 30:
            t_log = time.perf_counter()
            LOG.info(
                "latent scaling: %d/%d rows (%.0f rows/s)", acc.n_rows, hi - lo, acc.n_rows / (t_log - t0)
            )
        t_read = time.perf_counter()
    df = acc.betas()
    pass_s = time.perf_counter() - t0

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, out_path)

    cost = {
        "rows": acc.n_rows,
        "row_start": lo,
        "row_stop": hi,
        "train_stop": train_stop,
        "dict_size": cc.dict_size,
        "d_model": cc.d_model,
        "mean_l0": acc.nnz / max(acc.n_rows, 1),
        "n_live": int((acc.n_active > 0).sum()),
        "scaling_seconds": pass_s,
        "scaling_read_seconds": read_s,
    }
    if time_inference:
        inf = inference_pass(cc, stores, lo, hi, batch_rows)
        cost["inference_seconds"] = inf["seconds"]
        cost["cost_vs_inference"] = pass_s / max(inf["seconds"], 1e-12)
    tmp = out_path.with_name(COST_FILE + ".tmp")
    tmp.write_text(json.dumps(cost, indent=2))
    os.replace(tmp, out_path.with_name(COST_FILE))
    LOG.info(
        "latent scaling: %d rows, L0 %.1f, %d live latents, %.1fs%s",
        acc.n_rows, cost["mean_l0"], cost["n_live"], pass_s,
        f"; latent scaling cost = {cost['cost_vs_inference']:.2f}x one inference pass "
        f"({cost['inference_seconds']:.1f}s)" if time_inference else "",
    )  # fmt: skip
    return df
