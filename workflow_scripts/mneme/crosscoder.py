"""The BatchTopK sparse crosscoder of the MNEME method (method.md F2-F9), with a sparse training path.

Shapes and conventions (``M`` models, here 2: index 0 is the base model, 1 the fine-tuned one; ``d``
is d_model, ``h`` the dictionary size):

- inputs ``x`` are normalised activations ``[B, M, d]`` (F1: each model's rows already multiplied by
  its scalar ``s_m``; :class:`mneme.activation_store.PairedStores` does that with ``normalise=True``);
- ``W_enc`` is ``[M, d, h]``, ``b_enc`` ``[h]``, ``W_dec`` ``[M, h, d]``, ``b_dec`` ``[M, d]``, exactly
  as in the method. Internally both weight matrices are kept as ``[h, M*d]`` tables (one row per
  latent) so that a latent's encoder or decoder vector is one contiguous row; :attr:`CrossCoder.W_enc`
  and :attr:`CrossCoder.W_dec` are views in the method's layout and the saved file uses that layout.

Encoding (F2-F4): ``z = ReLU(x W_enc + b_enc)``; the selection score is ``s_ij = z_ij * w_j`` with
``w_j = sum_m ||d_j^m||`` (decoders are not unit-normalised); BatchTopK keeps the ``B*k`` largest
scores of the batch and the kept *value* is the unscaled ``z_ij``. After training, analysis uses the
global threshold: ``f_ij = z_ij * [s_ij > theta]`` (F8), via ``encode(x, use_threshold=True)``.

Speed: with ``k`` of ``h`` latents active per token, decoding is a weighted gather of ``k`` decoder rows
per token (``torch.nn.functional.embedding_bag``) and every gradient except the encoder forward touches
only the selected (token, latent) pairs: the decoder gets a row-sparse gradient and the encoder weight
gradient ``sum_i g_ij x_i`` is again a weighted gather, this time of input rows per latent. Only the
encoder forward ``x W_enc`` stays dense (every score is needed for the selection).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOG = logging.getLogger("mneme.crosscoder")

FORMAT_NAME = "mneme-batchtopk-crosscoder"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


# ----------------------------------------------------------------------------------------------
# Small, separately testable pieces
# ----------------------------------------------------------------------------------------------


def geometric_median(points: Tensor, max_iter: int = 100, tol: float = 1e-5, eps: float = 1e-12) -> Tensor:
    """Geometric median of the rows of ``points`` ``[n, d]`` by Weiszfeld iterations (F9).

    Starts at the mean; stops after ``max_iter`` iterations or when the estimate moves less than
    ``tol``. Distances are clamped at ``eps`` so an estimate that lands on a data point stays finite.
    """
    pts = points.float()
    guess = pts.mean(dim=0)
    for _ in range(max_iter):
        prev = guess
        weights = 1.0 / torch.linalg.vector_norm(pts - guess, dim=1).clamp_min(eps)
        weights = weights / weights.sum()
        guess = weights @ pts
        if torch.linalg.vector_norm(guess - prev) < tol:
            break
    return guess


def batch_topk_indices(scores: Tensor, n_keep: int) -> Tensor:
    """Flat indices (ascending) of the ``n_keep`` largest entries of ``scores`` ``[B, h]`` (F4).

    Exact BatchTopK (ties broken arbitrarily) without a full ``topk`` over all ``B*h`` entries: take
    each row's top ``2*ceil(n_keep/B)`` candidates, then the global top ``n_keep`` of those. A row can
    only hide a winner if all its candidates won, i.e. its smallest candidate beats the provisional
    threshold; such rows are added in full and the global selection is redone once, which is then
    exact (every other row's non-candidates are no larger than the threshold).
    """
    n_rows, width = scores.shape
    n_keep = int(min(max(n_keep, 0), n_rows * width))
    flat_scores = scores.reshape(-1)
    if n_keep == 0:
        return torch.empty(0, dtype=torch.long, device=scores.device)
    per_row = min(width, 2 * math.ceil(n_keep / n_rows))
    if 2 * per_row >= width:
        return flat_scores.topk(n_keep, sorted=False).indices.sort().values
    cand_vals, cand_cols = scores.topk(per_row, dim=1, sorted=False)
    row_base = torch.arange(n_rows, device=scores.device).unsqueeze(1) * width
    cand_flat = (cand_cols + row_base).reshape(-1)
    top = cand_vals.reshape(-1).topk(n_keep, sorted=False)
    cutoff = top.values.min()
    incomplete = cand_vals.min(dim=1).values > cutoff
    if not bool(incomplete.any()):
        return cand_flat[top.indices].sort().values
    bad = incomplete.nonzero().squeeze(1)
    good = (~incomplete).nonzero().squeeze(1)
    full_flat = (bad.unsqueeze(1) * width + torch.arange(width, device=scores.device)).reshape(-1)
    all_flat = torch.cat([(cand_cols[good] + row_base[good]).reshape(-1), full_flat])
    all_vals = torch.cat([cand_vals[good].reshape(-1), scores[bad].reshape(-1)])
    top = all_vals.topk(n_keep, sorted=False)
    return all_flat[top.indices].sort().values


def row_offsets(rows: Tensor, n_rows: int) -> Tensor:
    """``embedding_bag`` offsets for entries grouped by ascending ``rows`` (one bag per row)."""
    counts = torch.bincount(rows, minlength=n_rows)
    return torch.cumsum(counts, 0) - counts


def sparse_decode_flat(rows: Tensor, cols: Tensor, vals: Tensor, n_rows: int, table: Tensor) -> Tensor:
    """``out_i = sum_{(i,j,v)} v * table[j]`` for COO entries sorted by row; ``[n_rows, table.shape[1]]``.

    Differentiable in ``vals`` and ``table`` (``embedding_bag`` computes the row-sparse table gradient
    and the per-entry value gradient ``<table[j], grad_i>`` without densifying).
    """
    return F.embedding_bag(cols, table, row_offsets(rows, n_rows), mode="sum", per_sample_weights=vals)


class _GatherPreactivation(torch.autograd.Function):
    """Selected encoder pre-activations with a sparse backward.

    Forward returns the already computed ``pre[rows, cols]``. Backward turns the gradient of those
    entries into ``grad W[j] = sum_i g_ij x_i`` (an ``embedding_bag`` over input rows grouped by
    latent) and ``grad b[j] = sum_i g_ij``: cost O(nnz * M*d) instead of the dense O(B * h * M*d).
    """

    @staticmethod
    def forward(ctx, x_flat, weight, bias, rows, cols, pre_vals):  # noqa: D102
        ctx.save_for_backward(x_flat, rows, cols)
        ctx.n_latents = weight.shape[0]
        return pre_vals.clone()

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        x_flat, rows, cols = ctx.saved_tensors
        h = ctx.n_latents
        grad = grad.contiguous()
        order = torch.argsort(cols, stable=True)
        sorted_cols = cols[order]
        grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            grad_w = F.embedding_bag(
                rows[order],
                x_flat,
                row_offsets(sorted_cols, h),
                mode="sum",
                per_sample_weights=grad[order].to(x_flat.dtype),
            ).to(grad.dtype)
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(h, dtype=grad.dtype, device=grad.device).index_add_(
                0, sorted_cols, grad[order]
            )
        return None, grad_w, grad_b, None, None, None


def reconstruction_loss(x: Tensor, x_hat: Tensor, kind: str = "l2") -> Tensor:
    """F6 reconstruction term for ``[B, M, d]`` inputs: mean over tokens and models of ``||x - x_hat||``
    (``l2``, unsquared) or of ``||x - x_hat||^2`` (``mse``)."""
    e = x - x_hat
    if kind == "l2":  # vector_norm has a zero subgradient at e = 0 (sqrt would give NaN there)
        return torch.linalg.vector_norm(e, dim=-1).mean()
    if kind == "mse":
        return e.pow(2).sum(dim=-1).mean()
    raise ValueError(f"recon_loss must be 'l2' or 'mse', got {kind!r}")


def auxk_loss(residual: Tensor, aux_recon: Tensor) -> Tensor:
    """F7 normalised AuxK loss ``mean_i ||e_i - e^_i||^2 / mean_i ||e_i - mean(e)||^2``, 0 if NaN.

    ``residual`` ``[B, M*d]`` must already be detached (this function detaches it again to be safe);
    ``aux_recon`` is the dead latents' reconstruction **without** ``b_dec``. A residual without variance
    (e.g. a batch of one) makes the ratio NaN or infinite; both give 0 (the reference maps only NaN).
    """
    e = residual.detach().float()
    num = (e - aux_recon.float()).pow(2).sum(dim=-1).mean()
    den = (e - e.mean(dim=0, keepdim=True)).pow(2).sum(dim=-1).mean()
    ok = den > 0  # a safe denominator keeps the unused branch's gradient at 0 instead of NaN
    ratio = num / torch.where(ok, den, torch.ones_like(den))
    return torch.where(ok & torch.isfinite(ratio), ratio, torch.zeros_like(ratio))


def fraction_of_variance_unexplained(x: Tensor, x_hat: Tensor) -> Tensor:
    """Per-model FVU ``sum ||x - x_hat||^2 / sum ||x - mean x||^2`` for ``[B, M, d]`` inputs -> ``[M]``."""
    x, x_hat = x.float(), x_hat.float()
    sse = (x - x_hat).pow(2).sum(dim=(0, 2))
    sst = (x - x.mean(dim=0, keepdim=True)).pow(2).sum(dim=(0, 2))
    return sse / sst.clamp_min(1e-30)


def relative_decoder_norm(dec_norms: Tensor) -> Tensor:
    """F10 ``Delta_j = ((||d_j^f|| - ||d_j^b||) / max(||d_j^f||, ||d_j^b||) + 1) / 2`` from ``[2, h]`` norms
    (row 0 base, row 1 fine-tuned): 0 = base-only, 0.5 = shared, 1 = fine-tuned-only."""
    nb, nf = dec_norms[0], dec_norms[1]
    return 0.5 * ((nf - nb) / torch.maximum(nf, nb).clamp_min(1e-30) + 1.0)


@dataclass
class SparseCode:
    """A batch of latent activations as COO entries sorted by (row, col)."""

    rows: Tensor  # [nnz] token index within the batch
    cols: Tensor  # [nnz] latent index
    vals: Tensor  # [nnz] activation f_ij (the unscaled z_ij)
    n_rows: int
    dict_size: int

    def to_dense(self) -> Tensor:
        out = torch.zeros(self.n_rows * self.dict_size, dtype=self.vals.dtype, device=self.vals.device)
        out[self.rows * self.dict_size + self.cols] = self.vals
        return out.view(self.n_rows, self.dict_size)

    @property
    def l0(self) -> float:
        """Mean number of active latents per token."""
        return self.vals.numel() / max(self.n_rows, 1)


@dataclass
class TrainForward:
    """What one sparse training forward produces (losses are differentiable)."""

    loss: Tensor
    recon_loss: Tensor
    aux_loss: Tensor
    x_hat: Tensor  # [B, M, d], detached
    code: SparseCode  # selected latents (values detached)
    selected_scores: Tensor  # [nnz] s_ij of the selected entries (for the threshold EMA, F8)
    fired: Tensor  # [h] bool, latents with a positive selected activation in this batch
    n_dead: int  # size of the dead set used for AuxK
    n_aux: int  # number of (token, latent) pairs in the AuxK reconstruction


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


class CrossCoder(nn.Module):
    """BatchTopK crosscoder over ``n_models`` paired activations (method F2-F9).

    Parameters are ``enc_weight`` ``[h, M*d]``, ``b_enc`` ``[h]``, ``dec_weight`` ``[h, M*d]`` and
    ``b_dec`` ``[M, d]``; buffers ``threshold`` (inference threshold theta, -1 until set) and
    ``norm_scales`` (the per-model F1 scalars the inputs were multiplied by, kept for reference).
    All methods take and return *normalised* activations.
    """

    def __init__(
        self,
        d_model: int,
        dict_size: int,
        k: int,
        n_models: int = 2,
        norm_scales: tuple[float, ...] | None = None,
        norm_init_scale: float = 1.0,
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        self.d_model, self.dict_size = int(d_model), int(dict_size)
        self.n_models, self.k = int(n_models), int(k)
        width = self.n_models * self.d_model
        self.enc_weight = nn.Parameter(torch.empty(self.dict_size, width))
        self.b_enc = nn.Parameter(torch.zeros(self.dict_size))
        self.dec_weight = nn.Parameter(torch.empty(self.dict_size, width))
        self.b_dec = nn.Parameter(torch.zeros(self.n_models, self.d_model))
        self.register_buffer("threshold", torch.tensor(-1.0))
        scales = norm_scales if norm_scales is not None else (1.0,) * self.n_models
        if len(scales) != self.n_models:
            raise ValueError(f"need {self.n_models} normalisation scalars, got {len(scales)}")
        self.register_buffer("norm_scales", torch.tensor([float(s) for s in scales], dtype=torch.float64))
        self.reset_parameters(norm_init_scale, seed)

    # -- initialisation ------------------------------------------------------------------------

    @torch.no_grad()
    def reset_parameters(self, norm_init_scale: float = 1.0, seed: int | None = 0) -> None:
        """F9: one kaiming-uniform ``[d, h]`` matrix repeated for every model, each (model, latent)
        column rescaled to norm ``norm_init_scale``; decoder = encoder transposed; zero biases."""
        gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        w = nn.init.kaiming_uniform_(torch.empty(self.d_model, self.dict_size), generator=gen)
        w = w / w.norm(dim=0, keepdim=True).clamp_min(1e-12) * norm_init_scale  # [d, h]
        table = w.t().repeat(1, self.n_models)  # [h, M*d]: the same init for every model
        self.enc_weight.copy_(table)
        self.dec_weight.copy_(table)
        self.b_enc.zero_()
        self.b_dec.zero_()
        self.threshold.fill_(-1.0)

    @torch.no_grad()
    def init_decoder_bias(self, x: Tensor, max_iter: int = 100, tol: float = 1e-5) -> None:
        """Set ``b_dec[m]`` to the geometric median of ``x[:, m]`` (F9; the first training batch)."""
        for m in range(self.n_models):
            self.b_dec[m].copy_(geometric_median(x[:, m].float(), max_iter=max_iter, tol=tol))

    # -- views in the method's layout ------------------------------------------------------------

    @property
    def W_enc(self) -> Tensor:  # noqa: N802 - the method's name
        """Encoder weights ``[M, d, h]`` (a view of ``enc_weight``)."""
        return self.enc_weight.view(self.dict_size, self.n_models, self.d_model).permute(1, 2, 0)

    @property
    def W_dec(self) -> Tensor:  # noqa: N802 - the method's name
        """Decoder weights ``[M, h, d]`` (a view of ``dec_weight``); ``W_dec[m, j]`` is ``d_j^m``."""
        return self.dec_weight.view(self.dict_size, self.n_models, self.d_model).permute(1, 0, 2)

    def decoder_norms(self) -> Tensor:
        """``||d_j^m||`` as ``[M, h]``."""
        return self.dec_weight.view(self.dict_size, self.n_models, self.d_model).norm(dim=-1).t()

    def selection_weights(self) -> Tensor:
        """F3 code normalisation ``w_j = sum_m ||d_j^m||`` ``[h]`` (detached: it only ranks)."""
        return self.decoder_norms().detach().sum(dim=0)

    def relative_decoder_norm(self) -> Tensor:
        """F10 Delta per latent (two-model crosscoders only)."""
        if self.n_models != 2:
            raise ValueError("relative decoder norm is defined for two models")
        return relative_decoder_norm(self.decoder_norms().detach())

    # -- encoding ---------------------------------------------------------------------------------

    def _flat(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[1] != self.n_models or x.shape[2] != self.d_model:
            raise ValueError(
                f"expected activations [B, {self.n_models}, {self.d_model}], got {tuple(x.shape)}"
            )
        return x.reshape(x.shape[0], self.n_models * self.d_model)

    def preactivations(self, x: Tensor) -> Tensor:
        """``x W_enc + b_enc`` ``[B, h]`` (before ReLU)."""
        return torch.addmm(self.b_enc, self._flat(x), self.enc_weight.t())

    def latent_activations(self, x: Tensor) -> Tensor:
        """F2 ``z = ReLU(x W_enc + b_enc)`` ``[B, h]``."""
        return F.relu(self.preactivations(x))

    def _check_threshold(self) -> float:
        theta = float(self.threshold)
        if theta < 0:
            raise ValueError(
                "this crosscoder has no inference threshold yet (F8: it is set during training from "
                "threshold_start_step on); use use_threshold=False for BatchTopK encoding"
            )
        return theta

    def encode(self, x: Tensor, use_threshold: bool = True, k: int | None = None) -> Tensor:
        """Dense latent activations ``f`` ``[B, h]``.

        ``use_threshold=True`` (analysis, F8): ``f = z * [z * w > theta]``, independent of the batch.
        ``use_threshold=False`` (training, F4): BatchTopK over this batch with ``k`` (default ``self.k``).
        Gradients flow to the kept values (not through the selection).
        """
        z = self.latent_activations(x)
        scores = z.detach() * self.selection_weights()
        if use_threshold:
            return z * (scores > self._check_threshold())
        flat = batch_topk_indices(scores, x.shape[0] * int(k or self.k))
        mask = torch.zeros(z.numel(), dtype=torch.bool, device=z.device)
        mask[flat] = True
        return z * mask.view_as(z)

    @torch.no_grad()
    def encode_sparse(self, x: Tensor, use_threshold: bool = True, k: int | None = None) -> SparseCode:
        """Like :meth:`encode` but returns only the positive entries as a :class:`SparseCode`."""
        z = self.latent_activations(x)
        scores = z * self.selection_weights()
        if use_threshold:
            flat = (scores > self._check_threshold()).reshape(-1).nonzero().squeeze(1)
        else:
            flat = batch_topk_indices(scores, x.shape[0] * int(k or self.k))
        vals = z.reshape(-1)[flat]
        keep = vals > 0
        flat, vals = flat[keep], vals[keep]
        return SparseCode(flat // self.dict_size, flat % self.dict_size, vals, x.shape[0], self.dict_size)

    # -- decoding ---------------------------------------------------------------------------------

    def decode(self, f: Tensor, bias: bool = True) -> Tensor:
        """F5 dense decode: ``x_hat_m = f W_dec[m] + b_dec[m]`` for ``f`` ``[B, h]`` -> ``[B, M, d]``."""
        out = (f @ self.dec_weight).view(f.shape[0], self.n_models, self.d_model)
        return out + self.b_dec if bias else out

    def decode_sparse(self, code: SparseCode, bias: bool = True) -> Tensor:
        """F5 sparse decode (gather of the active decoder rows), equal to :meth:`decode` of
        ``code.to_dense()``; differentiable in ``code.vals`` and the decoder."""
        out = sparse_decode_flat(code.rows, code.cols, code.vals, code.n_rows, self.dec_weight)
        out = out.view(code.n_rows, self.n_models, self.d_model)
        return out + self.b_dec if bias else out

    def forward(self, x: Tensor, use_threshold: bool = True) -> Tensor:
        """Reconstruction of ``x`` (threshold encoding by default)."""
        if use_threshold:
            return self.decode_sparse(self.encode_sparse(x, use_threshold=True))
        return self.decode(self.encode(x, use_threshold=False))

    # -- training forward (sparse) ------------------------------------------------------------------

    def training_forward(
        self,
        x: Tensor,
        k: int | None = None,
        recon_loss: str = "l2",
        aux_alpha: float = 1 / 32,
        tokens_since_fired: Tensor | None = None,
        dead_tokens: int | None = None,
        k_aux: int | None = None,
        autocast_bf16: bool = False,
    ) -> TrainForward:
        """One training forward: BatchTopK (F4), sparse decode (F5), loss (F6) and AuxK (F7).

        If ``tokens_since_fired`` ``[h]`` (int64) is given it is updated **in place** for this batch
        (``+B``, reset to 0 for latents that fired) and the dead set is then the latents with at least
        ``dead_tokens`` tokens since they fired, as in the reference trainer. AuxK takes, per token,
        the ``k_aux = min(k_aux or d//2, |dead|)`` dead latents with the largest (detached) scores and
        reconstructs the detached residual ``x - x_hat`` without ``b_dec``.
        """
        n, h = x.shape[0], self.dict_size
        k = int(k or self.k)
        x_flat = self._flat(x)
        with torch.no_grad():
            if autocast_bf16 and x.is_cuda:
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    pre = F.linear(x_flat, self.enc_weight, self.b_enc)
                z = pre.float().clamp_min_(0)
            else:
                z = torch.addmm(self.b_enc, x_flat, self.enc_weight.t()).clamp_min_(0)
            z_flat = z.view(-1)
            scores = z * self.selection_weights()
            flat = batch_topk_indices(scores, n * k)
            flat = flat[z_flat[flat] > 0]
            rows, cols = flat // h, flat % h
            selected_scores = scores.view(-1)[flat]
            fired = torch.zeros(h, dtype=torch.bool, device=x.device)
            fired[cols] = True
            n_dead, aux_flat = 0, flat[:0]
            if tokens_since_fired is not None:
                tokens_since_fired += n
                tokens_since_fired[fired] = 0
                if dead_tokens is not None:
                    dead = (tokens_since_fired >= dead_tokens).nonzero().squeeze(1)
                    n_dead = int(dead.numel())
                    if n_dead:
                        ka = min(int(k_aux if k_aux is not None else self.d_model // 2), n_dead)
                        top_dead = scores[:, dead].topk(ka, dim=1, sorted=False).indices
                        base = torch.arange(n, device=x.device).unsqueeze(1) * h
                        aux_flat = (dead[top_dead] + base).reshape(-1)
                        aux_flat = aux_flat[z_flat[aux_flat] > 0].sort().values
            gather_flat = torch.cat([flat, aux_flat])
            pre_vals = z_flat[gather_flat]
        vals_all = _GatherPreactivation.apply(
            x_flat, self.enc_weight, self.b_enc, gather_flat // h, gather_flat % h, pre_vals
        )
        vals, aux_vals = vals_all.split([flat.numel(), aux_flat.numel()])
        x_hat_flat = sparse_decode_flat(rows, cols, vals, n, self.dec_weight) + self.b_dec.view(-1)
        x_hat = x_hat_flat.view(n, self.n_models, self.d_model)
        recon = reconstruction_loss(x, x_hat, recon_loss)
        if n_dead:
            aux_hat = sparse_decode_flat(aux_flat // h, aux_flat % h, aux_vals, n, self.dec_weight)
            aux = auxk_loss((x_flat - x_hat_flat).detach(), aux_hat)
        else:
            aux = torch.zeros((), device=x.device)
        return TrainForward(
            loss=recon + aux_alpha * aux,
            recon_loss=recon,
            aux_loss=aux,
            x_hat=x_hat.detach(),
            code=SparseCode(rows, cols, vals.detach(), n, h),
            selected_scores=selected_scores,
            fired=fired,
            n_dead=n_dead,
            n_aux=int(aux_flat.numel()),
        )

    @torch.no_grad()
    def update_threshold(self, selected_scores: Tensor, beta: float) -> None:
        """F8 EMA of the smallest selected (positive) score; the first call sets it outright."""
        pos = selected_scores[selected_scores > 0]
        smallest = pos.min().float() if pos.numel() else torch.zeros((), device=self.threshold.device)
        if float(self.threshold) < 0:
            self.threshold.copy_(smallest)
        else:
            self.threshold.mul_(beta).add_((1 - beta) * smallest)

    # -- persistence ------------------------------------------------------------------------------

    def config_dict(self) -> dict:
        """Everything needed to rebuild the module (see :func:`load_crosscoder`)."""
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "d_model": self.d_model,
            "dict_size": self.dict_size,
            "n_models": self.n_models,
            "models": ["base", "finetuned"][: self.n_models] if self.n_models <= 2 else None,
            "k": self.k,
            "threshold": float(self.threshold),
            "norm_scales": [float(s) for s in self.norm_scales],
            "code_normalization": "crosscoder",
            "weight_layout": {"W_enc": "[M, d, h]", "b_enc": "[h]", "W_dec": "[M, h, d]", "b_dec": "[M, d]"},
            "inputs": "activations multiplied by norm_scales[m] (method F1)",
        }

    def save(self, directory: str | os.PathLike, extra_config: dict | None = None) -> None:
        """Write ``model.safetensors`` (method layout) and ``config.json`` into ``directory``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {
            "W_enc": self.W_enc.detach().float().cpu().contiguous(),
            "b_enc": self.b_enc.detach().float().cpu().contiguous(),
            "W_dec": self.W_dec.detach().float().cpu().contiguous(),
            "b_dec": self.b_dec.detach().float().cpu().contiguous(),
            "threshold": self.threshold.detach().float().cpu().reshape(1),
            "norm_scales": self.norm_scales.detach().cpu().contiguous(),
        }
        tmp = directory / (MODEL_FILE + ".tmp")
        save_file(tensors, str(tmp), metadata={"format": FORMAT_NAME})
        os.replace(tmp, directory / MODEL_FILE)
        cfg = {**self.config_dict(), **(extra_config or {})}
        tmp = directory / (CONFIG_FILE + ".tmp")
        tmp.write_text(json.dumps(cfg, indent=2, default=_json_default))
        os.replace(tmp, directory / CONFIG_FILE)

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> CrossCoder:
        """Rebuild a crosscoder written by :meth:`save`."""
        from safetensors.torch import load_file

        directory = Path(directory)
        cfg = json.loads((directory / CONFIG_FILE).read_text())
        if cfg.get("format") != FORMAT_NAME:
            raise ValueError(
                f"{directory / CONFIG_FILE} is not a {FORMAT_NAME} config (format={cfg.get('format')!r})"
            )
        t = load_file(str(directory / MODEL_FILE))
        cc = cls(
            cfg["d_model"],
            cfg["dict_size"],
            cfg["k"],
            n_models=cfg["n_models"],
            norm_scales=cfg["norm_scales"],
        )
        h, m, d = cc.dict_size, cc.n_models, cc.d_model
        with torch.no_grad():
            cc.enc_weight.copy_(t["W_enc"].permute(2, 0, 1).reshape(h, m * d))
            cc.dec_weight.copy_(t["W_dec"].permute(1, 0, 2).reshape(h, m * d))
            cc.b_enc.copy_(t["b_enc"])
            cc.b_dec.copy_(t["b_dec"])
            cc.threshold.copy_(t["threshold"].reshape(()))
            cc.norm_scales.copy_(t["norm_scales"])
        return cc.to(device)


def load_crosscoder(directory: str | os.PathLike, device: str | torch.device = "cpu") -> CrossCoder:
    """Load a trained crosscoder directory (``model.safetensors`` + ``config.json``)."""
    return CrossCoder.load(directory, device=device)


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def replace_dir(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Move a finished directory into place, replacing an older one."""
    src, dst = Path(src), Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(src, dst)
