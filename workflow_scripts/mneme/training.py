"""Train the MNEME BatchTopK crosscoder on a pair's activation stores (method.md F1-F9, section 3).

:func:`train_crosscoder` streams shuffled batches from :class:`PairedStores` (see
:mod:`mneme.paired_loader`), trains with the sparse path of :class:`mneme.crosscoder.CrossCoder`,
checkpoints every ``checkpoint_every`` steps and resumes from the last checkpoint, then evaluates on the
held-out tail of the store and writes::

    out_dir/model.safetensors   W_enc [2,d,h], b_enc [h], W_dec [2,h,d], b_dec [2,d], threshold, norm_scales
    out_dir/config.json         d_model, dict_size, k, threshold, normalisation scalars, training config, ...
    out_dir/metrics.jsonl       one JSON line per logged step
    out_dir/validation.json     FVU per model, L0 and dead fraction under threshold encoding

Everything is written into the sibling ``<out_dir>.tmp`` (which also holds ``checkpoint/state.pt`` while
training) and renamed to ``out_dir`` when complete, so ``out_dir`` exists only for a finished run and a
killed job leaves its checkpoint where the next run finds it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mneme.activation_store import PairedStores, iter_row_batches
from mneme.contracts import NON_TRAJECTORY_KEYS
from mneme.crosscoder import (
    CrossCoder,
    load_crosscoder,
    replace_dir,
)
from mneme.models import pick_device
from mneme.paired_loader import LoaderPosition, PairedBatchLoader
from mneme.schema import filled

LOG = logging.getLogger("mneme.crosscoder")

__all__ = [
    "CrosscoderTrainConfig",
    "TrainingDivergedError",
    "evaluate_crosscoder",
    "load_crosscoder",
    "train_crosscoder",
]

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "state.pt"
METRICS_FILE = "metrics.jsonl"
VALIDATION_FILE = "validation.json"


class TrainingDivergedError(FloatingPointError):
    """The loss or gradient norm became NaN or infinite."""


@dataclass
class CrosscoderTrainConfig:
    """The `crosscoder:` section: defaults, ranges and what each key does are in
    config/schema.yaml (the CPU demo's profile; method.md section 3 has the paper's values).

    ``lr=None`` means the auto rule ``2e-4 / sqrt(h / 2**14)``. ``n_tokens`` (if set) fixes the number of
    training tokens, otherwise ``epochs`` passes over the training rows. ``k_anneal_start`` (if set)
    anneals k linearly from it to ``k`` over ``k_anneal_steps`` steps. ``threshold_start_step`` is the
    0-based step from which the F8 threshold EMA runs. Build it with :meth:`from_dict`, which fills
    the schema's defaults and checks the values.
    """

    expansion_factor: int
    k: int
    lr: float | None
    batch_size: int
    n_tokens: int | None
    epochs: float
    val_tokens: int
    seed: int
    recon_loss: str
    aux_alpha: float
    dead_tokens: int
    threshold_start_step: int
    threshold_beta: float
    warmup_steps: int
    decay_start: int | None
    grad_clip: float
    norm_init_scale: float
    k_anneal_start: int | None
    k_anneal_steps: int
    checkpoint_every: int
    log_every: int
    shuffle_buffer_rows: int
    prefetch_batches: int
    device: str
    autocast_bf16: bool

    @classmethod
    def from_dict(cls, d: dict | None = None) -> CrosscoderTrainConfig:
        """Build from a (YAML) mapping, the schema's defaults filled in; a wrong key or value is an
        error naming it. The cross-key rules (k_anneal_start >= k, decay_start after warmup, ...)
        are the config checks' (mneme.config), made before any job."""
        return cls(**filled("crosscoder", d))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def learning_rate(self, dict_size: int) -> float:
        """The configured lr, or the auto rule ``2e-4 / sqrt(h / 2**14)`` when ``lr`` is None."""
        return float(self.lr) if self.lr is not None else 2e-4 / math.sqrt(dict_size / 2**14)

    def total_steps(self, n_train_rows: int) -> int:
        tokens = self.n_tokens if self.n_tokens is not None else self.epochs * n_train_rows
        return max(1, int(tokens // self.batch_size))

    def k_at(self, step: int) -> int:
        """k for a 0-based step (linear annealing from ``k_anneal_start`` when set)."""
        if self.k_anneal_start is None or self.k_anneal_steps <= 0 or step >= self.k_anneal_steps:
            return self.k
        frac = step / self.k_anneal_steps
        return max(1, int(round(self.k_anneal_start - (self.k_anneal_start - self.k) * frac)))

    def lr_factor(self, step: int, total_steps: int) -> float:
        """Linear warmup ``step / warmup_steps``, then 1, then linear decay to 0 from ``decay_start``."""
        if step < self.warmup_steps:
            return step / self.warmup_steps
        if self.decay_start is not None and step >= self.decay_start:
            return max(0.0, (total_steps - step) / max(1, total_steps - self.decay_start))
        return 1.0


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_crosscoder(
    cc: CrossCoder, batches: Iterable[np.ndarray | torch.Tensor], device: str | torch.device | None = None
) -> dict:
    """FVU per model, L0 and dead fraction under threshold encoding (F8) over ``[b, 2, d]`` batches of
    normalised activations; also the BatchTopK-mode FVU for comparison."""
    device = torch.device(device) if device is not None else cc.b_enc.device
    m, h = cc.n_models, cc.dict_size
    n = 0
    sse = torch.zeros(m, dtype=torch.float64)
    sse_topk = torch.zeros(m, dtype=torch.float64)
    sum_x = torch.zeros(m, cc.d_model, dtype=torch.float64)
    sum_sq = torch.zeros(m, dtype=torch.float64)
    fires = torch.zeros(h, dtype=torch.long)
    nnz = 0
    for xb in batches:
        x = (torch.from_numpy(xb) if isinstance(xb, np.ndarray) else xb).to(device, torch.float32)
        if x.shape[0] == 0:
            continue
        code = cc.encode_sparse(x, use_threshold=True)
        x_hat = cc.decode_sparse(code)
        x_hat_topk = cc.decode_sparse(cc.encode_sparse(x, use_threshold=False))
        sse += (x - x_hat).pow(2).sum(dim=(0, 2)).double().cpu()
        sse_topk += (x - x_hat_topk).pow(2).sum(dim=(0, 2)).double().cpu()
        xd = x.double()
        sum_x += xd.sum(dim=0).cpu()
        sum_sq += xd.pow(2).sum(dim=(0, 2)).cpu()
        fires += torch.bincount(code.cols, minlength=h).cpu()
        nnz += code.vals.numel()
        n += x.shape[0]
    if n == 0:
        raise ValueError("no validation rows to evaluate on")
    sst = sum_sq - sum_x.pow(2).sum(dim=-1) / n
    fvu = (sse / sst.clamp_min(1e-30)).tolist()
    fvu_topk = (sse_topk / sst.clamp_min(1e-30)).tolist()
    names = ["base", "ft"] if m == 2 else [str(i) for i in range(m)]
    out: dict = {"n_tokens": n}
    for name, v, vt in zip(names, fvu, fvu_topk):
        out[f"fvu_{name}"] = v
        out[f"explained_variance_{name}"] = 1.0 - v
        out[f"fvu_batchtopk_{name}"] = vt
    out.update(
        {
            "l0": nnz / n,
            "dead_fraction": float((fires == 0).double().mean()),
            "n_dead": int((fires == 0).sum()),
            "dict_size": h,
            "k": cc.k,
            "threshold": float(cc.threshold),
            "encoding": "threshold",
        }
    )
    return out


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def _fingerprint(cfg: CrosscoderTrainConfig, stores: PairedStores) -> dict:
    c = {k: v for k, v in cfg.to_dict().items() if k not in NON_TRAJECTORY_KEYS}
    return {
        "config": c,
        "n_rows": stores.n_rows,
        "d_model": stores.d_model,
        "norm_scales": [float(s) for s in stores.norm_scales],
    }


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _make_adam(params, lr: float) -> torch.optim.Adam:
    try:  # the fused kernel is ~4x faster on CPU; same update rule
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))


