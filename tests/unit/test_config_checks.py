"""Issue 14, "Nothing wrong passes silently": every bad config is rejected before any job runs,
with a message naming the key (or the file and line) and what was expected.

Table-driven: each case edits a copy of a valid config (config/config.yaml, with the vLLM Python
pointed at this interpreter so the table does not depend on `make vllm-env`) and names the
substring the ConfigError must contain. Everything here is fast: no model is loaded.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from mneme.config import ConfigError, duplicate_key_problems, validate_config

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "config" / "schema.yaml"
GCIDE_CATEGORIES = REPO / "config" / "categories" / "gcide.yaml"
MMLU_CATEGORIES = REPO / "config" / "categories" / "mmlu.yaml"


def base_config() -> dict:
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["interpret"]["vllm"]["python"] = sys.executable
    return cfg


def validate(cfg: dict, tmp_path: Path, **kw) -> dict:
    # an empty results dir: what is known about a model comes from its spec, not from cards
    # that happen to lie in the checkout's results/
    return validate_config(cfg, SCHEMA, REPO, results_dir=tmp_path / "results", **kw)


def message(cfg: dict, tmp_path: Path, **kw) -> str:
    with pytest.raises(ConfigError) as err:
        validate(cfg, tmp_path, **kw)
    return str(err.value)


def write(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line of the nth line containing ``needle``."""
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if needle in line]
    return hits[nth - 1]


# --------------------------------------------------------------------------- edits


def set_key(dotted: str, value) -> Callable:
    def edit(cfg, tmp):
        *parents, last = dotted.split(".")
        node = cfg
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    return edit


def both(*edits) -> Callable:
    def edit(cfg, tmp):
        out = {}
        for e in edits:
            out.update(e(cfg, tmp) or {})
        return out

    return edit


def tiny_models(cfg, tmp):
    """The default pair on a tiny random Llama (d_model 64, 4 blocks, 2048 positions)."""
    cfg["models"]["smollm2"] = {"source": "tiny", "hidden_size": 64, "num_hidden_layers": 4}
    cfg["pairs"]["bio-rmu"]["layer"] = 2


def local_model(cfg, tmp):
    """The default pair's base as a local checkpoint whose config.json allows 256 positions."""
    ckpt = tmp / "ckpt"
    ckpt.mkdir(exist_ok=True)
    (ckpt / "config.json").write_text(
        json.dumps({"hidden_size": 32, "num_hidden_layers": 4, "max_position_embeddings": 256})
    )
    cfg["models"]["smollm2"] = {"source": "local", "path": str(ckpt)}
    cfg["pairs"]["bio-rmu"]["layer"] = 2


def corpus(**kw) -> Callable:
    def edit(cfg, tmp):
        cfg["corpora"]["gcide-diffing"].update(kw)

    return edit


def dup_config_file(cfg, tmp):
    """The default config file with crosscoder.k given twice."""
    text = (REPO / "config" / "config.yaml").read_text().replace("  k: 32\n", "  k: 32\n  k: 64\n")
    return {"config_files": [write(tmp, "config.yaml", text)]}


def dup_in_list_item(cfg, tmp):
    text = (
        (REPO / "config" / "config.yaml")
        .read_text()
        .replace("        part: diffing\n", "        part: diffing\n        part: organism\n")
    )
    return {"config_files": [write(tmp, "config.yaml", text)]}


def dup_json_config(cfg, tmp):
    return {"config_files": [write(tmp, "extra.json", '{"crosscoder": {"k": 16, "k": 8}}')]}


def gcide_file(text_or_edit) -> Callable:
    """gcide.categories pointing at a copy of the GCIDE category file, edited."""

    def edit(cfg, tmp):
        text = GCIDE_CATEGORIES.read_text()
        text = text_or_edit(text) if callable(text_or_edit) else text_or_edit
        cfg["gcide"]["categories"] = write(tmp, "cats.yaml", text)

    return edit


