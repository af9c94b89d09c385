"""OpenAI-compatible chat-completions backend (httpx): a user's hosted generator/judge, or a remote
vLLM server (``vllm serve MODEL --enable-auto-tool-choice --tool-call-parser hermes``).

Requests carry the chat built by ``shared.prompt.build_chat`` (tools inside the system prompt, the
one prompt format) and no ``tools`` field by default, so the model's ``<tool_call>`` text comes back
in ``content``. A server that parses calls itself (vLLM's hermes parser, hosted APIs when
``send_tools=True``) returns ``tool_calls`` and strips them from ``content``; ``parse_choice`` renders
them back into ``<tool_call>`` blocks, so every backend yields the same text form.

Reliability: each request is retried with exponential backoff (0.5 s · 2^attempt, jittered, capped at
20 s, or the server's ``Retry-After``) on 408/409/429/5xx, timeouts and connection errors, up to
``max_retries`` times; other 4xx errors fail at once with the server's message. A client-side rate
limiter spaces request starts to ``requests_per_minute``. Streaming is not used: ``on_delta``
receives the whole text once the request finishes.
"""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from looptool.shared import metrics
from looptool.shared.generation import Completion, GenRequest, GenResult
from looptool.shared.prompt import build_chat
from looptool.shared.records import ToolCall
from looptool.shared.toolcall_format import render_tool_calls

from .base import Backend, BackendError, CancelToken, DeltaCallback, completion_from_text, error, log, request_rows

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
_RETRIES = metrics.counter("inference", "remote_retries", "Retried requests to a remote endpoint", ["backend", "reason"])
_TOKENS = metrics.counter("inference", "tokens", "Tokens processed", ["backend", "kind"])


# ---------------------------------------------------------------------------------------------
# Request / response mapping (pure functions; unit-tested without a server)


def build_chat_request(
    model: str,
    request: GenRequest,
    flavor: str = "openai",
    send_tools: bool = False,
    logprobs: bool = True,
) -> dict[str, Any]:
    """GenRequest → chat-completions JSON body."""
    p = request.params
    body: dict[str, Any] = {
        "model": model,
        "messages": build_chat(request.messages, request.tools),
        "temperature": float(p.temperature),
        "max_tokens": int(p.max_tokens if p.max_tokens > 0 else 256),
        "n": request_rows(request),
    }
    if p.top_p and p.top_p < 1.0:
        body["top_p"] = float(p.top_p)
    if p.temperature > 0 or flavor == "vllm":
        body["seed"] = int(p.seed)
    if p.stop:
        body["stop"] = list(p.stop)
    if logprobs:
        body["logprobs"] = True
    if send_tools and request.tools:
        body["tools"] = [t.to_openai() for t in request.tools]
        body["tool_choice"] = "auto"
    if flavor == "vllm":
        # keep the markers the tiny/Qwen models emit; vLLM-only extra sampling fields
        body["skip_special_tokens"] = False
        body["include_stop_str_in_output"] = False
    return body


def _calls_from_openai(raw_calls: list[dict[str, Any]]) -> tuple[list[ToolCall], str]:
    calls: list[ToolCall] = []
    for i, c in enumerate(raw_calls or []):
        fn = (c or {}).get("function") or {}
        name = fn.get("name")
        args = fn.get("arguments", "{}")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as exc:
                return [], f"tool_calls[{i}].function.arguments is not JSON: {exc}"
        if not isinstance(name, str) or not name or not isinstance(args, dict):
            return [], f"tool_calls[{i}] has no name or non-object arguments"
        calls.append(ToolCall(name=name, arguments=args, id=str(c.get("id", ""))))
    return calls, ""


def _mean_logprob(choice: dict[str, Any]) -> float:
    content = ((choice.get("logprobs") or {}).get("content")) or []
    vals = [lp for t in content if isinstance(t, dict) and isinstance(lp := t.get("logprob"), (int, float))]
    return float(sum(vals) / len(vals)) if vals else 0.0


def parse_choice(choice: dict[str, Any]) -> Completion:
    """One chat-completions choice → Completion with text in our ``<tool_call>`` form."""
    msg = choice.get("message") or {}
    content = msg.get("content") or ""
    finish = choice.get("finish_reason") or "stop"
    if finish == "tool_calls":
        finish = "stop"
    raw_calls = msg.get("tool_calls") or []
    if raw_calls:
        calls, problem = _calls_from_openai(raw_calls)
        if problem:
            return Completion(text=content, parse_error=problem, finish_reason=finish, mean_logprob=_mean_logprob(choice))
        text = render_tool_calls(calls, content)
    else:
        text = content
    return completion_from_text(text, finish, _mean_logprob(choice))


def parse_chat_response(body: dict[str, Any]) -> GenResult:
    """Chat-completions JSON → GenResult (choices ordered by ``index``)."""
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        return GenResult(error=error("INTERNAL", f"endpoint returned no 'choices': {str(body)[:200]}"))
    choices = sorted(body["choices"], key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
    usage = body.get("usage") or {}
    return GenResult(
        completions=[parse_choice(c) for c in choices if isinstance(c, dict)],
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
    )


# ---------------------------------------------------------------------------------------------


class RateLimiter:
    """Spaces request starts evenly: at most ``per_minute`` starts in any minute (0 = unlimited)."""

    def __init__(self, per_minute: float):
        self.interval = 60.0 / per_minute if per_minute > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self, cancel: CancelToken | None = None, deadline: float | None = None) -> bool:
        if not self.interval:
            return True
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            if deadline is not None and start > deadline:
                return False
            self._next = start + self.interval
        while True:
            wait = start - time.monotonic()
            if wait <= 0:
                return True
            if cancel is not None and cancel.cancelled:
                return False
            time.sleep(min(wait, 0.05))


