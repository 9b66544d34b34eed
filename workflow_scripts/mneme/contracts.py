"""Names and bins shared by several stages' files: a leaf module with no stage logic.

A rule's code inputs are the modules its script imports (:mod:`mneme.code_deps`), so a constant
that an early stage writes and a later stage reads lives here rather than in the later stage's
module: editing the attribution rule must not re-run the latent statistics that feed it.
"""

from __future__ import annotations

import numpy as np

# F10 bins of the relative decoder norm (docs/method.md, "Relative decoder norm").
DELTA_BINS = ("base_only", "other", "shared", "ft_only")

# Crosscoder options that do not change the trained weights: a kept checkpoint stays usable when
# they change, and the train_crosscoder rule leaves them out of its params.
NON_TRAJECTORY_KEYS = ("checkpoint_every", "log_every", "prefetch_batches", "device")

# The category of tokens outside any document (BOS-only padding) in category_mass.parquet.
NO_CATEGORY = "(none)"


def delta_bin(delta: np.ndarray) -> np.ndarray:
    """F10 bins: ``base_only`` (<= 0.1), ``shared`` (0.4..0.6), ``ft_only`` (>= 0.9), else ``other``."""
    delta = np.asarray(delta, dtype=float)
    out = np.full(delta.shape, "other", dtype=object)
    out[delta <= 0.1] = "base_only"
    out[(delta >= 0.4) & (delta <= 0.6)] = "shared"
    out[delta >= 0.9] = "ft_only"
    return out.astype(str)


def beta_column(target: str, model: str, probe: str) -> str:
    """Name of a beta column in ``betas.parquet`` (written by :mod:`mneme.latent_scaling`)."""
    return f"beta_{target}_{model}_{probe}"
