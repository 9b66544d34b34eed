import math

import numpy as np
import pandas as pd
import pytest

from mneme import evaluation as ev

# ---------------------------------------------------------------------------------------------
# helpers


def _items(scores: dict[str, np.ndarray], task: str = "definition_loglik") -> pd.DataFrame:
    rows = []
    for cat, arr in scores.items():
        for i, s in enumerate(arr):
            rows.append({"item_id": f"{cat}-{i}", "category": cat, "task": task, "score": float(s)})
    return pd.DataFrame(rows)


def _cat_table() -> pd.DataFrame:
    rows = [
        (0, "amplified", "math", "math"),
        (1, "amplified", "math", "biology"),
        (2, "suppressed", "math", "math"),
        (3, "suppressed", "biology", "general"),
        (4, "suppressed", "biology", "biology"),
        (5, "amplified", "none", "law"),
        (6, "suppressed", "general", "law"),
        (7, "unchanged", "math", "math"),
        (8, "unchanged", "history", "history"),
        (9, "unchanged", "history", "history"),
        (10, "dead", "law", "law"),
        (11, "amplified", "history", "history"),
    ]
    return pd.DataFrame(rows, columns=["latent", "direction", "category", "category_provenance"])


# ---------------------------------------------------------------------------------------------
# metrics


def test_metrics_hand_computed():
    truth = pd.Series([True, True, False, False, True, False], index=list("abcdef"))
    pred = pd.Series([True, False, True, False, True, False], index=list("abcdef"))
    m = ev.metrics(truth, pred)
    assert (m["tp"], m["fp"], m["fn"], m["tn"], m["n"]) == (2, 1, 1, 2, 6)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["undefined"] == []


def test_metrics_aligns_series_by_index():
    truth = pd.Series([True, False], index=["a", "b"])
    pred = pd.Series([False, True], index=["b", "a"])  # a: True, b: False after alignment
    m = ev.metrics(truth, pred)
    assert m["accuracy"] == 1.0


def test_all_positive_signature():
    # prevalence 6/13 = 46.2 %: the poster row (46.2, 46.2, 100, 63.2)
    truth = pd.Series([True] * 6 + [False] * 7)
    m = ev.metrics(truth, pd.Series([True] * 13))
    p = 6 / 13
    assert m["accuracy"] == pytest.approx(p)
    assert m["precision"] == pytest.approx(p)
    assert m["recall"] == 1.0
    assert m["f1"] == pytest.approx(2 * p / (1 + p))
    assert round(100 * m["f1"], 1) == 63.2


def test_metrics_empty_denominators():
    m = ev.metrics([True, False, False], [False, False, False])
    assert math.isnan(m["precision"]) and m["f1"] == 0.0  # a miss: nothing found, F1 = 2tp/(2tp+fp+fn)
    assert m["recall"] == 0.0
    assert "precision" in m["undefined"] and "f1" not in m["undefined"]
    m = ev.metrics([False, False], [False, True])
    assert math.isnan(m["recall"]) and m["precision"] == 0.0 and m["f1"] == 0.0
    m = ev.metrics([False, False], [False, False])  # nothing to find, nothing predicted
    assert math.isnan(m["f1"]) and m["accuracy"] == 1.0
    m = ev.metrics([True, False], [False, True])
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0


def test_random_expected_values():
    p = 0.25
    m = ev.random_expected_metrics(p, 8)
    assert m["accuracy"] == pytest.approx(p**2 + (1 - p) ** 2)
    assert m["precision"] == m["recall"] == m["f1"] == pytest.approx(p)
    assert m["tp"] == pytest.approx(8 * p * p)
    # the simulated mean agrees with the analytic expectation
    rng = np.random.default_rng(0)
    truth = np.array([True, True] + [False] * 6)
    accs = [ev.metrics(truth, rng.random(8) < p)["accuracy"] for _ in range(4000)]
    assert np.mean(accs) == pytest.approx(m["accuracy"], abs=0.01)
    assert math.isnan(ev.random_expected_metrics(0.0, 5)["precision"])


def test_ground_truth_shift_and_null():
    rng = np.random.default_rng(1)
    n = 200
    base = {"shift": rng.normal(-2.0, 0.5, n), "null": rng.normal(-2.0, 0.5, n)}
    ft = {"shift": base["shift"] - 0.3 + rng.normal(0, 0.1, n), "null": base["null"] + rng.normal(0, 0.1, n)}
    b, f = _items(base), _items(ft)
    for test in ("bootstrap", "paired_t"):
        gt = ev.ground_truth(b, f, "definition_loglik", threshold=0.1, test=test, seed=0).set_index(
            "category"
        )
        assert gt.loc["shift", "significant"] and gt.loc["shift", "affected"]
        assert gt.loc["shift", "direction"] == -1
        assert gt.loc["shift", "delta"] == pytest.approx(-0.3, abs=0.03)
        assert not gt.loc["null", "significant"] and not gt.loc["null", "affected"]
        assert gt.loc["null", "direction"] == 0
        assert gt.loc["shift", "n"] == n


