"""Deterministic corpus sampling and packing into fixed-length token contexts.

Documents come from named sources (GCIDE parts, local files, streamed hub datasets), each
contributing its share of the token budget. They are tokenised, shuffled together with a seed,
joined with EOS separators and cut into contexts of ``context_len`` tokens that start with BOS.
Every token keeps the index of its document (``doc_index``), so any activation row can be traced
back to its document, source and category label (used later for provenance).
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from mneme import gcide

log = logging.getLogger("mneme.corpus")

DOC_FIELDS = ("doc_id", "source", "category", "title")


class CorpusTooSmall(ValueError):
    """A source ran out of documents before its share of the token budget was reached."""


def gcide_documents(src: dict, gcide_cfg: dict) -> list[dict]:
    """All senses of one GCIDE part (optionally only some categories), in file order."""
    tag_map, general, _ = gcide.load_category_map(gcide_cfg["categories"])
    keep = set(src.get("categories") or [])
    docs = gcide.iter_documents(
        gcide_cfg["path"],
        tag_map,
        general,
        part=src["part"],
        fractions=gcide_cfg["parts"],
        salt=gcide_cfg["salt"],
    )
    return [d for d in docs if not keep or d["category"] in keep]


def _read_file_records(path: str, fmt: str) -> Iterator[dict]:
    if fmt == "auto":
        fmt = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}.get(Path(path).suffix, "txt")
    if fmt == "jsonl":
        with open(path) as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)
    elif fmt == "parquet":
        yield from pd.read_parquet(path).to_dict("records")
    else:
        blocks = Path(path).read_text(errors="replace").split("\n\n")
        for block in blocks:
            if block.strip():
                yield {"text": block.strip()}


def _record_to_doc(rec: dict, src: dict, doc_id: str, tokenizer) -> dict:
    if src.get("chat"):
        messages = rec[src["messages_field"]]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    else:
        text = rec[src["text_field"]]
    field = src.get("category_field")
    category = str(rec[field]) if field and rec.get(field) is not None else src["category"]
    return {"doc_id": doc_id, "source": src["kind"], "category": category, "title": "", "text": text}


def file_documents(src: dict, tokenizer) -> list[dict]:
    """Documents from local jsonl / parquet / txt files (txt: blank-line separated blocks)."""
    paths = sorted(p for pattern in src["paths"] for p in glob.glob(pattern))
    docs = []
    for path in paths:
        for i, rec in enumerate(_read_file_records(path, src["format"])):
            docs.append(_record_to_doc(rec, src, f"{os.path.basename(path)}:{i}", tokenizer))
    return docs


def hub_documents(src: dict, seed: int, tokenizer) -> Iterator[dict]:
    """Documents streamed from a datasets hub id, shuffled through a seeded buffer."""
    import datasets

    try:
        ds = datasets.load_dataset(
            src["dataset"],
            src.get("name"),
            data_files=src.get("data_files"),
            split=src["split"],
            streaming=True,
        )
    except Exception as exc:
        raise RuntimeError(f"could not open hub dataset {src['dataset']!r}: {exc}") from exc
    ds = ds.shuffle(seed=seed, buffer_size=src["shuffle_buffer"])
    for i, rec in enumerate(ds):
        yield _record_to_doc(rec, src, f"{src['dataset']}:{i}", tokenizer)


def take_tokens(
    docs: Iterable[dict], tokenizer, budget: int, eos_id: int, label: str, batch: int = 256
) -> list[tuple[dict, list[int]]]:
    """Tokenise documents in order until ``budget`` tokens (EOS separators included)."""
    out, total, buf = [], 0, []

    def flush() -> bool:
        nonlocal total
        enc = tokenizer([d["text"] for d in buf], add_special_tokens=False)["input_ids"]
        for doc, ids in zip(buf, enc):
            if not ids:
                continue
            out.append((doc, list(ids) + [eos_id]))
            total += len(ids) + 1
            if total >= budget:
                return True
        buf.clear()
        return False

    for doc in docs:
        buf.append(doc)
        if len(buf) == batch and flush():
            return out
    if buf and flush():
        return out
    raise CorpusTooSmall(f"{label}: only {total} tokens available, {budget} needed")


def source_budgets(sources: list[dict], n_body_tokens: int) -> list[int]:
    fractions = [s.get("fraction") for s in sources]
    if any(f is None for f in fractions):
        fractions = [1 / len(sources)] * len(sources)
    return [math.ceil(f * n_body_tokens) for f in fractions]


def sample_documents(corpus_cfg: dict, corpus_name: str, gcide_cfg: dict, tokenizer, n_body_tokens: int):
    """Tokenised documents of every source, each up to its budget, shuffled together by seed."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token to separate packed documents")
    seed = corpus_cfg["seed"]
    picked: list[tuple[dict, list[int]]] = []
    for i, (src, budget) in enumerate(
        zip(corpus_cfg["sources"], source_budgets(corpus_cfg["sources"], n_body_tokens))
    ):
        label = (
            f"corpora.{corpus_name}.sources[{i}] ({src['kind']}{':' + src['part'] if 'part' in src else ''})"
        )
        rng = np.random.default_rng([seed, i])
        if src["kind"] == "hub":
            docs: Iterable[dict] = hub_documents(src, seed + i, tokenizer)
        else:
            pool = (
                gcide_documents(src, gcide_cfg) if src["kind"] == "gcide" else file_documents(src, tokenizer)
            )
            docs = (pool[j] for j in rng.permutation(len(pool)))
        got = take_tokens(docs, tokenizer, budget, eos, label)
        log.info("%s: %d documents, %d tokens", label, len(got), sum(len(t) for _, t in got))
        picked += got
    order = np.random.default_rng([seed, 10_000]).permutation(len(picked))
    return [picked[j] for j in order]


