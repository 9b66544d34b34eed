"""interpret_latents: cache behaviour, errors, detection scoring, keywords backend, retries."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mneme.interpret import (
    JsonlCache,
    interpret_latents,
    read_table,
    run_interpretation,
    select_latents,
    with_defaults,
)
from mneme.llm_backends import (
    KEYWORDS_PREFIX,
    KeywordsBackend,
    OpenAIBackend,
    corpus_token_counts,
    log_odds_z,
)

VOCAB = ["<s>", " the", " a", " of", " cat", " dog", " court", " law", " sat", " ran", " judge", ".", " leaf"]
ID = {w.strip(): i for i, w in enumerate(VOCAB)}


class ToyTokenizer:
    all_special_ids = [0]

    def decode(self, ids):
        return "".join(VOCAB[i] for i in ids)

    def __len__(self):
        return len(VOCAB)


TOK = ToyTokenizer()


def ids(text: str) -> list[int]:
    return [ID[w] for w in text.split()]


def make_contexts(n_top: dict[int, int] | None = None) -> pd.DataFrame:
    """Latents 1-4. Latent 1 fires on 'cat' (quantile examples contain cat, negatives do not)."""
    words = {1: "cat", 2: "dog", 3: "court", 4: "judge"}
    n_top = n_top or {1: 3, 2: 3, 3: 2, 4: 3}
    rows = []
    for latent, word in words.items():
        for rank in range(n_top[latent]):
            toks = ids(f"the {word} sat of a {word} .")
            acts = [0.0, 4.0 - rank, 0.5, 0.0, 0.0, 3.0 - rank, 0.0]
            rows.append((latent, "top", rank, -1, rank, 1, toks, acts, max(acts)))
        for q in range(4):
            toks = ids(f"a {word} ran the .")
            rows.append((latent, "quantile", q, q, 10 + q, 1, toks, [0, 1.0, 0, 0, 0], 1.0))
        for r in range(4):
            toks = ids("the law of the leaf ." if r % 2 else "a law ran .")
            rows.append((latent, "negative", r, -1, 20 + r, 0, toks, [0.0] * len(toks), 0.0))
    cols = ["latent", "kind", "rank", "quantile", "context", "peak_position", "token_ids", "activations"]
    return pd.DataFrame(rows, columns=cols + ["max_activation"])


class FakeBackend:
    """Answers explainer prompts with the first highlighted word, detection prompts by looking for
    a keyword; counts prompts; can crash after ``crash_after`` answers or fail chosen prompts."""

    name = "fake"
    model = "fake-model"

    def __init__(
        self,
        crash_after: int | None = None,
        fail_when: str | None = None,
        judge_word: str | None = "cat",
        yes_bias: float | None = None,
    ):
        self.yes_bias = yes_bias
        self.prompts: list = []
        self.crash_after = crash_after
        self.fail_when = fail_when
        self.judge_word = judge_word

    def answer(self, messages, top_logprobs: int = 0) -> str | dict[str, float]:
        user = messages[-1]["content"]
        if top_logprobs:  # the yes_no judge: first-token alternatives, " Yes" likelier on a hit
            excerpt = user.split("Excerpt: ", 1)[1].split("\n\n", 1)[0]
            word = self.judge_word or user.split("\n", 1)[0].split()[-1]
            if self.yes_bias is not None:  # leans to Yes on everything, by the same margin
                return {" Yes": -0.1, " No": -0.1 - self.yes_bias, "Maybe": -5.0}
            return {" Yes": -0.2, " No": -1.8} if word in excerpt else {" No": -0.3, "yes": -1.6}
        if user.startswith("Feature description:"):
            lines = [ln for ln in user.split("\n") if ln[:1].isdigit()]
            word = self.judge_word or user.split("\n", 1)[0].split()[-1]  # None: follow the description
            return "[" + ", ".join("1" if word in ln else "0" for ln in lines) + "]"
        word = user.split("<<", 1)[1].split(">>", 1)[0].strip()
        return f"The examples share a word.\n[EXPLANATION]: the word {word}\n\nextra junk"

    def generate_many(self, prompts, max_tokens=None, temperature=None, top_logprobs=0, **decoding):
        for i, messages in enumerate(prompts):
            if self.crash_after is not None and len(self.prompts) >= self.crash_after:
                raise KeyboardInterrupt("simulated crash")
            self.prompts.append(messages)
            if self.fail_when and self.fail_when in messages[-1]["content"]:
                yield i, RuntimeError("server said no")
            else:
                yield i, self.answer(messages, top_logprobs)


CFG = {"n_examples": 3, "max_tokens": 32, "examples": "top"}  # cache tests: top examples only


def test_second_run_asks_nothing(tmp_path):
    ctx, cache = make_contexts(), tmp_path / "cache.jsonl"
    b1 = FakeBackend()
    df1 = interpret_latents(ctx, [1, 2, 3, 4], TOK, b1, cache, CFG, "fake:v1")
    assert len(b1.prompts) == 4
    assert df1["explanation"].tolist() == ["the word cat", "the word dog", "the word court", "the word judge"]
    assert set(df1["backend"]) == {"fake"} and set(df1["explainer"]) == {"fake:v1"}
    assert not df1["cached"].any() and df1["raw_answer"].str.contains("extra junk").all()
    assert len(cache.read_text().splitlines()) == 4

    b2 = FakeBackend()
    df2 = interpret_latents(ctx, [1, 2, 3, 4], TOK, b2, cache, CFG, "fake:v1")
    assert b2.prompts == []
    assert df2["cached"].all()
    pd.testing.assert_frame_equal(df1.drop(columns="cached"), df2.drop(columns="cached"))

    # another explainer id is another cache key
    b3 = FakeBackend()
    interpret_latents(ctx, [2], TOK, b3, cache, CFG, "fake:v2")
    assert len(b3.prompts) == 1


def test_changed_prompt_config_asks_only_changed_prompts(tmp_path):
    ctx, cache = make_contexts(), tmp_path / "cache.jsonl"
    interpret_latents(ctx, [1, 2, 3, 4], TOK, FakeBackend(), cache, CFG, "fake")
    # latent 3 has only 2 top examples: showing at most 2 leaves its prompt unchanged
    b = FakeBackend()
    df = interpret_latents(ctx, [1, 2, 3, 4], TOK, b, cache, {**CFG, "n_examples": 2}, "fake")
    assert len(b.prompts) == 3
    assert df.set_index("latent")["cached"].to_dict() == {1: False, 2: False, 3: True, 4: False}
    # generation settings are part of the key too
    b = FakeBackend()
    interpret_latents(ctx, [1], TOK, b, cache, {**CFG, "max_tokens": 64}, "fake")
    assert len(b.prompts) == 1


def test_crash_keeps_completed_answers(tmp_path):
    ctx, cache = make_contexts(), tmp_path / "cache.jsonl"
    with pytest.raises(KeyboardInterrupt):
        interpret_latents(ctx, [1, 2, 3, 4], TOK, FakeBackend(crash_after=2), cache, CFG, "fake")
    assert len(JsonlCache(cache)) == 2
    # a write cut short by the crash: the partial line is skipped and later records still parse
    with cache.open("a") as fh:
        fh.write('{"type": "explanation", "latent": 3, "prompt')
    b = FakeBackend()
    df = interpret_latents(ctx, [1, 2, 3, 4], TOK, b, cache, CFG, "fake")
    assert len(b.prompts) == 2 and len(df) == 4
    reread = JsonlCache(cache)
    assert len(reread) == 4 and reread.skipped == 1


def test_failed_requests_raise_after_caching_or_are_skipped(tmp_path):
    ctx, cache = make_contexts(), tmp_path / "cache.jsonl"
    with pytest.raises(RuntimeError, match="1 request"):
        interpret_latents(ctx, [1, 2, 3], TOK, FakeBackend(fail_when=" dog"), cache, CFG, "fake")
    assert len(JsonlCache(cache)) == 2
    b = FakeBackend(fail_when=" dog")
    df = interpret_latents(ctx, [1, 2, 3], TOK, b, cache, CFG, "fake", on_error="skip")
    assert len(b.prompts) == 1
    row = df.set_index("latent").loc[2]
    assert row["explanation"] == "" and "server said no" in row["error"]
    # a latent without examples is left out with a warning
    assert interpret_latents(ctx, [99], TOK, FakeBackend(), cache, CFG, "fake").empty


def test_detection_scoring_and_its_cache(tmp_path):
    ctx, cache = make_contexts(), tmp_path / "cache.jsonl"
    cfg = {
        **CFG,
        "detection": {"n_positive": 4, "n_negative": 4, "batch_size": 3, "control": False, "judge": "list"},
    }
    b = FakeBackend(judge_word="cat")
    df = interpret_latents(ctx, [1, 2], TOK, b, cache, cfg, "fake", score=True).set_index("latent")
    assert len(b.prompts) == 2 + 2 * 3  # 2 explanations + ceil(8 / 3) detection batches each
    # latent 1's positives contain "cat" and its negatives do not: a perfect judge
    assert df.loc[1, "detection_balanced_accuracy"] == 1.0 and df.loc[1, "detection_f1"] == 1.0
    assert df.loc[1, "detection_n"] == 8
    # for latent 2 the judge says 0 everywhere: recall 0, balanced accuracy 0.5
    assert df.loc[2, "detection_recall"] == 0.0 and df.loc[2, "detection_balanced_accuracy"] == 0.5
    b2 = FakeBackend(judge_word="cat")
    df2 = interpret_latents(ctx, [1, 2], TOK, b2, cache, cfg, "fake", score=True).set_index("latent")
    assert b2.prompts == []
    assert df2.loc[1, "detection_f1"] == 1.0


def test_detection_control_is_another_latents_explanation(tmp_path):
    """A judge that follows the description: each latent's own explanation is perfect, another
    latent's explanation on the same items finds nothing (balanced accuracy 0.5)."""
    ctx, cache = make_contexts(), tmp_path / "cache.jsonl"
    cfg = {**CFG, "detection": {"n_positive": 4, "n_negative": 4, "batch_size": 4, "judge": "list"}}
    b = FakeBackend(judge_word=None)
    df = interpret_latents(ctx, [1, 2, 3], TOK, b, cache, cfg, "fake", score=True).set_index("latent")
    assert len(b.prompts) == 3 + 3 * 2 * 2  # explanations + own and control batches
    assert df["control_explanation"].to_dict() == {1: "the word dog", 2: "the word court", 3: "the word cat"}
    assert (df["detection_balanced_accuracy"] == 1.0).all()
    assert (df["control_balanced_accuracy"] == 0.5).all()
    assert (df["detection_margin"] == 0.5).all() and df["beats_control"].all()
    # a judge that ignores the description: the control does as well, no explanation beats it
    df = interpret_latents(
        ctx, [1, 2, 3], TOK, FakeBackend(judge_word="cat"), tmp_path / "c2.jsonl", cfg, "f", score=True
    )
    assert not df.set_index("latent")["beats_control"].any()