def mapping_file(text: str) -> Callable:
    def edit(cfg, tmp):
        cfg.setdefault("categories", {})["file"] = write(tmp, "mapping.yaml", text)

    return edit


def mmlu_benchmark(text_edit=None) -> Callable:
    def edit(cfg, tmp):
        cfg["benchmark"] = {"kind": "mmlu"}
        cfg["evaluate"]["task"] = "mmlu"
        if text_edit is not None:
            cfg["benchmark"]["mmlu"] = {
                "categories": write(tmp, "mmlu.yaml", text_edit(MMLU_CATEGORIES.read_text()))
            }

    return edit


DUP_TAG = lambda t: t.replace('tags: ["Chem.", ', 'tags: ["Zool", "Chem.", ')  # noqa: E731
NO_TAGS = lambda t: t.replace('    tags: ["Zool.", "Bot.", "Biol.", "Physiol."]\n', "")  # noqa: E731
DUP_CATEGORY = lambda t: t.replace("\n  chemistry:\n", "\n  biology:\n", 1)  # noqa: E731
MALFORMED = lambda t: t.replace("  chemistry:\n", "  chemistry: [\n", 1)  # noqa: E731
DUP_SUBJECT = lambda t: t.replace(  # noqa: E731
    "subjects: [college_chemistry,", "subjects: [virology, college_chemistry,"
)

