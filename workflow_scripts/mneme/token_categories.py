"""Which corpus category each activation-store row belongs to.

Row ``r`` of a store is token ``(r // n_pos, first + r % n_pos)`` of the corpus token grid; its
document is ``tokens.zarr/doc_index`` there and its category that document's ``category`` in
``docs.parquet``. Both the latent statistics and the activation-difference baseline group rows
this way, so the mapping lives here, apart from either stage's logic.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import zarr

from mneme.contracts import NO_CATEGORY


class CachedRows:
    """Row slices ``[lo, hi)`` of a 2-D zarr array, caching one storage-chunk-aligned block."""

    def __init__(self, array, col_start: int = 0) -> None:
        self.array = array
        self.col_start = col_start
        self.step = array.chunks[0]
        self.block: tuple[int, int, np.ndarray] | None = None

    def get(self, lo: int, hi: int) -> np.ndarray:
        b0 = (lo // self.step) * self.step
        b1 = min(b0 + self.step, self.array.shape[0])
        if hi > b1:
            return self.array[lo:hi, self.col_start :]
        if self.block is None or self.block[0] != b0:
            self.block = (b0, b1, self.array[b0:b1, self.col_start :])
        return self.block[2][lo - b0 : hi - b0]


class CategoryMap:
    """Category code of every store row, from ``tokens.zarr/doc_index`` and ``docs.parquet``."""

    def __init__(self, tokens_path, docs_path, first: int, ctx_len: int, n_contexts_needed: int) -> None:
        group = zarr.open_group(str(tokens_path), mode="r")
        doc_index = group["doc_index"]
        if doc_index.shape[1] != ctx_len:
            raise ValueError(
                f"{tokens_path}: context length {doc_index.shape[1]} != store context_len {ctx_len}"
            )
        if doc_index.shape[0] < n_contexts_needed:
            raise ValueError(
                f"{tokens_path} has {doc_index.shape[0]} contexts, the stores need {n_contexts_needed}"
            )
        docs = pd.read_parquet(docs_path, columns=["doc_index", "category"])
        self.names = sorted({str(c) for c in docs["category"]}) + [NO_CATEGORY]
        code = {c: i for i, c in enumerate(self.names)}
        none = code[NO_CATEGORY]
        size = int(docs["doc_index"].max()) + 1 if len(docs) else 0
        self.lut = np.full(size + 1, none, dtype=np.int64)  # last slot: doc_index -1
        self.lut[docs["doc_index"].to_numpy(np.int64)] = [code[str(c)] for c in docs["category"]]
        self.none = none
        self.rows = CachedRows(doc_index, first)
        self.n_pos = ctx_len - first

    def doc_indices(self, row_start: int, n: int) -> np.ndarray:
        """``doc_index`` of rows ``[row_start, row_start + n)`` (-1: no document), any alignment."""
        c0 = row_start // self.n_pos
        c1 = math.ceil((row_start + n) / self.n_pos)
        skip = row_start - c0 * self.n_pos
        return self.rows.get(c0, c1).reshape(-1)[skip : skip + n].astype(np.int64)

    def codes(self, row_start: int, n: int) -> np.ndarray:
        """Category code (index into ``names``) of rows ``[row_start, row_start + n)``."""
        di = self.doc_indices(row_start, n)
        di = np.where((di >= 0) & (di < len(self.lut) - 1), di, len(self.lut) - 1)
        return self.lut[di]
