"""Prompts for explaining crosscoder latents, scoring the explanations and classifying them.

Three prompt kinds, all returned as OpenAI-style chat messages (``[{"role", "content"}, ...]``):

- Explainer (method.md F14, in the style of delphi's DefaultExplainer): examples of one latent
  (its top-activating contexts and, by default, contexts spread over its activation quantiles),
  each shown as text with the activating tokens marked ``<<...>>`` and followed by a list of up to
  10 activating tokens with a 0-10 activation level. Three worked examples (few-shot turns, on
  subjects outside every category set we ship, so that a weak explainer copying one does not
  invent a category signal) show the one-line answer ``[EXPLANATION]: ...``; decoding stops at the
  end of that line and penalises repetition, and :func:`parse_explanation` keeps the complete,
  non-repeated sentences of the answer.
- Detection (F15): given an explanation, the explainer judges held-out examples (quantile
  examples are positives, non-activating ones negatives) as activating or not;
  :func:`detection_metrics` turns the judgments into balanced accuracy, precision, recall, F1.
  Two judges: ``list`` asks for a bracketed 0/1 list over a batch of excerpts (delphi's format;
  needs a model that follows it), ``yes_no`` asks about one excerpt at a time and reads the
  log-probabilities of "Yes" and "No" as the first answer token (delphi's ``log_prob`` idea), so a
  small model that cannot write the list still gives a usable ranking (:func:`yes_no_score`).
- Category classification (stage 9): one label of the category set or ``none``.

Everything here is pure Python (no model, no network) so that it can be tested exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from mneme.category_file import NONE_LABEL
from mneme.schema import filled

EXPLANATION_MARKER = "[EXPLANATION]:"

DEFAULT_SYSTEM_PROMPT = (
    "You are studying a neural network feature: a direction inside a language model that becomes "
    "active on some tokens of a text. You will see text excerpts on which the feature is strongly "
    "active. In each excerpt the tokens where the feature is active are marked between << and >>. "
    'Under each excerpt, a line "Activations:" lists these tokens with their activation level '
    "from 0 (inactive) to 10 (the strongest activation of the feature).\n\n"
    "Work out what the marked tokens and their surroundings have in common: a topic or domain, "
    "a kind of word, a grammatical role, a formatting pattern, or something that the following "
    "text is likely to be about. Prefer a specific description to a generic one, and mention "
    "the subject area when the excerpts share one.\n\n"
    "Answer with one line of the form\n"
    f"{EXPLANATION_MARKER} <a concise description of the feature, one sentence at most>"
)

DEFAULT_DETECTION_SYSTEM_PROMPT = (
    "You check descriptions of neural network features. A feature is a direction inside a "
    "language model that becomes active on certain texts. You will get the description of one "
    "feature and a numbered list of text excerpts. For each excerpt decide whether the feature "
    "is active somewhere in it, judging only from the description.\n\n"
    "Answer with a single list of 0s and 1s in square brackets, one number per excerpt in the "
    "order given (1 = active, 0 = not active), for example [1, 0, 0, 1]. Write nothing else."
)

DEFAULT_YES_NO_SYSTEM_PROMPT = (
    "You check descriptions of neural network features. A feature is a direction inside a "
    "language model that becomes active on certain texts. You will get the description of one "
    "feature and one text excerpt. Judging only from the description, is the feature active "
    "somewhere in the excerpt? Answer Yes or No."
)

DEFAULT_CLASSIFY_SYSTEM_PROMPT = (
    "You sort descriptions of neural network features into subject categories. You will get a "
    "list of categories, each with a definition, and the description of one feature. Choose the "
    "single category that the described feature is about. If it fits none of them, or the "
    f"description is not about a subject at all, choose {NONE_LABEL}.\n\n"
    "Answer with the category name only, exactly as written in the list."
)


# ---------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class DetectionConfig:
    """``interpret.prompt.detection``: defaults and ranges in config/schema.yaml."""

    n_positive: int
    n_negative: int
    batch_size: int
    max_tokens: int
    stop: tuple[str, ...]
    seed: int
    control: bool
    judge: str  # list | yes_no
    top_logprobs: int  # yes_no: first-token alternatives read
    system_prompt: str | None  # None: the judge's default system prompt


@dataclass(frozen=True)
class PromptConfig:
    """``interpret.prompt``: what shapes the explainer prompt and request (all of it enters the
    prompt hash). Defaults, ranges and what each key does: config/schema.yaml."""

    n_examples: int
    examples: str  # top | quantiles | mix
    few_shot: bool
    threshold: float
    max_listed_tokens: int
    show_activations: bool
    system_prompt: str | None  # None: DEFAULT_SYSTEM_PROMPT
    max_tokens: int
    temperature: float
    stop: tuple[str, ...]
    min_tokens: int  # vLLM only
    repetition_penalty: float  # vLLM only
    frequency_penalty: float
    detection: DetectionConfig

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | PromptConfig | None) -> PromptConfig:
        """Build from a config mapping, the schema's defaults filled in; a wrong key or value is
        an error naming it."""
        if isinstance(cfg, PromptConfig):
            return cfg
        full = filled("interpret.prompt", cfg)
        det = full.pop("detection")
        full["stop"], det["stop"] = tuple(full["stop"]), tuple(det["stop"])
        return cls(**full, detection=DetectionConfig(**det))

    def to_dict(self) -> dict:
        """The settings as config values (tuples become lists, as YAML writes them)."""
        return json.loads(json.dumps(asdict(self)))

    def generation(self) -> dict[str, Any]:
        """Decoding settings of an explanation request (the backend's keywords; in the hash)."""
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "stop": list(self.stop),
            "min_tokens": self.min_tokens,
            "repetition_penalty": self.repetition_penalty,
            "frequency_penalty": self.frequency_penalty,
        }

    def detection_generation(self) -> dict[str, Any]:
        """Decoding settings of a detection request (greedy, no penalty): a 0/1 list, or for the
        yes_no judge one token whose alternatives are read."""
        if self.detection.judge == "yes_no":
            return {"temperature": 0.0, "top_logprobs": self.detection.top_logprobs}
        return {
            "max_tokens": self.detection.max_tokens,
            "temperature": 0.0,
            "stop": list(self.detection.stop),
        }


