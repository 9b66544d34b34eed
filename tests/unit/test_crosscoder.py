"""CrossCoder pieces against small, straightforward dense reference implementations (method F2-F9)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mneme.crosscoder import (
    CrossCoder,
    SparseCode,
    auxk_loss,
    batch_topk_indices,
    fraction_of_variance_unexplained,
    geometric_median,
    load_crosscoder,
    reconstruction_loss,
    relative_decoder_norm,
    sparse_decode_flat,
)


def make_cc(d=8, h=48, k=3, seed=0, spread=True):
    """A crosscoder with unequal decoder norms and non-zero biases."""
    cc = CrossCoder(d, h, k, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        cc.dec_weight.mul_(torch.rand(h, 1, generator=g) * 2 + 0.2 if spread else 1.0)
        cc.dec_weight.add_(0.05 * torch.randn(cc.dec_weight.shape, generator=g))
        cc.b_enc.normal_(0, 0.1, generator=g)
        cc.b_dec.normal_(0, 0.3, generator=g)
    return cc


# ---------------------------------------------------------------- dense references


def ref_scores(cc, x):
    xf = x.reshape(x.shape[0], -1)
    z = torch.relu(xf @ cc.enc_weight.detach().T + cc.b_enc.detach())
    w = torch.stack([cc.W_dec[m].detach().norm(dim=-1) for m in range(cc.n_models)]).sum(0)
    return z, w, z * w


def ref_batch_topk(cc, x, k):
    z, w, s = ref_scores(cc, x)
    idx = s.flatten().topk(x.shape[0] * k).indices
    mask = torch.zeros(s.numel(), dtype=torch.bool)
    mask[idx] = True
    return z * mask.view_as(z), mask.view_as(z)


def ref_training_loss(cc, x, k, tsf, dead_tokens, k_aux, kind="l2", alpha=1 / 32):
    """The reference trainer's loss, dense and via autograd (tsf updated as in the reference)."""
    b = x.shape[0]
    xf = x.reshape(b, -1)
    z = torch.relu(xf @ cc.enc_weight.T + cc.b_enc)
    w = cc.dec_weight.view(cc.dict_size, cc.n_models, cc.d_model).norm(dim=-1).sum(1).detach()
    s = z * w
    idx = s.detach().flatten().topk(b * k).indices
    f = torch.zeros_like(z.flatten()).scatter(0, idx, z.flatten()[idx]).view_as(z)
    x_hat = (f @ cc.dec_weight).view_as(x) + cc.b_dec
    e = x - x_hat
    rec = e.norm(dim=-1).mean() if kind == "l2" else e.pow(2).sum(-1).mean()
    fired = (f > 0).any(0)
    tsf += b
    tsf[fired] = 0
    dead = tsf >= dead_tokens
    aux = torch.zeros(())
    if dead.any():
        ka = min(k_aux, int(dead.sum()))
        sa = torch.where(dead[None], s, -torch.inf).detach()
        ai = sa.topk(ka, dim=1).indices
        fa = torch.zeros_like(z).scatter(1, ai, z.gather(1, ai))
        ah = fa @ cc.dec_weight  # no b_dec
        res = e.reshape(b, -1).detach()
        aux = ((res - ah) ** 2).sum(-1).mean() / ((res - res.mean(0)) ** 2).sum(-1).mean()
    return rec + alpha * aux, rec, aux


# ---------------------------------------------------------------- selection


@pytest.mark.parametrize("shape,n_keep", [((16, 40), 48), ((7, 300), 21), ((5, 4), 20), ((3, 10), 0)])
def test_batch_topk_indices_equals_full_topk(shape, n_keep):
    g = torch.Generator().manual_seed(1)
    s = torch.rand(shape, generator=g)
    got = batch_topk_indices(s, n_keep)
    want = s.flatten().topk(n_keep).indices.sort().values
    assert torch.equal(got, want)


