"""Latent statistics and example contexts against brute force over a small dense-encoded store."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from mneme.activation_store import PairedStores
from mneme.corpus import write_corpus
from mneme.crosscoder import CrossCoder
from mneme.latent_stats import (
    _TopTable,
    collect_contexts,
    compute_latent_stats,
    encode_latents,
    read_topk,
)
from mneme.planted import write_paired_stores

D, H = 8, 32
CONTEXT_LEN, FIRST = 17, 1
N_POS = CONTEXT_LEN - FIRST
N_CTX = 41  # the store is 40.5 contexts long: its last context is partial
N_ROWS = 40 * N_POS + N_POS // 2
CATEGORIES = ("biology", "chemistry", "law")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("stats")
    g = torch.Generator().manual_seed(0)
    cc = CrossCoder(D, H, 3, seed=1)
    with torch.no_grad():
        cc.dec_weight.mul_(torch.rand(H, 1, generator=g) + 0.5)
        cc.dec_weight.add_(0.3 * torch.randn(cc.dec_weight.shape, generator=g))
        cc.b_enc.normal_(0, 0.2, generator=g)
        cc.b_enc[3] = -100.0  # dead
        cc.b_enc[4] -= 1.5  # rare
    rng = np.random.default_rng(2)
    base = rng.normal(size=(N_ROWS, D)).astype(np.float32)
    ft = (base + 0.5 * rng.normal(size=(N_ROWS, D))).astype(np.float32)
    man = write_paired_stores(
        base, ft, root / "acts", context_len=CONTEXT_LEN, first_position=FIRST, n_shards=2, chunk_rows=40
    )
    stores = PairedStores(*man)
    x = torch.from_numpy(np.stack(stores.read(0, N_ROWS), 1))
    with torch.no_grad():
        scores = cc.latent_activations(x) * cc.selection_weights()
    cc.threshold.fill_(float(scores[scores > 0].quantile(0.85)))
    cc.save(root / "cc")
    # corpus: documents of 1-30 tokens, packed after a BOS column; some body tokens have no document
    input_ids = rng.integers(5, 1000, (N_CTX, CONTEXT_LEN)).astype(np.int32)
    lengths = rng.integers(1, 30, 200)
    owner = np.repeat(np.arange(200), lengths)[: N_CTX * N_POS].astype(np.int32)
    doc_index = np.full((N_CTX, CONTEXT_LEN), -1, dtype=np.int32)
    doc_index[:, FIRST:] = owner.reshape(N_CTX, N_POS)
    doc_index[5, 3:6] = -1
    used = np.unique(owner)
    docs = pd.DataFrame(
        {
            "doc_index": used.astype(np.int32),
            "doc_id": [f"d{i}" for i in used],
            "source": "test",
            "category": [CATEGORIES[i % 3] for i in used],
            "title": "",
            "n_tokens": 1,
            "first_context": 0,
        }
    )
    tokens, docs_path = str(root / "tokens.zarr"), str(root / "docs.parquet")
    write_corpus(tokens, docs_path, input_ids, doc_index, docs, {})
    with torch.no_grad():
        f = cc.encode(x).numpy()
    return dict(cc=cc, stores=stores, man=man, root=root, tokens=tokens, docs=docs_path, f=f,
                input_ids=input_ids, doc_index=doc_index, docs_df=docs)  # fmt: skip


def context_max(f):
    """Brute force per-context max and argmax position ``[n_ctx, h]`` (partial last context too)."""
    n_ctx = math.ceil(len(f) / N_POS)
    cmax = np.zeros((n_ctx, f.shape[1]), np.float32)
    cpos = np.zeros((n_ctx, f.shape[1]), np.int64)
    for c in range(n_ctx):
        block = f[c * N_POS : (c + 1) * N_POS]
        cmax[c], cpos[c] = block.max(0), FIRST + block.argmax(0)
    return cmax, cpos


@pytest.fixture(scope="module")
def stats(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("stats_out")
    s = setup
    summary = compute_latent_stats(
        s["root"] / "cc", *s["man"], s["tokens"], s["docs"], out / "latents.parquet", out / "topk.npz",
        n_top=5, n_reservoir=4, batch_rows=50, seed=3,
    )  # fmt: skip
    return summary, out


def test_latent_table_matches_brute_force(setup, stats):
    summary, out = stats
    f = setup["f"]
    lat = pd.read_parquet(out / "latents.parquet")
    assert lat["latent"].tolist() == list(range(H))
    active = f > 0
    assert np.array_equal(lat["n_active"], active.sum(0))
    assert np.allclose(lat["freq"], active.mean(0))
    assert np.allclose(lat["sum_activation"], f.sum(0, dtype=np.float64), rtol=1e-5)
    mean = np.where(active.sum(0) > 0, f.sum(0) / np.maximum(active.sum(0), 1), 0)
    assert np.allclose(lat["mean_activation"], mean, rtol=1e-5)
    assert np.allclose(lat["max_activation"], f.max(0), rtol=1e-5)
    cmax, _ = context_max(f)
    assert np.array_equal(lat["n_active_contexts"], (cmax > 0).sum(0))
    assert lat["dead"].tolist() == (active.sum(0) == 0).tolist() and lat.loc[3, "dead"]
    assert 0 < lat.loc[4, "n_active"] < 40
    # decoder statistics
    w = setup["cc"].W_dec.detach().double().numpy()
    nb, nf = np.linalg.norm(w[0], axis=1), np.linalg.norm(w[1], axis=1)
    assert np.allclose(lat["dec_norm_base"], nb) and np.allclose(lat["dec_norm_ft"], nf)
    assert np.allclose(lat["delta"], 0.5 * ((nf - nb) / np.maximum(nf, nb) + 1))
    assert np.allclose(lat["dec_cos"], (w[0] * w[1]).sum(1) / (nb * nf))
    assert summary["n_rows"] == N_ROWS and summary["n_dead"] == int(lat["dead"].sum())


def test_streaming_topk_equals_brute_force(setup, stats):
    _, out = stats
    f = setup["f"]
    cmax, cpos = context_max(f)
    topk = read_topk(out / "topk.npz")
    top = topk[topk["kind"] == "top"]
    for j in range(H):
        order = np.argsort(-cmax[:, j], kind="stable")
        want = [c for c in order[:5] if cmax[c, j] > 0]
        got = top[top["latent"] == j].sort_values("rank")
        assert got["context"].tolist() == want, j
        assert got["rank"].tolist() == list(range(len(want)))
        assert np.allclose(got["activation"], cmax[want, j], rtol=1e-5)
        assert got["position"].tolist() == cpos[want, j].tolist()
    lat = pd.read_parquet(out / "latents.parquet")
    live = ~lat["dead"]
    assert np.array_equal(lat.loc[live, "max_context"], cmax.argmax(0)[live])


def test_reservoir_holds_activating_contexts_only(setup, stats):
    _, out = stats
    cmax, cpos = context_max(setup["f"])
    res = read_topk(out / "topk.npz")
    res = res[res["kind"] == "reservoir"]
    for j in range(H):
        got = res[res["latent"] == j]
        n_fire = int((cmax[:, j] > 0).sum())
        assert len(got) == min(4, n_fire), j
        assert got["context"].is_unique
        ctx = got["context"].to_numpy()
        assert (cmax[ctx, j] > 0).all()
        assert np.allclose(got["activation"], cmax[ctx, j], rtol=1e-5)
        assert np.array_equal(got["position"], cpos[ctx, j])
        assert np.all(np.diff(got.sort_values("rank")["activation"]) <= 0)


def test_reservoir_keys_give_a_uniform_sample():
    """The random-key merge keeps each of 12 activating contexts with probability 3/12."""
    trials, n_ctx, keep = 4000, 12, 3
    gen = torch.Generator().manual_seed(0)
    table = _TopTable(trials, keep, -1.0)  # one "latent" per trial
    for c0 in range(0, n_ctx, 5):  # batches of 5, 5 and 2 contexts
        ctx = torch.arange(c0, min(c0 + 5, n_ctx)).unsqueeze(0)
        nc = ctx.shape[1]
        fires = torch.ones(trials, nc, dtype=torch.bool)
        fires[:, -1] = c0 != 5  # context 9 never fires
        keys = torch.where(fires, torch.rand(trials, nc, generator=gen), -1.0)
        table.merge(keys, ctx, torch.zeros(trials, nc, dtype=torch.long), torch.ones(trials, nc))
    counts = np.bincount(table.context.reshape(-1).numpy(), minlength=n_ctx)
    assert counts[9] == 0
    p = counts[np.arange(n_ctx) != 9] / trials
    assert np.allclose(p, keep / 11, atol=0.035), p


def test_category_mass_equals_brute_force(setup, stats):
    _, out = stats
    f = setup["f"]
    docs = setup["docs_df"].set_index("doc_index")["category"]
    di = setup["doc_index"][:, FIRST:].reshape(-1)[:N_ROWS]
    cats = np.array([docs[d] if d >= 0 else "(none)" for d in di])
    mass = pd.read_parquet(out / "category_mass.parquet")
    assert set(mass.columns) == {"latent", "category", "mass", "share"}
    for j in range(H):
        got = mass[mass["latent"] == j].set_index("category")["mass"]
        want = {c: float(f[cats == c, j].sum()) for c in (*CATEGORIES, "(none)") if f[cats == c, j].sum() > 0}
        assert set(got.index) == set(want), j
        for c, v in want.items():
            assert got[c] == pytest.approx(v, rel=1e-5)
        if want:
            share = mass[mass["latent"] == j]["share"]
            assert share.sum() == pytest.approx(1.0)
    lat = pd.read_parquet(out / "latents.parquet")
    j = int(lat["n_active"].idxmax())
    by_cat = mass[mass["latent"] == j].set_index("category")["mass"]
    assert lat.loc[j, "top_category"] == by_cat.idxmax()


def test_max_rows_and_formats(setup, tmp_path):
    s = setup
    summary = compute_latent_stats(
        s["root"] / "cc", *s["man"], None, None, tmp_path / "l.parquet", tmp_path / "t.parquet",
        n_top=3, n_reservoir=2, batch_rows=1000, max_rows=100,
    )  # fmt: skip
    assert summary["n_rows"] == 96  # 6 whole contexts
    lat = pd.read_parquet(tmp_path / "l.parquet")
    assert np.array_equal(lat["n_active"], (s["f"][:96] > 0).sum(0))
    t = read_topk(tmp_path / "t.parquet")
    assert list(t.columns) == ["latent", "kind", "rank", "context", "position", "activation"]
    assert t["context"].max() < 6
    assert pd.read_parquet(tmp_path / "category_mass.parquet").empty


def test_encode_latents_equals_dense_columns(setup):
    cc, stores = setup["cc"], setup["stores"]
    x = torch.from_numpy(np.stack(stores.read(0, 200), 1))
    cols = torch.tensor([5, 0, 17, 31])
    with torch.no_grad():
        assert torch.allclose(encode_latents(cc, x, cols), cc.encode(x)[:, cols], atol=1e-6)


def test_collect_contexts_windows(setup, stats, tmp_path):
    _, out = stats
    s = setup
    f, ids = s["f"], s["input_ids"]
    cmax, _ = context_max(f)
    lat = pd.read_parquet(out / "latents.parquet")
    live = lat.loc[~lat["dead"]].sort_values("n_active")["latent"].tolist()
    wanted = [live[0], live[len(live) // 2], live[-1], 3]  # rare, typical, dense, dead
    df = collect_contexts(
        s["root"] / "cc", *s["man"], s["tokens"], out / "topk.npz", wanted, tmp_path / "ctx.parquet",
        window=6, n_top=3, n_quantile_examples=3, n_quantiles=2, n_negative=4, seed=1,
    )  # fmt: skip
    assert list(df.columns) == [
        "latent", "kind", "rank", "quantile", "context", "peak_position", "window_start",
        "token_ids", "activations", "max_activation",
    ]  # fmt: skip
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "ctx.parquet"), df)
    topk = read_topk(out / "topk.npz")
    for j in wanted:
        recs = df[df["latent"] == j]
        tops = recs[recs["kind"] == "top"]
        want_top = (
            topk[(topk["latent"] == j) & (topk["kind"] == "top")].sort_values("rank")["context"].head(3)
        )
        assert tops["context"].tolist() == want_top.tolist()
        assert tops["rank"].tolist() == list(range(len(tops)))
        quant = recs[recs["kind"] == "quantile"]
        res = topk[(topk["latent"] == j) & (topk["kind"] == "reservoir")]
        assert set(quant["context"]) <= set(res["context"]) - set(tops["context"])
        assert len(quant) == min(3, len(set(res["context"]) - set(tops["context"])))
        assert quant["quantile"].between(0, 1).all() and (tops["quantile"] == -1).all()
        for _, r in recs.iterrows():
            c, start = int(r["context"]), int(r["window_start"])
            n_pos_c = min(N_POS, N_ROWS - c * N_POS)
            w = len(r["token_ids"])
            assert w == len(r["activations"]) == min(6, n_pos_c)
            assert FIRST <= start and start + w <= FIRST + n_pos_c
            assert list(r["token_ids"]) == ids[c, start : start + w].tolist()
            rows = c * N_POS + np.arange(start - FIRST, start - FIRST + w)
            assert np.allclose(r["activations"], f[rows, j], atol=1e-5)
            if r["kind"] == "negative":
                assert (f[rows, j] == 0).all() and r["peak_position"] == -1
            else:
                assert start <= r["peak_position"] < start + w
                assert r["max_activation"] == pytest.approx(cmax[c, j], rel=1e-5)
                assert r["max_activation"] == pytest.approx(max(r["activations"]), rel=1e-6)
        assert (recs["kind"] == "negative").sum() == 4
        assert recs[recs["kind"] == "negative"]["context"].is_unique
    assert set(df[df["latent"] == 3]["kind"]) == {"negative"}
