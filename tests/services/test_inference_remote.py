"""OpenAI-compatible and vLLM backends: request/response mapping without a GPU, retries, backoff,
rate limiting against a tiny HTTP server on loopback, and the vLLM engine path with a fake engine."""

from __future__ import annotations

import json
import sys
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from looptool.services.inference.backends import BackendError, make_backend, split_error
from looptool.services.inference.backends.openai_compat import (
    OpenAICompatBackend,
    RateLimiter,
    build_chat_request,
    parse_chat_response,
)
from looptool.services.inference.backends.vllm_backend import VLLMBackend, parse_request_output, sampling_kwargs
from looptool.shared.config import InferenceSettings
from looptool.shared.generation import GenRequest, SamplingParams
from looptool.shared.prompt import build_chat
from looptool.shared.records import Message, ToolCall
from looptool.shared.toolcall_format import parse_tool_calls

from support.inference import WEATHER, one_torch_thread, tiny_model_dir  # noqa: F401


def req(text="What is the weather in Paris?", **params) -> GenRequest:
    return GenRequest([Message(role="user", content=text)], [WEATHER], SamplingParams(**params))


# ------------------------------------------------------------------------------ mapping


def test_chat_request_carries_our_prompt_and_sampling_params():
    r = req(temperature=0.7, top_p=0.9, max_tokens=40, n=2, seed=3, stop=["</tool_call>"])
    body = build_chat_request("qwen", r)
    assert body["model"] == "qwen" and body["messages"] == build_chat(r.messages, r.tools)
    assert "<tools>" in body["messages"][0]["content"] and "tools" not in body  # tools live in the prompt
    expected = {"temperature": 0.7, "top_p": 0.9, "max_tokens": 40, "n": 2, "seed": 3, "stop": ["</tool_call>"], "logprobs": True}
    assert {k: body[k] for k in expected} == expected
    greedy = build_chat_request("qwen", req(max_tokens=10))
    assert greedy["temperature"] == 0.0 and "seed" not in greedy and "top_p" not in greedy and "stop" not in greedy
    vllm = build_chat_request("qwen", req(), flavor="vllm", send_tools=True)
    assert vllm["tools"][0]["function"]["name"] == "get_weather" and vllm["tool_choice"] == "auto"
    assert vllm["skip_special_tokens"] is False and vllm["seed"] == 0


def test_response_with_text_calls_parses_them():
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    res = parse_chat_response({
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                     "logprobs": {"content": [{"token": "a", "logprob": -0.5}, {"token": "b", "logprob": -1.5}]}}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 12},
    })
    c = res.completions[0]
    assert c.text == text and c.tool_calls == [ToolCall(name="get_weather", arguments={"city": "Paris"})]
    assert c.mean_logprob == pytest.approx(-1.0) and res.prompt_tokens == 30 and res.completion_tokens == 12


