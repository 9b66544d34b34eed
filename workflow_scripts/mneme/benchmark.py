"""Built-in GCIDE category benchmark: how well a causal LM knows each domain's vocabulary.

The items come from the ``benchmark`` part of the GCIDE headword split (see :mod:`mneme.gcide`),
so no headword in them is ever seen by the organism fine-tuning or the model diffing. Every
category gets its own items, plus the ``general`` (untagged) senses as a control, which makes a
side effect of fine-tuning show up as a per-category change in score.

Two tasks are scored by log-likelihood under the model (no generation):

``definition_loglik``
    mean per-token log-probability of the definition given ``"{headword}: "``;
``multiple_choice``
    given ``"Which term is defined as: {definition}\\nAnswer:"``, the choice ``" {headword}"``
    with the highest summed log-probability is the prediction (the length-normalised variant is
    kept too).

Context and continuation are tokenised separately and concatenated, with the space that joins
them moved to the continuation (``"Frog:"`` + ``" An amphibian ..."``), so that the scored tokens
are exactly the continuation's tokens whatever the tokenizer merges across the boundary.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from mneme import gcide
from mneme.models import load_causal_lm

log = logging.getLogger("mneme.benchmark")

PART = "benchmark"
TASKS = ("definition_loglik", "multiple_choice")
MIN_DEFINITION_WORDS = 4
MC_TEMPLATE = "Which term is defined as: {definition}\nAnswer:"
ITEM_COLUMNS = ["item_id", "category", "headword", "definition", "choices", "answer"]


# --------------------------------------------------------------------------- items


def _stable_int(*parts: object) -> int:
    """A 64-bit integer from the parts' text: a seed/sort key that does not depend on PYTHONHASHSEED."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _is_trivial(headword: str, definition: str) -> bool:
    """A definition that names its own headword gives the answer away."""
    return re.search(rf"(?<!\w){re.escape(headword)}(?!\w)", definition, flags=re.IGNORECASE) is not None


def eligible(headword: str, definition: str, min_words: int = MIN_DEFINITION_WORDS) -> bool:
    """Whether a sense can become an item: a long enough definition that does not contain the headword."""
    return len(definition.split()) >= min_words and not _is_trivial(headword, definition)


def _definition(doc: dict) -> str:
    prefix = f"{doc['title']}: "
    text = doc["text"]
    return text[len(prefix) :] if text.startswith(prefix) else text


def build_items(
    gcide_cfg: dict,
    categories: Sequence[str] | None = None,
    n_per_category: int = 100,
    n_choices: int = 4,
    seed: int = 0,
    include_general: bool = True,
    part: str = PART,
    n_general: int | None = None,
) -> pd.DataFrame:
    """A deterministic item set from the ``benchmark`` part of GCIDE.

    ``gcide_cfg`` is the config's ``gcide`` block (``path``, ``categories`` YAML, ``parts``,
    optional ``salt``). ``categories`` defaults to every non-general category of the YAML; the
    general category is added as a control unless ``include_general`` is false. Per category, at
    most one sense per headword (the first eligible one in file order) is a candidate, and
    ``n_per_category`` candidates are picked by a seeded hash of their ``doc_id``; the general
    category gets ``n_general`` (default ``n_per_category``). Its change is the reference of every
    category's specific change, so its sampling noise enters all of them at once, and its
    untagged definitions vary more than a category's: it needs more items than one category.
    A larger sample extends a smaller one (the same hash order).

    For the multiple-choice task, ``choices`` holds the right headword and ``n_choices - 1``
    distractor headwords from the same category's candidates (seeded by ``seed`` and the item),
    in a seeded order; ``answer`` is the right one's index. A category with fewer than
    ``n_choices`` distinct headwords gets ``choices=None`` and ``answer=-1`` (no MC item).
    """
    if n_per_category < 1:
        raise ValueError(f"n_per_category must be >= 1, got {n_per_category}")
    if n_general is not None and n_general < 1:
        raise ValueError(f"n_general must be >= 1, got {n_general}")
    if n_choices < 2:
        raise ValueError(f"n_choices must be >= 2, got {n_choices}")
    tag_map, general, known = gcide.load_category_map(gcide_cfg["categories"])
    wanted = list(known) if categories is None else list(dict.fromkeys(categories))
    unknown = [c for c in wanted if c not in known and c != general]
    if unknown:
        raise ValueError(f"unknown categories {unknown}; known: {sorted(known)} and {general!r}")
    if include_general and general not in wanted:
        wanted.append(general)

    pools: dict[str, dict[str, dict]] = {c: {} for c in wanted}  # category -> lower(headword) -> doc
    docs = gcide.iter_documents(
        gcide_cfg["path"],
        tag_map,
        general,
        part=part,
        fractions=gcide_cfg["parts"],
        salt=gcide_cfg.get("salt", gcide.DEFAULT_SALT),
    )
    for doc in docs:
        pool = pools.get(doc["category"])
        key = doc["title"].lower()
        if pool is None or key in pool:
            continue
        definition = _definition(doc)
        if eligible(doc["title"], definition):
            pool[key] = {"item_id": doc["doc_id"], "headword": doc["title"], "definition": definition}

    rows: list[dict] = []
    for category in wanted:
        pool = list(pools[category].values())
        if not pool:
            log.warning("category %r has no eligible sense in the %r part", category, part)
            continue
        n = n_general if category == general and n_general is not None else n_per_category
        if len(pool) < n:
            log.warning(
                "category %r has %d eligible senses, fewer than the %d asked for: all are used",
                category,
                len(pool),
                n,
            )
        picked = sorted(pool, key=lambda d: (_stable_int(seed, d["item_id"]), d["item_id"]))[:n]
        headwords = sorted({d["headword"] for d in pool})  # one per lower-cased headword already
        for item in sorted(picked, key=lambda d: d["item_id"]):
            choices, answer = _choices(item, headwords, n_choices, seed)
            rows.append({**item, "category": category, "choices": choices, "answer": answer})
        if len(headwords) < n_choices:
            log.warning(
                "category %r has %d headwords, fewer than n_choices=%d: no MC items",
                category,
                len(headwords),
                n_choices,
            )
    return pd.DataFrame(rows, columns=ITEM_COLUMNS)


