"""Reversal by retraining (method.md stage 11 and section 4.4).

The claim under test: if the crosscoder found *why* a side effect happened, then retraining the
fine-tuned model M_f on the corpus contexts that most activate the latents the fine-tune
*suppressed* and that map to a side-effect category ``c`` should partially undo the side effect on
``c``, more than retraining on a random corpus sample of the same token count (the control), and
without bringing back the forget target (WMDP in the paper) or harming the other categories.

Steps for one pair and one category ``c`` (:func:`run_reversal`):

1. :func:`select_latents` - the latents of the wanted direction(s) mapped to ``c``;
2. :func:`gather_contexts` - the union of their top-activating corpus contexts, round-robin by rank
   across latents, cut at a token budget; :func:`random_contexts` - the control, as many contexts
   (all contexts have the same length, so as many tokens), seeded by ``c``;
3. :func:`retrain` - causal-LM fine-tuning of M_f (LoRA, merged, or full) on each set;
4. score both retrained models with the caller's ``score_fn`` and compute the recovery ratio
   (:func:`recovery_ratio`), the forget-target rebound and the utility change on the other categories.

**Signed leaning.** ``attribution.parquet``'s ``strength`` is *not* signed by direction: in ``ratio``
mode it is ``-log max(ratio_r, ratio_eps)`` where the ratio is ``other model / probe's own model``, so
its meaning flips with the probe (``ft`` probe: positive = amplified-leaning; ``base`` probe: positive
= suppressed-leaning). :func:`leaning` turns it into one signed axis, negative = suppressed-leaning
(base-leaning) and positive = amplified-leaning, which is what the ``ranked`` pool sorts by. In
``simple`` mode the leaning is ``-log ratio_activation`` (``nu_a = beta_b / beta_f``). A ``leaning``
column in the attribution table, when present, is used as is.

No Snakemake here: the rule script reads the tables and passes a scorer (the benchmark).
"""

from __future__ import annotations

import logging
import math
import os
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import zarr

from mneme.attribution import RATIO_FLOOR
from mneme.category_file import NONE_LABEL
from mneme.contracts import NO_CATEGORY
from mneme.models import load_causal_lm, pick_device
from mneme.organism import _Batches, lm_loss
from mneme.schema import filled

log = logging.getLogger("mneme.reversal")

POOLS = ("attributed", "ranked")
MAPPINGS = ("categories", "provenance")
LEANING_DIRECTIONS = ("suppressed", "amplified")
METHODS = ("full", "lora")
# |score_base - score_ft| below this: the category did not move, there is nothing to recover.
RECOVERY_EPS = 1e-9

# Keys every per-category record of :func:`run_reversal` has (None where not applicable).
RECORD_KEYS = (
    "category",
    "status",
    "reason",
    "n_latents",
    "latents",
    "n_contexts",
    "n_tokens",
    "score_base",
    "score_ft",
    "score_targeted",
    "score_control",
    "recovery_targeted",
    "recovery_control",
    "target_rebound_targeted",
    "target_rebound_control",
    "utility_change_targeted",
    "utility_change_control",
    "train_targeted",
    "train_control",
)

ScoreFn = Callable[[torch.nn.Module, Any], Mapping[str, float]]


# --------------------------------------------------------------------------- options