def test_yes_no_judge_ranks_excerpts_by_their_logprobs(tmp_path):
    """One prompt per excerpt; the top n_positive scores are judged active. A judge that follows
    the description is perfect with its own explanation and at chance with the control; one that
    says Yes to everything by the same margin is at chance, not perfect."""
    ctx, cache = make_contexts(), tmp_path / "cache.jsonl"
    cfg = {**CFG, "detection": {"n_positive": 4, "n_negative": 4}}  # judge: yes_no, the default
    b = FakeBackend(judge_word=None)
    df = interpret_latents(ctx, [1, 2, 3], TOK, b, cache, cfg, "fake", score=True).set_index("latent")
    assert len(b.prompts) == 3 + 3 * 2 * 8  # explanations + one prompt per item, own and control
    assert (df["detection_balanced_accuracy"] == 1.0).all() and (df["detection_n_unparsed"] == 0).all()
    assert (df["control_balanced_accuracy"] == 0.5).all() and df["beats_control"].all()
    again = FakeBackend(judge_word=None)
    df2 = interpret_latents(ctx, [1, 2, 3], TOK, again, cache, cfg, "fake", score=True).set_index("latent")
    assert again.prompts == [] and df2["detection_balanced_accuracy"].tolist() == [1.0] * 3  # cached
    biased = interpret_latents(
        ctx, [1, 2], TOK, FakeBackend(yes_bias=2.0), tmp_path / "b.jsonl", cfg, "f", score=True
    )
    assert (biased["detection_balanced_accuracy"] == 0.5).all()


