"""Stage 8: explain the selected latents with an LLM (method.md F14), optionally score the
explanations by detection (F15), with a per-request cache so no answer is ever asked twice.

The cache is a JSONL file, one record per answered request, keyed by
(record type, latent, prompt hash, explainer id). It is appended to as answers arrive, so a crash
keeps everything already answered, and a re-run after a config change asks only for the prompts
that changed. Keep it outside the rule's declared outputs (Snakemake deletes outputs before a
re-run); the rule's output is written from the returned table at the end.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mneme.explainer_prompts import (
    Example,
    PromptConfig,
    build_detection_prompts,
    build_explainer_prompt,
    choose_examples,
    detection_items,
    detection_metrics,
    parse_detection,
    parse_explanation,
    prompt_hash,
    ranked_predictions,
    yes_no_score,
)
from mneme.llm_backends import (
    KeywordsBackend,
    OpenAIBackend,
    VLLMServer,
    corpus_token_counts,
)
from mneme.schema import filled

log = logging.getLogger("mneme.interpret")

COLUMNS = [
    "latent",
    "explanation",
    "backend",
    "explainer",
    "prompt_hash",
    "raw_answer",
    "n_examples",
    "error",
    "cached",
]


def with_defaults(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The `interpret:` section with the schema's defaults filled in (config/schema.yaml)."""
    return filled("interpret", cfg)


# ---------------------------------------------------------------------------------------------
# cache


