"""Config validation: every bad input names its key and what was expected."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from mneme.config import ConfigError, apply_defaults, corpus_tokenizer, validate_config
from mneme.models import check_pair, prepare_model

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "config" / "schema.yaml"


def default_config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def problems(cfg: dict) -> str:
    with pytest.raises(ConfigError) as err:
        validate_config(cfg, SCHEMA, REPO)
    return str(err.value)


def test_default_config_is_valid_and_gets_defaults():
    cfg = validate_config(default_config(), SCHEMA, REPO)
    assert cfg["activations"]["skip_first"] == 1
    assert cfg["corpora"]["gcide-diffing"]["add_bos"] is True
    # defaults of other sources are not spilled into a spec
    assert "hidden_size" not in cfg["models"]["smollm2"]
    assert corpus_tokenizer(cfg, "gcide-diffing") == "smollm2"


def test_unknown_key_is_named_with_allowed_keys():
    cfg = default_config()
    cfg["activations"]["n_shard"] = 3
    msg = problems(cfg)
    assert "activations: unknown key(s) 'n_shard'" in msg and "n_shards" in msg


def test_unknown_top_level_section():
    cfg = default_config()
    cfg["crosscodr"] = {}
    assert "(top level): unknown key(s) 'crosscodr'" in problems(cfg)


def test_wrong_type_names_key():
    cfg = default_config()
    cfg["pairs"]["bio-rmu"]["layer"] = "fifteen"
    assert "pairs.bio-rmu.layer: expected integer, got 'fifteen'" in problems(cfg)


def test_bad_enum():
    cfg = default_config()
    cfg["activations"]["dtype"] = "float8"
    assert "activations.dtype: 'float8' is not one of" in problems(cfg)


def test_layer_out_of_range_for_packaged_model():
    cfg = default_config()
    cfg["pairs"]["bio-rmu"]["layer"] = 30
    msg = problems(cfg)
    assert (
        "pairs.bio-rmu.layer: 30 is out of range for model 'smollm2' with 30 blocks (expected 0..29)" in msg
    )


def test_unknown_category():
    cfg = default_config()
    cfg["models"]["smollm2-bio-rmu"]["forget_categories"] = ["biolgy"]
    assert "models.smollm2-bio-rmu.forget_categories: unknown category 'biolgy'" in problems(cfg)


def test_missing_local_path(tmp_path):
    cfg = default_config()
    cfg["models"]["smollm2"] = {"source": "local", "path": str(tmp_path / "nowhere")}
    assert "models.smollm2.path:" in problems(cfg)


def test_missing_required_key_for_source():
    cfg = default_config()
    cfg["models"]["smollm2"] = {"source": "hub"}
    assert "models.smollm2.id: required for source 'hub'" in problems(cfg)


def test_key_of_another_source_is_flagged():
    cfg = default_config()
    cfg["models"]["smollm2"]["path"] = "/tmp"
    assert "models.smollm2.path: only used with source 'local', but source is 'packaged'" in problems(cfg)


def test_pair_with_unknown_model_and_corpus():
    cfg = default_config()
    cfg["pairs"]["bio-rmu"]["finetuned"] = "nope"
    cfg["pairs"]["bio-rmu"]["corpus"] = "nocorpus"
    msg = problems(cfg)
    assert "pairs.bio-rmu.finetuned: unknown model 'nope'" in msg
    assert "pairs.bio-rmu.corpus: unknown corpus 'nocorpus'" in msg


def test_unknown_gcide_part_and_bad_fractions():
    cfg = default_config()
    cfg["corpora"]["gcide-diffing"]["sources"][0]["part"] = "difing"
    cfg["gcide"]["parts"] = {"organism": 0.5, "benchmark": 0.2, "diffing": 0.5}
    msg = problems(cfg)
    assert "corpora.gcide-diffing.sources[0].part: unknown part 'difing'" in msg
    assert "gcide.parts: fractions must sum to 1" in msg


def test_all_problems_reported_at_once():
    cfg = default_config()
    cfg["pairs"]["bio-rmu"]["layer"] = 99
    cfg["models"]["smollm2-bio-rmu"]["forget_categories"] = ["x"]
    msg = problems(cfg)
    assert "layer" in msg and "unknown category 'x'" in msg


def test_apply_defaults_nested_lists():
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "array", "items": {"type": "object", "properties": {"b": {"default": 3}}}}
        },
    }
    cfg = {"a": [{}, {"b": 1}]}
    apply_defaults(cfg, schema)
    assert cfg == {"a": [{"b": 3}, {"b": 1}]}


def test_check_pair_rejects_different_tokenizers(tiny_model, tmp_path):
    from conftest import TINY_SPEC

    other = prepare_model("other", {**copy.deepcopy(TINY_SPEC), "vocab_size": 600}, tmp_path / "other")
    assert other["vocab_size"] != 512
    with pytest.raises(ValueError, match="tokenizers of 'tiny' and 'other' differ"):
        check_pair(tiny_model, str(tmp_path / "other"), "p")
    assert check_pair(tiny_model, tiny_model, "p")["ok"]


def test_layer_checked_from_prepared_model_card(tmp_path):
    """A hub model's depth is unknown offline until prepare_model has written its card."""
    from conftest import TINY_SPEC

    cfg = default_config()
    cfg["models"]["smollm2"] = {"source": "hub", "id": "org/not-cached-model"}
    cfg["pairs"]["bio-rmu"]["layer"] = 6
    validate_config(copy.deepcopy(cfg), SCHEMA, REPO, results_dir=tmp_path)  # unknown depth: deferred
    prepare_model("smollm2", dict(TINY_SPEC), tmp_path / "models" / "smollm2")  # a card saying 4 blocks
    assert "pairs.bio-rmu.layer: 6 is out of range for model 'smollm2' with 4 blocks" in str(
        pytest.raises(ConfigError, validate_config, cfg, SCHEMA, REPO, results_dir=tmp_path).value
    )


def test_interpret_needs_a_known_explainer_model():
    cfg = default_config()
    cfg["interpret"]["vllm"]["model"] = "nope"
    cfg["categories"] = {"methods": ["embedding"], "predict_with": "provenance"}
    msg = problems(cfg)
    assert (
        "interpret.vllm.model: backend 'vllm' needs the explainer model's name in `models`, got 'nope'" in msg
    )
    assert "categories.predict_with: 'provenance' is not among categories.methods" in msg


def test_bad_organism_option_is_caught_before_any_job():
    cfg = default_config()
    cfg["models"]["smollm2-bio-rmu"]["options"] = {"stepz": 3}
    assert "models.smollm2-bio-rmu.options: unknown key(s) 'stepz'; allowed keys: alpha," in problems(cfg)


def test_attribution_schema_defaults_are_attributes_defaults():
    import inspect

    from mneme.attribution import attribute

    props = yaml.safe_load(SCHEMA.read_text())["properties"]["attribution"]["properties"]
    params = inspect.signature(attribute).parameters
    shared = set(props) & set(params)
    assert shared >= {"mode", "target", "z_threshold", "z_cap", "min_contexts", "novelty_cos"}
    for name in shared:
        assert props[name]["default"] == params[name].default, name


def test_evaluate_schema_keys_are_evaluate_pair_arguments():
    import inspect

    from mneme.evaluation import evaluate_pair

    props = yaml.safe_load(SCHEMA.read_text())["properties"]["evaluate"]["properties"]
    params = inspect.signature(evaluate_pair).parameters
    assert set(props) <= set(params)
    for name, spec in props.items():
        assert spec["default"] == params[name].default, name
