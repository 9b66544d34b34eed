"""Tests for mneme.gcide: GCIDE entries -> cleaned, domain-labelled senses and hashed splits."""

from __future__ import annotations

import gzip
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from mneme import gcide
from mneme.gcide import Sense

# Hand-written entries in the layout of /usr/share/dictd/gcide.dict.dz, header entries included
# (their licence text reaches column 0, like the real file's).
SNIPPET = """\

00-database-url
   ftp://ftp.gnu.org/gnu/gcide

00-database-info
   This file was converted from the original database on:
             Tue Feb 15 10:31:36 2022

The original data was distributed with the notice shown below.
No additional restrictions are claimed.

===============================================================

GCIDE is free software; you can redistribute it and/or modify it

Abdomen \\Ab*do"men\\, n. [L. abdomen (a word of uncertain
   etymol.): cf. F. abdomen.]
   1. (Anat.) The belly, or that part of the body between the
      thorax and the pelvis.
      [1913 Webster]

   2. (Zool.) The posterior section of the body, behind the
      thorax, in insects, crustaceans, and other Arthropoda.
      [1913 Webster]

Abdominal \\Ab*dom"i*nal\\, a. [Cf. F. abdominal.]
   1. Of or pertaining to the abdomen; ventral; as, the
      abdominal regions, muscles, cavity.
      [1913 Webster]

   2. (Zo["o]l.) Having abdominal fins; belonging to the
      Abdominales; as, abdominal fishes.
      [1913 Webster]

   {Abdominal ring} (Anat.), a fancied ringlike opening on each
      side of the abdomen, external and superior to the pubes;
      -- called also {inguinal ring}.
      [1913 Webster]

Bivalve \\Bi"valve\\, a. [Pref. bi- + valve.] (Zool. & Bot.)
   Having two shells or valves which open and shut, as the
   oyster and certain seed vessels.
   [1913 Webster]

Escutcheon \\Es*cutch"eon\\, n.
   1. (Her. & Zool.) A patch of hair or feathers shaped like a
      shield on the rump of an animal.
      [1913 Webster]

Haje \\Ha"je\\ (h[aum]"j[-e]), n. [Ar. hayya snake.] (Zool.)
   The Egyptian asp or cobra ({Naja haje}), a snake of C[oe]lenterata
   fame and great venom. See {Asp}.
   [1913 Webster]

Pluripresence \\Plu`ri*pres"ence\\, n. [Pluri- + presence.]
   Presence in more places than one. [R.] --Johnson.
   [1913 Webster]

Libidinous \\Li*bid"i*nous\\ (-n[u^]s), a. [L. libidinosus, fr.
   libido, libidinis, pleasure, desire, lust: cf. F. libidineux.
   See {Lief}.]
   Having lustful desires; characterized by lewdness; sensual;
   lascivious. -- {Li*bid"i*nous*ly}, adv. --
   {Li*bid"i*nous*ness}, n.
   [1913 Webster]

   Syn: Lewd; lustful; lascivious; unchaste; impure; sensual;
        licentious; lecherous; salacious.
        [1913 Webster]

Abdominous \\Ab*dom"i*nous\\, a.
   Having a protuberant belly; pot-bellied.
   [1913 Webster]

         Gorgonius sits, abdominous and wan,
         Like a fat squab upon a Chinese fan.     --Cowper.
   [1913 Webster]

Ablegate \\Ab"le*gate\\, n. (R. C. Ch.)
   A representative of the pope charged with important
   commissions in foreign countries. --Sir W. Scott.
   [1913 Webster]

Sacellum \\Sa*cel"lum\\, n.; pl. {Sacella}. [L., dim. of sacrum a
   sacred place.]
   (a) (Rom. Antiq.) An unroofed space consecrated to a
       divinity.
   (b) (Eccl.) A small monumental chapel in a church. --Shipley.
       [1913 Webster]

Acerose \\Ac"er*ose`\\, a. [(a) L. acerosus chaffy; (b) as if fr.
   L. acus needle: cf. F. ac['e]reux.] (Bot.)
   (a) Having the nature of chaff; chaffy.
   (b) Needle-shaped, having a sharp, rigid point, as the leaf
       of the pine.
       [1913 Webster]

Acerous \\Ac"er*ous\\, a.
   See {Acerose}.
   [1913 Webster]

Gravamen \\Gra*va"men\\, n. [L., fr. gravare to load.] (Law.)
   The grievance complained of; the substantial cause of the
   action.
   [1913 Webster]

   Note: The gravamen of a charge is its most serious part, as
         distinguished from the incidental matters.
         [1913 Webster]
"""

CATEGORY_MAP = {
    "Zool.": "biology",
    "Bot.": "biology",
    "Anat.": "medicine",
    "Law": "law",
    "Eccl.": "religion",
    "R. C. Ch.": "religion",
}


