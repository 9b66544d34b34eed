"""Explainer, detection and classification prompts: exact rendering and robust parsing."""

from __future__ import annotations

import pytest

from mneme.explainer_prompts import (
    DEFAULT_SYSTEM_PROMPT,
    EXPLANATION_MARKER,
    Example,
    PromptConfig,
    activation_list,
    build_classify_prompt,
    build_detection_prompts,
    build_explainer_prompt,
    detection_items,
    detection_metrics,
    highlight,
    parse_category,
    parse_detection,
    parse_explanation,
    prompt_hash,
    scale_activation,
)


class ToyTokenizer:
    """Token id i decodes to VOCAB[i]; id 0 is a special token."""

    VOCAB = ["<s>", "The", " cat", " sat", " on", " the", " mat", "A", " dog", "\n", "ran"]
    all_special_ids = [0]

    def decode(self, ids):
        return "".join(self.VOCAB[i] for i in ids)

    def __len__(self):
        return len(self.VOCAB)


TOK = ToyTokenizer()
EX1 = Example.of([1, 2, 3, 4, 5, 6], [0.0, 2.0, 3.0, 0.5, 0.0, 4.0])
EX2 = Example.of([0, 7, 8, 9, 10], [0.0, 1.0, 0.2, 0.0, 2.0])


def test_explainer_prompt_matches_hand_written():
    messages = build_explainer_prompt([EX1, EX2], TOK, {"n_examples": 5})
    # max over the shown examples is 4.0: levels ceil(10*a/4)
    expected_user = (
        'Example 1: The<< cat sat>> on the<< mat>>\nActivations: (" cat" : 5), (" sat" : 8), (" mat" : 10)'
        "\n\n"
        'Example 2: <<A>> dog\\n<<ran>>\nActivations: ("A" : 3), ("ran" : 5)'
    )
    assert messages == [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": expected_user},
    ]
    assert EXPLANATION_MARKER in DEFAULT_SYSTEM_PROMPT


def test_prompt_options_examples_system_and_scale():
    messages = build_explainer_prompt(
        [EX1, EX2], TOK, {"n_examples": 1, "system_prompt": "Be brief.", "show_activations": False}, 8.0
    )
    assert messages[0]["content"] == "Be brief."
    assert messages[1]["content"] == "Example 1: The<< cat sat>> on the<< mat>>"
    # an explicit latent maximum rescales the levels
    listed = activation_list([" cat", " mat"], [2.0, 4.0], max_latent_activation=8.0)
    assert listed == '(" cat" : 3), (" mat" : 5)'
    with pytest.raises(ValueError, match="unknown key"):
        PromptConfig.from_dict({"n_exampels": 3})
    with pytest.raises(ValueError, match="no examples"):
        build_explainer_prompt([], TOK)


def test_highlight_merges_runs_and_uses_per_example_threshold():
    toks = ["a", "b", "c", "d", "e"]
    assert highlight(toks, [1.0, 1.0, 0.0, 1.0, 1.0]) == "<<ab>>c<<de>>"
    assert highlight(toks, [0.0, 0.0, 0.0, 0.0, 10.0]) == "abcd<<e>>"
    # strictly greater than 0.3 * max
    assert highlight(toks, [3.0, 3.1, 0.0, 0.0, 10.0]) == "a<<b>>cd<<e>>"
    assert highlight(toks, [0.0] * 5) == "abcde"
    assert highlight(["x\n", "y"], [1.0, 0.0]) == "<<x\\n>>y"
    with pytest.raises(ValueError):
        highlight(toks, [1.0])


def test_scale_and_listing_limit():
    assert scale_activation(4.0, 4.0) == 10
    assert scale_activation(5.0, 4.0) == 10  # clamped
    assert scale_activation(-1.0, 4.0) == 0
    assert scale_activation(0.001, 4.0) == 1  # ceil
    assert scale_activation(2.0, 4.0) == 5
    assert scale_activation(1.0, 0.0) == 0
    toks = [f"t{i}" for i in range(15)]
    listed = activation_list(toks, [1.0] * 15, 1.0, max_listed=10)
    assert listed.count("(") == 10 and listed.startswith('("t0" : 10)') and '"t10"' not in listed


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("Looking at the examples...\n[EXPLANATION]: Words about cats.  ", "Words about cats."),
        ("[EXPLANATION]:Words about cats.", "Words about cats."),
        ("[explanation] : words   about\ncats", "words about cats"),
        ("[EXPLANATION]: first\n[EXPLANATION]: second one", "second one"),
        ("[EXPLANATION]: Nouns for animals.\n\nNote: I am not sure about example 3.", "Nouns for animals."),
        ('[EXPLANATION]: **"Legal terms"**', "Legal terms"),
        ("Reasoning line\n\nThe feature fires on dates.\n", "The feature fires on dates."),
        ("", ""),
        (None, ""),
        ("[EXPLANATION]:", ""),
    ],
)
def test_parse_explanation(answer, expected):
    assert parse_explanation(answer) == expected


