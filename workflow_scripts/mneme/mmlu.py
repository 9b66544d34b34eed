"""MMLU (Hendrycks et al. 2021) as a per-category benchmark: each subject mapped to a category.

Items come from the hub dataset ``cais/mmlu`` (``datasets.load_dataset("cais/mmlu", "all",
split=...)``) or, offline, from a local parquet / jsonl / csv file or a directory of them with
the same columns: ``question``, ``subject``, ``choices`` (4 strings) and ``answer`` (0-3; the
letters A-D and columns ``A``..``D`` instead of ``choices`` are accepted too).

Scoring is the standard zero-shot (or k-shot, from the dev split) MMLU prompt of
lm-evaluation-harness::

    The following are multiple choice questions (with answers) about {subject}.

    {question}
    A. {choice 0}
    B. {choice 1}
    C. {choice 2}
    D. {choice 3}
    Answer:

and the prediction is the letter (``" A"`` .. ``" D"``) with the highest log-probability as the
continuation. When every letter is a single token, one forward pass per question gives all four
(the next-token log-probabilities after ``Answer:``); otherwise each letter is scored as a
continuation (:func:`mneme.benchmark.continuation_logprobs`, four sequences per question).
"""

from __future__ import annotations

import ast
import inspect
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mneme import category_file
from mneme.benchmark import _stable_int, encode_pair

log = logging.getLogger("mneme.mmlu")

TASK = "mmlu"
LETTERS = ("A", "B", "C", "D")
HUB_ID = "cais/mmlu"
HUB_NAME = "all"
DEFAULT_CATEGORIES = Path(__file__).resolve().parents[2] / "config" / "categories" / "mmlu.yaml"
HEADER = "The following are multiple choice questions (with answers) about {subject}.\n\n"
ITEM_COLUMNS = ["item_id", "subject", "category", "question", "choices", "answer"]
RESULT_COLUMNS = ["item_id", "category", "task", "score", "answer", "predicted", "subject", "choice_loglik"]
FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "json", ".csv": "csv"}


# --------------------------------------------------------------------------- subject map


def load_subject_map(path: str | os.PathLike = DEFAULT_CATEGORIES) -> dict[str, str]:
    """``{subject: category}`` from a category YAML (``categories: name: {description, subjects}``).

    Categories without ``subjects`` (say GCIDE ``tags`` only, in a combined file) are ignored; a
    subject listed under two categories is an error that names both (:mod:`mneme.category_file`).
    """
    return category_file.load(path, "mmlu").subject_to_category()


# --------------------------------------------------------------------------- reading


def _parse_choices(value: object, where: str) -> list[str]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                raise ValueError(f"{where}: cannot read choices {value!r} as a list") from None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or len(value) != len(LETTERS):
        raise ValueError(f"{where}: expected {len(LETTERS)} choices, got {value!r}")
    return [str(v) for v in value]


def _parse_answer(value: object, where: str) -> int:
    if isinstance(value, str):
        v = value.strip()
        if v.upper() in LETTERS:
            return LETTERS.index(v.upper())
        value = v
    try:
        answer = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: answer {value!r} is neither 0-3 nor a letter A-D") from None
    if not 0 <= answer < len(LETTERS):
        raise ValueError(f"{where}: answer {answer} is out of range 0-3")
    return answer


def normalise(df: pd.DataFrame, where: str = "MMLU data") -> pd.DataFrame:
    """Columns ``subject``, ``question``, ``choices`` (list of 4 str), ``answer`` (int 0-3)."""
    df = df.copy()
    if "choices" not in df.columns and set(LETTERS) <= set(df.columns):
        df["choices"] = df[list(LETTERS)].astype(str).values.tolist()
    missing = [c for c in ("question", "subject", "choices", "answer") if c not in df.columns]
    if missing:
        raise ValueError(
            f"{where}: missing column(s) {missing}; expected question, subject, choices (a list of 4) "
            f"and answer (0-3), got {list(df.columns)}"
        )
    has_split = "split" in df.columns
    rows = []
    for i, r in enumerate(df.to_dict("records")):
        at = f"{where}, row {i}"
        row = {
            "subject": str(r["subject"]).strip(),
            "question": str(r["question"]),
            "choices": _parse_choices(r["choices"], at),
            "answer": _parse_answer(r["answer"], at),
        }
        if has_split:
            row["split"] = str(r["split"])
        rows.append(row)
    columns = ["subject", "question", "choices", "answer"] + (["split"] if has_split else [])
    return pd.DataFrame(rows, columns=columns)


