"""Corpus sampling and packing: reference packing, labels, determinism, too-small errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import zarr

from mneme.corpus import CorpusTooSmall, docs_table, pack, sample_corpus
from mneme.models import load_tokenizer


def reference_pack(docs, n_contexts, context_len, bos):
    """Straightforward packing: walk the token stream, start each context with BOS."""
    stream = [(t, i) for i, (_, toks) in enumerate(docs) for t in toks]
    ids, owner, k = [], [], 0
    for _ in range(n_contexts):
        row_ids, row_own = [bos], [-1]
        while len(row_ids) < context_len:
            t, i = stream[k]
            row_ids.append(t)
            row_own.append(i)
            k += 1
        ids.append(row_ids)
        owner.append(row_own)
    return np.array(ids), np.array(owner)


def test_pack_matches_reference():
    rng = np.random.default_rng(0)
    docs = [
        ({"doc_id": str(i)}, list(rng.integers(3, 50, size=rng.integers(1, 12))) + [2]) for i in range(40)
    ]
    ids, owner = pack(docs, n_contexts=5, context_len=8, bos_id=1)
    ref_ids, ref_owner = reference_pack(docs, 5, 8, 1)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(owner, ref_owner)


def test_pack_without_bos_and_too_small():
    docs = [({"doc_id": "a"}, [5, 6, 7, 2])]
    ids, owner = pack(docs, 2, 2, None)
    assert ids.tolist() == [[5, 6], [7, 2]] and owner.tolist() == [[0, 0], [0, 0]]
    with pytest.raises(CorpusTooSmall):
        pack(docs, 3, 2, None)


def test_docs_table_counts_and_first_context():
    docs = [
        ({"doc_id": "a", "source": "s", "category": "x", "title": "A"}, [5] * 5),
        ({"doc_id": "b", "source": "s", "category": "y", "title": "B"}, [6] * 10),
    ]
    _, owner = pack(docs, 3, 4, 1)  # 9 body tokens: 5 of a, 4 of b
    table = docs_table(docs, owner)
    assert table["doc_id"].tolist() == ["a", "b"]
    assert table["n_tokens"].tolist() == [5, 4]
    assert table["first_context"].tolist() == [0, 1]


def files_corpus(tmp_path, n_tokens, seed=0, chat=False):
    path = tmp_path / "docs.jsonl"
    with open(path, "w") as fh:
        for i in range(200):
            rec = {
                "text": f"Document {i} about the licence terms and {i % 7} conditions.",
                "label": f"c{i % 3}",
            }
            if chat:
                rec["conversation"] = [
                    {"role": "user", "content": f"question {i}"},
                    {"role": "assistant", "content": "answer"},
                ]
            fh.write(json.dumps(rec) + "\n")
    src = {
        "kind": "files",
        "paths": [str(path)],
        "format": "auto",
        "text_field": "text",
        "category_field": "label",
        "category": "unlabelled",
        "chat": chat,
        "messages_field": "conversation",
    }
    return {"sources": [src], "n_tokens": n_tokens, "context_len": 16, "seed": seed, "add_bos": True}


def run_sample(tmp_path, cfg, tok, name="out"):
    out = tmp_path / name
    out.mkdir()
    summary = sample_corpus(cfg, "c", {}, tok, str(out / "tokens.zarr"), str(out / "docs.parquet"), "tiny")
    return summary, zarr.open_group(str(out / "tokens.zarr"), mode="r"), pd.read_parquet(out / "docs.parquet")


def test_sample_corpus_files_labels_and_determinism(tiny_model, tmp_path):
    tok = load_tokenizer(tiny_model)
    cfg = files_corpus(tmp_path, n_tokens=640)
    summary, group, docs = run_sample(tmp_path, cfg, tok, "a")
    ids, owner = group["input_ids"][:], group["doc_index"][:]
    assert ids.shape == (40, 16) and (ids[:, 0] == tok.bos_token_id).all() and (owner[:, 0] == -1).all()
    assert group.attrs["first_position"] == 1
    assert set(docs["category"]) <= {"c0", "c1", "c2"}
    # every labelled token belongs to a listed document, and token counts add up
    assert set(np.unique(owner[owner >= 0])) == set(docs["doc_index"])
    assert docs["n_tokens"].sum() == 40 * 15
    # same seed, same corpus; another seed, another sample
    _, g2, _ = run_sample(tmp_path, cfg, tok, "b")
    np.testing.assert_array_equal(g2["input_ids"][:], ids)
    _, g3, _ = run_sample(tmp_path, {**cfg, "seed": 1}, tok, "c")
    assert not np.array_equal(g3["input_ids"][:], ids)
    assert summary["n_contexts"] == 40


def test_sample_corpus_too_small_names_source(tiny_model, tmp_path):
    tok = load_tokenizer(tiny_model)
    with pytest.raises(CorpusTooSmall, match=r"corpora.c.sources\[0\] \(files\): only \d+ tokens available"):
        run_sample(tmp_path, files_corpus(tmp_path, n_tokens=10**6), tok)


def test_chat_documents_use_chat_template(tiny_model, tmp_path):
    tok = load_tokenizer(tiny_model)
    _, group, _ = run_sample(tmp_path, files_corpus(tmp_path, n_tokens=320, chat=True), tok)
    text = tok.decode(group["input_ids"][:].ravel())
    assert "assistant\nanswer" in text and "Document" not in text


def test_hub_source_streams_through_datasets(tiny_model, tmp_path):
    """The hub code path (datasets streaming + seeded shuffle buffer), offline via the json builder."""
    tok = load_tokenizer(tiny_model)
    cfg = files_corpus(tmp_path, n_tokens=320)
    path = cfg["sources"][0]["paths"][0]
    hub = {
        "kind": "hub",
        "dataset": "json",
        "name": None,
        "data_files": [path],
        "split": "train",
        "text_field": "text",
        "category_field": "label",
        "category": "unlabelled",
        "chat": False,
        "messages_field": "conversation",
        "shuffle_buffer": 50,
    }
    summary, group, docs = run_sample(tmp_path, {**cfg, "sources": [hub]}, tok, "hub")
    assert group["input_ids"].shape == (20, 16)
    assert docs["source"].eq("hub").all() and set(docs["category"]) <= {"c0", "c1", "c2"}
    assert docs["doc_id"].str.startswith("json:").all()
    _, again, _ = run_sample(tmp_path, {**cfg, "sources": [hub]}, tok, "hub2")
    np.testing.assert_array_equal(again["input_ids"][:], group["input_ids"][:])