def test_detection_judges_only_examples_the_explainer_did_not_see(tmp_path):
    ctx = make_contexts()
    quantile = ctx[(ctx["latent"] == 1) & (ctx["kind"] == "quantile")]
    cfg = {
        "n_examples": 4,
        "examples": "mix",
        "max_tokens": 32,
        "detection": {"n_negative": 0, "batch_size": 10, "judge": "list"},
    }
    b = FakeBackend(judge_word="cat")
    df = interpret_latents(ctx, [1], TOK, b, tmp_path / "c.jsonl", cfg, "fake", score=True)
    explain_prompt = b.prompts[0][-1]["content"]
    assert explain_prompt.count("Example ") == 4  # 2 top + 2 of the 4 quantile examples
    # the 2 quantile examples not shown are the positives judged
    assert df.loc[0, "detection_n"] == len(quantile) - 2


def test_keywords_backend_log_odds(tmp_path):
    # corpus: "the", "of", "a" are very common; "cat", "court" rare
    counts = np.zeros(len(VOCAB), dtype=np.int64)
    counts[[ID["the"], ID["of"], ID["a"], ID["."]]] = 1000
    counts[[ID["cat"], ID["dog"], ID["court"], ID["judge"], ID["sat"], ID["leaf"]]] = 5
    backend = KeywordsBackend(counts, top_tokens=3, context_tokens=3)
    ctx, cache = make_contexts(), tmp_path / "cache.jsonl"
    df = interpret_latents(ctx, [1, 3], TOK, backend, cache, CFG).set_index("latent")
    e1 = df.loc[1, "explanation"]
    assert e1.startswith(KEYWORDS_PREFIX + "activates on: cat")
    assert "context: sat" in e1 and "the" not in e1.split("context:")[1].split(", ")
    assert df.loc[3, "explanation"].startswith("[keywords] activates on: court")
    assert set(df["backend"]) == {"keywords"} and set(df["explainer"]) == {"keywords:keywords"}
    # cached like any other backend; different corpus counts are a different key
    df2 = interpret_latents(ctx, [1, 3], TOK, backend, cache, CFG)
    assert df2["cached"].all()
    df3 = interpret_latents(ctx, [1], TOK, KeywordsBackend(counts * 2), cache, CFG)
    assert not df3["cached"].any()
    # z-scores: over-represented tokens positive, common ones negative
    z = log_odds_z(np.array([10, 0, 1]), np.array([10, 1000, 1000]))
    assert z[0] > 0 > z[2]