class OpenAICompatBackend(Backend):
    backend_name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str = "",
        max_retries: int = 4,
        requests_per_minute: float = 0,
        timeout_s: float = 120,
        max_context: int = 4096,
        concurrency: int = 8,
        flavor: str = "openai",
        send_tools: bool = False,
        backoff_base: float = 0.5,
        backoff_max: float = 20.0,
    ):
        import httpx

        if not base_url:
            raise BackendError("inference.base_url is empty; set it to the endpoint, e.g. http://host:8000/v1")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.flavor = flavor
        self.backend_name = "vllm" if flavor == "vllm" else "openai"
        self.send_tools = send_tools
        self.max_retries = max_retries
        self.max_context = max_context
        self.timeout_s = timeout_s
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s)
        self._limiter = RateLimiter(requests_per_minute)
        self._pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix=f"{self.backend_name}-http")
        self.requests_sent = 0  # attempts, including retries (tests)

    def submit(
        self,
        request: GenRequest,
        *,
        cancel: CancelToken | None = None,
        deadline: float | None = None,
        on_delta: DeltaCallback | None = None,
    ) -> "Future[GenResult]":
        def work() -> GenResult:
            res = self._call(request, cancel, deadline)
            if on_delta and not res.error:
                for i, c in enumerate(res.completions):
                    on_delta(i, c.text)
            return res

        return self._pool.submit(work)

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(float(retry_after), self.backoff_max)
            except ValueError:
                pass
        return min(self.backoff_max, self.backoff_base * (2**attempt)) * random.uniform(0.8, 1.2)

    def _call(self, request: GenRequest, cancel: CancelToken | None, deadline: float | None) -> GenResult:
        import httpx

        body = build_chat_request(self.model, request, self.flavor, self.send_tools)
        last = ""
        for attempt in range(self.max_retries + 1):
            if cancel is not None and cancel.cancelled:
                return GenResult(error=error("CANCELLED", "request cancelled by the caller"))
            if not self._limiter.acquire(cancel, deadline):
                if cancel is not None and cancel.cancelled:
                    return GenResult(error=error("CANCELLED", "request cancelled by the caller"))
                return GenResult(error=error("DEADLINE_EXCEEDED", "rate limit would pass the deadline"))
            timeout = self.timeout_s
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic())
                if timeout <= 0:
                    return GenResult(error=error("DEADLINE_EXCEEDED", f"deadline passed ({last or 'before sending'})"))
            retry_after = None
            try:
                self.requests_sent += 1
                resp = self._client.post("/chat/completions", json=body, timeout=timeout)
            except httpx.TimeoutException as exc:
                last, reason = f"timeout: {exc}", "timeout"
            except httpx.TransportError as exc:
                last, reason = f"connection error: {exc}", "connection"
            else:
                if resp.status_code == 200:
                    try:
                        payload = resp.json()
                    except ValueError:
                        return GenResult(error=error("INTERNAL", f"endpoint returned non-JSON: {resp.text[:200]}"))
                    res = parse_chat_response(payload)
                    _TOKENS.labels(self.backend_name, "prompt").inc(res.prompt_tokens)
                    _TOKENS.labels(self.backend_name, "completion").inc(res.completion_tokens)
                    return res
                detail = resp.text[:300]
                if resp.status_code not in RETRY_STATUS:
                    code = "INVALID_ARGUMENT" if resp.status_code in (400, 413, 422) else (
                        "NOT_FOUND" if resp.status_code == 404 else "FAILED_PRECONDITION"
                    )
                    return GenResult(error=error(code, f"endpoint answered HTTP {resp.status_code}: {detail}"))
                last, reason = f"HTTP {resp.status_code}: {detail}", str(resp.status_code)
                retry_after = resp.headers.get("retry-after")
            if attempt == self.max_retries:
                break
            _RETRIES.labels(self.backend_name, reason).inc()
            pause = self._backoff(attempt, retry_after)
            if deadline is not None and time.monotonic() + pause >= deadline:
                return GenResult(error=error("DEADLINE_EXCEEDED", f"deadline would pass while backing off ({last})"))
            log.warning("retrying", extra={"endpoint": self.base_url, "attempt": attempt + 1, "why": last[:120]})
            end = time.monotonic() + pause
            while time.monotonic() < end:
                if cancel is not None and cancel.cancelled:
                    return GenResult(error=error("CANCELLED", "request cancelled by the caller"))
                time.sleep(min(0.05, max(0.0, end - time.monotonic())))
        code = "RESOURCE_EXHAUSTED" if last.startswith("HTTP 429") else "UNAVAILABLE"
        return GenResult(error=error(code, f"{self.base_url} failed after {self.max_retries + 1} attempts: {last}"))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()


__all__ = ["OpenAICompatBackend", "RateLimiter", "build_chat_request", "parse_chat_response", "parse_choice"]
