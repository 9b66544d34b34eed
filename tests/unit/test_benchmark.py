"""Tests for mneme.benchmark: GCIDE category items and log-likelihood scoring on the tiny model."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mneme import benchmark, benchmark_options

# Hand-written entries in the layout of /usr/share/dictd/gcide.dict.dz.
SNIPPET = """\

Frog \\Frog\\, n.
   1. (Zool.) An amphibian of the order Anura, having long hind legs.
      [1913 Webster]

   2. (Zool.) A second sense that should never be picked as an item.
      [1913 Webster]

Toad \\Toad\\, n. (Zool.)
   A tailless amphibian with a warty skin, living mostly on land.
   [1913 Webster]

Newt \\Newt\\, n. (Zool.)
   A small lizardlike amphibian living partly in water.
   [1913 Webster]

Heron \\Her"on\\, n. (Zool.)
   A long-legged wading bird with a long neck and a long bill.
   [1913 Webster]

Oak \\Oak\\, n. (Bot.)
   A tree of the genus Quercus, bearing acorns as its fruit.
   [1913 Webster]

Moss \\Moss\\, n. (Bot.)
   A small plant.
   [1913 Webster]

Fern \\Fern\\, n. (Bot.)
   Any fern plant with feathery fronds and no flowers or seeds.
   [1913 Webster]

Tort \\Tort\\, n. (Law)
   A wrongful act for which an action for damages will lie.
   [1913 Webster]

Bailment \\Bail"ment\\, n. (Law)
   A delivery of goods in trust upon a contract, expressed or implied.
   [1913 Webster]

Chair \\Chair\\, n.
   A movable seat with a back, made for one person.
   [1913 Webster]

Table \\Ta"ble\\, n.
   A flat surface raised on legs, used for meals and for work.
   [1913 Webster]
"""

CATEGORIES_YAML = """\
categories:
  biology:
    description: Animals and plants.
    tags: ["Zool.", "Bot."]
  law:
    description: Law and the courts.
    tags: ["Law"]
