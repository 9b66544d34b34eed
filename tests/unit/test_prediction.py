"""The per-category decision: scores against straightforward references, on planted latents with
known category mass and change; the specific ground truth; metrics; the suite tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from mneme import evaluation as ev
from mneme import prediction as pr
from mneme.suite import _restrength, sensitivity, suite_table

CATS = ["biology", "chemistry", "law", "music"]


def planted_latents(seed: int = 0, n: int = 400):
    """``n`` latents, each active on one or two categories (or general). Biology latents changed
    strongly, chemistry latents half as much, the others not. Two biology/chemistry latents span
    both categories. Returns (attribution, category_mass, truth of which category moved)."""
    rng = np.random.default_rng(seed)
    names = CATS + ["general"]
    home = rng.choice(len(names), size=n, p=[0.15, 0.1, 0.1, 0.1, 0.55])
    change = np.abs(rng.normal(0, 1, n))
    change[home == 0] += 4.0
    change[home == 1] += 2.0
    rows = []
    for j in range(n):
        mass = rng.uniform(5, 50)
        rows.append((j, names[home[j]], mass * 0.9))
        rows.append((j, "general", mass * 0.1))
    for j in (0, 1):  # latents spanning biology and chemistry
        rows += [(j, "chemistry", 40.0), (j, "biology", 40.0)]
        change[j] = 6.0
    mass = pd.DataFrame(rows, columns=["latent", "category", "mass"])
    mass = mass.groupby(["latent", "category"], as_index=False)["mass"].sum()
    mass["share"] = mass["mass"] / mass.groupby("latent")["mass"].transform("sum")
    attribution = pd.DataFrame(
        {
            "latent": np.arange(n),
            "direction": np.where(change > 3, "amplified", "unchanged"),
            "strength": change,
            "effect": np.where(change > 3, -1, 0),
            "delta": rng.uniform(0.3, 0.7, n),
            "log_change": change,
            # the grid's other log-ratio targets: the activation target carries the planted change
            "log_change_activation": change,
            "log_change_reconstruction": np.zeros(n),
            "log_change_error": np.zeros(n),
            "n_contexts": 50,
            "n_active": 100,
            "freq": 0.01,
            "reason": "",
        }
    )
    return attribution, mass


def reference_scores(change: dict[int, float], weights: dict[tuple[int, str], float], cats, against=None):
    """Straightforward loops: S_c, S_ref and the exact permutation z (module doc); ``against``
    names the category whose mean is the reference, else the corpus mean (weights u_j). The
    permutation population is the latents with some weight."""
    latents = [j for j in change if any(w > 0 for (k, _), w in weights.items() if k == j)]
    n = len(latents)
    mean = sum(change[j] for j in latents) / n
    sigma2 = sum((change[j] - mean) ** 2 for j in latents) / n

    def shares(c):
        wc = {j: weights.get((j, c), 0.0) for j in latents}
        return {j: wc[j] / sum(wc.values()) for j in latents}

    if against is None:
        u = {j: sum(w for (k, _), w in weights.items() if k == j) for j in latents}
        b = {j: u[j] / sum(u.values()) for j in latents}
    else:
        b = shares(against)
    out = {}
    for c in cats:
        a = shares(c)
        diff = sum((a[j] - b[j]) * change[j] for j in latents)
        var = sigma2 * n / (n - 1) * sum((a[j] - b[j]) ** 2 for j in latents)
        out[c] = diff / np.sqrt(var)
    return out


def test_category_score_is_a_z_against_shuffled_changes():
    """The score's scale is the null it claims: S_c - S_ref over many random permutations of the
    changes over the latents has the standard deviation the score divides by (overlapping
    memberships included: both categories share a dense latent)."""
    rng = np.random.default_rng(3)
    n = 60
    change = pd.Series(rng.exponential(size=n))
    w = pd.DataFrame({"a": rng.uniform(size=n) * (rng.random(n) < 0.5), "g": rng.uniform(size=n)})
    w.iloc[0] = [50.0, 80.0]  # a dense latent in both
    table = pr.category_scores(change, w, ["a"], reference="g").set_index("category")
    a, g = (w[c].to_numpy() / w[c].sum() for c in ("a", "g"))
    draws = np.array([(a - g) @ rng.permutation(change.to_numpy()) for _ in range(20_000)])
    observed = (a - g) @ change.to_numpy()
    assert table.loc["a", "score"] == pytest.approx(observed / draws.std(), rel=0.03)


def test_category_scores_match_reference():
    rng = np.random.default_rng(1)
    change = {j: float(rng.exponential()) for j in range(30)}
    weights = {(j, c): float(rng.uniform()) for j in range(30) for c in ("a", "b", "c") if rng.random() < 0.6}
    long = pd.DataFrame([(j, c, w) for (j, c), w in weights.items()], columns=["latent", "category", "w"])
    got = pr.category_scores(pd.Series(change), pr.membership_from_long(long, "w"), ["a", "b", "c", "d"])
    ref = reference_scores(change, weights, ["a", "b", "c"])
    got = got.set_index("category")
    for c in ("a", "b", "c"):
        assert got.loc[c, "score"] == pytest.approx(ref[c])
    assert np.isnan(got.loc["d", "score"]) and not got.loc["d", "predicted"]
    member = pr.membership_from_long(long, "w")
    got = pr.category_scores(pd.Series(change), member, ["a", "b"], reference="c").set_index("category")
    ref = reference_scores(change, weights, ["a", "b"], against="c")
    assert got["score"].to_dict() == pytest.approx(ref)
    # at z_pred 0 a category must move strictly more than the reference: a tie predicts nothing
    flat = pr.category_scores(pd.Series(1.0, index=range(30)), member, ["a", "b"], z_pred=0.0, reference="c")
    assert (flat["score"] == 0).all() and not flat["predicted"].any()
    # a reference with no membership leaves nothing to compare with: no score, no prediction
    none = pr.category_scores(pd.Series(change), member, ["a", "b"], reference="d")
    assert none["score"].isna().all() and not none["predicted"].any()


def test_general_reference_needs_general_text():
    b, f, inputs = evaluation_inputs()
    inputs["category_mass"] = inputs["category_mass"][inputs["category_mass"]["category"] != "general"]
    with pytest.raises(ValueError, match="evaluate.reference: general .* 'general'"):
        ev.predictor_tables(CATS, **inputs, z_pred=0.0, membership="mass", reference="general")
    assert "mneme_provenance" in ev.predictor_tables(
        CATS, **inputs, z_pred=0.0, membership="mass", reference="corpus"
    )


def test_general_reference_finds_the_neighbour_the_corpus_mean_hides():
    """A strongly changed target with many latents pulls the corpus mean above a neighbour that
    changed too: against the corpus mean the neighbour is ordinary, against the latents of
    general text (which did not change) it stands out."""
    rng = np.random.default_rng(7)
    n = 600
    home = np.array(["biology"] * 250 + ["chemistry"] * 50 + ["law"] * 50 + ["general"] * 250)
    change = pd.Series(np.abs(rng.normal(0, 1, n)) + np.where(home == "biology", 8.0, 0.0))
    change[home == "chemistry"] += 1.5
    long = pd.DataFrame({"latent": np.arange(n), "category": home, "mass": rng.uniform(5, 50, n)})
    member = pr.membership_from_long(long, "mass")
    cats = ["biology", "chemistry", "law"]
    # the target's spread is part of the permutation variance too, so its neighbour's z is modest
    corpus = pr.category_scores(change, member, cats, z_pred=2.0).set_index("category")
    general = pr.category_scores(change, member, cats, z_pred=2.0, reference="general").set_index("category")
    assert corpus.loc["biology", "predicted"] and not corpus.loc["chemistry", "predicted"]
    assert corpus.loc["chemistry", "score"] < 0
    assert general.loc["biology", "predicted"] and general.loc["chemistry", "predicted"]
    assert not general.loc["law", "predicted"]


def test_planted_categories_are_found_with_their_mass_spread():
    attribution, mass = planted_latents()
    change = pr.eligible_change(attribution)
    effect = pd.Series(attribution["effect"].to_numpy(), index=attribution["latent"])
    member = pr.membership_from_long(mass, "mass")
    s = pr.category_scores(change, member, CATS + ["general"], effect=effect).set_index("category")
    assert s.loc["biology", "predicted"] and s.loc["chemistry", "predicted"]
    assert not s.loc["law", "predicted"] and not s.loc["music", "predicted"]
    assert s.loc["biology", "score"] > s.loc["chemistry", "score"] > s.loc["law", "score"]
    # the flagged latents are disruptions: the predicted direction is "degraded"
    assert s.loc["biology", "direction"] == -1 and s.loc["chemistry", "direction"] == -1
    # a hard argmax would give both spanning latents to one category only; the weights count both
    two = mass[mass["latent"].isin([0, 1])]
    assert set(two["category"]) >= {"biology", "chemistry"}


def test_lift_membership_matches_a_direct_reference():
    rng = np.random.default_rng(4)
    cats = ["a", "b", "general"]
    mass = pd.DataFrame(rng.uniform(0, 5, size=(6, 3)), columns=cats, index=pd.Index(range(6), name="latent"))
    mass.iloc[5] = 0.0  # a latent with no mass at all
    prior = pd.Series({"a": 0.2, "b": 0.05, "general": 0.75})
    got = pr.lift_membership(mass, prior)
    for j in range(6):
        total = mass.loc[j].sum()
        for c in cats:
            lift = mass.loc[j, c] / total / prior[c] if total else 0.0
            assert got.loc[j, c] == pytest.approx(mass.loc[j, c] * max(0.0, lift - 1.0))
    # a latent spread exactly like the corpus is evidence for no category
    dense = pd.DataFrame([prior.to_numpy() * 80.0], columns=cats, index=pd.Index([0], name="latent"))
    assert (pr.lift_membership(dense, prior).to_numpy() == 0).all()
    # a category the prior does not know gets no membership
    assert (pr.lift_membership(mass.assign(c=1.0), prior)["c"] == 0).all()


def test_lift_membership_ignores_a_changed_dense_latent():
    """A dense latent (mass spread like the corpus) that changed a lot is evidence for no
    category. By raw mass it pulls every category's mean and the reference's alike: the lift
    shrinks, but the z of the difference, whose null sees the shared latent on both sides, stays
    (an independent-means null lost the planted biology effect here). By lift it has weight 0
    everywhere and the scores are exactly those without it."""
    attribution, mass = planted_latents(seed=5)
    prior = mass.groupby("category")["mass"].sum()
    prior = prior / prior.sum()
    n = len(attribution)
    dense = pd.DataFrame({"latent": n, "category": prior.index, "mass": prior.to_numpy() * 1e4})
    extra = attribution.iloc[[0]].assign(latent=n, strength=10.0, log_change=10.0)
    with_dense = pd.concat([attribution, extra], ignore_index=True)

    def scores(attr: pd.DataFrame, m: pd.DataFrame, weight: str) -> pd.DataFrame:
        member = pr.membership_from_long(m, "mass")
        member = pr.lift_membership(member, prior) if weight == "lift" else member
        return pr.category_scores(pr.eligible_change(attr), member, CATS + ["general"]).set_index("category")

    both = pd.concat([mass, dense], ignore_index=True)
    mass_without, mass_with = scores(attribution, mass, "mass"), scores(with_dense, both, "mass")
    assert mass_with.loc["biology", "lift"] < 0.25 * mass_without.loc["biology", "lift"]
    assert mass_with.loc["biology", "score"] == pytest.approx(mass_without.loc["biology", "score"], rel=0.05)
    assert mass_with.loc["biology", "predicted"] and not mass_with.loc["law", "predicted"]
    lift_without, lift_with = scores(attribution, mass, "lift"), scores(with_dense, both, "lift")
    pd.testing.assert_frame_equal(lift_with, lift_without)
    assert lift_with.loc["biology", "predicted"] and not lift_with.loc["law", "predicted"]


def test_direction_of_a_planted_strengthening():
    attribution, mass = planted_latents(seed=3)
    attribution["effect"] = np.where(attribution["direction"] == "amplified", 1, 0)
    effect = pd.Series(attribution["effect"].to_numpy(), index=attribution["latent"])
    s = pr.category_scores(
        pr.eligible_change(attribution),
        pr.membership_from_long(mass, "mass"),
        CATS + ["general"],
        effect=effect,
    ).set_index("category")
    assert s.loc["biology", "direction"] == 1


def test_single_label_membership_and_activation_diff_scores():
    m = pr.single_label_membership(pd.Series(["law", "none", None, "law", "music"], index=[3, 4, 5, 6, 7]))
    assert m.loc[3, "law"] == 1 and m.loc[4].sum() == 0 and m.loc[7, "music"] == 1
    table = pd.DataFrame({"category": ["law", "music", "general"], "mean_rel_diff": [0.3, 0.1, 0.2]})
    s = pr.activation_diff_scores(table, ["law", "music", "physics"], "general").set_index("category")
    assert s.loc["law", "score"] == pytest.approx(0.5) and s.loc["law", "predicted"]
    assert not s.loc["music", "predicted"] and np.isnan(s.loc["physics", "score"])


def test_decoder_norm_change():
    a = pd.DataFrame(
        {"latent": [0, 1, 2], "direction": ["unchanged", "dead", "amplified"], "delta": [0.5, 1, 0.9]}
    )
    assert pr.decoder_norm_change(a).to_dict() == pytest.approx({0: 0.0, 2: 0.8})


def test_auroc_and_spearman_against_references():
    rng = np.random.default_rng(0)
    y = rng.random(40) < 0.4
    s = np.round(rng.normal(size=40) + y, 1)  # rounded: ties
    assert ev.auroc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert np.isnan(ev.auroc(np.ones(3, bool), [1, 2, 3]))
    b = rng.normal(size=40)
    assert ev.spearman(s, b) == pytest.approx(stats.spearmanr(s, b).statistic)
    assert np.isnan(ev.spearman([1, 1, 1], [1, 2, 3]))


def _items(scores: dict[str, np.ndarray]) -> pd.DataFrame:
    rows = [
        {"item_id": f"{c}-{i}", "category": c, "task": "definition_loglik", "score": float(v)}
        for c, arr in scores.items()
        for i, v in enumerate(arr)
    ]
    return pd.DataFrame(rows)


def format_shift_items(seed: int = 0):
    """Every category moves by +0.5 (the benchmark's format learned); chemistry by +1.0."""
    rng = np.random.default_rng(seed)
    base = {c: rng.normal(-4, 0.3, 60) for c in CATS + ["general"]}
    ft = {c: v + 0.5 + rng.normal(0, 0.05, v.size) for c, v in base.items()}
    ft["chemistry"] = ft["chemistry"] + 0.5
    return _items(base), _items(ft)


def test_specific_ground_truth_removes_the_shared_format_shift():
    b, f = format_shift_items()
    raw = ev.ground_truth(b, f, "definition_loglik", 0.1, n_boot=500, categories=CATS).set_index("category")
    assert raw["affected"].all()
    spec = ev.ground_truth(b, f, "definition_loglik", 0.1, n_boot=500, categories=CATS, reference="general")
    spec = spec.set_index("category")
    assert spec["affected"].tolist() == [False, True, False, False]
    assert spec.loc["chemistry", "direction"] == 1
    assert spec.loc["chemistry", "delta"] == pytest.approx(0.5, abs=0.05)
    assert spec["raw_affected"].all() and (spec["reference"] == "general").all()


def test_specific_change_p_against_a_reference_bootstrap():
    rng = np.random.default_rng(5)
    g = pd.DataFrame({"base": rng.normal(size=30), "ft": rng.normal(size=30) + 0.3})
    r = pd.DataFrame({"base": rng.normal(size=40), "ft": rng.normal(size=40)})
    delta, p = ev.specific_change(g, r, False, 4000, np.random.default_rng(0))
    dc, dr = (g["ft"] - g["base"]).to_numpy(), (r["ft"] - r["base"]).to_numpy()
    assert delta == pytest.approx(dc.mean() - dr.mean())
    se = np.sqrt(dc.var(ddof=1) / dc.size + dr.var(ddof=1) / dr.size)
    assert p == pytest.approx(2 * stats.norm.sf(abs(delta) / se), abs=0.03)


def test_score_predictor_side_effects_and_direction():
    truth = pd.DataFrame(
        {
            "category": CATS,
            "affected": [True, True, False, False],
            "direction": [-1, -1, 0, 0],
            "delta": [-2, -0.3, 0, 0.01],
        }
    )
    pred = pd.DataFrame(
        {
            "category": CATS,
            "predicted": [True, False, True, False],
            "score": [5, 2, 3, 0],
            "direction": [-1, 0, 1, 0],
        }
    )
    m = ev.score_predictor(truth, pred, target=["biology"])
    assert m["all"]["f1"] == pytest.approx(0.5) and m["all"]["auroc"] == pytest.approx(0.75)
    side = m["side_effects"]
    assert (side["tp"], side["fp"], side["fn"], side["tn"]) == (0, 1, 1, 1)
    assert side["auroc"] == pytest.approx(0.5)
    assert m["direction"] == {"accuracy": 1.0, "n": 1}
    # the target (biology) is predicted and has the highest score
    assert m["target"] == {"found": 1.0, "rank": 1.0, "n_categories": 4}
    missed = ev.score_predictor(truth, pred.assign(predicted=False), target=["chemistry"])["target"]
    assert missed["found"] == 0.0 and missed["rank"] == 3.0  # scores 5 and 3 above its 2


def test_target_rank_shares_ties_and_ranks_nan_last():
    s = pd.Series({"a": 3.0, "b": 3.0, "c": 1.0, "d": np.nan, "e": np.nan})
    assert ev.target_rank(s, ["a"]) == 1.5  # tied with b: half of it counts as above
    assert ev.target_rank(s, ["c"]) == 3.0
    assert ev.target_rank(s, ["d"]) == 4.5  # NaN ranks lowest, tied with the other NaN
    assert ev.target_rank(s, ["c", "a"]) == 1.5  # the best-scored target counts...
    assert ev.target_rank(s, ["a", "b"]) == 1.0  # ...and the other targets are left out
    assert np.isnan(ev.target_rank(s, ["x"]))
    # a constant score says nothing: the target sits in the middle
    assert ev.target_rank(pd.Series(1.0, index=list("abcde")), ["c"]) == 3.0


def test_random_target_entry_is_the_expected_rank_of_the_best_target():
    truth = pd.DataFrame({"category": list("abcdefghij"), "affected": [True] * 3 + [False] * 7})
    one = ev._random_expected(truth.assign(direction=0, delta=0.0), ["a"])["target"]
    assert one == {"found": 0.3, "rank": 5.5, "n_categories": 10}  # (n + 1) / 2 for one target
    two = ev._random_expected(truth.assign(direction=0, delta=0.0), ["a", "b"])["target"]
    # the reference: shuffle the ten categories, rank the better of a and b among the other eight
    rng = np.random.default_rng(0)
    ranks = []
    for _ in range(20000):
        order = list(rng.permutation(list("abcdefghij")))
        first = min(order.index("a"), order.index("b"))
        ranks.append(1 + sum(1 for c in order[:first] if c not in "ab"))
    assert two["rank"] == pytest.approx(np.mean(ranks), abs=0.03)
    none = ev._random_expected(truth.assign(direction=0, delta=0.0), [])["target"]
    assert np.isnan(none["rank"]) and np.isnan(none["found"])  # as every predictor without a target


def evaluation_inputs(seed: int = 0):
    attribution, mass = planted_latents(seed)
    b, f = format_shift_items(seed)
    f.loc[f["category"] == "biology", "score"] -= 2.0  # the target, degraded
    act = pd.DataFrame(
        {
            "category": CATS + ["general"],
            "n_tokens": [3000, 2000, 2000, 2000, 9000],
            "mean_rel_diff": [0.9, 0.4, 0.2, 0.2, 0.25],
        }
    )
    labels = attribution[["latent", "direction"]].copy()
    home = mass.sort_values("mass").drop_duplicates("latent", keep="last").set_index("latent")["category"]
    labels["category"] = labels["latent"].map(home).where(lambda x: x != "general", "none")
    ctx = mass.rename(columns={"share": "weight"})[["latent", "category", "weight"]]
    return (
        b,
        f,
        dict(
            attribution=attribution,
            category_mass=mass,
            activation_diff=act,
            labels=labels,
            context_membership=ctx,
        ),
    )


def test_evaluate_pair_end_to_end_json():
    b, f, inputs = evaluation_inputs()
    res = ev.evaluate_pair(
        b, f, **inputs, target=["biology"], task="definition_loglik", threshold=0.1, n_boot=300
    )
    assert json.loads(json.dumps(res, allow_nan=False)) == res
    assert res["categories"] == sorted(CATS)
    truth = {r["category"]: r["truth"] for r in res["per_category"]}
    assert truth == {"biology": True, "chemistry": True, "law": False, "music": False}
    want = {"mneme", "mneme_provenance", "mneme_contexts", "mneme_explanations", "activation_diff"}
    want |= {"decoder_norm_only", "provenance_only", "all_positive", "oracle", "random_at_prevalence"}
    want |= {"truth_split_half"}
    assert set(res["predictors"]) == want
    assert res["side_effect_metrics"]["mneme"]["f1"] == 1.0  # chemistry found, law and music not
    assert res["side_effect_metrics"]["oracle"]["auroc"] == 1.0
    assert res["side_effect_metrics"]["activation_diff"]["tp"] == 1
    assert res["predictors"]["mneme"]["uses"] == "crosscoder + corpus labels"
    assert res["prevalence"]["side_effects"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="route"):
        ev.evaluate_pair(
            b, f, **{**inputs, "context_membership": None}, route="contexts", task="definition_loglik"
        )


def test_suite_table_and_sensitivity():
    evaluations, pairs = {}, {}
    for i, pair in enumerate(("a", "b", "c")):
        b, f, inputs = evaluation_inputs(seed=i)
        res = ev.evaluate_pair(
            b, f, **inputs, target=["biology"], task="definition_loglik", threshold=0.1, n_boot=200
        )
        evaluations[pair] = res
        pairs[pair] = {"evaluation": res, **inputs}
    # pair b's mneme ranks its target 4th, so a mean over the wrong pairs shows
    evaluations["b"]["predictors"]["mneme"]["metrics"]["target"]["rank"] = 4.0
    table = suite_table(evaluations, holdout=["c"])
    mine = table[(table["predictor"] == "mneme") & (table["scope"] == "side_effects")].set_index("pair")
    # the mean is over the development pairs only; the held-out pair has a mean of its own
    assert mine.loc["mean", "auroc"] == pytest.approx(mine.loc[["a", "b"], "auroc"].mean())
    assert mine.loc["mean", "n_pairs"] == 2 and mine.loc["mean_holdout", "n_pairs"] == 1
    assert mine.loc["mean_holdout", "auroc"] == pytest.approx(mine.loc["c", "auroc"])
    assert mine["group"].to_dict() == {
        "a": "dev",
        "b": "dev",
        "c": "holdout",
        "mean": "dev",
        "mean_holdout": "holdout",
    }
    assert set(suite_table(evaluations)["pair"]) == {"a", "b", "c", "mean"}
    every = table[(table["predictor"] == "mneme") & (table["scope"] == "all")].set_index("pair")
    for pair in ("a", "b", "c"):
        want = evaluations[pair]["predictors"]["mneme"]["metrics"]["target"]
        assert every.loc[pair, "target_rank"] == want["rank"]
        assert every.loc[pair, "target_found"] == want["found"]
    assert every.loc["mean", "target_rank"] == pytest.approx((every.loc["a", "target_rank"] + 4.0) / 2)
    assert every.loc["mean_holdout", "target_rank"] == every.loc["c", "target_rank"]
    assert mine["target_rank"].isna().all()  # the side-effect rows leave the target out
    settings = {
        "z_pred": (1.0, 100.0),
        "target": ("activation",),
        "z_cap": (10.0,),
        "min_contexts": (1, 100),
        "membership": ("mass", "lift"),
        "reference": ("corpus",),
    }
    defaults = {
        "z_pred": 1,
        "target": "activation",
        "z_cap": 10,
        "min_contexts": 100,
        "membership": "mass",
        "reference": "corpus",
    }
    with pytest.raises(ValueError, match="missing \\['reference', 'target'\\]"):
        sensitivity(pairs, {k: v for k, v in settings.items() if k not in ("reference", "target")})
    with_ref = sensitivity({"a": pairs["a"]}, {**settings, "reference": ("corpus", "general")})
    assert len(with_ref) == 2 * 24 and set(with_ref["reference"]) == {"corpus", "general"}
    # the grid passes the target and the reference to the decision, and re-decides the tables
    # at each z_pred: a row equals a direct evaluation with the same settings
    one = pairs["a"]
    for target, z_pred in (("activation", 0.0), ("reconstruction", 0.0), ("activation", 2.0)):
        direct = ev.predictor_tables(
            one["evaluation"]["categories"],
            attribution=_restrength(one["attribution"], target, 1e9, 1),
            category_mass=one["category_mass"],
            activation_diff=one["activation_diff"],
            z_pred=z_pred,
            membership="mass",
            reference="general",
        )["mneme_provenance"]
        want = ev.score_predictor(pd.DataFrame(one["evaluation"]["ground_truth"]), direct, ["biology"])
        grid = {"z_pred": (z_pred,), "target": (target,), "z_cap": (1e9,), "min_contexts": (1,)}
        row = sensitivity({"a": one}, {**grid, "membership": ("mass",), "reference": ("general",)})
        row = row[row["route"] == "provenance"].iloc[0]
        assert row["side_effect_auroc"] == pytest.approx(want["side_effects"]["auroc"])
        assert row["side_effect_f1"] == pytest.approx(want["side_effects"]["f1"], nan_ok=True)
        assert row["accuracy"] == pytest.approx(want["all"]["accuracy"])
    targets = sensitivity({"a": one}, {**settings, "target": ("activation", "reconstruction")})
    by_target = targets[targets["route"] == "provenance"].groupby("target")["side_effect_auroc"].mean()
    # the planted change is in the activation target; the reconstruction target has none
    assert by_target["activation"] > by_target["reconstruction"] == 0.5
    # the label-free routes have no general text: the reference does not move them
    for route in ("contexts", "explanations"):
        by_ref = [
            with_ref[(with_ref["route"] == route) & (with_ref["reference"] == r)]
            for r in ("corpus", "general")
        ]
        assert by_ref[0]["side_effect_auroc"].to_numpy() == pytest.approx(
            by_ref[1]["side_effect_auroc"].to_numpy()
        )
    both = sensitivity(pairs, settings, holdout=["c"], defaults=defaults)
    assert both.groupby("group")["n_pairs"].max().to_dict() == {"dev": 2, "holdout": 1}
    marked = both[both["default"]]
    assert len(marked) == 6 and set(marked["z_pred"]) == {1.0} and set(marked["min_contexts"]) == {100}
    assert set(marked["membership"]) == {"mass"}
    del pairs["c"]
    grid = sensitivity(pairs, settings)
    assert set(grid["route"]) == {"provenance", "contexts", "explanations"} and len(grid) == 24
    assert set(grid["group"]) == {"dev"}
    # the membership weight is the provenance route's only: the other routes do not move with it
    ctx = grid[grid["route"] == "contexts"].set_index(["z_pred", "min_contexts", "membership"])
    assert ctx.xs("mass", level="membership")["side_effect_auroc"].equals(
        ctx.xs("lift", level="membership")["side_effect_auroc"]
    )
    grid = grid[grid["membership"] == "mass"]
    prov = grid[grid["route"] == "provenance"].set_index(["z_pred", "min_contexts"])
    assert prov.loc[(1.0, 1), "side_effect_f1"] == pytest.approx(1.0)
    assert prov.loc[(100.0, 1), "side_effect_f1"] == 0.0  # nothing predicted, a chemistry miss
    # no latent has 100 contexts: no evidence at all, an uninformative score
    assert prov.loc[(1.0, 100), "side_effect_auroc"] == 0.5 and prov.loc[(1.0, 100), "side_effect_f1"] == 0


@pytest.mark.parametrize("target", ["activation", "reconstruction", "error"])
@pytest.mark.parametrize(("min_contexts", "z_cap"), [(1, 1e9), (5, 10.0), (20, 3.0)])
def test_the_grids_restrength_is_what_attribute_computes(target, min_contexts, z_cap):
    """The grid re-derives robust mode from the run's attribution.parquet: its strengths and its
    dead latents must be those of :func:`attribute` called with the grid's setting, whatever the
    run's own setting was (dead, rare by tokens, by frequency and by contexts, NaN betas, own
    betas <= 0 and other betas <= 0 among the latents)."""
    from mneme.attribution import attribute, decoder_geometry

    rng = np.random.default_rng(7)
    n, d = 300, 6
    latents = pd.DataFrame(
        {
            "latent": range(n),
            "delta": rng.uniform(0, 1, n),
            "dead": rng.random(n) < 0.05,
            "n_active_contexts": rng.integers(0, 40, n),
        }
    )
    betas = pd.DataFrame({"latent": range(n), "n_active": rng.integers(0, 60, n)})
    latents["freq"] = betas["n_active"] / 1000
    for t in ("reconstruction", "error", "activation"):
        for m in ("base", "ft"):
            for p in ("ftdec", "basedec"):
                col = np.exp(rng.normal(0, 0.3, n)) * np.where(rng.random(n) < 0.03, -1, 1)
                col[rng.random(n) < 0.02] = np.nan
                betas[f"beta_{t}_{m}_{p}"] = col
    betas["sum_f"], betas["sum_f2"] = rng.uniform(1, 5, n), rng.uniform(5, 10, n)
    geometry = decoder_geometry(rng.normal(size=(2, n, d)), rng.normal(size=(2, d)) * 0.1)
    eligibility = {"min_active": 3, "min_freq": 0.004}
    run = attribute(latents, betas, geometry=geometry, target="reconstruction", **eligibility)
    got = _restrength(run, target, z_cap, min_contexts, **eligibility)
    want = attribute(
        latents,
        betas,
        geometry=geometry,
        target=target,
        z_cap=z_cap,
        min_contexts=min_contexts,
        **eligibility,
    )
    assert (want["reason"] == "rare").sum() > 0 and (want["reason"] == "own_beta_nonpositive").sum() > 0
    np.testing.assert_array_equal(got["direction"] == "dead", want["direction"] == "dead")
    np.testing.assert_allclose(got["strength"], want["strength"], equal_nan=True)