def test_batch_topk_indices_skewed_rows_take_exact_path():
    """One row holds most winners: its candidates are incomplete and must be added in full."""
    g = torch.Generator().manual_seed(2)
    s = torch.rand(32, 200, generator=g)
    s[5] += 10.0  # row 5 wins far more than 2*ceil(n_keep/B) entries
    s[9, :50] += 5.0
    n_keep = 32 * 4
    got = batch_topk_indices(s, n_keep)
    want = s.flatten().topk(n_keep).indices.sort().values
    assert torch.equal(got, want)
    assert (got // 200 == 5).sum() > 2 * 4  # more than the per-row candidate count


def test_encode_batchtopk_matches_reference_and_keeps_unscaled_values():
    cc = make_cc()
    x = torch.randn(20, 2, 8, generator=torch.Generator().manual_seed(3))
    f = cc.encode(x, use_threshold=False)
    f_ref, mask = ref_batch_topk(cc, x, cc.k)
    assert torch.allclose(f, f_ref)
    z, w, _ = ref_scores(cc, x)
    assert torch.allclose(f[mask], z[mask])  # the kept value is z, not z * w
    code = cc.encode_sparse(x, use_threshold=False)
    assert torch.allclose(code.to_dense(), f_ref)


def test_selection_uses_decoder_norm_weighting():
    cc = make_cc(d=4, h=6, k=1)
    with torch.no_grad():
        cc.enc_weight.zero_()
        cc.b_enc.copy_(torch.tensor([1.0, 0.9, 0.5, 0.2, 0.1, 0.0]))
        cc.dec_weight.fill_(0.0)
        norms = torch.tensor([[0.1, 0.1], [0.1, 0.2], [3.0, 1.0], [0.5, 0.5], [0.2, 0.2], [1.0, 1.0]])
        for j in range(6):
            cc.dec_weight[j, 0] = norms[j, 0]  # base row j = norms[j,0] * e_0
            cc.dec_weight[j, 4] = norms[j, 1]  # ft row j = norms[j,1] * e_0
    assert torch.allclose(cc.selection_weights(), norms.sum(1))
    assert torch.allclose(cc.decoder_norms(), norms.T)
    x = torch.zeros(1, 2, 4)
    f = cc.encode(x, use_threshold=False)
    # z = [1, .9, .5, .2, .1, 0] -> scores z*w = [.2, .27, 2.0, .2, .04, 0]: latent 2 wins, not latent 0
    assert f.nonzero().tolist() == [[0, 2]]
    assert f[0, 2].item() == pytest.approx(0.5)


def test_threshold_encoding_matches_reference_and_needs_a_threshold():
    cc = make_cc()
    x = torch.randn(30, 2, 8, generator=torch.Generator().manual_seed(4))
    with pytest.raises(ValueError, match="threshold"):
        cc.encode(x, use_threshold=True)
    z, w, s = ref_scores(cc, x)
    theta = float(s[s > 0].median())
    cc.threshold.fill_(theta)
    want = z * (s > theta)
    assert torch.allclose(cc.encode(x, use_threshold=True), want)
    assert torch.allclose(cc.encode_sparse(x, use_threshold=True).to_dense(), want)
    # independent of the batch: encoding rows one at a time gives the same codes
    one_by_one = torch.cat([cc.encode(x[i : i + 1]) for i in range(len(x))])
    assert torch.allclose(one_by_one, want)


def test_update_threshold_first_sets_then_ema():
    cc = make_cc()
    cc.update_threshold(torch.tensor([0.0, 3.0, 2.0, 5.0]), beta=0.9)  # zeros are not "selected"
    assert float(cc.threshold) == pytest.approx(2.0)
    cc.update_threshold(torch.tensor([4.0, 1.0]), beta=0.9)
    assert float(cc.threshold) == pytest.approx(0.9 * 2.0 + 0.1 * 1.0)


# ---------------------------------------------------------------- decode


def test_sparse_decode_equals_dense_decode_values_and_gradients():
    cc = make_cc(d=6, h=30)
    g = torch.Generator().manual_seed(5)
    f = torch.relu(torch.randn(12, 30, generator=g)) * (torch.rand(12, 30, generator=g) < 0.2)
    f[3] = 0.0  # a row with nothing active
    flat = f.flatten().nonzero().squeeze(1)
    vals = f.flatten()[flat].clone().requires_grad_(True)
    code = SparseCode(flat // 30, flat % 30, vals, 12, 30)
    upstream = torch.randn(12, 2, 6, generator=g)

    out_sparse = cc.decode_sparse(code)
    (out_sparse * upstream).sum().backward()
    g_vals, g_dec, g_bias = vals.grad.clone(), cc.dec_weight.grad.clone(), cc.b_dec.grad.clone()
    cc.zero_grad()

    f_dense = f.clone().requires_grad_(True)
    out_dense = cc.decode(f_dense)
    (out_dense * upstream).sum().backward()
    assert torch.allclose(out_sparse, out_dense, atol=1e-6)
    assert torch.allclose(g_vals, f_dense.grad.flatten()[flat], atol=1e-6)
    assert torch.allclose(g_dec, cc.dec_weight.grad, atol=1e-6)
    assert torch.allclose(g_bias, cc.b_dec.grad, atol=1e-6)
    # manual formula x_hat = sum_j f_ij W_dec[m, j] + b_dec[m]
    manual = torch.einsum("bh,mhd->bmd", f, cc.W_dec.detach()) + cc.b_dec.detach()
    assert torch.allclose(out_dense.detach(), manual, atol=1e-6)
    assert torch.allclose(sparse_decode_flat(code.rows, code.cols, code.vals.detach(), 12, cc.dec_weight).view(12, 2, 6)
                          + cc.b_dec, out_dense, atol=1e-6)  # fmt: skip


# ---------------------------------------------------------------- training forward


@pytest.mark.parametrize("kind", ["l2", "mse"])
def test_training_forward_matches_dense_reference(kind):
    cc = make_cc(d=8, h=64, k=4)
    x = torch.randn(40, 2, 8, generator=torch.Generator().manual_seed(6))
    tsf = torch.full((64,), 1000, dtype=torch.long)
    tsf[:20] = 0  # 20 recently fired latents, the others dead unless they fire now
    tsf_sparse, tsf_ref = tsf.clone(), tsf.clone()
    out = cc.training_forward(x, recon_loss=kind, tokens_since_fired=tsf_sparse, dead_tokens=500, k_aux=4)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in cc.named_parameters()}
    cc.zero_grad()
    loss, rec, aux = ref_training_loss(cc, x, 4, tsf_ref, 500, 4, kind)
    loss.backward()
    assert out.n_dead > 0 and out.n_aux > 0
    assert torch.equal(tsf_sparse, tsf_ref)
    assert out.loss.item() == pytest.approx(loss.item(), rel=1e-5)
    assert out.recon_loss.item() == pytest.approx(rec.item(), rel=1e-5)
    assert out.aux_loss.item() == pytest.approx(aux.item(), rel=1e-5)
    for name, p in cc.named_parameters():
        assert torch.allclose(grads[name], p.grad, atol=1e-6, rtol=1e-4), name


def test_auxk_residual_detached_and_no_decoder_bias():
    cc = make_cc(d=8, h=64, k=4)
    x = torch.randn(40, 2, 8, generator=torch.Generator().manual_seed(7))
    tsf = torch.full((64,), 1000, dtype=torch.long)
    tsf[:32] = 0
    out = cc.training_forward(x, tokens_since_fired=tsf, dead_tokens=500, k_aux=3)
    dead = tsf >= 500
    assert 0 < int(dead.sum()) < 64 and out.n_aux > 0
    out.aux_loss.backward()
    # no aux gradient into b_dec (bias excluded) nor into anything that only reaches the aux loss
    # through the residual x - x_hat (detached): live latents' weights and b_dec stay untouched
    assert cc.b_dec.grad is None or torch.count_nonzero(cc.b_dec.grad) == 0
    assert torch.count_nonzero(cc.dec_weight.grad[~dead]) == 0
    assert torch.count_nonzero(cc.enc_weight.grad[~dead]) == 0
    assert torch.count_nonzero(cc.b_enc.grad[~dead]) == 0
    assert torch.count_nonzero(cc.dec_weight.grad[dead]) > 0
    assert out.n_aux <= 40 * min(3, int(dead.sum()))  # k_aux per row is min(k_aux, |dead|)


def test_auxk_loss_function():
    g = torch.Generator().manual_seed(8)
    e = torch.randn(10, 6, generator=g, requires_grad=True)
    rec = torch.randn(10, 6, generator=g, requires_grad=True)
    val = auxk_loss(e, rec)
    want = ((e - rec) ** 2).sum(-1).mean() / ((e - e.mean(0)) ** 2).sum(-1).mean()
    assert val.item() == pytest.approx(want.item(), rel=1e-6)
    val.backward()
    assert e.grad is None  # the residual is detached
    assert rec.grad is not None
    # NaN (no residual variance, nothing to explain) gives 0 and a finite zero gradient
    e0 = torch.zeros(4, 6)
    rec0 = torch.zeros(4, 6, requires_grad=True)
    z = auxk_loss(e0, rec0)
    z.backward()
    assert z.item() == 0.0 and torch.all(rec0.grad == 0)


def test_k_aux_defaults_to_half_d_model():
    cc = make_cc(d=8, h=64, k=2)
    with torch.no_grad():
        cc.b_enc.fill_(5.0)  # every latent positive so every aux slot is used
    x = torch.randn(10, 2, 8, generator=torch.Generator().manual_seed(9))
    tsf = torch.full((64,), 10**6, dtype=torch.long)
    out = cc.training_forward(x, tokens_since_fired=tsf, dead_tokens=10**5)
    assert out.n_aux == 10 * (8 // 2)
    tsf = torch.full((64,), 10**6, dtype=torch.long)
    tsf[:61] = 0  # only 3 dead latents (unless they fire in the batch)
    out = cc.training_forward(x, tokens_since_fired=tsf, dead_tokens=10**5)
    assert out.n_aux == 10 * out.n_dead and out.n_dead <= 3


def test_reconstruction_loss_and_fvu():
    g = torch.Generator().manual_seed(10)
    x, xh = torch.randn(5, 2, 3, generator=g), torch.randn(5, 2, 3, generator=g)
    l2 = np.mean([np.linalg.norm((x - xh)[i, m]) for i in range(5) for m in range(2)])
    mse = np.mean([np.sum((x - xh)[i, m].numpy() ** 2) for i in range(5) for m in range(2)])
    assert reconstruction_loss(x, xh, "l2").item() == pytest.approx(l2, rel=1e-6)
    assert reconstruction_loss(x, xh, "mse").item() == pytest.approx(mse, rel=1e-6)
    with pytest.raises(ValueError):
        reconstruction_loss(x, xh, "l1")
    fvu = fraction_of_variance_unexplained(x, xh)
    for m in range(2):
        xm, hm = x[:, m].numpy(), xh[:, m].numpy()
        assert fvu[m].item() == pytest.approx(
            ((xm - hm) ** 2).sum() / ((xm - xm.mean(0)) ** 2).sum(), rel=1e-5
        )


def test_relative_decoder_norm():
    norms = torch.tensor([[1.0, 0.0, 1.0, 0.5], [0.0, 1.0, 1.0, 1.0]])
    assert relative_decoder_norm(norms).tolist() == pytest.approx([0.0, 1.0, 0.5, 0.75])


# ---------------------------------------------------------------- init, geometric median, persistence


def test_initialisation_follows_f9():
    cc = CrossCoder(10, 40, 4, norm_init_scale=0.7, seed=3)
    w_enc, w_dec = cc.W_enc.detach(), cc.W_dec.detach()
    assert w_enc.shape == (2, 10, 40) and w_dec.shape == (2, 40, 10)
    assert torch.equal(w_enc[0], w_enc[1])  # same init for both models
    assert torch.allclose(w_enc.norm(dim=1), torch.full((2, 40), 0.7))  # per (model, latent) column
    assert torch.equal(w_dec, w_enc.transpose(1, 2))  # decoder = encoder transposed
    assert torch.count_nonzero(cc.b_enc) == 0 and float(cc.threshold) == -1.0
    assert torch.equal(CrossCoder(10, 40, 4, seed=3).W_enc, CrossCoder(10, 40, 4, seed=3).W_enc)
    shift = torch.tensor([3.0, -2.0]).view(1, 2, 1)
    x = torch.randn(64, 2, 10, generator=torch.Generator().manual_seed(1)) + shift
    cc.init_decoder_bias(x)
    for m in range(2):
        assert torch.allclose(cc.b_dec[m], geometric_median(x[:, m]))


def test_geometric_median_matches_scipy_minimiser():
    from scipy.optimize import minimize

    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.normal(0, 1, (60, 3)), rng.normal(20, 1, (8, 3))])  # with outliers
    obj = lambda y: np.linalg.norm(pts - y, axis=1).sum()  # noqa: E731
    ref = minimize(
        obj, pts.mean(0), method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 20000}
    )
    ours = geometric_median(torch.tensor(pts, dtype=torch.float32)).double().numpy()
    assert obj(ours) <= ref.fun * (1 + 1e-5)
    assert np.linalg.norm(ours - ref.x) < 1e-2
    assert np.linalg.norm(ours - pts.mean(0)) > 0.5  # robust, unlike the mean
    # a point cloud whose median is one of the points stays finite
    same = torch.zeros(5, 3)
    assert torch.isfinite(geometric_median(same)).all()


