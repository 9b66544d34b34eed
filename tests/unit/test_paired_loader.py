"""Streaming paired loader: split, shuffling, determinism, resume, prefetch and bounded memory."""

from __future__ import annotations

import itertools
import threading
import tracemalloc

import numpy as np
import pytest

from mneme.activation_store import PairedStores
from mneme.paired_loader import LoaderPosition, PairedBatchLoader, split_train_val
from mneme.planted import write_paired_stores

D = 8


def id_rows(n: int, model: int, d: int = D) -> np.ndarray:
    """Rows that encode their own index exactly in float16: [r // 1000, r % 1000, model, 1, ...]."""
    r = np.arange(n)
    x = np.ones((n, d), dtype=np.float32)
    x[:, 0], x[:, 1], x[:, 2] = r // 1000, r % 1000, model
    return x


def decode_ids(x: np.ndarray) -> np.ndarray:
    return (x[:, 0].astype(np.int64) * 1000 + x[:, 1].astype(np.int64)).astype(np.int64)


@pytest.fixture(scope="module")
def make_stores(tmp_path_factory):
    cache = {}

    def build(n_rows=3000, chunk_rows=128, n_shards=2, context_len=None, d=D):
        key = (n_rows, chunk_rows, n_shards, context_len, d)
        if key not in cache:
            root = tmp_path_factory.mktemp("stores")
            bm, fm = write_paired_stores(
                id_rows(n_rows, 0, d),
                id_rows(n_rows, 1, d),
                root,
                logical_dtype="float16",
                chunk_rows=chunk_rows,
                n_shards=n_shards,
                context_len=context_len,
            )
            cache[key] = (bm, fm)
        return PairedStores(*cache[key])

    return build


def take(it, n):
    return list(itertools.islice(it, n))


def test_batches_carry_their_rows_and_both_models(make_stores):
    loader = PairedBatchLoader(make_stores(), 64, seed=1, val_tokens=500, normalise=False)
    for b in take(loader.iter_train(), 10):
        assert b.x.shape == (64, 2, D) and b.x.dtype == np.float32
        assert np.array_equal(decode_ids(b.x[:, 0]), b.rows)
        assert np.array_equal(decode_ids(b.x[:, 1]), b.rows)
        assert np.all(b.x[:, 0, 2] == 0) and np.all(b.x[:, 1, 2] == 1)


def test_no_validation_row_in_training_and_epochs_cover_training_rows(make_stores):
    stores = make_stores()
    loader = PairedBatchLoader(stores, 100, seed=3, val_tokens=700, normalise=False, shuffle_buffer_rows=300)
    assert loader.train_stop == 2300 and loader.n_val == 700
    n_batches = (3 * loader.n_train) // 100 + 1
    rows = np.concatenate([b.rows for b in take(loader.iter_train(), n_batches)])
    assert rows.max() < loader.train_stop  # training never sees a validation row
    for e in range(3):  # every epoch is a permutation of the training rows
        epoch_rows = rows[e * loader.n_train : (e + 1) * loader.n_train]
        assert np.array_equal(np.sort(epoch_rows), np.arange(loader.n_train))
    assert not np.array_equal(rows[: loader.n_train], rows[loader.n_train : 2 * loader.n_train])
    val = np.concatenate([decode_ids(x[:, 0]) for x in loader.iter_validation(256)])
    assert np.array_equal(val, np.arange(loader.train_stop, stores.n_rows))


def test_split_is_aligned_to_contexts(make_stores):
    assert split_train_val(1000, 130, rows_per_context=100) == 800
    assert split_train_val(1000, 0, rows_per_context=100) == 1000
    assert split_train_val(1000, 130) == 870
    with pytest.raises(ValueError):
        split_train_val(100, 100)
    loader = PairedBatchLoader(make_stores(context_len=250), 50, val_tokens=400)
    assert loader.train_stop == 2500 and loader.n_val == 500


def test_chunk_shuffle_is_deterministic_and_seeded(make_stores):
    stores = make_stores()
    a = PairedBatchLoader(stores, 64, seed=5, val_tokens=300, shuffle_buffer_rows=256)
    b = PairedBatchLoader(stores, 64, seed=5, val_tokens=300, shuffle_buffer_rows=256)
    c = PairedBatchLoader(stores, 64, seed=6, val_tokens=300, shuffle_buffer_rows=256)
    ra = [x.rows for x in take(a.iter_train(), 20)]
    rb = [x.rows for x in take(b.iter_train(), 20)]
    rc = [x.rows for x in take(c.iter_train(), 20)]
    assert all(np.array_equal(u, v) for u, v in zip(ra, rb))
    assert not all(np.array_equal(u, v) for u, v in zip(ra, rc))
    # the block order is a seeded permutation of the training blocks, different per epoch
    w0, w1 = a.epoch_windows(0), a.epoch_windows(1)
    flat0 = [blk for w in w0 for blk in w]
    assert sorted(flat0) == sorted(a.train_blocks) and flat0 != sorted(flat0)
    assert flat0 != [blk for w in w1 for blk in w]
    assert all(sum(hi - lo for lo, hi in w) <= 256 for w in w0)
    assert w0 == b.epoch_windows(0)


def test_resume_from_position_replays_the_same_batches(make_stores):
    loader = PairedBatchLoader(make_stores(), 96, seed=2, val_tokens=400, shuffle_buffer_rows=300)
    straight = take(loader.iter_train(), 70)  # > 2 epochs, batches straddle windows and epochs
    assert straight[-1].position.epoch >= 2
    for cut in (0, 1, 13, 27, 28, 50):
        pos = straight[cut].position
        again = take(loader.iter_train(LoaderPosition.from_dict(pos.to_dict())), 70 - cut - 1)
        for want, got in zip(straight[cut + 1 :], again):
            assert np.array_equal(want.rows, got.rows) and np.array_equal(want.x, got.x)
            assert want.position == got.position


def test_prefetching_thread_matches_sync_stream_and_stops(make_stores):
    loader = PairedBatchLoader(make_stores(), 64, seed=4, val_tokens=300, prefetch=2)
    sync = take(loader.iter_train(), 15)
    before = threading.active_count()
    with loader.train_batches() as it:
        pre = take(it, 15)
        assert threading.active_count() == before + 1
    assert threading.active_count() == before
    assert all(np.array_equal(a.rows, b.rows) for a, b in zip(sync, pre))


def test_reader_errors_reach_the_consumer(make_stores):
    loader = PairedBatchLoader(make_stores(), 64, val_tokens=300)

    def broken(lo, hi, normalise=True):
        raise OSError("disk gone")

    loader.stores = type("S", (), {"read": staticmethod(broken)})()
    with loader.train_batches() as it, pytest.raises(OSError, match="disk gone"):
        next(it)


def test_memory_is_bounded_by_the_shuffle_buffer(make_stores):
    """Peak buffered rows and traced memory do not grow with the store."""
    peaks, traced = [], []
    for n_rows in (2000, 8000):
        stores = make_stores(n_rows=n_rows, d=256)
        loader = PairedBatchLoader(stores, 64, seed=0, val_tokens=200, shuffle_buffer_rows=512)
        tracemalloc.start()
        for b in itertools.islice(loader.iter_train(), (2 * loader.n_train) // 64):
            del b
        traced.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        peaks.append(loader.peak_buffer_rows)
    assert max(peaks) <= 512 + 64  # one window plus a partial batch, whatever the store size
    store_bytes = 8000 * 2 * 256 * 4  # 16 MB as float32
    assert traced[1] < 1.5 * traced[0] and traced[1] < store_bytes / 4
