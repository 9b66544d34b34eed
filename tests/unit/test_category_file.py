"""The category file parser (mneme.category_file): every use on constructed files, every problem
of a bad file reported together, and the facts the workflow relies on (the tag labels param, a
leaf module)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from mneme import category_file
from mneme.category_file import NONE_LABEL, Category, CategoryFileError, check, load, parse
from mneme.code_deps import _direct_imports

CATEGORIES = REPO / "config" / "categories"


def write(tmp_path: Path, text: str, name: str = "cats.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- good files

GOOD = """\
general_category: untagged
categories:
  biology:
    description: >-
      Living   things:
      animals and plants.
    tags: [" Zool. ", "Bot."]
    examples: ["a  plant\\n species", "birds"]
    subjects: [college_biology, " virology "]
  law:
    description: "  Courts and statutes.  "
    tags: [Law]
"""


def test_a_gcide_file(tmp_path):
    cats = load(write(tmp_path, GOOD), "gcide")
    assert cats.general == "untagged" and cats.general_given
    assert list(cats.categories) == ["biology", "law"]
    bio = cats.categories["biology"]
    # text as written without surrounding whitespace; the consumers collapse what they need
    assert bio == Category(
        "biology",
        "Living   things: animals and plants.",
        examples=("a  plant\n species", "birds"),
        tags=("Zool.", "Bot."),
        subjects=("college_biology", "virology"),
    )
    assert cats.categories["law"].description == "Courts and statutes."
    assert cats.tag_to_category() == {"Zool.": "biology", "Bot.": "biology", "Law": "law"}
    assert cats.tag_labels() == {
        "tags": {"biology": ["Zool.", "Bot."], "law": ["Law"]},
        "general": "untagged",
    }


def test_a_mapping_file_allows_bare_names_and_no_general_category(tmp_path):
    path = write(tmp_path, "categories:\n  biology:\n  law: {description: Courts., examples: [judges]}\n")
    cats = load(path, "mapping")
    assert cats.general == category_file.DEFAULT_GENERAL == "general" and not cats.general_given
    assert cats.categories["biology"] == Category("biology", "biology")  # the name describes it
    assert cats.categories["law"].examples == ("judges",)
    assert cats.tag_labels() == {"tags": {"biology": [], "law": []}, "general": None}


def test_an_mmlu_file_ignores_categories_without_subjects(tmp_path):
    path = write(
        tmp_path, "categories:\n  biology: {subjects: [virology, anatomy]}\n  law: {tags: [Law]}\n  misc:\n"
    )
    cats = load(path, "mmlu")
    assert cats.subject_to_category() == {"virology": "biology", "anatomy": "biology"}
    assert list(cats.categories) == ["biology", "law", "misc"]


def test_the_shipped_files():
    gcide = load(CATEGORIES / "gcide.yaml", "gcide")
    assert "biology" in gcide.categories and gcide.general == "general"
    # a GCIDE file passes the mapping checks too: one file serves both, checked once
    assert check(CATEGORIES / "gcide.yaml", "mapping")[1] == []
    mmlu = load(CATEGORIES / "mmlu.yaml", "mmlu")
    assert len(mmlu.subject_to_category()) == 57
    assert check(CATEGORIES / "mmlu.yaml", "mapping")[1] == []


@pytest.mark.parametrize("name", ["gcide.yaml", "mmlu.yaml"])
def test_tag_labels_keep_the_value_of_the_rule_param(name):
    """gcide_labels() (rules/common.smk) is a param of the corpus, organism and benchmark rules:
    the value it had when it read the YAML itself must not change, or every stage re-runs."""
    spec = yaml.safe_load((CATEGORIES / name).read_text()) or {}
    before = {
        "tags": {n: list((c or {}).get("tags") or []) for n, c in (spec.get("categories") or {}).items()},
        "general": spec.get("general_category"),
    }
    parsed, _ = check(CATEGORIES / name, "gcide")
    assert parsed.tag_labels() == before


# --------------------------------------------------------------------------- bad files: every problem at once

BAD_GCIDE = """\
general_category: biology
categories:
  biology: {description: a, tags: [Zool.]}
  zoo: {description: b, tags: [Bot., "Zool"]}
  legal: {description: c, tags: ["R.C.Ch."]}
  church: {description: d, tags: ["R. C. Ch."]}
  notags: {description: e}
  emptytags: {description: f, tags: []}
  badtags: {description: g, tags: [Law, 3]}
  nodesc: {tags: [Mus.]}
  blankdesc: {description: "  ", tags: [Naut.]}
  badexamples: {description: h, tags: [Arch.], examples: a phrase}
  yesexample: {description: i, tags: [Mil.], examples: [fine, no]}
  bare:
  listed: [a, b]
  none: {description: j, tags: [Her.]}
  '': {description: k, tags: [Geom.]}
