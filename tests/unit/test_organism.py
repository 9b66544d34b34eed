"""Model organisms: RMU steers forget activations and spares retain ones, the LM methods move the
LM loss the right way, runs are deterministic, options are checked, outputs reload."""

from __future__ import annotations

import gzip
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from mneme.gcide import split_part
from mneme.models import read_card, weights_path
from mneme.organism import (
    SUMMARY,
    encode,
    layer_output,
    lm_loss,
    make_organism,
    organism_data,
    resolve_options,
    steering_vector,
)

FORGET = [
    "The aardvark is a burrowing mammal that feeds on ants and termites.",
    "A mollusk with a spiral shell lives on rocks along the coast.",
    "The heron is a wading bird with long legs and a long neck.",
    "Frogs lay eggs in ponds, and the tadpoles breathe with gills.",
    "The oak tree bears acorns, and its leaves fall in autumn.",
    "A beetle has hard wing covers and six jointed legs.",
    "The salmon swims upstream to spawn in cold rivers.",
    "Mosses grow in damp shade and reproduce by spores.",
    "The bat hunts insects at night and sleeps by day in caves.",
    "A lizard sheds its skin and basks in the warm sun.",
    "Bees gather nectar from flowers and make honey in hives.",
    "The whale is a marine mammal that breathes air through a blowhole.",
]
RETAIN = [
    "A contract binds the parties who sign it to its terms.",
    "The court may dismiss a claim brought after the statute of limitations.",
    "An heir receives property under a will or by inheritance.",
    "The judge instructed the jury before the verdict was read.",
    "A lease grants the tenant possession of land for a term of years.",
    "Copyright protects original works of authorship fixed in a medium.",
    "The defendant appealed the conviction to a higher court.",
    "A trustee holds property for the benefit of another person.",
    "Each party shall bear its own costs unless the court orders otherwise.",
    "The license permits copying and distribution of the program.",
    "Fraud voids a contract induced by a false statement of fact.",
    "The plaintiff must prove damages by a preponderance of the evidence.",
]
TEXTS = (FORGET, RETAIN)


def spec(method: str, **options) -> dict:
    return {
        "source": "organism",
        "base": "tiny",
        "method": method,
        "forget_categories": [],
        "options": options,
    }