def write_dict(tmp_path: Path, text: str, name: str = "mini.dict.dz") -> Path:
    """Write ``text`` gzip-compressed, as dictzip files are (gzip with an extra header field)."""
    path = tmp_path / name
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(text)
    return path


@pytest.fixture
def mini_dict(tmp_path: Path) -> Path:
    return write_dict(tmp_path, SNIPPET)


@pytest.fixture
def senses(mini_dict: Path) -> dict[str, list[Sense]]:
    by_word: dict[str, list[Sense]] = {}
    for sense in gcide.iter_senses(mini_dict, CATEGORY_MAP, "general"):
        by_word.setdefault(sense.headword, []).append(sense)
    return by_word


# --------------------------------------------------------------------------- entries


def test_iter_entries_skips_header_and_keeps_blocks(mini_dict: Path) -> None:
    entries = list(gcide.iter_entries(mini_dict))
    words = [word for word, _ in entries]
    assert words[:3] == ["Abdomen", "Abdominal", "Bivalve"]
    assert not any(w.startswith("00") or "GCIDE" in w or "original data" in w for w in words)
    assert len(words) == 13
    abdomen = dict(entries)["Abdomen"]
    assert abdomen.startswith('Abdomen \\Ab*do"men\\, n.')
    assert abdomen.endswith("[1913 Webster]")


def test_numbered_senses_tags_and_pos(senses: dict[str, list[Sense]]) -> None:
    abdomen = senses["Abdomen"]
    assert [(s.sense_index, s.tag, s.category, s.pos) for s in abdomen] == [
        (1, "Anat.", "medicine", "n."),
        (2, "Zool.", "biology", "n."),
    ]
    assert abdomen[0].text == "The belly, or that part of the body between the thorax and the pelvis."


def test_untagged_sense_is_general_and_accented_tag_maps(senses: dict[str, list[Sense]]) -> None:
    first, second = senses["Abdominal"]
    assert (first.tag, first.category) == (None, "general")
    assert (second.tag, second.category) == ("Zool.", "biology")  # written Zo["o]l. in the data


def test_subentry_becomes_own_sense(senses: dict[str, list[Sense]]) -> None:
    (ring,) = senses["Abdominal ring"]
    assert (ring.tag, ring.category, ring.pos) == ("Anat.", "medicine", "")
    assert ring.text.startswith("a fancied ringlike opening on each side of the abdomen")
    assert ring.text.endswith("-- called also inguinal ring.")
    assert ring.sense_index == 3  # numbered within its entry, after Abdominal's two senses


def test_head_tag_applies_and_double_tag_takes_first_mapped(senses: dict[str, list[Sense]]) -> None:
    (bivalve,) = senses["Bivalve"]
    assert (bivalve.tag, bivalve.category, bivalve.pos) == ("Zool.", "biology", "a.")
    (escutcheon,) = senses["Escutcheon"]  # (Her. & Zool.): Her. is not mapped, Zool. is
    assert (escutcheon.tag, escutcheon.category) == ("Zool.", "biology")
    (ablegate,) = senses["Ablegate"]
    assert (ablegate.tag, ablegate.category) == ("R. C. Ch.", "religion")
    (gravamen,) = senses["Gravamen"]  # "(Law.)": a spelling slip of the data for (Law)
    assert gravamen.category == "law"


def test_cleaning_removes_markup(senses: dict[str, list[Sense]]) -> None:
    (haje,) = senses["Haje"]
    assert haje.text == (
        "The Egyptian asp or cobra (Naja haje), a snake of Coelenterata fame and great venom. See Asp."
    )
    (plur,) = senses["Pluripresence"]
    assert plur.text == "Presence in more places than one."  # [R.] and --Johnson. removed
    (lib,) = senses["Libidinous"]  # run-on derivatives and the Syn: paragraph dropped
    assert lib.text == "Having lustful desires; characterized by lewdness; sensual; lascivious."
    (abl,) = senses["Ablegate"]
    assert abl.text.endswith("commissions in foreign countries.")  # --Sir W. Scott. removed
    (grav,) = senses["Gravamen"]
    assert "Note" not in grav.text and "incidental" not in grav.text
    for sense_list in senses.values():
        for sense in sense_list:
            assert not set(sense.text) & set("\\[]{}*`"), sense
            assert "--" not in sense.text.replace("-- called", ""), sense
            assert "  " not in sense.text and sense.text == sense.text.strip()


def test_quotations_dropped(senses: dict[str, list[Sense]]) -> None:
    (abd,) = senses["Abdominous"]
    assert abd.text == "Having a protuberant belly; pot-bellied."


