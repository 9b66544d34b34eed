"""Activation stores: 16-bit round trips, sharded reads, manifests, atomic writes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import zarr

from mneme.activation_store import (
    ActivationStore,
    PairedStores,
    ShardWriter,
    StoreError,
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


# ---------------------------------------------------------------------------------------------
# integrity: a damaged store is an error naming the store, never data


def damaged_store(tmp_path, codec="zstd"):
    """A 2-shard store of 64 rows (16-row chunks) and the file of shard 1's chunk 2."""
    x = np.random.default_rng(3).normal(scale=4, size=(64, 8)).astype(np.float32)
    build_store(tmp_path, "m", x, n_shards=2, chunk_rows=16)
    shard = tmp_path / "m" / "shard_1.zarr"
    chunk = shard / "c" / "1" / "0"  # rows 48-64 of the store
    assert chunk.is_file()
    return tmp_path / "m" / "manifest.json", chunk


def read_all(manifest):
    store = ActivationStore(manifest)
    return [rows for _, rows in store.iter_blocks()]


def test_deleted_chunk_is_an_error_on_open_naming_store_and_chunk(tmp_path):
    manifest, chunk = damaged_store(tmp_path)
    chunk.unlink()
    with pytest.raises(
        StoreError, match=r"activation store .*/m: shard shard_1.zarr lacks 1 chunk file.*c/1/0"
    ):
        ActivationStore(manifest)


def test_truncated_chunk_is_an_error_naming_store_shard_and_chunk(tmp_path):
    manifest, chunk = damaged_store(tmp_path)
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match=r"/m: shard shard_1.zarr, chunk 1 \(rows 16-32\) cannot be decoded"):
        read_all(manifest)


@pytest.mark.parametrize("codec", ["zstd", "none"])
def test_overwritten_bytes_fail_the_checksum(tmp_path, codec):
    x = np.random.default_rng(4).normal(size=(32, 8)).astype(np.float32)
    p = tmp_path / "s" / "shard_0.zarr"
    w = ShardWriter(p, 32, 8, chunk_rows=16, codec=codec)
    w.write(0, x)
    w.close()
    write_manifest(tmp_path / "s" / "manifest.json", [str(p)], {})
    chunk = p / "c" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[8:72] = bytes(range(64))  # 64 overwritten bytes, the file keeps its length
    chunk.write_bytes(bytes(data))
    store = ActivationStore(tmp_path / "s" / "manifest.json")
    np.testing.assert_array_equal(
        store.read(16, 32), decode_16bit(encode_16bit(x[16:], "bfloat16"), "bfloat16")
    )
    with pytest.raises(StoreError, match=r"shard_0.zarr, chunk 0 \(rows 0-16\) cannot be decoded"):
        store.read(0, 16)


def test_values_beyond_the_written_bound_are_an_error(tmp_path):
    """Bytes rewritten consistently (valid checksum) but holding absurd values are still caught."""
    manifest, _ = damaged_store(tmp_path)
    arr = zarr.open_array(str(tmp_path / "m" / "shard_0.zarr"), mode="r+")
    rows = arr[0:16]
    rows[5, 3] = encode_16bit(np.array([[1.3e32]], dtype=np.float32), "bfloat16")[0, 0]
    arr[0:16] = rows
    with pytest.raises(StoreError, match=r"shard_0.zarr, row 5: \|x\| reaches 1.3e\+32"):
        read_all(manifest)


def test_non_finite_rows_are_refused_when_written(tmp_path):
    w = ShardWriter(tmp_path / "s.zarr", 4, 3)
    x = np.ones((4, 3), dtype=np.float32)
    x[2, 1] = np.nan
    with pytest.raises(StoreError, match=r"s.zarr: row 2 is not finite"):
        w.write(0, x)


def test_an_all_zero_chunk_is_still_written(tmp_path):
    w = ShardWriter(tmp_path / "z.zarr", 32, 4, chunk_rows=16)
    x = np.zeros((32, 4), dtype=np.float32)
    x[20] = 1.0
    w.write(0, x)
    w.close()
    write_manifest(tmp_path / "manifest.json", [str(tmp_path / "z.zarr")], {})
    assert (tmp_path / "z.zarr" / "c" / "0" / "0").is_file()
    assert ActivationStore(tmp_path / "manifest.json").read(0, 32).sum() == 4.0


def test_a_stage_reading_a_damaged_store_fails_naming_it(tmp_path):
    """PairedStores is what every stage opens: a damaged fine-tuned store stops it up front."""
    manifest, chunk = damaged_store(tmp_path)
    x = np.random.default_rng(3).normal(scale=4, size=(64, 8)).astype(np.float32)
    build_store(tmp_path, "base", x, n_shards=2, chunk_rows=16)
    chunk.unlink()
    with pytest.raises(StoreError, match=r"activation store .*/m: .*delete .*/m and re-run its extraction"):
        PairedStores(tmp_path / "base" / "manifest.json", manifest)
