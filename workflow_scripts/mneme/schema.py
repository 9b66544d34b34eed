"""The config schema as the one source of defaults and ranges, for the workflow and the library.

``config/schema.yaml`` states every key's default, type and range once. The workflow fills and
checks the whole config with it before any job (:mod:`mneme.config`); a library function called
on its own (a test, a notebook, a benchmark) gets its section filled from the same file by
:func:`filled`, so no module keeps a copy of a default. A leaf module: it imports nothing of
mneme, so that the stages that fill a section do not re-run when the config checks change.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"


@functools.cache
def load_schema(path: str | Path = SCHEMA_PATH) -> dict:
    """The parsed schema (read once per process)."""
    return yaml.safe_load(Path(path).read_text())


def resolve_ref(schema: dict, root: dict) -> dict:
    """Follow ``$ref`` pointers (``#/$defs/...``) to the schema they name."""
    while "$ref" in schema:
        node = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def apply_defaults(cfg: Any, schema: dict, root: dict | None = None) -> None:
    """Fill ``default:`` values of the schema into ``cfg`` in place, recursing into maps and lists.

    A branch ``allOf: [{if: ..., then: ...}]`` fills its ``then`` defaults only where its ``if``
    holds, so a model gets the defaults of its own ``source`` (and an organism the options of its
    own ``method``), never another's.
    """
    root = root or schema
    schema = resolve_ref(schema, root)
    if isinstance(cfg, dict):
        for name, sub in schema.get("properties", {}).items():
            sub_r = resolve_ref(sub, root)
            if name not in cfg and "default" in sub_r:
                cfg[name] = copy.deepcopy(sub_r["default"])
            if name in cfg:
                apply_defaults(cfg[name], sub_r, root)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name, value in cfg.items():
                if name not in schema.get("properties", {}):
                    apply_defaults(value, extra, root)
        for branch in schema.get("allOf", []):
            if "if" in branch and "then" in branch and _holds(cfg, branch["if"], root):
                apply_defaults(cfg, branch["then"], root)
    elif isinstance(cfg, list) and isinstance(schema.get("items"), dict):
        for item in cfg:
            apply_defaults(item, schema["items"], root)


def _holds(cfg: Any, schema: dict, root: dict) -> bool:
    """Whether ``cfg`` satisfies ``schema`` (an ``if`` condition)."""
    return jsonschema.Draft202012Validator({**schema, "$defs": root.get("$defs", {})}).is_valid(cfg)


def section_schema(section: str) -> dict:
    """The schema of a dotted section, e.g. ``interpret`` or ``interpret.prompt``."""
    root = load_schema()
    node = root
    for part in section.split("."):
        node = resolve_ref(node, root)["properties"][part]
    return resolve_ref(node, root)


def filled(section: str, cfg: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A copy of ``cfg`` (the config section ``section``) with every default of the schema
    filled in, checked against the schema: a wrong key or value is a ``ValueError`` naming it.

    Inside the workflow the section arrives filled and checked already, and this changes nothing.
    """
    return filled_from(section_schema(section), cfg, section)


def filled_from(schema: dict, cfg: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """:func:`filled` for any schema node (``where`` prefixes the keys in error messages)."""
    out = copy.deepcopy(dict(cfg or {}))
    root = load_schema()
    apply_defaults(out, schema, root)
    validator = jsonschema.Draft202012Validator({**schema, "$defs": root.get("$defs", {})})
    problems = []
    for err in sorted(validator.iter_errors(out), key=lambda e: list(map(str, e.absolute_path))):
        key = ".".join([where, *map(str, err.absolute_path)])
        if err.validator == "additionalProperties":
            allowed = sorted(err.schema.get("properties", {}))
            extra = sorted(set(err.instance) - set(allowed))
            problems.append(
                f"{key}: unknown key(s) {', '.join(map(repr, extra))}; allowed keys: {', '.join(allowed)}"
            )
        else:
            problems.append(f"{key}: {err.message}")
    if problems:
        raise ValueError("; ".join(problems))
    return out


def defaults(section: str) -> dict[str, Any]:
    """Every default of a section (what an empty section becomes)."""
    return filled(section, {})