def items_from_options(gcide_cfg: dict, opts: dict) -> pd.DataFrame:
    """:func:`build_items` from the config's ``benchmark`` section: the benchmark rule and the
    reversal stage must score exactly the same items."""
    return build_items(
        gcide_cfg,
        categories=opts["categories"],
        n_per_category=opts["n_per_category"],
        n_general=opts["n_general"],
        n_choices=opts["n_choices"],
        seed=opts["seed"],
    )


def _choices(item: dict, headwords: list[str], n_choices: int, seed: int) -> tuple[list[str] | None, int]:
    right = item["headword"]
    others = [h for h in headwords if h.lower() != right.lower()]
    if len(others) < n_choices - 1:
        return None, -1
    rng = np.random.default_rng(_stable_int("choices", seed, item["item_id"]))
    picks = [others[i] for i in rng.choice(len(others), size=n_choices - 1, replace=False)]
    answer = int(rng.integers(n_choices))
    picks.insert(answer, right)
    return picks, answer


# --------------------------------------------------------------------------- scoring


def _split_space(context: str, continuation: str) -> tuple[str, str]:
    """Move trailing whitespace of the context to the front of the continuation."""
    stripped = context.rstrip()
    return stripped, context[len(stripped) :] + continuation


def encode_pair(tokenizer, context: str, continuation: str, max_len: int = 128) -> tuple[list[int], int]:
    """Token ids of context + continuation and the index where the continuation starts.

    The context gets the tokenizer's special prefix (e.g. BOS), never a trailing EOS. Too long a
    pair loses context tokens from the left first, then continuation tokens from the right, so at
    least one context token stays to predict the first continuation token from.
    """
    context, continuation = _split_space(context, continuation)
    ctx = list(tokenizer(context, add_special_tokens=True)["input_ids"])
    eos = tokenizer.eos_token_id
    if ctx and eos is not None and ctx[-1] == eos and not context.endswith(tokenizer.eos_token or "\0"):
        ctx = ctx[:-1]
    cont = list(tokenizer(continuation, add_special_tokens=False)["input_ids"])
    if not ctx or not cont:
        raise ValueError(f"empty context or continuation: {context!r} / {continuation!r}")
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2, got {max_len}")
    cont = cont[: max_len - 1]
    ctx = ctx[-(max_len - len(cont)) :]
    return ctx + cont, len(ctx)


