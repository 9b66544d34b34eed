"""The activation-difference baseline against a brute-force reference on a small paired store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mneme.activation_diff import activation_diff
from mneme.corpus import write_corpus
from mneme.planted import write_paired_stores

D, CONTEXT_LEN, FIRST = 6, 17, 1
N_POS = CONTEXT_LEN - FIRST
N_CTX = 30
N_ROWS = N_CTX * N_POS
CATEGORIES = ("biology", "general", "law")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Stores whose chunks (40 rows) do not line up with the contexts (16 rows); biology
    documents moved three times as much as the others."""
    root = tmp_path_factory.mktemp("actdiff")
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 25, 200)
    owner = np.repeat(np.arange(200), lengths)[:N_ROWS].astype(np.int32)
    doc_index = np.full((N_CTX, CONTEXT_LEN), -1, dtype=np.int32)
    doc_index[:, FIRST:] = owner.reshape(N_CTX, N_POS)
    doc_index[4, 2:5] = -1  # tokens outside any document
    used = np.unique(owner)
    category = {int(i): CATEGORIES[i % 3] for i in used}
    docs = pd.DataFrame(
        {
            "doc_index": used.astype(np.int32),
            "doc_id": [f"d{i}" for i in used],
            "source": "test",
            "category": [category[int(i)] for i in used],
            "title": "",
            "n_tokens": 1,
            "first_context": 0,
        }
    )
    input_ids = rng.integers(5, 1000, (N_CTX, CONTEXT_LEN)).astype(np.int32)
    write_corpus(str(root / "tokens.zarr"), str(root / "docs.parquet"), input_ids, doc_index, docs, {})
    rows_doc = doc_index[:, FIRST:].reshape(-1)
    rows_cat = np.array([category.get(int(d), "(none)") for d in rows_doc])
    base = rng.normal(size=(N_ROWS, D)).astype(np.float32)
    scale = np.where(rows_cat == "biology", 0.6, 0.2)[:, None]
    ft = (base + scale * rng.normal(size=(N_ROWS, D))).astype(np.float32)
    man = write_paired_stores(
        base, ft, root / "acts", context_len=CONTEXT_LEN, first_position=FIRST, n_shards=2, chunk_rows=40
    )
    return dict(man=man, root=root, rows_doc=rows_doc, rows_cat=rows_cat)


def test_activation_diff_matches_brute_force(setup):
    from mneme.activation_store import PairedStores

    xb, xf = PairedStores(*setup["man"]).read(0, N_ROWS, normalise=False)
    rel = np.linalg.norm(xf - xb, axis=1) / np.linalg.norm(xb, axis=1)
    cos = (xb * xf).sum(1) / np.linalg.norm(xb, axis=1) / np.linalg.norm(xf, axis=1)
    table = activation_diff(*setup["man"], setup["root"] / "tokens.zarr", setup["root"] / "docs.parquet")
    t = table.set_index("category")
    for cat in (*CATEGORIES, "(none)"):
        mask = setup["rows_cat"] == cat
        assert t.loc[cat, "n_tokens"] == mask.sum()
        assert t.loc[cat, "mean_rel_diff"] == pytest.approx(rel[mask].mean(), rel=1e-5)
        assert t.loc[cat, "mean_cos"] == pytest.approx(cos[mask].mean(), rel=1e-5)
    # the standard error comes from per-document means
    docs = setup["rows_doc"]
    law = [rel[(docs == d)].mean() for d in np.unique(docs[setup["rows_cat"] == "law"])]
    assert t.loc["law", "n_docs"] == len(law)
    assert t.loc["law", "se_rel_diff"] == pytest.approx(np.std(law, ddof=1) / np.sqrt(len(law)), rel=1e-5)
    assert t.loc["biology", "mean_rel_diff"] > 2 * t.loc["general", "mean_rel_diff"]
