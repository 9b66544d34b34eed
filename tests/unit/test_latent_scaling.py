"""Latent scaling (F11) against per-latent least-squares fits with explicit targets."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from mneme import latent_scaling
from mneme.activation_store import PairedStores
from mneme.crosscoder import CrossCoder
from mneme.latent_scaling import (
    MODELS,
    PROBES,
    TARGETS,
    beta_column,
    closed_form_beta,
    compute_betas,
    crosscoder_train_stop,
)
from mneme.planted import write_paired_stores

D, H = 8, 40
CONTEXT_LEN, FIRST = 17, 1  # 16 rows per context
N_ROWS, VAL_TOKENS = 50 * 16, 100


def lstsq_beta(f, v, y):
    """Reference: the least-squares scalar for the design ``f_i * v`` against ``y_i``, by numpy."""
    a = (np.asarray(f, np.float64)[:, None] * np.asarray(v, np.float64)[None, :]).reshape(-1, 1)
    sol, *_ = np.linalg.lstsq(a, np.asarray(y, np.float64).reshape(-1), rcond=None)
    return float(sol[0])


def test_closed_form_equals_lstsq():
    rng = np.random.default_rng(0)
    for _ in range(5):
        n, d = rng.integers(3, 40), rng.integers(2, 10)
        f = np.abs(rng.normal(size=n)) * (rng.random(n) < 0.6)
        f[0] = 0.7  # at least one active token
        v, y = rng.normal(size=d), rng.normal(size=(n, d))
        assert closed_form_beta(f, v, y) == pytest.approx(lstsq_beta(f, v, y), rel=1e-9, abs=1e-12)
    assert np.isnan(closed_form_beta(np.zeros(4), np.ones(3), np.ones((4, 3))))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny crosscoder with distinct base/ft decoders and a threshold, and a 2-shard store whose
    chunks do not line up with contexts; latent 0 never fires."""
    root = tmp_path_factory.mktemp("ls")
    g = torch.Generator().manual_seed(0)
    cc = CrossCoder(D, H, 4, seed=0)
    with torch.no_grad():
        cc.dec_weight.mul_(torch.rand(H, 1, generator=g) * 1.5 + 0.3)
        cc.dec_weight.add_(0.3 * torch.randn(cc.dec_weight.shape, generator=g))
        cc.dec_weight[:5, :D] *= 0.05  # a few ft-leaning and base-leaning latents
        cc.dec_weight[5:10, D:] *= 0.05
        cc.b_enc.normal_(0, 0.2, generator=g)
        cc.b_enc[0] = -100.0
        cc.b_dec.normal_(0, 0.3, generator=g)
    rng = np.random.default_rng(1)
    base = rng.normal(size=(N_ROWS, D)).astype(np.float32) + 0.5
    ft = (base + 0.5 * rng.normal(size=(N_ROWS, D))).astype(np.float32)
    man = write_paired_stores(
        base, ft, root / "acts", context_len=CONTEXT_LEN, first_position=FIRST, n_shards=2, chunk_rows=48
    )
    stores = PairedStores(*man)
    xb, xf = stores.read(0, N_ROWS)
    x = torch.from_numpy(np.stack([xb, xf], 1))
    with torch.no_grad():
        scores = cc.latent_activations(x) * cc.selection_weights()
    cc.threshold.fill_(float(scores[scores > 0].quantile(0.8)))  # ~ a few active latents per token
    cc.save(root / "cc", extra_config={"training_config": {"val_tokens": VAL_TOKENS}})
    return cc, stores, man, root


def reference_betas(cc, stores, lo, hi):
    """Per-latent loop with explicit targets and numpy lstsq."""
    xb, xf = stores.read(lo, hi)
    x = torch.from_numpy(np.stack([xb, xf], 1))
    with torch.no_grad():
        f = cc.encode(x).double().numpy()
        x_hat = cc.decode(torch.from_numpy(f).float()).double().numpy()
    x = x.double().numpy()
    w = cc.W_dec.detach().double().numpy()  # [2, h, d]
    rows = []
    for j in range(cc.dict_size):
        fj = f[:, j]
        row = {"latent": j, "n_active": int((fj > 0).sum()), "sum_f2": float(fj @ fj)}
        for probe, v in (("ftdec", w[1, j]), ("basedec", w[0, j])):
            for m, model in enumerate(MODELS):
                targets = {
                    "activation": x[:, m],
                    "reconstruction": x_hat[:, m],
                    "error": x[:, m] - x_hat[:, m] + fj[:, None] * w[m, j][None, :],
                }
                for target, y in targets.items():
                    beta = lstsq_beta(fj, v, y) if row["n_active"] else np.nan
                    row[beta_column(target, model, probe)] = beta
        rows.append(row)
    return pd.DataFrame(rows)


