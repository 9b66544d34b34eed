"""Tests for mneme.mmlu: local MMLU files, the subject map, and letter scoring on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mneme import mmlu

REPO = Path(__file__).resolve().parents[2]

# the 57 subjects of MMLU (Hendrycks et al. 2021), as in cais/mmlu's `subject` column
MMLU_SUBJECTS = [
    "abstract_algebra",
    "anatomy",
    "astronomy",
    "business_ethics",
    "clinical_knowledge",
    "college_biology",
    "college_chemistry",
    "college_computer_science",
    "college_mathematics",
    "college_medicine",
    "college_physics",
    "computer_security",
    "conceptual_physics",
    "econometrics",
    "electrical_engineering",
    "elementary_mathematics",
    "formal_logic",
    "global_facts",
    "high_school_biology",
    "high_school_chemistry",
    "high_school_computer_science",
    "high_school_european_history",
    "high_school_geography",
    "high_school_government_and_politics",
    "high_school_macroeconomics",
    "high_school_mathematics",
    "high_school_microeconomics",
    "high_school_physics",
    "high_school_psychology",
    "high_school_statistics",
    "high_school_us_history",
    "high_school_world_history",
    "human_aging",
    "human_sexuality",
    "international_law",
    "jurisprudence",
    "logical_fallacies",
    "machine_learning",
    "management",
    "marketing",
    "medical_genetics",
    "miscellaneous",
    "moral_disputes",
    "moral_scenarios",
    "nutrition",
    "philosophy",
    "prehistory",
    "professional_accounting",
    "professional_law",
    "professional_medicine",
    "professional_psychology",
    "public_relations",
    "security_studies",
    "sociology",
    "us_foreign_policy",
    "virology",
    "world_religions",
]

ROWS = [
    ("college_biology", "Which organelle makes ATP?", ["Nucleus", "Mitochondrion", "Ribosome", "Golgi"], 1),
    ("college_biology", "DNA is made of?", ["Amino acids", "Lipids", "Nucleotides", "Sugars only"], 2),
    ("college_biology", "Which is a prokaryote?", ["E. coli", "Yeast", "Oak", "Frog"], 0),
    ("virology", "Influenza is a?", ["Bacterium", "Virus", "Prion", "Fungus"], 1),
    ("high_school_chemistry", "Water's formula?", ["H2O", "CO2", "NaCl", "O2"], 0),
    ("high_school_chemistry", "pH of pure water at 25 C?", ["1", "5", "7", "14"], 2),
    ("international_law", "The UN Charter was signed in?", ["1919", "1945", "1960", "1989"], 1),
]
DEV = [
    ("college_biology", "Cells were named by?", ["Hooke", "Newton", "Darwin", "Mendel"], 0),
    ("college_biology", "Plants make sugar by?", ["Fermentation", "Photosynthesis", "Osmosis", "Mitosis"], 1),
    ("virology", "HIV infects?", ["T cells", "Red cells", "Neurons", "Bone"], 0),
    ("high_school_chemistry", "Na is?", ["Nitrogen", "Neon", "Sodium", "Nickel"], 2),
    ("international_law", "ICJ sits in?", ["Geneva", "The Hague", "Paris", "Rome"], 1),
]


def frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["subject", "question", "choices", "answer"])


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in frame(rows).to_dict("records")))
    return path


@pytest.fixture(scope="module")
def subject_map() -> dict[str, str]:
    return mmlu.load_subject_map(REPO / "config" / "categories" / "mmlu.yaml")


@pytest.fixture(scope="module")
def tiny(tiny_model):
    from transformers import AutoModelForCausalLM

    from mneme.models import load_tokenizer, weights_path

    model = AutoModelForCausalLM.from_pretrained(weights_path(tiny_model), torch_dtype=torch.float32).eval()
    return model, load_tokenizer(tiny_model)


# --------------------------------------------------------------------------- category file


def test_subject_map_covers_exactly_the_57_subjects(subject_map) -> None:
    assert len(MMLU_SUBJECTS) == 57 == len(set(MMLU_SUBJECTS))
    assert sorted(subject_map) == sorted(MMLU_SUBJECTS)
    gcide = set(yaml.safe_load((REPO / "config/categories/gcide.yaml").read_text())["categories"])
    shared = {"biology", "chemistry", "medicine", "law", "physics", "mathematics", "religion"}
    assert shared <= gcide and shared <= set(subject_map.values())
    assert subject_map["college_biology"] == "biology" and subject_map["professional_law"] == "law"


def test_category_file_works_for_the_explanation_mapping() -> None:
    from mneme.categorize import load_category_set

    cats, general = load_category_set(REPO / "config" / "categories" / "mmlu.yaml")
    assert general not in cats and "biology" in cats
    assert all(len(c["description"].split()) >= 8 for c in cats.values())


def test_subject_map_ignores_tag_only_categories_and_rejects_duplicates(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(
        "categories:\n  biology: {description: d, tags: [Zool.], subjects: [virology]}\n"
        "  law: {description: d, tags: [Law]}\n"
    )
    assert mmlu.load_subject_map(f) == {"virology": "biology"}
    f.write_text(
        "categories:\n  a: {description: d, subjects: [virology]}\n  b: {description: d, subjects: [virology]}\n"
    )
    with pytest.raises(
        ValueError, match=r"categories.b.subjects: subject 'virology' is also in categories.a"
    ):
        mmlu.load_subject_map(f)


# --------------------------------------------------------------------------- reading and items


def test_read_local_formats(tmp_path) -> None:
    expected = frame(ROWS)
    jsonl = mmlu.read_split(write_jsonl(tmp_path / "mmlu.jsonl", ROWS))
    pd.testing.assert_frame_equal(jsonl, expected)
    pq = tmp_path / "mmlu.parquet"
    frame(ROWS).to_parquet(pq)
    pd.testing.assert_frame_equal(mmlu.read_split(pq), expected)
    # csv with the choices as a list literal and letter answers
    csv = tmp_path / "mmlu.csv"
    df = frame(ROWS).assign(
        choices=lambda d: d["choices"].map(repr), answer=lambda d: d["answer"].map("ABCD".__getitem__)
    )
    df.to_csv(csv, index=False)
    pd.testing.assert_frame_equal(mmlu.read_split(csv), expected)


def test_read_directory_of_splits_and_split_column(tmp_path) -> None:
    d = tmp_path / "snapshot" / "all"
    d.mkdir(parents=True)
    frame(ROWS).to_parquet(d / "test-00000-of-00001.parquet")
    frame(DEV).to_parquet(d / "dev-00000-of-00001.parquet")
    (tmp_path / "snapshot" / "virology").mkdir()  # a per-subject directory must not be read
    frame(ROWS[3:4]).to_parquet(tmp_path / "snapshot" / "virology" / "test-00000-of-00001.parquet")
    assert len(mmlu.read_split(tmp_path / "snapshot", "test")) == len(ROWS)
    assert len(mmlu.read_split(tmp_path / "snapshot", "dev")) == len(DEV)
    one = tmp_path / "both.jsonl"
    rows = frame(ROWS).assign(split="test")
    rows = pd.concat([rows, frame(DEV).assign(split="dev")], ignore_index=True)
    one.write_text(rows.to_json(orient="records", lines=True))
    assert len(mmlu.read_split(one, "dev")) == len(DEV)
    with pytest.raises(ValueError, match="has no 'dev' split"):
        mmlu.read_split(write_jsonl(tmp_path / "only.jsonl", ROWS), "dev", strict=True)
    frame(ROWS).to_json(tmp_path / "array.json", orient="records")
    assert len(mmlu.read_split(tmp_path / "array.json")) == len(ROWS)
    with pytest.raises(ValueError, match="missing column"):
        mmlu.normalise(pd.DataFrame({"question": ["q"]}), "x.jsonl")
    with pytest.raises(ValueError, match="expected 4 choices"):
        mmlu.normalise(frame([("anatomy", "q", ["a", "b"], 0)]), "x.jsonl")


def test_build_items_ids_categories_and_sampling(subject_map) -> None:
    items = mmlu.build_items(frame(ROWS), subject_map)
    assert items["item_id"].tolist()[:4] == [
        "college_biology/test/0",
        "college_biology/test/1",
        "college_biology/test/2",
        "virology/test/0",
    ]
    assert items["category"].tolist() == ["biology"] * 4 + ["chemistry"] * 2 + ["law"]
    sample = mmlu.build_items(frame(ROWS), subject_map, n_per_subject=2, seed=3)
    assert sample.groupby("subject").size().to_dict() == {
        "college_biology": 2,
        "high_school_chemistry": 2,
        "international_law": 1,
        "virology": 1,
    }
    assert sample.equals(mmlu.build_items(frame(ROWS), subject_map, n_per_subject=2, seed=3))
    assert set(sample["item_id"]) <= set(items["item_id"])
    only = mmlu.build_items(frame(ROWS), subject_map, subjects=["virology"])
    assert only["item_id"].tolist() == ["virology/test/0"]
    with pytest.raises(ValueError, match="no question"):
        mmlu.build_items(frame(ROWS), subject_map, subjects=["anatomy"])
    partial = mmlu.build_items(frame(ROWS), {"virology": "biology"})
    assert partial["subject"].unique().tolist() == ["virology"]


def test_prompt_is_the_harness_format() -> None:
    shots = [
        {
            "question": " Cells were named by? ",
            "choices": ["Hooke", "Newton", "Darwin", "Mendel"],
            "answer": 0,
        }
    ]
    text = mmlu.prompt("college_biology", "DNA is made of?", ["a", "b", "c", "d"], shots)
    assert text == (
        "The following are multiple choice questions (with answers) about college biology.\n\n"
        "Cells were named by?\nA. Hooke\nB. Newton\nC. Darwin\nD. Mendel\nAnswer: A\n\n"
        "DNA is made of?\nA. a\nB. b\nC. c\nD. d\nAnswer:"
    )
    shots = mmlu.few_shot_examples(frame(DEV), ["college_biology", "virology"], 1)
    assert [s["question"] for s in shots["college_biology"]] == ["Cells were named by?"]
    with pytest.raises(ValueError, match="fewer than k_shot=2"):
        mmlu.few_shot_examples(frame(DEV), ["virology"], 2)


# --------------------------------------------------------------------------- scoring


def reference_letter_logprobs(model, tok, text: str) -> np.ndarray:
    """Full forward of prompt + letter, log_softmax, the letter's summed token log-probabilities."""
    ids = tok(text)["input_ids"]
    out = []
    for letter in "ABCD":
        cont = tok(f" {letter}", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids + cont])).logits[0].double(), dim=-1)
        out.append(sum(logp[len(ids) + j - 1, t].item() for j, t in enumerate(cont)))
    return np.array(out)


