"""Category files (config/categories/*.yaml): parsed and checked in one place.

A category file names the categories of a scenario and, per stage, what that stage needs::

    general_category: general        # optional, default "general": the label of untagged senses
    categories:
      biology:
        description: Biology: animals, plants ...   # what the domain covers
        examples: [a plant species or genus]       # optional phrases, matched like the description
        tags: ["Zool.", "Bot."]                    # GCIDE domain labels
        subjects: [college_biology, virology]      # MMLU subjects

Each stage reads a file for one *use*:

- ``gcide`` (corpus, organisms, the GCIDE benchmark label dictionary senses by their tags):
  every category needs a ``description`` and ``tags``, a tag (up to the spelling variants the
  GCIDE parser forgives) belongs to one category only, and the general category is not a
  category name. Such a file also passes the ``mapping`` checks, so one file can be both.
- ``mapping`` (stage 9, the category set latents are mapped to): a description (default: the
  name) and optional ``examples`` per category; :data:`NONE_LABEL` is reserved.
- ``mmlu`` (the MMLU benchmark): ``subjects``, each in one category; categories without
  subjects are ignored.

:func:`parse` reports every problem at once, each naming the file and the category;
:func:`load` raises :class:`CategoryFileError` listing them. A leaf module (it imports yaml and
nothing of mneme): the code inputs of the rules that read category files stay exactly this file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

NONE_LABEL = "none"  # the label of a latent (or context) mapped to no category of the set
DEFAULT_GENERAL = "general"  # general_category when the file leaves it out

Use = Literal["gcide", "mapping", "mmlu"]
# what a category holds for each use, as named in messages
USES: dict[str, str] = {
    "gcide": "description and tags",
    "mapping": "description, examples",
    "mmlu": "subjects",
}


@dataclass(frozen=True)
class Category:
    """One category. Text is as written without surrounding whitespace; a list the file leaves
    out (or that a use does not check and is malformed) is empty."""

    name: str
    description: str  # the name when the file gives none (allowed for mapping and mmlu)
    examples: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    subjects: tuple[str, ...] = ()


@dataclass(frozen=True)
class CategoryFile:
    """A parsed category file: its ``categories`` in file order and the general category."""

    path: Path
    general: str
    categories: Mapping[str, Category]
    general_given: bool = False  # whether the file names general_category itself

    def tag_to_category(self) -> dict[str, str]:
        """``{GCIDE tag: category}``."""
        return {tag: c.name for c in self.categories.values() for tag in c.tags}

    def subject_to_category(self) -> dict[str, str]:
        """``{MMLU subject: category}``."""
        return {s: c.name for c in self.categories.values() for s in c.subjects}

    def tag_labels(self) -> dict[str, Any]:
        """``{"tags": {category: [tag, ...]}, "general": general_category or None}``: what the
        GCIDE reading of the file depends on. The workflow passes it as a rule param (corpus,
        organism, benchmark), so its value must not change for an unchanged file: that would
        re-run the corpus and every stage after it. ``general`` is None when the file leaves
        general_category out, as it always was."""
        return {
            "tags": {name: list(c.tags) for name, c in self.categories.items()},
            "general": self.general if self.general_given else None,
        }


class CategoryFileError(ValueError):
    """A category file unfit for its use; ``problems`` lists every problem."""

    def __init__(self, path: str | os.PathLike, problems: list[str]) -> None:
        self.problems = problems
        if len(problems) == 1:
            super().__init__(problems[0])
        else:
            lines = "\n".join(f"  - {p}" for p in problems)
            super().__init__(f"{path}: {len(problems)} problems in the category file:\n{lines}")


def tag_key(tag: str) -> str:
    """Labels that the GCIDE parser treats as the same ("Law" / "Law.", "R.C.Ch." / "R. C. Ch.")."""
    return re.sub(r"[\s.]", "", tag).lower()


def _what(value: Any) -> str:
    if value is None:
        return "nothing"
    return f"a {type(value).__name__}" if isinstance(value, list | dict) else repr(value)


def _strings(value: Any) -> tuple[str, ...] | None:
    """The stripped items of a list of non-empty strings, else None."""
    if isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value):
        return tuple(v.strip() for v in value)
    return None


def _not_strings(value: Any) -> str:
    """What a key that should hold a list of strings holds instead."""
    if not isinstance(value, list):
        return _what(value)
    if not value:
        return "an empty list"
    bad = [v for v in value if not (isinstance(v, str) and v.strip())]
    hint = (
        " (quote an item that YAML reads as a number or a boolean, such as yes, no, on or off)"
        if any(isinstance(v, bool | int | float) for v in bad)
        else ""
    )
    return f"the item{'s' if len(bad) > 1 else ''} {', '.join(map(repr, bad))}{hint}"


def parse(
    data: Any, use: Use, path: str | os.PathLike = "<category file>"
) -> tuple[CategoryFile | None, list[str]]:
    """``(file, problems)``: every problem of YAML ``data`` (a category file's contents) for
    ``use``, each as '<path>: ...', and the file as far as it could be read.

    The file is None when ``data`` has no non-empty ``categories:`` mapping; otherwise it holds
    every category with a proper name (for checks of names, say an unknown category in the config,
    that need not wait for a tag to be fixed). Only a file without problems is fit for ``use``:
    :func:`load` raises on any.
    """
    if use not in USES:
        raise ValueError(f"unknown use {use!r} of a category file; expected one of {', '.join(USES)}")
    keys = USES[use]
    if not isinstance(data, dict):
        got = "an empty file" if data is None else _what(data)
        return None, [
            f"{path}: expected a mapping with `categories:` (name: {{{keys}}}) at the top level, got {got}"
        ]
    cats = data.get("categories")
    if not isinstance(cats, dict) or not cats:
        return None, [
            f"{path}: expected a non-empty mapping under 'categories' (name: {{{keys}}}), got {_what(cats)}"
        ]
    problems: list[str] = []
    categories: dict[str, Category] = {}
    tag_owner: dict[str, tuple[str, str]] = {}
    subject_owner: dict[str, str] = {}
    for name, spec in cats.items():
        if not isinstance(name, str) or not name.strip():
            problems.append(f"{path}: category names must be non-empty strings, got {name!r}")
            continue
        where = f"{path}: categories.{name}"
        if spec is None and use != "gcide":
            spec = {}  # a bare name: the name is its description
        if not isinstance(spec, dict):
            problems.append(f"{where}: expected a mapping ({keys}), got {_what(spec)}")
            categories[name] = Category(name, name)
            continue

        desc = spec.get("description")
        described = isinstance(desc, str) and bool(desc.strip())
        if use == "gcide" and desc is None:
            problems.append(f"{where}: has no 'description' (a non-empty string)")
        elif use == "gcide" and not described:
            problems.append(f"{where}.description: expected a non-empty string, got {_what(desc)}")
        elif use == "mapping" and desc is not None and not isinstance(desc, str):
            problems.append(f"{where}.description: expected a string, got {_what(desc)}")

        examples = _strings(spec["examples"]) if spec.get("examples") is not None else ()
        if examples is None and use in ("gcide", "mapping"):
            problems.append(
                f"{where}.examples: expected a list of phrases, got {_not_strings(spec['examples'])}"
            )

        tags = _strings(spec["tags"]) if spec.get("tags") is not None else ()
        if use == "gcide":
            if "tags" not in spec:
                problems.append(
                    f"{where}: has no 'tags' (the GCIDE domain labels, e.g. [\"Zool.\"], of its senses)"
                )
            elif not tags:
                problems.append(
                    f"{where}.tags: expected a non-empty list of strings, got {_not_strings(spec['tags'])}"
                )
            for tag in tags or ():
                key = tag_key(tag)
                if key in tag_owner:
                    other_tag, other = tag_owner[key]
                    problems.append(
                        f"{where}.tags: tag {tag!r} duplicates {other_tag!r} in categories.{other} "
                        "(a tag may appear in only one category)"
                    )
                else:
                    tag_owner[key] = (tag, name)

        subjects = _strings(spec["subjects"]) if spec.get("subjects") is not None else ()
        if use == "mmlu":
            if subjects is None:
                problems.append(
                    f"{where}.subjects: expected a list of MMLU subject names, "
                    f"got {_not_strings(spec['subjects'])}"
                )
            for subject in subjects or ():
                if subject in subject_owner:
                    problems.append(
                        f"{where}.subjects: subject {subject!r} is also in categories.{subject_owner[subject]}"
                    )
                subject_owner.setdefault(subject, name)

        description = desc.strip() if described else name
        categories[name] = Category(name, description, examples or (), tags or (), subjects or ())

    if use == "mmlu" and not problems and not subject_owner:
        problems.append(f"{path}: no category lists any `subjects` (MMLU subject names)")
    given = "general_category" in data
    general = data.get("general_category", DEFAULT_GENERAL)
    if not isinstance(general, str) or not general.strip():
        if use in ("gcide", "mapping"):
            problems.append(f"{path}: general_category must be a non-empty string, got {general!r}")
        general, given = DEFAULT_GENERAL, False
    elif use == "gcide" and general in cats:
        problems.append(f"{path}: general_category {general!r} is also a key under 'categories'")
    if use in ("gcide", "mapping") and NONE_LABEL in cats:
        problems.append(
            f"{path}: categories.{NONE_LABEL}: {NONE_LABEL!r} is reserved and cannot be a category name"
        )
    return CategoryFile(Path(path), general, categories, given), problems


def check(path: str | os.PathLike, use: Use) -> tuple[CategoryFile | None, list[str]]:
    """:func:`parse` of the file at ``path``; a file that cannot be read or is not YAML is one
    problem (and no file)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, UnicodeDecodeError) as exc:
        return None, [f"{path}: cannot be read ({exc})"]
    except yaml.YAMLError as exc:
        return None, [f"{path}: malformed YAML ({' '.join(str(exc).split())})"]
    return parse(data, use, path)


def load(path: str | os.PathLike, use: Use) -> CategoryFile:
    """The category file at ``path`` for ``use``; :class:`CategoryFileError` (a ValueError)
    lists every problem."""
    parsed, problems = check(path, use)
    if problems or parsed is None:
        raise CategoryFileError(path, problems)
    return parsed
