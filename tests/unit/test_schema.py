"""mneme.schema: the schema as the one source of defaults for the library's sections."""

from __future__ import annotations

import pytest

from mneme.categorize import with_defaults as categories_with_defaults
from mneme.explainer_prompts import PromptConfig
from mneme.interpret import with_defaults as interpret_with_defaults
from mneme.schema import defaults, filled


def test_filled_fills_nested_defaults_and_keeps_given_values():
    cfg = filled(
        "interpret", {"top_k": 7, "vllm": {"enforce_eager": True}, "prompt": {"detection": {"seed": 3}}}
    )
    assert cfg["top_k"] == 7 and cfg["backend"] == "vllm"  # given, default
    assert cfg["vllm"]["enforce_eager"] and cfg["vllm"]["max_model_len"] == 4096
    assert cfg["prompt"]["n_examples"] == 20 and cfg["prompt"]["detection"] == {
        **defaults("interpret.prompt.detection"),
        "seed": 3,
    }


def test_filled_names_every_wrong_key():
    with pytest.raises(ValueError) as err:
        filled("interpret", {"top_kk": 1, "backend": "llama", "prompt": {"examples": "best"}})
    msg = str(err.value)
    assert "interpret: unknown key(s) ['top_kk']" in msg
    assert "interpret.backend: 'llama' is not one of" in msg
    assert "interpret.prompt.examples: 'best' is not one of" in msg


def test_the_library_takes_its_defaults_from_the_schema():
    """No module keeps a copy: an empty section becomes exactly the schema's defaults."""
    assert interpret_with_defaults({}) == defaults("interpret")
    assert categories_with_defaults(None) == defaults("categories")
    prompt = PromptConfig.from_dict({}).to_dict()
    assert prompt == defaults("interpret.prompt")
    assert filled("interpret", {}) is not filled("interpret", {})  # a fresh copy every time


def test_organism_options_come_from_the_schema_per_method():
    from mneme.organism_options import method_schema, resolve_options
    from mneme.schema import filled_from

    for method in ("rmu", "gradient_ascent", "finetune"):
        expected = filled_from(method_schema(method), {}, "options")
        if method == "rmu":  # the one derived default
            expected["update_layers"] = [expected["layer"] - 2, expected["layer"] - 1, expected["layer"]]
        assert resolve_options(method, None) == expected, method
    assert resolve_options("gradient_ascent", {})["lr"] == 2e-5
