"""The CUDA path end to end: the tiny workflow with extraction and training on the GPU.

Runs only where torch sees a CUDA device (``benchmarks/gpu_check.sh`` runs it with the GPU
benchmarks); elsewhere it is reported as skipped with the reason.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_workflow import snakemake, tiny_config, write_config

from conftest import copy_workflow, write_gcide_sample

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA device: run benchmarks/gpu_check.sh on a GPU"
    ),
]


def test_tiny_workflow_on_cuda(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    cfg = tiny_config(write_gcide_sample(workdir / "gcide-sample.dict.gz"))
    cfg["crosscoder"]["device"] = "cuda"
    cfg["pairs"]["tiny"]["reverse"] = False
    write_config(workdir, cfg)
    snakemake(workdir)
    logs = workdir / "results" / "logs"
    extraction = "".join(p.read_text() for p in logs.glob("extract_activations/**/*.log"))
    assert "device cuda" in extraction, extraction[-2000:]
    training = "".join(p.read_text() for p in logs.glob("train_crosscoder/**/*.log"))
    assert " on cuda" in training, training[-2000:]
    validation = json.loads((workdir / "results" / "tiny" / "crosscoder" / "validation.json").read_text())
    assert 0 <= validation["fvu_base"] < 1 and 0 <= validation["fvu_ft"] < 1
    assert (workdir / "results" / "tiny" / "evaluation.json").is_file()
