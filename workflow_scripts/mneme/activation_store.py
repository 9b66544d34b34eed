"""Paired activation stores: zarr shards of 16-bit residual activations plus a JSON manifest.

Layout for one (model, corpus, layer)::

    activations/{model}/{corpus}/L{layer}/shard_{i}.zarr   # one zarr array [rows, d_model]
    activations/{model}/{corpus}/L{layer}/manifest.json    # shards, shapes, dtype, norm scalar

Row ``r`` of every store built on the same corpus is the same token, so a base store and a
fine-tuned store read side by side give paired activations. Rows map back to the token grid by
``context = r // n_pos``, ``position = first_position + r % n_pos`` (see :func:`row_to_token`).

zarr 3 has no bfloat16, so bfloat16 is stored as its uint16 bit pattern with the attribute
``logical_dtype: bfloat16``; float16 is stored natively. Readers always get float32, because
16-bit arithmetic is slow on our CPUs.

Integrity: a damaged store must never be read as data. Every chunk carries a CRC32C checksum
(zarr's ``crc32c`` codec, verified on every read), every chunk is written even when it holds only
zeros (so a missing chunk file is a deleted one, checked when a store is opened, instead of reading
as zeros), rows are checked finite when written, and every read checks that no value exceeds the
largest magnitude the shard held when it was written. Each failure is a :class:`StoreError`
naming the store, the shard and the chunk.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

LOGICAL_DTYPES = ("float16", "bfloat16")
MANIFEST_VERSION = 2
# a read value may exceed the shard's recorded max |x| only by this relative margin (the record is
# taken from the 16-bit values themselves, so any excess means the bytes changed after writing)
MAX_ABS_SLACK = 1e-6


class StoreError(RuntimeError):
    """A damaged or inconsistent activation store: the message names the store, shard and chunk."""


# shard attributes that must agree across shards and are copied into the manifest
SHARED_SHARD_ATTRS = ("model", "corpus", "layer", "context_len", "first_position")


def make_codec(codec: str, level: int) -> list:
    """Return the zarr 3 ``compressors=`` list for a codec name from the config, ending in a
    CRC32C checksum of the compressed bytes (so a flipped or cut byte fails the read)."""
    if codec == "none":
        compressor = []
    elif codec == "zstd":
        compressor = [zarr.codecs.ZstdCodec(level=level)]
    elif codec == "blosc-lz4":
        compressor = [zarr.codecs.BloscCodec(cname="lz4", clevel=level, shuffle="bitshuffle")]
    elif codec == "blosc-zstd":
        compressor = [zarr.codecs.BloscCodec(cname="zstd", clevel=level, shuffle="shuffle")]
    else:
        raise ValueError(f"unknown activation codec {codec!r}; expected none, zstd, blosc-lz4 or blosc-zstd")
    return [*compressor, zarr.codecs.Crc32cCodec()]


def encode_16bit(x: np.ndarray, logical_dtype: str) -> np.ndarray:
    """Convert float32 rows to the on-disk 16-bit representation (round to nearest even)."""
    if logical_dtype == "float16":
        return x.astype(np.float16)
    if logical_dtype == "bfloat16":
        u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
        rounded = u + (0x7FFF + ((u >> 16) & 1))
        out = (rounded >> 16).astype(np.uint16)
        nan = np.isnan(x)
        if nan.any():  # rounding could carry a NaN payload into inf; keep it NaN
            out[nan] = 0x7FC0
        return out
    raise ValueError(f"unknown logical dtype {logical_dtype!r}; expected one of {LOGICAL_DTYPES}")


def decode_16bit(a: np.ndarray, logical_dtype: str) -> np.ndarray:
    """Convert stored 16-bit rows back to float32."""
    if logical_dtype == "float16":
        return a.astype(np.float32)
    if logical_dtype == "bfloat16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    raise ValueError(f"unknown logical dtype {logical_dtype!r}; expected one of {LOGICAL_DTYPES}")


class ShardWriter:
    """Write one shard into ``<path>.tmp`` and rename it into place on :meth:`close`.

    A crash leaves only the ``.tmp`` directory behind, never a half-written shard at the final
    path. Running norm statistics (for the normalisation scalar, method F1) accumulate as rows
    are written so no second pass over the data is needed.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        n_rows: int,
        d_model: int,
        logical_dtype: str = "bfloat16",
        chunk_rows: int = 4096,
        codec: str = "zstd",
        level: int = 1,
        attrs: dict | None = None,
    ) -> None:
        if logical_dtype not in LOGICAL_DTYPES:
            raise ValueError(f"logical_dtype must be one of {LOGICAL_DTYPES}, got {logical_dtype!r}")
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.logical_dtype = logical_dtype
        self.n_rows, self.d_model = int(n_rows), int(d_model)
        self.array = zarr.create_array(
            store=str(self.tmp),
            shape=(self.n_rows, self.d_model),
            chunks=(min(chunk_rows, max(self.n_rows, 1)), self.d_model),
            dtype="float16" if logical_dtype == "float16" else "uint16",
            compressors=make_codec(codec, level),
            attributes={"logical_dtype": logical_dtype, **(attrs or {})},
            config={"write_empty_chunks": True},  # a missing chunk file then means damage
        )
        self.rows_written = 0
        self.write_seconds = 0.0  # time spent encoding + writing, for throughput reports
        self.sum_norm = 0.0
        self.sum_sq_norm = 0.0
        self.max_abs = 0.0  # of the stored 16-bit values: the bound every read is checked against

    def write(self, start: int, x: np.ndarray) -> None:
        """Write float32 rows ``x`` at row ``start`` and update the norm statistics."""
        t0 = time.perf_counter()
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.d_model:
            raise ValueError(f"expected rows of width {self.d_model}, got shape {x.shape}")
        norms = np.linalg.norm(x, axis=1).astype(np.float64)
        if not np.isfinite(norms).all():
            bad = start + int(np.flatnonzero(~np.isfinite(norms))[0])
            raise StoreError(f"shard {self.path}: row {bad} is not finite (the model produced inf or NaN)")
        encoded = encode_16bit(x, self.logical_dtype)
        decoded_max = float(np.abs(decode_16bit(encoded, self.logical_dtype)).max(initial=0.0))
        if not np.isfinite(decoded_max):
            raise StoreError(
                f"shard {self.path}: rows {start}-{start + len(x)} overflow {self.logical_dtype} "
                "(use activations.dtype bfloat16)"
            )
        self.sum_norm += float(norms.sum())
        self.sum_sq_norm += float((norms**2).sum())
        self.max_abs = max(self.max_abs, decoded_max)
        self.array[start : start + len(x)] = encoded
        self.rows_written += len(x)
        self.write_seconds += time.perf_counter() - t0

    def close(self, extra_attrs: dict | None = None) -> dict:
        """Record statistics, check completeness and atomically move the shard into place."""
        if self.rows_written != self.n_rows:
            raise RuntimeError(f"shard {self.path}: wrote {self.rows_written} of {self.n_rows} rows")
        stats = {
            "n_rows": self.n_rows,
            "sum_norm": self.sum_norm,
            "sum_sq_norm": self.sum_sq_norm,
            "max_abs": self.max_abs,
        }
        self.array.attrs.update({"norm_stats": stats, **(extra_attrs or {})})
        if self.path.exists():
            shutil.rmtree(self.path)
        os.replace(self.tmp, self.path)
        return stats


