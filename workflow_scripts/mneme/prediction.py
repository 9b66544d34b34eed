"""From attributed latents to a per-category prediction: scores, a decision and a direction.

The evidence for a category ``c`` is how much the latents that belong to ``c`` changed, compared
with how much latents changed at all. For latent ``j`` the change ``c_j >= 0`` is its attribution
strength (:mod:`mneme.attribution`: the capped robust z of its log beta ratio) and its membership
``w_jc >= 0`` comes from one of three *routes*:

- ``provenance`` (needs corpus labels): ``w_jc`` = the latent's activation mass on the tokens of
  category ``c``'s documents (``evaluate.membership: mass``), or that mass times the latent's
  excess lift over the category's corpus share (``lift``, :func:`lift_membership`). Then ``S_c`` below is the activation-weighted mean change of the
  features active on ``c``'s text, the latent-space form of the activation-difference lens. Every
  category of a latent counts, in proportion (a latent spanning biology and chemistry is evidence
  for both), and big categories do not win by size: ``S_c`` is a mean, not a sum.
- ``contexts`` (label-free): ``w_jc`` from sentence embeddings of the latent's top-activating
  contexts against the category descriptions (:mod:`mneme.context_mapping`), several categories
  per latent allowed.
- ``explanations`` (label-free, the paper's route): ``w_jc`` from the mapping of the latent's
  LLM explanation (categories.parquet); only explained latents have one.

Score (:func:`category_scores`): ``S_c = sum_j w_jc c_j / sum_j w_jc`` against a reference
``S_ref`` (``evaluate.reference``):

- ``corpus``: ``S_ref = sum_j u_j c_j / sum_j u_j`` with ``u_j = sum_c w_jc`` over every category
  (the general one included), the mean change of the whole corpus's features. The target's own
  latents are part of it and pull it up, so a neighbour of the target looks ordinary.
- ``general``: ``S_ref = S_g``, the same mean over the general (untagged) category's membership:
  "did this category's features move more than those of text that belongs to no category", the
  question the activation-difference baseline asks of the raw activations. Only a route with
  corpus labels has a general category; the label-free routes keep ``corpus`` (their latents
  that the mapping places nowhere were tried as a stand-in: on the suite the contexts route's
  side-effect AUROC fell from 0.61 to 0.43, dev, and from 0.76 to 0.43, held out).

The null is "change unrelated to membership": the ``c_j`` permuted over the latents. With
``a_j = w_jc / sum_j w_jc`` and ``b_j`` the reference's weights normalised the same way,
``S_c - S_ref = sum_j (a_j - b_j) c_j`` and, since ``sum_j (a_j - b_j) = 0``, its exact
permutation variance is ``sigma^2 N / (N - 1) sum_j (a_j - b_j)^2`` (``sigma^2`` the variance of
the ``N`` values ``c_j`` of the latents with any membership), so ``z_c = (S_c - S_ref) /
sqrt(that)``. The overlap of the two memberships enters through ``sum_j a_j b_j``: a category
and the reference share many latents (those active on all text), and a difference over shared
latents varies less than two independent means would. (Before, the variance was ``var_u /
n_eff_c + var_u / n_eff_ref``, the two means taken as independent: on the suite that put the side
effects of RMU at z 0.5-1.4 against general text, where the exact null puts them at 1.9-4.2; see
README.) A category is predicted when ``z_c >= z_pred`` and ``z_c > 0`` (:func:`decide`; it
moved strictly more than the reference, so at ``z_pred`` 0 a tie predicts nothing). The latents
that did not change make up most of the permutation population, so they are the null.

Direction: each changed latent carries an effect ``e_j`` (``-1`` a lost base feature or a new
direction with no base counterpart, ``+1`` a strengthened existing feature; see
:mod:`mneme.attribution`), and a predicted category's direction is the sign of
``sum_j w_jc c_j e_j``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from mneme.category_file import NONE_LABEL
from mneme.contracts import NO_CATEGORY

ROUTES = ("provenance", "contexts", "explanations")
# the provenance route's latent-to-category weight (evaluate.membership): raw mass, or lift-weighted
MEMBERSHIPS = ("mass", "lift")
# what a category's mean change is compared with (evaluate.reference); see the module docstring
REFERENCES = ("corpus", "general")
# what each route needs, as the report and the tables label it
ROUTE_USES = {
    "provenance": "corpus labels",
    "contexts": "label-free (top contexts)",
    "explanations": "label-free (LLM explanations)",
}
SCORE_COLUMNS = ["category", "score", "lift", "n_eff", "weight", "predicted", "direction", "signed"]


def membership_from_long(
    table: pd.DataFrame, weight: str, latents: Sequence[int] | None = None
) -> pd.DataFrame:
    """A wide ``latent x category`` membership from a long ``latent, category, <weight>`` table;
    ``NO_CATEGORY`` and the ``none`` label (``NONE_LABEL``) are dropped, missing cells are 0."""
    t = table[~table["category"].astype(str).isin([NO_CATEGORY, NONE_LABEL])]
    wide = t.pivot_table(index="latent", columns="category", values=weight, aggfunc="sum", fill_value=0.0)
    if latents is not None:
        wide = wide.reindex(pd.Index(latents, name="latent"), fill_value=0.0)
    return wide.astype(float)


def lift_membership(mass: pd.DataFrame, prior: pd.Series) -> pd.DataFrame:
    """The provenance membership weighted by how specific a latent is to each category:
    ``w_jc = m_jc * max(0, s_jc / p_c - 1)`` with ``s_jc`` the latent's share of its mass on ``c``
    and ``p_c`` the category's share of the corpus tokens (``prior``, by category).

    Why: a latent active everywhere in proportion to the corpus (a dense, format or position
    feature) has lift 1 on every category and is evidence for none, yet by raw mass it weighs on
    every category's score, most on the categories with few specific latents of their own.
    Categories missing from ``prior`` get no membership."""
    share = mass.div(mass.sum(axis=1).replace(0.0, np.nan), axis=0).fillna(0.0)
    p = prior.reindex(mass.columns).astype(float)
    lift = share.div(p.where(p > 0), axis=1).fillna(0.0)
    return mass * (lift - 1.0).clip(lower=0.0)


def single_label_membership(labels: pd.Series) -> pd.DataFrame:
    """Weight 1 on each latent's label (index: latent); ``none`` / NaN rows have no membership."""
    lab = labels.dropna().astype(str)
    lab = lab[lab != NONE_LABEL]
    long = pd.DataFrame({"latent": lab.index.astype(int), "category": lab.to_numpy(), "w": 1.0})
    return membership_from_long(long, "w", latents=labels.index.astype(int))


