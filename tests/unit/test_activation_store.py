"""Activation stores: 16-bit round trips, sharded reads, manifests, atomic writes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mneme.activation_store import (
    ActivationStore,
    PairedStores,
    ShardWriter,
    decode_16bit,
    encode_16bit,
    row_to_token,
    write_manifest,
)


def test_bfloat16_matches_torch_rounding_and_round_trips():
    x = np.random.default_rng(0).normal(scale=30, size=(257, 9)).astype(np.float32)
    x[0, :3] = [0.0, -0.0, 65504.0]
    ours = encode_16bit(x, "bfloat16")
    ref = torch.from_numpy(x).to(torch.bfloat16).view(torch.uint16).numpy()
    np.testing.assert_array_equal(ours, ref)
    back = decode_16bit(ours, "bfloat16")
    np.testing.assert_array_equal(back, torch.from_numpy(x).to(torch.bfloat16).float().numpy())
    # values already representable in bf16 survive exactly
    np.testing.assert_array_equal(decode_16bit(encode_16bit(back, "bfloat16"), "bfloat16"), back)


def test_float16_round_trip():
    x = np.random.default_rng(1).normal(size=(10, 4)).astype(np.float32)
    np.testing.assert_array_equal(
        decode_16bit(encode_16bit(x, "float16"), "float16"), x.astype(np.float16).astype(np.float32)
    )


def build_store(tmp_path, name, x, n_shards=2, dtype="bfloat16", chunk_rows=16, meta=None):
    bounds = np.linspace(0, len(x), n_shards + 1).astype(int)
    paths = []
    for i in range(n_shards):
        p = tmp_path / name / f"shard_{i}.zarr"
        p.parent.mkdir(parents=True, exist_ok=True)
        w = ShardWriter(
            p,
            bounds[i + 1] - bounds[i],
            x.shape[1],
            dtype,
            chunk_rows=chunk_rows,
            codec="zstd",
            attrs={"context_len": 9, "first_position": 1, "layer": 2, "corpus": "c"},
        )
        w.write(0, x[bounds[i] : bounds[i + 1]])
        w.close()
        paths.append(str(p))
    return write_manifest(tmp_path / name / "manifest.json", paths, meta or {"model": name})


def test_sharded_store_reads_across_borders_and_manifest_scale(tmp_path):
    x = np.random.default_rng(2).normal(size=(100, 8)).astype(np.float32) * 3
    manifest = build_store(tmp_path, "m", x, n_shards=3)
    store = ActivationStore(tmp_path / "m" / "manifest.json")
    expect = decode_16bit(encode_16bit(x, "bfloat16"), "bfloat16")
    np.testing.assert_array_equal(store.read(0, 100), expect)
    np.testing.assert_array_equal(store.read(20, 70), expect[20:70])
    blocks = store.blocks()
    assert blocks[0][0] == 0 and blocks[-1][1] == 100
    assert all(hi - lo <= 16 for lo, hi in blocks)
    np.testing.assert_array_equal(np.concatenate([b for _, b in store.iter_blocks()]), expect)
    # F1: scale = sqrt(d) / mean ||x|| (norms of the float32 rows seen while writing)
    ref = math.sqrt(8) / np.linalg.norm(x, axis=1).mean()
    assert manifest["norm"]["scale"] == pytest.approx(ref, rel=1e-6)
    assert manifest["context_len"] == 9 and manifest["first_position"] == 1
    with pytest.raises(IndexError):
        store.read(90, 101)


def test_unfinished_shard_is_never_at_final_path(tmp_path):
    w = ShardWriter(tmp_path / "s.zarr", 10, 4)
    w.write(0, np.ones((5, 4), np.float32))
    with pytest.raises(RuntimeError, match="wrote 5 of 10 rows"):
        w.close()
    assert not (tmp_path / "s.zarr").exists()


def test_paired_stores_check_alignment(tmp_path):
    x = np.random.default_rng(3).normal(size=(40, 4)).astype(np.float32)
    build_store(tmp_path, "a", x)
    build_store(tmp_path, "b", 2 * x)
    build_store(tmp_path, "c", x[:30])
    pair = PairedStores(tmp_path / "a" / "manifest.json", tmp_path / "b" / "manifest.json")
    xb, xf = pair.read(0, 40)
    np.testing.assert_allclose(np.linalg.norm(xb, axis=1).mean(), 2.0, rtol=1e-2)
    np.testing.assert_allclose(np.linalg.norm(xf, axis=1).mean(), 2.0, rtol=1e-2)
    with pytest.raises(ValueError, match="n_rows"):
        PairedStores(tmp_path / "a" / "manifest.json", tmp_path / "c" / "manifest.json")


def test_row_to_token():
    ctx, pos = row_to_token(np.arange(10), first_position=1, context_len=5)
    assert ctx.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert pos.tolist() == [1, 2, 3, 4, 1, 2, 3, 4, 1, 2]


def test_manifest_rejects_unfinished_shard(tmp_path):
    import zarr

    zarr.create_array(
        store=str(tmp_path / "x.zarr"), shape=(4, 2), dtype="uint16", attributes={"logical_dtype": "bfloat16"}
    )
    with pytest.raises(ValueError, match="not a finished activation shard"):
        write_manifest(tmp_path / "m.json", [str(tmp_path / "x.zarr")], {})
    assert json.dumps  # manifest module imports json; nothing written on failure
    assert not (tmp_path / "m.json").exists()
