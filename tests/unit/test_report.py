"""The HTML report and summary.tsv on small synthetic inputs, a pair with missing inputs, and the
real demo results when they exist."""

from __future__ import annotations

import importlib.util
import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from mneme import report
from mneme.attribution import attribution_summary
from mneme.contracts import delta_bin

REPO = Path(__file__).resolve().parents[2]
REAL = REPO / "results" / "bio-rmu"
EVIL = "<script>alert('x')</script>"

# ---------------------------------------------------------------------------------------------
# synthetic inputs


def _attribution() -> pd.DataFrame:
    rows = [  # latent, direction, strength, ratio_r, ratio_eps, delta
        (0, "amplified", 2.0, 0.1, 0.05, 0.8),
        (1, "amplified", 1.0, 0.3, 0.0, 0.7),
        (2, "suppressed", 1.5, 0.2, 0.1, 0.2),
        (3, "unchanged", 0.0, 1.0, 0.9, 0.5),
        (4, "unchanged", 0.1, 0.9, 1.1, 0.45),
        (5, "dead", np.nan, np.nan, np.nan, 0.5),
    ]
    df = pd.DataFrame(rows, columns=["latent", "direction", "strength", "ratio_r", "ratio_eps", "delta"])
    df["ratio_activation"] = df["ratio_r"]
    df["probe"] = np.where(df["delta"] >= 0.5, "ft", "base")
    df["delta_bin"] = delta_bin(df["delta"].to_numpy())
    df["freq"], df["n_active"], df["mode"] = 0.01, 10, "ratio"
    df["reason"] = np.where(df["direction"] == "dead", "dead", "")
    return df


def _contexts(latents: list[int]) -> pd.DataFrame:
    """Three top windows per latent; the peak is token 2 (id 102) with activation 5."""
    rows = []
    for lat in latents:
        for rank in range(3):
            acts = np.array([0.0, 1.0, 5.0 - rank, 0.5, 0.0], np.float32)
            rows.append(
                {
                    "latent": lat,
                    "kind": "top",
                    "rank": rank,
                    "token_ids": np.arange(100, 105, dtype=np.int32),
                    "activations": acts,
                    "max_activation": acts.max(),
                }
            )
    rows.append({**rows[0], "kind": "negative", "rank": 0})
    return pd.DataFrame(rows)


def _categories() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "latent": [0, 1, 2],
            "direction": ["amplified", "amplified", "suppressed"],
            "category_embedding": ["chemistry", "law", "none"],
            "conf_embedding": [0.8, 0.5, 0.1],
            "category_provenance": ["chemistry", "law", "biology"],
            "conf_provenance": [0.9, 0.4, 0.7],
            "category": ["chemistry", "law", "none"],
            "explanation": [f"acids {EVIL}", "contracts & courts", "plants"],
        }
    )


def _explanations(scored: bool) -> list[dict]:
    """explanations.jsonl: scored with controls (latent 1 no better than its control), or every
    request failed under interpret.on_error: skip."""
    if not scored:
        return [
            {
                "latent": lat,
                "explanation": "",
                "error": "APIConnectionError: Connection error.",
                "cached": False,
            }
            for lat in (0, 1, 2, 3)
        ]
    rows = []
    for lat, own, ctl in ((0, 0.9, 0.5), (1, 0.55, 0.6), (2, 0.8, 0.4), (3, 0.7, 0.5)):
        rows.append(
            {
                "latent": lat,
                "explanation": f"explanation {lat}",
                "error": None,
                "detection_n": 40,
                "detection_n_unparsed": 2,
                "detection_balanced_accuracy": own,
                "control_balanced_accuracy": ctl,
                "detection_margin": own - ctl,
                "beats_control": own > ctl,
            }
        )
    return rows