def category_scores(
    change: pd.Series,
    membership: pd.DataFrame,
    categories: Sequence[str],
    *,
    effect: pd.Series | None = None,
    z_pred: float = 3.0,
    reference: str | None = None,
) -> pd.DataFrame:
    """Per category: ``score`` (z against the permutation null), ``lift`` (``S_c / S_ref - 1``),
    ``n_eff``, ``weight`` (``sum_j w_jc``), ``predicted``, ``direction`` and ``signed`` (the
    change-weighted mean effect); see the module docstring.

    ``change`` (index: latent) holds ``c_j`` for the eligible latents (NaN rows are dropped);
    ``membership`` is ``latent x category``; ``effect`` (index: latent) the ``e_j``, default 0.
    ``reference`` names the membership column whose mean change is ``S_ref`` (the ``general``
    reference); ``None`` takes the corpus mean. A category without membership, or every
    category when the reference has none, gets score NaN and is not predicted.
    """
    c = change.dropna().astype(float)
    w = membership.reindex(c.index, fill_value=0.0)
    # the permutation population: the latents that belong to some category (one with no
    # membership anywhere, e.g. a dense latent under lift weights, is evidence for nothing)
    keep = (w.sum(axis=1) > 0).to_numpy()
    c, w = c[keep], w[keep]
    cv = c.to_numpy()
    e = (effect.reindex(c.index).fillna(0).to_numpy(float)) if effect is not None else np.zeros(len(c))
    # the permutation variance of sum_j d_j c_j for weights d that sum to 0
    n = len(cv)
    perm_var = float(cv.var()) * n / (n - 1) if n > 1 else 0.0
    if reference is None:
        b = _normalised(w.sum(axis=1).to_numpy())
    else:
        b = _normalised(w[reference].to_numpy() if reference in w.columns else np.zeros(len(c)))
    ref = float(b @ cv) if b is not None else np.nan
    rows = []
    for cat in categories:
        wc = w[cat].to_numpy() if cat in w.columns else np.zeros(len(c))
        a = _normalised(wc)
        if a is None or b is None:
            rows.append(dict(zip(SCORE_COLUMNS, [cat, np.nan, np.nan, 0.0, 0.0, False, 0, np.nan])))
            continue
        s_c, d = float(a @ cv), a - b
        spread = perm_var * float(d @ d)
        z = (s_c - ref) / np.sqrt(spread) if spread > 0 else 0.0
        mass = wc * cv
        signed = float(mass @ e / mass.sum()) if mass.sum() > 0 else 0.0
        lift = s_c / ref - 1 if ref > 0 else np.nan
        n_eff = float(wc.sum()) ** 2 / float(wc @ wc)
        rows.append(dict(zip(SCORE_COLUMNS, [cat, float(z), lift, n_eff, float(wc.sum()), False, 0, signed])))
    return decide(pd.DataFrame(rows, columns=SCORE_COLUMNS), z_pred)