def resolve_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The reverse stage's options (the `reverse:` section without ``categories``, which the rule
    script resolves) with the schema's defaults filled in and checked, before any expensive work.

    The default sizes (config/schema.yaml) make one retraining of SmolLM2-135M take a few minutes
    on 2 CPU cores: 32768 tokens = 256 contexts of 128 tokens, one epoch of batch 8 = 32 steps.
    """
    options = dict(options or {})
    if isinstance(options.get("directions"), str):
        options["directions"] = [options["directions"]]
    opts = filled("reverse", options)
    opts.pop("categories")
    return opts


# --------------------------------------------------------------------------- which latents


def leaning(attribution: pd.DataFrame) -> pd.Series:
    """Signed change score per row: negative = suppressed-leaning, positive = amplified-leaning.

    See the module docstring: ``strength`` alone is signed by the probe, not by the direction, so a
    ranking on it would mix the most suppressed with the most amplified latents. NaN for latents
    without a score (dead ones, own beta <= 0).
    """
    if "leaning" in attribution:
        return attribution["leaning"].astype(float)
    strength = attribution["strength"].astype(float)
    mode = attribution["mode"].astype(str) if "mode" in attribution else pd.Series("ratio", attribution.index)
    probe = attribution["probe"].astype(str) if "probe" in attribution else pd.Series("ft", attribution.index)
    ratio_mode = strength.where(probe == "ft", -strength)
    if "ratio_activation" in attribution:
        nu_a = attribution["ratio_activation"].astype(float).clip(RATIO_FLOOR, 1 / RATIO_FLOOR)
        simple_mode = -np.log(nu_a)
    else:
        simple_mode = pd.Series(np.nan, attribution.index)
    return ratio_mode.where(mode != "simple", simple_mode)


def _share_argmax(category_mass: pd.DataFrame) -> pd.Series:
    """latent -> the category with the largest share of its activation mass (ties by name)."""
    if category_mass.empty:
        return pd.Series(dtype=object)
    g = category_mass[["latent", "category", "share"]].copy()
    g["share"] = g["share"].astype(float).fillna(0.0)
    g = g.sort_values(["latent", "share", "category"], ascending=[True, False, True])
    top = g.drop_duplicates("latent", keep="first")
    return pd.Series(top["category"].astype(str).to_numpy(), index=top["latent"].astype(int).to_numpy())


def _category_map(
    categories: pd.DataFrame | None,
    category_mass: pd.DataFrame | None,
    mapping: str,
    general_category: str,
) -> tuple[pd.Series, pd.Series]:
    """``(latent -> category, latent -> share of the latent's mass on that category)``."""
    if mapping not in MAPPINGS:
        raise ValueError(f"mapping {mapping!r} is not one of {list(MAPPINGS)}")
    mass = (
        category_mass if category_mass is not None else pd.DataFrame(columns=["latent", "category", "share"])
    )
    share_of = mass.set_index(["latent", "category"])["share"].astype(float) if len(mass) else None
    if mapping == "categories":
        if categories is None or categories.empty:
            return pd.Series(dtype=object), pd.Series(dtype=float)
        c = categories.dropna(subset=["category"])
        c = c[c["category"].astype(str) != NONE_LABEL].drop_duplicates("latent")
        table = pd.Series(c["category"].astype(str).to_numpy(), index=c["latent"].astype(int).to_numpy())
    else:
        if category_mass is None:
            raise ValueError("mapping 'provenance' needs category_mass.parquet")
        # the general (untagged) bulk and tokens outside any document say nothing about a domain
        keep = ~mass["category"].astype(str).isin([general_category, NO_CATEGORY])
        table = _share_argmax(mass[keep])
    share = pd.Series(
        [
            float(share_of.get((j, cat), np.nan)) if share_of is not None else np.nan
            for j, cat in table.items()
        ],
        index=table.index,
        dtype=float,
    )
    return table, share


def select_latents(
    attribution: pd.DataFrame,
    categories: pd.DataFrame | None,
    category_mass: pd.DataFrame | None,
    category: str,
    directions: Sequence[str] = ("suppressed",),
    pool: str = "attributed",
    mapping: str = "categories",
    n_latents: int | None = 20,
    general_category: str = "general",
    min_share: float = 0.0,
) -> pd.DataFrame:
    """The latents whose contexts are retrained on for ``category``, strongest first.

    ``pool="attributed"``: latents that :mod:`mneme.attribution` labelled with one of
    ``directions`` (the paper's protocol). ``pool="ranked"``: per direction, the ``n_latents`` live
    latents leaning furthest that way (lowest :func:`leaning` for ``suppressed``, highest for
    ``amplified``, and only those on the right side of 0), whatever the attribution thresholds.
    The ranked pool exists because a small organism may have no latent that passes the strict
    thresholds as suppressed, which would leave the protocol with nothing to train on.

    ``mapping="categories"``: the final ``category`` of categories.parquet (explained latents only;
    ``none`` never maps). ``mapping="provenance"``: the category with the largest activation mass
    in category_mass.parquet, the general category and context-less tokens excluded, which exists
    for every latent that fired; ``min_share`` then drops latents whose mass on it is a sliver.

    ``n_latents`` caps each direction in both pools (``None``: no cap). Returns columns
    ``latent, direction, attributed_direction, strength, leaning, category, share, reason``; empty
    when nothing qualifies (the caller reports it, it is a finding, not an error).
    """
    bad = [d for d in directions if d not in LEANING_DIRECTIONS]
    if bad or not directions:
        raise ValueError(
            f"directions {list(directions)} must be a non-empty subset of {list(LEANING_DIRECTIONS)}"
        )
    if pool not in POOLS:
        raise ValueError(f"pool {pool!r} is not one of {list(POOLS)}")
    table, share = _category_map(categories, category_mass, mapping, general_category)
    a = attribution.copy()
    a["latent"] = a["latent"].astype(int)
    a["leaning"] = leaning(a).to_numpy()
    a["attributed_direction"] = a["direction"].astype(str)
    a["category"] = a["latent"].map(table)
    a["share"] = a["latent"].map(share)
    mapped = a["category"].astype(object) == category
    if mapping == "provenance" and min_share > 0:
        mapped &= a["share"].fillna(0.0) >= min_share
    live = (a["attributed_direction"] != "dead") & a["leaning"].notna()
    source = "categories.parquet" if mapping == "categories" else "provenance argmax"
    columns = [
        "latent",
        "direction",
        "attributed_direction",
        "strength",
        "leaning",
        "category",
        "share",
        "reason",
    ]
    parts = []
    for d in directions:
        sign = -1.0 if d == "suppressed" else 1.0  # sign * leaning > 0: leans the wanted way
        if pool == "attributed":
            sub = a[mapped & (a["attributed_direction"] == d)]
        else:
            sub = a[mapped & live & (sign * a["leaning"] > 0)]
        sub = sub.assign(_key=sign * sub["leaning"].fillna(0.0))
        sub = sub.sort_values(["_key", "latent"], ascending=[False, True], kind="stable")
        if n_latents is not None:
            sub = sub.head(n_latents)
        sub = sub.assign(direction=d)
        if pool == "attributed":
            why = [
                f"attributed {d} (strength {s:.3g}); {category} by {source}"
                for s in sub["strength"].astype(float)
            ]
        else:
            why = [
                f"rank {i + 1} of the live latents mapped to {category} by {source} by {d} leaning "
                f"({lv:.3g}); attributed {ad}"
                for i, (lv, ad) in enumerate(zip(sub["leaning"], sub["attributed_direction"]))
            ]
        parts.append(sub.assign(reason=why)[columns])
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    return out.drop_duplicates("latent", keep="first").reset_index(drop=True)


# --------------------------------------------------------------------------- which contexts


def _open_tokens(tokens: zarr.Group | str | os.PathLike) -> zarr.Group:
    if isinstance(tokens, zarr.Group):
        return tokens
    return zarr.open_group(str(tokens), mode="r")


def gather_contexts(
    topk: pd.DataFrame,
    latents: Sequence[int],
    tokens: zarr.Group | str | os.PathLike,
    token_budget: int,
    skip_first: int = 0,
) -> np.ndarray:
    """Sorted corpus context indices: the union of the ``latents``' top-activating contexts.

    Taken round-robin by rank: rank ``skip_first`` of every latent (in the order given, strongest
    first), then the next rank of every latent, ..., skipping contexts already taken, until
    ``token_budget // context_len`` contexts are taken or the lists run out. Round-robin keeps one
    latent with a long list from eating the whole budget, so the set covers all chosen latents.
    Only ``kind == "top"`` rows with a real context (``>= 0``) and a positive activation count.
    """
    group = _open_tokens(tokens)
    n_total, ctx_len = group["input_ids"].shape
    max_contexts = token_budget // ctx_len
    if max_contexts < 1:
        raise ValueError(f"token_budget {token_budget} is below one context ({ctx_len} tokens)")
    order = [int(j) for j in latents]
    t = topk[
        (topk["kind"].astype(str) == "top")
        & topk["latent"].isin(order)
        & (topk["context"] >= 0)
        & (topk["activation"] > 0)
        & (topk["rank"] >= skip_first)
    ]
    per_latent = {
        int(j): g.sort_values("rank")["context"].astype(int).tolist()
        for j, g in t.groupby("latent", sort=False)
    }
    lists = [per_latent.get(j, []) for j in order]
    depth = max((len(x) for x in lists), default=0)
    taken: list[int] = []
    seen: set[int] = set()
    for r in range(depth):
        for lst in lists:
            if r < len(lst) and lst[r] not in seen:
                seen.add(lst[r])
                taken.append(lst[r])
                if len(taken) >= max_contexts:
                    break
        if len(taken) >= max_contexts:
            break
    out = np.array(sorted(taken), dtype=np.int64)
    if len(out) and out[-1] >= n_total:
        raise ValueError(f"topk names context {out[-1]} but the token grid has {n_total} contexts")
    return out


def random_contexts(
    n_contexts_total: int, n: int, seed: int, exclude: Sequence[int] | np.ndarray | None = None
) -> np.ndarray:
    """``n`` distinct context indices drawn uniformly from ``range(n_contexts_total)`` minus
    ``exclude``, sorted. Contexts all have the same length, so the same number of contexts is the
    same number of tokens: the control of the targeted set."""
    pool = np.arange(n_contexts_total, dtype=np.int64)
    if exclude is not None and len(exclude):
        pool = np.setdiff1d(pool, np.asarray(exclude, dtype=np.int64))
    if n > len(pool):
        raise ValueError(f"cannot draw {n} control contexts from {len(pool)} available (after exclusions)")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool, size=n, replace=False))