def test_corpus_token_counts(tmp_path):
    import zarr

    g = zarr.open_group(str(tmp_path / "tokens.zarr"), mode="w")
    data = np.array([[0, 4, 4, 1], [0, 1, 1, 12]], dtype=np.int32)
    g.create_array("input_ids", data=data, chunks=(1, 4))
    counts = corpus_token_counts(tmp_path / "tokens.zarr", rows=1)
    assert counts.tolist()[:5] == [2, 3, 0, 0, 2] and counts[12] == 1 and counts.sum() == 8


def test_select_latents_and_config():
    attr = pd.DataFrame(
        {
            "latent": [1, 2, 3, 4, 5, 6],
            "direction": ["amplified", "amplified", "suppressed", "unchanged", "amplified", "dead"],
            "strength": [0.5, 2.0, 1.0, 9.0, 3.0, 9.0],
        }
    )
    ctx = make_contexts()  # latents 1-4 have top examples; 5 has none
    assert select_latents(attr, ctx, top_k=1) == [2, 3]
    assert select_latents(attr, ctx, top_k=0) == [2, 1, 3]
    assert select_latents(attr, None, top_k=2) == [5, 2, 3]
    cfg = with_defaults({"backend": "keywords", "vllm": {"enforce_eager": True}})
    assert cfg["vllm"]["enforce_eager"] and cfg["vllm"]["max_model_len"] == 4096
    with pytest.raises(ValueError, match="interpret.vllm: unknown"):
        with_defaults({"vllm": {"enforce_eagre": True}})
    with pytest.raises(ValueError, match="interpret.backend"):
        with_defaults({"backend": "llama"})