def _evaluation() -> dict:
    per = [
        {"category": "chemistry", "n": 40, "base_mean": -4.0, "ft_mean": -4.5, "delta": -0.5},
        {"category": "law", "n": 40, "base_mean": -4.0, "ft_mean": -4.02, "delta": -0.02},
        {"category": "biology", "n": 40, "base_mean": -4.0, "ft_mean": -6.0, "delta": -2.0},
    ]
    for row, (sig, truth, pred) in zip(per, [(True, True, True), (False, False, True), (True, True, False)]):
        row.update(p_value=0.001 if sig else 0.4, significant=sig, truth=truth, prediction=pred)
        row.update(
            direction=-1 if truth else 0, pred_score=4.0 if pred else 0.5, raw_delta=row["delta"] - 0.1
        )
        row["reference"] = "median of 2 categories"

    def scores(acc, prec, rec, f1, undefined=()):
        m = {"accuracy": acc, "precision": prec, "recall": rec, "f1": f1, "auroc": 0.75, "spearman": 0.5}
        return m | {"tp": 1, "fp": 1, "fn": 1, "tn": 0, "undefined": list(undefined)}

    mets = {
        "mneme": scores(1 / 3, 0.5, 0.5, 0.5),
        "all_positive": scores(2 / 3, 2 / 3, 1.0, 0.8),
        "decoder_norm_only": scores(1 / 3, None, 0.0, 0.0, ["precision"]),
    }
    uses = {"mneme": "crosscoder + corpus labels", "all_positive": "nothing", "decoder_norm_only": "decoder"}
    predictors = {
        k: {
            "uses": uses[k],
            "per_category": [],
            "metrics": {
                "all": m,
                "side_effects": m,
                "direction": {"accuracy": 0.5, "n": 2},
                "target": {"found": 0.0, "rank": 2.5, "n_categories": 3},
            },
        }
        for k, m in mets.items()
    }
    return {
        "config": {
            "task": "definition_loglik",
            "threshold": 0.1,
            "test": "bootstrap",
            "alpha": 0.05,
            "truth": "median",
        },
        "meta": {"pair": "full"},
        "categories": ["biology", "chemistry", "law"],
        "target": ["biology"],
        "prevalence": {"all": 2 / 3, "side_effects": 0.5},
        "per_category": per,
        "predictors": predictors,
        "metrics": {k: m for k, m in mets.items()},
        "side_effect_metrics": {k: m for k, m in mets.items()},
        "direction": {"accuracy": 0.5, "n": 2},
    }


def _write(path: Path, obj) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(obj, pd.DataFrame):
        obj.to_parquet(path, index=False)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in obj))
    else:
        path.write_text(json.dumps(obj))
    return str(path)


def make_pair(root: Path, name: str = "full", complete: bool = True) -> dict[str, str | None]:
    """Every input of one pair; ``complete=False`` leaves out contexts, reversal and the metrics."""
    d = root / name
    attr = _attribution()
    latents = attr[["latent", "delta", "delta_bin", "freq"]].assign(dead=attr["direction"] == "dead")
    metrics = [
        {
            "step": s,
            "tokens": s * 1024,
            "loss": 10 / s,
            "recon_loss": 9 / s,
            "aux_loss": 0.1,
            "fvu_base": 1 / s,
        }
        | {"fvu_ft": 1.1 / s, "l0": 32.0, "dead_fraction": 0.01 * s, "k": 32, "lr": 1e-3}
        for s in (1, 2, 3)
    ]
    stores = {
        r: f"results/activations/{m}/corp/L7/manifest.json" for r, m in (("base", "b"), ("finetuned", "f"))
    }
    files = {
        "latents": _write(d / "latents.parquet", latents),
        "attribution": _write(d / "attribution.parquet", attr),
        "attribution_summary": _write(d / "attribution_summary.json", attribution_summary(attr)),
        "selected": _write(d / "selected_latents.json", [0, 1, 2, 3]),
        "categories": _write(d / "categories.parquet", _categories()),
        "evaluation": _write(d / "evaluation.json", _evaluation()),
        "validation": _write(
            d / "validation.json", {"fvu_base": 0.03, "fvu_ft": 0.04, "l0": 30.5, "dead_fraction": 0.05}
        ),
        "crosscoder_config": _write(d / "config.json", {"dict_size": 6, "k": 2, "stores": stores}),
        "explanations": _write(d / "explanations.jsonl", _explanations(complete)),
        "tokenizer": None,
        "contexts": None,
        "metrics": None,
        "reversal": None,
    }
    if complete:
        files["contexts"] = _write(d / "contexts.parquet", _contexts([0, 1, 2, 3]))
        files["metrics"] = _write(d / "metrics.jsonl", metrics)
        rev = {
            "task": "definition_loglik",
            "target": ["biology"],
            "config": {"directions": ["suppressed"], "pool": "ranked", "method": "lora", "lr": 3e-4},
            "categories": [
                {
                    "category": "chemistry",
                    "status": "ok",
                    "n_latents": 2,
                    "latents": [
                        {"latent": 4, "direction": "suppressed"},
                        {"latent": 9, "direction": "suppressed"},
                    ],
                    "n_tokens": 4096,
                    "score_base": -4.0,
                    "score_ft": -5.0,
                    "score_targeted": -4.4,
                    "score_control": -4.9,
                    "recovery_targeted": 0.6,
                    "recovery_control": 0.1,
                    "target_rebound_targeted": {"biology": 0.25},
                    "utility_change_targeted": 0.2,
                    "contexts_targeted": list(range(40)),
                },
                {"category": "law", "status": "no_latents", "reason": "no suppressed latent mapped to law"},
            ],
        }
        files["reversal"] = _write(d / "reversal.json", rev)
    return files