class JsonlCache:
    """Append-only JSONL store of answered requests, keyed by (type, latent, prompt hash, explainer).

    Malformed lines (a write cut short by a crash) are skipped; a later record for the same key
    wins.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.records: dict[tuple, dict] = {}
        self.skipped = 0
        if self.path.is_file():
            with self.path.open("r", encoding="utf-8") as fh:
                for line in fh:
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                        self.records[self.key(rec)] = rec
                    except (json.JSONDecodeError, KeyError, TypeError):
                        self.skipped += 1
            if self.skipped:
                log.warning("cache %s: skipped %d unreadable line(s)", self.path, self.skipped)

    @staticmethod
    def key(rec: Mapping) -> tuple:
        return (rec["type"], int(rec["latent"]), rec["prompt_hash"], rec["explainer"])

    def get(self, type_: str, latent: int, phash: str, explainer: str) -> dict | None:
        return self.records.get((type_, int(latent), phash, explainer))

    def put(self, rec: dict) -> None:
        rec = {**rec, "latent": int(rec["latent"]), "time": round(time.time(), 3)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+b") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() > 0:  # a crash may have left a partial last line: start a fresh one
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    fh.write(b"\n")
            fh.write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
            fh.flush()
        self.records[self.key(rec)] = rec

    def __len__(self) -> int:
        return len(self.records)


# ---------------------------------------------------------------------------------------------
# examples


def examples_by_latent(contexts: pd.DataFrame) -> dict[int, dict[str, list[Example]]]:
    """{latent: {"top": [...], "quantile": [...], "negative": [...], "max": float}} from contexts.parquet."""
    out: dict[int, dict[str, Any]] = {}
    if contexts.empty:
        return out
    df = contexts.sort_values(["latent", "kind", "quantile", "rank"], kind="stable")
    for (latent, kind), grp in df.groupby(["latent", "kind"], sort=False):
        rec = out.setdefault(int(latent), {"top": [], "quantile": [], "negative": [], "max": 0.0})
        exs = [Example.of(t, a) for t, a in zip(grp["token_ids"], grp["activations"])]
        rec.setdefault(str(kind), []).extend(exs)
        if kind == "top":
            col = grp["max_activation"] if "max_activation" in grp else [max(e.activations) for e in exs]
            rec["max"] = max(rec["max"], float(np.nanmax(np.asarray(col, dtype=float))) if len(exs) else 0.0)
    return out


def default_explainer_id(backend) -> str:
    return f"{getattr(backend, 'name', type(backend).__name__)}:{getattr(backend, 'model', '?')}"


# ---------------------------------------------------------------------------------------------
# main entry


def interpret_latents(
    contexts_df: pd.DataFrame,
    latents: Sequence[int],
    tokenizer,
    backend,
    cache_path: str | os.PathLike,
    prompt_cfg: PromptConfig | Mapping | None = None,
    explainer_id: str | None = None,
    score: bool = False,
    on_error: str = "raise",
) -> pd.DataFrame:
    """Explain ``latents`` from their top examples in ``contexts_df`` (contexts.parquet).

    ``backend`` is an LLM backend (``generate_many``, see llm_backends.py) or an extractive one
    (``extractive = True``, ``explain(examples, tokenizer, max_act)``). Answers come from the
    cache at ``cache_path`` when the same prompt was already answered by ``explainer_id``; only
    the others are requested. With ``score``, each explanation is also scored by detection on the
    latent's quantile (positive) and negative examples.

    Returns one row per latent that has top examples (in the order of ``latents``): latent,
    explanation, backend, explainer, prompt_hash, raw_answer, n_examples, error, cached, and
    with ``score`` detection_{balanced_accuracy, precision, recall, f1, n, n_unparsed}.
    Failed requests raise at the end (after all answers are cached) unless ``on_error="skip"``,
    which leaves the explanation empty and says why in ``error``.
    """
    cfg = PromptConfig.from_dict(prompt_cfg)
    explainer_id = explainer_id or default_explainer_id(backend)
    backend_name = getattr(backend, "name", type(backend).__name__)
    extractive = bool(getattr(backend, "extractive", False))
    cache = JsonlCache(cache_path)
    wanted = [int(x) for x in latents]
    exs = examples_by_latent(contexts_df[contexts_df["latent"].isin(wanted)])

    # 1. explanation prompts
    gen = cfg.generation()
    jobs: dict[int, dict[str, Any]] = {}
    for latent in wanted:
        rec = exs.get(latent)
        if rec is None or not rec["top"]:
            log.warning("latent %d has no top-activating examples: not explained", latent)
            continue
        shown, held_out = choose_examples(rec["top"], rec["quantile"], cfg)
        max_act = rec["max"] or None
        messages = build_explainer_prompt(shown, tokenizer, cfg, max_act)
        if extractive:
            phash = prompt_hash(messages, backend=backend_name, settings=backend.settings())
        else:
            phash = prompt_hash(messages, **gen)
        jobs[latent] = {"messages": messages, "hash": phash, "top": shown, "max": max_act}
        rec["held_out"] = held_out  # the quantile examples detection may judge

    rows: dict[int, dict[str, Any]] = {}
    errors: dict[int, str] = {}

    def store(latent: int, raw: str, cached: bool) -> None:
        job = jobs[latent]
        explanation = raw if extractive else parse_explanation(raw)
        if not cached:
            cache.put(
                {
                    "type": "explanation",
                    "latent": latent,
                    "prompt_hash": job["hash"],
                    "explainer": explainer_id,
                    "backend": backend_name,
                    "explanation": explanation,
                    "raw": raw,
                }
            )
        rows[latent] = {
            "latent": latent,
            "explanation": explanation,
            "backend": backend_name,
            "explainer": explainer_id,
            "prompt_hash": job["hash"],
            "raw_answer": raw,
            "n_examples": len(job["top"]),
            "error": None,
            "cached": cached,
        }

    todo = []
    for latent, job in jobs.items():
        hit = cache.get("explanation", latent, job["hash"], explainer_id)
        if hit is not None:
            store(latent, hit["raw"], cached=True)
        else:
            todo.append(latent)
    log.info("explanations: %d cached, %d to request (%s)", len(jobs) - len(todo), len(todo), explainer_id)

    if extractive:
        for latent in todo:
            store(latent, backend.explain(jobs[latent]["top"], tokenizer, jobs[latent]["max"]), cached=False)
    elif todo:
        prompts = [jobs[latent]["messages"] for latent in todo]
        done = 0
        for i, result in backend.generate_many(prompts, **gen):
            latent = todo[i]
            if isinstance(result, BaseException):
                errors[latent] = f"{type(result).__name__}: {result}"
                log.error("latent %d: explanation request failed: %s", latent, errors[latent])
            else:
                store(latent, result, cached=False)
            done += 1
            if done % 10 == 0 or done == len(todo):
                log.info("explained %d/%d latents", done, len(todo))

    # 2. detection scoring
    if score and extractive:
        log.warning("detection scoring needs an LLM backend; %s explanations are not scored", backend_name)
    elif score:
        _score_detection(rows, exs, tokenizer, backend, cache, cfg, explainer_id, errors)

    if errors and on_error == "skip":
        log.warning(
            "%d of %d latents have a failed request (interpret.on_error: skip): %s",
            len(errors),
            len(jobs),
            "no explanation was obtained at all" if not rows else "their explanation or score is missing",
        )
    if errors and on_error == "raise":
        sample = "; ".join(f"latent {k}: {v}" for k, v in list(errors.items())[:5])
        raise RuntimeError(
            f"{len(errors)} request(s) failed after retries (answers so far are cached in {cache_path}; "
            f"re-run to retry, or set interpret.on_error: skip): {sample}"
        )
    out = []
    for latent in wanted:
        if latent in rows:
            row = rows[latent]
            if latent in errors:
                row["error"] = errors[latent]
            out.append(row)
        elif latent in errors:
            out.append(
                {
                    "latent": latent,
                    "explanation": "",
                    "backend": backend_name,
                    "explainer": explainer_id,
                    "prompt_hash": jobs[latent]["hash"],
                    "raw_answer": None,
                    "n_examples": len(jobs[latent]["top"]),
                    "error": errors[latent],
                    "cached": False,
                }
            )
    columns = list(COLUMNS)
    if score and not extractive:
        columns += [f"detection_{m}" for m in DETECTION_METRICS]
        columns += ["control_balanced_accuracy", "control_explanation", "detection_margin", "beats_control"]
    return pd.DataFrame(out, columns=columns)


DETECTION_METRICS = ("balanced_accuracy", "precision", "recall", "f1", "n", "n_unparsed")


def control_explanations(explanations: Mapping[int, str]) -> dict[int, str]:
    """Each latent's control: the explanation of the next latent (in latent order, cyclically)
    whose explanation differs from its own. Judged on the latent's examples, it gives the
    detection score of an explanation that is fluent but not about this latent: the chance level
    that a real explanation has to beat. Latents with no differing explanation get none."""
    order = sorted(k for k, v in explanations.items() if v)
    out: dict[int, str] = {}
    for i, latent in enumerate(order):
        own = explanations[latent].strip().lower()
        for other in order[i + 1 :] + order[:i]:
            if explanations[other].strip().lower() != own:
                out[latent] = explanations[other]
                break
    return out


def _score_detection(rows, exs, tokenizer, backend, cache, cfg: PromptConfig, explainer_id, errors) -> None:
    """Detection scores (F15) of every explained latent, on held-out quantile examples and
    non-activating ones, for its own explanation and (``detection.control``) for its control."""
    det = cfg.detection
    gen = cfg.detection_generation()
    yes_no = det.judge == "yes_no"
    controls = control_explanations({k: r["explanation"] for k, r in rows.items()}) if det.control else {}
    requests: list[tuple[tuple[int, str], int, list, str]] = []  # (key, batch, messages, hash)
    plan: dict[tuple[int, str], list] = {}
    for latent, row in rows.items():
        rec = exs[latent]
        positives = rec.get("held_out", rec["quantile"])
        if not row["explanation"] or not (positives or rec["negative"]):
            continue
        items = detection_items(tokenizer, positives, rec["negative"], cfg, seed=det.seed + latent)
        judged = {"detection": row["explanation"]}
        if latent in controls:
            judged["control"] = controls[latent]
        bs = 1 if yes_no else max(1, det.batch_size)
        for kind, explanation in judged.items():
            batches = []
            for b, messages in enumerate(build_detection_prompts(explanation, items, cfg)):
                phash = prompt_hash(messages, **gen)
                labels = [it.label for it in items[b * bs : (b + 1) * bs]]
                batches.append({"hash": phash, "labels": labels, "pred": None})
                hit = cache.get("detection", latent, phash, explainer_id)
                if hit is not None:
                    batches[-1]["pred"] = (
                        hit["scores"] if yes_no else [_judgment(p) for p in hit["predictions"]]
                    )
                else:
                    requests.append(((latent, kind), b, messages, phash))
            plan[(latent, kind)] = batches
    log.info(
        "detection: %d prompts to request (%d cached)",
        len(requests),
        sum(map(len, plan.values())) - len(requests),
    )
    if requests:
        done = 0
        for i, result in backend.generate_many([r[2] for r in requests], **gen):
            key, b, _, phash = requests[i]
            batch = plan[key][b]
            done += 1
            if done % 100 == 0 or done == len(requests):
                log.info("detection: %d/%d prompts answered", done, len(requests))
            if isinstance(result, BaseException):
                errors.setdefault(key[0], f"detection: {type(result).__name__}: {result}")
                continue
            rec = {"type": "detection", "latent": key[0], "prompt_hash": phash, "explainer": explainer_id}
            if yes_no:  # the answer is the first token's alternatives; the judgment is ranked below
                batch["pred"] = [yes_no_score(result)]
                cache.put({**rec, "raw": result, "scores": batch["pred"]})
            else:
                batch["pred"] = parse_detection(result, len(batch["labels"]))
                cache.put(
                    {
                        **rec,
                        "raw": result,
                        "predictions": [None if p is None else int(p) for p in batch["pred"]],
                    }
                )
    for (latent, kind), batches in plan.items():
        labels, preds = [], []
        for batch in batches:
            if batch["pred"] is None:  # failed request
                continue
            labels += batch["labels"]
            preds += batch["pred"]
        if not labels:
            continue
        if yes_no:
            preds = ranked_predictions(preds, sum(labels))
        m = detection_metrics(labels, preds)
        if kind == "detection":
            for key in DETECTION_METRICS:
                rows[latent][f"detection_{key}"] = m[key]
        else:
            rows[latent]["control_balanced_accuracy"] = m["balanced_accuracy"]
            rows[latent]["control_explanation"] = controls[latent]
    for row in rows.values():
        own, ctl = row.get("detection_balanced_accuracy"), row.get("control_balanced_accuracy")
        if own is not None and ctl is not None:
            row["detection_margin"] = own - ctl
            row["beats_control"] = bool(own > ctl)


def _judgment(p: int | None) -> bool | None:
    return None if p is None else bool(p)


# ---------------------------------------------------------------------------------------------
# latent selection and the rule-level entry


def select_latents(
    attribution: pd.DataFrame,
    contexts: pd.DataFrame | None = None,
    top_k: int | None = 100,
    directions: Sequence[str] = ("amplified", "suppressed"),
) -> list[int]:
    """The ``top_k`` strongest latents of each direction (that have top examples in ``contexts``)."""
    df = attribution[attribution["direction"].isin(list(directions))]
    if contexts is not None:
        have = set(contexts.loc[contexts["kind"] == "top", "latent"].astype(int))
        df = df[df["latent"].astype(int).isin(have)]
    out: list[int] = []
    for d in directions:
        part = df[df["direction"] == d].sort_values(["strength", "latent"], ascending=[False, True])
        if top_k:
            part = part.head(int(top_k))
        out += part["latent"].astype(int).tolist()
    return out


def resolve_model_dir(model_dir: str | os.PathLike) -> str:
    """A prepared mneme model directory (with mneme_model.json) -> its weights directory."""
    from mneme.models import CARD, weights_path

    return weights_path(model_dir) if Path(model_dir, CARD).is_file() else str(model_dir)


class LazyBackend:
    """An LLM backend opened on first use: when every answer is in the cache, no vLLM server is
    started at all. ``name`` and ``extractive`` are known without opening; anything else opens
    the backend of :func:`open_backend` inside ``stack`` (closed with it)."""

    extractive = False

    def __init__(self, opener, name: str, stack: contextlib.ExitStack) -> None:
        self._opener, self.name, self._stack, self._backend = opener, name, stack, None

    @property
    def opened(self) -> bool:
        return self._backend is not None

    def generate_many(self, prompts, **kw):
        """Open the backend (the first time) and send ``prompts``; nothing is opened for none."""
        if not prompts:
            return iter(())
        return self.__getattr__("generate_many")(prompts, **kw)

    def __getattr__(self, attr: str):
        if attr.startswith("_"):
            raise AttributeError(attr)
        if self._backend is None:
            self._backend = self._stack.enter_context(self._opener())
        return getattr(self._backend, attr)


@contextlib.contextmanager
def open_backend(
    cfg: Mapping[str, Any],
    explainer_model_dir: str | os.PathLike | None = None,
    tokens_zarr: str | os.PathLike | None = None,
    server_log: str | os.PathLike | None = None,
    vocab_size: int | None = None,
) -> Iterator[Any]:
    """The backend named by ``cfg["backend"]`` (an `interpret:` section); a vLLM server started
    here is always stopped when the block ends."""
    cfg = with_defaults(cfg)
    kind = cfg["backend"]
    client_kw = {
        "concurrency": cfg["concurrency"],
        "max_retries": cfg["max_retries"],
        "timeout": cfg["request_timeout_s"],
    }
    if kind == "keywords":
        counts = corpus_token_counts(tokens_zarr, vocab_size) if tokens_zarr else None
        if counts is None:
            log.warning("keywords backend without corpus token counts: ranking by raw frequency")
        yield KeywordsBackend(
            counts, threshold=PromptConfig.from_dict(cfg["prompt"]).threshold, **cfg["keywords"]
        )
    elif kind == "openai":
        o = cfg["openai"]
        yield OpenAIBackend(o["base_url"], o["model"], api_key_env=o["api_key_env"], **client_kw)
    else:
        v = cfg["vllm"]
        if explainer_model_dir is None:
            raise ValueError("interpret.backend is vllm but no explainer model directory was given")
        server = VLLMServer(resolve_model_dir(explainer_model_dir), log_path=server_log, **v)
        with server:
            backend = OpenAIBackend(server.base_url, server.model, name="vllm", **client_kw)
            backend.server = server  # for logs and tests: pid, port, startup_seconds, log_path
            yield backend


FINGERPRINT_BYTES = 4 << 20  # read from each end of every weight file


def explainer_fingerprint(model_dir: str | os.PathLike) -> str:
    """A short hash of what determines a served model's answers: its prepared model card (the
    spec: source, checkpoint, seed, organism method, ...) and, for every weight file, its name,
    size and the first and last 4 MiB. A different checkpoint under the same config name gets a
    different fingerprint, at the cost of reading 8 MiB per file instead of the whole weights."""
    import hashlib

    h = hashlib.sha256()
    card = Path(model_dir, "mneme_model.json")
    if card.is_file():
        h.update(json.dumps(json.loads(card.read_text()).get("spec"), sort_keys=True).encode())
    weights = Path(resolve_model_dir(model_dir))
    files = (
        sorted(weights.glob("*.safetensors")) + sorted(weights.glob("*.bin")) + sorted(weights.glob("*.gguf"))
    )
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(FINGERPRINT_BYTES))
            if size > 2 * FINGERPRINT_BYTES:
                fh.seek(size - FINGERPRINT_BYTES)
                h.update(fh.read(FINGERPRINT_BYTES))
    return h.hexdigest()[:16]


def explainer_id_for(cfg: Mapping[str, Any], explainer_model_dir: str | os.PathLike | None = None) -> str:
    """The cache key of the explainer: ``interpret.explainer_id`` when set; for vLLM the model's
    name and :func:`explainer_fingerprint` of its weights (so changing the explainer's checkpoint,
    seed or source asks every question again); for an OpenAI-compatible endpoint the model name
    (the endpoint's weights cannot be seen from here: set explainer_id when they change)."""
    cfg = with_defaults(cfg)
    if cfg["explainer_id"]:
        return str(cfg["explainer_id"])
    kind = cfg["backend"]
    if kind == "vllm":
        name = cfg["vllm"]["model"] or (Path(explainer_model_dir).name if explainer_model_dir else "?")
        if explainer_model_dir is None:
            return f"vllm:{name}"
        return f"vllm:{name}@{explainer_fingerprint(explainer_model_dir)}"
    if kind == "openai":
        return f"openai:{cfg['openai']['model']}"
    return "keywords"


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``df`` as .jsonl (one record per line) or .parquet, via a temporary name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".parquet":
        df.to_parquet(tmp, index=False)
    else:
        df.to_json(tmp, orient="records", lines=True, force_ascii=False)
    os.replace(tmp, path)


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    path = Path(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if not path.read_bytes()[:4096].strip():  # no latent was selected
        return pd.DataFrame(columns=[*COLUMNS, "direction", "strength"])
    return pd.read_json(path, orient="records", lines=True, dtype=False)


def run_interpretation(
    cfg: Mapping[str, Any],
    contexts_path: str | os.PathLike,
    attribution_path: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    cache_path: str | os.PathLike,
    out_path: str | os.PathLike,
    explainer_model_dir: str | os.PathLike | None = None,
    tokens_zarr: str | os.PathLike | None = None,
    server_log: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """The `interpret` rule: select latents, explain them with the configured backend, write ``out_path``.

    ``cfg`` is the `interpret:` config section; ``tokenizer_dir`` the pair's prepared model (its
    tokenizer decodes the contexts); ``explainer_model_dir`` the model vLLM serves (backend vllm);
    ``tokens_zarr`` the corpus token store (backend keywords).
    """
    from mneme.models import load_tokenizer, load_tokenizer_from

    cfg = with_defaults(cfg)
    contexts = pd.read_parquet(contexts_path)
    attribution = pd.read_parquet(attribution_path)
    latents = select_latents(attribution, contexts, cfg["top_k"], cfg["directions"])
    log.info("interpreting %d latents with backend %s", len(latents), cfg["backend"])
    tok_dir = Path(tokenizer_dir)
    tokenizer = (
        load_tokenizer(tok_dir)
        if (tok_dir / "mneme_model.json").is_file()
        else load_tokenizer_from(str(tok_dir))
    )
    explainer_id = explainer_id_for(cfg, explainer_model_dir)
    if not latents:  # nothing to explain: no server to start
        log.warning("no %s latent with top examples: writing an empty table", "/".join(cfg["directions"]))
        df = pd.DataFrame(columns=COLUMNS)
    else:
        with contextlib.ExitStack() as stack:

            def opener():
                return open_backend(
                    cfg, explainer_model_dir, tokens_zarr, server_log, vocab_size=len(tokenizer)
                )

            if cfg["backend"] == "keywords":  # extractive and cheap: open it now
                backend = stack.enter_context(opener())
            else:
                backend = LazyBackend(opener, cfg["backend"], stack)
            df = interpret_latents(
                contexts,
                latents,
                tokenizer,
                backend,
                cache_path,
                cfg["prompt"],
                explainer_id,
                score=bool(cfg["score"]),
                on_error=cfg["on_error"],
            )
            if isinstance(backend, LazyBackend) and not backend.opened:
                log.info("every answer was cached: no %s backend was started", cfg["backend"])
    attr = attribution[["latent", "direction", "strength"]]
    df = df.merge(attr, on="latent", how="left")
    write_table(df, out_path)
    return df