def norm_scale(sum_norm: float, n_rows: int, d_model: int) -> float:
    """Scalar s with E||s x|| = sqrt(d) (method F1), from the summed row norms."""
    if n_rows == 0 or sum_norm <= 0:
        raise ValueError("cannot compute a normalisation scalar from an empty or all-zero store")
    return math.sqrt(d_model) / (sum_norm / n_rows)


def write_manifest(path: str | os.PathLike, shard_paths: list[str], meta: dict) -> dict:
    """Combine finished shards into a manifest with the per-model normalisation scalar."""
    path = Path(path)
    shards, row = [], 0
    sum_norm, n_total, d_model, dtype = 0.0, 0, None, None
    shared: dict = {}
    for sp in shard_paths:
        arr = zarr.open_array(str(sp), mode="r")
        attrs = dict(arr.attrs)
        if "norm_stats" not in attrs:
            raise ValueError(f"{sp} is not a finished activation shard (no norm_stats attribute)")
        d_model = d_model or arr.shape[1]
        dtype = dtype or attrs["logical_dtype"]
        if arr.shape[1] != d_model or attrs["logical_dtype"] != dtype:
            raise ValueError(f"{sp}: shape {arr.shape}/{attrs['logical_dtype']} differs from earlier shards")
        for key in SHARED_SHARD_ATTRS:
            if key in attrs:
                if shared.setdefault(key, attrs[key]) != attrs[key]:
                    raise ValueError(
                        f"{sp}: {key}={attrs[key]!r} differs from earlier shards ({shared[key]!r})"
                    )
        rel = os.path.relpath(sp, path.parent)
        shards.append(
            {
                "path": rel,
                "row_start": row,
                "n_rows": arr.shape[0],
                "chunk_rows": arr.chunks[0],
                "max_abs": attrs["norm_stats"].get("max_abs"),
            }
        )
        row += arr.shape[0]
        sum_norm += attrs["norm_stats"]["sum_norm"]
        n_total += attrs["norm_stats"]["n_rows"]
    manifest = {
        "version": MANIFEST_VERSION,
        **shared,
        **meta,
        "d_model": d_model,
        "n_rows": row,
        "logical_dtype": dtype,
        "shards": shards,
        "norm": {
            "mean_norm": sum_norm / max(n_total, 1),
            "scale": norm_scale(sum_norm, n_total, d_model),
            "n_rows": n_total,
        },
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, path)
    return manifest


