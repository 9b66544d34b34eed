"""Attribute each crosscoder latent to what the intervention did to it (method.md F12).

Inputs are the per-latent statistics of :mod:`mneme.latent_stats` (``latents.parquet``: ``delta``,
``delta_bin``, ``freq``, ``dead``) and the betas of :mod:`mneme.latent_scaling` (``betas.parquet``).

**Mode ``ratio``** (F12). The probe follows the relative decoder norm: ``Delta >= 0.5`` uses the
fine-tuned decoder and the F11 ratios ``nu = beta^b / beta^f``; ``Delta < 0.5`` uses the base decoder and
the mirrors ``mu = beta^f / beta^b``. In both cases the ratio is ``other model / own model`` (the "own"
model is the one the probe decoder belongs to). The latent is *amplified* (ft probe) or *suppressed*
(base probe) if ``ratio_r <= tau_r`` and ``ratio_eps <= tau_eps``, else *unchanged*. Strength
``sigma = -log(max(ratio_r, ratio_eps))``.

**Mode ``simple``**. One ratio on the activation target, always ``nu_a = beta^{b,a} / beta^{f,a}``, with
the probe again chosen by ``Delta`` (the ft decoder cannot score base-leaning latents):
``nu_a <= 1/kappa`` is amplified, ``nu_a >= kappa`` suppressed; ``sigma = |log nu_a|``.

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
latent active only in the validation tail cannot be scored); ``reason`` says which (``dead``/``rare``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

DIRECTIONS = ("amplified", "suppressed", "unchanged", "dead")
DELTA_BINS = ("base_only", "other", "shared", "ft_only")
MODES = ("ratio", "simple")
RATIO_FLOOR = 1e-6


def beta_column(target: str, model: str, probe: str) -> str:
    """Name of a beta column in ``betas.parquet`` (written by :mod:`mneme.latent_scaling`)."""
    return f"beta_{target}_{model}_{probe}"


def _ratio(other: np.ndarray, own: np.ndarray) -> np.ndarray:
    """``other / own`` with the conventions of the module docstring (``own`` must be > 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(other > 0, other / own, 0.0)
    ok = np.isfinite(own) & (own > 0) & ~np.isnan(other)
    return np.where(ok, r, np.nan)


def _strength(ratio: np.ndarray) -> np.ndarray:
    return -np.log(np.clip(ratio, RATIO_FLOOR, 1 / RATIO_FLOOR))


def attribute(
    latents_df: pd.DataFrame,
    betas_df: pd.DataFrame,
    *,
    mode: str = "ratio",
    tau_r: float = 0.5,
    tau_eps: float = 0.2,
    kappa: float = 2.0,
    min_freq: float = 0.0,
    min_active: int = 1,
) -> pd.DataFrame:
    """Label every latent ``amplified``/``suppressed``/``unchanged``/``dead`` (see the module docstring).

    Returns one row per latent of ``latents_df`` with columns ``latent, direction, strength, ratio_r,
    ratio_eps, ratio_activation, probe ('ft'/'base'), delta, delta_bin, freq, n_active, reason, mode``.
    ``ratio_r``/``ratio_eps`` are the F12 other/own ratios (``nu`` for the ft probe, ``mu`` for the base
    probe) in both modes; ``ratio_activation`` is ``nu_a = beta^{b,a}/beta^{f,a}`` with the same probe.
    """
    if mode not in MODES:
        raise ValueError(f"attribution mode must be one of {MODES}, got {mode!r}")
    if kappa <= 1:
        raise ValueError(f"kappa must be > 1, got {kappa}")
    lat = latents_df[[c for c in ("latent", "delta", "delta_bin", "freq", "dead") if c in latents_df]]
    df = lat.merge(betas_df, on="latent", how="left", suffixes=("", "_betas"))
    delta = df["delta"].to_numpy(float)
    use_ft = delta >= 0.5

    def pick(target: str, model: str) -> np.ndarray:
        ft_val = df[beta_column(target, model, "ftdec")].to_numpy(float)
        base_val = df[beta_column(target, model, "basedec")].to_numpy(float)
        return np.where(use_ft, ft_val, base_val)

    ratios = {}
    for target in ("reconstruction", "error"):
        b_base, b_ft = pick(target, "base"), pick(target, "ft")
        own, other = np.where(use_ft, b_ft, b_base), np.where(use_ft, b_base, b_ft)
        ratios[target] = _ratio(other, own)
    a_base, a_ft = pick("activation", "base"), pick("activation", "ft")
    with np.errstate(divide="ignore", invalid="ignore"):
        nu_a = np.where(a_base > 0, a_base / a_ft, 0.0)
    nu_a = np.where((a_ft <= 0) & (a_base > 0), np.inf, nu_a)
    nu_a = np.where(((a_ft <= 0) & (a_base <= 0)) | np.isnan(a_ft) | np.isnan(a_base), np.nan, nu_a)
    ratio_r, ratio_eps = ratios["reconstruction"], ratios["error"]

    n = len(df)
    direction = np.full(n, "unchanged", dtype=object)
    reason = np.full(n, "", dtype=object)
    if mode == "ratio":
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

    n_active = df["n_active"].fillna(0).to_numpy(np.int64) if "n_active" in df else np.zeros(n, np.int64)
    freq = df["freq"].to_numpy(float) if "freq" in df else np.full(n, np.nan)
    never = df["dead"].fillna(True).to_numpy(bool) if "dead" in df else n_active == 0
    rare = ~never & ((n_active < min_active) | (np.nan_to_num(freq, nan=0.0) < min_freq))
    direction[never | rare] = "dead"
    reason[never] = "dead"
    reason[rare] = "rare"
    strength = np.where(never | rare, np.nan, strength)
    out = pd.DataFrame(
        {
            "latent": df["latent"].to_numpy(np.int64),
            "direction": direction.astype(str),
            "strength": strength,
            "ratio_r": ratio_r,
            "ratio_eps": ratio_eps,
            "ratio_activation": nu_a,
            "probe": np.where(use_ft, "ft", "base"),
            "delta": delta,
            "delta_bin": df["delta_bin"].to_numpy() if "delta_bin" in df else delta_bin(delta),
            "freq": freq,
            "n_active": n_active,
            "reason": reason.astype(str),
            "mode": mode,
        }
    )
    return out


def delta_bin(delta: np.ndarray) -> np.ndarray:
    """F10 bins: ``base_only`` (<= 0.1), ``shared`` (0.4..0.6), ``ft_only`` (>= 0.9), else ``other``."""
    delta = np.asarray(delta, dtype=float)
    out = np.full(delta.shape, "other", dtype=object)
    out[delta <= 0.1] = "base_only"
    out[(delta >= 0.4) & (delta <= 0.6)] = "shared"
    out[delta >= 0.9] = "ft_only"
    return out.astype(str)


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
