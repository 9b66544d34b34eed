"""Mapping explanations to categories: embedding (offline MiniLM), LLM classifier, provenance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mneme import categorize
from mneme.categorize import (
    OUTPUT_COLUMNS,
    EmbeddingClassifier,
    categorize_provenance,
    load_category_set,
    map_categories,
    run_map_categories,
    with_defaults,
)

REPO = Path(__file__).resolve().parents[2]
GCIDE_CATEGORIES = REPO / "config" / "categories" / "gcide.yaml"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny encode batches: a second OpenMP thread only spins on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def embedding_model():
    return categorize.load_embedding_model()


@pytest.fixture(scope="module")
def category_set():
    return load_category_set(GCIDE_CATEGORIES)


def test_embedding_maps_hand_made_explanations(embedding_model, category_set):
    cats, general = category_set
    assert general == "general" and "biology" in cats and "law" in cats
    clf = EmbeddingClassifier(cats, threshold=0.3, model=embedding_model)
    texts = [
        "mentions of animals, species and zoology terms",
        "legal proceedings, courts, statutes",
        "xqz vlorp brandle snik ededed",
        "[keywords] activates on: acid, salt, oxide; context: compound, solution",
        "",
        None,
    ]
    res = clf.classify(texts)
    assert [r[0] for r in res] == ["biology", "law", "none", "chemistry", "none", "none"]
    assert res[0][1] > 0.4 and res[2][1] < 0.3 and res[4] == ("none", 0.0)


def test_embedding_uses_category_examples(embedding_model):
    cats = {
        "cooking": {"description": "Cooking.", "examples": ["recipes with flour, butter and an oven"]},
        "sports": {"description": "Sports.", "examples": []},
    }
    with_ex = EmbeddingClassifier(cats, threshold=0.0, model=embedding_model)
    without = EmbeddingClassifier(cats, threshold=0.0, use_examples=False, model=embedding_model)
    text = ["baking bread and cakes"]
    assert with_ex.classify(text)[0][0] == "cooking"
    assert with_ex.scores(text)[0, 0] > without.scores(text)[0, 0]


def test_provenance_on_constructed_mass_table():
    mass = pd.DataFrame(
        [
            (1, "biology", 8.0, 0.8),
            (1, "general", 2.0, 0.2),
            (2, "general", 6.0, 0.6),
            (2, "law", 3.0, 0.3),
            (2, "music", 1.0, 0.1),
            (3, "chemistry", 2.0, 0.2),
            (3, "physics", 1.0, 0.1),
            (3, "general", 7.0, 0.7),
        ],
        columns=["latent", "category", "mass", "share"],
    )
    res = categorize_provenance(mass, [1, 2, 3, 4], "general", min_share=0.3, general="none")
    assert res[1] == ("biology", 0.8)
    assert res[2] == ("none", 0.6)  # the top category is the general one
    assert res[3] == ("none", 0.7)
    assert res[4] == ("none", 0.0)  # no mass at all
    res = categorize_provenance(mass, [1, 2, 3], "general", min_share=0.5, general="exclude")
    assert res[1] == ("biology", 1.0)
    assert res[2][0] == "law" and res[2][1] == pytest.approx(0.75)
    assert res[3][0] == "chemistry" and res[3][1] == pytest.approx(2 / 3)
    res = categorize_provenance(mass, [2], "general", min_share=0.8, general="exclude")
    assert res[2][0] == "none"


class ClassifierBackend:
    name = "fake"
    model = "clf"

    def __init__(self):
        self.calls = 0

    def generate_many(self, prompts, max_tokens=None, temperature=None):
        for i, messages in enumerate(prompts):
            self.calls += 1
            desc = messages[-1]["content"].split("Feature description:")[1]
            yield i, ("Law." if "court" in desc else "the answer is biology" if "animal" in desc else "hmm")


def test_map_categories_all_methods(embedding_model, category_set, tmp_path):
    cats, general = category_set
    expl = pd.DataFrame(
        {
            "latent": [10, 11, 12],
            "explanation": [
                "mentions of animals, species and zoology terms",
                "legal proceedings, courts, statutes",
                "ededed ededed",
            ],
        }
    )
    attr = pd.DataFrame({"latent": [10, 11, 12], "direction": ["suppressed", "amplified", "suppressed"]})
    mass = pd.DataFrame(
        [(10, "biology", 5.0, 0.9), (10, "general", 0.5, 0.1), (11, "general", 1.0, 1.0)],
        columns=["latent", "category", "mass", "share"],
    )
    cfg = {"methods": ["embedding", "llm", "provenance"], "predict_with": "llm"}
    backend = ClassifierBackend()
    cache = tmp_path / "cat_cache.jsonl"
    df = map_categories(expl, attr, mass, cats, general, cfg, backend, embedding_model, cache, "fake:clf")
    assert list(df.columns) == OUTPUT_COLUMNS
    d = df.set_index("latent")
    assert d["direction"].tolist() == ["suppressed", "amplified", "suppressed"]
    assert d["category_embedding"].tolist() == ["biology", "law", "none"]
    assert d["category_llm"].tolist() == ["biology", "law", "none"]
    assert d["conf_llm"].tolist() == [0.5, 1.0, 0.0]
    assert d["category_provenance"].tolist() == ["biology", "none", "none"]
    assert d["category"].tolist() == d["category_llm"].tolist()
    assert backend.calls == 3
    map_categories(expl, attr, mass, cats, general, cfg, backend, embedding_model, cache, "fake:clf")
    assert backend.calls == 3  # answered from the cache

    only = map_categories(
        expl, attr, None, cats, general, {"methods": ["embedding"]}, embedding_model=embedding_model
    )
    assert only["category_llm"].isna().all() and only["conf_provenance"].isna().all()
    assert only["category"].tolist() == ["biology", "law", "none"]


def test_config_checks(tmp_path):
    assert with_defaults(None)["predict_with"] == "embedding"
    with pytest.raises(ValueError, match="predict_with"):
        with_defaults({"methods": ["provenance"]})
    with pytest.raises(ValueError, match="categories.methods"):
        with_defaults({"methods": ["vibes"]})
    with pytest.raises(ValueError, match="categories.embedding: unknown"):
        with_defaults({"embedding": {"treshold": 0.2}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("categories:\n  none:\n    description: x\n")
    with pytest.raises(ValueError, match="reserved"):
        load_category_set(bad)
    with pytest.raises(ValueError, match="LLM backend"):
        map_categories(
            pd.DataFrame({"latent": [1], "explanation": ["x"]}),
            None,
            None,
            {"a": {"description": "a"}},
            cfg={"methods": ["llm"], "predict_with": "llm"},
        )


def test_run_map_categories_writes_parquet(tmp_path, embedding_model, monkeypatch):
    monkeypatch.setattr(categorize, "load_embedding_model", lambda *a, **k: embedding_model)
    pd.DataFrame({"latent": [1, 2], "explanation": ["sailing ships and rigging", "church clergy"]}).to_json(
        tmp_path / "explanations.jsonl", orient="records", lines=True
    )
    pd.DataFrame(
        {"latent": [1, 2], "direction": ["amplified", "suppressed"], "strength": [1.0, 2.0]}
    ).to_parquet(tmp_path / "attribution.parquet")
    pd.DataFrame(
        [(1, "nautical", 1.0, 1.0), (2, "general", 1.0, 1.0)], columns=["latent", "category", "mass", "share"]
    ).to_parquet(tmp_path / "category_mass.parquet")
    out = tmp_path / "categories.parquet"
    run_map_categories(
        {"methods": ["embedding", "provenance"], "predict_with": "provenance"},
        tmp_path / "explanations.jsonl",
        GCIDE_CATEGORIES,
        out,
        attribution_path=tmp_path / "attribution.parquet",
        category_mass_path=tmp_path / "category_mass.parquet",
    )
    df = pd.read_parquet(out)
    assert list(df.columns) == OUTPUT_COLUMNS
    assert df["category_embedding"].tolist() == ["nautical", "religion"]
    assert df["category"].tolist() == ["nautical", "none"]


# --- the label-free context mapping -------------------------------------------------------------


def test_context_memberships_against_hand_computed():
    from mneme.context_mapping import memberships

    sims = np.array([[0.50, 0.48, 0.10], [0.20, 0.21, 0.19], [0.9, 0.2, 0.88]])
    out = memberships(np.array([7, 8, 9]), sims, ["a", "b", "c"], threshold=0.25, margin=0.03)
    got = {(int(r.latent), r.category): r.weight for r in out.itertuples()}
    # latent 7: a and b within 0.03 of the best; latent 8: below the threshold; latent 9: a and c
    assert got == {(7, "a"): 0.5, (7, "b"): 0.5, (9, "a"): 0.5, (9, "c"): 0.5}


def test_latent_embeddings_are_activation_weighted_means():
    from mneme.context_mapping import latent_embeddings, windows

    emb = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    keys = pd.DataFrame({"context": [0, 0, 1], "position": [3, 5, 2]})
    index = pd.Series(np.arange(3), index=pd.MultiIndex.from_frame(keys))
    top = pd.DataFrame(
        {"latent": [4, 4, 6], "context": [0, 0, 1], "position": [3, 5, 2], "activation": [3.0, 1.0, 2.0]}
    )
    lat, out = latent_embeddings(top, emb, index)
    want = np.array([3.0, 1.0]) / np.linalg.norm([3.0, 1.0])
    assert lat.tolist() == [4, 6]
    np.testing.assert_allclose(out[0], want, rtol=1e-6)
    np.testing.assert_allclose(out[1], [0.6, 0.8], rtol=1e-6)
    ids = np.arange(20).reshape(2, 10)
    w = windows(ids, np.array([0, 1]), np.array([1, 8]), before=3, after=1)
    assert w[0].tolist() == [1, 2] and w[1].tolist() == [15, 16, 17, 18, 19]  # BOS and the end clipped


def test_context_mapping_on_constructed_contexts(embedding_model, category_set):
    """Windows whose domain is known map to it, with no explanation and no corpus label."""
    from mneme.context_mapping import latent_embeddings, memberships

    cats, _ = category_set
    clf = EmbeddingClassifier(cats, model=embedding_model)
    contexts = {
        0: ["sulphuric acid dissolves the metal oxide", "a salt formed from sodium and chlorine"],
        1: ["the court held the contract void", "the plaintiff sued for breach of the lease"],
        2: ["a small songbird of the thrush family", "a genus of flowering plants with bulbs"],
    }
    texts = [t for ts in contexts.values() for t in ts]
    keys = pd.DataFrame({"context": range(len(texts)), "position": 1})
    top = keys.assign(latent=np.repeat(list(contexts), 2), activation=1.0)
    index = pd.Series(np.arange(len(texts)), index=pd.MultiIndex.from_frame(keys))
    lat, emb = latent_embeddings(top, clf.encode(texts), index)
    out = memberships(lat, clf.scores_from_embeddings(emb), clf.names, threshold=0.25, margin=0.03)
    best = out.sort_values("similarity").drop_duplicates("latent", keep="last").set_index("latent")
    assert best["category"].to_dict() == {0: "chemistry", 1: "law", 2: "biology"}


def test_standardise_removes_a_category_bias():
    from mneme.context_mapping import memberships, standardise

    # every latent is close to "a" (a biased description); latent 2 is unusually close to "b"
    sims = np.array([[0.6, 0.1], [0.62, 0.12], [0.58, 0.4], [0.61, 0.11]])
    z = standardise(sims)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(z.std(0), 1)
    out = memberships(np.arange(4), z, ["a", "b"], threshold=1.5, margin=0.3)
    assert out[["latent", "category"]].values.tolist() == [[2, "b"]]