def decide(table: pd.DataFrame, z_pred: float) -> pd.DataFrame:
    """``table`` (of :func:`category_scores`) decided at ``z_pred``: ``predicted`` where
    ``score >= z_pred`` and ``score > 0`` (strictly more change than the reference: with the
    variance positive, ``z > 0`` is ``S_c > S_ref``, and without it ``z`` is 0), ``direction`` the
    sign of ``signed`` where predicted, else 0. The suite's grid re-decides tables with it."""
    out = table.copy()
    score = out["score"].to_numpy(float)
    with np.errstate(invalid="ignore"):
        predicted = (score >= z_pred) & (score > 0)
    out["predicted"] = predicted
    out["direction"] = np.where(predicted, np.sign(out["signed"].to_numpy(float)), 0).astype(int)
    return out


def _normalised(weights: np.ndarray) -> np.ndarray | None:
    """``weights / sum(weights)``; ``None`` without weight."""
    total = float(weights.sum())
    return weights / total if total > 0 else None


def eligible_change(attribution: pd.DataFrame, column: str = "strength") -> pd.Series:
    """``c_j`` of the live latents (``direction != dead``) with a finite ``column``, by latent."""
    a = attribution[(attribution["direction"] != "dead") & np.isfinite(attribution[column].astype(float))]
    return pd.Series(a[column].to_numpy(float), index=a["latent"].to_numpy(int))


def decoder_norm_change(attribution: pd.DataFrame) -> pd.Series:
    """The decoder-norm-only change ``|2 Delta - 1|`` (0 shared, 1 specific to one model) of the
    live latents: the crosscoder without latent scaling."""
    a = attribution[attribution["direction"] != "dead"]
    return pd.Series(np.abs(2 * a["delta"].to_numpy(float) - 1), index=a["latent"].to_numpy(int))


def activation_diff_scores(table: pd.DataFrame, categories: Sequence[str], reference: str) -> pd.DataFrame:
    """The activation-difference baseline: ``score = mean_rel_diff_c / mean_rel_diff_ref - 1``,
    predicted when the category's text moved more than the reference (general) text; no direction."""
    t = table.set_index(table["category"].astype(str))["mean_rel_diff"].astype(float)
    ref = float(t.get(reference, np.nan))
    rows = []
    for cat in categories:
        score = float(t[cat] / ref - 1) if cat in t.index and ref > 0 else np.nan
        rows.append(
            {
                "category": cat,
                "score": score,
                "lift": score,
                "n_eff": np.nan,
                "weight": np.nan,
                "predicted": bool(np.isfinite(score) and score > 0),
                "direction": 0,
                "signed": np.nan,
            }
        )
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)
