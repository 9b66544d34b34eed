"""Per-latent statistics and example contexts of a trained crosscoder (method.md stages 4 and 7, F10).

:func:`compute_latent_stats` makes **one streaming pass** over a pair of activation stores, reading
whole contexts at a time (row ``r`` is token ``(r // n_pos, first_position + r % n_pos)`` of the corpus
token grid, ``n_pos = context_len - first_position``), encoding them with the crosscoder's inference
threshold (F8) and keeping, per latent and vectorised across latents:

- decoder norms per model, the relative decoder norm ``Delta`` (F10) and its bin, the cosine between
  the base and fine-tuned decoder vectors;
- activation frequency (fraction of tokens with ``f > 0``), mean activation when active, max
  activation (and where), number of contexts it fires in, a dead flag (never fires);
- activation mass per corpus category (``sum f`` over the tokens of documents of that category;
  ``doc_index`` -> ``docs.parquet`` ``category``; tokens without a document count as ``(none)``);
- a streaming top-``n_top`` of *distinct contexts* by in-context max activation with the peak position
  (a ``torch.topk`` merge of the running ``[h, n_top]`` table with the batch's ``[h, contexts]`` maxima);
- a uniform sample (reservoir) of up to ``n_reservoir`` activating contexts per latent with their
  in-context max: every (context, latent) pair that fires gets a uniform random key and the
  ``n_reservoir`` largest keys are kept (again a ``topk`` merge), which is a uniform sample without
  replacement of the activating contexts.

Memory is the batch (``batch_rows`` rows, dense ``[batch_rows, h]`` codes) plus ``O(h * (n_top +
n_reservoir))``, independent of the store size.

Outputs: ``latents.parquet`` (one row per latent), ``category_mass.parquet`` (long table ``latent,
category, mass, share``, nonzero mass only; ``share = mass / sum_activation``) and the top/reservoir
table (``.npz`` or ``.parquet`` by suffix; :func:`read_topk` returns it as a DataFrame with columns
``latent, kind ('top'|'reservoir'), rank, context, position, activation``; rank orders a latent's
entries of one kind by activation, 0 = largest).

:func:`collect_contexts` then builds the example records the interpreter needs for a few latents
(re-encoding only the contexts it needs, and only the requested latents' encoder columns).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import zarr

from mneme.activation_store import PairedStores
from mneme.contracts import delta_bin
from mneme.crosscoder import CrossCoder, load_crosscoder
from mneme.token_categories import CategoryMap

LOG = logging.getLogger("mneme.latent_stats")

TOPK_KINDS = ("top", "reservoir")
RECORD_KINDS = ("top", "quantile", "negative")


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def context_layout(stores: PairedStores) -> tuple[int, int, int]:
    """``(first_position, context_len, n_pos)`` of the stores' token grid (one context if unknown)."""
    man = stores.base.manifest
    first = int(man.get("first_position") or 0)
    ctx_len = man.get("context_len")
    if ctx_len is None:
        return first, first + stores.n_rows, stores.n_rows
    return first, int(ctx_len), int(ctx_len) - first


def decoder_table(cc: CrossCoder) -> pd.DataFrame:
    """Per latent: ``dec_norm_base``, ``dec_norm_ft``, ``delta`` (F10), ``delta_bin``, ``dec_cos``."""
    w = cc.W_dec.detach().double().cpu()  # [2, h, d]
    norms = w.norm(dim=-1)
    delta = cc.relative_decoder_norm().double().cpu().numpy()
    cos = (w[0] * w[1]).sum(-1) / (norms[0] * norms[1]).clamp_min(1e-30)
    return pd.DataFrame(
        {
            "latent": np.arange(cc.dict_size, dtype=np.int64),
            "dec_norm_base": norms[0].numpy(),
            "dec_norm_ft": norms[1].numpy(),
            "delta": delta,
            "delta_bin": delta_bin(delta),
            "dec_cos": cos.numpy(),
        }
    )


