"""The tool simulator: sessions with state, four modes, schema checks, metrics.

Modes (chosen per session):

- ``executable`` — a BFCL multi-turn class (``executable.ALLOWED``) instantiated with the session's
  initial state; calls run its methods. Never arbitrary code.
- ``llm`` — a :class:`~looptool.shared.generation.Generator` is prompted with the tool's schema and
  description and the session history and must answer with one JSON object; invalid JSON is
  retried (``llm_retries`` times, new sampling seed), then a structured ``simulator_error``.
- ``schema`` — deterministic fake results (``fake.fake_result``), seeded by the session seed and
  the call; the CPU default.
- ``auto`` — ``executable`` when an environment is named or every tool is a method of one allowed
  class; else ``llm`` when the simulator was built with ``prefer_llm`` (a generator it should use
  by default); else ``schema``.

Every call is first checked against the tool's JSON Schema; a violation answers
``{"error": {"type": "invalid_arguments", "field": ..., "message": ...}}`` with ``is_error`` set,
like a real API. Unknown functions answer ``unknown_tool``.

Consistency: an identical call in a session returns the identical result; entity ids returned
earlier map to the same record (``schema`` mode memory; ``llm`` mode sees the history).

For ``schema``/``llm`` sessions ``initial_state`` may carry ``{"error_rate": p}``: with probability
``p`` (seeded) a valid call gets a plausible API error (not found, rate limited...), as the
reference's Tool agent "sometimes errors".
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from looptool.shared import metrics
from looptool.shared.errors import ServiceError
from looptool.shared.generation import GenRequest, Generator, SamplingParams
from looptool.shared.records import ErrorInfo, Message, Tool, ToolCall, canonical_json
from looptool.shared.schema import ToolSchemaError, check_tool, validate_call
from looptool.shared.toolcall_format import strip_reasoning

from . import executable
from .fake import fake_error, fake_result

MODES = ("auto", "schema", "llm", "executable")

CALLS = metrics.counter("toolsim", "calls", "tool calls executed, by mode", ["mode"])
ERRORS = metrics.counter("toolsim", "errors", "tool calls answered with an error, by error type", ["type"])
LATENCY = metrics.histogram("toolsim", "call_latency_seconds", "time to answer one tool call, by mode", ["mode"])
SESSIONS = metrics.gauge("toolsim", "sessions_open", "sessions currently open")


class SessionError(ServiceError, ValueError):
    """A session cannot be opened or used (bad tools, unknown environment/session)."""

    def __init__(self, message: str, code: str = "INVALID_ARGUMENT", field_: str = ""):
        super().__init__(message, code)
        self.field = field_


@dataclass
class ExecResult:
    content: str  # JSON text
    is_error: bool = False
    error: ErrorInfo | None = None

    @property
    def value(self) -> Any:
        return json.loads(self.content)


@dataclass
class Session:
    id: str
    tools: dict[str, Tool]
    mode: str
    seed: int
    env: executable.Environment | None = None
    error_rate: float = 0.0
    history: list[tuple[ToolCall, str]] = field(default_factory=list)
    cache: dict[str, ExecResult] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_used: float = field(default_factory=time.monotonic)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=_default, sort_keys=False)


def _default(o: Any) -> Any:
    try:
        return float(o)  # mpmath / numpy / Decimal numbers
    except (TypeError, ValueError):
        return str(o)


def _error(kind: str, message: str, field_: str = "") -> ExecResult:
    body: dict[str, Any] = {"type": kind, "message": message}
    if field_:
        body["field"] = field_
    ERRORS.labels(kind).inc()
    return ExecResult(_dumps({"error": body}), True, ErrorInfo(code=kind, message=message, field=field_))


_JSON_OBJECT = re.compile(r"\{.*\}", re.S)


def parse_json_result(text: str) -> Any | None:
    """The first JSON object/array in a model's answer (code fences and reasoning removed)."""
    visible, _ = strip_reasoning(text or "")
    visible = re.sub(r"```(?:json)?", "", visible).strip()
    for candidate in (visible, *(m.group(0) for m in _JSON_OBJECT.finditer(visible))):
        try:
            value = json.loads(candidate)
        except (json.JSONDecodeError, RecursionError):
            continue
        if isinstance(value, (dict, list)):
            return value
    return None


LLM_SYSTEM = (
    "You simulate a real API. Given the tool's definition, the earlier calls in this session and a new call, "
    "answer with ONLY the JSON object the API would return: realistic values, consistent with the tool's "
    "description and with earlier results (the same id returns the same record). No prose, no code fences."
)


