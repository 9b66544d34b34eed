"""Cost of the activation store's integrity checks on the read path.

    python benchmarks/store_read.py [--rows 262144] [--d-model 576] [--chunk-rows 4096] [--repeats 5]

Writes the same random bf16 rows twice, zstd level 1, 4096-row chunks: once as a plain zarr
array decoded by hand (what mneme read before the checks) and once through ShardWriter (CRC32C
per chunk, every chunk written). Then reads both chunk by chunk, interleaved: the plain read
(zarr read + bf16 decode) against ActivationStore.iter_blocks (the same plus the checksum, the
chunk-file check on open and the magnitude bound on every block). Prints rows/s of each and the
relative cost of the checks.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow_scripts"))

from mneme.activation_store import (  # noqa: E402
    ActivationStore,
    ShardWriter,
    decode_16bit,
    encode_16bit,
    write_manifest,
)


def write_plain(path: Path, x: np.ndarray, chunk_rows: int) -> zarr.Array:
    arr = zarr.create_array(
        store=str(path),
        shape=x.shape,
        chunks=(chunk_rows, x.shape[1]),
        dtype="uint16",
        compressors=[zarr.codecs.ZstdCodec(level=1)],
    )
    arr[:] = encode_16bit(x, "bfloat16")
    return zarr.open_array(str(path), mode="r")  # opened for reading, as a store is


def write_checked(folder: Path, x: np.ndarray, chunk_rows: int) -> Path:
    shard = folder / "shard_0.zarr"
    w = ShardWriter(shard, len(x), x.shape[1], "bfloat16", chunk_rows=chunk_rows, codec="zstd", level=1)
    w.write(0, x)
    w.close()
    write_manifest(folder / "manifest.json", [str(shard)], {})
    return folder / "manifest.json"


def read_plain(arr: zarr.Array) -> float:
    t0 = time.perf_counter()
    step = arr.chunks[0]
    for lo in range(0, arr.shape[0], step):
        decode_16bit(arr[lo : lo + step], "bfloat16")
    return time.perf_counter() - t0


def read_checked(manifest: Path) -> float:
    t0 = time.perf_counter()
    store = ActivationStore(manifest)  # opening checks every chunk file
    for _ in store.iter_blocks():
        pass
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=262144)
    ap.add_argument("--d-model", type=int, default=576)
    ap.add_argument("--chunk-rows", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    # activations-like values: a heavy-tailed bulk with a few large coordinates
    rng = np.random.default_rng(0)
    x = rng.standard_t(4, size=(args.rows, args.d_model)).astype(np.float32) * 3
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        plain = write_plain(tmp / "plain.zarr", x, args.chunk_rows)
        manifest = write_checked(tmp / "checked", x, args.chunk_rows)
        read_plain(plain), read_checked(manifest)  # warm the page cache
        t_plain, t_checked = [], []
        for i in range(args.repeats):  # alternate which goes first, so neither gets a warmer cache
            if i % 2:
                t_checked.append(read_checked(manifest))
                t_plain.append(read_plain(plain))
            else:
                t_plain.append(read_plain(plain))
                t_checked.append(read_checked(manifest))
    p, c = statistics.median(t_plain), statistics.median(t_checked)
    mb = args.rows * args.d_model * 2 / 1e6
    print(f"rows {args.rows} x d_model {args.d_model} (bf16 {mb:.0f} MB), chunks of {args.chunk_rows} rows")
    print(f"plain read  : {args.rows / p:12,.0f} rows/s  ({p:.3f} s, median of {args.repeats})")
    print(f"checked read: {args.rows / c:12,.0f} rows/s  ({c:.3f} s)")
    print(f"cost of the integrity checks: {100 * (c / p - 1):+.1f} % of the read time")


if __name__ == "__main__":
    main()
