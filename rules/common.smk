# Helpers shared by all stages: paths, per-wildcard config lookups, code inputs.
# No rules here (snakemake --lint flags files that mix rules and functions).
import functools
import os
import re

from mneme.benchmark_options import kind_inputs, kind_options, mmlu_inputs
from mneme.category_file import check as check_category_file
from mneme.category_file import load as load_category_file
from mneme.code_deps import library_modules
from mneme.config import corpus_tokenizer, pair_target, resolve_path
from mneme.contracts import NON_TRAJECTORY_KEYS

RESULTS = "results"
# the one path made by two rules (prepare_model and make_organism); every other path is stated
# in the output of the rule that makes it and read from there (rules.<rule>.output.<key>)
MODEL_DIR = f"{RESULTS}/models/{{model}}"
ORGANISM_MODELS = [m for m, s in config["models"].items() if s["source"] == "organism"]
PREPARED_MODELS = [m for m, s in config["models"].items() if s["source"] != "organism"]


def script_code(script):
    """The library modules a rule script imports (read from the code, see mneme.code_deps), as
    inputs, so that editing one re-runs its rules.

    Paths are relative to the working directory, so the same project moved or copied elsewhere
    does not see "a changed set of input files"; small files are compared by checksum, so a plain
    touch or checkout does not trigger a re-run.
    """
    scripts = os.path.join(workflow.basedir, "workflow_scripts")
    modules = library_modules(os.path.join(scripts, f"{script}.py"), os.path.join(scripts, "mneme"))
    return [os.path.relpath(path) for path in modules]


def section(name, keys=None, exclude=()):
    """The config section ``name``, only ``keys`` (all by default) and without ``exclude``, as a
    param: a rule's params carry exactly the keys that can change its output."""
    sec = config[name]
    return {k: v for k, v in sec.items() if (keys is None or k in keys) and k not in exclude}


def one_of(names):
    """Wildcard regex matching exactly these names (or nothing when the list is empty)."""
    return "|".join(map(re.escape, names)) if names else "(?!x)x"


def model_dir(model):
    return MODEL_DIR.format(model=model)


def logs(path):
    return f"{RESULTS}/logs/{path}"


def explainer_gpus():
    """GPUs of a job that starts the vLLM explainer: its tensor-parallel size (0 without vLLM)."""
    if config["interpret"]["backend"] != "vllm":
        return 0
    return int(config["interpret"]["vllm"]["tensor_parallel_size"])


def benchmarks(path):
    """Snakemake `benchmark:` timing files (results/benchmarks/ holds the model benchmarks)."""
    return f"{RESULTS}/timings/{path}"


def model_spec(wildcards):
    return config["models"][wildcards.model]


def pair_checks(pairs):
    return [rules.check_pair.output.check.format(pair=p) for p in pairs]


def pairs_finetuning_into(model, corpus, layer):
    """The pairs whose fine-tuned store this is. Only they gate its extraction: a base model's
    store and a corpus depend on what they read, so adding a pair re-runs neither."""
    return [
        p
        for p, s in config["pairs"].items()
        if model == s["finetuned"] and s["corpus"] == corpus and int(layer) == s["layer"]
    ]


def uses_gcide_source(corpus):
    return any(s["kind"] == "gcide" for s in config["corpora"][corpus]["sources"])


def gcide_category_path():
    return resolve_path(config["gcide"]["categories"], workflow.basedir)


@functools.cache
def gcide_labels():
    """The category -> GCIDE tag definitions of the category file, as a param.

    Corpus, organism and benchmark read only the tags, so they take the file as an ancient()
    input and these labels as a param: editing a description or examples (used by
    map_categories) re-runs the mapping, not the corpus and everything after it.
    """
    # the config has checked the file wherever a job labels senses with it; elsewhere (say the
    # reverse rule of an MMLU scenario) it is read as far as it goes, and a missing one labels nothing
    parsed, _ = check_category_file(gcide_category_path(), "gcide")
    return parsed.tag_labels() if parsed is not None else {"tags": {}, "general": None}


def gcide_category_input():
    return ancient(gcide_category_path())


def gcide_settings():
    """The gcide section with the category file resolved to a path that exists (and its labels)."""
    return {**config["gcide"], "categories": gcide_category_path(), "labels": gcide_labels()}


def gcide_params(wildcards):
    """GCIDE settings for a corpus that reads GCIDE, else nothing (so edits do not re-run it)."""
    return gcide_settings() if uses_gcide_source(wildcards.corpus) else {}


def gcide_category_file(wildcards):
    if not uses_gcide_source(wildcards.corpus):
        return []
    return [gcide_category_input()]


def corpus_tokenizer_dir(wildcards):
    return model_dir(corpus_tokenizer(config, wildcards.corpus))


def store_shards(wildcards):
    shard = rules.extract_activations.output.shard
    n = config["activations"]["n_shards"]
    return [shard.format(**wildcards, shard=i) for i in range(n)]


def manifest(model, corpus, layer):
    return rules.index_activations.output.manifest.format(model=model, corpus=corpus, layer=layer)


def pair_manifests(pair):
    s = config["pairs"][pair]
    return {role: manifest(s[role], s["corpus"], s["layer"]) for role in ("base", "finetuned")}