def continuation_logprobs(
    model,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    batch_size: int = 16,
    max_len: int = 128,
) -> list[np.ndarray]:
    """Per-token log-probabilities of each continuation given its context.

    Batched with right padding and an attention mask; sequences are grouped by length to keep
    padding small, results come back in input order.
    """
    import torch

    encoded = [encode_pair(tokenizer, c, x, max_len) for c, x in pairs]
    pad = next(t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if t is not None)
    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    out: list[np.ndarray | None] = [None] * len(encoded)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(encoded[i][0]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                seq = encoded[i][0]
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for row, i in enumerate(idx):
                seq, cut = encoded[i]
                # logits at position p predict token p + 1
                logp = torch.log_softmax(logits[row, cut - 1 : len(seq) - 1].float(), dim=-1)
                target = torch.tensor(seq[cut:], device=logp.device)
                out[i] = logp.gather(1, target[:, None])[:, 0].cpu().numpy().astype(np.float64)
    return out  # type: ignore[return-value]


def score_loaded(
    model,
    tokenizer,
    items: pd.DataFrame,
    batch_size: int = 16,
    max_len: int = 128,
    tasks: Iterable[str] = TASKS,
) -> pd.DataFrame:
    """Item-level results of an already loaded model (see :func:`score_model`)."""
    tasks = list(tasks)
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise ValueError(f"unknown tasks {bad}; known: {list(TASKS)}")
    rows: list[dict] = []
    records = items.to_dict("records")
    if "definition_loglik" in tasks and records:
        pairs = [(f"{r['headword']}: ", r["definition"]) for r in records]
        for r, lp in zip(records, continuation_logprobs(model, tokenizer, pairs, batch_size, max_len)):
            rows.append(
                {
                    "item_id": r["item_id"],
                    "category": r["category"],
                    "task": "definition_loglik",
                    "score": float(lp.mean()),
                    "loglik": float(lp.sum()),
                    "n_tokens": int(lp.size),
                }
            )
    if "multiple_choice" in tasks:
        mc = [
            r for r in records if isinstance(r.get("choices"), (list, tuple, np.ndarray)) and r["answer"] >= 0
        ]
        pairs = [
            (MC_TEMPLATE.format(definition=r["definition"]), f" {choice}")
            for r in mc
            for choice in r["choices"]
        ]
        flat = continuation_logprobs(model, tokenizer, pairs, batch_size, max_len) if pairs else []
        pos = 0
        for r in mc:
            lps = flat[pos : pos + len(r["choices"])]
            pos += len(r["choices"])
            sums = [float(lp.sum()) for lp in lps]
            norms = [float(lp.mean()) for lp in lps]
            predicted, predicted_norm = int(np.argmax(sums)), int(np.argmax(norms))
            answer = int(r["answer"])
            rows.append(
                {
                    "item_id": r["item_id"],
                    "category": r["category"],
                    "task": "multiple_choice",
                    "score": float(predicted == answer),
                    "answer": answer,
                    "predicted": predicted,
                    "predicted_norm": predicted_norm,
                    "correct_norm": float(predicted_norm == answer),
                    "choice_loglik": sums,
                    "choice_loglik_norm": norms,
                }
            )
    columns = [
        *("item_id", "category", "task", "score", "loglik", "n_tokens", "answer", "predicted"),
        *("predicted_norm", "correct_norm", "choice_loglik", "choice_loglik_norm"),
    ]
    return pd.DataFrame(rows, columns=columns)


def score_model(
    model_dir: str | os.PathLike,
    items: pd.DataFrame,
    batch_size: int = 16,
    device: str = "auto",
    max_len: int = 128,
    tasks: Iterable[str] = TASKS,
) -> pd.DataFrame:
    """Item-level results of a prepared model on ``items`` (from :func:`build_items`).

    One row per item and task: ``item_id``, ``category``, ``task``, ``score`` (mean per-token
    log-likelihood of the definition, or 1.0/0.0 for a right/wrong multiple-choice answer) and
    the raw values (``loglik``, ``n_tokens``; ``answer``, ``predicted``, ``predicted_norm``,
    ``correct_norm``, ``choice_loglik``, ``choice_loglik_norm``).
    """
    model, tokenizer = load_causal_lm(model_dir, device)
    return score_loaded(model, tokenizer, items, batch_size=batch_size, max_len=max_len, tasks=tasks)


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Per category and task: ``n``, ``mean`` and ``std`` (sample, NaN for one item) of ``score``."""
    grouped = results.groupby(["category", "task"], sort=True)["score"]
    return grouped.agg(n="count", mean="mean", std="std").reset_index()
