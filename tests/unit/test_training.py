"""Crosscoder training end to end: config, planted-feature recovery, outputs, resume and NaN handling."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest
import torch

from mneme.activation_store import PairedStores
from mneme.crosscoder import load_crosscoder
from mneme.paired_loader import PairedBatchLoader
from mneme.planted import (
    FEATURE_KINDS,
    best_matches,
    generate_planted,
    write_paired_stores,
    write_planted_stores,
)
from mneme.training import CrosscoderTrainConfig, TrainingDivergedError, train_crosscoder

# ---------------------------------------------------------------- config


def test_config_defaults_are_the_schemas_cpu_demo_profile():
    c = CrosscoderTrainConfig.from_dict({})
    assert (c.expansion_factor, c.k, c.lr, c.batch_size) == (8, 16, 5e-4, 512)
    assert (c.epochs, c.val_tokens, c.aux_alpha, c.dead_tokens) == (2.0, 50_000, 1 / 32, 200_000)
    assert (c.threshold_beta, c.threshold_start_step) == (0.99, 100)
    assert (c.warmup_steps, c.grad_clip, c.norm_init_scale, c.recon_loss) == (100, 1.0, 1.0, "l2")
    assert c.k_anneal_start is None and c.decay_start is None and c.device == "auto" and not c.autocast_bf16


def test_config_from_dict_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match=r"crosscoder: unknown key\(s\) 'expansion'; allowed keys: "):
        CrosscoderTrainConfig.from_dict({"expansion": 8})
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'lrate', 'tokens'"):
        CrosscoderTrainConfig.from_dict({"k": 4, "tokens": 10, "lrate": 1e-3})
    with pytest.raises(ValueError, match="crosscoder.recon_loss: 'l1' is not one of"):
        CrosscoderTrainConfig.from_dict({"recon_loss": "l1"})
    with pytest.raises(ValueError, match="crosscoder.k: 2.5 is not of type 'integer'"):
        CrosscoderTrainConfig.from_dict({"k": 2.5})


def test_config_values_and_schedules():
    assert CrosscoderTrainConfig.from_dict(None) == CrosscoderTrainConfig.from_dict({})
    assert CrosscoderTrainConfig.from_dict({"lr": None}).learning_rate(2**14 * 4) == pytest.approx(1e-4)
    c = CrosscoderTrainConfig.from_dict({"k": 10, "k_anneal_start": 50, "k_anneal_steps": 4})
    assert [c.k_at(s) for s in range(6)] == [50, 40, 30, 20, 10, 10]
    c = CrosscoderTrainConfig.from_dict({"warmup_steps": 4, "decay_start": 6})
    assert [c.lr_factor(s, 10) for s in range(10)] == pytest.approx(
        [0, 0.25, 0.5, 0.75, 1, 1, 1, 0.75, 0.5, 0.25]
    )
    assert (
        c.total_steps(1000) == 3
        and CrosscoderTrainConfig.from_dict({"n_tokens": 2048, "batch_size": 512}).total_steps(10) == 4
    )


# ---------------------------------------------------------------- planted features


PLANTED_CFG = dict(
    expansion_factor=4,
    k=3,
    batch_size=256,
    epochs=5,
    val_tokens=2000,
    lr=3e-3,
    dead_tokens=5000,
    threshold_start_step=50,
    threshold_beta=0.99,
    warmup_steps=20,
    log_every=50,
    checkpoint_every=200,
    shuffle_buffer_rows=8192,
    device="cpu",
)


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("planted")
    data = generate_planted(n_rows=30_000, d_model=32, seed=0)
    stores = PairedStores(*write_planted_stores(data, root / "acts", chunk_rows=1024, n_shards=2))
    summary = train_crosscoder(stores, root / "cc", CrosscoderTrainConfig.from_dict(PLANTED_CFG))
    return data, stores, root / "cc", summary


def test_planted_features_are_recovered(planted_run):
    data, stores, out, summary = planted_run
    cc = load_crosscoder(out)
    cos, latent = best_matches(cc.W_dec.detach().numpy(), data.features, stores.norm_scales)
    assert (cos >= 0.9).mean() >= 0.9, np.round(cos, 3)
    delta = cc.relative_decoder_norm().numpy()[latent]
    ok = cos >= 0.9
    by_kind = {k: delta[data.features.indices(k)][ok[data.features.indices(k)]] for k in FEATURE_KINDS}
    assert np.all(by_kind["base_only"] < 0.1), by_kind
    assert np.all(np.abs(by_kind["shared"] - 0.5) < 0.1), by_kind
    assert np.all(by_kind["ft_only"] > 0.9), by_kind
    assert np.all(by_kind["ft_scaled"] < 0.3) and np.all(by_kind["base_scaled"] > 0.7), by_kind
    assert summary["fvu_base"] < 0.1 and summary["fvu_ft"] < 0.1
    assert 1.5 < summary["l0"] < 6  # threshold encoding keeps L0 near k = 3


def test_outputs_are_complete_and_reloadable(planted_run):
    data, stores, out, summary = planted_run
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "metrics.jsonl",
        "model.safetensors",
        "validation.json",
    ]
    assert not out.with_name(out.name + ".tmp").exists()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["d_model"] == 32 and cfg["dict_size"] == 128 and cfg["k"] == 3
    assert cfg["threshold"] > 0 and cfg["norm_scales"] == pytest.approx(list(stores.norm_scales))
    assert cfg["training_config"]["lr"] == 3e-3 and cfg["n_val_rows"] == 2000
    assert json.loads((out / "validation.json").read_text()) == summary
    for key in ("fvu_base", "fvu_ft", "l0", "dead_fraction", "n_tokens"):
        assert key in summary
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in lines]
    assert steps == sorted(set(steps)) and steps[-1] == summary["steps"]
    for key in ("loss", "fvu_base", "fvu_ft", "l0", "dead_fraction", "aux_loss", "lr", "tokens_per_s"):
        assert key in lines[-1]
    cc = load_crosscoder(out)
    x = torch.from_numpy(
        np.stack([data.xb[-500:] * stores.norm_scales[0], data.xf[-500:] * stores.norm_scales[1]], 1)
    )
    code = cc.encode_sparse(x.float(), use_threshold=True)
    assert abs(code.l0 - summary["l0"]) < 1.0


# ---------------------------------------------------------------- resume and divergence


SMALL_CFG = dict(
    expansion_factor=4,
    k=2,
    batch_size=64,
    n_tokens=64 * 14,
    val_tokens=128,
    lr=2e-3,
    dead_tokens=256,
    threshold_start_step=3,
    warmup_steps=3,
    decay_start=8,
    checkpoint_every=5,
    log_every=2,
    shuffle_buffer_rows=256,
    k_anneal_start=5,
    k_anneal_steps=6,
    device="cpu",
)


@pytest.fixture(scope="module")
def small_stores(tmp_path_factory):
    data = generate_planted(n_rows=640, d_model=16, seed=1, n_shared=8, n_ft_only=4, n_base_only=4)
    return PairedStores(*write_planted_stores(data, tmp_path_factory.mktemp("small"), chunk_rows=64))


class Killed(Exception):
    pass


def test_resume_after_kill_gives_identical_weights(small_stores, tmp_path):
    cfg = CrosscoderTrainConfig.from_dict(SMALL_CFG)
    straight = train_crosscoder(small_stores, tmp_path / "a", cfg)
    assert straight["steps"] == 14  # > 1 epoch of 512 training rows: the resume crosses an epoch

    def kill_at_12(step, info):
        if step == 12:
            raise Killed

    with pytest.raises(Killed):
        train_crosscoder(small_stores, tmp_path / "b", cfg, on_step=kill_at_12)
    assert not (tmp_path / "b").exists()
    state = torch.load(tmp_path / "b.tmp" / "checkpoint" / "state.pt", weights_only=False)
    assert state["step"] == 10
    resumed = train_crosscoder(small_stores, tmp_path / "b", cfg)
    a, b = load_crosscoder(tmp_path / "a"), load_crosscoder(tmp_path / "b")
    for name, p in a.state_dict().items():
        assert torch.allclose(p, b.state_dict()[name], atol=1e-6, rtol=0), name
    assert float(a.threshold) == pytest.approx(float(b.threshold), abs=1e-6)
    assert resumed["fvu_base"] == pytest.approx(straight["fvu_base"], abs=1e-6)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6, 8, 10, 12, 14]


def test_resume_false_starts_afresh(small_stores, tmp_path):
    cfg = CrosscoderTrainConfig.from_dict(SMALL_CFG)

    def kill(step, info):
        if step == 7:
            raise Killed

    with pytest.raises(Killed):
        train_crosscoder(small_stores, tmp_path / "c", cfg, on_step=kill)
    seen = []
    train_crosscoder(small_stores, tmp_path / "c", cfg, resume=False, on_step=lambda s, i: seen.append(s))
    assert seen[0] == 1 and seen[-1] == 14


class InfRowsStores(PairedStores):
    """Paired stores whose base rows in ``rows`` read as inf."""

    def __init__(self, base, ft, rows: tuple[int, int]) -> None:
        super().__init__(base, ft)
        self.bad = rows

    def read(self, start, stop, normalise=True):
        xb, xf = super().read(start, stop, normalise)
        lo, hi = max(start, self.bad[0]), min(stop, self.bad[1])
        if lo < hi:
            xb[lo - start : hi - start] = np.inf
        return xb, xf


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path):
    data = generate_planted(n_rows=1024, d_model=16, seed=2, n_shared=8, n_ft_only=4, n_base_only=4)
    base_manifest, ft_manifest = write_paired_stores(data.xb, data.xf, tmp_path / "acts", chunk_rows=64)
    # rows 640-704 of the base model read as inf (a store refuses such rows, so they are injected
    # after the read: what a numerically diverging model would produce)
    stores = InfRowsStores(base_manifest, ft_manifest, rows=(640, 704))
    cfg = dict(SMALL_CFG, n_tokens=64 * 40, checkpoint_every=2, k_anneal_start=None)
    # the first batch that contains a bad row, from the loader itself (seed chosen so it is not the first)
    for seed in range(20):
        loader = PairedBatchLoader(stores, 64, seed=seed, val_tokens=128, shuffle_buffer_rows=256)
        bad = next(
            i for i, b in enumerate(itertools.islice(loader.iter_train(), 40)) if not np.isfinite(b.x).all()
        )
        if bad >= 3:
            break
    with pytest.raises(TrainingDivergedError, match=rf"step {bad}\b") as err:
        train_crosscoder(stores, tmp_path / "cc", CrosscoderTrainConfig.from_dict(dict(cfg, seed=seed)))
    last = (bad // 2) * 2
    assert re.search(rf"checkpoint \(step {last}\)", str(err.value))
    state = torch.load(tmp_path / "cc.tmp" / "checkpoint" / "state.pt", weights_only=False)
    assert state["step"] == last
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (tmp_path / "cc").exists()


def test_logged_fvu_is_over_the_whole_log_window():
    """The logged training FVU equals the FVU of all batches since the last log, concatenated."""
    from mneme.crosscoder import fraction_of_variance_unexplained
    from mneme.training import _FVUWindow

    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(16, 2, 8, generator=g) + shift for shift in (0.0, 3.0, -2.0)]
    recons = [x + 0.3 * torch.randn(x.shape, generator=g) for x in batches]
    window = _FVUWindow()
    for x, x_hat in zip(batches, recons):
        window.add(x, x_hat)
    x_all, hat_all = torch.cat(batches), torch.cat(recons)
    reference = ((x_all - hat_all) ** 2).sum(dim=(0, 2)) / ((x_all - x_all.mean(0)) ** 2).sum(dim=(0, 2))
    assert window.fvu() == pytest.approx(reference.tolist(), rel=1e-5)
    window.add(batches[0], recons[0])  # the window starts afresh after a log line
    assert window.fvu() == pytest.approx(
        fraction_of_variance_unexplained(batches[0], recons[0]).tolist(), rel=1e-5
    )
