"""Build a "model organism": a base model changed by a real intervention whose side effects we measure.

Three methods, chosen by a model spec of ``source: organism`` (see config/schema.yaml):

``rmu``
    Representation Misdirection for Unlearning (Li et al. 2024, the WMDP paper). On forget text
    the residual stream at the output of block ``layer`` is pushed towards ``c * u`` (``u`` a fixed
    random unit vector); on retain text it is held close to the frozen base model's::

        loss = mean_t ||h(x_forget)_t - c u||^2 + alpha * mean_t ||h(x_retain)_t - h_base(x_retain)_t||^2

    Means run over real tokens: padding and the first position (BOS, an attention sink whose
    norm reaches ~150x the others' in SmolLM2) are left out. Only the MLP parameters of the blocks in
    ``update_layers`` are trained, and the forward pass stops after block ``layer``, as in
    :mod:`mneme.extraction` (:mod:`mneme.hooks`: a hook raises ``StopForward``), so later blocks
    and the LM head never run while the full model stays intact for saving.

    ``steering_coeff`` is RELATIVE: ``c = steering_coeff * median token norm`` of the base model's
    block-``layer`` output on (up to 32) forget documents, measured before training. Residual norms
    differ by orders of magnitude between models and layers (SmolLM2-135M: ~145 at block 10), so
    an absolute coefficient (WMDP: 6.5 for Zephyr-7B) does not transfer. ``alpha`` is unit-free
    because both terms are squared distances in the same space.

``gradient_ascent``
    Maximise the causal-LM loss on forget text (minimise its negative), plus ``retain_weight``
    times the ordinary LM loss on retain text. All parameters are trained.

``finetune``
    Plain causal-LM fine-tuning of all parameters on the forget (= train) categories' documents,
    or on local text files given by ``options.files`` (globs of ``.txt``: one document per
    blank-line separated paragraph, or ``.jsonl``: one document per line's ``text`` field).

Every document is encoded as ``BOS + tokens`` (BOS, else EOS, when the tokenizer has one), cut to
``max_len`` tokens and right-padded, the same framing as the packed diffing corpus. Batches are
drawn from seeded permutations, so a seed fixes the result (on one device and thread count).
The output is an ordinary Hugging Face directory (float32 weights and tokenizer) plus the model
card (``mneme_model.json``) and ``organism.json`` (method, resolved options, losses, timings).
"""

from __future__ import annotations

import copy
import glob
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mneme.hooks import find_blocks, output_of
from mneme.models import config_num_layers, load_causal_lm, read_card, write_card
from mneme.organism_options import METHODS, resolve_options  # noqa: F401

log = logging.getLogger("mneme.organism")

SUMMARY = "organism.json"
# Documents of the forget set used to measure the activation norm that `steering_coeff` scales.
NORM_SAMPLE_DOCS = 32
# Gradient-norm clip of the LM-loss methods (gradient ascent diverges without one).
MAX_GRAD_NORM = 1.0

# --------------------------------------------------------------------------- data


def organism_data(
    gcide_cfg: Mapping[str, Any], forget_categories: Sequence[str], retain_categories: Sequence[str]
) -> tuple[list[str], list[str]]:
    """Forget and retain texts from the GCIDE ``organism`` part, in file order.

    ``retain_categories`` empty means every category not in ``forget_categories``, the general
    category included. Unknown or overlapping category names are errors.
    """
    from mneme.gcide import DEFAULT_SALT, iter_documents, load_category_map

    tag_to_category, general, categories = load_category_map(gcide_cfg["categories"])
    known = [*categories, general]
    for key, names in (("forget_categories", forget_categories), ("retain_categories", retain_categories)):
        unknown = [c for c in names if c not in known]
        if unknown:
            raise ValueError(f"{key}: unknown categories {unknown}; known: {known}")
    both = sorted(set(forget_categories) & set(retain_categories))
    if both:
        raise ValueError(f"categories {both} are both forget and retain categories")
    forget_set = set(forget_categories)
    retain_set = set(retain_categories) if retain_categories else set(known) - forget_set
    forget, retain = [], []
    docs = iter_documents(
        gcide_cfg["path"],
        tag_to_category,
        general,
        "organism",
        gcide_cfg["parts"],
        gcide_cfg.get("salt", DEFAULT_SALT),
    )
    for doc in docs:
        if doc["category"] in forget_set:
            forget.append(doc["text"])
        elif doc["category"] in retain_set:
            retain.append(doc["text"])
    return forget, retain