def _split_half(b, f, **kw):
    options = dict(threshold=0.1, test="paired_t", alpha=0.05, n_boot=200, seed=0, reference="general")
    return ev.split_half_truth(b, f, "definition_loglik", n_splits=20, **(options | kw))


def test_split_half_truth_is_perfect_on_a_clear_effect_and_undefined_without_items():
    rng = np.random.default_rng(3)
    n = 40
    base = {c: rng.normal(-2.0, 0.5, n) for c in ("hit", "a", "b", "general")}
    ft = {c: v + rng.normal(0, 0.01, n) for c, v in base.items()}
    ft["hit"] = ft["hit"] - 1.0
    b, f = _items(base), _items(ft)
    out = _split_half(b, f, categories=["hit", "a", "b"])
    # every halving finds the one clear effect and nothing else: agreement is perfect
    assert out["all"]["accuracy"] == 1.0 and out["all"]["f1"] == 1.0 and out["all"]["auroc"] == 1.0
    assert out["direction"]["accuracy"] == 1.0
    # the target is left out of the side effects: nothing to find there, nothing found
    side = _split_half(b, f, categories=["hit", "a", "b"], target=["hit"])["side_effects"]
    assert side["accuracy"] == 1.0 and math.isnan(side["f1"])
    assert ev.split_half_truth(b, f, "definition_loglik", n_splits=0, threshold=0.1) is None


def test_split_half_truth_of_pure_noise_is_near_chance():
    rng = np.random.default_rng(4)
    n, cats = 30, [f"c{i}" for i in range(12)]
    base = {c: rng.normal(-2.0, 0.5, n) for c in cats + ["general"]}
    ft = {c: v + rng.normal(0, 0.3, n) for c, v in base.items()}
    out = _split_half(_items(base), _items(ft), categories=cats, threshold=0.0)
    # both halves' "effects" are sampling noise: the score of one half says nothing of the other
    assert 0.3 < out["all"]["auroc"] < 0.7
    assert abs(out["all"]["spearman"]) < 0.3


def test_median_reference_is_robust_to_a_general_control_that_moved():
    rng = np.random.default_rng(5)
    n, cats = 60, ["a", "b", "c", "d", "hit"]
    base = {c: rng.normal(-2.0, 0.5, n) for c in cats + ["general"]}
    shift = {"a": -0.2, "b": -0.2, "c": -0.2, "d": -0.2, "hit": -1.0, "general": -0.6}
    ft = {c: v + shift[c] + rng.normal(0, 0.02, n) for c, v in base.items()}
    b, f = _items(base), _items(ft)
    options = dict(threshold=0.1, n_boot=500, seed=0, categories=cats)
    med = ev.ground_truth(b, f, "definition_loglik", median_of=cats, **options).set_index("category")
    raw = {c: ft[c].mean() - base[c].mean() for c in cats}
    want = raw["hit"] - np.median(list(raw.values()))
    assert med.loc["hit", "delta"] == pytest.approx(want)
    assert med["affected"].to_dict() == {"a": False, "b": False, "c": False, "d": False, "hit": True}
    assert med.loc["hit", "direction"] == -1 and med["reference"].iloc[0] == "median of 5 categories"
    # against the general control, which moved with the intervention, every category "improved"
    gen = ev.ground_truth(b, f, "definition_loglik", reference="general", **options).set_index("category")
    assert gen.loc[["a", "b", "c", "d"], "direction"].tolist() == [1, 1, 1, 1]
    assert med["raw_delta"].to_dict() == pytest.approx(gen["raw_delta"].to_dict())


def test_threshold_gates_affected():
    rng = np.random.default_rng(2)
    base = rng.normal(0, 1, 300)
    b, f = _items({"c": base}), _items({"c": base + 0.05 + rng.normal(0, 0.05, 300)})
    gt = ev.ground_truth(b, f, "definition_loglik", threshold=0.2, test="paired_t")
    assert bool(gt["significant"].iloc[0]) and not bool(gt["affected"].iloc[0])