def _read_file(path: str) -> pd.DataFrame:
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt == "parquet":
        return pd.read_parquet(path)
    if fmt in ("jsonl", "json"):
        return pd.read_json(path, lines=fmt == "jsonl")
    if fmt == "csv":
        return pd.read_csv(path)
    raise ValueError(f"{path}: unknown MMLU file format; expected one of {sorted(FORMATS)}")


def _split_files(directory: str, split: str) -> list[str]:
    """Files of ``split`` in a directory: ``{split}.*`` / ``{split}-*`` (the cais/mmlu layout).

    A snapshot of the hub repository has the ``all`` configuration in ``all/`` next to one
    directory per subject; only ``all/`` is read then, so no question is counted twice.
    """
    root = Path(directory)
    if (root / HUB_NAME).is_dir():
        root = root / HUB_NAME
    files = [
        str(p)
        for p in sorted(root.iterdir())
        if p.is_file()
        and p.suffix.lower() in FORMATS
        and (p.stem == split or p.name.startswith((f"{split}-", f"{split}_", f"{split}.")))
    ]
    return files


def read_split(
    path: str | os.PathLike | None = None,
    split: str = "test",
    dataset: str = HUB_ID,
    name: str = HUB_NAME,
    strict: bool = False,
) -> pd.DataFrame:
    """One split of MMLU, normalised (see :func:`normalise`), in file order.

    ``path`` (a file or a directory) wins over the hub. A single file holds one split, unless it
    has a ``split`` column, which is then filtered on; with ``strict`` (the dev split of k-shot
    prompts, which must not be the scored questions) a file without that column is an error.
    """
    if path is None:
        import datasets

        log.info("loading %s (%s) split %r from the hub", dataset, name, split)
        ds = datasets.load_dataset(dataset, name, split=split)
        return normalise(ds.to_pandas(), f"{dataset}:{name}:{split}")
    path = str(path)
    if os.path.isdir(path):
        files = _split_files(path, split)
        if not files:
            raise ValueError(
                f"{path}: no {split!r} file (expected {split}.parquet / {split}-*.parquet, .jsonl or .csv)"
            )
        frames = [normalise(_read_file(f), f) for f in files]
        return pd.concat(frames, ignore_index=True).drop(columns=["split"], errors="ignore")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: MMLU file not found")
    df = normalise(_read_file(path), path)
    if "split" in df.columns:
        df = df[df["split"] == split].drop(columns=["split"]).reset_index(drop=True)
        if df.empty:
            raise ValueError(f"{path}: no row with split {split!r}")
    elif strict:
        raise ValueError(
            f"{path}: a single file without a `split` column has no {split!r} split; give a directory "
            f"with {split}.* files next to the scored split, or add a split column"
        )
    return df


# --------------------------------------------------------------------------- items


