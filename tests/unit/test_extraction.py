"""Extraction equals the hidden state of a plain full forward pass; shards store the right rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from transformers import AutoModelForCausalLM

from mneme.activation_store import ActivationStore, decode_16bit, encode_16bit, write_manifest
from mneme.extraction import LayerExtractor, extract_shard, shard_contexts


@pytest.fixture(scope="module")
def full_model(tiny_model):
    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_truncated_forward_equals_full_hidden_state(tiny_model, full_model, layer):
    ids = torch.randint(0, 500, (3, 17), generator=torch.Generator().manual_seed(layer))
    with torch.no_grad():
        ref = full_model(ids, output_hidden_states=True).hidden_states[layer + 1]
    ext = LayerExtractor(tiny_model, layer)
    # the truncated model really has only layer + 1 blocks and no LM head
    assert len(ext.model.layers) == layer + 1 and not hasattr(ext.model, "lm_head")
    torch.testing.assert_close(ext(ids), ref, rtol=1e-5, atol=1e-5)


def test_layer_out_of_range(tiny_model):
    with pytest.raises(ValueError, match="layer 4 out of range"):
        LayerExtractor(tiny_model, 4)


def test_shard_contexts_cover_everything():
    ranges = [shard_contexts(10, 3, s) for s in range(3)]
    assert ranges == [(0, 4), (4, 8), (8, 10)]
    assert shard_contexts(2, 3, 2) == (2, 2)


def make_tokens(path, n_ctx=7, ctx_len=12, bos=1):
    ids = np.random.default_rng(0).integers(3, 500, size=(n_ctx, ctx_len)).astype(np.int32)
    ids[:, 0] = bos
    g = zarr.open_group(str(path), mode="w", attributes={"first_position": 1, "context_len": ctx_len})
    g.create_array("input_ids", shape=ids.shape, dtype="int32")[:] = ids
    return ids


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_extract_shards_store_rows_without_bos(tiny_model, full_model, tmp_path, dtype):
    ids = make_tokens(tmp_path / "tokens.zarr")
    paths = []
    for shard in range(2):
        out = tmp_path / f"shard_{shard}.zarr"
        extract_shard(
            tiny_model,
            str(tmp_path / "tokens.zarr"),
            str(out),
            layer=1,
            shard=shard,
            n_shards=2,
            batch_size=3,
            dtype=dtype,
            skip_first=1,
            chunk_rows=10,
            codec="zstd",
            attrs={"context_len": 12, "model": "tiny", "corpus": "t"},
        )
        paths.append(str(out))
    write_manifest(tmp_path / "manifest.json", paths, {"layer": 1})
    store = ActivationStore(tmp_path / "manifest.json")
    assert store.manifest["first_position"] == 2  # BOS plus skip_first=1
    with torch.no_grad():
        ref = full_model(torch.from_numpy(ids).long(), output_hidden_states=True).hidden_states[2]
    ref = ref[:, 2:, :].reshape(-1, 64).numpy()
    assert store.n_rows == 7 * 10
    expect = decode_16bit(encode_16bit(ref, dtype), dtype)
    np.testing.assert_allclose(store.read(0, store.n_rows), expect, rtol=1e-2, atol=1e-2)