# (description, edit of the valid config, substring the error must contain)
CASES: list[tuple[str, Callable, str]] = [
    # 1. k against the dictionary size
    ("k above 8 x 576 (packaged SmolLM2)", set_key("crosscoder.k", 5000), "crosscoder.k: 5000 exceeds the dictionary size 4608"),
    ("k above 8 x 64 (tiny spec)", both(tiny_models, set_key("crosscoder.k", 600)), "crosscoder.k: 600 exceeds the dictionary size 512"),
    ("k below 1", set_key("crosscoder.k", 0), "crosscoder.k: 0 is less than the minimum of 1"),
    ("k_anneal_start above the dictionary", both(tiny_models, set_key("crosscoder.k_anneal_start", 1000)), "crosscoder.k_anneal_start: 1000 exceeds the dictionary size 512"),
    # 2. context_len against the model's positions
    ("context_len above SmolLM2's 8192", corpus(context_len=16384, n_tokens=2_000_000), "corpora.gcide-diffing.context_len: 16384 is beyond the max_position_embeddings 8192"),
    ("context_len above tiny's 2048", both(tiny_models, corpus(context_len=4096, n_tokens=400_000)), "corpora.gcide-diffing.context_len: 4096 is beyond the max_position_embeddings 2048"),
    ("context_len above a local config.json", both(local_model, corpus(context_len=512)), "corpora.gcide-diffing.context_len: 512 is beyond the max_position_embeddings 256"),
    # 3. shards against contexts
    ("more shards than contexts", both(corpus(n_tokens=256), set_key("activations.n_shards", 3)), "activations.n_shards: 3 shards for the 2 contexts of corpus 'gcide-diffing'"),
    ("a shard left empty", both(corpus(n_tokens=640), set_key("activations.n_shards", 4)), "activations.n_shards: 4 shards of 2 contexts"),
    ("skip_first past the context", set_key("activations.skip_first", 127), "activations.skip_first: 127 leaves no stored position"),
    # 4. duplicate keys in YAML files
    ("config file with crosscoder.k twice", dup_config_file, "config.yaml:{line}: duplicate key 'k' in crosscoder"),
    ("config file with a key twice in a list item", dup_in_list_item, "duplicate key 'part' in corpora.gcide-diffing.sources[0]"),
    ("JSON config file with a key twice", dup_json_config, "extra.json: duplicate key 'k'"),
    ("category file with a category twice", gcide_file(DUP_CATEGORY), "gcide.categories: {tmp}/cats.yaml:{line}: duplicate key 'biology' in categories"),
    # 5. crosscoder cross-key checks done inside the training job until now
    ("k_anneal_start below k", set_key("crosscoder.k_anneal_start", 8), "crosscoder.k_anneal_start: 8 is below crosscoder.k 32"),
    ("decay_start not after warmup", set_key("crosscoder.decay_start", 100), "crosscoder.decay_start: 100 must come after crosscoder.warmup_steps 100"),
    ("n_tokens below one batch", set_key("crosscoder.n_tokens", 1000), "crosscoder.n_tokens: 1000 is less than one batch"),
    ("val_tokens leaving no training rows", corpus(n_tokens=20_000), "crosscoder.val_tokens: 20000 held-out rows leave no training rows for pair 'bio-rmu'"),
    ("epochs .inf", set_key("crosscoder.epochs", float("inf")), "crosscoder.epochs: inf is not a finite number"),
    ("lr .nan", set_key("crosscoder.lr", float("nan")), "crosscoder.lr: nan is not a finite number"),
    ("a NaN fraction (passes the sum check)", set_key("gcide.parts.organism", float("nan")), "gcide.parts.organism: nan is not a finite number"),
    # 6. interpreter, devices, category files
    ("vLLM Python missing", set_key("interpret.vllm.python", "/nowhere/.venv-vllm/bin/python"), "interpret.vllm.python: '/nowhere/.venv-vllm/bin/python' does not exist"),
    ("unknown crosscoder device", set_key("crosscoder.device", "gpu"), "crosscoder.device: 'gpu' is not allowed (auto = CUDA when present, else CPU (float32); or cpu, cuda, cuda:N, mps.)"),
    ("vLLM device with an index", set_key("interpret.vllm.device", "cuda:1"), "interpret.vllm.device: 'cuda:1' is not one of ['auto', 'cpu', 'cuda']"),
    ("embedding device auto", set_key("categories.embedding.device", "auto"), "categories.embedding.device: 'auto' is not allowed (Device of the embedding model: cpu, cuda, cuda:N or mps.)"),
    ("unknown benchmark category", set_key("benchmark.categories", ["biology", "biolgy"]), "benchmark.categories: unknown category 'biolgy'"),
    ("tag in two categories", gcide_file(DUP_TAG), "categories.chemistry.tags: tag 'Zool' duplicates 'Zool.' in categories.biology"),
    ("category file is a list", gcide_file("- biology\n- law\n"), "gcide.categories: {tmp}/cats.yaml: expected a mapping with `categories:`"),
    ("category without tags", gcide_file(NO_TAGS), "gcide.categories: {tmp}/cats.yaml: categories.biology: has no 'tags'"),
    ("malformed category file", gcide_file(MALFORMED), "gcide.categories: {tmp}/cats.yaml:{line}: malformed YAML"),
    ("mapping file is a list", mapping_file("- biology\n"), "categories.file: {tmp}/mapping.yaml: expected a mapping"),
    ("mapping category named none", mapping_file("categories:\n  none: {description: x}\n"), "categories.file: {tmp}/mapping.yaml: categories.none: 'none' is reserved"),
    ("MMLU subject in two categories", mmlu_benchmark(DUP_SUBJECT), "benchmark.mmlu.categories: {tmp}/mmlu.yaml: categories.chemistry.subjects: subject 'virology' is also in categories.biology"),
    # 7. and 8.
    ("OpenAI URL without a scheme", both(set_key("interpret.backend", "openai"), set_key("interpret.openai", {"base_url": "localhost:8000/v1", "model": "m"})), "interpret.openai.base_url: 'localhost:8000/v1' is not an http(s) URL"),
    ("embedding model_path missing", set_key("categories.embedding.model_path", "/nowhere/minilm"), "categories.embedding.model_path: '/nowhere/minilm' does not exist"),
    # 9. the general reference needs general text
    ("general reference, hub text only", corpus(sources=[{"kind": "hub", "dataset": "x/y"}]), "evaluate.reference: general compares each category with the 'general' (untagged) text of the corpus, but no source of corpora.gcide-diffing yields 'general' documents"),
    ("general reference, gcide without its general senses", corpus(sources=[{"kind": "gcide", "part": "diffing", "categories": ["biology", "law"]}]), "no source of corpora.gcide-diffing yields 'general' documents"),
    # rejected before issue 14 too
    ("unknown key", set_key("activations.n_shard", 3), "activations: unknown key(s) 'n_shard'"),
    ("layer past the last block", set_key("pairs.bio-rmu.layer", 30), "pairs.bio-rmu.layer: 30 is out of range"),
    ("unknown forget category", set_key("models.smollm2-bio-rmu.forget_categories", ["biolgy"]), "models.smollm2-bio-rmu.forget_categories: unknown category 'biolgy'"),
]  # fmt: skip