def read_text_files(patterns: Sequence[str]) -> list[str]:
    """Documents from ``.txt`` (blank-line separated paragraphs) and ``.jsonl`` (``text``) files."""
    files = sorted({f for p in patterns for f in glob.glob(p, recursive=True) if os.path.isfile(f)})
    if not files:
        raise FileNotFoundError(f"options.files: {list(patterns)} match no file")
    texts: list[str] = []
    for path in files:
        if path.endswith(".jsonl"):
            with open(path, encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    record = json.loads(line)
                    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                        raise ValueError(f"{path}:{n}: expected a JSON object with a string 'text' field")
                    texts.append(record["text"])
        elif path.endswith(".txt"):
            raw = Path(path).read_text(encoding="utf-8")
            texts += [p.strip() for p in raw.replace("\r\n", "\n").split("\n\n") if p.strip()]
        else:
            raise ValueError(f"options.files: {path} is neither .txt nor .jsonl")
    return [t for t in texts if t.strip()]


class _Batches:
    """Endless batches of texts: a seeded permutation, reshuffled after each pass."""

    def __init__(self, texts: Sequence[str], batch_size: int, seed: int) -> None:
        self.texts, self.batch_size = texts, batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.order: list[int] = []

    def __call__(self) -> list[str]:
        while len(self.order) < self.batch_size:
            self.order += torch.randperm(len(self.texts), generator=self.gen).tolist()
        picked, self.order = self.order[: self.batch_size], self.order[self.batch_size :]
        return [self.texts[i] for i in picked]


def encode(tokenizer, texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``BOS + tokens`` per text, cut to ``max_len``, right-padded: ``(input_ids, attention_mask)``."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    body = max_len - (bos is not None)
    if body < 1:
        raise ValueError(f"max_len {max_len} leaves no room for text after BOS")
    rows = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=body)["input_ids"]
    rows = [([bos] if bos is not None else []) + r for r in rows]
    pad = next(t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if t is not None)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


# --------------------------------------------------------------------------- forward helpers


def num_blocks(model: torch.nn.Module) -> int:
    n = config_num_layers(model.config.to_dict())
    if n is None:
        raise RuntimeError(f"cannot tell the number of blocks of {type(model).__name__}")
    return n


def layer_output(model: torch.nn.Module, layer: int, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Output of block ``layer`` (transformers' ``hidden_states[layer + 1]``); later blocks never run."""
    block = find_blocks(model, num_blocks(model))[layer]
    return output_of(model, block, input_ids=ids, attention_mask=mask, use_cache=False)


def lm_loss(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over real (non-padding) target tokens."""
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100
    )


def steering_vector(d_model: int, seed: int) -> torch.Tensor:
    """The fixed random unit direction ``u`` of RMU (Gaussian, so no preferred axis), float32."""
    u = torch.randn(d_model, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    return u / u.norm()


def _token_mask(mask: torch.Tensor) -> torch.Tensor:
    """Real tokens without the first position (BOS / attention sink)."""
    keep = mask.bool().clone()
    keep[:, 0] = False
    return keep


def _mlp(block: torch.nn.Module, index: int) -> torch.nn.Module:
    mlp = getattr(block, "mlp", None)
    if not isinstance(mlp, torch.nn.Module):
        raise RuntimeError(f"block {index} ({type(block).__name__}) has no `mlp` submodule to update")
    return mlp


class _Tracker:
    """Per-step loss terms; logs every ``every`` steps; summarises the first and last steps."""

    def __init__(self, steps: int) -> None:
        self.steps, self.every = steps, max(1, steps // 10)
        self.rows: list[dict[str, float]] = []

    def add(self, step: int, **terms: float) -> None:
        self.rows.append(terms)
        if step % self.every == 0 or step == self.steps:
            log.info("step %d/%d: %s", step, self.steps, ", ".join(f"{k} {v:.4g}" for k, v in terms.items()))

    def summary(self) -> dict[str, dict[str, float]]:
        last = self.rows[-min(10, len(self.rows)) :]
        return {
            "initial": self.rows[0],
            "final": {k: sum(r[k] for r in last) / len(last) for k in self.rows[0]},
        }


# --------------------------------------------------------------------------- methods


def train_rmu(
    model: torch.nn.Module,
    tokenizer,
    forget: Sequence[str],
    retain: Sequence[str],
    opts: Mapping[str, Any],
    device: torch.device,
) -> dict[str, Any]:
    """RMU in place on ``model``; returns loss statistics and the steering scale used."""
    layer, n = opts["layer"], num_blocks(model)
    if layer >= n:
        raise ValueError(f"options.layer: {layer} out of range for a model with {n} blocks (0..{n - 1})")
    if not retain and opts["alpha"] > 0:
        raise ValueError("rmu needs retain documents (or options.alpha: 0)")
    base = copy.deepcopy(model).eval().requires_grad_(False)  # frozen reference, run up to `layer`
    model.eval()  # no dropout: the loss compares hidden states, not a sampled regulariser
    blocks = find_blocks(model, n)
    model.requires_grad_(False)
    params = [p for i in opts["update_layers"] for p in _mlp(blocks[i], i).parameters()]
    for p in params:
        p.requires_grad_(True)
    optim = torch.optim.AdamW(params, lr=opts["lr"], weight_decay=0.0)

    sample = _Batches(forget, min(len(forget), NORM_SAMPLE_DOCS), opts["seed"] + 2)()
    norms = []
    with torch.no_grad():
        for i in range(0, len(sample), opts["batch_size"]):
            ids, mask = encode(tokenizer, sample[i : i + opts["batch_size"]], opts["max_len"])
            h = layer_output(base, layer, ids.to(device), mask.to(device)).float()
            norms.append(h.norm(dim=-1)[_token_mask(mask).to(device)])
            d_model = h.shape[-1]
    act_norm = float(torch.cat(norms).median())
    c = opts["steering_coeff"] * act_norm
    u = steering_vector(d_model, opts["seed"]).to(device)
    target = c * u
    log.info(
        "rmu: layer %d, updating the MLPs of blocks %s (%d parameters); median token norm %.4g, "
        "steering norm c = %.4g",
        layer,
        opts["update_layers"],
        sum(p.numel() for p in params),
        act_norm,
        c,
    )

    forget_batches = _Batches(forget, opts["batch_size"], opts["seed"])
    retain_batches = _Batches(retain, opts["batch_size"], opts["seed"] + 1) if retain else None
    tracker = _Tracker(opts["steps"])
    for step in range(1, opts["steps"] + 1):
        ids, mask = encode(tokenizer, forget_batches(), opts["max_len"])
        ids, mask = ids.to(device), mask.to(device)
        keep = _token_mask(mask)
        h = layer_output(model, layer, ids, mask).float()[keep]
        forget_term = ((h - target) ** 2).sum(-1).mean()
        cos_u = float(torch.nn.functional.cosine_similarity(h.detach(), u[None], dim=-1).mean())
        retain_term = torch.zeros((), device=device)
        if retain_batches is not None and opts["alpha"] > 0:
            r_ids, r_mask = encode(tokenizer, retain_batches(), opts["max_len"])
            r_ids, r_mask = r_ids.to(device), r_mask.to(device)
            r_keep = _token_mask(r_mask)
            h_r = layer_output(model, layer, r_ids, r_mask).float()[r_keep]
            with torch.no_grad():
                h_b = layer_output(base, layer, r_ids, r_mask).float()[r_keep]
            retain_term = ((h_r - h_b) ** 2).sum(-1).mean()
        loss = forget_term + opts["alpha"] * retain_term
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        tracker.add(
            step,
            loss=float(loss.detach()),
            forget=float(forget_term.detach()),
            retain=float(retain_term.detach()),
            # distances relative to c and to the activation norm: readable across models
            forget_dist_rel=math.sqrt(float(forget_term.detach())) / c,
            retain_dist_rel=math.sqrt(float(retain_term.detach())) / act_norm,
            cos_u=cos_u,
        )
    model.requires_grad_(True)
    return {
        **tracker.summary(),
        "activation_norm": act_norm,
        "steering_norm": c,
        "trained_parameters": sum(p.numel() for p in params),
    }


def train_lm(
    model: torch.nn.Module,
    tokenizer,
    train: Sequence[str],
    retain: Sequence[str],
    opts: Mapping[str, Any],
    device: torch.device,
    ascent: bool,
) -> dict[str, Any]:
    """Gradient ascent (``ascent``: -LM loss on ``train`` + retain_weight x LM loss on ``retain``)
    or plain fine-tuning (LM loss on ``train``), all parameters, in place."""
    model.train()
    model.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=opts["lr"], weight_decay=0.0)
    retain_weight = opts.get("retain_weight", 0.0) if ascent else 0.0
    if ascent and retain_weight > 0 and not retain:
        raise ValueError("gradient_ascent needs retain documents (or options.retain_weight: 0)")
    batches = _Batches(train, opts["batch_size"], opts["seed"])
    retain_batches = _Batches(retain, opts["batch_size"], opts["seed"] + 1) if retain_weight > 0 else None
    tracker = _Tracker(opts["steps"])
    name = "forget" if ascent else "train"
    for step in range(1, opts["steps"] + 1):
        ids, mask = encode(tokenizer, batches(), opts["max_len"])
        main = lm_loss(model, ids.to(device), mask.to(device))
        loss = -main if ascent else main
        terms = {name: float(main.detach())}
        if retain_batches is not None:
            r_ids, r_mask = encode(tokenizer, retain_batches(), opts["max_len"])
            retain_term = lm_loss(model, r_ids.to(device), r_mask.to(device))
            loss = loss + retain_weight * retain_term
            terms["retain"] = float(retain_term.detach())
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optim.step()
        tracker.add(step, loss=float(loss.detach()), **terms)
    model.eval()
    return tracker.summary()


TRAINERS: dict[str, Callable[..., dict[str, Any]]] = {
    "rmu": train_rmu,
    "gradient_ascent": lambda *a: train_lm(*a, ascent=True),
    "finetune": lambda *a: train_lm(*a, ascent=False),
}


# --------------------------------------------------------------------------- entry point


def make_organism(
    name: str,
    spec: Mapping[str, Any],
    base_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    gcide_cfg: Mapping[str, Any] | None,
    device: str = "auto",
    texts: tuple[Sequence[str], Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Apply ``spec['method']`` to the prepared model in ``base_dir``; write a model directory.

    The data are the GCIDE organism part's ``forget_categories`` / ``retain_categories``
    documents, ``options.files`` for ``finetune``, or ``texts = (forget, retain)`` when given
    (tests). ``out_dir`` is written through a temporary sibling directory renamed at the end and
    holds the float32 model, its tokenizer, the model card and ``organism.json``, the summary
    that is also returned.
    """
    t0 = time.time()
    method = spec.get("method")
    try:
        opts = resolve_options(method, spec.get("options"))
    except ValueError as exc:
        raise ValueError(f"models.{name}.{exc}") from None
    forget_cats, retain_cats = (
        list(spec.get("forget_categories", [])),
        list(spec.get("retain_categories", [])),
    )
    if texts is not None:
        forget, retain = list(texts[0]), list(texts[1])
    elif method == "finetune" and opts["files"]:
        if forget_cats:
            log.warning("%s: options.files given, forget_categories %s are not used", name, forget_cats)
        forget, retain = read_text_files(opts["files"]), []
    else:
        if gcide_cfg is None:
            raise ValueError(f"models.{name}: GCIDE settings are needed to read the organism data")
        if not forget_cats:
            raise ValueError(f"models.{name}.forget_categories is empty: nothing to forget or train on")
        forget, retain = organism_data(gcide_cfg, forget_cats, retain_cats)
    if method == "finetune":
        retain = []  # plain fine-tuning has no retain term
    if not forget:
        raise ValueError(f"models.{name}: the forget/train set is empty")
    log.info("%s: %s on %d forget/train and %d retain documents", name, method, len(forget), len(retain))

    card = read_card(base_dir)
    torch.manual_seed(opts["seed"])
    model, tokenizer = load_causal_lm(base_dir, device)
    dev = next(model.parameters()).device
    stats = TRAINERS[method](model, tokenizer, forget, retain, opts, dev)

    out = Path(out_dir)
    tmp = out.parent / f".{out.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.to("cpu").save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    summary = {
        "name": name,
        "base": card["name"],
        "method": method,
        "options": opts,
        "forget_categories": forget_cats,
        "retain_categories": retain_cats,
        "n_forget_docs": len(forget),
        "n_retain_docs": len(retain),
        "steps": opts["steps"],
        **stats,
        "device": str(dev),
        "seconds": round(time.time() - t0, 1),
    }
    (tmp / SUMMARY).write_text(json.dumps(summary, indent=2))
    # weights live in the directory itself, so the card records "." (as for out_dir after the rename)
    write_card(tmp, name, dict(spec), str(tmp))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    log.info("%s written to %s in %.0f s", name, out, summary["seconds"])
    return summary