@pytest.fixture()
def built(tmp_path) -> tuple[str, pd.DataFrame, Path]:
    pairs = {"full": make_pair(tmp_path), "partial pair": make_pair(tmp_path, "partial", complete=False)}
    out = tmp_path / "out"
    report.build_report(pairs, out / "report.html", out / "summary.tsv", title="Test <report>")
    html = (out / "report.html").read_text()
    return html, pd.read_csv(out / "summary.tsv", sep="\t"), out


def _section(html: str, sid: str) -> str:
    """The HTML of the section with id ``sid`` (up to the next section of the same pair)."""
    start = html.index(f'<section id="{sid}">')
    end = html.find("<section id=", start + 10)
    return html[start : end if end > 0 else len(html)]


# ---------------------------------------------------------------------------------------------
# tests


def test_delta_edges_match_attribution_bins():
    """The dashed lines of the histogram are where mneme.attribution.delta_bin changes bin."""
    for edge in report.DELTA_EDGES:
        below, above = delta_bin(np.array([edge - 1e-6, edge + 1e-6]))
        assert below != above, edge


def test_html_has_every_section_and_is_self_contained(built):
    html, _, _ = built
    for pair in ("full", "partial pair"):
        for key, title in report.SECTIONS:
            sid = report.section_ids(pair)[key]
            if key == "reversal" and pair == "partial pair":
                assert f'id="{sid}"' not in html  # no reversal file: no section
                continue
            assert f'<section id="{sid}"><h3>{title}</h3>' in html
            assert f'href="#{sid}"' in html  # table of contents
    assert 'id="partial-pair"' in html and "<h2>Pair partial pair</h2>" in html
    assert html.count("data:image/png;base64,") >= 6
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert "<script" not in html.lower().replace("&lt;script", "")
    assert "<title>Test &lt;report&gt;</title>" in html
    assert "generated " in html and "mneme " in html


def test_text_from_files_is_escaped(built):
    html, _, _ = built
    assert EVIL not in html
    assert "acids &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "contracts &amp; courts" in html


def test_contexts_highlight_the_peak_token(built):
    html, _, _ = built
    latents = _section(html, "full-latents")
    peak = '<span class="tok peak" style="background:rgba(230,126,34,1.00)" title="5">⟨102⟩ </span>'
    assert peak in latents
    assert '<span class="tok" title="0">⟨100⟩ </span>' in latents  # zero activation: no colour
    assert latents.count('class="tok peak"') == 3 * 4  # 3 windows for each of 4 latents
    assert "no tokenizer: contexts are shown as token ids" in latents


def test_top_latents_are_ordered_and_include_controls(built):
    html, _, _ = built
    latents = _section(html, "full-latents")
    amplified = latents[latents.index("Top amplified") : latents.index("Top suppressed")]
    assert amplified.index("<td>0</td>") < amplified.index("<td>1</td>")  # by strength
    assert "Unchanged controls (1)" in latents  # latent 3 selected; latent 4 not
    assert "chemistry" in amplified and "provenance: chemistry (0.9)" in amplified