@pytest.fixture(scope="module")
def tiny_letters(tiny_model):
    """The tiny model with " B" added to its vocabulary, so that every answer letter is one token."""
    from transformers import AutoModelForCausalLM

    from mneme.models import load_tokenizer, weights_path

    tok = load_tokenizer(tiny_model)
    tok.add_tokens([" B"])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(weights_path(tiny_model), torch_dtype=torch.float32).eval()
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    return model, tok


def check_against_reference(model, tok, items, shots, results) -> None:
    assert results.columns.tolist() == mmlu.RESULT_COLUMNS
    assert (results["task"] == "mmlu").all() and results["item_id"].tolist() == items["item_id"].tolist()
    for item, row in zip(items.itertuples(), results.itertuples()):
        text = mmlu.prompt(item.subject, item.question, item.choices, shots[item.subject])
        ref = reference_letter_logprobs(model, tok, text)
        np.testing.assert_allclose(row.choice_loglik, ref, rtol=1e-5, atol=1e-5)
        assert row.predicted == int(np.argmax(ref))
        assert row.score == float(row.predicted == item.answer) and row.answer == item.answer
        assert row.category == mmlu.load_subject_map()[item.subject]


@pytest.mark.parametrize("k_shot", [0, 1])
def test_one_forward_scoring_matches_reference(tiny_letters, subject_map, k_shot, monkeypatch) -> None:
    model, tok = tiny_letters
    assert mmlu.letter_token_ids(tok) is not None
    items = mmlu.build_items(frame(ROWS), subject_map)
    shots = mmlu.few_shot_examples(frame(DEV), list(dict.fromkeys(items["subject"])), k_shot)
    calls = []
    monkeypatch.setattr(mmlu, "letter_logprobs", lambda *a, **k: calls.append(1) or LETTER_LOGPROBS(*a, **k))
    one = mmlu.score_loaded(model, tok, items, shots, batch_size=3)
    assert calls == [1]  # the one-forward path
    check_against_reference(model, tok, items, shots, one)
    # the four-continuation fallback gives the same numbers
    four = mmlu.score_loaded(model, tok, items, shots, batch_size=5, single_forward=False)
    np.testing.assert_allclose(
        np.stack(four["choice_loglik"]), np.stack(one["choice_loglik"]), rtol=1e-5, atol=1e-5
    )
    assert four["predicted"].tolist() == one["predicted"].tolist()