def iter_context_batches(
    stores: PairedStores, stop: int, batch_rows: int, n_pos: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(row_start, xb, xf)`` normalised batches over rows ``[0, stop)`` made of whole contexts
    (``max(1, batch_rows // n_pos)`` contexts each; a trailing partial context comes alone). Each
    storage chunk is read once; rows not yet forming a full batch are carried over."""
    per = max(1, batch_rows // n_pos) * n_pos
    buf_b: list[np.ndarray] = []
    buf_f: list[np.ndarray] = []
    have, at = 0, 0

    def take(n: int) -> tuple[np.ndarray, np.ndarray]:
        nonlocal buf_b, buf_f, have
        xb = np.concatenate(buf_b) if len(buf_b) > 1 else buf_b[0]
        xf = np.concatenate(buf_f) if len(buf_f) > 1 else buf_f[0]
        buf_b, buf_f = ([xb[n:]], [xf[n:]]) if n < len(xb) else ([], [])
        have -= n
        return xb[:n], xf[:n]

    for lo, hi in stores.blocks():
        hi = min(hi, stop)
        if lo >= hi:
            break
        xb, xf = stores.read(lo, hi)
        buf_b.append(xb)
        buf_f.append(xf)
        have += hi - lo
        while have >= per:
            xb, xf = take(per)
            yield at, xb, xf
            at += per
    while have > 0:
        n = min(per, (have // n_pos) * n_pos) or have
        xb, xf = take(n)
        yield at, xb, xf
        at += n


def _write_parquet(df: pd.DataFrame, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def write_topk(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write the top/reservoir table as ``.npz`` (compact arrays) or parquet (any other suffix)."""
    path = Path(path)
    if path.suffix != ".npz":
        _write_parquet(df, path)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    kind = pd.Categorical(df["kind"], categories=TOPK_KINDS).codes.astype(np.int8)
    with open(tmp, "wb") as fh:
        np.savez(
            fh,
            latent=df["latent"].to_numpy(np.int32),
            kind=kind,
            kind_names=np.array(TOPK_KINDS),
            rank=df["rank"].to_numpy(np.int32),
            context=df["context"].to_numpy(np.int64),
            position=df["position"].to_numpy(np.int32),
            activation=df["activation"].to_numpy(np.float32),
        )
    os.replace(tmp, path)


def read_topk(path: str | os.PathLike) -> pd.DataFrame:
    """The top/reservoir table written by :func:`compute_latent_stats` as a DataFrame."""
    path = Path(path)
    if path.suffix != ".npz":
        return pd.read_parquet(path)
    with np.load(path) as z:
        names = [str(s) for s in z["kind_names"]]
        return pd.DataFrame(
            {
                "latent": z["latent"].astype(np.int64),
                "kind": np.asarray(names, dtype=object)[z["kind"]].astype(str),
                "rank": z["rank"],
                "context": z["context"],
                "position": z["position"],
                "activation": z["activation"],
            }
        )


# ----------------------------------------------------------------------------------------------
# the statistics pass
# ----------------------------------------------------------------------------------------------


class _TopTable:
    """Running per-latent top-``n`` of (score, context, position, activation) by score."""

    def __init__(self, h: int, n: int, empty: float) -> None:
        self.n, self.empty = n, empty
        self.score = torch.full((h, n), empty)
        self.context = torch.full((h, n), -1, dtype=torch.long)
        self.position = torch.full((h, n), -1, dtype=torch.long)
        self.act = torch.zeros(h, n)

    def merge(self, score: torch.Tensor, context: torch.Tensor, position: torch.Tensor, act: torch.Tensor):
        """Merge candidates ``[h, c]`` (``context`` may be ``[1, c]``, shared by all latents)."""
        if self.n == 0:
            return
        h, c = score.shape
        s = torch.cat([self.score, score], 1)
        top = s.topk(self.n, dim=1)
        idx = top.indices
        self.score = top.values
        self.context = torch.cat([self.context, context.expand(h, c)], 1).gather(1, idx)
        self.position = torch.cat([self.position, position], 1).gather(1, idx)
        self.act = torch.cat([self.act, act], 1).gather(1, idx)

    def table(self, kind: str, valid: torch.Tensor) -> pd.DataFrame:
        """Long table of the valid entries, ranked by activation (largest first) per latent."""
        act = torch.where(valid, self.act, torch.tensor(-math.inf))
        order = act.argsort(dim=1, descending=True, stable=True)
        act, ctx, pos = act.gather(1, order), self.context.gather(1, order), self.position.gather(1, order)
        ok = valid.gather(1, order)
        h, n = act.shape
        lat = torch.arange(h).unsqueeze(1).expand(h, n)
        rank = torch.arange(n).unsqueeze(0).expand(h, n)
        return pd.DataFrame(
            {
                "latent": lat[ok].numpy().astype(np.int64),
                "kind": kind,
                "rank": rank[ok].numpy().astype(np.int32),
                "context": ctx[ok].numpy().astype(np.int64),
                "position": pos[ok].numpy().astype(np.int32),
                "activation": act[ok].numpy().astype(np.float32),
            }
        )


@torch.no_grad()
def compute_latent_stats(
    crosscoder_dir: str | os.PathLike,
    base_manifest: str | os.PathLike,
    ft_manifest: str | os.PathLike,
    tokens_path: str | os.PathLike | None,
    docs_path: str | os.PathLike | None,
    out_latents: str | os.PathLike,
    out_topk: str | os.PathLike,
    *,
    n_top: int = 40,
    n_reservoir: int = 100,
    batch_rows: int = 4096,
    seed: int = 0,
    max_rows: int | None = None,
    out_category_mass: str | os.PathLike | None = None,
) -> dict:
    """One streaming pass of per-latent statistics (see the module docstring); returns a summary.

    ``max_rows`` limits the pass to the first rows of the store (rounded down to whole contexts, at
    least one). ``tokens_path``/``docs_path`` may be ``None`` (no category mass). The category table
    goes to ``out_category_mass`` (default: ``category_mass.parquet`` next to ``out_latents``).
    """
    if n_top < 1 or n_reservoir < 0 or batch_rows < 1:
        raise ValueError("need n_top >= 1, n_reservoir >= 0 and batch_rows >= 1")
    t0 = time.perf_counter()
    cc = load_crosscoder(crosscoder_dir).eval()
    stores = PairedStores(base_manifest, ft_manifest)
    if stores.d_model != cc.d_model:
        raise ValueError(f"crosscoder d_model {cc.d_model} != store d_model {stores.d_model}")
    first, ctx_len, n_pos = context_layout(stores)
    stop = stores.n_rows
    if max_rows is not None:
        stop = min(stop, max(n_pos, (int(max_rows) // n_pos) * n_pos))
    n_contexts = math.ceil(stop / n_pos)
    h = cc.dict_size
    cats = None
    if tokens_path is not None and docs_path is not None:
        cats = CategoryMap(tokens_path, docs_path, first, ctx_len, n_contexts)
    n_cat = len(cats.names) if cats else 0
    LOG.info(
        "latent stats: %d latents over %d rows (%d contexts of %d positions), top %d, reservoir %d",
        h, stop, n_contexts, n_pos, n_top, n_reservoir,
    )  # fmt: skip

    count = torch.zeros(h, dtype=torch.int64)
    ctx_count = torch.zeros(h, dtype=torch.int64)
    sum_f = torch.zeros(h, dtype=torch.float64)
    mass = torch.zeros(max(n_cat, 1), h, dtype=torch.float64)
    top = _TopTable(h, n_top, -math.inf)
    res = _TopTable(h, n_reservoir, -1.0)
    gen = torch.Generator().manual_seed(int(seed))
    n_done, t_log = 0, time.perf_counter()
    for row0, xb, xf in iter_context_batches(stores, stop, batch_rows, n_pos):
        b = len(xb)
        f = cc.encode(torch.from_numpy(np.stack([xb, xf], axis=1)), use_threshold=True)  # [b, h]
        active = f > 0
        count += active.sum(0)
        sum_f += f.sum(0, dtype=torch.float64)
        nc = max(1, b // n_pos) if b % n_pos == 0 else 1
        cmax, cpos = f.view(nc, b // nc, h).max(dim=1)  # [nc, h]
        ctx = torch.arange(row0 // n_pos, row0 // n_pos + nc).unsqueeze(0)  # [1, nc]
        cmax_t, pos_t = cmax.t().contiguous(), (cpos.t() + first)
        fires = cmax_t > 0
        ctx_count += fires.sum(1)
        top.merge(torch.where(fires, cmax_t, -math.inf), ctx, pos_t, cmax_t)
        keys = torch.rand(h, nc, generator=gen)
        res.merge(torch.where(fires, keys, -1.0), ctx, pos_t, cmax_t)
        if cats is not None:
            codes = torch.from_numpy(cats.codes(row0, b))
            mass += torch.zeros(n_cat, h).index_add_(0, codes, f).double()
        n_done += b
        if time.perf_counter() - t_log > 30:
            t_log = time.perf_counter()
            LOG.info("latent stats: %d/%d rows (%.0f rows/s)", n_done, stop, n_done / (t_log - t0))

    df = decoder_table(cc)
    n_tok = max(n_done, 1)
    cnt = count.numpy()
    df["freq"] = cnt / n_tok
    df["n_active"] = cnt
    df["n_active_contexts"] = ctx_count.numpy()
    df["sum_activation"] = sum_f.numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        df["mean_activation"] = np.where(cnt > 0, sum_f.numpy() / np.maximum(cnt, 1), 0.0)
    has = top.score[:, 0] > -math.inf
    df["max_activation"] = torch.where(has, top.act[:, 0], 0.0).numpy().astype(np.float64)
    df["max_context"] = top.context[:, 0].numpy()  # -1 for dead latents
    df["max_position"] = top.position[:, 0].numpy()
    df["dead"] = cnt == 0
    cat_df = pd.DataFrame(
        {
            "latent": np.zeros(0, np.int64),
            "category": np.zeros(0, str),
            "mass": np.zeros(0),
            "share": np.zeros(0),
        }
    )
    if cats is not None:
        m = mass.numpy()  # [C, h]
        total = m.sum(0)
        ci, li = np.nonzero(m > 0)
        cat_df = pd.DataFrame(
            {
                "latent": li.astype(np.int64),
                "category": np.asarray(cats.names, dtype=object)[ci].astype(str),
                "mass": m[ci, li],
                "share": m[ci, li] / total[li],
            }
        ).sort_values(["latent", "mass"], ascending=[True, False], kind="stable")
        best_c = m.argmax(0)
        df["top_category"] = np.where(total > 0, np.asarray(cats.names, dtype=object)[best_c], "").astype(str)
        with np.errstate(divide="ignore", invalid="ignore"):
            df["top_category_share"] = np.where(total > 0, m[best_c, np.arange(h)] / total, 0.0)
    topk_df = pd.concat(
        [top.table("top", top.score > -math.inf), res.table("reservoir", res.score >= 0)], ignore_index=True
    )

    _write_parquet(df, out_latents)
    write_topk(topk_df, out_topk)
    cat_path = (
        Path(out_category_mass) if out_category_mass else Path(out_latents).with_name("category_mass.parquet")
    )
    _write_parquet(cat_df.reset_index(drop=True), cat_path)
    dead = int(df["dead"].sum())
    summary = {
        "n_rows": int(n_done),
        "n_contexts": int(n_contexts),
        "n_latents": int(h),
        "n_dead": dead,
        "dead_fraction": dead / h,
        "mean_l0": float(cnt.sum() / n_tok),
        "delta_bins": {k: int(v) for k, v in df["delta_bin"].value_counts().items()},
        "categories": cats.names if cats else [],
        "seconds": time.perf_counter() - t0,
        "outputs": {"latents": str(out_latents), "topk": str(out_topk), "category_mass": str(cat_path)},
    }
    LOG.info(
        "latent stats: %d rows in %.1fs, L0 %.2f, %d dead latents (%.1f%%)",
        n_done, summary["seconds"], summary["mean_l0"], dead, 100 * dead / h,
    )  # fmt: skip
    return summary


# ----------------------------------------------------------------------------------------------
# example contexts for the interpreter
# ----------------------------------------------------------------------------------------------


def latent_encoder(
    cc: CrossCoder, latents: torch.Tensor
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``encode(x, cols)``: threshold-encoded activations of ``latents[cols]`` only.

    The encoder rows, biases and selection weights of ``latents`` are sliced once (the weights
    need every decoder norm), so that encoding context after context costs only
    ``O(B * 2d * len(cols))``. ``x`` is ``[B, 2, d]`` normalised.
    """
    theta = cc._check_threshold()
    weight, bias = cc.enc_weight[latents].t(), cc.b_enc[latents]
    select = cc.selection_weights()[latents]

    def encode(x: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        z = torch.relu(torch.addmm(bias[cols], cc._flat(x), weight[:, cols]))
        return z * (z * select[cols] > theta)

    return encode


def encode_latents(cc: CrossCoder, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """Threshold-encoded activations of the given latents only: equals ``cc.encode(x)[:, latents]``."""
    return latent_encoder(cc, latents)(x, torch.arange(len(latents)))


def _context_runs(contexts: np.ndarray, n_pos: int, max_gap_rows: int, max_rows: int) -> list[np.ndarray]:
    """Split sorted unique contexts into runs read with one store read each."""
    runs, cur = [], [int(contexts[0])] if len(contexts) else []
    for c in contexts[1:]:
        c = int(c)
        if (c - cur[-1] - 1) * n_pos <= max_gap_rows and (c - cur[0] + 1) * n_pos <= max_rows:
            cur.append(c)
        else:
            runs.append(np.array(cur))
            cur = [c]
    if cur:
        runs.append(np.array(cur))
    return runs


def _window(peak: int, first: int, end: int, window: int) -> tuple[int, int]:
    """Window ``[start, start + w)`` of width ``w = min(window, end - first)`` inside ``[first, end)``
    centred on ``peak`` as far as the context allows."""
    w = min(window, end - first)
    start = min(max(peak - window // 2, first), end - w)
    return start, w


@torch.no_grad()
def collect_contexts(
    crosscoder_dir: str | os.PathLike,
    base_manifest: str | os.PathLike,
    ft_manifest: str | os.PathLike,
    tokens_path: str | os.PathLike,
    topk_path: str | os.PathLike,
    latents: list[int],
    out_path: str | os.PathLike,
    *,
    window: int = 32,
    n_top: int = 20,
    n_quantile_examples: int = 50,
    n_quantiles: int = 10,
    n_negative: int = 50,
    seed: int = 0,
    batch_rows: int = 4096,
) -> pd.DataFrame:
    """Example records for ``latents`` (delphi style) written to ``out_path`` (parquet).

    Kinds: ``top`` - the ``n_top`` contexts with the largest in-context max (``rank`` 0 = largest);
    ``quantile`` - the latent's reservoir contexts (minus its top examples) sorted by in-context max and
    cut into ``n_quantiles`` equal-count bins (``quantile`` 0 = weakest), ``n_quantile_examples``
    spread evenly over the bins and drawn at random within each (``rank`` orders a latent's quantile
    examples by activation); ``negative`` - windows of random contexts in which the latent never
    fires (a pool of ``min(n_contexts, 4 * n_negative)`` random contexts shared by all latents; per
    context and latent one window drawn at random among the windows without activity, so very dense
    latents may get fewer than ``n_negative``). Windows are ``window`` tokens of the context's
    positions that have activations (from ``first_position``), centred on the peak where the context
    allows; ``activations`` are the latent's threshold activations on the window's tokens.

    Columns: ``latent, kind, rank, quantile (-1 if n/a), context, peak_position (-1 for negatives),
    window_start, token_ids (list[int]), activations (list[float]), max_activation``.
    """
    t0 = time.perf_counter()
    cc = load_crosscoder(crosscoder_dir).eval()
    stores = PairedStores(base_manifest, ft_manifest)
    first, ctx_len, n_pos = context_layout(stores)
    n_ctx = math.ceil(stores.n_rows / n_pos)
    input_ids = zarr.open_group(str(tokens_path), mode="r")["input_ids"]
    if input_ids.shape[1] != ctx_len or input_ids.shape[0] < n_ctx:
        raise ValueError(f"{tokens_path}: token grid {input_ids.shape} does not cover the stores")
    lat_list = sorted({int(v) for v in latents})
    if any(not 0 <= v < cc.dict_size for v in lat_list):
        raise ValueError(f"latent ids must be in [0, {cc.dict_size})")
    col = {v: i for i, v in enumerate(lat_list)}
    rng = np.random.default_rng(seed)
    topk = read_topk(topk_path)
    topk = topk[topk["latent"].isin(lat_list)]

    # requests: (latent, kind, rank, quantile, context)
    requests: list[tuple[int, str, int, int, int]] = []
    for lat, grp in topk.groupby("latent", sort=True):
        tops = grp[grp["kind"] == "top"].sort_values("rank").head(n_top)
        requests += [(int(lat), "top", r, -1, int(c)) for r, c in enumerate(tops["context"])]
        res = grp[(grp["kind"] == "reservoir") & ~grp["context"].isin(tops["context"])]
        res = res.sort_values(["activation", "context"], kind="stable")
        if len(res) and n_quantile_examples > 0 and n_quantiles > 0:
            bins = np.array_split(np.arange(len(res)), min(n_quantiles, len(res)))
            want = [len(a) for a in np.array_split(np.arange(n_quantile_examples), len(bins))]
            picked = []
            for q, (idx, k) in enumerate(zip(bins, want)):
                sel = np.sort(rng.choice(idx, size=min(k, len(idx)), replace=False))
                picked += [(q, int(i)) for i in sel]
            res_act, ctxs = res["activation"].to_numpy(), res["context"].to_numpy()
            picked.sort(key=lambda t: -float(res_act[t[1]]))
            requests += [(int(lat), "quantile", r, q, int(ctxs[i])) for r, (q, i) in enumerate(picked)]
    found = set(topk["latent"].tolist())
    missing = [v for v in lat_list if v not in found]
    if missing:
        LOG.warning("collect_contexts: no activating contexts for %d latents: %s", len(missing), missing[:20])

    pool = np.sort(rng.choice(n_ctx, size=min(n_ctx, 4 * n_negative), replace=False)) if n_negative else []
    pool_set = {int(c) for c in pool}
    need: dict[int, set[int]] = defaultdict(set)
    for lat, _, _, _, c in requests:
        need[c].add(col[lat])
    wanted = {(c, col[lat]) for lat, _, _, _, c in requests}  # activations kept for these only
    all_cols = set(range(len(lat_list)))
    for c in pool:
        need[int(c)] = all_cols
    acts: dict[tuple[int, int], np.ndarray] = {}  # (context, latent column) -> activations
    neg_start = {}  # pool context -> [n_latents] start of a random all-zero window, or -1
    gen = torch.Generator().manual_seed(int(seed))
    encode = latent_encoder(cc, torch.tensor(lat_list, dtype=torch.long))
    contexts = np.array(sorted(need), dtype=np.int64)
    chunk = stores.base.chunk_rows
    for run in _context_runs(contexts, n_pos, chunk, max(batch_rows, chunk)):
        lo, hi = int(run[0]) * n_pos, min((int(run[-1]) + 1) * n_pos, stores.n_rows)
        xb, xf = stores.read(lo, hi)
        for c in run:
            c = int(c)
            a, b = c * n_pos - lo, min((c + 1) * n_pos, stores.n_rows) - lo
            cols = np.array(sorted(need[c]), dtype=np.int64)
            x = torch.from_numpy(np.stack([xb[a:b], xf[a:b]], axis=1))
            f = encode(x, torch.from_numpy(cols)).numpy()  # [L_c, len(cols)]
            if c in pool_set:  # all latents: pick a random window without activity per latent
                w = min(window, b - a)
                fired = np.concatenate([np.zeros((1, f.shape[1])), np.cumsum(f > 0, axis=0)])
                clean = (fired[w:] - fired[:-w]) == 0  # [L_c - w + 1, n_latents]
                keys = torch.rand(clean.shape, generator=gen).numpy()
                pick = np.where(clean, keys, -1.0).argmax(axis=0)
                neg_start[c] = np.where(clean.any(axis=0), first + pick, -1)
            for j, cj in enumerate(cols):
                if (c, int(cj)) in wanted:
                    acts[(c, int(cj))] = f[:, j]

    records = []
    tok_need = sorted({c for _, _, _, _, c in requests} | pool_set)
    tokens = {}
    if tok_need:
        ids = input_ids.get_orthogonal_selection((np.array(tok_need), slice(None)))
        tokens = {c: ids[i] for i, c in enumerate(tok_need)}
    for lat, kind, rank, q, c in requests:
        f = acts[(c, col[lat])]
        peak = first + int(np.argmax(f))
        start, w = _window(peak, first, first + len(f), window)
        a = f[start - first : start - first + w]
        records.append((lat, kind, rank, q, c, peak, start, tokens[c][start : start + w], a, float(a.max())))
    short = []
    for lat in lat_list:
        j = col[lat]
        order = rng.permutation(len(pool)) if len(pool) else []
        r = 0
        for i in order:
            c = int(pool[i])
            if r >= n_negative:
                break
            start = int(neg_start[c][j])
            if start < 0:
                continue
            w = min(window, min(n_pos, stores.n_rows - c * n_pos))
            records.append(
                (lat, "negative", r, -1, c, -1, start, tokens[c][start : start + w], np.zeros(w), 0.0)
            )
            r += 1
        if r < n_negative:
            short.append((lat, r))
    if short:
        LOG.warning(
            "collect_contexts: %d latents got fewer than %d negative windows (latent, count): %s",
            len(short), n_negative, short[:20],
        )  # fmt: skip

    df = pd.DataFrame(
        {
            "latent": np.array([r[0] for r in records], dtype=np.int64),
            "kind": [r[1] for r in records],
            "rank": np.array([r[2] for r in records], dtype=np.int32),
            "quantile": np.array([r[3] for r in records], dtype=np.int32),
            "context": np.array([r[4] for r in records], dtype=np.int64),
            "peak_position": np.array([r[5] for r in records], dtype=np.int32),
            "window_start": np.array([r[6] for r in records], dtype=np.int32),
            "token_ids": [np.asarray(r[7], dtype=np.int32).tolist() for r in records],
            "activations": [np.asarray(r[8], dtype=np.float32).tolist() for r in records],
            "max_activation": np.array([r[9] for r in records], dtype=np.float32),
        }
    )
    if len(df):
        df["_k"] = df["kind"].map({k: i for i, k in enumerate(RECORD_KINDS)})
        df = df.sort_values(["latent", "_k", "rank"], kind="stable").drop(columns="_k").reset_index(drop=True)
    _write_parquet(df, out_path)
    LOG.info(
        "collect_contexts: %d records for %d latents from %d contexts in %.1fs",
        len(df), len(lat_list), len(contexts), time.perf_counter() - t0,
    )  # fmt: skip
    return df