def test_explanation_quality_is_shown_per_latent_and_on_average(built):
    html, summary, _ = built
    latents = _section(html, "full-latents")
    # means over the 4 scored latents: (0.9+0.55+0.8+0.7)/4 = 0.7375, controls 0.5; 3 of 4 beat theirs
    assert "mean balanced accuracy <b>0.7375</b> over 4 scored latents" in latents
    assert "control (another latent's explanation on the same examples) 0.5" in latents
    assert "75 % of the explanations beat their control" in latents
    assert latents.count("✗</span>") == 1  # latent 1, in the amplified table
    row = summary.set_index("pair").loc["full"]
    assert row["explanations_detection_ba"] == pytest.approx(0.7375)
    assert row["explanations_beats_control"] == pytest.approx(0.75)


def test_an_unreadable_judge_is_flagged(tmp_path):
    """A judge that cannot answer the detection format: the report says the score measures that."""
    files = make_pair(tmp_path)
    rows = [
        {
            "latent": 0,
            "explanation": "x",
            "detection_n": 40,
            "detection_n_unparsed": 40,
            "detection_balanced_accuracy": 0.0,
        }
    ]
    files["explanations"] = _write(tmp_path / "full" / "explanations.jsonl", rows)
    report.build_report({"full": files}, tmp_path / "r.html", tmp_path / "s.tsv", title="t")
    latents = _section((tmp_path / "r.html").read_text(), "full-latents")
    assert "100 % of the detection judgments could not be read" in latents
    # the fixture's judge reads 38 of 40: no warning
    html, _, _ = _built_default(tmp_path / "ok")
    assert "could not be read" not in _section(html, "full-latents")


def _built_default(root):
    pairs = {"full": make_pair(root)}
    report.build_report(pairs, root / "r.html", root / "s.tsv", title="t")
    return (root / "r.html").read_text(), None, None


def test_failed_explanations_are_a_warning_not_silence(built):
    """interpret.on_error: skip with every request failing: the report says no explanation was obtained."""
    html, summary, _ = built
    latents = _section(html, "partial-pair-latents")
    assert "4 of 4 explanation requests failed" in latents and "APIConnectionError" in latents
    assert "No explanation was obtained" in latents
    assert summary.set_index("pair").loc["partial pair", "explanations_n_failed"] == 4


def test_metrics_and_prediction_sections(built):
    html, _, _ = built
    metrics = _section(html, "full-metrics")
    assert '<tr class="mneme">' in metrics
    assert "decoder_norm_only (side_effects) precision: nothing predicted as affected" in metrics
    assert (
        "Side effects (target excluded)" in metrics
        and "auroc" in metrics
        and "crosscoder + corpus labels" in metrics
    )
    assert '<td class="na">n/a</td>' in metrics
    # the all-categories table says where the target ranked and whether it was predicted
    assert "<th>target rank</th>" in metrics and '<td class="num">2.5</td>' in metrics
    prediction = _section(html, "full-prediction")
    assert "definition_loglik" in prediction and "data:image/png;base64," in prediction
    assert prediction.count("<tr>") >= 3
    assert "median of 2 categories" in prediction and "Δ beyond reference" in prediction
    # the fixture's mneme ranks the target 2.5 of 3: said in the table and as a warning
    assert "target&#x27;s rank by mneme&#x27;s score" in prediction and "2.5 of 3" in prediction
    assert '<p class="warn">mneme' in prediction


def test_no_target_warning_when_the_target_ranks_first():
    ev = {"predictors": {"mneme": {"metrics": {"target": {"found": 1.0, "rank": 1.0, "n_categories": 11}}}}}
    assert report._target_warning(ev) == ""
    assert report._target_ranks(ev) == [("target's rank by mneme's score", "1 of 11")]
    ev["predictors"]["mneme"]["metrics"]["target"]["rank"] = 10.0
    assert "ranks the intervention's own category 10 of 11" in report._target_warning(ev)
    ev["predictors"]["activation_diff"] = {"metrics": {"target": {"rank": 2.0, "n_categories": 11}}}
    assert "; the activation difference ranks it 2" in report._target_warning(ev)
    # an evaluation.json made before the target entry existed: no rank, no warning
    older = {"predictors": {"mneme": {"metrics": {"all": {}}}}}
    assert report._target_warning(older) == "" and report._target_ranks(older) == []


