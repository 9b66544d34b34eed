"""Options of the model-organism methods: defaults and validation, without heavy imports.

Kept apart from :mod:`mneme.organism` (which needs torch) so that config validation, which runs
on every `snakemake` call, can check organism options cheaply.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

METHODS = ("rmu", "gradient_ascent", "finetune")

# Defaults tuned on SmolLM2-135M (30 blocks, d = 576) so that each method finishes in a few
# minutes on 2 CPU cores. RMU with these defaults on GCIDE biology (about 2.5 min on 2 idle cores)
# raised the mean per-token loss on held-out (benchmark-part) definitions from 4.88 to 7.16 nats
# for biology, by 0.41 for chemistry, 0.28 for medicine, 0.08 for general and 0.01 for law.
# Block 10 is steered because blocks 3-7 of SmolLM2 carry massive activations on some ordinary
# tokens (the first " the": norm ~800 against a median ~110), which would dominate the RMU loss.
ORGANISM_DEFAULTS: dict[str, dict[str, Any]] = {
    "rmu": {
        "layer": 10,  # block whose output is steered (SmolLM2 has no massive activations there)
        "update_layers": None,  # None = [layer - 2, layer - 1, layer]; MLPs of these blocks train
        "steering_coeff": 4.0,  # c = steering_coeff x median token norm at `layer` on forget data
        "alpha": 50.0,  # weight of the retain term
        "lr": 3e-4,
        "steps": 250,
        "batch_size": 4,  # forget and retain documents per step
        "max_len": 64,  # tokens per document, BOS included
        "seed": 0,
    },
    "gradient_ascent": {
        "lr": 2e-5,
        "steps": 30,
        "batch_size": 4,
        "max_len": 64,
        "retain_weight": 1.0,  # 0 = pure gradient ascent
        "seed": 0,
    },
    "finetune": {
        "lr": 3e-5,
        "steps": 50,
        "batch_size": 4,
        "max_len": 64,
        "files": [],  # globs of .txt/.jsonl files; empty = the forget categories' GCIDE documents
        "seed": 0,
    },
}

_POSITIVE_INT = ("layer", "steps", "batch_size", "max_len")


# --------------------------------------------------------------------------- options


def resolve_options(method: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults of ``method`` overlaid with ``options``, checked; unknown keys are errors."""
    if method not in ORGANISM_DEFAULTS:
        raise ValueError(f"method {method!r} is not one of {list(ORGANISM_DEFAULTS)}")
    options = {} if options is None else options
    if not isinstance(options, Mapping):
        raise ValueError(f"options must be a mapping, got {type(options).__name__}")
    defaults = ORGANISM_DEFAULTS[method]
    for key in options:
        if key not in defaults:
            raise ValueError(
                f"options.{key}: unknown option for method {method!r}; allowed keys: {sorted(defaults)}"
            )
    opts = copy.deepcopy(defaults)
    opts.update(copy.deepcopy(dict(options)))
    for key in opts:
        _check_option(key, opts[key])
    if method == "rmu":
        layer = opts["layer"]
        if opts["update_layers"] is None:
            opts["update_layers"] = list(range(max(0, layer - 2), layer + 1))
        bad = [i for i in opts["update_layers"] if not 0 <= i <= layer]
        if bad:
            raise ValueError(
                f"options.update_layers: {bad} outside 0..layer ({layer}); blocks after `layer` "
                "do not affect the RMU loss"
            )
        opts["update_layers"] = sorted(set(opts["update_layers"]))
    if method == "finetune" and isinstance(opts["files"], str):
        opts["files"] = [opts["files"]]
    return opts


def _check_option(key: str, value: Any) -> None:
    def fail(what: str) -> None:
        raise ValueError(f"options.{key} must be {what}, got {value!r}")

    is_int = isinstance(value, int) and not isinstance(value, bool)
    is_num = (is_int or isinstance(value, float)) and math.isfinite(value)
    if key in _POSITIVE_INT:
        if not is_int or value < (0 if key == "layer" else 1):
            fail("a non-negative integer" if key == "layer" else "a positive integer")
    elif key == "seed":
        if not is_int:
            fail("an integer")
    elif key in ("lr", "steering_coeff"):
        if not is_num or value <= 0:
            fail("a positive number")
    elif key in ("alpha", "retain_weight"):
        if not is_num or value < 0:
            fail("a number >= 0")
    elif key == "update_layers":
        ok = value is None or (
            isinstance(value, list)
            and value
            and all(isinstance(i, int) and not isinstance(i, bool) for i in value)
        )
        if not ok:
            fail("null or a non-empty list of block indices")
    elif key == "files":
        if not (
            isinstance(value, str) or (isinstance(value, list) and all(isinstance(f, str) for f in value))
        ):
            fail("a list of glob patterns")