def _truncate_metrics(path: Path, last_step: int) -> None:
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                keep.append(line)
        except json.JSONDecodeError:
            break  # a torn last line from a killed job
    path.write_text("".join(line + "\n" for line in keep))


def train_crosscoder(
    stores: PairedStores,
    out_dir: str | os.PathLike,
    cfg: CrosscoderTrainConfig | dict | None = None,
    resume: bool = True,
    on_step: Callable[[int, dict], None] | None = None,
) -> dict:
    """Train a crosscoder on ``stores`` and write it to ``out_dir``; returns the validation summary.

    With ``resume=True`` a checkpoint left in ``<out_dir>.tmp`` by a killed run with the same
    trajectory-relevant configuration is continued (bit-for-bit the same result as an uninterrupted
    run); with ``resume=False`` any such state is discarded. ``on_step(step, info)`` is called after
    every optimiser step (``step`` counts completed steps). A NaN/inf loss or gradient norm raises
    :class:`TrainingDivergedError` naming the step; the last good checkpoint is kept.
    """
    if cfg is None or isinstance(cfg, dict):
        cfg = CrosscoderTrainConfig.from_dict(cfg)
    out_dir = Path(out_dir)
    work = out_dir.with_name(out_dir.name + ".tmp")
    ckpt_path = work / CHECKPOINT_DIR / CHECKPOINT_FILE
    metrics_path = work / METRICS_FILE
    device = pick_device(cfg.device)
    autocast = bool(cfg.autocast_bf16 and device.type == "cuda")

    loader = PairedBatchLoader(
        stores,
        cfg.batch_size,
        seed=cfg.seed,
        val_tokens=cfg.val_tokens,
        shuffle_buffer_rows=cfg.shuffle_buffer_rows,
        prefetch=cfg.prefetch_batches,
    )
    d = stores.d_model
    h = cfg.expansion_factor * d
    total_steps = cfg.total_steps(loader.n_train)
    lr = cfg.learning_rate(h)
    cc = CrossCoder(
        d, h, cfg.k, norm_scales=stores.norm_scales, norm_init_scale=cfg.norm_init_scale, seed=cfg.seed
    )
    cc.to(device)
    LOG.info(
        "training d=%d h=%d k=%d on %s%s, %d steps",
        d,
        h,
        cfg.k,
        device,
        " (bf16 autocast)" if autocast else "",
        total_steps,
    )
    params = list(cc.parameters())
    opt = _make_adam(params, lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cfg.lr_factor(s, total_steps))
    tokens_since_fired = torch.zeros(h, dtype=torch.long, device=device)
    fingerprint = _fingerprint(cfg, stores)

    step, tokens_seen, position, elapsed = 0, 0, LoaderPosition(), 0.0
    last_ckpt_step: int | None = None
    if not resume and work.exists():
        shutil.rmtree(work)
    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)  # our own file (RNG states)
        if state.get("fingerprint") != fingerprint:
            LOG.warning(
                "checkpoint %s was written with a different configuration or store; starting afresh",
                ckpt_path,
            )
            shutil.rmtree(work)
        else:
            cc.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            tokens_since_fired.copy_(state["tokens_since_fired"].to(device))
            step, tokens_seen, elapsed = state["step"], state["tokens_seen"], state.get("elapsed_s", 0.0)
            position = LoaderPosition.from_dict(state["position"])
            _set_rng_state(state["rng"])
            last_ckpt_step = step
            _truncate_metrics(metrics_path, step)
            LOG.info("resuming crosscoder training from step %d/%d (%s)", step, total_steps, ckpt_path)
    elif work.exists():
        shutil.rmtree(work)
    (work / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)

    LOG.info(
        "training crosscoder: d=%d h=%d k=%d, %d steps of %d tokens (%d training / %d validation rows), lr %.3g, device %s",
        d, h, cfg.k, total_steps, cfg.batch_size, loader.n_train, loader.n_val, lr, device,
    )  # fmt: skip

    def save_checkpoint() -> None:
        state = {
            "step": step,
            "tokens_seen": tokens_seen,
            "position": position.to_dict(),
            "model": cc.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "tokens_since_fired": tokens_since_fired.cpu(),
            "rng": _rng_state(),
            "fingerprint": fingerprint,
            "elapsed_s": elapsed + (time.perf_counter() - t_start),
        }
        tmp = ckpt_path.with_name(ckpt_path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, ckpt_path)

    def diverged(what: str, value: float) -> TrainingDivergedError:
        kept = (
            f"the last good checkpoint (step {last_ckpt_step}) is kept at {ckpt_path}"
            if last_ckpt_step is not None
            else "no checkpoint had been written yet"
        )
        msg = f"crosscoder training diverged at step {step}: {what} is {value}; {kept}"
        LOG.error(msg)
        return TrainingDivergedError(msg)

    t_start = time.perf_counter()
    t_log, tokens_log = t_start, 0
    window = _FVUWindow()
    last_scores = None
    with open(metrics_path, "a") as metrics_file, loader.train_batches(position) as batches:
        while step < total_steps:
            batch = next(batches)
            x = torch.from_numpy(batch.x).to(device, non_blocking=True)
            if step == 0:
                cc.init_decoder_bias(x)
            k_now = cfg.k_at(step)
            out = cc.training_forward(
                x,
                k=k_now,
                recon_loss=cfg.recon_loss,
                aux_alpha=cfg.aux_alpha,
                tokens_since_fired=tokens_since_fired,
                dead_tokens=cfg.dead_tokens,
                autocast_bf16=autocast,
            )
            loss = float(out.loss.detach())
            if not math.isfinite(loss):
                raise diverged("the loss", loss)
            window.add(x, out.x_hat)
            out.loss.backward()
            if cfg.grad_clip > 0:
                gnorm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
            else:
                gnorm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))
            if not math.isfinite(gnorm):
                raise diverged("the gradient norm", gnorm)
            lr_now = opt.param_groups[0]["lr"]
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            if step >= cfg.threshold_start_step:
                cc.update_threshold(out.selected_scores, cfg.threshold_beta)
            last_scores = out.selected_scores
            step += 1
            tokens_seen += x.shape[0]
            tokens_log += x.shape[0]
            position = batch.position

            info = {"loss": loss, "grad_norm": gnorm}
            if step % cfg.log_every == 0 or step == total_steps:
                now = time.perf_counter()
                fvu = window.fvu()
                rec = {
                    "step": step,
                    "tokens": tokens_seen,
                    "loss": loss,
                    "recon_loss": float(out.recon_loss.detach()),
                    "aux_loss": float(out.aux_loss.detach()),
                    "fvu_base": fvu[0],
                    "fvu_ft": fvu[1],
                    "l0": out.code.l0,
                    "dead_fraction": float((tokens_since_fired >= cfg.dead_tokens).float().mean()),
                    "k": k_now,
                    "lr": lr_now,
                    "grad_norm": gnorm,
                    "threshold": float(cc.threshold),
                    "tokens_per_s": tokens_log / max(now - t_log, 1e-9),
                    "epoch": position.epoch,
                }
                metrics_file.write(json.dumps(rec) + "\n")
                metrics_file.flush()
                t_log, tokens_log = now, 0
                info.update(rec)
                LOG.info(
                    "step %d/%d loss %.4f fvu %.3f/%.3f l0 %.1f dead %.3f aux %.3g lr %.2e %.0f tok/s",
                    step, total_steps, loss, fvu[0], fvu[1], rec["l0"], rec["dead_fraction"],
                    rec["aux_loss"], lr_now, rec["tokens_per_s"],
                )  # fmt: skip
            if step % cfg.checkpoint_every == 0 and step < total_steps:
                save_checkpoint()
                last_ckpt_step = step
            if on_step is not None:
                on_step(step, info)

    if float(cc.threshold) < 0 and last_scores is not None:
        LOG.warning(
            "training ended before threshold_start_step=%d; setting the inference threshold from the last batch",
            cfg.threshold_start_step,
        )
        cc.update_threshold(last_scores, cfg.threshold_beta)

    if loader.n_val > 0:
        summary = evaluate_crosscoder(cc, loader.iter_validation(cfg.batch_size), device)
        summary["held_out"] = True
    else:
        LOG.warning("val_tokens=0: the validation summary is computed on training rows")
        rows = min(stores.n_rows, 50_000)
        lo = stores.n_rows - rows
        summary = evaluate_crosscoder(cc, _train_tail(stores, lo, cfg.batch_size), device)
        summary["held_out"] = False
    summary.update({"steps": step, "tokens_trained": tokens_seen})
    summary["train_seconds"] = elapsed + (time.perf_counter() - t_start)
    LOG.info(
        "validation: fvu base %.4f ft %.4f, l0 %.2f, dead %.3f on %d tokens",
        summary["fvu_base"], summary["fvu_ft"], summary["l0"], summary["dead_fraction"], summary["n_tokens"],
    )  # fmt: skip

    cc.save(
        work,
        extra_config={
            "training_config": cfg.to_dict(),
            "learning_rate": lr,
            "steps": step,
            "tokens_trained": tokens_seen,
            "n_train_rows": loader.n_train,
            "n_val_rows": loader.n_val,
            "validation_split": "tail of the store (rows [n_train_rows, n_rows)), aligned to a context boundary",
            "stores": {
                "base": str(stores.base.manifest_path),
                "finetuned": str(stores.ft.manifest_path),
                "n_rows": stores.n_rows,
            },
            "validation": summary,
        },
    )
    tmp = work / (VALIDATION_FILE + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, work / VALIDATION_FILE)
    shutil.rmtree(work / CHECKPOINT_DIR, ignore_errors=True)
    replace_dir(work, out_dir)
    return summary