def test_reversal_section(built):
    html, _, _ = built
    rev = _section(html, "full-reversal")
    assert "R targeted" in rev and "data:image/png;base64," in rev
    assert "biology +0.25" in rev  # the target's change, readable
    assert "no_latents: no suppressed latent mapped to law" in rev
    assert "latents trained on" in rev and "4 (suppressed)" in rev
    assert "contexts_targeted" not in rev  # context indices are not dumped
    assert "gain on c beyond utility (targeted)" in rev
    assert ">0.4<" in rev  # (-4.4 - -5.0) - 0.2: the gain on chemistry beyond the others' gain


def test_missing_optional_files_render_not_available(built):
    html, _, _ = built
    assert "not available" in _section(html, "partial-pair-training")
    latents = _section(html, "partial-pair-latents")
    assert "example contexts not available" in latents and 'class="na">not available</span>' in latents
    assert "data:image/png;base64," in _section(html, "partial-pair-ratios")


def test_summary_tsv_has_one_row_per_pair(built):
    _, summary, _ = built
    assert list(summary["pair"]) == ["full", "partial pair"]
    row = summary.iloc[0]
    assert (row["base"], row["finetuned"], row["layer"]) == ("b", "f", 7)
    assert (row["n_latents"], row["n_amplified"], row["n_suppressed"]) == (6, 2, 1)
    assert row["fvu_base"] == pytest.approx(0.03) and row["l0"] == pytest.approx(30.5)
    assert row["prevalence"] == pytest.approx(2 / 3)
    assert row["mneme_f1"] == pytest.approx(0.5) and row["all_positive_f1"] == pytest.approx(0.8)
    assert np.isnan(row["decoder_norm_only_precision"])
    assert row["reversal_recovery_targeted"] == pytest.approx(0.6)
    assert row["reversal_recovery_control"] == pytest.approx(0.1)
    assert row["reversal_categories"] == "chemistry,law"
    assert np.isnan(summary.iloc[1]["reversal_recovery_targeted"])


def test_unreadable_file_is_reported_not_fatal(tmp_path):
    files = make_pair(tmp_path, complete=False)
    Path(files["evaluation"]).write_text("{not json")
    files["latents"] = str(tmp_path / "nope.parquet")
    out = tmp_path / "out"
    report.build_report({"p": files}, out / "r.html", out / "s.tsv")
    html = (out / "r.html").read_text()
    assert "could not read evaluation.json" in _section(html, "p-metrics")
    assert "not available" in _section(html, "p-delta")


def test_thresholds_come_from_the_attribution_summary():
    from mneme.attribution import attribution_summary

    assert report._thresholds(None) == {
        **report.attribution_defaults(),
        "source": report._thresholds(None)["source"],
    }
    table = pd.DataFrame(
        {
            "direction": ["amplified"],
            "delta_bin": ["shared"],
            "strength": [1.0],
            "mode": ["simple"],
            "reason": [""],
        }
    )
    summary = attribution_summary(table, {"mode": "simple", "tau_r": 0.4, "tau_eps": 0.1, "kappa": 3.0})
    t = report._thresholds(json.loads(json.dumps(summary)))
    assert (t["mode"], t["tau_r"], t["tau_eps"], t["kappa"], t["source"]) == (
        "simple",
        0.4,
        0.1,
        3.0,
        "attribution_summary.json",
    )


def test_tokenizer_decodes_contexts(tmp_path, tiny_model):
    files = make_pair(tmp_path)
    files["tokenizer"] = tiny_model
    out = tmp_path / "out"
    report.build_report({"t": files}, out / "r.html", out / "s.tsv")
    latents = _section((out / "r.html").read_text(), "t-latents")
    assert "⟨102⟩" not in latents and 'class="tok peak"' in latents
    from mneme.models import load_tokenizer

    text = report.esc(load_tokenizer(tiny_model).decode([102]).replace("\n", "↵"))
    assert f'title="5">{text}</span>' in latents


