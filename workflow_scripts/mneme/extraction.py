"""Residual-stream extraction that stops the forward pass at the hooked layer.

The hidden state we store for ``layer = L`` is the OUTPUT of decoder block L (0-based), which is
transformers' ``hidden_states[L + 1]`` and the input of block L + 1. The model is loaded with only
its first L + 1 blocks (later blocks and the LM head are never built), and a forward hook on block
L raises :class:`~mneme.hooks.StopForward` so the final norm is not applied either. On a 30-block model at
layer 15 this roughly halves the cost and skips the 49k-vocab head entirely.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
import zarr

from mneme.activation_store import ShardWriter
from mneme.hooks import find_blocks, output_of
from mneme.models import pick_device, read_card, weights_path

log = logging.getLogger("mneme.extraction")


def compute_dtype(device: torch.device) -> torch.dtype:
    """float32 on CPU (16-bit arithmetic is 6-100x slower on our CPUs), bfloat16 on GPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


class LayerExtractor:
    """A base model (no LM head) truncated after block ``layer``, returning that block's output."""

    def __init__(self, model_dir: str, layer: int, device: str = "auto") -> None:
        from transformers import AutoConfig, AutoModel
        from transformers.utils import logging as hf_logging

        card = read_card(model_dir)
        n = card["num_hidden_layers"]
        if not 0 <= layer < n:
            raise ValueError(f"layer {layer} out of range for {card['name']} with {n} blocks (0..{n - 1})")
        self.layer, self.device = layer, pick_device(device)
        self.dtype = compute_dtype(self.device)
        path, trust = weights_path(model_dir), card["spec"].get("trust_remote_code", False)
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust)
        text_cfg = getattr(config, "text_config", None) or config
        text_cfg.num_hidden_layers = layer + 1  # never build (or load) the later blocks
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the dropped blocks' weights are "unused" by design
        try:
            self.model = AutoModel.from_pretrained(
                path, config=config, dtype=self.dtype, trust_remote_code=trust
            )
        finally:
            hf_logging.set_verbosity(verbosity)
        self.model.eval().to(self.device)
        self.block = find_blocks(self.model, layer + 1)[layer]
        self.d_model = card["hidden_size"]

    @torch.inference_mode()
    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Block-``layer`` output for a batch of token ids, float32 on CPU, [batch, seq, d]."""
        out = output_of(self.model, self.block, input_ids=input_ids.to(self.device), use_cache=False)
        return out.float().cpu()


def shard_contexts(n_contexts: int, n_shards: int, shard: int) -> tuple[int, int]:
    """Context range [start, stop) of one shard: contiguous, as even as possible."""
    per = math.ceil(n_contexts / n_shards)
    return min(shard * per, n_contexts), min((shard + 1) * per, n_contexts)


def extract_shard(
    model_dir: str,
    tokens_path: str,
    out_path: str,
    layer: int,
    shard: int,
    n_shards: int,
    batch_size: int = 16,
    dtype: str = "bfloat16",
    skip_first: int = 0,
    chunk_rows: int = 8192,
    codec: str = "zstd",
    codec_level: int = 1,
    device: str = "auto",
    attrs: dict | None = None,
) -> dict:
    """Run one model over one shard of the packed corpus and store the block-``layer`` output.

    Positions before ``first_position`` (BOS and ``skip_first`` more) are dropped before storage,
    so every stored row is a real token and row r maps to (context, position) arithmetically.
    Writes happen on a background thread, overlapping the next forward pass.
    """
    tokens = zarr.open_group(tokens_path, mode="r")
    ids = tokens["input_ids"]
    n_ctx, ctx_len = ids.shape
    first = int(tokens.attrs["first_position"]) + skip_first
    if first >= ctx_len:
        raise ValueError(f"skip_first={skip_first} leaves no position in contexts of {ctx_len} tokens")
    c0, c1 = shard_contexts(n_ctx, n_shards, shard)
    n_pos = ctx_len - first
    extractor = LayerExtractor(model_dir, layer, device)
    writer = ShardWriter(
        out_path,
        n_rows=(c1 - c0) * n_pos,
        d_model=extractor.d_model,
        logical_dtype=dtype,
        chunk_rows=chunk_rows,
        codec=codec,
        level=codec_level,
        attrs={"layer": layer, "contexts": [c0, c1], "first_position": first, **(attrs or {})},
    )
    log.info(
        "shard %d/%d: contexts [%d, %d), %d rows, device %s",
        shard,
        n_shards,
        c0,
        c1,
        writer.n_rows,
        extractor.device,
    )
    t0, t_model, done = time.perf_counter(), 0.0, 0
    pending: Future | None = None
    with ThreadPoolExecutor(max_workers=1) as pool:
        for b0 in range(c0, c1, batch_size):
            b1 = min(b0 + batch_size, c1)
            batch = torch.from_numpy(np.asarray(ids[b0:b1], dtype=np.int64))
            ts = time.perf_counter()
            h = extractor(batch)[:, first:, :].reshape(-1, extractor.d_model).numpy()
            t_model += time.perf_counter() - ts
            if not np.isfinite(h).all():
                raise FloatingPointError(f"non-finite activations in contexts [{b0}, {b1})")
            if pending is not None:
                pending.result()
            pending = pool.submit(writer.write, (b0 - c0) * n_pos, h)
            done += b1 - b0
            elapsed = time.perf_counter() - t0
            if (b1 - c0) // batch_size % 10 == 0 or b1 == c1:
                log.info("%d/%d contexts, %.0f tokens/s", done, c1 - c0, done * ctx_len / max(elapsed, 1e-9))
        if pending is not None:
            pending.result()
    total = time.perf_counter() - t0
    stats = writer.close({"complete": True})
    timing = {
        "seconds": total,
        "model_seconds": t_model,
        "write_seconds": writer.write_seconds,
        "tokens_per_s": (c1 - c0) * ctx_len / max(total, 1e-9),
    }
    log.info(
        "shard %d done in %.1f s (%.0f tokens/s, forward %.1f s)",
        shard,
        total,
        timing["tokens_per_s"],
        t_model,
    )
    return {**stats, **timing}
