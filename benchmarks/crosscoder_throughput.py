"""Crosscoder training throughput: a plain dense reference vs mneme's sparse training path.

Both train the same BatchTopK crosscoder (method F2-F9: decoder-norm-weighted BatchTopK, unsquared L2
loss, AuxK with a detached residual and no decoder bias, Adam, clip 1.0) from the same initialisation on
the same batches of planted paired activations (``mneme.planted``, normalised to E||x_m|| = sqrt(d)),
then report training tokens/s, achieved GFLOP/s and the held-out FVU per model after the same number
of tokens.

The dense reference is written here: dense ``[B, h]`` codes, a full ``topk`` over all ``B*h`` scores,
dense matmuls (plain 2-D ``mm`` on contiguous weights) for decoding and for every gradient (autograd) -
the shape of the reference crosscoder code. Both use the same optimiser (fused Adam where available),
so the difference is the model code alone. GFLOP/s counts the matmul FLOPs each implementation actually
performs; "dense-equivalent" divides the dense FLOP count by our step time.

    .venv/bin/python benchmarks/crosscoder_throughput.py              # d=576, x8, k=32, batch 1024
    .venv/bin/python benchmarks/crosscoder_throughput.py --steps 40 --warmup 5
    .venv/bin/python benchmarks/crosscoder_throughput.py --device cuda --batch 4096 --expansion 32
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow_scripts"))

from mneme.crosscoder import CrossCoder, fraction_of_variance_unexplained, geometric_median  # noqa: E402
from mneme.planted import make_planted_features, sample_planted  # noqa: E402


class DenseCrossCoder(nn.Module):
    """Plain dense BatchTopK crosscoder in the method's layout (the reference implementation)."""

    def __init__(self, init: CrossCoder) -> None:
        super().__init__()
        self.k, self.d, self.h = init.k, init.d_model, init.dict_size
        self.W_enc = nn.Parameter(init.W_enc.detach().clone())  # [2, d, h]
        self.b_enc = nn.Parameter(init.b_enc.detach().clone())
        self.W_dec = nn.Parameter(init.W_dec.detach().clone())  # [2, h, d]
        self.b_dec = nn.Parameter(init.b_dec.detach().clone())

    def code_norm(self) -> torch.Tensor:
        return self.W_dec.norm(dim=-1).sum(dim=0)  # [h]

    def encode(self, x: torch.Tensor):
        b = x.shape[0]
        z = F.relu(torch.addmm(self.b_enc, x.reshape(b, -1), self.W_enc.reshape(-1, self.h)))  # [B, h]
        s = z * self.code_norm()
        idx = s.flatten().topk(x.shape[0] * self.k, sorted=False).indices
        f = torch.zeros_like(z.flatten()).scatter(-1, idx, z.flatten()[idx]).view_as(z)
        return f, z, s

    def decode(self, f: torch.Tensor, bias: bool = True) -> torch.Tensor:
        out = torch.stack([f @ self.W_dec[0], f @ self.W_dec[1]], dim=1)  # [B, 2, d]
        return out + self.b_dec if bias else out

    def loss(self, x, tokens_since_fired, dead_tokens):
        f, z, s = self.encode(x)
        x_hat = self.decode(f)
        e = x - x_hat
        fired = (f > 0).any(dim=0)
        tokens_since_fired += x.shape[0]
        tokens_since_fired[fired] = 0
        loss = e.norm(dim=-1).mean()
        dead = tokens_since_fired >= dead_tokens
        n_dead = int(dead.sum())
        if n_dead:
            k_aux = min(self.d // 2, n_dead)
            scores = torch.where(dead[None], s, -torch.inf).detach()
            idx = scores.topk(k_aux, dim=1, sorted=False).indices
            f_aux = torch.zeros_like(z).scatter(1, idx, z.gather(1, idx))
            res = e.detach().flatten(1)
            rec = self.decode(f_aux, bias=False).flatten(1)
            aux = (res - rec).pow(2).sum(-1).mean() / (res - res.mean(0)).pow(2).sum(-1).mean()
            loss = loss + torch.nan_to_num(aux, nan=0.0) / 32
        return loss, n_dead


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a wall-clock time covers the step it measures."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_adam(params, lr):
    """The same optimiser for both (fused CPU Adam where available), so only the model code differs."""
    try:
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))


def make_batches(args):
    feats = make_planted_features(
        args.d,
        n_shared=args.n_features // 2,
        n_ft_only=args.n_features // 8,
        n_base_only=args.n_features // 8,
        n_ft_scaled=args.n_features // 8,
        n_base_scaled=args.n_features // 8,
        active_per_token=args.active,
        offset_norm=2.0,
        seed=args.seed,
    )
    probe = sample_planted(feats, 4096, noise_std=0.05, seed=10_000)
    scales = [np.float32(np.sqrt(args.d) / np.linalg.norm(x, axis=1).mean()) for x in (probe.xb, probe.xf)]

    def batch(i: int, n: int) -> torch.Tensor:
        p = sample_planted(feats, n, noise_std=0.05, seed=args.seed * 7919 + i)
        return torch.from_numpy(np.stack([p.xb * scales[0], p.xf * scales[1]], axis=1)).to(args.device)

    return batch


