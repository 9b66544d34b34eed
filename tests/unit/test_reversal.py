"""Reversal by retraining (mneme.reversal): latent choice, context sets, retraining, orchestration."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from mneme import reversal as rv
from mneme.models import load_causal_lm, load_tokenizer
from mneme.organism import lm_loss

# --------------------------------------------------------------------------- a constructed pair
#
# latent  direction   probe  strength  -> leaning   categories.parquet  provenance (general excluded)
#   0     suppressed  base    2.0         -2.0      chemistry           chemistry (0.3; general 0.7)
#   1     suppressed  base    1.0         -1.0      none                chemistry (0.6 vs biology 0.4)
#   2     amplified   ft      1.5         +1.5      chemistry           chemistry (0.9)
#   3     unchanged   ft     -0.8         -0.8      -                   chemistry (0.2 vs biology 0.1)
#   4     unchanged   base    0.3         -0.3      -                   chemistry (0.05)
#   5     unchanged   ft      0.5         +0.5      -                   chemistry (1.0)
#   6     dead        -       NaN          NaN      -                   -
#   7     unchanged   base   -0.2         +0.2      -                   chemistry (tie with law 0.5, by name)
#   8     suppressed  base    3.0         -3.0      law                 law (1.0)


def _attribution() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "latent": range(9),
            "direction": [
                "suppressed",
                "suppressed",
                "amplified",
                "unchanged",
                "unchanged",
                "unchanged",
                "dead",
                "unchanged",
                "suppressed",
            ],
            "probe": ["base", "base", "ft", "ft", "base", "ft", "ft", "base", "base"],
            "strength": [2.0, 1.0, 1.5, -0.8, 0.3, 0.5, np.nan, -0.2, 3.0],
            "ratio_activation": [np.nan] * 9,
            "mode": "ratio",
        }
    )


def _categories() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "latent": [0, 1, 2, 8],
            "direction": ["suppressed", "suppressed", "amplified", "suppressed"],
            "category": ["chemistry", "none", "chemistry", "law"],
        }
    )


def _mass() -> pd.DataFrame:
    rows = [
        (0, "chemistry", 0.3),
        (0, "general", 0.7),
        (1, "chemistry", 0.6),
        (1, "biology", 0.4),
        (2, "chemistry", 0.9),
        (2, "general", 0.1),
        (3, "chemistry", 0.2),
        (3, "biology", 0.1),
        (3, "general", 0.7),
        (4, "chemistry", 0.05),
        (4, "general", 0.95),
        (5, "chemistry", 1.0),
        (7, "law", 0.5),
        (7, "chemistry", 0.5),
        (8, "law", 1.0),
    ]
    df = pd.DataFrame(rows, columns=["latent", "category", "share"])
    return df.assign(mass=df["share"] * 10)


def _select(category: str, **kw) -> list[int]:
    out = rv.select_latents(_attribution(), _categories(), _mass(), category, **kw)
    return out["latent"].tolist()


def test_leaning_signs_by_probe_and_mode():
    lean = rv.leaning(_attribution())
    assert lean.tolist()[:6] == [-2.0, -1.0, 1.5, -0.8, -0.3, 0.5]
    assert math.isnan(lean[6])
    simple = pd.DataFrame(
        {"strength": [math.log(4)], "probe": ["ft"], "ratio_activation": [4.0], "mode": ["simple"]}
    )
    assert rv.leaning(simple)[0] == pytest.approx(-math.log(4))  # base expresses 4x more: suppressed


def test_select_latents_pools_and_mappings():
    # attributed + categories: suppressed latents whose final category is chemistry (1 is "none")
    assert _select("chemistry") == [0]
    # attributed + provenance: 0 and 1 (8 is law), strongest first
    assert _select("chemistry", mapping="provenance") == [0, 1]
    # ranked + provenance: suppressed-leaning live latents 0 (-2), 1 (-1), 3 (-0.8), 4 (-0.3)
    assert _select("chemistry", pool="ranked", mapping="provenance", n_latents=3) == [0, 1, 3]
    assert _select("chemistry", pool="ranked", mapping="provenance", n_latents=None) == [0, 1, 3, 4]
    # min_share drops 4 (5% of its mass on chemistry)
    assert _select("chemistry", pool="ranked", mapping="provenance", n_latents=None, min_share=0.1) == [
        0,
        1,
        3,
    ]
    # amplified-leaning: 2 (+1.5), 5 (+0.5), 7 (+0.2; chemistry wins the tie with law by name)
    assert _select("chemistry", directions=("amplified",), pool="ranked", mapping="provenance") == [2, 5, 7]
    both = rv.select_latents(
        _attribution(),
        _categories(),
        _mass(),
        "chemistry",
        directions=("suppressed", "amplified"),
        pool="ranked",
        mapping="provenance",
        n_latents=1,
    )
    assert both["latent"].tolist() == [0, 2]
    assert both["direction"].tolist() == ["suppressed", "amplified"]
    # ranked + categories: only explained latents map; of 0 and 2 only 0 leans suppressed
    assert _select("chemistry", pool="ranked") == [0]
    # the general category is never a provenance answer, and law has its own latents
    assert _select("general", mapping="provenance", pool="ranked") == []
    assert _select("law", mapping="provenance") == [8]


def test_select_latents_columns_and_empty():
    out = rv.select_latents(
        _attribution(), _categories(), _mass(), "chemistry", pool="ranked", mapping="provenance"
    )
    assert list(out.columns) == [
        "latent",
        "direction",
        "attributed_direction",
        "strength",
        "leaning",
        "category",
        "share",
        "reason",
    ]
    assert out.loc[0, "share"] == pytest.approx(0.3)
    assert all(isinstance(r, str) and "chemistry" in r for r in out["reason"])
    empty = rv.select_latents(_attribution(), _categories(), _mass(), "biology")
    assert empty.empty and "reason" in empty.columns
    assert _select("law", directions=("amplified",)) == []
    with pytest.raises(ValueError, match="directions"):
        _select("chemistry", directions=("unchanged",))


# --------------------------------------------------------------------------- contexts


def _tokens_group(n: int = 20, ctx_len: int = 4) -> zarr.Group:
    g = zarr.open_group(store=zarr.storage.MemoryStore(), mode="w")
    g.create_array("input_ids", shape=(n, ctx_len), dtype="int32", chunks=(8, ctx_len))[:] = np.arange(
        n * ctx_len
    ).reshape(n, ctx_len)
    return g


def _topk() -> pd.DataFrame:
    rows = []
    for lat, ctxs in ((10, [1, 2, 3, 4, 5]), (11, [1, 6, 7]), (12, [8])):
        rows += [(lat, "top", r, c, 0, 5.0 - r) for r, c in enumerate(ctxs)]
    rows += [(10, "reservoir", 0, 19, 0, 1.0), (12, "top", 1, -1, -1, 0.0), (99, "top", 0, 0, 0, 9.0)]
    return pd.DataFrame(rows, columns=["latent", "kind", "rank", "context", "position", "activation"])


def test_gather_contexts_round_robin_dedup_budget():
    g = _tokens_group()
    # round robin: rank 0 -> 1 (10), 1 again (11, dup), 8 (12); rank 1 -> 2, 6; rank 2 -> 3, 7; ...
    assert rv.gather_contexts(_topk(), [10, 11, 12], g, 16).tolist() == [1, 2, 6, 8]
    assert rv.gather_contexts(_topk(), [10, 11, 12], g, 19).tolist() == [1, 2, 6, 8]  # whole contexts only
    assert rv.gather_contexts(_topk(), [10, 11, 12], g, 24).tolist() == [1, 2, 3, 6, 7, 8]
    everything = rv.gather_contexts(_topk(), [10, 11, 12], g, 10_000)
    assert everything.tolist() == [1, 2, 3, 4, 5, 6, 7, 8]  # no reservoir (19), no empty slot, no latent 99
    assert rv.gather_contexts(_topk(), [10, 11, 12], g, 12, skip_first=1).tolist() == [2, 3, 6]
    assert rv.gather_contexts(_topk(), [13], g, 100).tolist() == []
    with pytest.raises(ValueError, match="token_budget"):
        rv.gather_contexts(_topk(), [10], g, 3)


def test_random_contexts_and_read_rows():
    a = rv.random_contexts(20, 5, seed=3, exclude=range(10))
    assert len(a) == 5 and len(set(a.tolist())) == 5 and a.min() >= 10 and list(a) == sorted(a)
    assert rv.random_contexts(20, 5, seed=3, exclude=range(10)).tolist() == a.tolist()
    draws = {tuple(rv.random_contexts(1000, 5, seed=s).tolist()) for s in range(3)}
    assert len(draws) == 3
    with pytest.raises(ValueError, match="cannot draw"):
        rv.random_contexts(20, 11, seed=0, exclude=range(10))
    g = _tokens_group()
    rows = rv.read_token_rows(g, [9, 2, 17])
    assert rows.dtype == np.int64 and rows[:, 0].tolist() == [36, 8, 68]
    assert rv.category_seed(0, "law") == rv.category_seed(0, "law") != rv.category_seed(0, "chemistry")


def test_recovery_ratio():
    assert rv.recovery_ratio(0.8, 0.4, 0.6) == pytest.approx(0.5)
    assert rv.recovery_ratio(0.8, 0.4, 0.8) == pytest.approx(1.0)
    assert rv.recovery_ratio(0.8, 0.4, 0.3) == pytest.approx(-0.25)
    assert rv.recovery_ratio(-3.0, -5.0, -4.5) == pytest.approx(0.25)  # log-likelihoods
    assert rv.recovery_ratio(0.4, 0.8, 0.7) == pytest.approx(0.25)  # ft improved; moving back is R > 0
    assert rv.recovery_ratio(0.5, 0.5, 0.9) is None
    assert rv.recovery_ratio(0.5, None, 0.9) is None
    assert rv.recovery_ratio(0.5, float("nan"), 0.9) is None


def test_resolve_options():
    from mneme.schema import defaults

    expected = defaults("reverse")
    expected.pop("categories")  # resolved by the rule script from evaluation.json
    assert rv.resolve_options(None) == expected and expected["token_budget"] == 32768
    assert rv.resolve_options({"directions": "amplified"})["directions"] == ["amplified"]
    with pytest.raises(ValueError, match="unknown"):
        rv.resolve_options({"lrate": 1})
    with pytest.raises(ValueError, match="method"):
        rv.resolve_options({"method": "qlora"})
    with pytest.raises(ValueError, match="max_steps"):
        rv.resolve_options({"max_steps": 0})


# --------------------------------------------------------------------------- retraining


def _rows(tokenizer, n: int = 8, ctx_len: int = 16, seed: int = 0) -> np.ndarray:
    """BOS + a few repeated random patterns: learnable in a handful of steps."""
    rng = np.random.default_rng(seed)
    patterns = rng.integers(10, 400, size=(2, 5))
    body = np.stack([np.resize(patterns[i % 2], ctx_len - 1) for i in range(n)])
    return np.concatenate([np.full((n, 1), tokenizer.bos_token_id), body], axis=1)


def _eval_loss(model, rows: np.ndarray) -> float:
    ids = torch.as_tensor(rows, dtype=torch.long)
    with torch.no_grad():
        return float(lm_loss(model, ids, torch.ones_like(ids)))


@pytest.mark.parametrize(
    "opts",
    [
        {"method": "full", "lr": 3e-3, "max_steps": 6, "batch_size": 4},
        {"method": "lora", "lr": 2e-2, "max_steps": 6, "batch_size": 4, "lora_r": 4},
    ],
    ids=["full", "lora"],
)
def test_retrain(tiny_model, opts):
    base, tok = load_causal_lm(tiny_model)
    rows = _rows(tok)
    model, summary = rv.retrain(tiny_model, rows, opts)
    assert not model.training
    assert _eval_loss(model, rows) < _eval_loss(base, rows) - 0.1
    assert (
        summary["steps"] == 6
        and summary["tokens"] == 6 * 4 * 16
        and summary["loss_last"] < summary["loss_first"]
    )
    before, after = base.state_dict(), model.state_dict()
    assert list(after) == list(before)  # merged: same parameter names, no adapter left
    assert all(not type(m).__module__.startswith("peft") for m in model.modules())
    assert not hasattr(model, "peft_config") and type(model) is type(base)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    if opts["method"] == "lora":  # only the target projections moved
        assert torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
        assert not torch.equal(
            before["model.layers.0.self_attn.q_proj.weight"], after["model.layers.0.self_attn.q_proj.weight"]
        )
    again, _ = rv.retrain(tiny_model, rows, opts)
    assert all(torch.equal(after[k], v) for k, v in again.state_dict().items())


def test_retrain_epochs_default_steps(tiny_model):
    _, tok = load_causal_lm(tiny_model)
    _, summary = rv.retrain(
        tiny_model, _rows(tok, n=6), {"method": "full", "epochs": 2, "batch_size": 4, "lr": 1e-4}
    )
    assert summary["steps"] == 4  # 2 epochs x ceil(6 / 4)


# --------------------------------------------------------------------------- end to end

TEXTS = {
    "chemistry": "acid base salt reaction molecule acid base salt reaction molecule",
    "biology": "cell gene protein tissue organism cell gene protein tissue",
    "law": "court judge statute contract plaintiff court judge statute contract",
}


def _score_fn(model, tokenizer) -> dict[str, float]:
    """Mean next-token log-likelihood of one fixed text per category (higher is better)."""
    out = {}
    for cat, text in TEXTS.items():
        ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
        ids_t = torch.tensor([ids])
        with torch.no_grad():
            out[cat] = -float(lm_loss(model, ids_t, torch.ones_like(ids_t)))
    return out


def test_run_reversal_end_to_end(tiny_model, tmp_path):
    tok = load_tokenizer(tiny_model)
    ctx_len, per_cat = 16, 10
    rows = []
    for text in TEXTS.values():  # contexts 0-9 chemistry, 10-19 biology, 20-29 law
        ids = tok(text, add_special_tokens=False)["input_ids"]
        rows += [
            [tok.bos_token_id] + np.resize(np.roll(ids, i), ctx_len - 1).tolist() for i in range(per_cat)
        ]
    path = tmp_path / "tokens.zarr"
    g = zarr.open_group(str(path), mode="w", attributes={"context_len": ctx_len, "first_position": 1})
    g.create_array("input_ids", shape=(len(rows), ctx_len), dtype="int32", chunks=(8, ctx_len))[:] = np.array(
        rows
    )
    # latents 0 and 1 (suppressed, chemistry by provenance) fire on the chemistry contexts
    topk = pd.DataFrame(
        [
            (lat, "top", r, c, 3, 1.0)
            for lat, ctxs in ((0, [0, 1, 2, 3]), (1, [2, 4, 5]))
            for r, c in enumerate(ctxs)
        ],
        columns=["latent", "kind", "rank", "context", "position", "activation"],
    )
    model, tok = load_causal_lm(tiny_model)
    ft = _score_fn(model, tok)
    base = {k: v + 1.0 for k, v in ft.items()}
    opts = {
        "mapping": "provenance",
        "method": "full",
        "lr": 3e-3,
        "max_steps": 4,
        "batch_size": 4,
        "token_budget": 80,
    }
    out = rv.run_reversal(
        tiny_model,
        str(path),
        _attribution(),
        _categories(),
        _mass(),
        topk,
        ["chemistry", "biology"],
        _score_fn,
        base,
        ft,
        target_categories=["biology"],
        options=opts,
    )
    json.dumps(out)
    assert out["config"]["token_budget"] == 80 and out["config"]["context_len"] == ctx_len
    chem, bio = out["categories"]
    assert set(rv.RECORD_KEYS) <= set(chem) and set(rv.RECORD_KEYS) <= set(bio)
    assert chem["status"] == "ok" and chem["n_latents"] == 2
    assert [x["latent"] for x in chem["latents"]] == [0, 1]
    # round robin over (0: 0 1 2 3) and (1: 2 4 5): 0 2 | 1 4 | (2) 5 -> budget of 5 contexts reached
    assert chem["contexts_targeted"] == [0, 1, 2, 4, 5] and chem["n_tokens"] == 5 * ctx_len
    assert len(chem["contexts_control"]) == 5 and not set(chem["contexts_control"]) & set(
        chem["contexts_targeted"]
    )
    for arm in ("targeted", "control"):
        s = chem[f"score_{arm}"]
        assert chem[f"recovery_{arm}"] == pytest.approx(
            (s - ft["chemistry"]) / (base["chemistry"] - ft["chemistry"])
        )
        assert chem[f"target_rebound_{arm}"]["biology"] == pytest.approx(
            chem[f"scores_{arm}"]["biology"] - ft["biology"]
        )
        assert chem[f"utility_change_{arm}"] == pytest.approx(chem[f"scores_{arm}"]["law"] - ft["law"])
        assert chem[f"train_{arm}"]["steps"] == 4
    # training on chemistry contexts helps the chemistry text more than a random sample does
    assert chem["score_targeted"] > ft["chemistry"]
    assert chem["recovery_targeted"] > chem["recovery_control"]
    assert bio["status"] == "no_latents" and "biology" in bio["reason"] and bio["score_targeted"] is None
    with pytest.raises(ValueError, match="no base/ft score"):
        rv.run_reversal(
            tiny_model, str(path), _attribution(), None, _mass(), topk, ["music"], _score_fn, base, ft
        )
