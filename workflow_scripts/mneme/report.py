"""The pipeline's final outputs: one self-contained HTML report and a one-row-per-pair summary table.

The report is a single file on purpose: it is opened from a cluster scratch directory, attached to
an issue or mailed, so it embeds everything (inline CSS, plots as base64 PNGs, no scripts, no
external links). Plots use matplotlib's object-oriented API (``Figure`` rendered by the Agg canvas),
which needs no GUI backend and leaves pyplot's global state alone.

Every input of a pair except the pair name is optional: a missing file turns its section into a
"not available" note instead of failing the whole report, because a report of a half-finished run
is still useful. All text read from files (explanations, category names, JSON values, decoded
tokens) goes through :func:`html.escape`.

Per pair (keys of ``pairs[pair]``, all paths): ``latents``, ``attribution``, ``attribution_summary``,
``selected``, ``contexts``, ``categories``, ``explanations``, ``evaluation``, ``metrics`` (the
crosscoder's ``metrics.jsonl``), ``validation``, ``crosscoder_config``, ``tokenizer`` (a prepared
model directory or any Hugging Face tokenizer directory) and ``reversal``.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import inspect
import io
import json
import logging
import math
import os
import re
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
NA = "not available"
SECTIONS = (
    ("overview", "Overview"),
    ("training", "Training curves"),
    ("delta", "Relative decoder norm"),
    ("ratios", "Beta ratios"),
    ("latents", "Top latents"),
    ("prediction", "Predicted vs measured"),
    ("metrics", "Metrics"),
    ("reversal", "Reversal"),
)
# Edges of the F10 bins of ``mneme.attribution.delta_bin`` (base_only <= 0.1, shared 0.4..0.6,
# ft_only >= 0.9); tests/unit/test_report.py checks that the two agree.
DELTA_EDGES = (0.1, 0.4, 0.6, 0.9)
COLOURS = {"amplified": "#c0392b", "suppressed": "#2471a3", "unchanged": "#a6acaf"}
METRIC_NAMES = ("accuracy", "precision", "recall", "f1")
UNDEFINED_REASONS = {
    "precision": "nothing predicted as affected (tp + fp = 0)",
    "recall": "no category measured as affected (tp + fn = 0)",
    "f1": "precision or recall undefined, or both 0",
    "accuracy": "no categories (n = 0)",
}

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#222;margin:0;
 background:#f6f7f9;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:24px 32px;background:#fff;box-shadow:0 0 12px #0001}
h1{margin:0 0 4px;font-size:1.8em}h2{border-bottom:2px solid #2c3e50;padding-bottom:4px;margin-top:48px}
h3{margin-top:32px;color:#2c3e50}.meta{color:#666;font-size:.9em}
table{border-collapse:collapse;margin:8px 0 16px;font-size:.88em}
th,td{border:1px solid #dde1e5;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#2c3e50;color:#fff;font-weight:600}tr:nth-child(even) td{background:#f4f6f8}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.mneme td{font-weight:600}.na{color:#999;font-style:italic}
.grid{display:flex;flex-wrap:wrap;gap:24px}.grid>div{flex:1 1 300px}
img{max-width:100%;height:auto}figure{margin:8px 0}figcaption{color:#555;font-size:.85em}
.ctx{font-family:Menlo,Consolas,monospace;font-size:.82em;white-space:pre-wrap;word-break:break-word;
 background:#fafafa;border:1px solid #eee;border-radius:3px;padding:3px 5px;margin:2px 0}
.tok{border-radius:2px}.tok.peak{outline:1.5px solid #7b241c}.expl{max-width:340px}
.cat{font-weight:600}.small{font-size:.8em;color:#666}nav ul{margin:4px 0}nav li{margin:1px 0}
.note{background:#fef9e7;border-left:4px solid #f4d03f;padding:6px 10px;margin:8px 0;font-size:.9em}
.warn{background:#fdedec;border-left:4px solid #e74c3c;padding:6px 10px;margin:8px 0;font-size:.9em;color:#922b21}
span.warn{padding:0 3px;border:0;margin:0}
"""


@dataclass
class PairData:
    """Everything read for one pair; ``None`` where a file is missing or unreadable."""

    name: str
    files: dict[str, str | None]
    meta: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)
    latents: pd.DataFrame | None = None
    attribution: pd.DataFrame | None = None
    summary: dict | None = None
    selected: list[int] | None = None
    contexts: pd.DataFrame | None = None
    categories: pd.DataFrame | None = None
    explanations: pd.DataFrame | None = None
    evaluation: dict | None = None
    metrics: pd.DataFrame | None = None
    validation: dict | None = None
    cc_config: dict | None = None
    reversal: dict | None = None
    tokenizer: Any = None
    problems: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# reading


def _existing(files: Mapping[str, Any], key: str) -> Path | None:
    """The path under ``key`` if it was given and exists (optional inputs may be absent)."""
    value = files.get(key)
    if not value:
        return None
    path = Path(value)
    return path if path.exists() else None


def _read_jsonl(path: Path) -> pd.DataFrame:
    """One JSON object per line; blank lines skipped (a run may still be appending)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return pd.DataFrame(rows)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


READERS: dict[str, Callable[[Path], Any]] = {
    "latents": pd.read_parquet,
    "attribution": pd.read_parquet,
    "attribution_summary": _read_json,
    "selected": _read_json,
    "contexts": pd.read_parquet,
    "categories": pd.read_parquet,
    "explanations": _read_jsonl,
    "evaluation": _read_json,
    "metrics": _read_jsonl,
    "validation": _read_json,
    "crosscoder_config": _read_json,
    "reversal": _read_json,
}
FIELDS = {"attribution_summary": "summary", "crosscoder_config": "cc_config"}


def _read(key: str, path: Path | None, problems: dict[str, str]) -> Any:
    """Read one input; an unreadable file is recorded (shown in its section) rather than fatal."""
    if path is None:
        return None
    try:
        return READERS[key](path)
    except Exception as exc:  # noqa: BLE001 (any parse error: report it, keep going)
        log.warning("report: cannot read %s (%s): %s", key, path, exc)
        problems[key] = f"could not read {path.name}: {exc}"
        return None


@lru_cache(maxsize=8)
def _load_tokenizer(path: str) -> Any:
    """A prepared model directory (``mneme_model.json``) or a plain tokenizer directory; None if neither."""
    from mneme import models

    try:
        if Path(path, models.CARD).is_file():
            return models.load_tokenizer(path)
        return models.load_tokenizer_from(path)
    except Exception as exc:  # noqa: BLE001 (the report falls back to token ids)
        log.warning("report: cannot load tokenizer from %s: %s", path, exc)
        return None


def _meta_from_stores(cc_config: dict | None) -> dict[str, Any]:
    """Base, fine-tuned, corpus and layer from the crosscoder config's store paths
    (``.../activations/{model}/{corpus}/L{layer}/manifest.json``), when nothing better is given."""
    stores = (cc_config or {}).get("stores") or {}
    out: dict[str, Any] = {}
    for role in ("base", "finetuned"):
        parts = Path(str(stores.get(role, ""))).parts
        if len(parts) >= 4 and re.fullmatch(r"L\d+", parts[-2]):
            out[role] = parts[-4]
            out["corpus"], out["layer"] = parts[-3], int(parts[-2][1:])
    return out


def attribution_defaults() -> dict[str, Any]:
    """The thresholds :func:`mneme.attribution.attribute` uses when the config sets none."""
    from mneme.attribution import attribute

    params = inspect.signature(attribute).parameters
    return {k: params[k].default for k in ("mode", "z_threshold", "tau_r", "tau_eps", "kappa")}


def _thresholds(summary: dict | None) -> dict[str, Any]:
    """The attribution thresholds recorded in attribution_summary.json, else the library
    defaults; ``source`` says which, since the scatter plot draws them."""
    recorded = (summary or {}).get("thresholds") or {}
    if recorded:
        return {**attribution_defaults(), **recorded, "source": "attribution_summary.json"}
    return dict(attribution_defaults(), source="defaults of mneme.attribution.attribute")


def load_pair(
    name: str,
    files: Mapping[str, str | None],
    meta: Mapping[str, Any] | None = None,
) -> PairData:
    """Read every available input of one pair."""
    pair = PairData(name=name, files={k: (str(v) if v else None) for k, v in files.items()})
    for key in READERS:
        setattr(pair, FIELDS.get(key, key), _read(key, _existing(files, key), pair.problems))
    if pair.validation is None and pair.cc_config:
        pair.validation = pair.cc_config.get("validation")
    tok = _existing(files, "tokenizer")
    pair.tokenizer = _load_tokenizer(str(tok)) if tok else None
    pair.meta = {**_meta_from_stores(pair.cc_config), **(pair.evaluation or {}).get("meta", {})}
    pair.meta.update({k: v for k, v in (meta or {}).items() if v is not None})
    pair.thresholds = _thresholds(pair.summary)
    return pair


# ---------------------------------------------------------------------------------------------
# HTML helpers


def esc(value: Any) -> str:
    """Escape anything for HTML text or attribute values."""
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """Numbers for humans: ints with separators, floats to 4 significant digits, None/NaN as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        v = float(value)
        if math.isnan(v):
            return "n/a"
        if math.isfinite(v) and v == int(v) and abs(v) < 1e15:
            return f"{int(v):,}"
        return f"{v:.4g}"
    return str(value)


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def _cell(value: Any, raw: bool = False) -> str:
    if raw:
        return f"<td>{value}</td>"
    text = fmt(value)
    cls = ' class="num"' if _is_num(value) else ""
    if text == "n/a":
        cls = ' class="na"'
    return f"<td{cls}>{esc(text)}</td>"