class DenseRun:
    """Training state of the dense reference; ``step(x)`` trains one batch and returns its wall time."""

    def __init__(self, args, init: CrossCoder) -> None:
        self.args, self.model = args, DenseCrossCoder(init).to(args.device)
        self.opt = make_adam(self.model.parameters(), args.lr)
        self.tsf = torch.zeros(self.model.h, dtype=torch.long, device=args.device)
        self.n_dead = self.n_steps = 0

    def step(self, x: torch.Tensor) -> float:
        m = self.model
        t0 = time.perf_counter()
        if self.n_steps == 0:
            with torch.no_grad():
                for i in range(2):
                    m.b_dec[i] = geometric_median(x[:, i])
        loss, self.n_dead = m.loss(x, self.tsf, self.args.dead_tokens)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad()
        self.n_steps += 1
        synchronize(self.args.device)
        return time.perf_counter() - t0

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.decode(self.model.encode(x)[0])


class SparseRun:
    """Training state of mneme's sparse path (CrossCoder.training_forward)."""

    def __init__(self, args, init: CrossCoder) -> None:
        self.args = args
        self.model = CrossCoder(init.d_model, init.dict_size, init.k)
        self.model.load_state_dict(init.state_dict())
        self.model.to(args.device)
        self.opt = make_adam(self.model.parameters(), args.lr)
        self.tsf = torch.zeros(self.model.dict_size, dtype=torch.long, device=args.device)
        self.n_dead = self.n_steps = 0

    def step(self, x: torch.Tensor) -> float:
        m = self.model
        t0 = time.perf_counter()
        if self.n_steps == 0:
            m.init_decoder_bias(x)
        out = m.training_forward(
            x, k=self.args.k, tokens_since_fired=self.tsf, dead_tokens=self.args.dead_tokens
        )
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.n_steps += 1
        self.n_dead, self.nnz = out.n_dead, (out.code.vals.numel(), out.n_aux)
        synchronize(self.args.device)
        return time.perf_counter() - t0

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.decode_sparse(self.model.encode_sparse(x, use_threshold=False))


@torch.no_grad()
def held_out_fvu(decode_fn, batch, args) -> list[float]:
    xs, xh = [], []
    for i in range(args.eval_batches):
        x = batch(10_000_000 + i, args.batch)
        xs.append(x)
        xh.append(decode_fn(x))
    return [float(v) for v in fraction_of_variance_unexplained(torch.cat(xs), torch.cat(xh))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=60, help="timed training steps per implementation")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (also trained on)")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument(
        "--dead-tokens", type=int, default=16_384, help="AuxK dead threshold (small: AuxK is active)"
    )
    ap.add_argument("--n-features", type=int, default=2048)
    ap.add_argument("--active", type=float, default=32.0, help="planted features active per token")
    ap.add_argument("--eval-batches", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    args = ap.parse_args()
    args.device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    d, h, b = args.d, args.d * args.expansion, args.batch
    print(f"crosscoder throughput: d={d} h={h} (x{args.expansion}) k={args.k} batch={b}, {args.steps} timed steps "
          f"after {args.warmup} warm-up steps, device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    batch = make_batches(args)
    init = CrossCoder(d, h, args.k, seed=args.seed)
    dense, ours = DenseRun(args, init), SparseRun(args, init)
    t_dense, t_ours, aux_active, nnz = [], [], [], []
    for step in range(args.warmup + args.steps):  # interleaved, so both see the same machine load
        x = batch(step, b)
        td, to = dense.step(x), ours.step(x)
        if step >= args.warmup:
            t_dense.append(td)
            t_ours.append(to)
            aux_active.append(dense.n_dead > 0)
            nnz.append(ours.nnz)
    fvu_dense = held_out_fvu(dense.reconstruct, batch, args)
    fvu_ours = held_out_fvu(ours.reconstruct, batch, args)

    mm = 2.0 * b * (2 * d) * h  # one dense [B, 2d] x [2d, h] matmul
    aux_frac = float(np.mean(aux_active))
    flops_dense = 5 * mm + aux_frac * 3 * mm  # enc fwd, dec fwd, 3 backward matmuls; aux: dec fwd + 2 bwd
    n_main = float(np.mean([a for a, _ in nnz]))
    n_aux = float(np.mean([a for _, a in nnz]))
    flops_ours = mm + 4 * 2.0 * (n_main + n_aux) * (2 * d)  # dense enc fwd; gather dec fwd, 3 sparse bwd
    s_dense, s_ours = float(np.median(t_dense)), float(np.median(t_ours))
    rows = [
        ("dense reference", s_dense, flops_dense, fvu_dense),
        ("mneme sparse", s_ours, flops_ours, fvu_ours),
    ]
    print(f"\n{'implementation':<16} {'ms/step':>8} {'tokens/s':>9} {'GFLOP/s':>8} {'dense-eq GFLOP/s':>17} "
          f"{'FVU base':>9} {'FVU ft':>7}")  # fmt: skip
    for name, sec, flops, fvu in rows:
        print(
            f"{name:<16} {sec * 1e3:8.1f} {b / sec:9.0f} {flops / sec / 1e9:8.1f} {flops_dense / sec / 1e9:17.1f} "
            f"{fvu[0]:9.4f} {fvu[1]:7.4f}"
        )
    print(
        f"\nspeed-up (median step time): {s_dense / s_ours:.2f}x; tokens trained by each: {(args.warmup + args.steps) * b}"
    )
    print(f"selected entries/step {n_main:.0f} (B*k = {b * args.k}), AuxK entries/step {n_aux:.0f}, "
          f"dead latents at the end: dense {dense.n_dead}, ours {ours.n_dead}; AuxK active in "
          f"{aux_frac:.0%} of timed steps")  # fmt: skip
    print(f"FLOPs/step: dense {flops_dense / 1e9:.1f} G, ours {flops_ours / 1e9:.1f} G (matmul-equivalent)")


if __name__ == "__main__":
    main()