@dataclass
class _Shard:
    array: zarr.Array
    path: Path
    row_start: int
    n_rows: int
    max_abs: float | None  # None: a store written before the bound was recorded


def chunk_files(array: zarr.Array, path: Path) -> list[Path]:
    """The file of every storage chunk of a 2-D shard whose chunks span all columns."""
    n_chunks = math.ceil(array.shape[0] / array.chunks[0]) if array.shape[0] else 0
    encode = array.metadata.encode_chunk_key
    return [path / encode((i, 0)) for i in range(n_chunks)]


class ActivationStore:
    """Read-only view of one model's store through its manifest; returns float32 rows.

    Reads go straight to the zarr chunks they touch, so memory stays proportional to the
    request, never to the store. Opening checks that every shard has its rows and every chunk
    file; every read verifies checksums and the shard's magnitude bound (see the module doc).
    """

    def __init__(self, manifest_path: str | os.PathLike) -> None:
        self.manifest_path = Path(manifest_path)
        try:
            self.manifest = json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise StoreError(f"activation store manifest {self.manifest_path} cannot be read: {exc}") from exc
        self.d_model: int = self.manifest["d_model"]
        self.n_rows: int = self.manifest["n_rows"]
        self.logical_dtype: str = self.manifest["logical_dtype"]
        self.norm_scale: float = self.manifest["norm"]["scale"]
        self._shards = [self._open_shard(s) for s in self.manifest["shards"]]
        self.chunk_rows: int = min(s["chunk_rows"] for s in self.manifest["shards"])

    def _fail(self, what: str) -> StoreError:
        return StoreError(
            f"activation store {self.manifest_path.parent}: {what}. The store is damaged: delete "
            f"{self.manifest_path.parent} and re-run its extraction"
        )

    def _open_shard(self, spec: dict) -> _Shard:
        path = self.manifest_path.parent / spec["path"]
        try:
            array = zarr.open_array(str(path), mode="r")
        except Exception as exc:
            raise self._fail(f"shard {path.name} cannot be opened ({type(exc).__name__}: {exc})") from exc
        if array.shape != (spec["n_rows"], self.d_model):
            raise self._fail(
                f"shard {path.name} has shape {array.shape}, the manifest says ({spec['n_rows']}, {self.d_model})"
            )
        missing = [f for f in chunk_files(array, path) if not f.is_file()]
        if missing:
            rel = missing[0].relative_to(path)
            raise self._fail(f"shard {path.name} lacks {len(missing)} chunk file(s), first {rel}")
        return _Shard(array, path, spec["row_start"], spec["n_rows"], spec.get("max_abs"))

    def __len__(self) -> int:
        return self.n_rows

    def _read_shard(self, sh: _Shard, lo: int, hi: int) -> np.ndarray:
        """Local rows ``[lo, hi)`` of one shard, decoded and checked against its bound."""
        try:
            raw = sh.array[lo:hi]
        except Exception as exc:
            step = sh.array.chunks[0]
            chunks = f"{lo // step}" if (hi - 1) // step == lo // step else f"{lo // step}-{(hi - 1) // step}"
            raise self._fail(
                f"shard {sh.path.name}, chunk {chunks} (rows {lo}-{hi}) cannot be decoded "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        x = decode_16bit(raw, self.logical_dtype)
        top = max(
            float(x.max(initial=0.0)), -float(x.min(initial=0.0))
        )  # max |x| without a copy; NaN stays NaN
        bound = np.inf if sh.max_abs is None else sh.max_abs * (1 + MAX_ABS_SLACK)
        if not (np.isfinite(top) and top <= bound):  # NaN fails both
            bad = lo + int(np.flatnonzero(~(np.isfinite(x) & (np.abs(x) <= bound)).all(axis=1))[0])
            raise self._fail(
                f"shard {sh.path.name}, row {bad}: |x| reaches {top:.3g}, beyond the "
                f"{sh.max_abs if sh.max_abs is not None else 'finite'} it held when written"
            )
        return x

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as float32 ``[stop-start, d_model]``, across shard borders."""
        if not 0 <= start <= stop <= self.n_rows:
            raise IndexError(f"rows [{start}, {stop}) outside store of {self.n_rows} rows")
        parts = []
        for sh in self._shards:
            lo, hi = max(start, sh.row_start), min(stop, sh.row_start + sh.n_rows)
            if lo < hi:
                parts.append(self._read_shard(sh, lo - sh.row_start, hi - sh.row_start))
        if not parts:
            return np.empty((0, self.d_model), dtype=np.float32)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def blocks(self) -> list[tuple[int, int]]:
        """Row ranges aligned to storage chunks (never crossing a shard): the unit of I/O."""
        out = []
        for sh in self._shards:
            step = sh.array.chunks[0]
            for lo in range(0, sh.n_rows, step):
                out.append((sh.row_start + lo, sh.row_start + min(lo + step, sh.n_rows)))
        return out

    def iter_blocks(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(row_start, rows)`` chunk by chunk over ``[start, stop)``."""
        stop = self.n_rows if stop is None else stop
        for lo, hi in self.blocks():
            lo, hi = max(lo, start), min(hi, stop)
            if lo < hi:
                yield lo, self.read(lo, hi)


class PairedStores:
    """The base and fine-tuned stores of a pair, checked to be row-aligned."""

    def __init__(self, base_manifest: str | os.PathLike, ft_manifest: str | os.PathLike) -> None:
        self.base = ActivationStore(base_manifest)
        self.ft = ActivationStore(ft_manifest)
        for key in ("corpus", "layer", "n_rows", "d_model", "context_len", "first_position"):
            b, f = self.base.manifest.get(key), self.ft.manifest.get(key)
            if b != f:
                raise ValueError(
                    f"stores are not paired: {key} is {b!r} in {base_manifest} but {f!r} in {ft_manifest}"
                )
        self.n_rows = self.base.n_rows
        self.d_model = self.base.d_model
        self.norm_scales = (self.base.norm_scale, self.ft.norm_scale)

    def read(self, start: int, stop: int, normalise: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Paired float32 rows, scaled by each model's normalisation scalar when asked."""
        xb, xf = self.base.read(start, stop), self.ft.read(start, stop)
        if normalise:
            xb *= np.float32(self.norm_scales[0])
            xf *= np.float32(self.norm_scales[1])
        return xb, xf

    def blocks(self) -> list[tuple[int, int]]:
        """Chunk-aligned row ranges valid for both stores."""
        cuts = sorted({0, self.n_rows} | {b for rng in self.base.blocks() + self.ft.blocks() for b in rng})
        return [(lo, hi) for lo, hi in zip(cuts[:-1], cuts[1:]) if lo < hi]


def row_to_token(rows: np.ndarray, first_position: int, context_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Map store rows to (context index, position in context) of the token grid."""
    n_pos = context_len - first_position
    rows = np.asarray(rows)
    return rows // n_pos, first_position + rows % n_pos


def iter_row_batches(
    stores: PairedStores, start: int, stop: int, batch_rows: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(row_start, xb, xf)`` normalised float32 batches of at most ``batch_rows`` rows over
    ``[start, stop)``, read chunk by chunk (each storage chunk is read once)."""
    for lo, hi in stores.blocks():
        lo, hi = max(lo, start), min(hi, stop)
        if lo >= hi:
            continue
        xb, xf = stores.read(lo, hi)
        for a in range(0, hi - lo, batch_rows):
            yield lo + a, xb[a : a + batch_rows], xf[a : a + batch_rows]