def table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[tuple[str, str]] | None = None,
    raw: Iterable[str] = (),
    row_class: Callable[[Mapping[str, Any]], str] | None = None,
) -> str:
    """An HTML table of ``rows`` (dicts); ``columns`` are (key, label); cells in ``raw`` are
    already-built HTML (everything else is formatted and escaped here)."""
    if not rows:
        return na("no rows")
    columns = columns or [(k, k) for k in _union_keys(rows)]
    raw = set(raw)
    head = "".join(f"<th>{esc(label)}</th>" for _, label in columns)
    body = []
    for row in rows:
        cls = row_class(row) if row_class else ""
        cells = "".join(_cell(row.get(k), k in raw) for k, _ in columns)
        body.append(f'<tr class="{esc(cls)}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def kv_table(items: Iterable[tuple[str, Any]]) -> str:
    """A two-column key/value table (for scalar facts such as FVU or thresholds)."""
    rows = "".join(f"<tr><th>{esc(k)}</th>{_cell(v)}</tr>" for k, v in items)
    return f"<table>{rows}</table>"


def na(what: str = "") -> str:
    """The marker of a missing input; tests and readers look for the words 'not available'."""
    return f'<p class="na">{NA}{": " + esc(what) if what else ""}</p>'


def _union_keys(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    return keys


def figure(draw: Callable[[Any], str | None], size: tuple[float, float], alt: str) -> str:
    """Run ``draw(fig)`` on a fresh Agg-rendered Figure and embed it as a base64 PNG; ``draw`` may
    return a caption."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100, layout="constrained")
    caption = draw(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{esc(alt)}">{cap}</figure>'


def _missing(pair: PairData, *keys: str) -> str | None:
    """The 'not available' note when any of ``keys`` could not be read, else None."""
    for key in keys:
        if getattr(pair, FIELDS.get(key, key)) is None:
            why = pair.problems.get(key) or (
                f"{key} not found ({pair.files.get(key)})" if pair.files.get(key) else f"no {key} input"
            )
            return na(why)
    return None


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """DataFrame rows as dicts with NaN turned into None (formatted as n/a)."""
    return [
        {k: (None if _is_num(v) and math.isnan(float(v)) else v) for k, v in r.items()}
        for r in df.to_dict("records")
    ]


# ---------------------------------------------------------------------------------------------
# sections


def section_overview(pair: PairData) -> str:
    """What was compared, how well the crosscoder reconstructs both models, what attribution found."""
    m, v = pair.meta, pair.validation or {}
    facts = kv_table(
        [("pair", pair.name)] + [(k, m.get(k)) for k in ("base", "finetuned", "layer", "corpus")]
    )
    cc = pair.cc_config or {}
    quality = kv_table(
        [
            ("dictionary size", v.get("dict_size", cc.get("dict_size"))),
            ("k", v.get("k", cc.get("k"))),
            ("training steps", v.get("steps", cc.get("steps"))),
            ("tokens trained", v.get("tokens_trained", cc.get("tokens_trained"))),
            ("validation tokens", v.get("n_tokens")),
            ("FVU base", v.get("fvu_base")),
            ("FVU fine-tuned", v.get("fvu_ft")),
            ("L0", v.get("l0")),
            ("dead fraction", v.get("dead_fraction")),
        ]
    )
    if not v:
        quality = na("crosscoder validation (validation.json)") + quality
    return f'<div class="grid"><div><h4>Pair</h4>{facts}</div><div><h4>Crosscoder (held-out)</h4>{quality}</div><div><h4>Attribution</h4>{_attribution_counts(pair)}</div></div>'


def _direction_counts(pair: PairData) -> dict[str, int]:
    """Latents per direction, from the summary or counted from attribution.parquet."""
    if pair.summary and pair.summary.get("directions"):
        return {k: int(v) for k, v in pair.summary["directions"].items()}
    if pair.attribution is not None:
        return {str(k): int(v) for k, v in pair.attribution["direction"].value_counts().items()}
    return {}


def _attribution_counts(pair: PairData) -> str:
    counts = _direction_counts(pair)
    if not counts:
        return na("attribution")
    t = pair.thresholds
    items = [("mode", t.get("mode"))]
    if t.get("mode") == "simple":
        items.append(("kappa", t.get("kappa")))
    else:
        items += [("tau_r", t.get("tau_r")), ("tau_eps", t.get("tau_eps"))]
    items += [(f"{d} latents", counts.get(d, 0)) for d in ("amplified", "suppressed", "unchanged", "dead")]
    return kv_table(items) + f'<p class="small">thresholds from {esc(t.get("source"))}</p>'


def section_training(pair: PairData) -> str:
    """Loss, FVU, L0 and dead fraction over training, to judge convergence."""
    if (miss := _missing(pair, "metrics")) is not None:
        return miss
    df = pair.metrics
    if "step" not in df or df.empty:
        return na("metrics.jsonl has no 'step' rows")
    panels = [
        ("loss", ["loss", "recon_loss", "aux_loss"], False),
        ("FVU (training batches)", ["fvu_base", "fvu_ft"], True),
        ("L0", ["l0", "k"], False),
        ("dead fraction", ["dead_fraction"], False),
    ]

    def draw(fig: Any) -> str:
        axes = fig.subplots(1, 4)
        for ax, (title, cols, logy) in zip(axes, panels):
            for col in [c for c in cols if c in df]:
                style = "--" if col in ("k", "aux_loss") else "-"
                ax.plot(df["step"], df[col], style, marker=".", label=col)
            if logy and (df[[c for c in cols if c in df]] > 0).all().all():
                ax.set_yscale("log")
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("step", fontsize=9)
            ax.tick_params(labelsize=8)
            if ax.lines:
                ax.legend(fontsize=7)
        return f"{len(df)} logged points, last step {fmt(df['step'].iloc[-1])}"

    return figure(draw, (13, 3.0), "training curves")


def section_delta(pair: PairData) -> str:
    """Where latents sit between base-only (0) and fine-tuned-only (1): the F10 relative norm."""
    if (miss := _missing(pair, "latents")) is not None:
        return miss
    lat = pair.latents
    live = lat[~lat["dead"].astype(bool)] if "dead" in lat else lat
    delta = live["delta"].dropna().to_numpy(float)
    marks = _direction_deltas(pair)

    def draw(fig: Any) -> str:
        ax = fig.subplots()
        ax.hist(delta, bins=50, range=(0, 1), color="#5d6d7e", log=True)
        for edge in DELTA_EDGES:
            ax.axvline(edge, color="#e67e22", ls="--", lw=1)
        for x, name in ((0.05, "base only"), (0.5, "shared"), (0.95, "ft only")):
            ax.text(
                x,
                0.97,
                name,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="top",
                fontsize=8,
                color="#e67e22",
            )
        for d, vals in marks.items():
            ax.plot(
                vals, np.full(len(vals), 0.7), "|", ms=14, mew=2, color=COLOURS[d], label=f"{d} ({len(vals)})"
            )
        peak = np.histogram(delta, bins=50, range=(0, 1))[0].max() if len(delta) else 1
        ax.set_ylim(0.5, max(peak, 1) * 12)  # head room for the bin labels
        ax.set_xlabel("relative decoder norm Δ (0 = base only, 1 = fine-tuned only)")
        ax.set_ylabel("live latents (log)")
        if marks:
            ax.legend(fontsize=8, loc="center right")
        return f"{len(delta):,} live latents (dead ones left out); ticks: attributed latents; dashed lines: bin edges {', '.join(map(str, DELTA_EDGES))}"

    return figure(draw, (8, 3.4), "relative decoder norm histogram") + _delta_bin_table(pair, live)


def _direction_deltas(pair: PairData) -> dict[str, np.ndarray]:
    """Δ of the amplified and suppressed latents, drawn as ticks under the histogram."""
    a = pair.attribution
    if a is None or "delta" not in a:
        return {}
    out = {
        d: a.loc[a["direction"] == d, "delta"].dropna().to_numpy(float) for d in ("amplified", "suppressed")
    }
    return {d: v for d, v in out.items() if len(v)}


def _delta_bin_table(pair: PairData, live: pd.DataFrame) -> str:
    from mneme.contracts import DELTA_BINS

    live_counts = live["delta_bin"].value_counts() if "delta_bin" in live else pd.Series(dtype=int)
    all_counts = (pair.summary or {}).get("delta_bins") or {}
    ranges = {"base_only": "Δ ≤ 0.1", "other": "otherwise", "shared": "0.4 ≤ Δ ≤ 0.6", "ft_only": "Δ ≥ 0.9"}
    rows = [
        {"bin": b, "range": ranges.get(b, ""), "live": int(live_counts.get(b, 0)), "all": all_counts.get(b)}
        for b in DELTA_BINS
    ]
    return table(
        rows, [("bin", "Δ bin"), ("range", "range"), ("live", "live latents"), ("all", "all latents")]
    )


def _positive_floor(*arrays: np.ndarray) -> float:
    values = np.concatenate([a[np.isfinite(a) & (a > 0)] for a in arrays])
    return float(values.min()) / 2 if len(values) else 1e-3


def section_ratios(pair: PairData) -> str:
    """The attribution's decision: in robust mode the z of each latent's log beta ratio against
    its relative decoder norm; in the F12 modes the plane of the other/own beta ratios."""
    if (miss := _missing(pair, "attribution")) is not None:
        return miss
    if pair.thresholds.get("mode") == "robust" and "change_z" in pair.attribution:
        return _robust_figure(pair)
    a = pair.attribution
    a = a[(a["direction"] != "dead") & a["ratio_r"].notna() & a["ratio_eps"].notna()]
    if a.empty:
        return na("no live latent with both ratios")
    floor = _positive_floor(a["ratio_r"].to_numpy(float), a["ratio_eps"].to_numpy(float))
    t = pair.thresholds

    def draw(fig: Any) -> str:
        ax = fig.subplots()
        _scatter_by_direction(
            ax, a, lambda sub: (np.clip(sub["ratio_r"], floor, None), np.clip(sub["ratio_eps"], floor, None))
        )
        ax.set_xscale("log")
        ax.set_yscale("log")
        if t.get("mode", "ratio") == "ratio":
            ax.axvline(t["tau_r"], color="k", ls="--", lw=1, label=f"τ_r = {t['tau_r']}")
            ax.axhline(t["tau_eps"], color="k", ls=":", lw=1, label=f"τ_ε = {t['tau_eps']}")
        ax.set_xlabel("ratio_r (reconstruction, other / own model)")
        ax.set_ylabel("ratio_ε (error, other / own model)")
        ax.legend(fontsize=8, loc="lower right")
        n_floor = int(((a["ratio_r"] <= 0) | (a["ratio_eps"] <= 0)).sum())
        note = (
            ""
            if t.get("mode", "ratio") == "ratio"
            else f" (mode {t['mode']}: the decision uses ratio_activation and κ = {t.get('kappa')})"
        )
        return f"ratios ≤ 0 ({n_floor}) drawn at {floor:.2g}{note}; thresholds from {t.get('source')}"

    return figure(draw, (7, 5), "beta ratio scatter")


def _scatter_by_direction(ax: Any, a: pd.DataFrame, xy: Callable[[pd.DataFrame], tuple]) -> None:
    """Unchanged latents small and faint, attributed ones large, each direction in its colour."""
    for d in ("unchanged", "amplified", "suppressed"):
        sub = a[a["direction"] == d]
        big = d != "unchanged"
        x, y = xy(sub)
        ax.scatter(
            x,
            y,
            s=28 if big else 5,
            alpha=0.9 if big else 0.35,
            color=COLOURS[d],
            label=f"{d} ({len(sub):,})",
            zorder=3 if big else 2,
        )


def _robust_figure(pair: PairData) -> str:
    a = pair.attribution
    a = a[(a["direction"] != "dead") & a["change_z"].notna()]
    if a.empty:
        return na("no live latent with a log beta ratio")
    t = pair.thresholds

    def draw(fig: Any) -> str:
        ax = fig.subplots()
        lim = 3 * t["z_threshold"] + 10
        _scatter_by_direction(ax, a, lambda sub: (sub["delta"], np.clip(sub["change_z"], -lim, lim)))
        for sign in (-1, 1):
            ax.axhline(sign * t["z_threshold"], color="k", ls="--", lw=1)
        ax.set_xlabel("relative decoder norm Δ (0 base only, 1 fine-tuned only)")
        ax.set_ylabel("z of log(β_ft / β_base) against the bulk")
        ax.legend(fontsize=8, loc="best")
        return f"dashed: ±z_threshold = {t['z_threshold']} (thresholds from {t.get('source')}); z clipped for display"

    return figure(draw, (7, 5), "robust z of the beta ratios")


# --- top latents ---------------------------------------------------------------------------


def _latent_groups(pair: PairData, n_top: int) -> list[tuple[str, pd.DataFrame]]:
    """Strongest amplified and suppressed latents, and the unchanged controls that were explained."""
    a = pair.attribution
    groups = []
    for d in ("amplified", "suppressed"):
        sub = a[a["direction"] == d].sort_values("strength", ascending=False, kind="stable")
        groups.append((f"top {d}", sub.head(n_top)))
    controls = [x for x in (pair.selected or []) if x in set(a.loc[a["direction"] == "unchanged", "latent"])]
    ctrl = a.set_index("latent").loc[controls].reset_index() if controls else a.iloc[:0]
    groups.append(("unchanged controls", ctrl))
    return groups


def _explanations(pair: PairData) -> dict[int, str]:
    """Explanation per latent: categories.parquet first, then explanations.jsonl."""
    out: dict[int, str] = {}
    for df in (pair.explanations, pair.categories):
        if df is not None and "explanation" in df:
            out.update(
                {int(r.latent): r.explanation for r in df.itertuples() if isinstance(r.explanation, str)}
            )
    return out


def explanation_quality(explanations: pd.DataFrame | None) -> dict[str, Any]:
    """How good the explanations are: counts, failed requests, and the mean detection balanced
    accuracy (F15) beside the mean of its control (another latent's explanation on the same
    examples); ``beats_control`` is the share of scored latents whose own explanation did better."""
    out: dict[str, Any] = {"n_explained": 0, "n_failed": 0}
    if explanations is None or explanations.empty:
        return out
    df = explanations
    failed = (
        df["error"].notna() & (df["error"].astype(str) != "") if "error" in df else pd.Series(False, df.index)
    )
    text = df["explanation"].fillna("").astype(str) if "explanation" in df else pd.Series("", df.index)
    out["n_explained"] = int(((text != "") & ~failed).sum())
    out["n_failed"] = int(failed.sum())
    out["n_requested"] = len(df)
    if "detection_balanced_accuracy" in df:
        ba = pd.to_numeric(df["detection_balanced_accuracy"], errors="coerce")
        out["n_scored"] = int(ba.notna().sum())
        out["detection_ba"] = float(ba.mean()) if ba.notna().any() else None
        n = pd.to_numeric(df.get("detection_n"), errors="coerce").sum()
        bad = pd.to_numeric(df.get("detection_n_unparsed"), errors="coerce").sum()
        out["unparsed"] = float(bad / n) if n > 0 else None
    if "control_balanced_accuracy" in df:
        ctl = pd.to_numeric(df["control_balanced_accuracy"], errors="coerce")
        out["control_ba"] = float(ctl.mean()) if ctl.notna().any() else None
        beats = df["beats_control"].dropna() if "beats_control" in df else pd.Series(dtype=bool)
        out["beats_control"] = float(beats.astype(bool).mean()) if len(beats) else None
    return out


UNPARSED_WARNING = 0.2  # share of unreadable detection judgments above which the score is flagged


def _quality_html(pair: PairData) -> str:
    """The explanation-quality paragraph of the latents section, with a warning on failures."""
    q = explanation_quality(pair.explanations)
    if pair.explanations is None:
        return ""
    out = ""
    if q["n_failed"]:
        errors = pair.explanations["error"].dropna().astype(str)
        out += (
            f'<p class="warn">{q["n_failed"]} of {q.get("n_requested", 0)} explanation requests failed '
            f"(interpret.on_error: skip): these latents have no explanation, and the explanation route "
            f"has no evidence from them. First error: {esc(errors.iloc[0][:300])}</p>"
        )
    if q["n_explained"] == 0:
        return (
            out + '<p class="warn">No explanation was obtained: the explanation route predicts nothing.</p>'
        )
    if q.get("detection_ba") is None:
        return out + f'<p class="small">{q["n_explained"]} latents explained; detection scoring was off.</p>'
    ctl = q.get("control_ba")
    if (q.get("unparsed") or 0) > UNPARSED_WARNING:
        out += (
            f'<p class="warn">{fmt(100 * q["unparsed"])} % of the detection judgments could not be read (the '
            "judge wrote no 0/1 list, or had neither Yes nor No among its likeliest first tokens): they count "
            "as wrong, so the scores below measure the "
            "judge's format, not the explanations. Use a stronger explainer (config/explainers/).</p>"
        )
    out += (
        f'<p class="small">Explanation quality (detection, F15, on held-out examples): mean balanced accuracy '
        f"<b>{fmt(q['detection_ba'])}</b> over {q['n_scored']} scored latents"
        + (
            f", control (another latent's explanation on the same examples) {fmt(ctl)}; "
            f"{fmt(100 * q['beats_control'])} % of the explanations beat their control. "
            "Explanations marked ✗ did no better than their control."
            if ctl is not None and q.get("beats_control") is not None
            else ". No control was scored."
        )
        + "</p>"
    )
    return out


def _detection_html(row: Mapping[str, Any] | None) -> str:
    """A latent's detection balanced accuracy and its control, or n/a."""
    if row is None or not _is_num(row.get("detection_balanced_accuracy")):
        return '<span class="na">n/a</span>'
    own = f"{fmt(row['detection_balanced_accuracy'])}"
    if _is_num(row.get("control_balanced_accuracy")):
        mark = "" if row.get("beats_control") else ' <span class="warn">✗</span>'
        return f'{own}<br><span class="small">control {fmt(row["control_balanced_accuracy"])}</span>{mark}'
    return own


def _category_html(row: Mapping[str, Any] | None) -> str:
    """Final category in bold, then each method's label and confidence."""
    if row is None:
        return '<span class="na">n/a</span>'
    parts = []
    for col, value in row.items():
        if col.startswith("category_") and value is not None and value == value:
            conf = row.get("conf_" + col[len("category_") :])
            c = f" ({fmt(conf)})" if conf is not None and conf == conf else ""
            parts.append(f"{esc(col[len('category_') :])}: {esc(value)}{esc(c)}")
    return f'<span class="cat">{esc(row.get("category", "n/a"))}</span><br><span class="small">{"<br>".join(parts)}</span>'


def token_strings(token_ids: Sequence[int], tokenizer: Any) -> list[str]:
    """Each token as text (the tokenizer's per-token decode), or ``⟨id⟩`` without a tokenizer."""
    ids = [int(t) for t in token_ids]
    if tokenizer is None:
        return [f"⟨{t}⟩ " for t in ids]
    return [tokenizer.decode([t]) for t in ids]


def render_context(tokens: Sequence[str], activations: Sequence[float], scale: float) -> str:
    """Tokens with a background whose opacity is activation / ``scale``; the peak token is outlined.
    Newlines are shown as ↵ so a window stays on a few lines."""
    acts = np.asarray(activations, dtype=float)
    peak = int(np.nanargmax(acts)) if len(acts) and np.isfinite(acts).any() else -1
    spans = []
    for i, (text, act) in enumerate(zip(tokens, acts)):
        alpha = float(np.clip(act / scale, 0, 1)) if scale > 0 and np.isfinite(act) else 0.0
        cls = "tok peak" if i == peak else "tok"
        style = f' style="background:rgba(230,126,34,{alpha:.2f})"' if alpha > 0 else ""
        shown = esc(text.replace("\n", "↵"))
        spans.append(f'<span class="{cls}"{style} title="{act:.3g}">{shown}</span>')
    return f'<div class="ctx">{"".join(spans)}</div>'


def _examples_html(pair: PairData, latent: int, n_examples: int) -> str:
    """The latent's top-activating windows, scaled to its strongest example."""
    if pair.contexts is None:
        return f'<span class="na">{NA}</span>'
    c = pair.contexts
    c = c[(c["latent"] == latent) & (c["kind"] == "top")].sort_values("rank").head(n_examples)
    if c.empty:
        return '<span class="na">no examples</span>'
    scale = float(np.nanmax([np.nanmax(np.asarray(a, float)) for a in c["activations"]] + [0.0]))
    return "".join(
        render_context(token_strings(r.token_ids, pair.tokenizer), r.activations, scale)
        for r in c.itertuples()
    )


def _latent_rows(pair: PairData, sub: pd.DataFrame, n_examples: int) -> list[dict[str, Any]]:
    expl = _explanations(pair)
    cats = {} if pair.categories is None else {int(r["latent"]): r for r in _records(pair.categories)}
    scored = {} if pair.explanations is None else {int(r["latent"]): r for r in _records(pair.explanations)}
    rows = []
    for r in _records(sub):
        lat = int(r["latent"])
        text = expl.get(lat)
        rows.append(
            {
                **r,
                "latent": str(lat),
                "category_html": _category_html(cats.get(lat)),
                "explanation_html": f'<div class="expl">{esc(text)}</div>'
                if text
                else '<span class="na">n/a</span>',
                "examples_html": _examples_html(pair, lat, n_examples),
                "detection_html": _detection_html(scored.get(lat)),
            }
        )
    return rows


LATENT_COLUMNS = [
    ("latent", "latent"),
    ("delta", "Δ"),
    ("strength", "strength"),
    ("ratio_r", "ratio_r"),
    ("ratio_eps", "ratio_ε"),
    ("ratio_activation", "ratio_act"),
    ("freq", "freq"),
    ("category_html", "category"),
    ("explanation_html", "explanation"),
    ("detection_html", "detection"),
    ("examples_html", "top contexts"),
]


def section_latents(pair: PairData, n_top: int = 10, n_examples: int = 3) -> str:
    """The latents the prediction rests on, with what the explainer said and the text that fires them."""
    if (miss := _missing(pair, "attribution")) is not None:
        return miss
    notes = []
    if pair.contexts is None:
        notes.append("example contexts " + NA)
    elif pair.tokenizer is None:
        notes.append("no tokenizer: contexts are shown as token ids")
    if pair.categories is None:
        notes.append("categories " + NA)
    out = "".join(f'<p class="note">{esc(n)}</p>' for n in notes)
    out += _quality_html(pair)
    out += (
        '<p class="small">Detection: balanced accuracy of the explainer judging held-out examples from the '
        "explanation (0.5 = chance), and below it the same for its control.</p>"
        '<p class="small">Contexts: orange background ∝ activation / the latent\'s strongest shown activation; '
        "the peak token is outlined; hover a token for its activation.</p>"
    )
    raw = ("category_html", "explanation_html", "detection_html", "examples_html")
    for label, sub in _latent_groups(pair, n_top):
        out += f"<h4>{esc(label.capitalize())} ({len(sub)})</h4>"
        out += (
            table(_latent_rows(pair, sub, n_examples), LATENT_COLUMNS, raw)
            if len(sub)
            else f'<p class="na">no {esc(label)} latents</p>'
        )
    return out


# --- prediction and metrics ----------------------------------------------------------------


def section_prediction(pair: PairData) -> str:
    """Measured benchmark change per category against the categories mneme predicted."""
    if (miss := _missing(pair, "evaluation")) is not None:
        return miss
    ev = pair.evaluation
    per = pd.DataFrame(ev.get("per_category") or [])
    if per.empty or not {"category", "delta"} <= set(per):
        return na("evaluation.json has no per_category rows")
    cfg = ev.get("config", {})
    keys = ("task", "threshold", "test", "alpha", "truth", "route", "membership", "reference", "z_pred")
    reference = per["reference"].dropna().astype(str).unique() if "reference" in per else []
    intro = kv_table(
        [(k, cfg.get(k)) for k in keys if k in cfg]
        + [
            ("target", ", ".join(ev.get("target") or [])),
            ("Δ is beyond", ", ".join(reference) or "nothing (raw)"),
        ]
        + _target_ranks(ev)
    )
    return (
        intro
        + _target_warning(ev)
        + figure(
            lambda fig: _draw_prediction(fig, per, cfg.get("threshold")), (9, 3.8), "measured vs predicted"
        )
        + _prediction_table(per)
    )


# the predictors whose rank of the pair's own target the prediction section shows
TARGET_RANK_OF = {"mneme": "mneme's score", "activation_diff": "the activation difference"}


def _target_rank(ev: Mapping[str, Any], name: str) -> tuple[float | None, int | None]:
    own = ((ev.get("predictors") or {}).get(name) or {}).get("metrics", {}).get("target") or {}
    rank = own.get("rank")
    return (rank if rank is not None and math.isfinite(rank) else None), own.get("n_categories")


def _target_ranks(ev: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Where the target ranks among all categories by each predictor's score (1 = top)."""
    out = []
    for name, label in TARGET_RANK_OF.items():
        rank, n = _target_rank(ev, name)
        if rank is not None:
            out.append((f"target's rank by {label}", f"{rank:g} of {n}"))
    return out


def _target_warning(ev: Mapping[str, Any]) -> str:
    """A visible note when mneme's own score does not put the intervention's target first: the
    target is the one category the user knows moved, so a score that misses it is a score to
    read with that in mind (it needs no benchmark: only the pair's declared target)."""
    rank, n = _target_rank(ev, "mneme")
    if rank is None or rank <= 1:
        return ""
    other, _ = _target_rank(ev, "activation_diff")
    beside = f"; the activation difference ranks it {other:g}" if other is not None else ""
    return (
        f"<p class=\"warn\">mneme's score ranks the intervention's own category {rank:g} of {n}, "
        f"not first{esc(beside)}: the score did not single out what the intervention was aimed "
        "at. The README's suite section says how often this happens and under which "
        "interventions.</p>"
    )


def _flags(df: pd.DataFrame, col: str) -> np.ndarray:
    """A boolean column as an array; all False when the column is absent (older evaluation.json)."""
    return df[col].fillna(False).astype(bool).to_numpy() if col in df else np.zeros(len(df), bool)


def _draw_prediction(fig: Any, per: pd.DataFrame, threshold: float | None) -> str:
    ax = fig.subplots()
    x = np.arange(len(per))
    truth, sig, pred = (_flags(per, c) for c in ("truth", "significant", "prediction"))
    ax.bar(
        x,
        per["delta"],
        color=np.where(truth, "#c0392b", np.where(sig, "#f5b7b1", "#bfc9ca")),
        edgecolor="#555",
    )
    delta = per["delta"].to_numpy(float)
    lo, hi = min(0.0, np.nanmin(delta), -(threshold or 0)), max(0.0, np.nanmax(delta), threshold or 0)
    span = (hi - lo) or 1.0
    ax.scatter(
        x[pred], np.full(int(pred.sum()), hi + 0.08 * span), marker="v", s=70, color="#2471a3", zorder=3
    )
    for s in (-1, 1) if threshold else ():
        ax.axhline(s * threshold, color="k", ls="--", lw=0.8)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_ylim(lo - 0.05 * span, hi + 0.16 * span)
    ax.set_xticks(x, per["category"].astype(str), rotation=40, ha="right", fontsize=9)
    for label, p in zip(ax.get_xticklabels(), pred):
        label.set_color("#2471a3" if p else "#222")
    ax.set_ylabel("Δ score (fine-tuned − base)")
    ax.legend(handles=_prediction_legend(), fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return "bars: measured change; ▼ and blue labels: categories mneme predicts as affected; dashed: ± change threshold"


def _prediction_legend() -> list[Any]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    return [
        Patch(color="#c0392b", label="affected\n(significant, |Δ| ≥ threshold)"),
        Patch(color="#f5b7b1", label="significant, |Δ| < threshold"),
        Patch(color="#bfc9ca", label="not significant"),
        Line2D([], [], marker="v", ls="", color="#2471a3", ms=8, label="predicted affected"),
    ]


def _prediction_table(per: pd.DataFrame) -> str:
    per = per.copy()
    if {"truth", "prediction"} <= set(per):
        per["correct"] = per["truth"].astype(bool) == per["prediction"].astype(bool)
    cols = [
        ("category", "category"),
        ("n", "items"),
        ("base_mean", "base"),
        ("ft_mean", "fine-tuned"),
        ("raw_delta", "raw Δ"),
        ("delta", "Δ beyond reference"),
        ("p_value", "p"),
        ("significant", "significant"),
        ("truth", "affected"),
        ("pred_score", "mneme score (z)"),
        ("prediction", "predicted"),
        ("pred_direction", "predicted direction"),
        ("correct", "correct"),
    ]
    return table(_records(per), [c for c in cols if c[0] in per])


def _undefined_note(name: str, metric: str, m: Mapping[str, Any]) -> str:
    reason = (
        UNDEFINED_REASONS.get(metric, "undefined") if metric in (m.get("undefined") or []) else "undefined"
    )
    return f"{name} {metric}: {reason}"


SCORE_NAMES = (*METRIC_NAMES, "auroc", "spearman")
# the all-categories rows add the direction and the intervention's own category (found, rank)
ALL_SCOPE_COLUMNS = [
    ("direction_accuracy", "direction accuracy"),
    ("target_found", "target found"),
    ("target_rank", "target rank"),
]


def section_metrics(pair: PairData) -> str:
    """Every predictor, labelled by what it uses: on the side effects (the categories outside the
    pair's target) and on all categories, with why a metric is undefined."""
    if (miss := _missing(pair, "evaluation")) is not None:
        return miss
    predictors = pair.evaluation.get("predictors") or {}
    if not predictors:
        return na("evaluation.json has no predictors")
    out, notes = "", []
    for scope, title in (("side_effects", "Side effects (target excluded)"), ("all", "All categories")):
        rows = []
        for name, p in predictors.items():
            m = p["metrics"][scope]
            row = {"method": name, "uses": p.get("uses"), **m}
            if scope == "all":
                row["direction_accuracy"] = p["metrics"]["direction"]["accuracy"]
                own = p["metrics"].get("target") or {}
                row["target_found"], row["target_rank"] = own.get("found"), own.get("rank")
            rows.append(row)
            notes += [_undefined_note(f"{name} ({scope})", k, m) for k in METRIC_NAMES if m.get(k) is None]
        cols = [("method", "method"), ("uses", "uses")] + [(k, k) for k in SCORE_NAMES]
        cols += ALL_SCOPE_COLUMNS if scope == "all" else []
        cols += [(k, k) for k in ("tp", "fp", "fn", "tn")]
        out += f"<h4>{esc(title)}</h4>" + table(
            rows, cols, row_class=lambda r: "mneme" if r["method"] == "mneme" else ""
        )
    if notes:
        out += '<p class="small">n/a: ' + "; ".join(esc(n) for n in notes) + "</p>"
    prevalence = pair.evaluation.get("prevalence") or {}
    extra = (
        [(f"prevalence ({k})", v) for k, v in prevalence.items()] if isinstance(prevalence, Mapping) else []
    )
    return out + kv_table(extra)


# --- the suite (every pair) ----------------------------------------------------------------


SUITE_COLUMNS = [("predictor", "predictor"), ("uses", "uses")] + [(k, k) for k in SCORE_NAMES]


def section_suite(suite: pd.DataFrame | None, grid: pd.DataFrame | None) -> str:
    """Mean over the pairs of every predictor (side effects and all categories), each pair's
    side-effect F1 and AUROC, and the sensitivity of the mneme routes to the decision's settings."""
    if suite is None or suite.empty:
        return na("suite.tsv not available")
    out = (
        '<p class="small">truth_split_half is the ground truth\'s own noise ceiling: the truth '
        "measured on half of the benchmark items, scored against the truth of the other half. No "
        "predictor can be expected to agree with the truth much better than the truth agrees with "
        "itself (with all the items the ceiling is somewhat higher than this half-size figure).</p>"
    )
    for pair, group in (("mean", "development pairs"), ("mean_holdout", "held-out pairs")):
        mean = suite[suite["pair"] == pair]
        if mean.empty:
            continue
        for scope, what in (("side_effects", "side effects"), ("all", "all categories")):
            rows = _records(mean[mean["scope"] == scope])
            cols = SUITE_COLUMNS + (ALL_SCOPE_COLUMNS if scope == "all" else [])
            out += f"<h4>{esc(f'Mean over the {group}: {what}')}</h4>" + table(
                rows, cols, row_class=lambda r: "mneme" if r["predictor"] == "mneme" else ""
            )
    per = suite[~suite["pair"].isin(["mean", "mean_holdout"]) & (suite["scope"] == "side_effects")]
    for metric in ("f1", "auroc"):
        wide = per.pivot_table(index="predictor", columns="pair", values=metric, aggfunc="first", sort=False)
        wide = wide.reset_index()
        cols = [("predictor", "predictor")] + [(c, c) for c in wide.columns if c != "predictor"]
        out += f"<h4>Side-effect {esc(metric)} per pair</h4>" + table(_records(wide), cols)
    if grid is not None and not grid.empty:
        grid = _one_at_a_time(grid)
        cols = [(c, c) for c in grid.columns]
        out += (
            "<h4>Sensitivity of the mneme routes (mean over pairs)</h4>"
            '<p class="small">Each block varies the decision (z_pred, membership, reference) with the '
            "attribution at this run's settings, or the attribution (z_cap, min_contexts) with the "
            "decision at this run's settings; suite_sensitivity.tsv has the full grid.</p>"
            '<p class="small">z_pred: the category decision; z_cap and min_contexts: the attribution '
            "(strength cap, contexts a latent needs); membership: the provenance route's weight of a "
            "latent on a category (the other routes do not use it); reference: what a category's change is "
            "compared with (the corpus mean or the general text's latents). The rows marked default are this "
            "run's settings.</p>"
            + table(
                _records(grid),
                cols,
                row_class=lambda r: "mneme" if r.get("default") in (True, "True") else "",
            )
        )
    return out


def _one_at_a_time(grid: pd.DataFrame) -> pd.DataFrame:
    """The grid's rows where either the attribution or the decision sits at this run's settings
    (those of the row marked ``default``), so that the report's table stays readable; the routes
    that ignore ``membership`` keep only its configured value. The full grid when no row is
    marked."""
    from mneme.suite import ATTRIBUTION_SETTINGS, DECISION_SETTINGS

    if "default" not in grid or not grid["default"].astype(str).eq("True").any():
        return grid
    mine = grid[grid["default"].astype(str) == "True"].iloc[0]

    def at_default(keys: Sequence[str]) -> pd.Series:
        mask = pd.Series(True, index=grid.index)
        for k in (k for k in keys if k in grid):
            mask &= grid[k].astype(str) == str(mine[k])
        return mask

    keep = at_default(ATTRIBUTION_SETTINGS) | at_default(DECISION_SETTINGS)
    if "membership" in grid:
        keep &= (grid["route"] == "provenance") | (grid["membership"].astype(str) == str(mine["membership"]))
    return grid[keep].reset_index(drop=True)


# --- reversal ------------------------------------------------------------------------------


REVERSAL_COLUMNS = [
    ("category", "category"),
    ("status", "status"),
    ("n_latents", "latents"),
    ("n_tokens", "tokens"),
    ("score_base", "base"),
    ("score_ft", "fine-tuned"),
    ("score_targeted", "retrained: targeted"),
    ("score_control", "retrained: control"),
    ("recovery_targeted", "R targeted"),
    ("recovery_control", "R control"),
    ("target_rebound_targeted", "target change (targeted)"),
    ("target_rebound_control", "target change (control)"),
    ("utility_change_targeted", "utility change (targeted)"),
    ("utility_change_control", "utility change (control)"),
    ("specific_gain_targeted", "gain on c beyond utility (targeted)"),
    ("specific_gain_control", "gain on c beyond utility (control)"),
]


def _changes_text(value: Any) -> Any:
    """``{category: change}`` (a target's rebound) as short text; other values unchanged."""
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {float(v):+.3g}" for k, v in value.items() if _is_num(v)) or None
    return value


def _specific_gain(rec: Mapping[str, Any], arm: str) -> float | None:
    """The retrained model's gain on the category minus its mean gain on the other categories.

    Retraining on any in-format corpus text can lift every category (and R far above 1); what is
    specific to the category is the part of its gain that the others do not share.
    """
    score, ft, utility = rec.get(f"score_{arm}"), rec.get("score_ft"), rec.get(f"utility_change_{arm}")
    if not all(_is_num(v) for v in (score, ft, utility)):
        return None
    return float(score) - float(ft) - float(utility)


def _reversal_row(rec: Mapping[str, Any]) -> dict[str, Any]:
    rec = {**rec, **{f"specific_gain_{arm}": _specific_gain(rec, arm) for arm in ("targeted", "control")}}
    row = {key: _changes_text(rec.get(key)) for key, _ in REVERSAL_COLUMNS}
    if rec.get("status") not in (None, "ok"):
        row["status"] = f"{rec.get('status')}: {rec.get('reason') or ''}"
    return row


def section_reversal(pair: PairData) -> str:
    """The reversal experiment (method.md 4.4): per category, the scores of the retrained models,
    the recovery ratio R = (retrained - ft) / (base - ft) for the targeted contexts and for the
    random control, the change on the intervention's own target and on the other categories."""
    rev = pair.reversal
    if not isinstance(rev, Mapping):
        return na("reversal.json is not a JSON object")
    cats = [r for r in rev.get("categories") or [] if isinstance(r, Mapping)]
    if not cats:
        return na("no reversal category (none was predicted or configured)")
    cfg = rev.get("config") or {}
    facts = [
        ("task", rev.get("task")),
        ("target categories", ", ".join(rev.get("target") or cfg.get("target_categories") or []) or None),
        (
            "latents",
            f"{'/'.join(cfg.get('directions') or [])}, pool {cfg.get('pool')}, mapping {cfg.get('mapping')}",
        ),
        (
            "training",
            f"{cfg.get('method')}, lr {cfg.get('lr')}, {cfg.get('epochs')} epoch(s), token budget {cfg.get('token_budget')}",
        ),
    ]
    out = kv_table([(k, v) for k, v in facts if v is not None])
    out += table([_reversal_row(r) for r in cats], REVERSAL_COLUMNS)
    if any(_is_num(r.get("recovery_targeted")) or _is_num(r.get("recovery_control")) for r in cats):
        out += figure(lambda fig: _draw_recovery(fig, cats), (8, 3.4), "reversal recovery")
    latents = [
        f"<li>{esc(r['category'])}: "
        + ", ".join(f"{int(x['latent'])} ({esc(str(x.get('direction')))})" for x in r.get("latents") or [])
        + "</li>"
        for r in cats
        if r.get("latents")
    ]
    if latents:
        out += f'<details class="small"><summary>latents trained on</summary><ul>{"".join(latents)}</ul></details>'
    return out


def _num(row: Mapping[str, Any], key: str) -> float:
    return float(row[key]) if _is_num(row.get(key)) else np.nan


def _draw_recovery(fig: Any, rows: list[Mapping[str, Any]]) -> str:
    ax = fig.subplots()
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [_num(r, "recovery_targeted") for r in rows], 0.4, color="#c0392b", label="targeted")
    ax.bar(x + 0.2, [_num(r, "recovery_control") for r in rows], 0.4, color="#a6acaf", label="control")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(
        x, [str(r.get("category", i)) for i, r in enumerate(rows)], rotation=40, ha="right", fontsize=9
    )
    ax.set_ylabel("recovery")
    ax.legend(fontsize=8)
    return "recovery after retraining on the targeted latents' contexts vs a control"


# ---------------------------------------------------------------------------------------------
# summary table


def summary_row(pair: PairData) -> dict[str, Any]:
    """One row of summary.tsv: the pair, crosscoder quality, attribution counts, metrics, reversal."""
    v, counts = pair.validation or {}, _direction_counts(pair)
    n_latents = (pair.summary or {}).get("n_latents")
    if n_latents is None:
        n_latents = (
            len(pair.latents) if pair.latents is not None else (sum(counts.values()) if counts else None)
        )
    row: dict[str, Any] = {"pair": pair.name, **{k: pair.meta.get(k) for k in ("base", "finetuned", "layer")}}
    row.update(
        n_latents=n_latents, n_amplified=counts.get("amplified"), n_suppressed=counts.get("suppressed")
    )
    row.update({k: v.get(k) for k in ("fvu_base", "fvu_ft", "l0", "dead_fraction")})
    q = explanation_quality(pair.explanations)
    row.update(
        {
            f"explanations_{k}": q.get(k)
            for k in ("n_explained", "n_failed", "detection_ba", "control_ba", "beats_control", "unparsed")
        }
    )
    ev = pair.evaluation or {}
    row["prevalence"] = ev.get("prevalence")
    if isinstance(row["prevalence"], Mapping):
        row["prevalence"] = row["prevalence"].get("all")
    for method, m in (ev.get("metrics") or {}).items():
        row.update({f"{method}_{k}": m.get(k) for k in METRIC_NAMES})
    for method, m in (ev.get("side_effect_metrics") or {}).items():
        row.update({f"{method}_side_{k}": m.get(k) for k in (*METRIC_NAMES, "auroc")})
    if isinstance(pair.reversal, Mapping):
        row.update(_reversal_columns(pair.reversal))
    return row


def _reversal_columns(rev: Mapping[str, Any]) -> dict[str, Any]:
    """The reversal categories and their mean recovery ratios (targeted and control)."""
    cats = [r for r in rev.get("categories") or [] if isinstance(r, Mapping)]
    out: dict[str, Any] = {"reversal_categories": ",".join(str(r.get("category")) for r in cats)}
    for arm in ("targeted", "control"):
        vals = [float(r[f"recovery_{arm}"]) for r in cats if _is_num(r.get(f"recovery_{arm}"))]
        out[f"reversal_recovery_{arm}"] = float(np.mean(vals)) if vals else None
    return out


# ---------------------------------------------------------------------------------------------
# assembling


def _slug(name: str) -> str:
    """An HTML id from a pair name (ids must not contain spaces)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "pair"


def section_ids(pair_name: str) -> dict[str, str]:
    """``{section: element id}`` of one pair (what the table of contents links to)."""
    slug = _slug(pair_name)
    return {key: f"{slug}-{key}" for key, _ in SECTIONS}


def _has_reversal(pair: PairData) -> bool:
    return pair.reversal is not None or "reversal" in pair.problems


def render_pair(pair: PairData, n_top: int = 10, n_examples: int = 3) -> str:
    """All sections of one pair (reversal only when its file exists)."""
    ids = section_ids(pair.name)
    render = {
        "overview": section_overview,
        "training": section_training,
        "delta": section_delta,
        "ratios": section_ratios,
        "latents": lambda p: section_latents(p, n_top, n_examples),
        "prediction": section_prediction,
        "metrics": section_metrics,
        "reversal": section_reversal,
    }
    parts = [f'<section id="{esc(_slug(pair.name))}"><h2>Pair {esc(pair.name)}</h2>']
    for key, title in SECTIONS:
        if key == "reversal" and not _has_reversal(pair):
            continue
        body = _missing(pair, key) if key == "reversal" and pair.reversal is None else render[key](pair)
        parts.append(f'<section id="{esc(ids[key])}"><h3>{esc(title)}</h3>{body}</section>')
    parts.append(_inputs_list(pair) + "</section>")
    return "".join(parts)


def _inputs_list(pair: PairData) -> str:
    items = "".join(f"<li>{esc(k)}: <code>{esc(v)}</code></li>" for k, v in pair.files.items() if v)
    return f'<details class="small"><summary>input files</summary><ul>{items}</ul></details>'


def _toc(pairs: Sequence[PairData]) -> str:
    items = []
    for pair in pairs:
        ids = section_ids(pair.name)
        subs = "".join(
            f'<li><a href="#{esc(ids[k])}">{esc(t)}</a></li>'
            for k, t in SECTIONS
            if k != "reversal" or _has_reversal(pair)
        )
        items.append(f'<li><a href="#{esc(_slug(pair.name))}">{esc(pair.name)}</a><ul>{subs}</ul></li>')
    return f'<nav id="toc"><h2>Contents</h2><ul><li><a href="#summary">Summary across pairs</a></li><li><a href="#suite">Suite</a></li>{"".join(items)}</ul></nav>'


SUMMARY_VIEW = [
    ("pair", "pair"),
    ("base", "base"),
    ("finetuned", "fine-tuned"),
    ("layer", "layer"),
    ("n_amplified", "amplified"),
    ("n_suppressed", "suppressed"),
    ("fvu_base", "FVU base"),
    ("fvu_ft", "FVU ft"),
    ("l0", "L0"),
    ("prevalence", "prevalence"),
    ("mneme_accuracy", "mneme accuracy"),
    ("mneme_precision", "mneme precision"),
    ("mneme_recall", "mneme recall"),
    ("mneme_f1", "mneme F1"),
    ("mneme_side_f1", "mneme side-effect F1"),
    ("mneme_side_auroc", "mneme side-effect AUROC"),
    ("activation_diff_side_f1", "activation-diff side-effect F1"),
]


def provenance() -> dict[str, str]:
    """Generation time, mneme version (pyproject.toml) and commit (read from .git, no git process)."""
    out = {
        "generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "version": "unknown",
        "commit": "unknown",
    }
    try:
        out["version"] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        pass
    out["commit"] = _git_commit(REPO / ".git") or "unknown"
    return out


def _git_commit(git: Path) -> str | None:
    """HEAD's commit from the .git directory (loose ref or packed-refs); None when unavailable."""
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:12]
        ref = head[5:]
        if (git / ref).is_file():
            return (git / ref).read_text().strip()[:12]
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0][:12]
    except OSError:
        return None
    return None


def render_html(
    pairs: Sequence[PairData],
    rows: list[dict[str, Any]],
    title: str,
    n_top: int,
    n_examples: int,
    suite: tuple[pd.DataFrame | None, pd.DataFrame | None] = (None, None),
) -> str:
    """The whole document."""
    p = provenance()
    header = f'<h1>{esc(title)}</h1><p class="meta">generated {esc(p["generated"])} · mneme {esc(p["version"])} · commit {esc(p["commit"])}</p>'
    summary = f'<section id="summary"><h2>Summary across pairs</h2>{table(rows, SUMMARY_VIEW)}<p class="small">All columns are in summary.tsv.</p></section>'
    summary += (
        f'<section id="suite"><h2>Suite: every predictor over the pairs</h2>{section_suite(*suite)}</section>'
    )
    body = "".join(render_pair(pair, n_top, n_examples) for pair in pairs)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head>'
        f"<body><main>{header}{_toc(pairs)}{summary}{body}</main></body></html>"
    )


