"""Options of the model-organism methods: filled and checked from the schema, without heavy imports.

Kept apart from :mod:`mneme.organism` (which needs torch) so that config validation, which runs
on every `snakemake` call, can check organism options cheaply.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mneme.schema import filled_from, load_schema

# the methods are the schema's (config/schema.yaml, $defs/organism_options)
METHODS = tuple(load_schema()["$defs"]["organism_options"])

# --------------------------------------------------------------------------- options


def method_schema(method: str) -> dict:
    """The options schema of an organism method (config/schema.yaml, $defs/organism_options)."""
    methods = load_schema()["$defs"]["organism_options"]
    if method not in methods:
        raise ValueError(f"method {method!r} is not one of {list(methods)}")
    return methods[method]


def resolve_options(method: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The options of ``method`` with the schema's defaults filled in and checked (a wrong key or
    value is an error naming ``options.<key>``), plus what the schema cannot say: RMU's default
    ``update_layers`` and that none comes after ``layer``."""
    if options is not None and not isinstance(options, Mapping):
        raise ValueError(f"options must be a mapping, got {type(options).__name__}")
    opts = filled_from(method_schema(method), options, "options")
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