def test_run_interpretation_keywords_end_to_end(tmp_path, tiny_model):
    import zarr

    from mneme.models import load_tokenizer

    tok = load_tokenizer(tiny_model)
    text_ids = tok("Permission is hereby granted, free of charge, to any person", add_special_tokens=False)
    toks = text_ids["input_ids"][:8]
    ctx = pd.DataFrame(
        [
            (7, "top", r, -1, r, 2, toks, [0.0, 0.0, 5.0 - r] + [0.0] * (len(toks) - 3), 5.0 - r)
            for r in range(3)
        ],
        columns=["latent", "kind", "rank", "quantile", "context", "peak_position", "token_ids", "activations"]
        + ["max_activation"],
    )
    ctx.to_parquet(tmp_path / "contexts.parquet")
    attr = pd.DataFrame({"latent": [7, 8], "direction": ["suppressed", "unchanged"], "strength": [1.5, 0.0]})
    attr.to_parquet(tmp_path / "attribution.parquet")
    g = zarr.open_group(str(tmp_path / "tokens.zarr"), mode="w")
    g.create_array("input_ids", data=np.array([toks * 4], dtype=np.int32))
    out = tmp_path / "explanations.jsonl"
    df = run_interpretation(
        {"backend": "keywords"},
        tmp_path / "contexts.parquet",
        tmp_path / "attribution.parquet",
        tiny_model,
        tmp_path / "cache.jsonl",
        out,
        tokens_zarr=tmp_path / "tokens.zarr",
    )
    assert df["latent"].tolist() == [7] and df.loc[0, "direction"] == "suppressed"
    assert df.loc[0, "explanation"].startswith(KEYWORDS_PREFIX)
    back = [json.loads(line) for line in out.read_text().splitlines()]
    assert back[0]["latent"] == 7 and back[0]["backend"] == "keywords"
    assert read_table(out)["explanation"].tolist() == df["explanation"].tolist()
    # nothing selected: an empty table, and no backend is started (vllm would fail here)
    attr.assign(direction="unchanged").to_parquet(tmp_path / "attribution.parquet")
    args = (
        tmp_path / "contexts.parquet",
        tmp_path / "attribution.parquet",
        tiny_model,
        tmp_path / "c.jsonl",
        out,
    )
    cfg = {"backend": "vllm", "vllm": {"python": "/nonexistent"}, "directions": ["amplified", "suppressed"]}
    assert run_interpretation(cfg, *args).empty
    assert read_table(out).empty and "explanation" in read_table(out).columns


class _Flaky(BaseHTTPRequestHandler):
    plan: list[int] = []
    seen: list[int] = []

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        status = self.plan.pop(0) if self.plan else 200
        self.seen.append(status)
        body = {"error": {"message": "boom"}}
        if status == 200:
            body = {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
                ],
            }
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_openai_backend_retries_transient_errors(flaky_server):
    url = f"http://127.0.0.1:{flaky_server.server_address[1]}/v1"
    _Flaky.plan, _Flaky.seen = [500, 503], []
    backend = OpenAIBackend(url, "m", concurrency=2, max_retries=3, backoff=0.01)
    out = dict(backend.generate_many([[{"role": "user", "content": "hi"}]]))
    assert out == {0: "ok"} and _Flaky.seen == [500, 503, 200]
    # a client error is not retried and comes back as the result
    _Flaky.plan, _Flaky.seen = [400], []
    out = dict(backend.generate_many([[{"role": "user", "content": "hi"}]]))
    assert isinstance(out[0], Exception) and _Flaky.seen == [400]
    # retries run out
    _Flaky.plan, _Flaky.seen = [500] * 5, []
    backend = OpenAIBackend(url, "m", max_retries=1, backoff=0.01)
    out = dict(backend.generate_many([[{"role": "user", "content": "hi"}]]))
    assert isinstance(out[0], Exception) and _Flaky.seen == [500, 500]
    assert str(out[0]).startswith(f"{url} (model 'm'): InternalServerError") and "after 2 attempts" in str(
        out[0]
    )


def test_an_unreachable_endpoint_is_named_in_the_error():
    backend = OpenAIBackend("http://127.0.0.1:9/v1", "explainer", max_retries=0, timeout=5)
    out = dict(backend.generate_many([[{"role": "user", "content": "hi"}]]))
    assert "http://127.0.0.1:9/v1 (model 'explainer'): APIConnectionError" in str(out[0])