def test_save_and_load_roundtrip(tmp_path):
    from safetensors.torch import load_file

    cc = make_cc(d=6, h=24, k=3)
    cc.threshold.fill_(0.25)
    cc.norm_scales.copy_(torch.tensor([0.5, 2.0], dtype=torch.float64))
    cc.save(tmp_path, extra_config={"note": "x"})
    tensors = load_file(str(tmp_path / "model.safetensors"))
    assert tensors["W_enc"].shape == (2, 6, 24) and tensors["W_dec"].shape == (2, 24, 6)
    assert tensors["b_enc"].shape == (24,) and tensors["b_dec"].shape == (2, 6)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["d_model"] == 6 and cfg["dict_size"] == 24 and cfg["k"] == 3
    assert cfg["threshold"] == 0.25 and cfg["norm_scales"] == [0.5, 2.0] and cfg["note"] == "x"
    back = load_crosscoder(tmp_path)
    for name, p in cc.state_dict().items():
        assert torch.equal(p, back.state_dict()[name]), name
    x = torch.randn(9, 2, 6)
    assert torch.allclose(back.encode(x), cc.encode(x))
    assert torch.allclose(back(x), cc(x))


def test_forward_shapes_and_input_check():
    cc = make_cc(d=4, h=12, k=2)
    with pytest.raises(ValueError, match="expected activations"):
        cc.encode(torch.randn(3, 4), use_threshold=False)
    x = torch.randn(3, 2, 4)
    assert cc(x, use_threshold=False).shape == (3, 2, 4)
    assert F.relu(cc.preactivations(x)).shape == (3, 12)