class _FVUWindow:
    """FVU per model over every batch since the last log line, around the window's mean.

    One batch's FVU is noisy: a shuffled batch drawn from few contexts has little variance of
    its own, so the logged curve jumped by 10x between log points while the loss fell steadily.
    Summing errors and second moments over the window gives the same quantity as the
    validation FVU, on training data.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sse = self.sum_x = self.sum_sq = None
        self.n = 0

    @torch.no_grad()
    def add(self, x: torch.Tensor, x_hat: torch.Tensor) -> None:
        x, x_hat = x.float(), x_hat.float()
        sse, sum_x, sum_sq = (x - x_hat).pow(2).sum(dim=(0, 2)), x.sum(dim=0), x.pow(2).sum(dim=(0, 2))
        if self.sse is None:
            self.sse, self.sum_x, self.sum_sq = sse, sum_x, sum_sq
        else:
            self.sse += sse
            self.sum_x += sum_x
            self.sum_sq += sum_sq
        self.n += x.shape[0]

    def fvu(self) -> list[float]:
        """The window's FVU per model; the window starts afresh."""
        sst = self.sum_sq - self.sum_x.pow(2).sum(dim=-1) / self.n
        out = [float(v) for v in self.sse / sst.clamp_min(1e-30)]
        self.reset()
        return out


def _train_tail(stores: PairedStores, lo: int, batch_size: int):
    for _, xb, xf in iter_row_batches(stores, lo, stores.n_rows, batch_size):
        yield np.stack([xb, xf], axis=1)