def test_openai_backend_needs_its_key(monkeypatch):
    monkeypatch.delenv("MNEME_TEST_KEY", raising=False)
    with pytest.raises(ValueError, match="MNEME_TEST_KEY"):
        OpenAIBackend("http://127.0.0.1:1/v1", "m", api_key_env="MNEME_TEST_KEY")
    monkeypatch.setenv("MNEME_TEST_KEY", "sk-test")
    assert (
        OpenAIBackend("http://127.0.0.1:1/v1", "m", api_key_env="MNEME_TEST_KEY").client.api_key == "sk-test"
    )


def test_explainer_id_follows_the_explainers_weights(tmp_path, tiny_model):
    """A changed explainer (another seed, checkpoint or source under the same config name) gets
    another cache key, so every answer is requested again (issue: the key was the name only)."""
    import shutil

    from mneme.interpret import explainer_id_for
    from mneme.models import weights_path

    cfg = {"backend": "vllm", "vllm": {"model": "explainer"}}
    first = explainer_id_for(cfg, tiny_model)
    assert first.startswith("vllm:explainer@") and first == explainer_id_for(cfg, tiny_model)
    other = tmp_path / "other"
    shutil.copytree(tiny_model, other)
    weights = Path(weights_path(other))
    target = next(weights.glob("*.safetensors"))
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF  # the same name and config, other weights
    target.write_bytes(bytes(data))
    second = explainer_id_for(cfg, other)
    assert second != first
    ctx, cache = make_contexts(), tmp_path / "cache.jsonl"
    interpret_latents(ctx, [1, 2], TOK, FakeBackend(), cache, CFG, first)
    again = FakeBackend()
    interpret_latents(ctx, [1, 2], TOK, again, cache, CFG, second)
    assert len(again.prompts) == 2


def test_lazy_backend_is_not_opened_when_every_answer_is_cached(tmp_path):
    import contextlib

    from mneme.interpret import LazyBackend

    opened = []

    @contextlib.contextmanager
    def opener():
        opened.append(1)
        yield FakeBackend()

    ctx, cache = make_contexts(), tmp_path / "cache.jsonl"
    with contextlib.ExitStack() as stack:
        lazy = LazyBackend(opener, "fake", stack)
        interpret_latents(ctx, [1, 2], TOK, lazy, cache, CFG, "fake:v1")
        assert lazy.opened and opened == [1]
    with contextlib.ExitStack() as stack:
        lazy = LazyBackend(opener, "fake", stack)
        df = interpret_latents(ctx, [1, 2], TOK, lazy, cache, CFG, "fake:v1")
        assert df["cached"].all() and not lazy.opened and opened == [1]


def test_decoding_options_reach_the_request_only_where_the_server_knows_them():
    gen = {"stop": ["\n"], "min_tokens": 4, "repetition_penalty": 1.1, "frequency_penalty": 0.0}
    vllm = OpenAIBackend("http://127.0.0.1:9/v1", "m", name="vllm")
    assert vllm.request_options(gen) == {
        "stop": ["\n"],
        "extra_body": {"min_tokens": 4, "repetition_penalty": 1.1},
    }
    openai = OpenAIBackend("http://127.0.0.1:9/v1", "m")  # an OpenAI endpoint rejects vLLM's parameters
    assert openai.request_options({**gen, "frequency_penalty": 0.5}) == {
        "stop": ["\n"],
        "frequency_penalty": 0.5,
    }
    assert vllm.request_options({"repetition_penalty": 1.0}) == {}


def test_a_stopped_run_does_not_keep_retrying(flaky_server):
    """Leaving generate_many early (a crash, SIGTERM) sets the abort flag: a request in flight
    stops retrying at once instead of running through its retries against a dead server."""
    url = f"http://127.0.0.1:{flaky_server.server_address[1]}/v1"
    _Flaky.plan, _Flaky.seen = [503] * 100, []
    backend = OpenAIBackend(url, "m", concurrency=1, max_retries=50, backoff=0.5, backoff_max=0.5)
    stream = backend.generate_many([[{"role": "user", "content": "hi"}]])
    got = []
    consumer = threading.Thread(target=lambda: got.append(next(stream)))
    consumer.start()
    consumer.join(1.5)
    assert consumer.is_alive()  # still retrying
    backend._abort.set()  # what generate_many's finally does when it is left early
    consumer.join(10)
    assert not consumer.is_alive() and len(_Flaky.seen) < 10
    assert "stopped while retrying" in str(got[0][1])