"""


def test_every_problem_of_a_gcide_file_is_reported(tmp_path):
    path = write(tmp_path, BAD_GCIDE)
    parsed, problems = check(path, "gcide")
    expected = [
        f"{path}: categories.zoo.tags: tag 'Zool' duplicates 'Zool.' in categories.biology "
        "(a tag may appear in only one category)",
        f"{path}: categories.church.tags: tag 'R. C. Ch.' duplicates 'R.C.Ch.' in categories.legal",
        f"{path}: categories.notags: has no 'tags' (the GCIDE domain labels",
        f"{path}: categories.emptytags.tags: expected a non-empty list of strings, got an empty list",
        f"{path}: categories.badtags.tags: expected a non-empty list of strings, got the item 3 (quote",
        f"{path}: categories.nodesc: has no 'description' (a non-empty string)",
        f"{path}: categories.blankdesc.description: expected a non-empty string, got '  '",
        f"{path}: categories.badexamples.examples: expected a list of phrases, got 'a phrase'",
        f"{path}: categories.yesexample.examples: expected a list of phrases, got the item False (quote an "
        "item that YAML reads as a number or a boolean, such as yes, no, on or off)",
        f"{path}: categories.bare: expected a mapping (description and tags), got nothing",
        f"{path}: categories.listed: expected a mapping (description and tags), got a list",
        f"{path}: category names must be non-empty strings, got ''",
        f"{path}: general_category 'biology' is also a key under 'categories'",
        f"{path}: categories.none: 'none' is reserved and cannot be a category name",
    ]
    for message in expected:
        assert sum(p.startswith(message) for p in problems) == 1, (message, problems)
    assert len(problems) == len(expected), problems
    # the file as far as it reads: the names stay usable for checks of names
    assert parsed is not None and {"biology", "zoo", "bare", "listed", NONE_LABEL} <= set(parsed.categories)
    assert "" not in parsed.categories


def test_every_problem_of_a_mapping_file_is_reported(tmp_path):
    text = (
        "general_category: ''\n"
        "categories:\n"
        "  biology: {description: [a, list], examples: {not: a list}}\n"
        "  law: {examples: [judges, 1913]}\n"
        "  music: just a string\n"
        "  none: {description: nothing}\n"
        "  7: {description: a number}\n"
        "  fine:\n"
    )
    path = write(tmp_path, text)
    _, problems = check(path, "mapping")
    assert problems == [
        f"{path}: categories.biology.description: expected a string, got a list",
        f"{path}: categories.biology.examples: expected a list of phrases, got a dict",
        f"{path}: categories.law.examples: expected a list of phrases, got the item 1913 (quote an item that "
        "YAML reads as a number or a boolean, such as yes, no, on or off)",
        f"{path}: categories.music: expected a mapping (description, examples), got 'just a string'",
        f"{path}: category names must be non-empty strings, got 7",
        f"{path}: general_category must be a non-empty string, got ''",
        f"{path}: categories.none: 'none' is reserved and cannot be a category name",
    ]


def test_every_problem_of_an_mmlu_file_is_reported(tmp_path):
    text = (
        "categories:\n"
        "  a: {subjects: [virology, anatomy]}\n"
        "  b: {subjects: [virology, ' anatomy ']}\n"
        "  c: {subjects: college_biology}\n"
        "  d: {subjects: [ok, '']}\n"
        "  e: [virology]\n"
    )
    path = write(tmp_path, text)
    _, problems = check(path, "mmlu")
    assert problems == [
        f"{path}: categories.b.subjects: subject 'virology' is also in categories.a",
        f"{path}: categories.b.subjects: subject 'anatomy' is also in categories.a",
        f"{path}: categories.c.subjects: expected a list of MMLU subject names, got 'college_biology'",
        f"{path}: categories.d.subjects: expected a list of MMLU subject names, got the item ''",
        f"{path}: categories.e: expected a mapping (subjects), got a list",
    ]
    path = write(tmp_path, "categories:\n  a: {description: x}\n  b: {tags: [Law]}\n")
    assert check(path, "mmlu")[1] == [f"{path}: no category lists any `subjects` (MMLU subject names)"]


@pytest.mark.parametrize(
    ("text", "got"),
    [
        ("", "expected a mapping with `categories:` (name: {description and tags}) at the top level, got an empty file"),
        ("- biology\n- law\n", "expected a mapping with `categories:` (name: {description and tags}) at the top level, got a list"),
        ("general_category: g\n", "expected a non-empty mapping under 'categories' (name: {description and tags}), got nothing"),
        ("categories: {}\n", "expected a non-empty mapping under 'categories' (name: {description and tags}), got a dict"),
        ("categories: [a, b]\n", "expected a non-empty mapping under 'categories' (name: {description and tags}), got a list"),
        ("categories: [a\n", "malformed YAML (while parsing a flow sequence"),
    ],
)  # fmt: skip
def test_a_file_without_categories_is_one_problem(tmp_path, text, got):
    path = write(tmp_path, text)
    parsed, problems = check(path, "gcide")
    assert parsed is None and len(problems) == 1 and problems[0].startswith(f"{path}: {got}"), problems


def test_load_raises_listing_every_problem(tmp_path):
    path = write(tmp_path, "categories:\n  a: {description: x}\n  b: {description: y, tags: 5}\n")
    with pytest.raises(CategoryFileError) as err:
        load(path, "gcide")
    assert isinstance(err.value, ValueError) and len(err.value.problems) == 2
    assert str(err.value).splitlines() == [
        f"{path}: 2 problems in the category file:",
        f"  - {path}: categories.a: has no 'tags' (the GCIDE domain labels, e.g. [\"Zool.\"], of its senses)",
        f"  - {path}: categories.b.tags: expected a non-empty list of strings, got 5",
    ]
    with pytest.raises(ValueError, match=r"categories.b.tags: expected") as err:
        load(write(tmp_path, "categories:\n  b: {description: y, tags: 5}\n"), "gcide")
    assert str(err.value) == err.value.problems[0]  # one problem: the message is the problem
    with pytest.raises(ValueError, match="cannot be read"):
        load(tmp_path / "absent.yaml", "mapping")


def test_parse_takes_data_already_read(tmp_path):
    """config.py reads the file itself (syntax and duplicate keys with line numbers) and passes
    the data in."""
    parsed, problems = parse({"categories": {"a": {"subjects": ["x"]}}}, "mmlu", "f.yaml")
    assert problems == [] and parsed.subject_to_category() == {"x": "a"} and parsed.path == Path("f.yaml")
    assert parse(None, "mapping", "f.yaml")[1][0].startswith("f.yaml: expected a mapping")
    with pytest.raises(ValueError, match="unknown use 'tags'"):
        parse({}, "tags")


def test_tag_key_forgives_the_spelling_variants_of_the_data():
    key = category_file.tag_key
    assert key("Law") == key("Law.") and key("R.C.Ch.") == key("R. C. Ch.") == key("r. c. ch.")
    assert key("Zool.") != key("Bot.")


# --------------------------------------------------------------------------- a leaf module


def test_the_module_is_a_leaf():
    """Rules' code inputs follow mneme imports: this module must not pull other modules in."""
    module = Path(category_file.__file__)
    assert _direct_imports(module, module.parent) == set()
    heavy = "{'numpy', 'pandas', 'torch', 'transformers', 'jsonschema'}"
    code = (
        "import sys, mneme.category_file\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy} or m.startswith('mneme.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO / "workflow_scripts",
    )
    assert out.stdout.strip() == "['mneme.category_file']"