def build_items(
    data: pd.DataFrame,
    subject_map: Mapping[str, str],
    split: str = "test",
    subjects: Sequence[str] | None = None,
    n_per_subject: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Items of the subjects asked for, each with its category; deterministic for a seed.

    ``item_id`` is ``{subject}/{split}/{i}`` with ``i`` the question's position within its subject
    in file order, so two models scored on the same data get the same ids. ``n_per_subject``
    picks that many questions per subject by a seeded hash of their ids (None = all). Subjects
    not in ``subject_map`` are an error when asked for by name, else dropped with a warning.
    """
    if n_per_subject is not None and n_per_subject < 1:
        raise ValueError(f"n_per_subject must be >= 1 or None, got {n_per_subject}")
    data = data.copy()
    data["item_id"] = [
        f"{s}/{split}/{i}" for s, i in zip(data["subject"], data.groupby("subject").cumcount())
    ]
    present = list(dict.fromkeys(data["subject"]))
    if subjects is not None:
        wanted = list(dict.fromkeys(subjects))
        absent = [s for s in wanted if s not in present]
        if absent:
            raise ValueError(f"subjects {absent} have no question in the data; present: {sorted(present)}")
        unmapped = [s for s in wanted if s not in subject_map]
        if unmapped:
            raise ValueError(f"subjects {unmapped} are not mapped to a category by the category file")
    else:
        wanted = present
        unmapped = [s for s in wanted if s not in subject_map]
        if unmapped:
            log.warning("skipping subjects with no category: %s", ", ".join(unmapped))
        wanted = [s for s in wanted if s in subject_map]
    data = data[data["subject"].isin(wanted)]
    if n_per_subject is not None:
        key = data["item_id"].map(lambda i: _stable_int(seed, i))
        data = data.assign(_key=key).sort_values(["_key", "item_id"]).groupby("subject").head(n_per_subject)
        data = data.drop(columns="_key").sort_index()
    data = data.assign(category=data["subject"].map(subject_map))
    return data[ITEM_COLUMNS].reset_index(drop=True)


def format_question(question: str, choices: Sequence[str]) -> str:
    body = "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, choices))
    return f"{question.strip()}{body}\nAnswer:"


def prompt(subject: str, question: str, choices: Sequence[str], shots: Sequence[dict] = ()) -> str:
    """The MMLU prompt of lm-evaluation-harness, ending in ``Answer:`` (the letter follows with a space)."""
    text = HEADER.format(subject=subject.replace("_", " "))
    for shot in shots:
        text += f"{format_question(shot['question'], shot['choices'])} {LETTERS[int(shot['answer'])]}\n\n"
    return text + format_question(question, choices)


def few_shot_examples(
    dev: pd.DataFrame | None, subjects: Sequence[str], k_shot: int
) -> dict[str, list[dict]]:
    """The first ``k_shot`` dev questions of each subject (the harness's first-n sampler)."""
    if k_shot <= 0:
        return {s: [] for s in subjects}
    if dev is None:
        raise ValueError(f"k_shot={k_shot} needs the dev split")
    out = {}
    for subject in subjects:
        shots = dev[dev["subject"] == subject].head(k_shot).to_dict("records")
        if len(shots) < k_shot:
            raise ValueError(
                f"subject {subject!r} has {len(shots)} dev questions, fewer than k_shot={k_shot}"
            )
        out[subject] = shots
    return out


# --------------------------------------------------------------------------- scoring


def letter_token_ids(tokenizer) -> list[int] | None:
    """Token ids of ``" A"`` .. ``" D"`` when each is a single token, else None."""
    ids = [tokenizer(f" {letter}", add_special_tokens=False)["input_ids"] for letter in LETTERS]
    if all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == len(LETTERS):
        return [i[0] for i in ids]
    return None


def _keeps_logits(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def letter_logprobs(
    model,
    tokenizer,
    prompts: Sequence[str],
    letter_ids: Sequence[int],
    batch_size: int = 8,
    max_len: int = 2048,
) -> np.ndarray:
    """``[n_prompts, 4]`` log-probabilities of the single-token letters right after each prompt.

    Each prompt is encoded exactly as :func:`mneme.benchmark.encode_pair` encodes the context of
    the continuation ``" A"`` (same special tokens, left truncation to ``max_len - 1`` tokens), so
    the values equal :func:`~mneme.benchmark.continuation_logprobs` of each letter. One forward
    pass per prompt, in right-padded batches grouped by length; only the last position of each
    row is projected onto the vocabulary when the model supports ``logits_to_keep``.
    """
    import torch

    encoded = []
    for p in prompts:
        ids, cut = encode_pair(tokenizer, p, f" {LETTERS[0]}", max_len)
        if len(ids) - cut != 1:
            raise ValueError(f"the letter {LETTERS[0]!r} is not a single token after the prompt")
        encoded.append(ids[:cut])
    pad = next(t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if t is not None)
    device = next(model.parameters()).device
    keep = _keeps_logits(model)
    target = torch.tensor(list(letter_ids), device=device)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    out = np.zeros((len(encoded), len(letter_ids)), dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
                mask[row, : len(encoded[i])] = 1
            last = torch.tensor([len(encoded[i]) - 1 for i in idx])
            kwargs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
            if keep:
                positions = torch.unique(last)  # sorted; logits only where some row ends
                logits = model(**kwargs, logits_to_keep=positions.to(device)).logits
                col = torch.searchsorted(positions, last)
            else:
                logits, col = model(**kwargs).logits, last
            rows = logits[torch.arange(len(idx), device=logits.device), col.to(logits.device)].float()
            logp = torch.log_softmax(rows, dim=-1)[:, target.to(rows.device)]
            out[idx] = logp.cpu().numpy().astype(np.float64)
    return out


def score_loaded(
    model,
    tokenizer,
    items: pd.DataFrame,
    shots: Mapping[str, Sequence[dict]] | None = None,
    batch_size: int = 8,
    max_len: int = 2048,
    single_forward: bool | None = None,
) -> pd.DataFrame:
    """Item-level MMLU results of a loaded model: one row per item (``RESULT_COLUMNS``).

    ``score`` is 1.0 for a right answer, else 0.0; ``choice_loglik`` the four letters'
    log-probabilities. ``single_forward`` None = one forward per question when every letter is one
    token; False forces the per-letter continuation scoring (same numbers, four sequences).
    """
    from mneme.benchmark import continuation_logprobs

    records = items.to_dict("records")
    shots = shots or {}
    prompts = [
        prompt(r["subject"], r["question"], r["choices"], shots.get(r["subject"], ())) for r in records
    ]
    letter_ids = letter_token_ids(tokenizer)
    if single_forward and letter_ids is None:
        raise ValueError("single_forward=True needs every answer letter to be a single token")
    if single_forward is None:
        single_forward = letter_ids is not None
    n_long = sum(len(tokenizer(p)["input_ids"]) >= max_len for p in prompts) if prompts else 0
    if n_long:
        log.warning(
            "%d of %d prompts are longer than max_len=%d and lose their start", n_long, len(prompts), max_len
        )
    if not prompts:
        lps = np.zeros((0, len(LETTERS)))
    elif single_forward:
        assert letter_ids is not None
        lps = letter_logprobs(model, tokenizer, prompts, letter_ids, batch_size, max_len)
    else:
        log.info("answer letters are not single tokens: scoring each letter as a continuation")
        pairs = [(p, f" {letter}") for p in prompts for letter in LETTERS]
        flat = continuation_logprobs(model, tokenizer, pairs, batch_size, max_len)
        lps = np.array([float(lp.sum()) for lp in flat]).reshape(len(prompts), len(LETTERS))
    rows = []
    for r, lp in zip(records, lps):
        predicted = int(np.argmax(lp))
        rows.append(
            {
                "item_id": r["item_id"],
                "category": r["category"],
                "task": TASK,
                "score": float(predicted == int(r["answer"])),
                "answer": int(r["answer"]),
                "predicted": predicted,
                "subject": r["subject"],
                "choice_loglik": [float(x) for x in lp],
            }
        )
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def load_items(options: Mapping) -> tuple[pd.DataFrame, dict[str, list[dict]]]:
    """The scored items and the few-shot examples per subject from ``options`` (the config's
    ``benchmark`` section): the same for every model, so scores are comparable item by item."""
    m = options["mmlu"]
    subject_map = load_subject_map(m["categories"])
    data = read_split(m["path"], m["split"], m["dataset"], m["name"])
    items = build_items(data, subject_map, m["split"], m["subjects"], m["n_per_subject"], options["seed"])
    log.info(
        "%d MMLU items in %d subjects, %d categories",
        len(items),
        items["subject"].nunique(),
        items["category"].nunique(),
    )
    dev = read_split(m["path"], "dev", m["dataset"], m["name"], strict=True) if m["k_shot"] > 0 else None
    shots = few_shot_examples(dev, list(dict.fromkeys(items["subject"])), m["k_shot"])
    return items, shots


def run(model_dir: str | os.PathLike, options: Mapping, device: str = "auto") -> pd.DataFrame:
    """Items from ``options`` (the config's ``benchmark`` section) and a prepared model's results."""
    from mneme.models import load_causal_lm

    items, shots = load_items(options)
    model, tokenizer = load_causal_lm(model_dir, device)
    return score_loaded(
        model, tokenizer, items, shots, batch_size=options["batch_size"], max_len=options["mmlu"]["max_len"]
    )
