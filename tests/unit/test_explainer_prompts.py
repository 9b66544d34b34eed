"""Explainer, detection and classification prompts: exact rendering and robust parsing."""

from __future__ import annotations

import math

import pytest

from mneme.explainer_prompts import (
    DEFAULT_SYSTEM_PROMPT,
    DEFAULT_YES_NO_SYSTEM_PROMPT,
    EXPLANATION_MARKER,
    DetectionItem,
    Example,
    PromptConfig,
    activation_list,
    build_classify_prompt,
    build_detection_prompts,
    build_explainer_prompt,
    choose_examples,
    detection_items,
    detection_metrics,
    highlight,
    parse_category,
    parse_detection,
    parse_explanation,
    prompt_hash,
    ranked_predictions,
    scale_activation,
    yes_no_score,
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
    messages = build_explainer_prompt([EX1, EX2], TOK, {"n_examples": 5, "few_shot": False})
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
        [EX1, EX2],
        TOK,
        {"n_examples": 1, "system_prompt": "Be brief.", "show_activations": False, "few_shot": False},
        8.0,
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


def test_few_shot_turns_match_hand_written():
    """The worked examples, rendered like a real latent: levels against each made-up latent's max
    (8 for cooking, 9 for the verbs and the colours), highlights against each example's own."""
    messages = build_explainer_prompt([EX1], TOK)
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert messages[1]["content"] == (
        'Example 1: Stir the<< onions>> until golden, then add the<< garlic>>\nActivations: (" onions" : 8), '
        '(" garlic" : 9)\n\nExample 2: She<< baked>> a<< loaf>> of<< rye bread>> for the market\n'
        'Activations: (" baked" : 7), (" loaf" : 4), (" rye" : 5), (" bread" : 10)'
    )
    assert messages[2]["content"] == (
        "[EXPLANATION]: Food and cooking: ingredients, dishes and what is done to them in a kitchen."
    )
    assert messages[3]["content"] == (
        'Example 1: The fox<< ran>> across the field and<< jumped>> the fence\nActivations: (" ran" : 10), '
        '(" jumped" : 8)\n\nExample 2: After lunch they<< walked>> to the harbour\nActivations: (" walked" : 9)'
    )
    assert messages[5]["content"] == (
        'Example 1: a dress of<< deep crimson>> silk\nActivations: (" deep" : 4), (" crimson" : 10)\n\n'
        'Example 2: The sky turned<< pale blue>> at dawn\nActivations: (" pale" : 5), (" blue" : 9)'
    )
    assert messages[6]["content"].startswith("[EXPLANATION]: Names of colours")
    assert messages[7]["content"].startswith("Example 1: The<< cat sat>>")
    # the worked examples follow the prompt options too
    quiet = build_explainer_prompt([EX1], TOK, {"show_activations": False})
    assert quiet[1]["content"].startswith(
        "Example 1: Stir the<< onions>> until golden, then add the<< garlic>>\n\n"
    )


def test_choose_examples_mixes_top_and_quantiles_and_holds_the_rest_out():
    top = [Example.of([1], [10.0 - i]) for i in range(6)]
    quant = [Example.of([2], [0.1 * q]) for q in range(10)]  # weakest quantile first
    shown, held = choose_examples(top, quant, {"n_examples": 5, "examples": "mix"})
    # 3 top + 2 quantile examples spread from the strongest to the weakest
    assert shown == [top[0], top[1], top[2], quant[9], quant[0]]
    assert held == quant[1:9]
    shown, held = choose_examples(top, quant, {"n_examples": 4, "examples": "quantiles"})
    assert shown == [quant[9], quant[6], quant[3], quant[0]] and len(held) == 6
    shown, held = choose_examples(top, quant, {"n_examples": 4, "examples": "top"})
    assert shown == top[:4] and held == quant
    # too few quantile examples: topped up from the top ones
    shown, held = choose_examples(top, quant[:1], {"n_examples": 4, "examples": "quantiles"})
    assert shown == [*top[:3], quant[0]] and held == []
    with pytest.raises(ValueError, match="interpret.prompt.examples"):
        PromptConfig.from_dict({"examples": "best"})


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
        # messy answers of a small explainer
        (  # a sentence looping until the length limit
            "[EXPLANATION]: The act of a plant that is a type of fruit is called a fruit. The act of a plant "
            "that is a type of fruit is called a fruit. The act of a",
            "The act of a plant that is a type of fruit is called a fruit.",
        ),
        (  # cut off mid-sentence after a complete one
            "[EXPLANATION]: Words about ships. Mostly sails, masts and the parts of a",
            "Words about ships.",
        ),
        ("[EXPLANATION]: A. B. C. D.", "A. B."),  # at most two sentences
        ("[EXPLANATION]: plants plants plants plants plants", "plants"),
        ("[EXPLANATION]: names of the the the the moths", "names of the moths"),
        ("[EXPLANATION]: a b a b a b a b c", "a b c"),
        (  # no marker: the prompt's format is not an explanation
            'Example 1: the<< cat>>\nActivations: ("cat" : 10)\nFeline words such as cat and kitten.',
            "Feline words such as cat and kitten.",
        ),
        ("Nouns for birds and their nests", "Nouns for birds and their nests"),  # no marker, no stop
        (  # a numbered list looping: the numbers are not sentences, the loop stops at the repeat
            "1. The act of removing a coin.\n2. The act of removing a coin.\n3. The act of",
            "The act of removing a coin.",
        ),
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
        ("[1, 0, 1", 3, [True, False, True]),  # generation stopped at the closing bracket
    ],
)
def test_parse_detection(answer, n, expected):
    assert parse_detection(answer, n) == expected