def check_against_reference(got, want):
    assert got["latent"].tolist() == want["latent"].tolist()
    assert np.array_equal(got["n_active"].to_numpy(), want["n_active"].to_numpy())
    assert np.allclose(got["sum_f2"], want["sum_f2"], rtol=1e-5)
    for target in TARGETS:
        for model in MODELS:
            for probe in PROBES:
                c = beta_column(target, model, probe)
                a, b = got[c].to_numpy(), want[c].to_numpy()
                assert np.array_equal(np.isnan(a), np.isnan(b)), c
                ok = ~np.isnan(b)
                assert np.allclose(a[ok], b[ok], rtol=2e-4, atol=2e-4), (c, np.abs(a[ok] - b[ok]).max())


def test_one_pass_equals_per_latent_loop(setup, tmp_path):
    cc, stores, man, root = setup
    stop = crosscoder_train_stop(root / "cc", stores)
    assert stop == N_ROWS - 112  # 100 validation tokens rounded up to 7 whole contexts of 16 rows
    got = compute_betas(root / "cc", *man, tmp_path / "betas.parquet", batch_rows=37)
    want = reference_betas(cc, stores, 0, stop)
    assert want["n_active"].iloc[0] == 0 and (want["n_active"] > 0).sum() > 30
    check_against_reference(got, want)
    on_disk = pd.read_parquet(tmp_path / "betas.parquet")
    pd.testing.assert_frame_equal(on_disk, got)
    # ratios: nu with the ft probe (base / ft), mu with the base probe (ft / base)
    col = beta_column
    live = got["n_active"] > 0
    g = got[live]
    assert np.allclose(
        g["nu_r"], g[col("reconstruction", "base", "ftdec")] / g[col("reconstruction", "ft", "ftdec")]
    )
    assert np.allclose(g["nu_eps"], g[col("error", "base", "ftdec")] / g[col("error", "ft", "ftdec")])
    assert np.allclose(
        g["mu_r"], g[col("reconstruction", "ft", "basedec")] / g[col("reconstruction", "base", "basedec")]
    )
    assert np.allclose(g["mu_eps"], g[col("error", "ft", "basedec")] / g[col("error", "base", "basedec")])
    assert np.allclose(g["nu_a"], g[col("activation", "base", "ftdec")] / g[col("activation", "ft", "ftdec")])
    assert got.loc[~live, "nu_r"].isna().all()
    cost = json.loads((tmp_path / "scaling_cost.json").read_text())
    assert cost["rows"] == stop and cost["train_stop"] == stop
    assert cost["scaling_seconds"] > 0 and cost["inference_seconds"] > 0 and cost["cost_vs_inference"] > 0


def test_row_range_and_max_rows(setup, tmp_path, monkeypatch):
    cc, stores, man, root = setup
    monkeypatch.setattr(latent_scaling, "BLOCK_FLOATS", 4 * D * 7)  # blocks of 7 latents
    got = compute_betas(
        root / "cc", *man, tmp_path / "b.parquet", row_range=(100, 10_000), max_rows=300, batch_rows=64,
        time_inference=False,
    )  # fmt: skip
    check_against_reference(got, reference_betas(cc, stores, 100, 400))
    cost = json.loads((tmp_path / "scaling_cost.json").read_text())
    assert (cost["row_start"], cost["row_stop"]) == (100, 400) and "inference_seconds" not in cost
    with pytest.raises(ValueError, match="no rows"):
        compute_betas(root / "cc", *man, tmp_path / "c.parquet", row_range=(N_ROWS - 50, N_ROWS))
