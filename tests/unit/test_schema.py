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
    assert "interpret: unknown key(s) 'top_kk'; allowed keys: backend," in msg
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


def test_each_model_gets_the_defaults_of_its_own_source_only():
    """The schema's allOf if/then per `source` (and per organism `method`) fills only that branch."""
    from mneme.schema import apply_defaults, load_schema

    models = {
        "hub": {"source": "hub", "id": "org/model"},
        "tiny": {"source": "tiny"},
        "ga": {"source": "organism", "base": "tiny", "method": "gradient_ascent"},
        "ft": {"source": "organism", "base": "tiny", "method": "finetune", "options": {"steps": 7}},
    }
    apply_defaults(models, load_schema()["properties"]["models"], root=load_schema())
    assert models["hub"] == {
        "source": "hub",
        "id": "org/model",
        "revision": "main",
        "trust_remote_code": False,
    }
    assert models["tiny"]["hidden_size"] == 64 and "revision" not in models["tiny"]
    assert models["ga"]["options"] == defaults_of_method("gradient_ascent")
    assert models["ft"]["options"] == {**defaults_of_method("finetune"), "steps": 7}
    assert "seed" not in models["ga"] and "seed" in models["ga"]["options"]


def defaults_of_method(method: str) -> dict:
    from mneme.organism_options import method_schema
    from mneme.schema import filled_from

    return filled_from(method_schema(method), {}, "options")


def test_schema_branches_name_the_key_and_the_source():
    """Required keys per source, a key of another source, an unknown key, an option of the wrong
    method: each named, all at once."""
    from mneme.config import schema_problems
    from mneme.schema import load_schema

    cfg = {
        "models": {
            "h": {"source": "hub", "seed": 3, "revision": 5},
            "t": {"source": "tiny", "depth": 2},
            "o": {"source": "organism", "base": "t", "method": "finetune", "options": {"alpha": 1.0}},
            "x": {"source": "organism", "method": "rmu"},
        },
        "pairs": {"p": {"base": "t", "finetuned": "o", "corpus": "c"}},
        "corpora": {"c": {"sources": [{"kind": "gcide"}]}},
    }
    msg = schema_problems(cfg, load_schema())
    assert "models.h.id: required for source 'hub'" in msg
    assert "models.h.seed: only used with source 'tiny', but source is 'hub'" in msg
    assert "models.h.revision: expected string, got 5" in msg
    assert any(m.startswith("models.t: unknown key(s) 'depth'; allowed keys: hidden_size,") for m in msg)
    assert any(
        m.startswith("models.o.options: unknown key(s) 'alpha'; allowed keys: batch_size,") for m in msg
    )
    assert "models.x.base: required for source 'organism'" in msg
    # an own key of a failing branch is reported by that branch only, not as an unknown key
    assert not any("models.h" in m and "'revision'" in m for m in msg)
    assert not any(m.startswith("models.o: ") for m in msg)
