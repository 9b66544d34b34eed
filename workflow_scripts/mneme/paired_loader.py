"""Streaming, shuffled, resumable batches of paired activations from :class:`PairedStores`.

Nothing is loaded up front: rows are read chunk by chunk from the zarr stores, so memory depends on the
shuffle buffer, the batch size and the prefetch depth, never on the size of the store.

**Split.** The validation slice is the *tail* of the store: the last ``val_tokens`` rows, with the
boundary moved down to a context boundary (``context_len - first_position`` rows per context, from the
manifest) so that no context is split between training and validation. Training only ever reads rows
``[0, train_stop)``; :meth:`PairedBatchLoader.iter_validation` reads ``[train_stop, n_rows)`` in order.

**Shuffle.** Each epoch permutes the chunk-aligned blocks of the training range (``PairedStores.blocks``
clipped to it) with ``numpy.random.default_rng([seed, epoch])``. The permuted blocks are grouped into
windows of at most ``shuffle_buffer_rows`` rows (at least one block); a window is read into memory and
its rows are emitted in the order of a permutation drawn from ``default_rng([seed, epoch, window + 1])``.
Batches are cut from this row stream, across window and epoch borders (so no row is dropped).

**Position and resume.** Every RNG is derived from ``(seed, epoch, window)``, so the stream is a pure
function of the seed and the position ``(epoch, offset)`` - the number of rows of the epoch's stream
already consumed. Each batch carries the position just after it; restarting with that position replays
exactly the batches that would have followed (windows wholly before it are skipped without reading).

**Prefetch.** :meth:`PairedBatchLoader.train_batches` runs the reader in a background thread that fills
a bounded queue (``prefetch`` batches).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from mneme.activation_store import PairedStores


@dataclass(frozen=True)
class LoaderPosition:
    """Where the training stream stands: ``offset`` rows of epoch ``epoch``'s stream consumed."""

    epoch: int = 0
    offset: int = 0

    def to_dict(self) -> dict:
        return {"epoch": int(self.epoch), "offset": int(self.offset)}

    @classmethod
    def from_dict(cls, d: dict) -> LoaderPosition:
        return cls(int(d["epoch"]), int(d["offset"]))


@dataclass
class Batch:
    """A training batch: ``x`` ``[B, 2, d]`` float32 (base, fine-tuned), the store ``rows`` it came
    from, and the stream ``position`` right after it (what a checkpoint stores)."""

    x: np.ndarray
    rows: np.ndarray
    position: LoaderPosition


