"""Shared fixtures: a tiny random Llama, a small GCIDE sample, a copy of the workflow."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GCIDE = Path("/usr/share/dictd/gcide.dict.dz")

TINY_SPEC = {
    "source": "tiny",
    "seed": 0,
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 512,
    "tokenizer_files": ["/usr/share/common-licenses/*"],
}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A prepared tiny model directory (random weights, locally trained BPE tokenizer)."""
    from mneme.models import prepare_model

    out = tmp_path_factory.mktemp("models") / "tiny"
    prepare_model("tiny", dict(TINY_SPEC), out)
    return str(out)


def write_gcide_sample(dest: Path, n_lines: int = 60000) -> Path:
    """The first ``n_lines`` lines of the real GCIDE file (whole entries), gzipped."""
    if not GCIDE.is_file():
        pytest.fail(
            f"{GCIDE} is missing: install Debian's dictionary with `apt-get install dict-gcide` (make setup does)"
        )
    with gzip.open(GCIDE, "rt", errors="replace") as src, gzip.open(dest, "wt") as out:
        for i, line in enumerate(src):
            if i >= n_lines and not line.strip():
                break
            out.write(line)
    return dest


@pytest.fixture(scope="session")
def gcide_sample(tmp_path_factory) -> Path:
    return write_gcide_sample(tmp_path_factory.mktemp("gcide") / "gcide-sample.dict.gz")


def copy_workflow(dest: Path) -> Path:
    """Copy the workflow (Snakefile, rules, scripts, config, profiles) so a test may edit it."""
    for name in ("Snakefile", "rules", "workflow_scripts", "config", "envs", "profiles", "report"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    if (REPO / ".venv-vllm").is_dir():  # interpret.vllm.python is relative to the working directory
        (dest / ".venv-vllm").symlink_to(REPO / ".venv-vllm")
    return dest


def snakemake_bin() -> str:
    exe = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "snakemake"
    return str(exe) if exe.exists() else shutil.which("snakemake") or "snakemake"


@pytest.fixture(autouse=True)
def _one_thread():
    """torch on one thread in tests: deterministic reductions, and fair on a shared 2-core box."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