def test_lettered_subsenses_split_only_when_labelled(senses: dict[str, list[Sense]]) -> None:
    sac = senses["Sacellum"]
    assert [(s.tag, s.category) for s in sac] == [("Rom. Antiq.", "general"), ("Eccl.", "religion")]
    assert sac[1].text == "A small monumental chapel in a church."
    (acerose,) = senses["Acerose"]  # unlabelled (a)/(b) stay folded, head label applies
    assert acerose.category == "biology"
    assert acerose.text.startswith("(a) Having the nature of chaff; chaffy. (b) Needle-shaped")


def test_short_senses_dropped(senses: dict[str, list[Sense]]) -> None:
    assert "Acerous" not in senses  # "See Acerose." has two words


def test_parse_entry_directly() -> None:
    block = "Foo \\Foo\\, v. t. [AS. foo.]\n   1. (Chem.) To treat with a foo reagent.\n      [PJC]"
    (sense,) = gcide.parse_entry("Foo", block, {"Chem.": "chemistry"}, general="misc")
    assert sense == Sense("Foo", "v. t.", "Chem.", "chemistry", "To treat with a foo reagent.", 1)
    block = "Bar \\Bar\\, n.\n   1. (Print.) A bar of type in the printing trade."
    (sense,) = gcide.parse_entry("Bar", block, {"Chem.": "chemistry"}, general="misc")
    assert (sense.tag, sense.category) == ("Print.", "misc")


def test_undecodable_bytes_fall_back_to_cp1252(tmp_path: Path) -> None:
    raw = b'Dollar \\Dol"lar\\, n.\n   The market\x92s unit of money in the United States.\n'
    path = tmp_path / "cp.dict.dz"
    with gzip.open(path, "wb") as fh:
        fh.write(raw)
    (sense,) = gcide.iter_senses(path, {}, "general")
    assert sense.text == "The market\u2019s unit of money in the United States."


# --------------------------------------------------------------------------- documents and splits

FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}


def test_iter_documents_format_and_disjoint_parts(mini_dict: Path) -> None:
    docs = {
        part: list(gcide.iter_documents(mini_dict, CATEGORY_MAP, "general", part, FRACTIONS))
        for part in FRACTIONS
    }
    all_docs = [d for part_docs in docs.values() for d in part_docs]
    n_senses = sum(1 for _ in gcide.iter_senses(mini_dict, CATEGORY_MAP, "general"))
    assert len(all_docs) == n_senses
    ids = [d["doc_id"] for d in all_docs]
    assert len(set(ids)) == len(ids)
    parts_of_title: dict[str, set[str]] = {}
    for part, part_docs in docs.items():
        for doc in part_docs:
            parts_of_title.setdefault(doc["title"], set()).add(part)
    assert all(len(parts) == 1 for parts in parts_of_title.values())
    abdomen = next(d for d in all_docs if d["doc_id"] == "gcide:Abdomen:2")
    assert abdomen == {
        "doc_id": "gcide:Abdomen:2",
        "source": "gcide",
        "category": "biology",
        "title": "Abdomen",
        "text": "Abdomen: The posterior section of the body, behind the thorax, in insects, "
        "crustaceans, and other Arthropoda.",
    }


def test_doc_ids_count_senses_across_entries(tmp_path: Path) -> None:
    text = (
        "Can \\Can\\, n.\n   A drinking cup; a vessel for holding liquids.\n\n"
        "Can \\Can\\, v. t.\n   To preserve by putting in sealed cans.\n"
    )
    path = write_dict(tmp_path, text)
    docs = list(gcide.iter_documents(path, {}, "general", "all", {"all": 1.0}))
    assert [d["doc_id"] for d in docs] == ["gcide:Can:1", "gcide:Can:2"]


def test_split_is_deterministic_and_pinned() -> None:
    words = ["Abdomen", "zebra", "Abdominal ring", "Anchor", "Violin"]
    first = [gcide.split_part(w, FRACTIONS) for w in words]
    assert first == [gcide.split_part(w, FRACTIONS) for w in words]
    # Pinned: a change here means every corpus split changes; bump the salt deliberately instead.
    assert first == PINNED_PARTS
    assert gcide.split_part("  ABDOMEN ", FRACTIONS) == gcide.split_part("abdomen", FRACTIONS)


PINNED_PARTS = ["train", "test", "train", "val", "test"]


def test_split_is_independent_of_python_hash_seed() -> None:
    code = "from mneme import gcide; print(gcide.split_part('Abdomen', {'a': 0.5, 'b': 0.5}))"
    outs = set()
    for seed in ("0", "12345"):
        run = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parents[2],
            env={"PYTHONHASHSEED": seed, "PYTHONPATH": "workflow_scripts"},
        )
        outs.add(run.stdout.strip())
    assert outs == {gcide.split_part("Abdomen", {"a": 0.5, "b": 0.5})}