"""

BIOLOGY = {"Frog", "Toad", "Newt", "Heron", "Oak"}


@pytest.fixture
def gcide_cfg(tmp_path: Path) -> dict:
    path = tmp_path / "mini.dict.dz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(SNIPPET)
    yaml_path = tmp_path / "categories.yaml"
    yaml_path.write_text(CATEGORIES_YAML)
    return {"path": str(path), "categories": str(yaml_path), "parts": {"benchmark": 1.0}, "salt": "test"}


# --------------------------------------------------------------------------- items


def test_build_items_filters_and_labels(gcide_cfg: dict) -> None:
    items = benchmark.build_items(gcide_cfg, None, n_per_category=10)
    assert list(items.columns) == benchmark.ITEM_COLUMNS
    by_cat = items.groupby("category")["headword"].apply(set).to_dict()
    # Moss: definition under 4 words; Fern: the definition names the headword.
    assert by_cat == {"biology": BIOLOGY, "law": {"Tort", "Bailment"}, "general": {"Chair", "Table"}}
    assert items["item_id"].is_unique
    frog = items.set_index("headword").loc["Frog"]
    assert frog["item_id"] == "gcide:Frog:1"  # first eligible sense only
    assert frog["definition"] == "An amphibian of the order Anura, having long hind legs."


def test_build_items_multiple_choice_is_deterministic(gcide_cfg: dict) -> None:
    items = benchmark.build_items(gcide_cfg, ["biology"], n_per_category=3, n_choices=4, seed=7)
    again = benchmark.build_items(gcide_cfg, ["biology"], n_per_category=3, n_choices=4, seed=7)
    pd.testing.assert_frame_equal(items, again)
    assert len(items[items.category == "biology"]) == 3
    for item in items[items.category == "biology"].itertuples():
        assert len(item.choices) == 4 and len(set(item.choices)) == 4
        assert item.choices[item.answer] == item.headword
        assert set(item.choices) <= BIOLOGY  # distractors from the same category
    # Too few distinct headwords for 4 choices: no MC item, the item itself is kept.
    general = items[items.category == "general"]
    assert len(general) == 2 and general["choices"].isna().all() and (general["answer"] == -1).all()
    other_seeds = [benchmark.build_items(gcide_cfg, ["biology"], 3, 4, seed=s) for s in range(1, 6)]
    assert any(not frame.equals(items) for frame in other_seeds)


def test_the_general_control_gets_its_own_sample_size(gcide_cfg: dict) -> None:
    one = benchmark.build_items(gcide_cfg, ["biology"], n_per_category=2, n_general=1)
    counts = one["category"].value_counts().to_dict()
    assert counts == {"biology": 2, "general": 1}
    both = benchmark.build_items(gcide_cfg, ["biology"], n_per_category=2, n_general=2)
    # a larger general sample extends the smaller one; the category's own sample is unchanged
    assert set(one["item_id"]) < set(both["item_id"])
    assert set(one.loc[one.category == "biology", "item_id"]) == set(
        both.loc[both.category == "biology", "item_id"]
    )
    default = benchmark.build_items(gcide_cfg, ["biology"], n_per_category=1)
    assert default["category"].value_counts().to_dict() == {"biology": 1, "general": 1}
    with pytest.raises(ValueError, match="n_general must be >= 1"):
        benchmark.build_items(gcide_cfg, ["biology"], n_per_category=1, n_general=0)


def test_a_category_smaller_than_asked_keeps_all_its_items_and_says_so(
    gcide_cfg: dict, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING"):
        items = benchmark.build_items(gcide_cfg, ["law"], n_per_category=5, n_general=2)
    assert items["category"].value_counts().to_dict() == {"law": 2, "general": 2}
    assert "'law' has 2 eligible senses, fewer than the 5 asked for" in caplog.text
    assert "'general' has 2 eligible" not in caplog.text


def test_build_items_rejects_unknown_category(gcide_cfg: dict) -> None:
    with pytest.raises(ValueError, match="unknown categories"):
        benchmark.build_items(gcide_cfg, ["astrology"], n_per_category=2)


# --------------------------------------------------------------------------- scoring


def manual_logprobs(model, tok, context: str, continuation: str) -> np.ndarray:
    """Log-probs of the continuation tokens by one unpadded forward pass over context + continuation."""
    ctx = tok(context)["input_ids"]
    cont = tok(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
    return np.array([logp[len(ctx) + j - 1, t].item() for j, t in enumerate(cont)])


@pytest.fixture(scope="module")
def tiny(tiny_model):
    from transformers import AutoModelForCausalLM

    from mneme.models import load_tokenizer, weights_path

    model = AutoModelForCausalLM.from_pretrained(weights_path(tiny_model), torch_dtype=torch.float32).eval()
    return model, load_tokenizer(tiny_model)


ITEMS = pd.DataFrame(
    [
        {
            "item_id": "a",
            "category": "biology",
            "headword": "Frog",
            "definition": "An amphibian of the order Anura, having long hind legs, a short body and no tail.",
            "choices": ["Toad", "Frog", "Oak", "Heron"],
            "answer": 1,
        },
        {
            "item_id": "b",
            "category": "biology",
            "headword": "Oak",
            "definition": "A tree of the genus Quercus.",
            "choices": ["Oak", "Newt", "Frog", "Heron"],
            "answer": 0,
        },
        {
            "item_id": "c",
            "category": "general",
            "headword": "Chair",
            "definition": "A movable seat with a back.",
            "choices": None,
            "answer": -1,
        },
    ]
)


def test_definition_loglik_matches_manual_and_batching(tiny_model, tiny) -> None:
    model, tok = tiny
    batched = benchmark.score_model(tiny_model, ITEMS, batch_size=8, device="cpu")
    single = benchmark.score_model(tiny_model, ITEMS, batch_size=1, device="cpu")
    cols = ["score", "loglik", "n_tokens"]
    np.testing.assert_allclose(batched[cols].to_numpy(float), single[cols].to_numpy(float), rtol=1e-5)
    defs = batched[batched.task == "definition_loglik"].set_index("item_id")
    assert list(defs.index) == ["a", "b", "c"]
    for item in ITEMS.itertuples():  # "b" and "c" are right-padded next to the longer "a"
        expected = manual_logprobs(model, tok, f"{item.headword}:", f" {item.definition}")
        assert defs.loc[item.item_id, "n_tokens"] == len(expected)
        assert defs.loc[item.item_id, "score"] == pytest.approx(expected.mean(), rel=1e-5, abs=1e-5)
        assert defs.loc[item.item_id, "loglik"] == pytest.approx(expected.sum(), rel=1e-5, abs=1e-5)


def test_multiple_choice_matches_manual_argmax(tiny_model, tiny) -> None:
    model, tok = tiny
    results = benchmark.score_model(tiny_model, ITEMS, batch_size=3, device="cpu", tasks=["multiple_choice"])
    assert list(results.item_id) == ["a", "b"]  # "c" has no choices
    assert (results.task == "multiple_choice").all()
    for item, row in zip(ITEMS.itertuples(), results.itertuples()):
        prompt = f"Which term is defined as: {item.definition}\nAnswer:"
        lps = [manual_logprobs(model, tok, prompt, f" {choice}") for choice in item.choices]
        sums = [lp.sum() for lp in lps]
        np.testing.assert_allclose(row.choice_loglik, sums, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(row.choice_loglik_norm, [lp.mean() for lp in lps], rtol=1e-5, atol=1e-5)
        assert row.predicted == int(np.argmax(sums))
        assert row.predicted_norm == int(np.argmax([lp.mean() for lp in lps]))
        assert row.score == float(int(np.argmax(sums)) == item.answer)


def test_encode_pair_truncates_context_first(tiny) -> None:
    _, tok = tiny
    ids, cut = benchmark.encode_pair(tok, "a long context " * 20, "short answer", max_len=16)
    cont = tok(" short answer", add_special_tokens=False)["input_ids"]
    assert len(ids) == 16 and ids[cut:] == cont and cut == 16 - len(cont)
    ids, cut = benchmark.encode_pair(tok, "Q:", " word" * 40, max_len=8)
    assert len(ids) == 8 and cut == 1


def test_summarise() -> None:
    results = pd.DataFrame(
        {
            "item_id": ["a", "b", "c", "a", "b"],
            "category": ["bio", "bio", "law", "bio", "bio"],
            "task": ["definition_loglik"] * 3 + ["multiple_choice"] * 2,
            "score": [-2.0, -4.0, -3.0, 1.0, 0.0],
        }
    )
    summary = benchmark.summarise(results).set_index(["category", "task"])
    assert summary.loc[("bio", "definition_loglik"), "n"] == 2
    assert summary.loc[("bio", "definition_loglik"), "mean"] == pytest.approx(-3.0)
    assert summary.loc[("bio", "definition_loglik"), "std"] == pytest.approx(np.sqrt(2.0))
    assert summary.loc[("bio", "multiple_choice"), "mean"] == pytest.approx(0.5)
    assert np.isnan(summary.loc[("law", "definition_loglik"), "std"])


# --------------------------------------------------------------------------- the stage options

REPO = Path(__file__).resolve().parents[2]


def test_tasks_option_scores_only_the_listed_tasks(tiny_model) -> None:
    only = benchmark.score_model(tiny_model, ITEMS, device="cpu", tasks=["definition_loglik"])
    assert set(only["task"]) == {"definition_loglik"} and len(only) == len(ITEMS)
    with pytest.raises(ValueError, match="unknown tasks"):
        benchmark.score_model(tiny_model, ITEMS, device="cpu", tasks=["mmlu"])


def _config() -> dict:
    import yaml

    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def _problems(cfg: dict) -> str:
    from mneme.config import ConfigError, validate_config

    with pytest.raises(ConfigError) as err:
        validate_config(cfg, REPO / "config" / "schema.yaml", REPO)
    return str(err.value)


def test_tasks_option_in_config_and_params() -> None:
    from mneme.config import validate_config

    cfg = _config()
    cfg["benchmark"]["tasks"] = ["definition_loglik"]
    cfg["evaluate"]["task"] = "multiple_choice"
    msg = _problems(cfg)
    assert "evaluate.task: 'multiple_choice' is not among benchmark.tasks ['definition_loglik']" in msg
    cfg["evaluate"]["task"] = "definition_loglik"
    cfg = validate_config(cfg, REPO / "config" / "schema.yaml", REPO)
    opts = benchmark_options.kind_options(cfg["benchmark"])
    assert opts["tasks"] == ["definition_loglik"] and "mmlu" not in opts and "lm_eval" not in opts
    cfg["benchmark"]["tasks"] = []
    assert "benchmark.tasks" in _problems(cfg)


def test_mmlu_and_lm_eval_config_checks(tmp_path) -> None:
    from mneme.config import validate_config

    cfg = _config()
    cfg["benchmark"] = {
        "kind": "mmlu",
        "mmlu": {"path": str(tmp_path / "nope.jsonl"), "subjects": ["virolgy"]},
    }
    msg = _problems(cfg)
    assert "evaluate.task: benchmark.kind 'mmlu' scores only the task 'mmlu', got 'definition_loglik'" in msg
    assert "benchmark.mmlu.path: " in msg and "nope.jsonl' not found" in msg
    assert "benchmark.mmlu.subjects: subject 'virolgy' is not in 'config/categories/mmlu.yaml'" in msg

    data = tmp_path / "mmlu.jsonl"
    data.write_text("")
    cfg = _config()
    cfg["benchmark"] = {"kind": "mmlu", "mmlu": {"path": str(data), "n_per_subject": 5}}
    cfg["evaluate"] = {"task": "mmlu"}
    cfg = validate_config(cfg, REPO / "config" / "schema.yaml", REPO)
    opts = benchmark_options.kind_options(cfg["benchmark"])
    assert set(opts) == {"kind", "seed", "batch_size", "mmlu"} and opts["mmlu"]["k_shot"] == 0
    inputs = benchmark_options.kind_inputs(cfg["benchmark"], "smollm2", "results/models/smollm2", lambda p: p)
    assert inputs == {
        "model": "results/models/smollm2",
        "mmlu_categories": "config/categories/mmlu.yaml",
        "mmlu_data": str(data),
    }

    results = tmp_path / "base.json"
    results.write_text("{}")
    cfg = _config()
    cfg["benchmark"] = {"kind": "lm_eval", "lm_eval": {"files": {"smollm2": str(results)}}}
    cfg["evaluate"] = {"task": "lm_eval"}
    msg = _problems(cfg)
    assert "benchmark.lm_eval.files: no results file for model 'smollm2-bio-rmu'" in msg
    assert "evaluate.test: 'bootstrap' needs item-level scores" in msg
    cfg["benchmark"]["lm_eval"]["files"]["smollm2-bio-rmu"] = str(tmp_path / "missing.json")
    assert "benchmark.lm_eval.files.smollm2-bio-rmu: " in _problems(cfg)
    cfg["benchmark"]["lm_eval"]["files"]["smollm2-bio-rmu"] = str(results)
    cfg["evaluate"]["test"] = "two_proportion"
    cfg = validate_config(cfg, REPO / "config" / "schema.yaml", REPO)
    inputs = benchmark_options.kind_inputs(cfg["benchmark"], "smollm2", "results/models/smollm2", lambda p: p)
    assert inputs == {"results": str(results), "mmlu_categories": "config/categories/mmlu.yaml"}  # no model
    assert "files" not in benchmark_options.kind_options(cfg["benchmark"])["lm_eval"]
