"""Workflow tests: the real Snakefile on the tiny config, re-run semantics, lint and format."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO, copy_workflow, snakemake_bin, write_gcide_sample

pytestmark = pytest.mark.workflow


def tiny_config(gcide_path: Path) -> dict:
    text = (
        (REPO / "tests" / "integration" / "config.yaml").read_text().replace("GCIDE_SAMPLE", str(gcide_path))
    )
    return yaml.safe_load(text)


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [
        snakemake_bin(),
        "--cores",
        "2",
        "--directory",
        str(workdir),
        "--snakefile",
        str(workdir / "Snakefile"),
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def scheduled(workdir: Path, *args: str) -> dict[str, int]:
    """Jobs a dry run would execute, by rule (from the 'Job stats' table)."""
    out = snakemake(workdir, "-n", *args)
    text = out.stdout + out.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:", 1)[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}


def write_config(workdir: Path, cfg: dict) -> None:
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    """A copy of the workflow run once end to end (as far as the stages exist) on the tiny config."""
    workdir = copy_workflow(tmp_path_factory.mktemp("wf"))
    gcide = write_gcide_sample(workdir / "gcide-sample.dict.gz")
    cfg = tiny_config(gcide)
    write_config(workdir, cfg)
    snakemake(workdir)
    return workdir, cfg


def test_activation_stage_outputs(workflow):
    from mneme.activation_store import PairedStores, row_to_token

    workdir, cfg = workflow
    res = workdir / "results"
    docs = pd.read_parquet(res / "corpus/tiny-gcide/docs.parquet")
    assert {"doc_id", "source", "category", "title", "n_tokens"} <= set(docs.columns)
    assert (docs["source"] == "gcide").all() and docs["category"].nunique() > 1
    pair = PairedStores(
        res / "activations/tiny-base/tiny-gcide/L2/manifest.json",
        res / "activations/tiny-ft/tiny-gcide/L2/manifest.json",
    )
    n_ctx = -(-cfg["corpora"]["tiny-gcide"]["n_tokens"] // 32)
    # BOS is never stored, nor (schema default skip_first 1) the position after it
    first = pair.base.manifest["first_position"]
    assert first == 2 and pair.n_rows == n_ctx * 30 and pair.d_model == 64
    xb, xf = pair.read(0, 100)
    assert np.isfinite(xb).all() and not np.allclose(xb, xf)  # different weights, same tokens
    ctx, pos = row_to_token(np.array([0, 30, pair.n_rows - 1]), first, 32)
    assert ctx.tolist() == [0, 1, n_ctx - 1] and pos.tolist() == [2, 2, 31]
    assert pair.base.manifest["norm"]["scale"] > 0
    assert (res / "logs/extract_activations/tiny-base/tiny-gcide/L2/shard_0.log").read_text().count(
        "tokens/s"
    ) >= 1
    out = snakemake(workdir, "-n")
    assert "Nothing to be done" in out.stdout + out.stderr


def test_crosscoder_stage_outputs(workflow):
    import json

    workdir, cfg = workflow
    out = workdir / "results/tiny/crosscoder"
    conf = json.loads((out / "config.json").read_text())
    assert conf["k"] == 8 and conf["dict_size"] == 256
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics and {"step", "loss", "l0", "lr"} <= set(metrics[-1])
    val = json.loads((out / "validation.json").read_text())
    assert 0 <= val["fvu_base"] < 1 and 0 <= val["fvu_ft"] < 1
    assert not (workdir / "results/tiny/crosscoder.tmp").exists()


def test_config_edits_rerun_only_affected_stages(workflow):
    workdir, cfg = workflow
    layer = {**cfg, "pairs": {"tiny": {**cfg["pairs"]["tiny"], "layer": 1}}}
    write_config(workdir, layer)
    jobs = scheduled(workdir)
    assert (
        jobs.get("extract_activations") == 4 and "sample_corpus" not in jobs and "prepare_model" not in jobs
    )
    seed = {**cfg, "corpora": {"tiny-gcide": {**cfg["corpora"]["tiny-gcide"], "seed": 5}}}
    write_config(workdir, seed)
    jobs = scheduled(workdir)
    assert jobs.get("sample_corpus") == 1 and "prepare_model" not in jobs
    ft = {**cfg, "models": {**cfg["models"], "tiny-ft": {**cfg["models"]["tiny-ft"], "seed": 7}}}
    write_config(workdir, ft)
    jobs = scheduled(workdir)
    # only the changed model is rebuilt and re-extracted; the shared corpus and base stay
    assert (
        jobs.get("prepare_model") == 1
        and jobs.get("extract_activations") == 2
        and "sample_corpus" not in jobs
    )
    cc = {**cfg, "crosscoder": {**cfg["crosscoder"], "k": 6}}
    write_config(workdir, cc)
    jobs = scheduled(workdir)  # a later-stage value: no corpus or extraction job
    assert jobs.get("train_crosscoder") == 1 and not {"sample_corpus", "extract_activations"} & set(jobs)
    write_config(workdir, cfg)
    assert scheduled(workdir) == {}


def test_latent_stage_outputs(workflow):
    import json

    workdir, cfg = workflow
    res = workdir / "results/tiny"
    latents = pd.read_parquet(res / "latents.parquet")
    assert len(latents) == 256 and {"delta", "delta_bin", "freq", "dead"} <= set(latents.columns)
    betas = pd.read_parquet(res / "betas.parquet")
    assert {"nu_r", "nu_eps", "mu_r", "mu_eps"} <= set(betas.columns)
    attribution = pd.read_parquet(res / "attribution.parquet")
    assert set(attribution["direction"]) <= {"amplified", "suppressed", "unchanged", "dead"}
    selected = json.loads((res / "selected_latents.json").read_text())
    contexts = pd.read_parquet(res / "contexts.parquet")
    assert set(contexts["latent"]) <= set(selected) and {"top", "negative"} <= set(contexts["kind"])
    assert json.loads((res / "scaling_cost.json").read_text())["cost_vs_inference"] > 0
    mass = pd.read_parquet(res / "category_mass.parquet")
    assert mass["category"].nunique() > 1


def test_interpretation_stage_outputs(workflow):
    from mneme.interpret import read_table

    workdir, cfg = workflow
    res = workdir / "results/tiny"
    explanations = read_table(res / "explanations.jsonl")
    assert len(explanations) > 0 and explanations["explanation"].str.startswith("[keywords]").all()
    assert (explanations["backend"] == "keywords").all()
    cats = pd.read_parquet(res / "categories.parquet")
    assert set(cats["latent"]) == set(explanations["latent"])
    assert {"category", "category_embedding", "category_provenance"} <= set(cats.columns)
    assert (res / "cache" / "interpret.jsonl").is_file()


def test_benchmark_stage_outputs(workflow):
    workdir, cfg = workflow
    for model in ("tiny-base", "tiny-ft"):
        results = pd.read_parquet(workdir / f"results/benchmarks/{model}/gcide.parquet")
        assert set(results["category"]) == {"biology", "chemistry", "law", "general"}
        assert set(results["task"]) == {"definition_loglik", "multiple_choice"}
    base = pd.read_parquet(workdir / "results/benchmarks/tiny-base/gcide.parquet")
    ft = pd.read_parquet(workdir / "results/benchmarks/tiny-ft/gcide.parquet")
    assert base["item_id"].tolist() == ft["item_id"].tolist()  # both models see the same items


def test_evaluation_output(workflow):
    workdir, cfg = workflow
    result = json.loads((workdir / "results/tiny/evaluation.json").read_text())
    want = {"mneme", "mneme_provenance", "mneme_contexts", "mneme_explanations", "activation_diff"}
    want |= {"decoder_norm_only", "provenance_only", "all_positive", "random_at_prevalence", "oracle"}
    assert want | {"truth_split_half"} <= set(result["predictors"])
    assert {row["category"] for row in result["per_category"]} == {"biology", "chemistry", "law"}
    assert result["target"] == ["biology"] and result["config"]["truth"] == "median"
    for p in result["predictors"].values():
        assert {"all", "side_effects", "direction"} <= set(p["metrics"])
        assert p["metrics"]["side_effects"]["n"] == 2  # chemistry and law
    truth = {r["category"]: r for r in result["ground_truth"]}
    assert {"raw_delta", "raw_affected", "delta", "affected"} <= set(truth["law"])
    assert truth["law"]["reference"] == "median of 2 categories"  # chemistry and law, not the target
    suite = pd.read_csv(workdir / "results/suite.tsv", sep="\t")
    assert set(suite["pair"]) == {"tiny", "mean"} and "mneme" in set(suite["predictor"])
    grid = pd.read_csv(workdir / "results/suite_sensitivity.tsv", sep="\t")
    assert {"provenance", "contexts", "explanations"} == set(grid["route"])
    diff = pd.read_parquet(workdir / "results/tiny/activation_diff.parquet")
    assert {"general", "law"} <= set(diff["category"]) and (diff["mean_rel_diff"] > 0).all()


def run_benchmark(script: str, workdir: Path) -> str:
    """The stdout of ``benchmarks/<script> --results <workdir>/results``."""
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--results", str(workdir / "results")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_suite_tables_script_reads_the_run(workflow):
    """benchmarks/suite_tables.py (the README's tables) is a view of the workflow's files."""
    workdir, _ = workflow
    out = run_benchmark("suite_tables.py", workdir)
    result = json.loads((workdir / "results/tiny/evaluation.json").read_text())
    side = result["predictors"]["mneme"]["metrics"]["side_effects"]
    per_pair = out.split("## Per pair, side effects", 1)[1]
    prov = next(line for line in per_pair.splitlines() if line.startswith("| mneme, provenance route |"))
    f1 = "n/a" if side["f1"] is None else f"{side['f1']:.2f}"
    auroc = "n/a" if side["auroc"] is None else f"{side['auroc']:.2f}"
    assert prov == f"| mneme, provenance route | {f1} / {auroc} |"
    assert "| tiny | biology (" in out and "truth, split half (noise ceiling)" in out
    rank = result["predictors"]["mneme_provenance"]["metrics"]["target"]["rank"]
    own = out.split("## The intervention's own category", 1)[1]
    row = next(line for line in own.splitlines() if line.startswith("| mneme, provenance route |"))
    want = "n/a" if rank is None else f"{rank:.2f}".removesuffix(".00")  # a whole rank: no decimals
    assert row.split(" | ")[1] == want


def test_decision_checks_script_reproduces_the_default(workflow):
    """benchmarks/decision_checks.py re-scores the provenance route from the pair's files: its
    ``default`` variant must give exactly what evaluate wrote."""
    workdir, _ = workflow
    out = run_benchmark("decision_checks.py", workdir)
    metrics = json.loads((workdir / "results/tiny/evaluation.json").read_text())["predictors"][
        "mneme_provenance"
    ]
    side, every = metrics["metrics"]["side_effects"], metrics["metrics"]["all"]
    want = [side["f1"], side["auroc"], every["accuracy"]]
    cells = ["n/a" if v is None else f"{v:.2f}" for v in want]
    row = next(line for line in out.splitlines() if line.startswith("| default |"))
    assert row == "| default | " + " | ".join(cells) + " | n/a | n/a | n/a |"
    for variant in ("reconstruction", "error", "lift", "no_dense", "precision", "stratified"):
        assert any(line.startswith(f"| {variant} |") for line in out.splitlines()), variant
    assert "## Best side-effect F1 of a threshold chosen per pair" in out
    assert any(line.startswith("| mneme_provenance |") for line in out.splitlines())


def test_report_has_every_section(workflow):
    workdir, cfg = workflow
    html = (workdir / "results/report.html").read_text()
    for section in (
        "overview",
        "training",
        "delta",
        "ratios",
        "latents",
        "prediction",
        "metrics",
        "reversal",
    ):
        assert f'id="tiny-{section}"' in html, section
    assert 'id="suite"' in html and "Sensitivity of the mneme routes" in html
    assert html.count("data:image/png;base64,") >= 5  # curves, histogram, scatter, bars, recovery
    assert 'src="http' not in html and "<link" not in html  # self-contained
    summary = pd.read_csv(workdir / "results/summary.tsv", sep="\t")
    assert summary["pair"].tolist() == ["tiny"]
    evaluation = json.loads((workdir / "results/tiny/evaluation.json").read_text())
    assert summary.loc[0, "mneme_accuracy"] == pytest.approx(evaluation["metrics"]["mneme"]["accuracy"])


def test_snakemake_report_includes_ours(workflow, tmp_path):
    import zipfile

    workdir, cfg = workflow
    out = tmp_path / "snakemake-report.zip"
    snakemake(workdir, "--report", str(out))
    archive = zipfile.ZipFile(out)
    stored = {Path(n).name: n for n in archive.namelist() if "/data/raw/" in n}
    assert {"report.html", "summary.tsv"} <= set(stored), archive.namelist()
    ours = (workdir / "results/report.html").read_bytes()
    assert archive.read(stored["report.html"]) == ours


def test_reversal_output(workflow):
    workdir, cfg = workflow
    result = json.loads((workdir / "results/tiny/reversal.json").read_text())
    assert [c["category"] for c in result["categories"]] == ["law"]
    record = result["categories"][0]
    assert record["status"] == "ok", record.get("reason")
    assert record["n_tokens"] <= cfg["reverse"]["token_budget"]
    assert record["n_tokens"] == record["n_contexts"] * cfg["corpora"]["tiny-gcide"]["context_len"]
    for arm in ("targeted", "control"):
        assert record[f"train_{arm}"]["steps"] == cfg["reverse"]["max_steps"]
        assert set(record[f"scores_{arm}"]) == {"biology", "chemistry", "law", "general"}
        assert set(record[f"target_rebound_{arm}"]) == {"biology"}
    assert not set(record["contexts_targeted"]) & set(record["contexts_control"])
    items = pd.read_parquet(workdir / "results/tiny/reversal_items.parquet")
    assert set(items["arm"]) == {"targeted", "control"}


def test_scenarios_pass_a_dry_run(workflow):
    workdir, cfg = workflow
    for scenario in sorted((REPO / "config" / "scenarios").glob("*.yaml")):
        jobs = scheduled(workdir, "--configfile", str(scenario), "--replace-workflow-config")
        assert {"extract_activations", "train_crosscoder", "evaluate", "report"} <= set(jobs), scenario.name


def test_bigger_explainers_pass_a_dry_run_and_rerun_only_interpretation(workflow):
    """config/explainers/*.yaml over a finished run: the new explainer is prepared and only
    interpretation and what reads it would run; the tensor-parallel one asks for its GPUs."""
    workdir, cfg = workflow
    for overlay in sorted((REPO / "config" / "explainers").glob("*.yaml")):
        jobs = scheduled(workdir, "--configfile", str(workdir / "config" / "config.yaml"), str(overlay))
        assert {"prepare_model", "interpret", "map_categories", "evaluate", "report"} <= set(jobs), (
            overlay.name
        )
        assert not {"extract_activations", "train_crosscoder", "latent_stats"} & set(jobs), overlay.name
        assert jobs["prepare_model"] == 1, overlay.name
    # on SLURM (no workstation cap of gpu: 1) the job asks for its tensor-parallel GPUs
    tp = snakemake(
        workdir, "-n", "--workflow-profile", str(workdir / "profiles" / "slurm"),
        "--configfile", str(workdir / "config" / "config.yaml"),
        str(REPO / "config" / "explainers" / "llama-3.1-70b-tp4.yaml"),
    )  # fmt: skip
    interpret = (tp.stdout + tp.stderr).split("rule interpret:", 1)[1].split("rule ", 1)[0]
    assert "gpu=4" in interpret


# Downstream of the attribution: everything that reads attribution.parquet, or something that does.
AFTER_ATTRIBUTION = {"collect_contexts", "interpret", "map_categories", "map_contexts", "evaluate"}
AFTER_ATTRIBUTION |= {"suite", "reverse", "report", "all"}
AFTER_MAPPING = {"evaluate", "suite", "reverse", "report", "all"}


def _edit_config(key: str, value):
    def edit(cfg):
        section, name = key.split(".")
        return {**cfg, section: {**cfg.get(section, {}), name: value}}

    return edit


def _add_pair(cfg):
    models = {**cfg["models"], "tiny-ft2": {**cfg["models"]["tiny-ft"], "seed": 2}}
    pair = {**cfg["pairs"]["tiny"], "finetuned": "tiny-ft2", "reverse": False}
    return {**cfg, "models": models, "pairs": {**cfg["pairs"], "tiny2": pair}}


def _edit_file(relpath: str, edit):
    def apply(workdir):
        path = workdir / relpath
        original = path.read_text()
        path.write_text(edit(original))
        return lambda: path.write_text(original)

    return apply


def _describe_law(text: str) -> str:
    spec = yaml.safe_load(text)
    spec["categories"]["law"]["examples"] = ["courts and judges"]
    return yaml.safe_dump(spec, sort_keys=False)


# (what is edited, the config edit or the file edit, the exact set of rules a re-run schedules)
RERUNS = [
    (
        "add a pair",
        _add_pair,
        None,
        {"prepare_model", "check_pair", "extract_activations", "index_activations", "train_crosscoder"}
        | {"latent_stats", "latent_scaling", "attribute", "activation_diff", "benchmark"}
        | AFTER_ATTRIBUTION - {"reverse"},
    ),
    ("latents.window", _edit_config("latents.window", 6), None, {"collect_contexts"} | AFTER_MAPPING | {"interpret", "map_categories"}),
    ("crosscoder.log_every", _edit_config("crosscoder.log_every", 3), None, set()),
    ("crosscoder.checkpoint_every", _edit_config("crosscoder.checkpoint_every", 7), None, set()),
    ("a category's description", None, _edit_file("config/categories/gcide.yaml", _describe_law), {"map_categories", "map_contexts"} | AFTER_MAPPING),
    ("interpret.prompt", _edit_config("interpret.prompt", {"max_tokens": 20}), None, {"interpret", "map_categories"} | AFTER_MAPPING),
    ("logs.py", None, _edit_file("workflow_scripts/mneme/logs.py", lambda t: t + "\n# an edit\n"), set()),
    ("attribution.py", None, _edit_file("workflow_scripts/mneme/attribution.py", lambda t: t + "\n# an edit\n"), {"attribute"} | AFTER_ATTRIBUTION),
    (
        "extraction.py",
        None,
        _edit_file("workflow_scripts/mneme/extraction.py", lambda t: t + "\n# an edit\n"),
        {"extract_activations", "index_activations", "train_crosscoder", "latent_stats", "latent_scaling"}
        | {"attribute", "activation_diff", "reverse"} | AFTER_ATTRIBUTION,
    ),
]  # fmt: skip


@pytest.mark.parametrize("what, config_edit, file_edit, expected", RERUNS, ids=[r[0] for r in RERUNS])
def test_an_edit_reruns_exactly_its_stages(workflow, what, config_edit, file_edit, expected):
    """After a full run, each edit schedules exactly the rules whose output it can change."""
    workdir, cfg = workflow
    restore = None
    try:
        if config_edit is not None:
            write_config(workdir, config_edit(cfg))
        else:
            restore = file_edit(workdir)
        jobs = scheduled(workdir)
    finally:
        write_config(workdir, cfg)
        if restore:
            restore()
    assert set(jobs) == expected, f"{what}: unexpected {set(jobs) - expected}, missing {expected - set(jobs)}"
    if what == "add a pair":  # the new pair's jobs only: nothing of the existing pair again
        assert jobs["evaluate"] == 1 and jobs["train_crosscoder"] == 1 and jobs["extract_activations"] == 2
    assert scheduled(workdir) == {}


def test_category_tag_edit_reruns_the_corpus(workflow):
    """Corpus, organism and benchmark read only the tags of the category file: a tag edit changes
    the corpus labels (a description edit does not, see RERUNS)."""
    workdir, cfg = workflow
    path = workdir / "config/categories/gcide.yaml"
    original = path.read_text()
    try:
        spec = yaml.safe_load(original)
        spec["categories"]["law"]["tags"].append("Jur.")
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        assert "sample_corpus" in scheduled(workdir)
    finally:
        path.write_text(original)


def test_a_moved_project_reruns_nothing(workflow, tmp_path):
    """Code inputs are relative paths: the finished project copied elsewhere is up to date."""
    import shutil

    workdir, cfg = workflow
    moved = tmp_path / "elsewhere"
    shutil.copytree(workdir, moved, symlinks=True)
    assert scheduled(moved) == {}


def test_bad_config_fails_before_any_job(workflow, tmp_path):
    workdir, cfg = workflow
    bad = {**cfg, "activations": {**cfg["activations"], "n_shard": 3}}
    write_config(workdir, bad)
    try:
        proc = snakemake(workdir, "-n", check=False)
    finally:
        write_config(workdir, cfg)
    assert proc.returncode != 0
    assert "activations: unknown key(s) 'n_shard'" in proc.stdout + proc.stderr


def test_slurm_profile_routes_gpu_rules(workflow):
    workdir, cfg = workflow
    seed = {**cfg, "corpora": {"tiny-gcide": {**cfg["corpora"]["tiny-gcide"], "seed": 9}}}
    write_config(workdir, seed)
    try:
        proc = snakemake(workdir, "-n", "--workflow-profile", str(workdir / "profiles" / "slurm"))
    finally:
        write_config(workdir, cfg)
    text = proc.stdout + proc.stderr
    extract = text.split("rule extract_activations:", 1)[1].split("rule ", 1)[0]
    assert "slurm_partition=gpu" in extract and "gpu=1" in extract and "tasks_per_gpu=0" in extract
    corpus = text.split("rule sample_corpus:", 1)[1].split("rule ", 1)[0]
    assert "slurm_partition=cpu" in corpus and "gpu=" not in corpus
    reverse = text.split("rule reverse:", 1)[1].split("rule ", 1)[0]
    assert "slurm_partition=gpu" in reverse and "gpu=1" in reverse


def test_lint_and_format_are_clean():
    lint = subprocess.run(
        [snakemake_bin(), "--lint", "--directory", str(REPO)], capture_output=True, text=True, cwd=REPO
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = subprocess.run(
        [str(Path(snakemake_bin()).with_name("snakefmt")), "--check", "."],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
    for args in (["check", "."], ["format", "--check", "."]):
        ruff = subprocess.run(
            [str(Path(snakemake_bin()).with_name("ruff")), *args], capture_output=True, text=True, cwd=REPO
        )
        assert ruff.returncode == 0, ruff.stdout + ruff.stderr