def test_bootstrap_p_agrees_with_t_test():
    rng = np.random.default_rng(3)
    for shift in (0.0, 0.1, 0.2):
        base = rng.normal(0, 1, 100)
        ft = base + shift + rng.normal(0, 1, 100)
        p_boot = ev.bootstrap_p(ft - base, n_boot=4000, rng=np.random.default_rng(0))
        p_t = ev.paired_t_p(base, ft)
        assert abs(p_boot - p_t) < 0.05 + 0.25 * p_t


def test_two_proportion():
    base = np.array([1.0] * 80 + [0.0] * 20)
    ft = np.array([1.0] * 50 + [0.0] * 50)
    assert ev.two_proportion_p(base, ft) < 0.001
    assert ev.two_proportion_p(base, base) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        ev.two_proportion_p(np.array([0.5]), np.array([1.0]))
    b = _items({"c": base}, task="multiple_choice")
    f = _items({"c": ft}, task="multiple_choice")
    gt = ev.ground_truth(b, f, "multiple_choice", threshold=0.1, test="two_proportion")
    assert gt["affected"].iloc[0] and gt["direction"].iloc[0] == -1


def test_ground_truth_pairs_by_item_id_and_fills_categories():
    b = _items({"c": np.array([0.0, 1.0, 1.0])}, task="multiple_choice")
    f = _items({"c": np.array([1.0, 1.0, 0.0])}, task="multiple_choice").iloc[::-1]
    gt = ev.ground_truth(b, f, "multiple_choice", 0.0, categories=["c", "empty"]).set_index("category")
    assert gt.loc["c", "delta"] == pytest.approx(0.0)
    assert gt.loc["empty", "n"] == 0 and not gt.loc["empty", "affected"]
    with pytest.raises(ValueError):
        ev.ground_truth(b, f, "multiple_choice", 0.0, test="nope")


def test_bootstrap_zero_difference():
    assert ev.bootstrap_p(np.zeros(10)) == 1.0


# ---------------------------------------------------------------------------------------------
# prediction (F13)


def test_predict_count_ignores_none_and_general():
    pr = ev.predict(_cat_table(), ["math", "biology", "law", "history", "general"]).set_index("category")
    assert (pr.loc["math", "n_amplified"], pr.loc["math", "n_suppressed"]) == (2, 1)
    assert pr.loc["math", "predicted"] and pr.loc["math", "direction"] == 1
    assert (pr.loc["biology", "n_amplified"], pr.loc["biology", "n_suppressed"]) == (0, 2)
    assert pr.loc["biology", "direction"] == -1  # suppressed latents predict degradation
    # law: only a none-mapped flagged latent, a general one and a dead one → no evidence
    assert pr.loc["law", "n"] == 0 and not pr.loc["law", "predicted"] and pr.loc["law", "direction"] == 0
    assert not pr.loc["general", "predicted"]
    assert pr.loc["history", "n"] == 1  # unchanged latents are not evidence
    pr2 = ev.predict(_cat_table(), ["math", "biology", "history"], min_latents=3).set_index("category")
    assert pr2["predicted"].tolist() == [True, False, False]


def test_predict_tie_direction_zero():
    df = pd.DataFrame({"latent": [0, 1], "direction": ["amplified", "suppressed"], "category": ["x", "x"]})
    pr = ev.predict(df, ["x"])
    assert bool(pr["predicted"].iloc[0]) and pr["direction"].iloc[0] == 0


def test_median_reference_of_per_task_accuracies():
    # lm_eval-style rows: an accuracy over n samples per task; "hit" is the target, the median of
    # the other three changes is 0.0
    def rows(scores: dict[str, float]) -> pd.DataFrame:
        return pd.DataFrame(
            [{"task": "mmlu", "item_id": c, "category": c, "score": s, "n": 4000} for c, s in scores.items()]
        )

    base = rows({"a": 0.5, "b": 0.5, "c": 0.5, "hit": 0.5})
    ft = rows({"a": 0.51, "b": 0.50, "c": 0.49, "hit": 0.30})
    out = ev.ground_truth(
        base, ft, "mmlu", test="two_proportion", threshold=0.05, n_boot=2000, median_of=["a", "b", "c"]
    ).set_index("category")
    assert out.loc["hit", "delta"] == pytest.approx(-0.2 - 0.0, abs=1e-9)
    assert out.loc["a", "delta"] == pytest.approx(0.01, abs=1e-9)
    assert out["affected"].to_dict() == {"a": False, "b": False, "c": False, "hit": True}
    assert out.loc["hit", "p_value"] < 0.01 and out.loc["b", "p_value"] > 0.5