def expected_line(desc: str, tmp: Path) -> int | None:
    """The line a file-and-line message must name, found in the file the edit wrote."""
    if desc == "config file with crosscoder.k twice":
        return line_of((tmp / "config.yaml").read_text(), "  k: 64")
    if desc == "category file with a category twice":
        return line_of((tmp / "cats.yaml").read_text(), "  biology:", 2)
    if desc == "malformed category file":
        return line_of((tmp / "cats.yaml").read_text(), "  chemistry: [") + 1
    return None


def test_base_config_is_valid(tmp_path):
    validate(base_config(), tmp_path, config_files=[REPO / "config" / "config.yaml"])


def test_tiny_integration_config_is_valid(tmp_path):
    """No false alarm on the tiny workflow-test config (tiny models, 32-token contexts, 2 shards)."""
    text = (REPO / "tests" / "integration" / "config.yaml").read_text()
    cfg = yaml.safe_load(text.replace("GCIDE_SAMPLE", "/usr/share/dictd/gcide.dict.dz"))
    validate(cfg, tmp_path)


@pytest.mark.parametrize(("desc", "edit", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_config_is_rejected_naming_the_key(desc, edit, expected, tmp_path):
    cfg = base_config()
    kw = edit(cfg, tmp_path) or {}
    expected = expected.format(tmp=tmp_path, line=expected_line(desc, tmp_path))
    assert expected in message(cfg, tmp_path, **kw)


def test_problems_of_different_phases_are_reported_together(tmp_path):
    """A duplicate key and a NaN are reported with a schema error, and with cross-key errors."""
    kw = dup_config_file(cfg := base_config(), tmp_path)
    cfg["crosscoder"]["lr"] = float("nan")
    cfg["activations"]["dtype"] = "float8"  # schema errors: the cross-key checks do not run
    cfg["crosscoder"]["device"] = "gpu"
    msg = message(copy.deepcopy(cfg), tmp_path, **kw)
    assert "duplicate key 'k' in crosscoder" in msg
    assert "crosscoder.lr: nan is not a finite number" in msg
    assert "activations.dtype: 'float8' is not one of" in msg
    assert "crosscoder.device: 'gpu' is not allowed" in msg
    cfg["activations"]["dtype"] = "bfloat16"
    cfg["crosscoder"]["device"] = "cpu"
    cfg["crosscoder"]["k_anneal_start"] = 8
    msg = message(cfg, tmp_path, **kw)
    for part in ("duplicate key 'k'", "crosscoder.lr:", "crosscoder.k_anneal_start:"):
        assert part in msg, part


def test_two_category_file_problems_are_both_reported(tmp_path):
    cfg = base_config()
    no_medicine_tags = lambda t: t.replace('    tags: ["Med.", "Anat.", "Surg.", "Surgery"]\n', "")  # noqa: E731
    gcide_file(lambda t: DUP_TAG(no_medicine_tags(t)))(cfg, tmp_path)
    msg = message(cfg, tmp_path)
    assert "categories.medicine: has no 'tags'" in msg
    assert "categories.chemistry.tags: tag 'Zool' duplicates 'Zool.' in categories.biology" in msg


def test_duplicate_key_problems_format_and_no_false_alarms(tmp_path):
    path = write(
        tmp_path,
        "c.yaml",
        "base: &b {x: 1, y: 2}\n"  # 1
        "other:\n"  # 2
        "  <<: *b\n"  # 3
        "  x: 3\n"  # 4: overrides a merged key, not a duplicate
        "crosscoder:\n"  # 5
        "  k: 16\n"  # 6
        "  lr: 0.1\n"  # 7
        "  k: 32\n"  # 8
        "1: a\n"  # 9
        "'1': b\n",  # 10: another key (a string, not the integer 1)
    )
    assert duplicate_key_problems(path) == [
        f"{path}:8: duplicate key 'k' in crosscoder (also on line 6; the second would silently replace the first)"
    ]
    assert duplicate_key_problems(REPO / "config" / "config.yaml") == []
    bad = write(tmp_path, "bad.yaml", "a: [1, 2\nb: 3\n")
    (problem,) = duplicate_key_problems(bad)
    assert problem.startswith(f"{bad}:") and "malformed YAML" in problem


def test_config_files_are_read_once_and_missing_ones_skipped(tmp_path):
    kw = dup_config_file(cfg := base_config(), tmp_path)
    files = kw["config_files"] * 2 + [str(tmp_path / "absent.yaml")]
    msg = message(cfg, tmp_path, config_files=files)
    assert msg.count("duplicate key 'k' in crosscoder") == 1


def test_a_stale_card_does_not_block_a_changed_tiny_spec(tmp_path):
    """Facts come from the spec first; a card of another spec is ignored."""
    cfg = base_config()
    tiny_models(cfg, tmp_path)
    cfg["models"]["smollm2"]["hidden_size"] = 256
    cfg["crosscoder"]["k"] = 1024  # fits 8 x 256, not 8 x 64
    card_dir = tmp_path / "results" / "models" / "smollm2"
    card_dir.mkdir(parents=True)
    (card_dir / "mneme_model.json").write_text(
        json.dumps({"spec": {"source": "tiny", "hidden_size": 64}, "hidden_size": 64, "weights": "."})
    )
    validate(cfg, tmp_path)


def test_hub_model_facts_from_a_matching_card(tmp_path):
    """A hub model not in the HF cache: its prepared card and config.json tell d_model and positions."""
    cfg = base_config()
    cfg["models"]["smollm2"] = {"source": "hub", "id": "org/not-cached-model"}
    validate(copy.deepcopy(cfg), tmp_path)  # nothing known: deferred to the jobs
    card_dir = tmp_path / "results" / "models" / "smollm2"
    card_dir.mkdir(parents=True)
    spec = {"source": "hub", "id": "org/not-cached-model", "revision": "main", "trust_remote_code": False}
    weights = tmp_path / "snapshot"
    weights.mkdir()
    (weights / "config.json").write_text(json.dumps({"hidden_size": 2, "max_position_embeddings": 64}))
    (card_dir / "mneme_model.json").write_text(
        json.dumps({"spec": spec, "hidden_size": 2, "num_hidden_layers": 30, "weights": str(weights)})
    )
    msg = message(cfg, tmp_path)
    assert "crosscoder.k: 32 exceeds the dictionary size 16" in msg
    assert "corpora.gcide-diffing.context_len: 128 is beyond the max_position_embeddings 64" in msg


def test_relative_category_file_is_found_from_the_workflow_dir(tmp_path, monkeypatch):
    """Category paths keep resolve_path's rule (working directory, then workflow directory)."""
    monkeypatch.chdir(tmp_path)
    validate(base_config(), tmp_path)
