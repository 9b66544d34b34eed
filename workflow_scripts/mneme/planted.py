"""Synthetic paired activations with a known sparse dictionary, for testing crosscoder-based diffing.

Every token is a sparse non-negative combination of planted features plus a per-model offset and
Gaussian noise::

    x_base[i] = sum_j a_ij * base_scale[j] * base_dir[j] + base_offset + noise
    x_ft[i]   = sum_j a_ij * ft_scale[j]   * ft_dir[j]   + ft_offset   + noise

with the *same* activations ``a_ij`` in both models (the models saw the same tokens). Feature kinds:

============== ================================ ====================== ==========================
kind           directions                       scales (base, ft)      what a diffing method
                                                                       should report
============== ================================ ====================== ==========================
``shared``     same unit direction in both      (1, 1)                 unchanged, Delta ~ 0.5
``ft_only``    fine-tuned model only            (0, 1)                 new in ft, Delta ~ 1
``base_only``  base model only                  (1, 0)                 removed in ft, Delta ~ 0
``ft_scaled``  same direction                   (1, scale_factor)      suppressed in ft
``base_scaled`` same direction                  (scale_factor, 1)      amplified in ft
============== ================================ ====================== ==========================

``scale_factor`` < 1, so ``*_scaled`` features are "shared but scaled down in one model". Directions are
random Gaussian unit vectors (independent per feature; ``ft_rotation`` > 0 tilts the fine-tuned
direction of shared/scaled features away from the base one). Each feature fires independently with
probability ``freq[j]`` (mean ``active_per_token / n_features``) and magnitude uniform in
``magnitude_range``.

API: :func:`make_planted_features` draws the ground-truth :class:`PlantedFeatures` table,
:func:`sample_planted` draws tokens from it (call it repeatedly with different seeds to stream),
:func:`generate_planted` does both; :func:`best_matches` scores a trained decoder against the table;
:func:`write_planted_stores` / :func:`write_paired_stores` turn arrays into a real pair of activation
stores (zarr shards and manifests through :class:`mneme.activation_store.ShardWriter`) for
end-to-end tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mneme.activation_store import ShardWriter, write_manifest

FEATURE_KINDS = ("shared", "ft_only", "base_only", "ft_scaled", "base_scaled")


@dataclass
class PlantedFeatures:
    """Ground-truth feature table (one entry per planted feature, ``n`` features, width ``d``)."""

    kind: np.ndarray  # [n] str, one of FEATURE_KINDS
    base_dir: np.ndarray  # [n, d] unit direction in the base model (zeros for ft_only)
    ft_dir: np.ndarray  # [n, d] unit direction in the fine-tuned model (zeros for base_only)
    base_scale: np.ndarray  # [n] multiplier in the base model (0 for ft_only)
    ft_scale: np.ndarray  # [n] multiplier in the fine-tuned model (0 for base_only)
    freq: np.ndarray  # [n] probability that the feature fires on a token
    base_offset: np.ndarray  # [d] constant added to every base activation
    ft_offset: np.ndarray  # [d] constant added to every fine-tuned activation

    def __len__(self) -> int:
        return len(self.kind)

    @property
    def d_model(self) -> int:
        return self.base_dir.shape[1]

    def indices(self, kind: str) -> np.ndarray:
        """Indices of the features of one kind."""
        if kind not in FEATURE_KINDS:
            raise ValueError(f"unknown feature kind {kind!r}; expected one of {FEATURE_KINDS}")
        return np.flatnonzero(self.kind == kind)

    def vectors(self) -> np.ndarray:
        """Per-model feature vectors ``scale * dir`` as ``[n, 2, d]`` (index 0 base, 1 fine-tuned)."""
        return np.stack(
            [self.base_dir * self.base_scale[:, None], self.ft_dir * self.ft_scale[:, None]], axis=1
        )

    def to_records(self) -> list[dict]:
        """JSON-friendly rows (without the direction vectors)."""
        return [
            {
                "feature": i,
                "kind": str(self.kind[i]),
                "base_scale": float(self.base_scale[i]),
                "ft_scale": float(self.ft_scale[i]),
                "freq": float(self.freq[i]),
            }
            for i in range(len(self))
        ]


@dataclass
class PlantedData:
    """Generated activations ``xb``, ``xf`` ``[n_rows, d]`` float32, the ground truth ``features``
    and, if asked for, the feature activations ``activations`` ``[n_rows, n_features]`` float32."""

    xb: np.ndarray
    xf: np.ndarray
    features: PlantedFeatures
    activations: np.ndarray | None = None


def _unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.standard_normal((n, d))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_planted_features(
    d_model: int = 32,
    *,
    n_shared: int = 16,
    n_ft_only: int = 8,
    n_base_only: int = 8,
    n_ft_scaled: int = 4,
    n_base_scaled: int = 4,
    scale_factor: float = 0.25,
    active_per_token: float = 3.0,
    freq_spread: float = 0.5,
    offset_norm: float = 0.0,
    ft_rotation: float = 0.0,
    seed: int = 0,
) -> PlantedFeatures:
    """Draw a planted dictionary (see the module docstring).

    ``freq_spread`` in [0, 1) spreads the per-feature firing probabilities uniformly over
    ``mean * [1 - spread, 1 + spread]`` with ``mean = active_per_token / n_features``; ``offset_norm``
    gives each model a random constant offset of that norm (a mean the decoder bias should absorb);
    ``ft_rotation`` > 0 tilts the fine-tuned direction of shared and scaled features.
    """
    counts = {
        "shared": n_shared,
        "ft_only": n_ft_only,
        "base_only": n_base_only,
        "ft_scaled": n_ft_scaled,
        "base_scaled": n_base_scaled,
    }
    if any(c < 0 for c in counts.values()) or sum(counts.values()) == 0:
        raise ValueError(f"feature counts must be >= 0 and not all zero, got {counts}")
    if not 0 <= scale_factor < 1:
        raise ValueError(f"scale_factor must be in [0, 1), got {scale_factor}")
    if not 0 <= freq_spread < 1:
        raise ValueError(f"freq_spread must be in [0, 1), got {freq_spread}")
    rng = np.random.default_rng(seed)
    kind = np.array([k for k, c in counts.items() for _ in range(c)], dtype=object).astype(str)
    n = len(kind)
    base_dir = _unit_rows(rng, n, d_model)
    ft_dir = base_dir.copy()
    tilt = np.isin(kind, ("shared", "ft_scaled", "base_scaled"))
    if ft_rotation > 0 and tilt.any():
        moved = ft_dir[tilt] + ft_rotation * _unit_rows(rng, int(tilt.sum()), d_model)
        ft_dir[tilt] = moved / np.linalg.norm(moved, axis=1, keepdims=True)
    new_ft = kind == "ft_only"
    ft_dir[new_ft] = _unit_rows(rng, int(new_ft.sum()), d_model)
    base_scale = np.ones(n)
    ft_scale = np.ones(n)
    base_scale[kind == "ft_only"] = 0.0
    ft_scale[kind == "base_only"] = 0.0
    ft_scale[kind == "ft_scaled"] = scale_factor
    base_scale[kind == "base_scaled"] = scale_factor
    base_dir[kind == "ft_only"] = 0.0
    ft_dir[kind == "base_only"] = 0.0
    mean_freq = min(active_per_token / n, 1.0)
    freq = np.clip(mean_freq * rng.uniform(1 - freq_spread, 1 + freq_spread, n), 0.0, 1.0)
    offsets = offset_norm * _unit_rows(rng, 2, d_model)
    return PlantedFeatures(kind, base_dir, ft_dir, base_scale, ft_scale, freq, offsets[0], offsets[1])


def sample_planted(
    features: PlantedFeatures,
    n_rows: int,
    *,
    magnitude_range: tuple[float, float] = (0.5, 2.0),
    noise_std: float = 0.01,
    seed: int = 0,
    return_activations: bool = False,
) -> PlantedData:
    """Draw ``n_rows`` paired tokens from a planted dictionary: each feature fires with probability
    ``features.freq[j]`` and magnitude uniform in ``magnitude_range``; ``noise_std`` is per-coordinate
    Gaussian noise, independent in the two models. Deterministic given ``seed``; call it with several
    seeds to stream batches from one dictionary."""
    rng = np.random.default_rng(seed)
    n = len(features)
    fires = rng.random((n_rows, n)) < features.freq
    mags = rng.uniform(magnitude_range[0], magnitude_range[1], (n_rows, n))
    a = np.where(fires, mags, 0.0).astype(np.float32)
    vec = features.vectors().astype(np.float32)  # [n, 2, d]
    xb = a @ vec[:, 0] + features.base_offset.astype(np.float32)
    xf = a @ vec[:, 1] + features.ft_offset.astype(np.float32)
    if noise_std > 0:
        xb += rng.normal(0.0, noise_std, xb.shape).astype(np.float32)
        xf += rng.normal(0.0, noise_std, xf.shape).astype(np.float32)
    return PlantedData(
        xb.astype(np.float32), xf.astype(np.float32), features, a if return_activations else None
    )


def generate_planted(
    n_rows: int = 20_000,
    d_model: int = 32,
    *,
    magnitude_range: tuple[float, float] = (0.5, 2.0),
    noise_std: float = 0.01,
    seed: int = 0,
    return_activations: bool = False,
    **feature_kwargs,
) -> PlantedData:
    """:func:`make_planted_features` (``d_model``, ``seed`` and ``feature_kwargs``: the feature counts
    ``n_shared``, ``n_ft_only``, ``n_base_only``, ``n_ft_scaled``, ``n_base_scaled``, ``scale_factor``,
    ``active_per_token``, ``freq_spread``, ``offset_norm``, ``ft_rotation``) followed by
    :func:`sample_planted` of ``n_rows`` tokens. Deterministic given ``seed``."""
    features = make_planted_features(d_model, seed=seed, **feature_kwargs)
    return sample_planted(
        features,
        n_rows,
        magnitude_range=magnitude_range,
        noise_std=noise_std,
        seed=seed + 1_000_003,
        return_activations=return_activations,
    )


def best_matches(
    w_dec: np.ndarray, features: PlantedFeatures, norm_scales=(1.0, 1.0)
) -> tuple[np.ndarray, np.ndarray]:
    """For each planted feature, the latent whose concatenated decoder ``[d_j^b; d_j^f]`` has the
    largest cosine with the ground truth ``[s_b * base_vec; s_f * ft_vec]``.

    ``w_dec`` is ``[2, h, d]`` (the crosscoder's ``W_dec``, in normalised space, hence the F1 scalars
    ``norm_scales``). Returns ``(best_cosine [n], best_latent [n])``.
    """
    w = np.asarray(w_dec, dtype=np.float64)
    dec = np.concatenate([w[0], w[1]], axis=1)  # [h, 2d]
    vec = features.vectors()
    truth = np.concatenate([vec[:, 0] * norm_scales[0], vec[:, 1] * norm_scales[1]], axis=1)  # [n, 2d]
    dec = dec / np.maximum(np.linalg.norm(dec, axis=1, keepdims=True), 1e-30)
    truth = truth / np.maximum(np.linalg.norm(truth, axis=1, keepdims=True), 1e-30)
    cos = truth @ dec.T
    best = cos.argmax(axis=1)
    return cos[np.arange(len(best)), best], best


def write_paired_stores(
    xb: np.ndarray,
    xf: np.ndarray,
    root: str | os.PathLike,
    *,
    names: tuple[str, str] = ("base", "finetuned"),
    corpus: str = "planted",
    layer: int = 0,
    context_len: int | None = None,
    first_position: int = 0,
    n_shards: int = 1,
    chunk_rows: int = 1024,
    logical_dtype: str = "bfloat16",
    codec: str = "none",
) -> tuple[Path, Path]:
    """Write two row-aligned activation stores under ``root/{name}/{corpus}/L{layer}/`` and return
    their manifest paths ``(base_manifest, ft_manifest)`` (open them with ``PairedStores``).

    ``context_len`` defaults to ``n_rows + first_position`` (one context); rows are split evenly over
    ``n_shards`` shards of ``chunk_rows``-row chunks.
    """
    xb, xf = np.asarray(xb, dtype=np.float32), np.asarray(xf, dtype=np.float32)
    if xb.shape != xf.shape or xb.ndim != 2:
        raise ValueError(f"need two [n_rows, d] arrays of equal shape, got {xb.shape} and {xf.shape}")
    n_rows, d = xb.shape
    bounds = np.linspace(0, n_rows, max(1, n_shards) + 1).astype(int)
    meta = {
        "corpus": corpus,
        "layer": layer,
        "context_len": int(context_len if context_len is not None else n_rows + first_position),
        "first_position": int(first_position),
    }
    manifests = []
    for name, x in zip(names, (xb, xf)):
        folder = Path(root) / name / corpus / f"L{layer}"
        folder.mkdir(parents=True, exist_ok=True)
        shard_paths = []
        for s, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
            path = folder / f"shard_{s}.zarr"
            w = ShardWriter(
                path, int(hi - lo), d, logical_dtype=logical_dtype, chunk_rows=chunk_rows, codec=codec
            )
            for a in range(lo, hi, chunk_rows):
                w.write(a - lo, x[a : min(a + chunk_rows, hi)])
            w.close()
            shard_paths.append(str(path))
        manifest = folder / "manifest.json"
        write_manifest(manifest, shard_paths, {"model": name, **meta})
        manifests.append(manifest)
    return manifests[0], manifests[1]


def write_planted_stores(data: PlantedData, root: str | os.PathLike, **kwargs) -> tuple[Path, Path]:
    """:func:`write_paired_stores` for generated data (keyword arguments are passed through)."""
    return write_paired_stores(data.xb, data.xf, root, **kwargs)
