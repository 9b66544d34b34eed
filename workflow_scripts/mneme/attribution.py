"""Attribute each crosscoder latent to what the intervention did to it (method.md F12).

Inputs are the per-latent statistics of :mod:`mneme.latent_stats` (``latents.parquet``: ``delta``,
``delta_bin``, ``freq``, ``dead``) and the betas of :mod:`mneme.latent_scaling` (``betas.parquet``).

**Mode ``robust``** (the default, calibrated against the bulk of the latents). Every latent gets a
signed log change ``l_j = log(beta^f_j / beta^b_j)`` on one target (``target``: ``activation``, the
default, with no decoder bias when the geometry is given; ``reconstruction``; or ``error``), with
the probe chosen by ``Delta`` as below (positive: the fine-tuned model expresses the latent more).
The three are written for every latent (``log_change_<target>``) and ``log_change`` is the chosen
one. Why the activation target: the reconstruction beta is dominated by the latent's own decoder
term, so its ratio is close to a fixed function of the two decoder vectors (a leave-one-fold-out
jackknife over the rows puts its sampling error at 0.04-0.08 of the spread between latents); the
activation beta also sees what the crosscoder did not reconstruct, i.e. the models' actual
activations along the latent's direction when it fires. Most
latents of a narrow intervention do not change, so the bulk of ``l`` is the noise of the
estimate: ``z_j = (l_j - median) / (1.4826 MAD)`` over the eligible latents (live, with at least
``min_contexts`` activating contexts). ``z >= z_threshold`` is *amplified*, ``z <= -z_threshold``
*suppressed*. The strength is ``min(|z|, z_cap)``, so a degenerate ratio (the other model's beta
``<= 0``, ``l`` clipped at ``+-log(1/RATIO_FLOOR)``) counts as a large change, not an infinite one.
This mode needs no per-organism threshold: the scale comes from the latents themselves.

**Effect** (every mode): the kind of change, for the direction of the prediction. A suppressed
latent is a base feature the fine-tuned model lost (``-1``). An amplified latent is ``+1`` (an
existing feature strengthened) when its fine-tuned decoder vector has a base counterpart (cosine
``>= novelty_cos`` with some base decoder vector, its own included), and ``-1`` when it has none:
a new direction that no base feature writes, as RMU's steering noise, is a disruption.

**Mode ``ratio``** (F12). The probe follows the relative decoder norm: ``Delta >= 0.5`` uses the
fine-tuned decoder and the F11 ratios ``nu = beta^b / beta^f``; ``Delta < 0.5`` uses the base decoder and
the mirrors ``mu = beta^f / beta^b``. In both cases the ratio is ``other model / own model`` (the "own"
model is the one the probe decoder belongs to). The latent is *amplified* (ft probe) or *suppressed*
(base probe) if ``ratio_r <= tau_r`` and ``ratio_eps <= tau_eps``, else *unchanged*. Strength
``sigma = -log(max(ratio_r, ratio_eps))``.

**Mode ``simple``**. One ratio on the activation target, always ``nu_a = beta^{b,a} / beta^{f,a}``, with
the probe again chosen by ``Delta`` (the ft decoder cannot score base-leaning latents):
``nu_a <= 1/kappa`` is amplified, ``nu_a >= kappa`` suppressed; ``sigma = |log nu_a|``. With decoder geometry given, the activation target is taken without the
decoder bias (``y = x_m - b_dec^m``, diffing-toolkit's no-bias target), so a perfectly shared latent
is not flagged because the two models' decoder biases differ.

**Degenerate ratios** (documented choices):

- the other model's beta ``<= 0``: that model does not express the direction at all; the ratio counts as
  0 (in simple mode ``nu_a`` as 0 if ``beta^b <= 0``, or as +inf if ``beta^f <= 0``), a clear change;
- the own model's beta ``<= 0`` or not finite (a latent whose own decoder does not explain its own
  model's activations): no ratio (NaN), the latent is *unchanged* with ``reason='own_beta_nonpositive'``;
  in simple mode, both betas ``<= 0`` likewise;
- NaN betas (no activity in the latent-scaling rows): NaN ratio, see the liveness rule below.

Ratios are clipped to ``[RATIO_FLOOR, 1/RATIO_FLOOR]`` for the strength only, so a ratio of 0 gives a
finite strength ``-log(RATIO_FLOOR)`` (ties are broken by activation frequency in
:func:`select_for_interpretation`).

**Liveness.** A latent is *dead* if it never fired in the statistics pass, or fires on fewer than
``min_freq`` of the tokens, or on fewer than ``min_active`` tokens of the latent-scaling rows (so a
latent active only in the validation tail cannot be scored), or in fewer than ``min_contexts``
contexts (a ratio estimated from one context is noise); ``reason`` says which (``dead``/``rare``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mneme.contracts import DELTA_BINS, beta_column, delta_bin

DIRECTIONS = ("amplified", "suppressed", "unchanged", "dead")
MODES = ("robust", "ratio", "simple")
TARGETS = ("activation", "reconstruction", "error")  # robust mode's log-ratio target
MAD_SCALE = 1.4826  # MAD -> standard deviation of a normal distribution
RATIO_FLOOR = 1e-6


def _ratio(other: np.ndarray, own: np.ndarray) -> np.ndarray:
    """``other / own`` with the conventions of the module docstring (``own`` must be > 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(other > 0, other / own, 0.0)
    ok = np.isfinite(own) & (own > 0) & ~np.isnan(other)
    return np.where(ok, r, np.nan)


def _log(ratio: np.ndarray) -> np.ndarray:
    """``log`` of a ratio clipped to ``[RATIO_FLOOR, 1/RATIO_FLOOR]`` (NaN stays NaN)."""
    return np.log(np.clip(ratio, RATIO_FLOOR, 1 / RATIO_FLOOR))


def _strength(ratio: np.ndarray) -> np.ndarray:
    return -_log(ratio)


def decoder_geometry(w_dec: np.ndarray, b_dec: np.ndarray, block: int = 2048) -> pd.DataFrame:
    """Per latent, from the crosscoder's decoder ``w_dec`` ``[2, h, d]`` and biases ``b_dec`` ``[2, d]``:
    ``bias_{model}_{probe}`` = ``<v_j, b_dec^model>`` for both probes, ``probe_norm2_{probe}`` =
    ``||v_j||^2`` and ``base_counterpart_cos``, the largest cosine of ``d_j^f`` with any base decoder
    vector ``d_k^b`` (its own included); blocks of ``block`` rows bound the memory."""
    w = np.asarray(w_dec, dtype=np.float64)
    b = np.asarray(b_dec, dtype=np.float64)
    out: dict[str, np.ndarray] = {"latent": np.arange(w.shape[1], dtype=np.int64)}
    for p, probe in enumerate(("basedec", "ftdec")):
        out[f"probe_norm2_{probe}"] = (w[p] ** 2).sum(-1)
        for m, model in enumerate(("base", "ft")):
            out[f"bias_{model}_{probe}"] = w[p] @ b[m]
    unit = w / np.maximum(np.linalg.norm(w, axis=-1, keepdims=True), 1e-12)
    best = np.empty(w.shape[1])
    for lo in range(0, w.shape[1], block):
        best[lo : lo + block] = (unit[1, lo : lo + block] @ unit[0].T).max(axis=1)
    out["base_counterpart_cos"] = best
    return pd.DataFrame(out)


def _nobias_activation(df: pd.DataFrame, model: str, probe: str) -> np.ndarray:
    """beta on ``y = x_m - b_dec^m``: the activation beta less ``<v, b> sum f / (||v||^2 sum f^2)``."""
    beta = df[beta_column("activation", model, probe)].to_numpy(float)
    den = df[f"probe_norm2_{probe}"].to_numpy(float) * df["sum_f2"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = df[f"bias_{model}_{probe}"].to_numpy(float) * df["sum_f"].to_numpy(float) / den
    return beta - shift


def robust_z(values: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """``(v - median) / (MAD_SCALE * MAD)`` with median and MAD over ``eligible`` finite values;
    NaN where not eligible. A zero MAD (a constant bulk) falls back to the standard deviation."""
    v = np.asarray(values, dtype=float)
    ok = eligible & np.isfinite(v)
    z = np.full(v.shape, np.nan)
    if not ok.any():
        return z
    med = float(np.median(v[ok]))
    scale = MAD_SCALE * float(np.median(np.abs(v[ok] - med)))
    if scale <= 0:
        scale = float(np.std(v[ok]))
    if scale <= 0:
        scale = 1.0
    z[ok] = (v[ok] - med) / scale
    return z


def attribute(
    latents_df: pd.DataFrame,
    betas_df: pd.DataFrame,
    *,
    geometry: pd.DataFrame | None = None,
    mode: str = "robust",
    target: str = "activation",
    z_threshold: float = 3.0,
    z_cap: float = 10.0,
    tau_r: float = 0.5,
    tau_eps: float = 0.2,
    kappa: float = 2.0,
    min_freq: float = 0.0,
    min_active: int = 1,
    min_contexts: int = 5,
    novelty_cos: float = 0.5,
) -> pd.DataFrame:
    """Label every latent ``amplified``/``suppressed``/``unchanged``/``dead`` (see the module docstring).

    Returns one row per latent of ``latents_df`` with columns ``latent, direction, strength,
    log_change, log_change_<t>, change_z, effect, ratio_r, ratio_eps, ratio_activation, probe ('ft'/'base'), delta,
    delta_bin, freq, n_active, n_contexts, base_counterpart_cos, reason, mode``. ``ratio_r`` /
    ``ratio_eps`` are the F12 other/own ratios (``nu`` for the ft probe, ``mu`` for the base probe);
    ``ratio_activation`` is ``nu_a = beta^{b,a}/beta^{f,a}`` with the same probe (no-bias target when
    ``geometry`` is given). ``log_change`` (of ``target``) and ``change_z`` are defined in every
    mode, and ``log_change_<t>`` for each of :data:`TARGETS`. The defaults are the schema's
    (``attribution``; a test keeps them equal).
    """
    if mode not in MODES:
        raise ValueError(f"attribution mode must be one of {MODES}, got {mode!r}")
    if target not in TARGETS:
        raise ValueError(f"attribution.target must be one of {TARGETS}, got {target!r}")
    if kappa <= 1:
        raise ValueError(f"kappa must be > 1, got {kappa}")
    if mode == "robust" and target == "activation" and geometry is None:
        raise ValueError(
            "the robust mode's activation target is taken without the decoder bias: pass "
            "geometry=decoder_geometry(W_dec, b_dec) of the crosscoder"
        )
    cols = ("latent", "delta", "delta_bin", "freq", "dead", "n_active_contexts")
    lat = latents_df[[c for c in cols if c in latents_df]]
    df = lat.merge(betas_df, on="latent", how="left", suffixes=("", "_betas"))
    if geometry is not None:
        df = df.merge(geometry, on="latent", how="left")
    delta = df["delta"].to_numpy(float)
    use_ft = delta >= 0.5

    def by_probe(get) -> np.ndarray:
        return np.where(use_ft, get("ftdec"), get("basedec"))

    def pick(target: str, model: str) -> np.ndarray:
        if target == "activation" and geometry is not None:
            return by_probe(lambda probe: _nobias_activation(df, model, probe))
        return by_probe(lambda probe: df[beta_column(target, model, probe)].to_numpy(float))

    ratios = {}
    for t in TARGETS:
        b_base, b_ft = pick(t, "base"), pick(t, "ft")
        own, other = np.where(use_ft, b_ft, b_base), np.where(use_ft, b_base, b_ft)
        ratios[t] = _ratio(other, own)
    a_base, a_ft = pick("activation", "base"), pick("activation", "ft")
    with np.errstate(divide="ignore", invalid="ignore"):
        nu_a = np.where(a_base > 0, a_base / a_ft, 0.0)
    nu_a = np.where((a_ft <= 0) & (a_base > 0), np.inf, nu_a)
    nu_a = np.where(((a_ft <= 0) & (a_base <= 0)) | np.isnan(a_ft) | np.isnan(a_base), np.nan, nu_a)
    ratio_r, ratio_eps = ratios["reconstruction"], ratios["error"]
    # signed log change, ft over base: other/own is base/ft for the ft probe, ft/base for the base one
    log_changes = {t: np.where(use_ft, -1.0, 1.0) * _log(ratios[t]) for t in TARGETS}
    log_change = log_changes[target]

    n = len(df)
    n_active = df["n_active"].fillna(0).to_numpy(np.int64) if "n_active" in df else np.zeros(n, np.int64)
    n_ctx = (
        df["n_active_contexts"].fillna(0).to_numpy(np.int64)
        if "n_active_contexts" in df
        else np.full(n, np.iinfo(np.int64).max)
    )
    freq = df["freq"].to_numpy(float) if "freq" in df else np.full(n, np.nan)
    never = df["dead"].fillna(True).to_numpy(bool) if "dead" in df else n_active == 0
    rare = ~never & (
        (n_active < min_active) | (np.nan_to_num(freq, nan=0.0) < min_freq) | (n_ctx < min_contexts)
    )
    change_z = robust_z(log_change, ~(never | rare))

    direction = np.full(n, "unchanged", dtype=object)
    reason = np.full(n, "", dtype=object)
    if mode == "robust":
        with np.errstate(invalid="ignore"):
            direction[change_z >= z_threshold] = "amplified"
            direction[change_z <= -z_threshold] = "suppressed"
        strength = np.minimum(np.abs(change_z), z_cap)
        reason[np.isnan(log_change)] = "own_beta_nonpositive"
    elif mode == "ratio":
        with np.errstate(invalid="ignore"):
            worst = np.fmax(ratio_r, ratio_eps)
            hit = (ratio_r <= tau_r) & (ratio_eps <= tau_eps)
        strength = _strength(worst)
        strength = np.where(np.isnan(ratio_r) | np.isnan(ratio_eps), np.nan, strength)
        direction[hit & use_ft] = "amplified"
        direction[hit & ~use_ft] = "suppressed"
        reason[np.isnan(ratio_r) | np.isnan(ratio_eps)] = "own_beta_nonpositive"
    else:
        with np.errstate(invalid="ignore"):
            direction[nu_a <= 1 / kappa] = "amplified"
            direction[nu_a >= kappa] = "suppressed"
        strength = np.abs(np.log(np.clip(nu_a, RATIO_FLOOR, 1 / RATIO_FLOOR)))
        reason[np.isnan(nu_a)] = "own_beta_nonpositive"

    direction[never | rare] = "dead"
    reason[never] = "dead"
    reason[rare] = "rare"
    strength = np.where(never | rare, np.nan, strength)
    counterpart = (
        df["base_counterpart_cos"].to_numpy(float) if "base_counterpart_cos" in df else np.full(n, np.nan)
    )
    effect = np.zeros(n, dtype=np.int64)
    effect[direction == "suppressed"] = -1
    amplified = direction == "amplified"
    effect[amplified] = np.where(np.nan_to_num(counterpart[amplified], nan=1.0) >= novelty_cos, 1, -1)
    return pd.DataFrame(
        {
            "latent": df["latent"].to_numpy(np.int64),
            "direction": direction.astype(str),
            "strength": strength,
            "log_change": log_change,
            **{f"log_change_{t}": log_changes[t] for t in TARGETS},
            "change_z": change_z,
            "effect": effect,
            "ratio_r": ratio_r,
            "ratio_eps": ratio_eps,
            "ratio_activation": nu_a,
            "probe": np.where(use_ft, "ft", "base"),
            "delta": delta,
            "delta_bin": df["delta_bin"].to_numpy() if "delta_bin" in df else delta_bin(delta),
            "freq": freq,
            "n_active": n_active,
            "n_contexts": np.where(n_ctx == np.iinfo(np.int64).max, -1, n_ctx),
            "base_counterpart_cos": counterpart,
            "reason": reason.astype(str),
            "mode": mode,
        }
    )


def attribution_summary(df: pd.DataFrame, thresholds: dict | None = None) -> dict:
    """Counts per direction and per Delta bin, their crosstab, strength quantiles per direction and
    the ``thresholds`` that produced them (so plots of the result can draw them); JSON-serialisable."""
    counts = {d: int((df["direction"] == d).sum()) for d in DIRECTIONS}
    bins = {b: int((df["delta_bin"] == b).sum()) for b in DELTA_BINS}
    cross = pd.crosstab(df["direction"], df["delta_bin"])
    crosstab = {
        d: {b: int(cross.loc[d, b]) if d in cross.index and b in cross.columns else 0 for b in DELTA_BINS}
        for d in DIRECTIONS
    }
    strength = {}
    for d in ("amplified", "suppressed"):
        s = df.loc[df["direction"] == d, "strength"].dropna()
        strength[d] = {"median": float(s.median()), "max": float(s.max())} if len(s) else None
    live = int((df["direction"] != "dead").sum())
    return {
        "n_latents": len(df),
        "n_live": live,
        "mode": str(df["mode"].iloc[0]) if len(df) and "mode" in df else None,
        "directions": counts,
        "delta_bins": bins,
        "crosstab": crosstab,
        "strength": strength,
        "reasons": {str(k): int(v) for k, v in df["reason"].value_counts().items() if k},
        "thresholds": dict(thresholds or {}),
    }


def select_for_interpretation(
    df: pd.DataFrame, top_k: int = 20, n_unchanged: int = 10, seed: int = 0
) -> list[int]:
    """Latents to interpret: the ``top_k`` amplified and the ``top_k`` suppressed latents by strength
    (ties broken by activation frequency, then latent id), then ``n_unchanged`` live unchanged latents
    drawn at random (``seed``) as controls. Returned in that order, without duplicates."""
    picked: list[int] = []
    for d in ("amplified", "suppressed"):
        sub = df[df["direction"] == d].copy()
        sub["_freq"] = sub["freq"].fillna(0.0) if "freq" in sub else 0.0
        sub = sub.sort_values(["strength", "_freq", "latent"], ascending=[False, False, True], kind="stable")
        picked += [int(v) for v in sub["latent"].head(top_k)]
    pool = df[(df["direction"] == "unchanged") & (df["reason"] == "")]["latent"].to_numpy(np.int64)
    pool = np.sort(pool)
    if n_unchanged > 0 and len(pool):
        rng = np.random.default_rng(seed)
        picked += [int(v) for v in rng.choice(pool, size=min(n_unchanged, len(pool)), replace=False)]
    seen: set[int] = set()
    return [v for v in picked if not (v in seen or seen.add(v))]