def test_split_respects_fractions_and_salt() -> None:
    words = [f"word{i}" for i in range(20_000)]
    counts = Counter(gcide.split_part(w, FRACTIONS) for w in words)
    for part, fraction in FRACTIONS.items():
        assert abs(counts[part] / len(words) - fraction) < 0.015, counts
    salted = [gcide.split_part(w, FRACTIONS, salt="other") for w in words[:2000]]
    assert salted != [gcide.split_part(w, FRACTIONS) for w in words[:2000]]


@pytest.mark.parametrize(
    ("fractions", "needle"),
    [
        ({"train": 0.8, "test": 0.0, "val": 0.2}, "'test'"),
        ({"train": 1.2, "test": -0.2}, "'test'"),
        ({"train": 0.7, "test": 0.2}, "sum to 1"),
        ({"train": 0.5, "test": "0.5"}, "'test'"),
        ({"train": 0.5, "test": float("nan")}, "'test'"),
        ({}, "empty"),
    ],
)
def test_bad_fractions_raise(fractions: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        gcide.split_part("Abdomen", fractions)


def test_unknown_part_raises(mini_dict: Path) -> None:
    with pytest.raises(ValueError, match="'dev'"):
        gcide.iter_documents(mini_dict, CATEGORY_MAP, "general", "dev", FRACTIONS)


# --------------------------------------------------------------------------- category YAML


def test_default_category_yaml_loads() -> None:
    tag_to_category, general, categories = gcide.load_category_map()
    assert general == "general"
    assert set(categories) == {
        "biology",
        "chemistry",
        "medicine",
        "law",
        "religion",
        "physics",
        "mathematics",
        "music",
        "military",
        "nautical",
        "architecture",
    }
    for name, spec in categories.items():
        assert len(spec["description"].split()) >= 8, name
        assert all(tag_to_category[tag] == name for tag in spec["tags"])
    expected = {"Zool.": "biology", "Min.": "chemistry", "Surg.": "medicine", "R. C. Ch.": "religion"}
    assert {tag: tag_to_category[tag] for tag in expected} == expected


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cats.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        (
            "categories:\n  biology:\n    description: Living things.\n",
            ["cats.yaml", "categories.biology", "tags"],
        ),
        (
            "categories:\n  biology: {description: a, tags: [Zool.]}\n"
            "  zoo: {description: b, tags: [Bot., Zool.]}\ngeneral_category: general\n",
            ["cats.yaml", "'Zool.'", "categories.zoo", "categories.biology"],
        ),
        (
            "categories:\n  law: {description: a, tags: [Law]}\n"
            "  legal: {description: b, tags: [Law.]}\ngeneral_category: general\n",
            ["cats.yaml", "'Law.'", "categories.legal"],
        ),
        (
            "categories:\n  law: {description: a, tags: []}\ngeneral_category: general\n",
            ["cats.yaml", "categories.law.tags"],
        ),
        (
            "categories:\n  law: {description: a, tags: [Law]}\ngeneral_category: ''\n",
            ["cats.yaml", "general_category"],
        ),
        (
            "categories:\n  law: {description: a, tags: [Law]}\ngeneral_category: law\n",
            ["cats.yaml", "general_category", "'law'"],
        ),
        ("categories:\n  law: {tags: [Law]}\n", ["cats.yaml", "categories.law", "description"]),
        ("- just\n- a list\n", ["cats.yaml", "categories"]),
    ],
)
def test_bad_yaml_raises(tmp_path: Path, text: str, needles: list[str]) -> None:
    path = write_yaml(tmp_path, text)
    with pytest.raises(ValueError) as err:
        gcide.load_category_map(path)
    for needle in needles:
        assert needle in str(err.value)


# --------------------------------------------------------------------------- the real dictionary


def test_real_gcide_file(record_property: pytest.RecordProperty) -> None:
    path = gcide.GCIDE_PATH
    assert path.exists(), (
        f"{path} is missing; the project setup installs it: run `apt-get install dict-gcide`"
    )
    tag_to_category, general, categories = gcide.load_category_map()
    start = time.perf_counter()
    counts = gcide.count_by_category(path, tag_to_category, general)
    elapsed = time.perf_counter() - start
    total = sum(counts.values())
    report = f"{total} senses in {elapsed:.1f}s: " + ", ".join(f"{k}={v}" for k, v in counts.most_common())
    print(report)
    record_property("gcide_category_counts", report)
    assert total > 50_000, report
    for name in categories:
        assert counts[name] >= 100, report
    for name in ("biology", "chemistry", "law", "religion"):
        assert counts[name] >= 500, report
    assert counts[general] > total / 2, report