def prompt_hash(messages: Sequence[Mapping[str, str]], **params: Any) -> str:
    """Stable short hash of a request: the messages plus generation parameters."""
    blob = json.dumps({"messages": list(messages), "params": params}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# token rendering


def decode_tokens(tokenizer, token_ids: Sequence[int]) -> list[str]:
    """One string per token (special tokens become empty strings, so positions stay aligned)."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    return ["" if int(t) in special else tokenizer.decode([int(t)]) for t in token_ids]


def _clean(text: str) -> str:
    """Keep each example on one line: newlines and tabs are shown escaped."""
    return text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")


def highlight(str_tokens: Sequence[str], activations: Sequence[float], threshold: float = 0.3) -> str:
    """Text with every run of consecutive tokens above ``threshold * max`` wrapped in ``<<...>>``."""
    if len(str_tokens) != len(activations):
        raise ValueError(f"{len(str_tokens)} tokens but {len(activations)} activations")
    top = max(activations, default=0.0)
    if top <= 0:
        return _clean("".join(str_tokens))
    cut = threshold * top
    out: list[str] = []
    inside = False
    for tok, act in zip(str_tokens, activations):
        hot = act > cut
        if hot and not inside:
            out.append("<<")
        elif not hot and inside:
            out.append(">>")
        inside = hot
        out.append(_clean(tok))
    if inside:
        out.append(">>")
    return "".join(out)


def scale_activation(a: float, max_latent_activation: float) -> int:
    """delphi's 0-10 level: clamp(ceil(10 * a / max_latent_activation), 0, 10)."""
    if max_latent_activation <= 0 or not math.isfinite(a):
        return 0
    return int(min(10, max(0, math.ceil(10.0 * a / max_latent_activation))))


def activation_list(
    str_tokens: Sequence[str],
    activations: Sequence[float],
    max_latent_activation: float,
    threshold: float = 0.3,
    max_listed: int = 10,
) -> str:
    """``("tok" : 7), ("tok2" : 3)``: the highlighted tokens in text order, at most ``max_listed``."""
    top = max(activations, default=0.0)
    if top <= 0:
        return ""
    cut = threshold * top
    items = [
        f'("{_clean(tok)}" : {scale_activation(act, max_latent_activation)})'
        for tok, act in zip(str_tokens, activations)
        if act > cut
    ]
    return ", ".join(items[:max_listed])


# ---------------------------------------------------------------------------------------------
# explainer prompt


@dataclass(frozen=True)
class Example:
    """One window of tokens with this latent's activation on each token."""

    token_ids: tuple[int, ...]
    activations: tuple[float, ...]

    @classmethod
    def of(cls, token_ids: Sequence[int], activations: Sequence[float]) -> Example:
        return cls(tuple(int(t) for t in token_ids), tuple(float(a) for a in activations))


def render_example(
    index: int, str_tokens: Sequence[str], activations: Sequence[float], max_act: float, cfg: PromptConfig
) -> str:
    text = f"Example {index}: {highlight(str_tokens, activations, cfg.threshold)}"
    if cfg.show_activations:
        listed = activation_list(str_tokens, activations, max_act, cfg.threshold, cfg.max_listed_tokens)
        text += f"\nActivations: {listed}"
    return text


# Worked examples shown before the latent's own (few-shot turns). Each is a made-up latent: its
# examples as (tokens, activations) and the one-line answer. Subjects (cooking, verbs of motion,
# colours) are outside every shipped category set on purpose.
FEW_SHOT: tuple[tuple[tuple[tuple[tuple[str, ...], tuple[float, ...]], ...], str], ...] = (
    (
        (
            (
                ("Stir", " the", " onions", " until", " golden", ",", " then", " add", " the", " garlic"),
                (0, 0, 6, 0, 0, 0, 0, 2, 0, 7),
            ),
            (
                ("She", " baked", " a", " loaf", " of", " rye", " bread", " for", " the", " market"),
                (0, 5, 0, 3, 0, 4, 8, 0, 0, 0),
            ),
        ),
        "Food and cooking: ingredients, dishes and what is done to them in a kitchen.",
    ),
    (
        (
            (
                ("The", " fox", " ran", " across", " the", " field", " and", " jumped", " the", " fence"),
                (0, 0, 9, 1, 0, 0, 0, 7, 0, 0),
            ),
            (("After", " lunch", " they", " walked", " to", " the", " harbour"), (0, 0, 0, 8, 2, 0, 0)),
        ),
        "Verbs of movement in the past tense, such as ran, jumped and walked.",
    ),
    (
        (
            (("a", " dress", " of", " deep", " crimson", " silk"), (0, 0, 0, 3, 9, 0)),
            (("The", " sky", " turned", " pale", " blue", " at", " dawn"), (0, 0, 0, 4, 8, 0, 0)),
        ),
        "Names of colours, often after a word for their shade (deep crimson, pale blue).",
    ),
)


def render_examples(
    examples: Sequence[tuple[Sequence[str], Sequence[float]]], max_act: float, cfg: PromptConfig
) -> str:
    """The user turn: examples (string tokens, activations) numbered from 1, blank-line separated."""
    return "\n\n".join(render_example(i, t, a, max_act, cfg) for i, (t, a) in enumerate(examples, start=1))


def few_shot_turns(cfg: PromptConfig) -> list[dict[str, str]]:
    """The worked examples as alternating user / assistant turns, rendered like a real latent."""
    turns: list[dict[str, str]] = []
    for examples, answer in FEW_SHOT:
        top = max(max(a) for _, a in examples)
        turns.append({"role": "user", "content": render_examples(examples, top, cfg)})
        turns.append({"role": "assistant", "content": f"{EXPLANATION_MARKER} {answer}"})
    return turns


def build_explainer_prompt(
    examples: Sequence[Example],
    tokenizer,
    cfg: PromptConfig | Mapping | None = None,
    max_latent_activation: float | None = None,
) -> list[dict[str, str]]:
    """Chat messages asking for an explanation of one latent from its examples.

    ``examples`` are shown in the given order (see :func:`choose_examples`), at most
    ``cfg.n_examples``; ``max_latent_activation`` (the 10 of the 0-10 levels) defaults to the
    largest activation among them. With ``cfg.few_shot`` the worked examples come first.
    """
    cfg = PromptConfig.from_dict(cfg)
    shown = list(examples)[: cfg.n_examples]
    if not shown:
        raise ValueError("no examples to explain")
    if max_latent_activation is None:
        max_latent_activation = max(max(e.activations, default=0.0) for e in shown)
    user = render_examples(
        [(decode_tokens(tokenizer, e.token_ids), e.activations) for e in shown], max_latent_activation, cfg
    )
    return [
        {"role": "system", "content": cfg.system_prompt or DEFAULT_SYSTEM_PROMPT},
        *(few_shot_turns(cfg) if cfg.few_shot else []),
        {"role": "user", "content": user},
    ]


def spread(n_items: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n_items)``, first and last included."""
    if k <= 0 or n_items <= 0:
        return []
    if k >= n_items:
        return list(range(n_items))
    return sorted({int(round(i * (n_items - 1) / max(k - 1, 1))) for i in range(k)})


def choose_examples(
    top: Sequence[Example], quantile: Sequence[Example], cfg: PromptConfig | Mapping | None = None
) -> tuple[list[Example], list[Example]]:
    """(examples shown to the explainer, quantile examples held out for detection).

    ``quantile`` is ordered from the weakest activation quantile to the strongest. ``top``: the
    first ``n_examples`` top examples. ``quantiles``: ``n_examples`` spread evenly over the
    quantiles (strongest first), topped up from ``top`` when there are too few. ``mix``: half
    (rounded up) top examples, the rest spread over the quantiles. Examples shown are never
    judged in detection, so the score measures the explanation, not the explainer's memory.
    """
    cfg = PromptConfig.from_dict(cfg)
    n = cfg.n_examples
    n_top = {"top": n, "quantiles": 0, "mix": (n + 1) // 2}[cfg.examples]
    picked = spread(len(quantile), n - n_top)
    shown_q = [quantile[i] for i in reversed(picked)]
    n_top = n - len(shown_q)  # too few quantile examples: more top ones
    held = [q for i, q in enumerate(quantile) if i not in set(picked)]
    return list(top[:n_top]) + shown_q, held


_MARKER_RE = re.compile(r"\[\s*explanation\s*\]\s*:?", re.IGNORECASE)
_ECHO_RE = re.compile(r"^\s*(example\s*\d+\s*:|activations\s*:)", re.IGNORECASE)
_SENTENCE_RE = re.compile(r"[^.!?]+(?:[.!?]+|$)")
_LIST_NUMBER_RE = re.compile(r"^\s*(?:[-*•]|\d+[.):])\s+")  # "1. ", "2) ", "- " at a line start
MAX_SENTENCES = 2  # an explanation is one or two sentences


def _collapse_phrase_loops(text: str, min_repeats: int = 3, max_words: int = 8) -> str:
    """Keep one copy of a phrase of 1-``max_words`` words repeated back to back ``min_repeats``
    times or more ("names of the the the moths" -> "names of the moths")."""
    words = text.split()
    low = [w.lower() for w in words]
    for n in range(1, max_words + 1):
        i = 0
        while i + n * min_repeats <= len(words):
            unit, r = low[i : i + n], 1
            while low[i + r * n : i + (r + 1) * n] == unit:
                r += 1
            if r >= min_repeats:
                del words[i + n : i + r * n], low[i + n : i + r * n]
            i += 1
    return " ".join(words)


def clean_explanation(text: str) -> str:
    """The complete, distinct sentences of an explanation, at most :data:`MAX_SENTENCES`.

    A sentence that repeats an earlier one ends the explanation (the explainer is looping); a
    trailing sentence with no end punctuation is dropped when a complete one precedes it (the
    answer hit its length limit); a phrase looping inside a sentence is kept once.
    """
    text = re.sub(r"\s+", " ", text).strip()
    sentences = [m.group(0).strip() for m in _SENTENCE_RE.finditer(text) if m.group(0).strip()]
    kept: list[str] = []
    seen: set[str] = set()
    for sent in sentences:
        key = re.sub(r"[^a-z0-9]+", " ", sent.lower()).strip()
        if key in seen:
            break
        seen.add(key)
        kept.append(sent)
    if len(kept) > 1 and kept[-1][-1] not in ".!?":
        kept.pop()
    kept = kept[:MAX_SENTENCES]
    return _collapse_phrase_loops(" ".join(kept))


def parse_explanation(answer: str | None) -> str:
    """The explanation in an explainer answer.

    Takes the text after the last ``[EXPLANATION]:`` marker (any case, spaces allowed), up to the
    first blank line. Without a marker, takes the answer's lines that do not echo the prompt's
    format ("Example 3: ...", "Activations: ..."), from the last paragraph that has any. Then
    strips quotes and markdown emphasis and keeps the complete, distinct sentences
    (:func:`clean_explanation`). Never raises; an empty or missing answer gives ``""``.
    """
    if not answer:
        return ""
    text = answer.replace("\r\n", "\n")
    markers = list(_MARKER_RE.finditer(text))
    if markers:
        tail = text[markers[-1].end() :].strip()
        tail = re.split(r"\n\s*\n", tail, maxsplit=1)[0]  # trailing junk after a blank line
    else:
        paragraphs = [
            [_LIST_NUMBER_RE.sub("", ln) for ln in par.split("\n") if ln.strip() and not _ECHO_RE.match(ln)]
            for par in re.split(r"\n\s*\n", text)
        ]
        paragraphs = [[ln for ln in par if ln.strip()] for par in paragraphs]
        paragraphs = [p for p in paragraphs if p]
        tail = " ".join(paragraphs[-1]) if paragraphs else ""
    tail = re.sub(r"\s+", " ", tail).strip()
    tail = tail.strip("*_`").strip()
    if len(tail) >= 2 and tail[0] == tail[-1] and tail[0] in "\"'":
        tail = tail[1:-1].strip()
    return clean_explanation(tail)


# ---------------------------------------------------------------------------------------------
# detection scoring (F15)


@dataclass(frozen=True)
class DetectionItem:
    text: str
    label: bool  # True: an activating (quantile) example, False: a non-activating one


def detection_items(
    tokenizer,
    positives: Sequence[Example],
    negatives: Sequence[Example],
    cfg: PromptConfig | Mapping | None = None,
    seed: int | None = None,
) -> list[DetectionItem]:
    """Up to n_positive + n_negative plain-text examples (no highlighting), deterministically mixed."""
    cfg = PromptConfig.from_dict(cfg)
    det = cfg.detection
    items = [
        DetectionItem(_clean("".join(decode_tokens(tokenizer, e.token_ids))), True)
        for e in positives[: det.n_positive]
    ]
    items += [
        DetectionItem(_clean("".join(decode_tokens(tokenizer, e.token_ids))), False)
        for e in negatives[: det.n_negative]
    ]
    random.Random(det.seed if seed is None else seed).shuffle(items)
    return items


def build_detection_prompts(
    explanation: str, items: Sequence[DetectionItem], cfg: PromptConfig | Mapping | None = None
) -> list[list[dict[str, str]]]:
    """The judging prompts of ``items``: one per batch of ``detection.batch_size`` items for the
    ``list`` judge, one per item for the ``yes_no`` judge. The explanation comes before the
    excerpts, so that every prompt of one explanation shares a prefix (vLLM caches it)."""
    cfg = PromptConfig.from_dict(cfg)
    if cfg.detection.judge == "yes_no":
        system = cfg.detection.system_prompt or DEFAULT_YES_NO_SYSTEM_PROMPT
        return [
            [
                {"role": "system", "content": system},
                {
                    "role": "user",
                    "content": f"Feature description: {explanation}\n\nExcerpt: {item.text}\n\n"
                    "Is the feature active in this excerpt? Answer Yes or No.",
                },
            ]
            for item in items
        ]
    bs = max(1, cfg.detection.batch_size)
    system = cfg.detection.system_prompt or DEFAULT_DETECTION_SYSTEM_PROMPT
    prompts = []
    for start in range(0, len(items), bs):
        batch = items[start : start + bs]
        lines = [f"Feature description: {explanation}", "", "Excerpts:"]
        lines += [f"{i}. {item.text}" for i, item in enumerate(batch, start=1)]
        lines += ["", f"Give a list of {len(batch)} numbers (0 or 1)."]
        prompts.append([{"role": "system", "content": system}, {"role": "user", "content": "\n".join(lines)}])
    return prompts


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def yes_no_score(top_logprobs: Mapping[str, float]) -> float | None:
    """log P(Yes) - log P(No) of a first answer token, from its most likely alternatives.

    Spellings are pooled (" Yes", "yes", "YES."). An answer missing from the alternatives has at
    most the smallest listed log-probability, which bounds the score; neither present is None
    (unreadable). Positive means the judge leans to "active".
    """
    yes, no = [], []
    for token, lp in top_logprobs.items():
        word = token.strip().strip(".,:!\"'").lower()
        if word == "yes":
            yes.append(lp)
        elif word == "no":
            no.append(lp)
    if not yes and not no:
        return None
    floor = min(top_logprobs.values())
    return (_logsumexp(yes) if yes else floor) - (_logsumexp(no) if no else floor)


def ranked_predictions(scores: Sequence[float | None], n_positive: int) -> list[float | None]:
    """Judgments from yes_no scores: the ``n_positive`` highest-scoring items are "active".

    The share of activating excerpts is fixed by design (``n_positive`` of the items), so the
    judge only has to rank them; balanced accuracy then measures that ranking, and a judge that
    leans to "Yes" on everything is not mistaken for a good one. Items tied at the cut share the
    places left (each judged active with that probability: the expectation over tie orders, so a
    judge that scores everything alike is exactly at chance). An unreadable item (None) stays
    None and counts as wrong.
    """
    ranked = sorted((s for s in scores if s is not None), reverse=True)
    if n_positive <= 0 or not ranked:
        return [None if s is None else 0.0 for s in scores]
    if n_positive >= len(ranked):
        return [None if s is None else 1.0 for s in scores]
    cut = ranked[n_positive - 1]
    above = sum(s > cut for s in ranked)
    share = (n_positive - above) / sum(s == cut for s in ranked)
    return [None if s is None else 1.0 if s > cut else share if s == cut else 0.0 for s in scores]


_LIST_RE = re.compile(r"\[([^\[\]]*)\]")


def parse_detection(answer: str | None, n: int) -> list[bool | None]:
    """Judgments for ``n`` excerpts from an answer like ``[1, 0, 1]``.

    Uses the last bracketed list of exactly ``n`` 0/1 values; failing that, the last bracketed
    list of 0/1 values (padded with None or cut to ``n``); failing that, the first ``n`` standalone
    0/1 digits. Unreadable positions are None.
    """
    if not answer:
        return [None] * n
    if answer.count("[") > answer.count("]"):  # generation stopped at the closing bracket
        answer += "]"
    candidates = []
    for m in _LIST_RE.finditer(answer):
        vals = re.findall(r"[^,\s]+", m.group(1))
        if vals and all(v.strip("'\"") in ("0", "1") for v in vals):
            candidates.append([v.strip("'\"") == "1" for v in vals])
    exact = [c for c in candidates if len(c) == n]
    if exact:
        vals = exact[-1]
    elif candidates:
        vals = candidates[-1]
    else:
        vals = [d == "1" for d in re.findall(r"(?<![\d.])[01](?![\d.])", answer)]
    out: list[bool | None] = list(vals[:n])
    return out + [None] * (n - len(out))


def detection_metrics(labels: Sequence[bool], predictions: Sequence[bool | float | None]) -> dict[str, float]:
    """delphi's classification metrics; an unreadable judgment (None) counts as a wrong one.

    balanced_accuracy = (TP/P + TN/N)/2, precision = TP/(TP+FP), recall = TP/P, F1 = 2PR/(P+R).
    A judgment may be a probability of "active" (:func:`ranked_predictions` on ties): it counts
    fractionally. Undefined ratios (no positives, no positive predictions) are 0.0.
    """
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    tp = fp = tn = fn = 0.0
    unparsed = 0
    for y, p in zip(labels, predictions):
        if p is None:
            unparsed += 1
            p = not y  # wrong by construction
        p = float(p)
        if y:
            tp, fn = tp + p, fn + 1 - p
        else:
            fp, tn = fp + p, tn + 1 - p
    pos, neg = tp + fn, tn + fp

    def ratio(a: float, b: float) -> float:
        return a / b if b else 0.0

    precision, recall = ratio(tp, tp + fp), ratio(tp, pos)
    tnr = ratio(tn, neg)
    parts = [r for r, n in ((recall, pos), (tnr, neg)) if n]
    return {
        "balanced_accuracy": sum(parts) / len(parts) if parts else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n": len(labels),
        "n_unparsed": unparsed,
    }


# ---------------------------------------------------------------------------------------------
# zero-shot category classification


def build_classify_prompt(
    explanation: str, categories: Mapping[str, str], system_prompt: str | None = None
) -> list[dict[str, str]]:
    """Chat prompt: pick one of ``categories`` (name -> definition) or ``none`` for an explanation."""
    lines = ["Categories:"]
    lines += [f"- {name}: {' '.join(str(desc).split())}" for name, desc in categories.items()]
    lines.append(f"- {NONE_LABEL}: the description fits none of the categories above")
    lines += ["", f"Feature description: {explanation}", "", "Category:"]
    return [
        {"role": "system", "content": system_prompt or DEFAULT_CLASSIFY_SYSTEM_PROMPT},
        {"role": "user", "content": "\n".join(lines)},
    ]


def parse_category(answer: str | None, labels: Sequence[str]) -> tuple[str, float]:
    """(label, confidence) from a classifier answer; labels are matched case-insensitively.

    Confidence 1.0: the answer is exactly a label (or ``none``), ignoring case, quotes and
    punctuation. 0.5: one or two labels occur as whole words in the answer (the earliest wins).
    0.0: nothing recognisable, or three or more labels (an echo of the list): ``none``.
    """
    if not answer:
        return NONE_LABEL, 0.0
    canon = {lab.lower(): lab for lab in labels}
    canon.setdefault(NONE_LABEL, NONE_LABEL)

    def norm(s: str) -> str:
        return re.sub(r"\s+", " ", re.sub(r"[^a-z0-9 _-]+", " ", s.lower())).strip()

    first = norm(answer.strip().split("\n")[0])
    first = re.sub(r"^(category|label|answer)\s*:?\s*", "", first).strip()
    if first in canon:
        return canon[first], 1.0
    text = norm(answer)
    found: list[tuple[int, str]] = []
    for low, lab in canon.items():
        m = re.search(rf"(?<![a-z0-9]){re.escape(low)}(?![a-z0-9])", text)
        if m:
            found.append((m.start(), lab))
    # more than two labels: the model is echoing the list rather than choosing
    if found and len(found) <= 2:
        return min(found)[1], 0.5
    return NONE_LABEL, 0.0