def _write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write to a temporary name and rename, so a crash never leaves a half-written output."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def build_report(
    pairs: Mapping[str, Mapping[str, str | None]],
    html_path: str | os.PathLike,
    summary_path: str | os.PathLike,
    title: str = "mneme report",
    *,
    meta: Mapping[str, Mapping[str, Any]] | None = None,
    n_top: int = 10,
    n_examples: int = 3,
    suite: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Write the HTML report and summary.tsv for ``pairs`` ({pair: {input key: path}}).

    ``suite`` (``{"table": suite.tsv, "sensitivity": suite_sensitivity.tsv}``) adds the suite
    section.

    ``meta`` ({pair: {base, finetuned, corpus, layer}}, e.g. the config's ``pairs``) overrides what
    is inferred from the crosscoder config. Returns the summary table.
    """
    start = time.perf_counter()
    loaded = [load_pair(name, files, (meta or {}).get(name)) for name, files in pairs.items()]
    rows = [summary_row(p) for p in loaded]
    tables = tuple(
        pd.read_csv(suite[k], sep="\t") if suite and suite.get(k) and Path(suite[k]).is_file() else None
        for k in ("table", "sensitivity")
    )
    _write_atomic(html_path, render_html(loaded, rows, title, n_top, n_examples, tables))
    summary = pd.DataFrame(rows, columns=_union_keys(rows) or ["pair"])
    _write_atomic(summary_path, summary.to_csv(sep="\t", index=False, na_rep="NA"))
    log.info("report: %d pair(s) -> %s (%.1f s)", len(loaded), html_path, time.perf_counter() - start)
    return summary