def load(path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


@torch.no_grad()
def hidden(model, tok, texts, layer):
    """Block-``layer`` output on real tokens (first position and padding dropped)."""
    ids, mask = encode(tok, texts, 48)
    keep = mask.bool()
    keep[:, 0] = False
    return layer_output(model, layer, ids, mask)[keep]


@torch.no_grad()
def loss_on(model, tok, texts) -> float:
    return float(lm_loss(model, *encode(tok, texts, 48)))


RMU = {
    "layer": 2,
    "update_layers": [1, 2],
    "steering_coeff": 3.0,
    "alpha": 10.0,
    "lr": 3e-3,
    "steps": 60,
    "batch_size": 4,
    "max_len": 32,
    "seed": 3,
}


@pytest.fixture(scope="module")
def rmu_run(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("organism") / "tiny-rmu"
    summary = make_organism("tiny-rmu", spec("rmu", **RMU), tiny_model, out, None, device="cpu", texts=TEXTS)
    return out, summary


def test_rmu_steers_forget_and_spares_retain(tiny_model, rmu_run):
    out, summary = rmu_run
    tok = AutoTokenizer.from_pretrained(tiny_model)
    base, org = load(tiny_model), load(out)
    u = steering_vector(base.config.hidden_size, RMU["seed"])
    target = summary["steering_norm"] * u
    assert summary["steering_norm"] == pytest.approx(RMU["steering_coeff"] * summary["activation_norm"])

    f0, f1 = hidden(base, tok, FORGET, 2), hidden(org, tok, FORGET, 2)
    cos0 = torch.nn.functional.cosine_similarity(f0, u[None], dim=-1).mean()
    cos1 = torch.nn.functional.cosine_similarity(f1, u[None], dim=-1).mean()
    assert abs(cos0) < 0.3 and cos1 > 0.8, (cos0, cos1)
    dist0, dist1 = (f0 - target).norm(dim=-1).mean(), (f1 - target).norm(dim=-1).mean()
    assert dist1 < 0.4 * dist0, (dist0, dist1)

    r0, r1 = hidden(base, tok, RETAIN, 2), hidden(org, tok, RETAIN, 2)
    forget_change = ((f1 - f0).norm(dim=-1) / f0.norm(dim=-1)).mean()
    retain_change = ((r1 - r0).norm(dim=-1) / r0.norm(dim=-1)).mean()
    assert retain_change < 0.25 * forget_change, (retain_change, forget_change)
    assert summary["final"]["forget"] < 0.5 * summary["initial"]["forget"]


def test_rmu_changes_only_the_chosen_mlps(tiny_model, rmu_run):
    out, _ = rmu_run
    before = load_file(f"{tiny_model}/model.safetensors")
    after = load_file(f"{out}/model.safetensors")
    assert before.keys() == after.keys()
    chosen = [k for k in before if any(k.startswith(f"model.layers.{i}.mlp.") for i in RMU["update_layers"])]
    assert len(chosen) == 3 * len(RMU["update_layers"])  # gate, up and down projections
    for key in before:
        if key in chosen:
            assert not torch.equal(before[key], after[key]), key
        else:
            assert torch.equal(before[key], after[key]), key


def test_output_directory_reloads_with_card(tiny_model, rmu_run):
    out, summary = rmu_run
    assert isinstance(load(out), torch.nn.Module)
    card = read_card(out)
    assert card["name"] == "tiny-rmu" and card["weights"] == "."
    assert card["spec"]["method"] == "rmu"
    assert card["tokenizer_fingerprint"] == read_card(tiny_model)["tokenizer_fingerprint"]
    assert weights_path(out) == str(out.resolve())
    on_disk = json.loads((out / SUMMARY).read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["options"]["update_layers"] == [1, 2] and on_disk["n_forget_docs"] == len(FORGET)
    assert not any(p.name.endswith(".tmp") for p in out.parent.iterdir())
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"


def test_gradient_ascent_raises_forget_loss_and_is_deterministic(tiny_model, tmp_path):
    opts = {"lr": 1e-3, "steps": 6, "batch_size": 4, "max_len": 32, "retain_weight": 0.5, "seed": 1}
    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        make_organism("ga", spec("gradient_ascent", **opts), tiny_model, out, None, device="cpu", texts=TEXTS)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    assert loss_on(load(runs[0]), tok, FORGET) > loss_on(load(tiny_model), tok, FORGET) + 0.1
    w0, w1 = load_file(f"{runs[0]}/model.safetensors"), load_file(f"{runs[1]}/model.safetensors")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    summary = json.loads((runs[0] / SUMMARY).read_text())
    assert set(summary["final"]) == {"loss", "forget", "retain"}


def test_finetune_lowers_train_loss_from_files(tiny_model, tmp_path):
    (tmp_path / "a.txt").write_text("\n\n".join(FORGET[:6]))
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in FORGET[6:]))
    opts = {"lr": 1e-3, "steps": 8, "batch_size": 4, "max_len": 32, "files": [str(tmp_path / "*.*")]}
    out = tmp_path / "ft"
    summary = make_organism("ft", spec("finetune", **opts), tiny_model, out, None, device="cpu")
    assert summary["n_forget_docs"] == len(FORGET) and summary["n_retain_docs"] == 0
    tok = AutoTokenizer.from_pretrained(tiny_model)
    assert loss_on(load(out), tok, FORGET) < loss_on(load(tiny_model), tok, FORGET) - 0.1


def test_resolve_options_defaults_and_errors():
    opts = resolve_options("rmu", {"layer": 5})
    assert opts["update_layers"] == [3, 4, 5] and opts["seed"] == 0
    assert resolve_options("rmu", {"layer": 1})["update_layers"] == [0, 1]
    assert resolve_options("finetune", None)["files"] == []
    with pytest.raises(ValueError, match=r"options: unknown key\(s\) 'bogus'; allowed keys: alpha,"):
        resolve_options("rmu", {"bogus": 1})
    with pytest.raises(ValueError, match=r"options: unknown key\(s\) 'retain_weight'"):
        resolve_options("finetune", {"retain_weight": 1.0})
    with pytest.raises(ValueError, match=r"options\.lr"):
        resolve_options("gradient_ascent", {"lr": -1})
    with pytest.raises(ValueError, match=r"options\.steps"):
        resolve_options("rmu", {"steps": 2.5})
    with pytest.raises(ValueError, match=r"options\.update_layers"):
        resolve_options("rmu", {"layer": 3, "update_layers": [4]})
    with pytest.raises(ValueError, match="method"):
        resolve_options("distill", {})


def test_make_organism_rejects_bad_layer(tiny_model, tmp_path):
    with pytest.raises(ValueError, match=r"options\.layer: 7 out of range"):
        make_organism("x", spec("rmu", layer=7, steps=1), tiny_model, tmp_path / "x", None, texts=TEXTS)
    with pytest.raises(ValueError, match=r"models\.x\.options: unknown key\(s\) 'alhpa'"):
        make_organism("x", spec("rmu", alhpa=1.0), tiny_model, tmp_path / "x", None, texts=TEXTS)
    assert not (tmp_path / "x").exists()


ENTRIES = {
    "Aardvark": "(Zool.) A burrowing mammal of Africa that feeds on ants.",
    "Abalone": "(Zool.) A univalve mollusk of the genus Haliotis.",
    "Acorn": "(Bot.) The fruit of the oak, a nut in a cup.",
    "Heron": "(Zool.) A long-legged wading bird of many species.",
    "Moss": "(Bot.) A small green plant growing in damp places.",
    "Beetle": "(Zool.) An insect with hard wing covers.",
    "Acid": "(Chem.) A sour substance that turns litmus red.",
    "Alkali": "(Chem.) A caustic substance that neutralizes acids.",
    "Lease": "(Law) A contract granting the use of land for a term.",
    "Heir": "(Law) One who inherits property by law from another.",
    "Table": "A flat surface on legs used for meals and work.",
    "Lamp": "A vessel with a wick for burning oil to give light.",
}
PARTS = {"organism": 0.5, "rest": 0.5}


def test_organism_data_reads_the_organism_part(tmp_path):
    path = tmp_path / "gcide.dict.gz"
    with gzip.open(path, "wt") as fh:
        for word, sense in ENTRIES.items():
            fh.write(f"\n{word} \\{word}\\, n.\n   1. {sense}\n      [1913 Webster]\n")
    cats = tmp_path / "cats.yaml"
    cats.write_text(
        "categories:\n"
        "  biology: {description: living things, tags: ['Zool.', 'Bot.']}\n"
        "  chemistry: {description: substances, tags: ['Chem.']}\n"
        "  law: {description: legal terms, tags: ['Law']}\n"
        "general_category: general\n"
    )
    cfg = {"path": str(path), "categories": str(cats), "parts": PARTS, "salt": "test"}

    def expected(categories):
        return [
            f"{w}: {s.split(') ', 1)[-1]}"
            for w, s in ENTRIES.items()
            if split_part(w, PARTS, "test") == "organism" and category(s) in categories
        ]

    def category(sense):
        tag = sense[1 : sense.find(")")] if sense.startswith("(") else ""
        return {"Zool.": "biology", "Bot.": "biology", "Chem.": "chemistry", "Law": "law"}.get(tag, "general")

    forget, retain = organism_data(cfg, ["biology"], [])
    assert forget == expected({"biology"}) and forget
    assert retain == expected({"chemistry", "law", "general"}) and retain
    assert len(forget) + len(retain) < len(ENTRIES)  # the other part is left out
    forget, retain = organism_data(cfg, ["biology"], ["law"])
    assert retain == expected({"law"})
    with pytest.raises(ValueError, match="unknown categories"):
        organism_data(cfg, ["zoology"], [])
    with pytest.raises(ValueError, match="both forget and retain"):
        organism_data(cfg, ["law"], ["law"])