def test_detection_metrics_on_hand_made_judgments():
    labels = [True, True, True, False, False]
    preds = [True, False, None, True, False]  # None (unreadable) counts as wrong: a false negative here
    m = detection_metrics(labels, preds)
    assert (m["tp"], m["fn"], m["fp"], m["tn"], m["n_unparsed"]) == (1, 2, 1, 1, 1)
    assert m["recall"] == pytest.approx(1 / 3)
    assert m["precision"] == pytest.approx(1 / 2)
    assert m["balanced_accuracy"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert m["f1"] == pytest.approx(0.4)
    perfect = detection_metrics([True, False], [True, False])
    assert perfect["balanced_accuracy"] == perfect["f1"] == 1.0
    none_predicted = detection_metrics([True, False], [False, False])
    assert none_predicted["precision"] == 0.0 and none_predicted["f1"] == 0.0
    assert none_predicted["balanced_accuracy"] == 0.5
    with pytest.raises(ValueError):
        detection_metrics([True], [])


@pytest.mark.parametrize(
    "answer, n, expected",
    [
        ("[1, 0, 1]", 3, [True, False, True]),
        ("Thinking [1,0] ... final: [0, 0, 1]", 3, [False, False, True]),
        ("['1', '0']", 2, [True, False]),
        ("[1, 0]", 3, [True, False, None]),
        ("1 0 1 1", 3, [True, False, True]),
        ("[yes, no]", 2, [None, None]),
        ("", 2, [None, None]),
    ],
)
def test_parse_detection(answer, n, expected):
    assert parse_detection(answer, n) == expected


def test_detection_prompts_batch_and_mix_deterministically():
    pos = [EX1] * 3
    neg = [EX2] * 3
    cfg = {"detection": {"n_positive": 2, "n_negative": 3, "batch_size": 2}}
    items = detection_items(TOK, pos, neg, cfg, seed=7)
    assert len(items) == 5 and sum(i.label for i in items) == 2
    assert items == detection_items(TOK, pos, neg, cfg, seed=7)
    assert all("<<" not in i.text for i in items)
    prompts = build_detection_prompts("cats sitting", items, cfg)
    assert len(prompts) == 3
    assert "Feature description: cats sitting" in prompts[0][1]["content"]
    assert "1. " in prompts[0][1]["content"] and "3. " not in prompts[0][1]["content"]
    assert "Give a list of 1 numbers" in prompts[-1][1]["content"]


def test_classify_prompt_and_parse():
    cats = {"biology": "Living things.", "law": "Courts and statutes."}
    messages = build_classify_prompt("court rulings", cats)
    user = messages[1]["content"]
    assert "- biology: Living things." in user and "- law: Courts and statutes." in user
    assert "- none:" in user and user.rstrip().endswith("Category:")
    labels = list(cats)
    assert parse_category("Biology", labels) == ("biology", 1.0)
    assert parse_category("  law.\n", labels) == ("law", 1.0)
    assert parse_category("Category: law", labels) == ("law", 1.0)
    assert parse_category("none", labels) == ("none", 1.0)
    assert parse_category("I think this is about law, not biology", labels) == ("law", 0.5)
    assert parse_category("lawyer stuff", labels) == ("none", 0.0)  # whole words only
    assert parse_category("ededed", labels) == ("none", 0.0)
    three = ["biology", "law", "music"]
    assert parse_category("Categories:\n- biology: x\n- law: y\n- music: z", three) == ("none", 0.0)
    assert parse_category(None, labels) == ("none", 0.0)


def test_prompt_hash_is_stable_and_sensitive():
    m = build_explainer_prompt([EX1], TOK)
    assert prompt_hash(m, max_tokens=10) == prompt_hash([dict(x) for x in m], max_tokens=10)
    assert prompt_hash(m, max_tokens=10) != prompt_hash(m, max_tokens=11)