def test_rule_script(tmp_path):
    spec = importlib.util.spec_from_file_location("report_rule", REPO / "workflow_scripts" / "report.py")
    rule = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rule)
    out = tmp_path / "out"
    smk = SimpleNamespace(
        params=SimpleNamespace(
            files={"p": make_pair(tmp_path, complete=False)},
            meta={"p": {"base": "b0", "finetuned": "f0", "corpus": "c0", "layer": 3}},
        ),
        input=SimpleNamespace(suite=str(tmp_path / "suite.tsv"), sensitivity=str(tmp_path / "grid.tsv")),
        output=SimpleNamespace(html=str(out / "report.html"), summary=str(out / "summary.tsv")),
        log=[str(tmp_path / "report.log")],
    )
    suite = pd.DataFrame(
        [
            {"pair": p, "predictor": name, "uses": "x", "scope": scope, "f1": f1, "auroc": 0.7}
            for p, f1 in (("p", 0.5), ("mean", 0.5))
            for name in ("mneme", "activation_diff")
            for scope in ("side_effects", "all")
        ]
    )
    suite.to_csv(smk.input.suite, sep="\t", index=False)
    pd.DataFrame(
        [
            {"route": "provenance", "z_pred": z, "side_effect_f1": 0.5, "group": "dev", "default": z == 3.0}
            for z in (1.0, 3.0)
        ]
    ).to_csv(smk.input.sensitivity, sep="\t", index=False)
    rule.main(smk)
    html = (out / "report.html").read_text()
    assert "<th>base</th><td>b0</td>" in html
    suite_html = _section(html, "suite")
    assert (
        "Mean over the development pairs: side effects" in suite_html
        and "Sensitivity of the mneme routes" in suite_html
    )
    assert "held-out" not in suite_html  # no pair is held out here
    grid_html = suite_html[suite_html.index("Sensitivity of the mneme routes") :]
    assert grid_html.count('class="mneme"') == 1  # the configured setting's row, and only it
    assert list(pd.read_csv(out / "summary.tsv", sep="\t")["pair"]) == ["p"]


def test_sensitivity_table_varies_one_block_at_a_time():
    rows = [
        {
            "route": route,
            "z_pred": z,
            "z_cap": cap,
            "membership": mem,
            "reference": ref,
            "side_effect_f1": 0.1,
        }
        for route in ("provenance", "contexts")
        for z in (1.0, 3.0)
        for cap in (5.0, 10.0)
        for mem in ("mass", "lift")
        for ref in ("corpus", "general")
    ]
    grid = pd.DataFrame(rows)
    mine = {"z_pred": 3.0, "z_cap": 10.0, "membership": "mass", "reference": "corpus"}
    grid["default"] = np.logical_and.reduce([grid[k] == v for k, v in mine.items()])
    got = report._one_at_a_time(grid)
    expected = [
        r
        for r in rows
        if (r["z_cap"] == 10.0 or (r["z_pred"], r["membership"], r["reference"]) == (3.0, "mass", "corpus"))
        and (r["route"] == "provenance" or r["membership"] == "mass")
    ]
    assert got.drop(columns="default").to_dict("records") == expected
    assert report._one_at_a_time(grid.drop(columns="default")).equals(grid.drop(columns="default"))


@pytest.mark.skipif(not (REAL / "evaluation.json").is_file(), reason="no demo results in results/bio-rmu")
def test_real_bio_rmu(tmp_path):
    c = REAL / "crosscoder"
    files = {
        "latents": REAL / "latents.parquet",
        "attribution": REAL / "attribution.parquet",
        "attribution_summary": REAL / "attribution_summary.json",
        "selected": REAL / "selected_latents.json",
        "contexts": REAL / "contexts.parquet",
        "categories": REAL / "categories.parquet",
        "evaluation": REAL / "evaluation.json",
        "metrics": c / "metrics.jsonl",
        "validation": c / "validation.json",
        "crosscoder_config": c / "config.json",
        "tokenizer": REPO / "results" / "models" / "smollm2",
        "reversal": REAL / "reversal.json",
    }
    t0 = time.perf_counter()
    summary = report.build_report(
        {"bio-rmu": {k: str(v) for k, v in files.items()}}, tmp_path / "r.html", tmp_path / "s.tsv"
    )
    html = (tmp_path / "r.html").read_text()
    print(f"real report: {len(html.encode()) / 1024:.0f} KiB in {time.perf_counter() - t0:.1f} s")
    for key, _ in report.SECTIONS[:-1]:
        assert f'id="bio-rmu-{key}"' in html
    assert summary.loc[0, "base"] and summary.loc[0, "n_latents"] > 0
    assert html.count("data:image/png;base64,") >= 4