def pack(
    docs: list[tuple[dict, list[int]]], n_contexts: int, context_len: int, bos_id: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate documents and cut ``n_contexts`` rows; BOS (doc_index -1) starts each row."""
    first = 0 if bos_id is None else 1
    body = context_len - first
    need = n_contexts * body
    ids = np.fromiter((t for _, toks in docs for t in toks), dtype=np.int32)
    owner = np.repeat(np.arange(len(docs), dtype=np.int32), [len(t) for _, t in docs])
    if len(ids) < need:
        raise CorpusTooSmall(f"packing needs {need} tokens, the sampled documents have {len(ids)}")
    input_ids = np.empty((n_contexts, context_len), dtype=np.int32)
    doc_index = np.empty((n_contexts, context_len), dtype=np.int32)
    input_ids[:, first:] = ids[:need].reshape(n_contexts, body)
    doc_index[:, first:] = owner[:need].reshape(n_contexts, body)
    if first:
        input_ids[:, 0], doc_index[:, 0] = bos_id, -1
    return input_ids, doc_index


def docs_table(docs: list[tuple[dict, list[int]]], doc_index: np.ndarray) -> pd.DataFrame:
    """One row per document that made it into the corpus (tokens counted after truncation)."""
    flat = doc_index.ravel()
    flat = flat[flat >= 0]
    counts = np.bincount(flat, minlength=len(docs))
    first_ctx = np.full(len(docs), -1, dtype=np.int64)
    rows, _ = np.nonzero(doc_index >= 0)
    seen = doc_index[doc_index >= 0]
    first_ctx[seen[::-1]] = rows[::-1]  # earliest context wins
    used = np.nonzero(counts)[0]
    table = pd.DataFrame({f: [docs[i][0].get(f, "") for i in used] for f in DOC_FIELDS})
    table.insert(0, "doc_index", used.astype(np.int32))
    table["n_tokens"] = counts[used]
    table["first_context"] = first_ctx[used]
    return table


def write_corpus(
    tokens_path: str,
    docs_path: str,
    input_ids: np.ndarray,
    doc_index: np.ndarray,
    table: pd.DataFrame,
    attrs: dict,
) -> None:
    """Write tokens.zarr (input_ids, doc_index) and docs.parquet via temporary names."""
    tmp = tokens_path + ".tmp"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    group = zarr.open_group(tmp, mode="w", attributes=attrs)
    chunks = (max(1, 65536 // input_ids.shape[1]), input_ids.shape[1])
    for name, arr in (("input_ids", input_ids), ("doc_index", doc_index)):
        group.create_array(name, shape=arr.shape, dtype="int32", chunks=chunks)[:] = arr
    if os.path.exists(tokens_path):
        shutil.rmtree(tokens_path)
    os.replace(tmp, tokens_path)
    table.to_parquet(docs_path + ".tmp", index=False)
    os.replace(docs_path + ".tmp", docs_path)


def sample_corpus(
    corpus_cfg: dict,
    corpus_name: str,
    gcide_cfg: dict,
    tokenizer,
    tokens_path: str,
    docs_path: str,
    tokenizer_model: str,
) -> dict:
    """Sample, tokenise, pack and write one corpus; returns a summary."""
    context_len = corpus_cfg["context_len"]
    n_contexts = math.ceil(corpus_cfg["n_tokens"] / context_len)
    bos = None
    if corpus_cfg["add_bos"]:
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    body = context_len - (bos is not None)
    docs = sample_documents(corpus_cfg, corpus_name, gcide_cfg, tokenizer, n_contexts * body)
    input_ids, doc_index = pack(docs, n_contexts, context_len, bos)
    table = docs_table(docs, doc_index)
    attrs = {
        "corpus": corpus_name,
        "tokenizer_model": tokenizer_model,
        "context_len": context_len,
        "n_contexts": n_contexts,
        "first_position": int(bos is not None),
        "bos_token_id": bos,
        "eos_token_id": tokenizer.eos_token_id,
        "seed": corpus_cfg["seed"],
    }
    write_corpus(tokens_path, docs_path, input_ids, doc_index, table, attrs)
    by_cat = table.groupby("category")["n_tokens"].sum().sort_values(ascending=False)
    log.info(
        "corpus %s: %d contexts x %d tokens, %d documents; tokens by category: %s",
        corpus_name,
        n_contexts,
        context_len,
        len(table),
        by_cat.to_dict(),
    )
    return {**attrs, "n_documents": len(table), "tokens_by_category": {k: int(v) for k, v in by_cat.items()}}