class ToolSimulator:
    """Sessions → results. Thread-safe; one lock per session, so sessions run in parallel."""

    def __init__(self, generator: Generator | None = None, llm_retries: int = 2, llm_temperature: float = 0.7,
                 llm_max_tokens: int = 256, max_sessions: int = 10000, idle_ttl_s: float = 3600.0, history_limit: int = 12,
                 prefer_llm: bool = False):
        self.generator = generator
        self.prefer_llm = prefer_llm and generator is not None
        self.llm_retries = llm_retries
        self.llm_temperature = llm_temperature
        self.llm_max_tokens = llm_max_tokens
        self.max_sessions = max_sessions
        self.idle_ttl_s = idle_ttl_s
        self.history_limit = history_limit
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    # -- sessions ---------------------------------------------------------------------------

    def open_session(self, tools: list[Tool], mode: str = "auto", environment: str = "", initial_state: Any = None,
                     seed: int = 0) -> Session:
        mode = mode or "auto"
        if mode not in MODES:
            raise SessionError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}", field_="mode")
        for t in tools:
            try:
                check_tool(t)
            except ToolSchemaError as exc:
                raise SessionError(str(exc), field_=f"tools.{exc.tool}.{exc.field}") from None
        by_name: dict[str, Tool] = {}
        for t in tools:
            if t.name in by_name:
                raise SessionError(f"tool {t.name!r}: field 'name': defined twice", field_=f"tools.{t.name}.name")
            by_name[t.name] = t
        if isinstance(initial_state, str):
            try:
                initial_state = json.loads(initial_state) if initial_state.strip() else {}
            except json.JSONDecodeError as exc:
                raise SessionError(f"initial_state_json is not JSON ({exc.msg})", field_="initial_state_json") from None
        state = initial_state if isinstance(initial_state, dict) else {}
        env_name = environment
        if mode in ("auto", "executable") and not env_name:
            env_name = executable.environment_for_tools(set(by_name)) or ""
        if mode == "executable" and not env_name:
            raise SessionError("mode 'executable' needs an environment (a BFCL multi-turn class) whose methods cover the tools",
                               field_="environment")
        env = None
        if env_name and mode in ("auto", "executable"):
            try:
                env = executable.Environment(env_name, state)
            except executable.EnvironmentError_ as exc:
                raise SessionError(str(exc), field_="environment") from None
            missing = sorted(set(by_name) - env.methods)
            if missing:
                raise SessionError(f"environment {env.name} has no functions {missing}", field_="tools")
            mode = "executable"
        elif mode == "auto":
            mode = "llm" if self.prefer_llm else "schema"
        if mode == "llm" and self.generator is None:
            raise SessionError("mode 'llm' needs an inference server; start toolsim with one or use mode 'schema'",
                               code="FAILED_PRECONDITION", field_="mode")
        error_rate = float(state.get("error_rate", 0.0) or 0.0) if mode != "executable" else 0.0
        session = Session(id=uuid.uuid4().hex, tools=by_name, mode=mode, seed=seed, env=env, error_rate=error_rate)
        with self._lock:
            self._evict()
            self._sessions[session.id] = session
            SESSIONS.set(len(self._sessions))
        return session

    def _evict(self) -> None:
        now = time.monotonic()
        for sid in [s for s, v in self._sessions.items() if now - v.last_used > self.idle_ttl_s]:
            self._sessions.pop(sid, None)
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)

    def get(self, session_id: str) -> Session:
        with self._lock:
            s = self._sessions.get(session_id)
            if s is None:
                raise SessionError(f"unknown or expired session {session_id!r}; open a session first", code="NOT_FOUND",
                                   field_="session_id")
            self._sessions.move_to_end(session_id)
            s.last_used = time.monotonic()
            return s

    def close_session(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)
            SESSIONS.set(len(self._sessions))

    @property
    def open_sessions(self) -> int:
        return len(self._sessions)

    # -- calls ------------------------------------------------------------------------------

    def execute(self, session_id: str, call: ToolCall) -> ExecResult:
        session = self.get(session_id)
        start = time.perf_counter()
        with session.lock:
            result = self._execute(session, call)
            session.history.append((call, result.content))
        CALLS.labels(session.mode).inc()
        LATENCY.labels(session.mode).observe(time.perf_counter() - start)
        return result

    def _execute(self, s: Session, call: ToolCall) -> ExecResult:
        tool = s.tools.get(call.name)
        if tool is None:
            return _error("unknown_tool", f"no function named {call.name!r}; available: {', '.join(sorted(s.tools))}", "name")
        try:
            issues = validate_call(call, [tool])
        except ToolSchemaError as exc:
            return _error("invalid_tool", str(exc), exc.field)
        if issues:
            first = issues[0]
            msg = "; ".join(str(i) for i in issues)
            return _error("invalid_arguments", msg, first.field)
        key = call.name + canonical_json(call.arguments)
        if s.mode != "executable" and key in s.cache:  # executable state may change between identical calls
            return s.cache[key]
        # seeded by (session seed, call, how often this call failed before): deterministic, and a
        # retry after a transient error draws again
        attempt = s.attempts.get(key, 0)
        s.attempts[key] = attempt + 1
        rng = random.Random(int.from_bytes(hashlib.sha256(f"{s.seed}|{key}|{attempt}".encode()).digest()[:8], "big"))
        if s.error_rate and rng.random() < s.error_rate:
            body = fake_error(rng, tool)
            ERRORS.labels(body["error"]["type"]).inc()
            res = ExecResult(_dumps(body), True, ErrorInfo(code=body["error"]["type"], message=body["error"]["message"]))
        elif s.mode == "executable":
            res = self._run_executable(s, call)
        elif s.mode == "llm":
            res = self._run_llm(s, tool, call, rng)
        else:
            res = ExecResult(_dumps(fake_result(tool, call, rng, s.memory)))
        if s.mode != "executable" and not res.is_error:  # errors are not remembered: a retry may succeed
            s.cache[key] = res
        return res

    def _run_executable(self, s: Session, call: ToolCall) -> ExecResult:
        assert s.env is not None
        try:
            value = s.env.call(call.name, call.arguments)
        except KeyError:
            return _error("unknown_tool", f"environment {s.env.name} has no function {call.name!r}", "name")
        except TypeError as exc:
            return _error("invalid_arguments", str(exc), "arguments")
        except Exception as exc:  # noqa: BLE001 - the environment's own failure, reported like an API error
            return _error("execution_error", f"{exc.__class__.__name__}: {exc}")
        content = _dumps(value)
        if isinstance(value, dict) and "error" in value and len(value) == 1:
            ERRORS.labels("tool_error").inc()
            return ExecResult(content, True, ErrorInfo(code="tool_error", message=str(value["error"])))
        return ExecResult(content)

    def llm_messages(self, s: Session, tool: Tool, call: ToolCall) -> list[Message]:
        lines = [f"Tool definition:\n{json.dumps(tool.to_openai()['function'], ensure_ascii=False)}"]
        recent = s.history[-self.history_limit:]
        if recent:
            lines.append("Earlier calls in this session and their results:")
            for c, r in recent:
                lines.append(f"- {c.name}({json.dumps(c.arguments, ensure_ascii=False)}) -> {r}")
        lines.append(f"New call: {call.name}({json.dumps(call.arguments, ensure_ascii=False)})\nResult JSON:")
        return [Message(role="system", content=LLM_SYSTEM), Message(role="user", content="\n".join(lines))]

    def _run_llm(self, s: Session, tool: Tool, call: ToolCall, rng: random.Random) -> ExecResult:
        assert self.generator is not None
        messages = self.llm_messages(s, tool, call)
        last = ""
        for attempt in range(self.llm_retries + 1):
            params = SamplingParams(temperature=self.llm_temperature if attempt else max(self.llm_temperature, 0.0),
                                    max_tokens=self.llm_max_tokens, seed=rng.randrange(1 << 31))
            try:
                (res,) = self.generator.generate([GenRequest(messages=messages, params=params, request_id=f"toolsim-{s.id}-{attempt}")])
            except Exception as exc:  # noqa: BLE001 - the inference server is down: a structured error
                last = f"generator failed: {exc}"
                continue
            if res.error or not res.completions:
                last = res.error or "no completion"
                continue
            value = parse_json_result(res.completions[0].text)
            if value is not None:
                if isinstance(value, dict) and isinstance(value.get("error"), (dict, str)):
                    ERRORS.labels("tool_error").inc()
                    return ExecResult(_dumps(value), True, ErrorInfo(code="tool_error", message=str(value["error"])[:300]))
                return ExecResult(_dumps(value))
            last = f"not JSON: {res.completions[0].text[:120]!r}"
        return _error("simulator_error", f"the simulator model gave no valid JSON result after {self.llm_retries + 1} attempts ({last})")