def pair_corpus(pair, key):
    """An output of the pair's corpus: ``tokens`` (tokens.zarr) or ``docs`` (docs.parquet)."""
    return rules.sample_corpus.output[key].format(corpus=config["pairs"][pair]["corpus"])


def benchmark_results(pair):
    """The item-level (gcide, mmlu) or per-task (lm_eval) results of the pair's two models."""
    s, results = config["pairs"][pair], rules.benchmark.output.results
    return [results.format(model=s[role]) for role in ("base", "finetuned")]


def reverse_benchmark_inputs(wildcards):
    """The two models' benchmark results (the reference scores) and the built-in items' sources."""
    base, finetuned = benchmark_results(wildcards.pair)
    extra = {"base_results": base, "ft_results": finetuned}
    kind = config["benchmark"]["kind"]
    if kind == "gcide":
        extra["gcide_categories"] = gcide_category_input()
    elif kind == "mmlu":
        extra.update(mmlu_inputs(config["benchmark"], lambda p: resolve_path(p, workflow.basedir)))
    return extra


def reversal_pairs():
    return [p for p, s in config["pairs"].items() if s.get("reverse")]


def report_files(wildcards=None):
    """Per pair, the files the report reads, from the outputs of the rules that make them (the
    crosscoder's files inside its directory)."""
    files = {}
    for pair, spec in config["pairs"].items():

        def out(rule, key, pair=pair):
            return getattr(rules, rule).output[key].format(pair=pair)

        crosscoder = out("train_crosscoder", "crosscoder")
        files[pair] = {
            "latents": out("latent_stats", "latents"),
            "attribution": out("attribute", "attribution"),
            "attribution_summary": out("attribute", "summary"),
            "selected": out("attribute", "selected"),
            "contexts": out("collect_contexts", "contexts"),
            "explanations": out("interpret", "explanations"),
            "categories": out("map_categories", "categories"),
            "evaluation": out("evaluate", "evaluation"),
            "metrics": f"{crosscoder}/metrics.jsonl",
            "validation": f"{crosscoder}/validation.json",
            "crosscoder_config": f"{crosscoder}/config.json",
            "tokenizer": model_dir(spec["base"]),
            "reversal": out("reverse", "result") if pair in reversal_pairs() else None,
        }
    return files


def report_inputs(wildcards):
    """Inputs of the report: every file it reads, with the crosscoder as its directory."""
    inputs = []
    for pair, files in report_files().items():
        inputs.append(rules.train_crosscoder.output.crosscoder.format(pair=pair))
        skip = ("metrics", "validation", "crosscoder_config")
        inputs += [path for key, path in files.items() if path and key not in skip]
    return inputs


def all_targets():
    targets = [rules.evaluate.output.evaluation.format(pair=pair) for pair in config["pairs"]]
    targets += [rules.reverse.output.result.format(pair=pair) for pair in reversal_pairs()]
    return targets + [*rules.report.output, rules.suite.output.table]


def gate(paths):
    """Check files (check_pair) as inputs that order and block jobs but never re-run them.

    A check is re-run when one of its models changes; its consumers must wait for it and must
    not start if it fails, but an unchanged corpus or the other model's store must not be
    recomputed because a check file was rewritten.
    """
    return [ancient(p) for p in paths]


def explainer_dir():
    """Prepared directory of the model the vLLM backend serves."""
    return model_dir(config["interpret"]["vllm"]["model"])


def interpret_inputs(wildcards):
    """The pair's tokenizer, plus the explainer model (vllm) or the corpus tokens (keywords)."""
    backend = config["interpret"]["backend"]
    extra = {"tokenizer": model_dir(config["pairs"][wildcards.pair]["base"])}
    if backend == "vllm":
        extra["explainer"] = explainer_dir()
    elif backend == "keywords":
        extra["tokens"] = pair_corpus(wildcards.pair, "tokens")
    return extra


def map_categories_inputs(wildcards):
    uses_llm = "llm" in config["categories"]["methods"] and config["interpret"]["backend"] == "vllm"
    return {"explainer": explainer_dir()} if uses_llm else {}


def context_mapping_enabled():
    return config["categories"]["contexts"]["enabled"]


def evaluate_inputs(wildcards):
    """The optional inputs of evaluate: the context mapping, when it is enabled."""
    if not context_mapping_enabled():
        return {}
    return {"context_categories": rules.map_contexts.output.context_categories.format(pair=wildcards.pair)}


def suite_inputs(wildcards):
    """Per pair, the files the suite's sensitivity grid re-decides from, as ``<pair>.<name>``."""
    outputs = [
        ("evaluation", rules.evaluate.output.evaluation),
        ("attribution", rules.attribute.output.attribution),
        ("category_mass", rules.latent_stats.output.category_mass),
        ("activation_diff", rules.activation_diff.output.activation_diff),
        ("categories", rules.map_categories.output.categories),
    ]
    if context_mapping_enabled():
        outputs.append(("context_categories", rules.map_contexts.output.context_categories))
    return {f"{p}.{name}": path.format(pair=p) for p in config["pairs"] for name, path in outputs}


@functools.cache
def general_category():
    """The general (untagged) category of the category file: the evaluation's reference."""
    return load_category_file(category_file(), "mapping").general


def category_file():
    return resolve_path(config["categories"]["file"] or config["gcide"]["categories"], workflow.basedir)
