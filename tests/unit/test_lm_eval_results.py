"""Tests for mneme.lm_eval_results (lm-evaluation-harness import) and the ground truth of
per-task aggregate results (pooled counts, two-proportion z-test)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mneme import evaluation as ev
from mneme import lm_eval_results as le
from mneme import mmlu

REPO = Path(__file__).resolve().parents[2]

# In the layout `lm_eval --output_path` writes (0.4.x): groups appear in `results` and `groups`,
# their members under `group_subtasks`, sample counts under `n-samples` for leaf tasks only.
RESULTS = {
    "results": {
        "mmlu": {"acc,none": 0.41, "acc_stderr,none": 0.02, "alias": "mmlu"},
        "mmlu_stem": {"acc,none": 0.38, "acc_stderr,none": 0.03, "alias": " - stem"},
        "mmlu_college_biology": {"alias": "  - college_biology", "acc,none": 0.5, "acc_stderr,none": 0.04},
        "mmlu_virology": {"alias": "  - virology", "acc,none": 0.25, "acc_stderr,none": 0.03},
        "mmlu_college_chemistry": {
            "alias": "  - college_chemistry",
            "acc,none": 0.3,
            "acc_stderr,none": 0.05,
        },
        "mmlu_humanities": {"acc,none": 0.45, "acc_stderr,none": 0.03, "alias": " - humanities"},
        "mmlu_professional_law": {"alias": "  - professional_law", "acc,none": 0.4, "acc_stderr,none": 0.01},
        "arc_easy": {
            "alias": "arc_easy",
            "acc,none": 0.75,
            "acc_stderr,none": 0.0089,
            "acc_norm,none": 0.7,
            "acc_norm_stderr,none": 0.0094,
        },
        "hellaswag": {"alias": "hellaswag", "acc,none": 0.5, "acc_stderr,none": 0.005},
    },
    "groups": {
        "mmlu": {"acc,none": 0.41, "acc_stderr,none": 0.02, "alias": "mmlu"},
        "mmlu_stem": {"acc,none": 0.38, "acc_stderr,none": 0.03, "alias": " - stem"},
        "mmlu_humanities": {"acc,none": 0.45, "acc_stderr,none": 0.03, "alias": " - humanities"},
    },
    "group_subtasks": {
        "mmlu_humanities": ["mmlu_professional_law"],
        "mmlu_stem": ["mmlu_college_chemistry", "mmlu_college_biology", "mmlu_virology"],
        "mmlu": ["mmlu_humanities", "mmlu_stem"],
        "arc_easy": [],
        "hellaswag": [],
    },
    "configs": {"arc_easy": {"task": "arc_easy", "num_fewshot": 0}},
    "versions": {"arc_easy": 1.0, "mmlu": 2, "mmlu_virology": 1.0},
    "n-shot": {"arc_easy": 0, "mmlu_virology": 0},
    "higher_is_better": {"arc_easy": {"acc": True, "acc_norm": True}},
    "n-samples": {
        "mmlu_college_biology": {"original": 144, "effective": 144},
        "mmlu_virology": {"original": 166, "effective": 166},
        "mmlu_college_chemistry": {"original": 100, "effective": 100},
        "mmlu_professional_law": {"original": 1534, "effective": 1534},
        "arc_easy": {"original": 2376, "effective": 2376},
        "hellaswag": {"original": 10042, "effective": 10042},
    },
    "config": {"model": "hf", "model_args": "pretrained=HuggingFaceH4/zephyr-7b-beta", "batch_size": "auto"},
    "git_hash": "abc1234",
    "date": 1730000000.0,
    "model_name": "HuggingFaceH4/zephyr-7b-beta",
}


@pytest.fixture(scope="module")
def subject_map() -> dict[str, str]:
    return mmlu.load_subject_map(REPO / "config" / "categories" / "mmlu.yaml")


def write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, indent=2))
    return path


def test_reads_leaf_tasks_without_double_counting_groups(tmp_path, subject_map) -> None:
    f = write(tmp_path / "results_2024-10-27T12-00-00.json", RESULTS)
    df = le.read_task_results(f, {"arc_easy": "science"}, subject_map)
    assert df.columns.tolist() == le.RESULT_COLUMNS
    rows = df.set_index("item_id")
    # groups (mmlu, mmlu_stem, mmlu_humanities) are not rows; hellaswag is unmapped
    assert sorted(rows.index) == [
        "arc_easy",
        "mmlu_college_biology",
        "mmlu_college_chemistry",
        "mmlu_professional_law",
        "mmlu_virology",
    ]
    assert rows.loc["mmlu_virology", "category"] == "biology"
    assert rows.loc["mmlu_professional_law", "category"] == "law"
    assert rows.loc["arc_easy", "category"] == "science"
    assert rows.loc["arc_easy", "score"] == 0.75 and rows.loc["arc_easy", "n"] == 2376
    assert rows.loc["arc_easy", "metric"] == "acc,none" and rows.loc["arc_easy", "stderr"] == 0.0089
    assert (df["task"] == "lm_eval").all()
    # a directory (--output_path) works too: the newest results file is read
    write(tmp_path / "results_2023-01-01T00-00-00.json", {"results": {}})
    assert le.read_task_results(tmp_path, {"arc_easy": "science"}, subject_map).equals(df)
    # ... but not an --output_path holding several models' folders: that would read another
    # model's results without a word
    (tmp_path / "other-model").mkdir()
    write(tmp_path / "other-model" / "results_2025-01-01T00-00-00.json", RESULTS)
    with pytest.raises(ValueError, match="several models"):
        le.read_task_results(tmp_path, {"arc_easy": "science"}, subject_map)
    summary = le.summarise(df).set_index("category")
    assert summary.loc["biology", "n"] == 144 + 166
    assert summary.loc["biology", "mean"] == pytest.approx((0.5 * 144 + 0.25 * 166) / 310)


def test_group_mapping_applies_to_its_subtasks_and_metric_choice(tmp_path, subject_map) -> None:
    f = write(tmp_path / "r.json", RESULTS)
    df = le.read_task_results(f, {"mmlu_stem": "stem", "mmlu_virology": "viruses"}, subject_map)
    cats = dict(zip(df["item_id"], df["category"]))
    assert cats == {
        "mmlu_college_biology": "stem",
        "mmlu_college_chemistry": "stem",
        "mmlu_virology": "viruses",  # its own entry wins over its group's
        "mmlu_professional_law": "law",
    }
    # without `groups` / `group_subtasks`, a task with no `n-samples` entry is an aggregate too
    bare = {k: v for k, v in RESULTS.items() if k not in ("groups", "group_subtasks")}
    df = le.read_task_results(write(tmp_path / "bare.json", bare), {"mmlu_stem": "stem", "mmlu": "x"}, {})
    assert df.empty
    norm = le.read_task_results(f, {"arc_easy": "science"}, {}, metric="acc_norm")
    assert norm["score"].tolist() == [0.7] and norm["metric"].tolist() == ["acc_norm,none"]


def test_missing_metric_names_task_and_available_metrics(tmp_path, subject_map) -> None:
    f = write(tmp_path / "r.json", RESULTS)
    with pytest.raises(
        ValueError, match=r"task 'mmlu_college_biology' has no metric 'acc_norm'; available: acc,none"
    ):
        le.read_task_results(f, {}, subject_map, metric="acc_norm")
    # an unmapped task's metrics are never looked at
    assert len(le.read_task_results(f, {"arc_easy": "science"}, {}, metric="acc_norm")) == 1


def test_old_format_needs_sample_counts_from_config(tmp_path, subject_map) -> None:
    old = {
        "results": {
            "hendrycksTest-virology": {
                "acc": 0.3,
                "acc_stderr": 0.03,
                "acc_norm": 0.31,
                "acc_norm_stderr": 0.03,
            },
            "arc_easy": {"acc": 0.7, "acc_stderr": 0.01},
        },
        "versions": {"hendrycksTest-virology": 1, "arc_easy": 0},
        "config": {"model": "hf-causal"},
    }
    f = write(tmp_path / "old.json", old)
    with pytest.raises(
        ValueError, match=r"no sample count for task\(s\) hendrycksTest-virology.*benchmark.lm_eval.n_samples"
    ):
        le.read_task_results(f, {}, subject_map)
    df = le.read_task_results(
        f, {"arc_easy": "science"}, subject_map, n_samples={"hendrycksTest-virology": 166, "arc_easy": 2376}
    )
    assert dict(zip(df["item_id"], df["category"])) == {
        "hendrycksTest-virology": "biology",
        "arc_easy": "science",
    }
    assert df.set_index("item_id").loc["hendrycksTest-virology", "stderr"] == 0.03
    with pytest.raises(ValueError, match="no top-level `results`"):
        le.read_task_results(write(tmp_path / "bad.json", {"x": 1}))


def test_mmlu_subject_names() -> None:
    sm = {"college_biology": "biology", "biology": "x", "high_school_biology": "biology"}
    assert le.mmlu_subject("mmlu_college_biology", sm) == "college_biology"
    assert le.mmlu_subject("mmlu_continuation_high_school_biology", sm) == "high_school_biology"
    assert le.mmlu_subject("hendrycksTest-college_biology", sm) == "college_biology"
    assert le.mmlu_subject("arc_biology", sm) is None


# --------------------------------------------------------------------------- ground truth


def reference_z_p(s1: float, n1: float, s2: float, n2: float) -> float:
    p1, p2 = s1 / n1, s2 / n2
    pool = (s1 + s2) / (n1 + n2)
    z = (p2 - p1) / math.sqrt(pool * (1 - pool) * (1 / n1 + 1 / n2))
    return 2 * (1 - stats.norm.cdf(abs(z)))


def aggregate_rows(acc: dict[str, tuple[str, float, int]]) -> pd.DataFrame:
    rows = [
        {"item_id": t, "category": c, "task": "lm_eval", "score": a, "n": n, "metric": "acc,none"}
        for t, (c, a, n) in acc.items()
    ]
    return pd.DataFrame(rows)


def test_ground_truth_pools_counts_per_category() -> None:
    base = aggregate_rows(
        {
            "bio1": ("biology", 0.60, 200),
            "bio2": ("biology", 0.50, 100),
            "law1": ("law", 0.40, 1000),
            "chem": ("chemistry", 0.30, 100),
        }
    )
    ft = aggregate_rows(
        {
            "bio1": ("biology", 0.30, 200),
            "bio2": ("biology", 0.25, 100),
            "law1": ("law", 0.41, 1000),
            "chem": ("chemistry", 0.30, 100),
        }
    )
    gt = ev.ground_truth(base, ft, "lm_eval", threshold=0.05, test="two_proportion").set_index("category")
    assert list(gt.index) == ["biology", "chemistry", "law"]
    s_b, s_f = 0.6 * 200 + 0.5 * 100, 0.3 * 200 + 0.25 * 100
    assert gt.loc["biology", "n"] == 300
    assert gt.loc["biology", "base_mean"] == pytest.approx(s_b / 300)
    assert gt.loc["biology", "delta"] == pytest.approx((s_f - s_b) / 300)
    assert gt.loc["biology", "p_value"] == pytest.approx(reference_z_p(s_b, 300, s_f, 300), rel=1e-9)
    assert gt.loc["law", "p_value"] == pytest.approx(reference_z_p(400, 1000, 410, 1000), rel=1e-9)
    assert gt.loc["chemistry", "p_value"] == 1.0
    assert gt.loc["biology", "affected"] and gt.loc["biology", "direction"] == -1
    assert not gt.loc["law", "affected"] and not gt.loc["chemistry", "affected"]
    with pytest.raises(ValueError, match="use test 'two_proportion'"):
        ev.ground_truth(base, ft, "lm_eval", threshold=0.05, test="bootstrap")
    with pytest.raises(ValueError, match="aggregates"):
        ev.ground_truth(base, ft.drop(columns="n"), "lm_eval", threshold=0.05, test="two_proportion")
    # unequal sample counts between the two files (e.g. --limit) are pooled per model
    ft2 = ft.assign(n=ft["n"] // 2)
    gt2 = ev.ground_truth(base, ft2, "lm_eval", threshold=0.05, test="two_proportion").set_index("category")
    s_f2 = 0.3 * 100 + 0.25 * 50
    assert gt2.loc["biology", "ft_mean"] == pytest.approx(s_f2 / 150)
    assert gt2.loc["biology", "p_value"] == pytest.approx(reference_z_p(s_b, 300, s_f2, 150), rel=1e-9)


def test_ground_truth_on_lm_eval_results(tmp_path, subject_map) -> None:
    worse = copy.deepcopy(RESULTS)
    worse["results"]["mmlu_college_biology"]["acc,none"] = 0.25
    worse["results"]["mmlu_virology"]["acc,none"] = 0.1
    base = le.read_task_results(write(tmp_path / "b.json", RESULTS), {"arc_easy": "science"}, subject_map)
    ft = le.read_task_results(write(tmp_path / "f.json", worse), {"arc_easy": "science"}, subject_map)
    # no general category among these tasks: the specific truth falls back to the raw change
    gt = ev.ground_truth(base, ft, "lm_eval", 0.05, test="two_proportion", reference="general")
    rows = gt.set_index("category")
    assert set(rows.index) == {"biology", "chemistry", "law", "science"}
    assert rows.loc["biology", "affected"] and rows.loc["biology", "direction"] == -1
    assert not rows.loc["law", "affected"] and rows["reference"].isna().all()
    # with science as the reference, biology's change beyond science's is still significant
    gt = ev.ground_truth(base, ft, "lm_eval", 0.05, test="two_proportion", reference="science")
    rows = gt.set_index("category")
    assert rows.loc["biology", "delta"] == pytest.approx(
        rows.loc["biology", "raw_delta"] - rows.loc["science", "raw_delta"]
    )
    assert rows.loc["biology", "affected"] and not rows.loc["science", "affected"]


def test_rule_script_imports_lm_eval_without_a_model(tmp_path, monkeypatch) -> None:
    import importlib.util
    import logging

    from snakemake.iocontainers import Namedlist

    spec = importlib.util.spec_from_file_location("bench_rule", REPO / "workflow_scripts" / "benchmark.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(script, "setup_logging", lambda path: logging.getLogger("mneme"))
    f = write(tmp_path / "r.json", RESULTS)
    out = tmp_path / "lm_eval.parquet"
    smk = SimpleNamespace(
        input=Namedlist(
            fromdict={"results": str(f), "mmlu_categories": str(REPO / "config/categories/mmlu.yaml")}
        ),
        output=Namedlist(fromdict={"results": str(out), "summary": str(tmp_path / "lm_eval_summary.tsv")}),
        log=[str(tmp_path / "log.txt")],
        threads=1,
        params=SimpleNamespace(
            options={
                "kind": "lm_eval",
                "lm_eval": {"task_categories": {}, "metric": "acc", "n_samples": {}},
                "mmlu": {"categories": "config/categories/mmlu.yaml"},
            }
        ),
    )
    script.main(smk)
    df = pd.read_parquet(out)
    assert sorted(df["item_id"]) == [
        "mmlu_college_biology",
        "mmlu_college_chemistry",
        "mmlu_professional_law",
        "mmlu_virology",
    ]
    summary = pd.read_csv(tmp_path / "lm_eval_summary.tsv", sep="\t").set_index("category")
    assert np.isclose(summary.loc["law", "mean"], 0.4)
