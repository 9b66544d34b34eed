"""Label-free categories for every live latent, from its top-activating contexts themselves.

The paper's route explains a latent with an LLM and maps the explanation to a category; with a
weak explainer the explanation is the weak link. This route skips it: the latent's top
activating windows (the text around each peak token, most of it before the peak, since a
residual-stream latent at a token reads what came before it) are embedded with the same MiniLM
model as the explanations, averaged with the peak activations as weights, and compared with every
category's description and examples (:class:`mneme.categorize.EmbeddingClassifier`). The
embedding model sits closer to some descriptions than to others whatever the text (on GCIDE
windows, "medicine" and "biology" attract a third of all latents), so with ``normalise`` each
category's similarities are standardised over the latents first: a latent is then scored by how
unusually close it is to a category. A latent belongs to every category whose (standardised)
similarity is within ``margin`` of its best and at least ``threshold``, each with weight
``1 / (number of such categories)``; below ``threshold`` it belongs to none. No corpus label is read, so the route works on unlabelled text (LMSYS-Chat, web
text).

Output (long table, one row per latent and member category): ``latent, category, similarity,
weight``; latents that belong to no category have no row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import zarr

LOG = logging.getLogger("mneme.context_mapping")

COLUMNS = ["latent", "category", "similarity", "weight"]


def windows(
    input_ids: np.ndarray,
    contexts: np.ndarray,
    positions: np.ndarray,
    before: int,
    after: int,
    first: int = 1,
) -> list[np.ndarray]:
    """Token windows ``[position - before, position + after]`` of each (context, position),
    clipped to the context and never including positions before ``first`` (the BOS)."""
    ctx_len = input_ids.shape[1]
    out = []
    for c, p in zip(contexts, positions):
        lo, hi = max(first, int(p) - before), min(ctx_len, int(p) + after + 1)
        out.append(input_ids[int(c), lo:hi])
    return out


def latent_embeddings(
    top: pd.DataFrame, window_emb: np.ndarray, window_index: pd.Series
) -> tuple[np.ndarray, np.ndarray]:
    """``(latents, unit embeddings)``: per latent, the activation-weighted mean of its windows'
    embeddings, renormalised. ``top`` has ``latent, context, position, activation``;
    ``window_index`` maps ``(context, position)`` to a row of ``window_emb``."""
    rows = window_index.loc[list(zip(top["context"], top["position"]))].to_numpy()
    lat = top["latent"].to_numpy(np.int64)
    w = np.maximum(top["activation"].to_numpy(np.float64), 0.0)
    uniq, inv = np.unique(lat, return_inverse=True)
    acc = np.zeros((len(uniq), window_emb.shape[1]))
    np.add.at(acc, inv, window_emb[rows] * w[:, None])
    acc /= np.maximum(np.linalg.norm(acc, axis=1, keepdims=True), 1e-12)
    return uniq, acc.astype(np.float32)


def standardise(sims: np.ndarray) -> np.ndarray:
    """Each column (category) to zero mean and unit standard deviation over the rows (latents)."""
    sd = sims.std(axis=0, keepdims=True)
    return (sims - sims.mean(axis=0, keepdims=True)) / np.where(sd > 0, sd, 1.0)


def memberships(
    latents: np.ndarray, sims: np.ndarray, names: Sequence[str], threshold: float, margin: float
) -> pd.DataFrame:
    """Every category within ``margin`` of a latent's best similarity and at least ``threshold``,
    weighted ``1 / count`` (the long table of the module docstring)."""
    best = sims.max(axis=1, keepdims=True) if sims.size else np.zeros((0, 1))
    member = (sims >= threshold) & (sims >= best - margin)
    li, ci = np.nonzero(member)
    count = member.sum(axis=1)
    return pd.DataFrame(
        {
            "latent": latents[li].astype(np.int64),
            "category": np.asarray(names, dtype=object)[ci].astype(str),
            "similarity": sims[li, ci].astype(float),
            "weight": 1.0 / count[li],
        },
        columns=COLUMNS,
    )


def map_contexts(
    topk: pd.DataFrame,
    tokens_path: str,
    tokenizer,
    classifier,
    latents: Sequence[int],
    options: Mapping[str, Any],
) -> pd.DataFrame:
    """The context mapping of ``latents`` (see the module docstring). ``topk`` is the latent
    statistics' top table (:func:`mneme.latent_stats.read_topk`), ``classifier`` an
    :class:`~mneme.categorize.EmbeddingClassifier`; ``options`` the ``categories.contexts`` section."""
    t0 = time.perf_counter()
    top = topk[(topk["kind"] == "top") & (topk["rank"] < options["n_examples"])]
    top = top[top["latent"].isin(set(int(x) for x in latents))]
    ids = zarr.open_group(str(tokens_path), mode="r")["input_ids"]
    need = np.unique(top["context"].to_numpy(np.int64))
    grid = np.zeros((int(need.max()) + 1 if need.size else 0, ids.shape[1]), dtype=np.int64)
    if need.size:
        grid[need] = ids.get_orthogonal_selection((need, slice(None)))
    keys = top[["context", "position"]].drop_duplicates()
    toks = windows(
        grid, keys["context"].to_numpy(), keys["position"].to_numpy(), options["before"], options["after"]
    )
    texts = tokenizer.batch_decode([t.tolist() for t in toks], skip_special_tokens=True)
    LOG.info("context mapping: %d latents, %d distinct windows", top["latent"].nunique(), len(texts))
    emb = classifier.encode(texts)
    index = pd.Series(np.arange(len(keys)), index=pd.MultiIndex.from_frame(keys))
    lat, lat_emb = latent_embeddings(top, emb, index)
    sims = classifier.scores_from_embeddings(lat_emb)
    if options["normalise"]:
        sims = standardise(sims)
    out = memberships(lat, sims, classifier.names, options["threshold"], options["margin"])
    LOG.info(
        "context mapping: %d of %d latents mapped (%.1fs); latents per category: %s",
        out["latent"].nunique(), len(lat), time.perf_counter() - t0,
        out.groupby("category")["weight"].sum().round(1).to_dict(),
    )  # fmt: skip
    return out