def split_train_val(n_rows: int, val_tokens: int, rows_per_context: int | None = None) -> int:
    """Index of the first validation row (= number of training rows) for a tail split.

    The boundary ``n_rows - val_tokens`` is moved down to a multiple of ``rows_per_context`` when
    that leaves some training rows, so validation gets at least ``val_tokens`` rows.
    """
    if val_tokens < 0:
        raise ValueError(f"val_tokens must be >= 0, got {val_tokens}")
    if val_tokens >= n_rows:
        raise ValueError(f"val_tokens={val_tokens} leaves no training rows in a store of {n_rows} rows")
    stop = n_rows - val_tokens
    if val_tokens and rows_per_context and rows_per_context > 0:
        aligned = (stop // rows_per_context) * rows_per_context
        if aligned > 0:
            stop = aligned
    return stop


class _Prefetcher:
    """Run a generator in a daemon thread, handing items over through a bounded queue."""

    _END = object()

    def __init__(self, gen: Iterator, maxsize: int) -> None:
        self._gen = gen
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, maxsize))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mneme-paired-loader", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._gen:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._put(exc)

    def __iter__(self) -> _Prefetcher:
        return self

    def __next__(self):
        item = self._queue.get()
        if item is self._END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=10)

    def __enter__(self) -> _Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PairedBatchLoader:
    """Shuffled, resumable training batches and in-order validation batches from a store pair."""

    def __init__(
        self,
        stores: PairedStores,
        batch_size: int,
        *,
        seed: int = 0,
        val_tokens: int = 0,
        shuffle_buffer_rows: int = 65536,
        prefetch: int = 4,
        normalise: bool = True,
        align_val_to_context: bool = True,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.stores = stores
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle_buffer_rows = max(1, int(shuffle_buffer_rows))
        self.prefetch = int(prefetch)
        self.normalise = normalise
        self.d_model = stores.d_model
        per_ctx = None
        man = stores.base.manifest
        if align_val_to_context and man.get("context_len") is not None:
            per_ctx = int(man["context_len"]) - int(man.get("first_position") or 0)
        self.train_stop = split_train_val(stores.n_rows, int(val_tokens), per_ctx)
        self.n_train = self.train_stop
        self.n_val = stores.n_rows - self.train_stop
        self.train_blocks = [
            (lo, min(hi, self.train_stop)) for lo, hi in stores.blocks() if lo < self.train_stop
        ]
        self.val_blocks = [
            (max(lo, self.train_stop), hi) for lo, hi in stores.blocks() if hi > self.train_stop
        ]
        #: the largest number of rows held in a window buffer so far (for memory checks)
        self.peak_buffer_rows = 0

    # -- the deterministic stream ---------------------------------------------------------------

    def epoch_windows(self, epoch: int) -> list[list[tuple[int, int]]]:
        """The permuted training blocks of ``epoch`` grouped into shuffle windows."""
        order = np.random.default_rng([self.seed, int(epoch)]).permutation(len(self.train_blocks))
        windows: list[list[tuple[int, int]]] = []
        cur: list[tuple[int, int]] = []
        cur_rows = 0
        for b in order:
            lo, hi = self.train_blocks[b]
            if cur and cur_rows + (hi - lo) > self.shuffle_buffer_rows:
                windows.append(cur)
                cur, cur_rows = [], 0
            cur.append((lo, hi))
            cur_rows += hi - lo
        if cur:
            windows.append(cur)
        return windows

    def _read_window(self, blocks: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        n = sum(hi - lo for lo, hi in blocks)
        x = np.empty((n, 2, self.d_model), dtype=np.float32)
        rows = np.empty(n, dtype=np.int64)
        at = 0
        for lo, hi in blocks:
            xb, xf = self.stores.read(lo, hi, normalise=self.normalise)
            x[at : at + hi - lo, 0] = xb
            x[at : at + hi - lo, 1] = xf
            rows[at : at + hi - lo] = np.arange(lo, hi)
            at += hi - lo
        return x, rows

    def _stream(self, start: LoaderPosition) -> Iterator[Batch]:
        """Infinite batch generator from ``start`` (synchronous)."""
        if self.n_train == 0:
            raise ValueError("no training rows")
        bs = self.batch_size
        epoch, offset = int(start.epoch), int(start.offset)
        if offset >= self.n_train:
            epoch, offset = epoch + 1, 0
        parts_x: list[np.ndarray] = []
        parts_r: list[np.ndarray] = []
        have = 0
        while True:
            pos = 0
            for w, blocks in enumerate(self.epoch_windows(epoch)):
                n_w = sum(hi - lo for lo, hi in blocks)
                if pos + n_w <= offset:
                    pos += n_w
                    continue
                x_w, rows_w = self._read_window(blocks)
                self.peak_buffer_rows = max(self.peak_buffer_rows, n_w + have)
                perm = np.random.default_rng([self.seed, epoch, w + 1]).permutation(n_w)
                i = max(0, offset - pos)
                while i < n_w:
                    take = perm[i : i + bs - have]
                    parts_x.append(x_w[take])
                    parts_r.append(rows_w[take])
                    have += len(take)
                    i += len(take)
                    if have == bs:
                        after = LoaderPosition(epoch, pos + i)
                        if after.offset >= self.n_train:
                            after = LoaderPosition(epoch + 1, 0)
                        x = parts_x[0] if len(parts_x) == 1 else np.concatenate(parts_x)
                        r = parts_r[0] if len(parts_r) == 1 else np.concatenate(parts_r)
                        parts_x, parts_r, have = [], [], 0
                        yield Batch(x, r, after)
                del x_w, rows_w
                pos += n_w
            epoch, offset = epoch + 1, 0

    def iter_train(self, start: LoaderPosition | None = None) -> Iterator[Batch]:
        """Synchronous infinite iterator of training batches (see :meth:`train_batches`)."""
        return self._stream(start or LoaderPosition())

    def train_batches(self, start: LoaderPosition | None = None) -> _Prefetcher:
        """Infinite training batches prefetched in a background thread; use as a context manager
        (``with loader.train_batches(pos) as it: ...``) so the thread stops when you are done."""
        return _Prefetcher(self._stream(start or LoaderPosition()), self.prefetch)

    # -- validation -----------------------------------------------------------------------------

    def iter_validation(
        self, batch_size: int | None = None, max_rows: int | None = None
    ) -> Iterator[np.ndarray]:
        """Validation rows ``[train_stop, n_rows)`` in store order as ``[b, 2, d]`` float32 arrays."""
        bs = int(batch_size or self.batch_size)
        limit = self.n_val if max_rows is None else min(self.n_val, int(max_rows))
        done = 0
        for lo, hi in self.val_blocks:
            hi = min(hi, lo + limit - done)
            if hi <= lo:
                break
            xb, xf = self.stores.read(lo, hi, normalise=self.normalise)
            x = np.stack([xb, xf], axis=1)
            for a in range(0, hi - lo, bs):
                yield x[a : a + bs]
            done += hi - lo