def test_detection_prompts_batch_and_mix_deterministically():
    pos = [EX1] * 3
    neg = [EX2] * 3
    cfg = {"detection": {"n_positive": 2, "n_negative": 3, "batch_size": 2, "judge": "list"}}
    items = detection_items(TOK, pos, neg, cfg, seed=7)
    assert len(items) == 5 and sum(i.label for i in items) == 2
    assert items == detection_items(TOK, pos, neg, cfg, seed=7)
    assert all("<<" not in i.text for i in items)
    prompts = build_detection_prompts("cats sitting", items, cfg)
    assert len(prompts) == 3
    assert "Feature description: cats sitting" in prompts[0][1]["content"]
    assert "1. " in prompts[0][1]["content"] and "3. " not in prompts[0][1]["content"]
    assert "Give a list of 1 numbers" in prompts[-1][1]["content"]


def test_yes_no_prompts_one_per_excerpt_with_a_shared_prefix():
    items = [DetectionItem("the cat sat", True), DetectionItem("a dog ran", False)]
    prompts = build_detection_prompts("cats sitting", items, {})  # yes_no is the default judge
    assert len(prompts) == 2
    assert prompts[0][0] == {"role": "system", "content": DEFAULT_YES_NO_SYSTEM_PROMPT}
    assert prompts[1][1]["content"] == (
        "Feature description: cats sitting\n\nExcerpt: a dog ran\n\n"
        "Is the feature active in this excerpt? Answer Yes or No."
    )


def test_yes_no_score_pools_spellings_and_bounds_a_missing_answer():
    lse = math.log(math.exp(-0.5) + math.exp(-2.0))
    assert yes_no_score({" Yes": -0.5, "yes": -2.0, " No": -1.0}) == pytest.approx(lse + 1.0)
    # " No" absent: its log-probability is at most the smallest listed one (-4.0)
    assert yes_no_score({"Yes.": -0.1, " the": -4.0}) == pytest.approx(-0.1 + 4.0)
    assert yes_no_score({" NO": -0.2, " Yes": -3.0}) == pytest.approx(-2.8)
    assert yes_no_score({" maybe": -0.1, " the": -1.0}) is None
    assert yes_no_score({}) is None


def test_ranked_predictions_take_the_top_n_positive_scores():
    assert ranked_predictions([0.5, -1.0, 2.0, None, 0.1], 2) == [1.0, 0.0, 1.0, None, 0.0]
    # ties at the cut share the places left: 1 place for 3 items tied at 0.5
    assert ranked_predictions([2.0, 0.5, 0.5, 0.5, -1.0], 2) == [1.0, 1 / 3, 1 / 3, 1 / 3, 0.0]
    assert ranked_predictions([1.0, 1.0, 1.0, 1.0], 2) == [0.5] * 4
    tied = detection_metrics([True, True, False, False], ranked_predictions([1.0] * 4, 2))
    assert tied["balanced_accuracy"] == 0.5 and tied["tp"] == 1.0  # everything alike: chance
    labels = [True, True, False, False]
    m = detection_metrics(labels, ranked_predictions([3.0, -1.0, 2.0, -2.0], 2))
    assert m["balanced_accuracy"] == 0.5 and m["tp"] == 1 and m["fp"] == 1  # hand-computed


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
    gen = PromptConfig.from_dict({}).generation()
    assert gen == {
        "max_tokens": 64,
        "temperature": 0.0,
        "stop": ["\n"],
        "min_tokens": 4,
        "repetition_penalty": 1.1,
        "frequency_penalty": 0.0,
    }
    assert prompt_hash(m, **gen) != prompt_hash(
        m, **PromptConfig.from_dict({"repetition_penalty": 1.0}).generation()
    )