def test_hermes_tool_calls_come_back_as_our_tool_call_text():
    body = {
        "choices": [
            {"index": 1, "finish_reason": "stop", "message": {"content": "", "tool_calls": []}},
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 3}'}},
                        {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}},
                    ],
                },
            },
        ]
    }
    res = parse_chat_response(body)
    first = res.completions[0]  # ordered by index
    assert first.finish_reason == "stop"
    parsed = parse_tool_calls(first.text)
    assert parsed.ok and [c.arguments for c in parsed.calls] == [{"city": "Paris", "days": 3}, {"city": "Rome"}]
    assert first.text.count("<tool_call>") == 2 and [c.name for c in first.tool_calls] == ["get_weather"] * 2
    assert res.completions[1].text == ""
    bad = parse_chat_response({"choices": [{"message": {"tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}}]})
    assert bad.completions[0].parse_error and not bad.completions[0].tool_calls
    assert split_error(parse_chat_response({"error": "x"}).error)[0] == "INTERNAL"


def test_vllm_sampling_params_and_output_mapping():
    kw = sampling_kwargs(SamplingParams(temperature=0.0, max_tokens=0, stop=["\n\n"]), max_tokens_cap=100)
    assert kw == {"n": 1, "temperature": 0.0, "top_p": 1.0, "max_tokens": 100, "logprobs": 0,
                  "skip_special_tokens": True, "stop": ["\n\n"]}
    kw = sampling_kwargs(SamplingParams(temperature=0.8, top_p=0.95, max_tokens=64, n=4, seed=11))
    assert kw["seed"] == 11 and kw["n"] == 4 and kw["top_p"] == 0.95 and kw["max_tokens"] == 64
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    out = SimpleNamespace(
        prompt_token_ids=[1, 2, 3, 4],
        outputs=[
            SimpleNamespace(index=1, text="no", token_ids=[5], cumulative_logprob=-2.0, logprobs=None, finish_reason="length"),
            SimpleNamespace(index=0, text=text, token_ids=[7, 8], cumulative_logprob=None,
                            logprobs=[{7: SimpleNamespace(logprob=-0.2)}, {8: SimpleNamespace(logprob=-0.4)}],
                            finish_reason="stop"),
        ],
    )
    res = parse_request_output(out)
    assert res.prompt_tokens == 4 and res.completion_tokens == 3
    assert res.completions[0].tool_calls[0].arguments == {"city": "Oslo"}
    assert res.completions[0].mean_logprob == pytest.approx(-0.3)
    assert res.completions[1].finish_reason == "length" and res.completions[1].mean_logprob == pytest.approx(-2.0)


def test_vllm_in_process_engine_path_with_a_fake_engine(monkeypatch):
    """The real VLLMBackend code (queue, chat template, token-id prompts, per-request SamplingParams)
    against a stand-in for ``vllm.LLM`` and ``vllm.SamplingParams``."""
    from transformers import AutoTokenizer

    fake = types.ModuleType("vllm")
    fake.SamplingParams = lambda **kw: kw  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", fake)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir(), local_files_only=True)

    class Engine:
        calls: list = []

        def get_tokenizer(self):
            return tok

        def generate(self, prompts, sampling_params, use_tqdm=False):
            self.calls.append((prompts, sampling_params))
            return [
                SimpleNamespace(prompt_token_ids=p["prompt_token_ids"], outputs=[
                    SimpleNamespace(index=i, text=f"answer {i}", token_ids=[1, 2], cumulative_logprob=-1.0, finish_reason="stop")
                    for i in range(sp["n"])])
                for p, sp in zip(prompts, sampling_params)
            ]

    engine = Engine()
    b = VLLMBackend("fake-model", max_context=4096, llm=engine, batch_wait_ms=50)
    try:
        futures = [b.submit(req(max_tokens=8)), b.submit(req(temperature=1.0, n=2, seed=5, max_tokens=8))]
        r1, r2 = [f.result(timeout=10) for f in futures]
        assert [c.text for c in r2.completions] == ["answer 0", "answer 1"] and r1.completions[0].mean_logprob == -0.5
        prompts, params = engine.calls[0]
        assert len(prompts) == 2  # grouped into one engine call
        expected = tok.apply_chat_template(build_chat(req().messages, [WEATHER]), tokenize=False, add_generation_prompt=True)
        assert tok.decode(prompts[0]["prompt_token_ids"]) == expected
        assert params[1]["seed"] == 5 and params[1]["n"] == 2 and "seed" not in params[0]
        too_long = b.generate([GenRequest([Message(role="user", content="w " * 5000)])])[0]
        assert split_error(too_long.error)[0] == "INVALID_ARGUMENT"
    finally:
        b.close()


def test_make_backend_choices(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # not installed here
    with pytest.raises(BackendError, match="pip install"):
        make_backend(InferenceSettings(backend="vllm", model=str(tiny_model_dir())))
    remote = make_backend(InferenceSettings(backend="vllm", vllm_mode="remote", base_url="http://127.0.0.1:9/v1", model="m"))
    hosted = make_backend(InferenceSettings(backend="openai", base_url="http://127.0.0.1:9/v1", model="gpt"))
    try:
        assert isinstance(remote, OpenAICompatBackend) and remote.flavor == "vllm" and remote.backend_name == "vllm"
        assert isinstance(hosted, OpenAICompatBackend) and hosted.flavor == "openai"
    finally:
        remote.close()
        hosted.close()
    with pytest.raises(BackendError, match="base_url"):
        make_backend(InferenceSettings(backend="openai", model="gpt"))


# ------------------------------------------------------------------------------ HTTP behaviour


class FakeOpenAI:
    """A chat-completions endpoint on loopback. ``plan``: list of (status, body, headers) answered
    in order, then 200s with canned calls."""

    def __init__(self, plan=None, delay: float = 0.0):
        self.plan = list(plan or [])
        self.delay = delay
        self.bodies: list[dict] = []
        self.times: list[float] = []
        self.headers: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(n))
                owner.bodies.append(body)
                owner.times.append(time.monotonic())
                owner.headers.append(dict(self.headers))
                if owner.delay:
                    time.sleep(owner.delay)
                status, payload, headers = owner.plan.pop(0) if owner.plan else (200, None, {})
                if payload is None:
                    payload = {
                        "id": "x",
                        "choices": [{"index": i, "finish_reason": "stop", "message": {
                            "role": "assistant",
                            "content": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'}}
                            for i in range(body.get("n", 1))],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 7},
                    }
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_server():
    servers = []

    def make(**kw):
        s = FakeOpenAI(**kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def backend_for(server, **kw) -> OpenAICompatBackend:
    kw.setdefault("backoff_base", 0.01)
    return OpenAICompatBackend(server.url, "test-model", api_key="sk-test", **kw)


def test_retries_429_and_5xx_then_succeeds(fake_server):
    srv = fake_server(plan=[(429, {"error": "slow down"}, {}), (503, {"error": "busy"}, {}), (429, {"error": "x"}, {"Retry-After": "0.05"})])
    b = backend_for(srv, max_retries=4)
    try:
        res = b.generate([req(n=2)])[0]
        assert not res.error and len(res.completions) == 2
        assert res.completions[0].tool_calls[0].arguments == {"city": "Paris"}
        assert b.requests_sent == 4 and len(srv.bodies) == 4
        assert srv.times[3] - srv.times[2] >= 0.045  # Retry-After honoured
        assert srv.headers[0]["Authorization"] == "Bearer sk-test"
    finally:
        b.close()


def test_gives_up_after_max_retries_and_does_not_retry_client_errors(fake_server):
    srv = fake_server(plan=[(500, {"e": 1}, {})] * 10)
    b = backend_for(srv, max_retries=2)
    try:
        res = b.generate([req()])[0]
        assert split_error(res.error)[0] == "UNAVAILABLE" and "after 3 attempts" in res.error and len(srv.bodies) == 3
    finally:
        b.close()
    srv2 = fake_server(plan=[(400, {"error": {"message": "bad max_tokens"}}, {})])
    b2 = backend_for(srv2, max_retries=3)
    try:
        res = b2.generate([req()])[0]
        assert split_error(res.error)[0] == "INVALID_ARGUMENT" and "bad max_tokens" in res.error and len(srv2.bodies) == 1
    finally:
        b2.close()
    srv3 = fake_server(plan=[(429, {"e": 1}, {})] * 5)
    b3 = backend_for(srv3, max_retries=1)
    try:
        assert split_error(b3.generate([req()])[0].error)[0] == "RESOURCE_EXHAUSTED"
    finally:
        b3.close()


def test_timeouts_are_retried_and_connection_refused_is_unavailable(fake_server):
    srv = fake_server(delay=0.5)
    b = backend_for(srv, max_retries=1, timeout_s=0.1)
    try:
        res = b.generate([req()])[0]
        assert split_error(res.error)[0] == "UNAVAILABLE" and "timeout" in res.error and len(srv.bodies) == 2
    finally:
        b.close()
    dead = OpenAICompatBackend("http://127.0.0.1:9/v1", "m", max_retries=1, backoff_base=0.01)
    try:
        res = dead.generate([req()])[0]
        assert split_error(res.error)[0] == "UNAVAILABLE" and "connection" in res.error
    finally:
        dead.close()


def test_client_side_rate_limit_spaces_requests(fake_server):
    srv = fake_server()
    b = backend_for(srv, requests_per_minute=600)  # one start every 0.1 s
    try:
        t0 = time.monotonic()
        results = b.generate([req() for _ in range(5)])
        assert all(not r.error for r in results)
        assert time.monotonic() - t0 >= 0.38
        gaps = [b - a for a, b in zip(sorted(srv.times), sorted(srv.times)[1:])]
        assert min(gaps) >= 0.07
    finally:
        b.close()
    limiter = RateLimiter(60)  # 1 per second: a deadline closer than the next slot fails fast
    assert limiter.acquire()
    assert not limiter.acquire(deadline=time.monotonic() + 0.1)
