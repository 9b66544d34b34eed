"""The activation-difference baseline: how far the fine-tuned residual stream moved, per category.

No crosscoder: for every stored token ``i`` the relative change ``||x_f,i - x_b,i|| / ||x_b,i||``
of the raw (unnormalised) activations, averaged over the tokens of each corpus category (the
category of the token's document). This is the per-category form of diffing-toolkit's
"activation difference lens", and the sceptical baseline for mneme's prediction: if the
intervention touched a category, its text should move more than the corpus's general text.

One streaming pass over the paired stores, reading whole storage chunks; memory is one chunk.
Output: one row per category with ``n_tokens``, ``mean_rel_diff``, ``sd_rel_diff``,
``mean_cos`` (cosine of ``x_f`` and ``x_b``), ``mean_norm_ratio`` (``||x_f|| / ||x_b||``) and
``n_docs``/``se_rel_diff``, the standard error from per-document means (tokens of one document are
not independent).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from mneme.activation_store import PairedStores
from mneme.token_categories import CategoryMap

LOG = logging.getLogger("mneme.activation_diff")

COLUMNS = [
    "category",
    "n_tokens",
    "n_docs",
    "mean_rel_diff",
    "sd_rel_diff",
    "se_rel_diff",
    "mean_cos",
    "mean_norm_ratio",
]


def token_changes(xb: np.ndarray, xf: np.ndarray, eps: float = 1e-12) -> tuple[np.ndarray, ...]:
    """Per row: relative change, cosine and norm ratio of ``xf`` against ``xb`` (float64)."""
    xb, xf = xb.astype(np.float64, copy=False), xf.astype(np.float64, copy=False)
    nb = np.linalg.norm(xb, axis=1)
    nf = np.linalg.norm(xf, axis=1)
    rel = np.linalg.norm(xf - xb, axis=1) / np.maximum(nb, eps)
    cos = np.einsum("ij,ij->i", xb, xf) / np.maximum(nb * nf, eps)
    return rel, cos, nf / np.maximum(nb, eps)


def activation_diff(base_manifest, ft_manifest, tokens_path, docs_path) -> pd.DataFrame:
    """Per-category activation change over every row of the paired stores (see module doc)."""
    t0 = time.perf_counter()
    stores = PairedStores(base_manifest, ft_manifest)
    man = stores.base.manifest
    first = int(man.get("first_position") or 0)
    ctx_len = int(man["context_len"])
    n_pos = ctx_len - first
    cats = CategoryMap(tokens_path, docs_path, first, ctx_len, -(-stores.n_rows // n_pos))
    n_cat = len(cats.names)
    n = np.zeros(n_cat)
    s_rel, s_rel2, s_cos, s_ratio = (np.zeros(n_cat) for _ in range(4))
    n_doc_slots = len(cats.lut)  # every doc_index, and a last slot for "no document"
    doc_sum, doc_n = np.zeros(n_doc_slots), np.zeros(n_doc_slots)
    for lo, hi in stores.blocks():
        xb, xf = stores.read(lo, hi, normalise=False)
        rel, cos, ratio = token_changes(xb, xf)
        code = cats.codes(lo, hi - lo)
        n += np.bincount(code, minlength=n_cat)
        s_rel += np.bincount(code, rel, minlength=n_cat)
        s_rel2 += np.bincount(code, rel * rel, minlength=n_cat)
        s_cos += np.bincount(code, cos, minlength=n_cat)
        s_ratio += np.bincount(code, ratio, minlength=n_cat)
        doc = cats.doc_indices(lo, hi - lo)
        doc = np.where((doc >= 0) & (doc < n_doc_slots - 1), doc, n_doc_slots - 1)
        doc_sum += np.bincount(doc, rel, minlength=n_doc_slots)
        doc_n += np.bincount(doc, minlength=n_doc_slots)
    seen = doc_n[:-1] > 0
    doc_mean = doc_sum[:-1][seen] / doc_n[:-1][seen]
    doc_code = cats.lut[:-1][seen]
    rows = []
    for c, name in enumerate(cats.names):
        if n[c] == 0:
            continue
        means = doc_mean[doc_code == c]
        mean = s_rel[c] / n[c]
        rows.append(
            {
                "category": name,
                "n_tokens": int(n[c]),
                "n_docs": int(means.size),
                "mean_rel_diff": mean,
                "sd_rel_diff": float(np.sqrt(max(s_rel2[c] / n[c] - mean * mean, 0.0))),
                "se_rel_diff": float(means.std(ddof=1) / np.sqrt(means.size)) if means.size > 1 else np.nan,
                "mean_cos": s_cos[c] / n[c],
                "mean_norm_ratio": s_ratio[c] / n[c],
            }
        )
    LOG.info(
        "activation diff: %d rows, %d categories in %.1fs", stores.n_rows, len(rows), time.perf_counter() - t0
    )
    return pd.DataFrame(rows, columns=COLUMNS)