def test_multi_token_letters_fall_back_to_continuations(tiny, subject_map) -> None:
    model, tok = tiny
    assert mmlu.letter_token_ids(tok) is None  # " B" is two tokens in the tiny BPE
    items = mmlu.build_items(frame(ROWS), subject_map)
    shots = mmlu.few_shot_examples(frame(DEV), list(dict.fromkeys(items["subject"])), 0)
    check_against_reference(model, tok, items, shots, mmlu.score_loaded(model, tok, items, batch_size=4))
    with pytest.raises(ValueError, match="single token"):
        mmlu.score_loaded(model, tok, items, single_forward=True)


LETTER_LOGPROBS = mmlu.letter_logprobs


def test_full_logits_path_matches(tiny_letters, subject_map, monkeypatch) -> None:
    model, tok = tiny_letters
    items = mmlu.build_items(frame(ROWS), subject_map)
    kept = mmlu.score_loaded(model, tok, items, batch_size=4)
    monkeypatch.setattr(mmlu, "_keeps_logits", lambda m: False)
    full = mmlu.score_loaded(model, tok, items, batch_size=4)
    np.testing.assert_allclose(
        np.stack(full["choice_loglik"]), np.stack(kept["choice_loglik"]), rtol=1e-5, atol=1e-5
    )


def test_run_from_a_local_file(tiny_model, tmp_path) -> None:
    data = write_jsonl(tmp_path / "test.jsonl", ROWS)
    write_jsonl(tmp_path / "dev.jsonl", DEV)
    options = {
        "seed": 0,
        "batch_size": 4,
        "mmlu": {
            "dataset": "cais/mmlu",
            "name": "all",
            "path": str(tmp_path),
            "split": "test",
            "subjects": ["college_biology", "virology"],
            "n_per_subject": 2,
            "k_shot": 1,
            "max_len": 512,
            "categories": str(REPO / "config" / "categories" / "mmlu.yaml"),
        },
    }
    results = mmlu.run(tiny_model, options, device="cpu")
    assert results.groupby("subject").size().to_dict() == {"college_biology": 2, "virology": 1}
    assert set(results["category"]) == {"biology"}
    assert data.exists()