def read_token_rows(
    tokens: zarr.Group | str | os.PathLike, contexts: Sequence[int] | np.ndarray
) -> np.ndarray:
    """Token rows ``input_ids[contexts]`` (int64, in the order of ``contexts``).

    Read once with the indices sorted (an orthogonal selection touches each storage chunk once)."""
    idx = np.asarray(contexts, dtype=np.int64)
    ids = _open_tokens(tokens)["input_ids"]
    if len(idx) == 0:
        return np.zeros((0, ids.shape[1]), dtype=np.int64)
    order = np.argsort(idx, kind="stable")
    rows = np.asarray(ids.get_orthogonal_selection((idx[order], slice(None))), dtype=np.int64)
    out = np.empty_like(rows)
    out[order] = rows
    return out


def category_seed(seed: int, category: str) -> int:
    """A seed per category that does not depend on Python's hash randomisation."""
    return (int(seed) * 1_000_003 + zlib.crc32(category.encode())) % (2**32)


# --------------------------------------------------------------------------- retraining


def retrain(
    model_dir: str | os.PathLike,
    token_rows: np.ndarray | torch.Tensor,
    opts: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Causal-LM fine-tuning of the model in ``model_dir`` on ``token_rows``; ``(model, summary)``.

    ``token_rows`` are equal-length corpus contexts that already start with BOS, so there is no
    padding and the attention mask is all ones. Batches come from seeded permutations of the rows
    (:class:`mneme.organism._Batches`) and LoRA's random init is seeded too, so one seed gives the
    same weights on one device and thread count. ``lora``: a peft adapter on
    ``lora_target_modules`` (dropout 0, so training is deterministic), merged into the weights
    before returning, so the result is a plain transformers model with the base parameter names
    that any scorer can use. AdamW, ``weight_decay`` (default 0: retraining should move towards the
    data, not shrink weights), gradients clipped to ``max_grad_norm``. The model comes back in eval
    mode. ``summary``: method, steps, rows, tokens (processed), loss_first (step 1, before any
    update), loss_last (last step), trainable_parameters, seconds.
    """
    opts = resolve_options(opts)
    t0 = time.time()
    rows = torch.as_tensor(np.asarray(token_rows), dtype=torch.long)
    if rows.ndim != 2 or rows.shape[0] == 0 or rows.shape[1] < 2:
        raise ValueError(
            f"token_rows must be a non-empty [n_contexts, context_len >= 2] array, got {tuple(rows.shape)}"
        )
    model, _ = load_causal_lm(model_dir, str(device))
    dev = next(model.parameters()).device
    torch.manual_seed(opts["seed"])
    if opts["method"] == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=opts["lora_r"],
            lora_alpha=opts["lora_alpha"],
            lora_dropout=0.0,
            target_modules=opts["lora_target_modules"],
            bias="none",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)
    else:
        model.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    optim = torch.optim.AdamW(params, lr=opts["lr"], weight_decay=opts["weight_decay"])
    n, ctx_len = rows.shape
    bs = min(opts["batch_size"], n)
    steps = opts["max_steps"] or opts["epochs"] * math.ceil(n / bs)
    every = opts["log_every"] or max(1, steps // 10)
    batches = _Batches(list(range(n)), bs, opts["seed"])
    mask = torch.ones((bs, ctx_len), dtype=torch.long, device=dev)
    log.info(
        "retrain (%s): %d contexts x %d tokens, %d steps of %d, lr %g, %d trainable parameters",
        opts["method"],
        n,
        ctx_len,
        steps,
        bs,
        opts["lr"],
        n_trainable,
    )
    model.train()
    losses: list[float] = []
    for step in range(1, steps + 1):
        ids = rows[batches()].to(dev)
        loss = lm_loss(model, ids, mask)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        if opts["max_grad_norm"] > 0:
            torch.nn.utils.clip_grad_norm_(params, opts["max_grad_norm"])
        optim.step()
        losses.append(float(loss.detach()))
        if step % every == 0 or step == steps or step == 1:
            log.info("retrain step %d/%d: loss %.4g", step, steps, losses[-1])
    if opts["method"] == "lora":
        model = model.merge_and_unload()
    model.eval()
    model.requires_grad_(False)
    summary = {
        "method": opts["method"],
        "steps": steps,
        "rows": n,
        "tokens": steps * bs * ctx_len,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "trainable_parameters": n_trainable,
        "seconds": round(time.time() - t0, 2),
    }
    return model, summary


# --------------------------------------------------------------------------- scoring


def recovery_ratio(
    base: float | None, ft: float | None, rt: float | None, eps: float = RECOVERY_EPS
) -> float | None:
    """``R = (rt - ft) / (base - ft)``: the fraction of the fine-tune's change that retraining undid.

    Orientation-free: any score works (accuracy, mean log-likelihood; higher better or not), since
    both differences are taken in the same units. With a higher-is-better score and a side effect
    that degraded the category (``ft < base``): ``R = 1`` full recovery, ``0 < R < 1`` partial (the
    paper's claim), ``R <= 0`` no recovery or further damage, ``R > 1`` overshoot past the base
    model. If the fine-tune *improved* the category (``ft > base``), ``R > 0`` still means "moved
    back towards the base model", i.e. the improvement was lost. ``None`` when the category did not
    move (``|base - ft| < eps``; the ratio would be noise over ~0) or a score is missing / NaN.
    """
    vals = (base, ft, rt)
    if any(v is None or not math.isfinite(float(v)) for v in vals):
        return None
    denom = float(base) - float(ft)
    if abs(denom) < eps:
        return None
    return (float(rt) - float(ft)) / denom


def _changes(
    scores: Mapping[str, float], ref: Mapping[str, float], names: Sequence[str]
) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for c in names:
        a, b = scores.get(c), ref.get(c)
        out[c] = None if a is None or b is None else float(a) - float(b)
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


# --------------------------------------------------------------------------- orchestration


def run_reversal(
    model_dir: str | os.PathLike,
    tokens: zarr.Group | str | os.PathLike,
    attribution: pd.DataFrame,
    categories: pd.DataFrame | None,
    category_mass: pd.DataFrame | None,
    topk: pd.DataFrame,
    reverse_categories: Sequence[str],
    score_fn: ScoreFn,
    scores_base: Mapping[str, float],
    scores_ft: Mapping[str, float],
    target_categories: Sequence[str] = (),
    options: Mapping[str, Any] | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Reversal by retraining for one pair (method.md section 4.4); a JSON-able result.

    ``model_dir`` is the fine-tuned model M_f; for every ``c`` in ``reverse_categories`` it is
    retrained twice from scratch: on the targeted contexts of ``c`` and on a random control of the
    same size (seeded by ``c``, so each category gets its own control). ``score_fn(model,
    tokenizer)`` scores a retrained model per category (higher or lower better, as long as base and
    ft scores use the same scorer); ``scores_base`` / ``scores_ft`` are the already measured scores
    of M_b and M_f. ``target_categories`` are the forget targets whose rebound is reported
    (``target_rebound_*``: retrained minus ft per target). ``utility_change_*`` is the mean change vs
    ft over every scored category that is neither ``c`` nor a target.

    Returns ``{"config", "scores_base", "scores_ft", "categories": [record per c]}``; a record has
    ``status`` ``ok``, ``no_latents`` or ``no_contexts`` (with ``reason``; nothing is retrained).
    """
    opts = resolve_options(options)
    reverse_categories = list(reverse_categories)
    target_categories = list(target_categories)
    missing = [c for c in reverse_categories if c not in scores_base or c not in scores_ft]
    if missing:
        raise ValueError(f"reversal categories {missing} have no base/ft score; scored: {sorted(scores_ft)}")
    group = _open_tokens(tokens)
    n_total, ctx_len = (int(x) for x in group["input_ids"].shape)
    from mneme.models import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    records = []
    for c in reverse_categories:
        t_c = time.time()
        rec: dict[str, Any] = dict.fromkeys(RECORD_KEYS)
        rec |= {
            "category": c,
            "status": "ok",
            "score_base": float(scores_base[c]),
            "score_ft": float(scores_ft[c]),
        }
        chosen = select_latents(
            attribution,
            categories,
            category_mass,
            c,
            directions=opts["directions"],
            pool=opts["pool"],
            mapping=opts["mapping"],
            n_latents=opts["n_latents"],
            general_category=opts["general_category"],
            min_share=opts["min_share"],
        )
        rec["n_latents"] = len(chosen)
        rec["latents"] = [
            {
                "latent": int(r.latent),
                "direction": r.direction,
                "attributed_direction": r.attributed_direction,
                "leaning": None if pd.isna(r.leaning) else float(r.leaning),
                "reason": r.reason,
            }
            for r in chosen.itertuples()
        ]
        if chosen.empty:
            rec.update(
                status="no_latents",
                reason=(
                    f"no {'/'.join(opts['directions'])} latent mapped to {c} "
                    f"(pool {opts['pool']}, mapping {opts['mapping']})"
                ),
                n_contexts=0,
                n_tokens=0,
            )
            log.info("%s: %s", c, rec["reason"])
            records.append(rec)
            continue
        targeted = gather_contexts(
            topk, chosen["latent"].tolist(), group, opts["token_budget"], opts["skip_first"]
        )
        if len(targeted) == 0:
            rec.update(
                status="no_contexts",
                reason=f"the {len(chosen)} selected latents have no top-activating contexts",
                n_contexts=0,
                n_tokens=0,
            )
            records.append(rec)
            continue
        control = random_contexts(
            n_total,
            len(targeted),
            category_seed(opts["seed"], c),
            exclude=targeted if opts["control_exclude_targeted"] else None,
        )
        rec.update(
            n_contexts=len(targeted),
            n_tokens=len(targeted) * ctx_len,
            contexts_targeted=targeted.tolist(),
            contexts_control=control.tolist(),
        )
        log.info("%s: %d latents, %d contexts (%d tokens)", c, len(chosen), len(targeted), rec["n_tokens"])
        for arm, ctx in (("targeted", targeted), ("control", control)):
            model, summary = retrain(model_dir, read_token_rows(group, ctx), opts, device)
            scores = {k: float(v) for k, v in score_fn(model, tokenizer).items()}
            del model
            if c not in scores:
                raise KeyError(f"score_fn returned no score for category {c!r}; got {sorted(scores)}")
            others = [k for k in scores if k != c and k not in target_categories and k in scores_ft]
            rec[f"scores_{arm}"] = scores
            rec[f"score_{arm}"] = scores[c]
            rec[f"recovery_{arm}"] = recovery_ratio(scores_base[c], scores_ft[c], scores[c])
            rec[f"target_rebound_{arm}"] = _changes(scores, scores_ft, target_categories)
            rec[f"utility_change_{arm}"] = _mean(list(_changes(scores, scores_ft, others).values()))
            rec[f"train_{arm}"] = summary
            log.info(
                "%s %s: score %.4g (base %.4g, ft %.4g), recovery %s",
                c,
                arm,
                scores[c],
                scores_base[c],
                scores_ft[c],
                rec[f"recovery_{arm}"],
            )
        rec["utility_categories"] = others
        rec["seconds"] = round(time.time() - t_c, 1)
        records.append(rec)
    return {
        "config": {
            **opts,
            "model_dir": str(model_dir),
            "reverse_categories": reverse_categories,
            "target_categories": target_categories,
            "n_contexts_total": n_total,
            "context_len": ctx_len,
            "device": str(pick_device(str(device))),
        },
        "scores_base": {k: float(v) for k, v in scores_base.items()},
        "scores_ft": {k: float(v) for k, v in scores_ft.items()},
        "categories": records,
    }
