"""BFCL multi-turn environments on the tool simulator: the executor that
:mod:`looptool.shared.bfcl_multiturn` takes (``BfclExecutor``), over the embedded
:class:`~.simulator.ToolSimulator` or a running service (:class:`~.client.ToolSimClient`).

One executable session per involved class, loaded with that class's part of BFCL's
``initial_config`` (long-context loading when asked). A call goes to the class that has the
method; where two classes had the same method the later one would win, as in bfcl-eval (no shipped
pair has one). Results are written back as bfcl-eval's ``execute_multi_turn_func_call`` writes
them for the model: a string result as is, a dict as ``json.dumps``, anything else ``str()``, an
exception ``"Error during execution: <message>"``.

Sessions are opened with argument-permissive tools: bfcl-eval runs a call whatever its argument
types (the class itself fails or copes), so the simulator's schema check must not answer first.
What still differs from bfcl-eval, on purpose: a name that is no method of an involved class is
not evaluated as Python (BFCL would run a builtin such as ``open``); it answers BFCL's NameError
text. Scoring never depends on these results: bfcl-eval's checker re-executes the calls itself.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from looptool.shared.config import SecuritySettings
from looptool.shared.records import Tool, ToolCall

from . import executable
from .simulator import ExecResult, ToolSimulator

_PERMISSIVE = {"type": "object", "properties": {}, "additionalProperties": True}


class _Backend(Protocol):
    def execute(self, session_id: str, call: ToolCall) -> ExecResult: ...

    def close_session(self, session_id: str) -> None: ...


def bfcl_result_text(call: ToolCall, result: ExecResult) -> str:
    """A simulator result as the text bfcl-eval feeds back to the model."""
    err = result.error
    if err is not None and err.code != "tool_error":  # the call raised (a class's {"error"} dict is a result)
        if err.code == "unknown_tool":
            return f"Error during execution: name {call.name!r} is not defined"
        message = err.message
        if err.code == "execution_error" and ": " in message:
            message = message.split(": ", 1)[1]  # the simulator prefixes the exception class
        return f"Error during execution: {message}"
    value = json.loads(result.content)
    if type(value) is str:
        return value
    if type(value) is dict:
        return json.dumps(value)
    return str(value)


class BfclSession:
    """The live classes of one BFCL entry (one simulator session each)."""

    def __init__(self, backend: _Backend, sessions: dict[str, str], routes: dict[str, str]):
        self._backend = backend
        self._sessions = sessions  # class name → session id
        self._routes = routes  # method name → class name

    def execute(self, call: ToolCall) -> str:
        cls = self._routes.get(call.name)
        if cls is None:
            return f"Error during execution: name {call.name!r} is not defined"
        return bfcl_result_text(call, self._backend.execute(self._sessions[cls], call))

    def close(self) -> None:
        for sid in self._sessions.values():
            self._backend.close_session(sid)


class ToolSimBfclExecutor:
    """``BfclExecutor`` over an embedded simulator (default: a fresh one) or a toolsim client."""

    def __init__(self, backend: Any = None):
        self.backend: Any = backend if backend is not None else ToolSimulator()  # ToolSimulator | ToolSimClient

    def _open(self, tools: list[Tool], environment: str, state: dict[str, Any]) -> str:
        opened = self.backend.open_session(tools, mode="executable", environment=environment, initial_state=state)
        return opened.id if hasattr(opened, "id") else opened[0]  # Session (embedded) / (id, mode) (client)

    def open(self, involved_classes: list[str], initial_config: dict[str, Any], long_context: bool) -> BfclSession:
        sessions: dict[str, str] = {}
        routes: dict[str, str] = {}
        try:
            for cls in involved_classes:
                if executable.resolve(cls) != cls:
                    raise ValueError(f"involved class {cls!r} is not an executable BFCL class; allowed: {', '.join(executable.ALLOWED)}")
                methods = sorted(executable.method_names(cls))
                tools = [Tool(name=m, description=f"{cls}.{m}", parameters=dict(_PERMISSIVE)) for m in methods]
                state = dict(initial_config.get(cls, {}))
                if long_context:
                    state[executable.LONG_CONTEXT_KEY] = True
                sessions[cls] = self._open(tools, cls, state)
                routes.update({m: cls for m in methods})  # a later class wins, as in bfcl-eval
        except Exception:
            for sid in sessions.values():
                self.backend.close_session(sid)
            raise
        return BfclSession(self.backend, sessions, routes)

    def close(self) -> None:
        """Close a client backend's channel (an embedded simulator has nothing to close)."""
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()


def connect(address: str, *, security: SecuritySettings | None = None) -> ToolSimBfclExecutor:
    """The executor on the toolsim service at ``address`` (``stages.ToolExecutorFactory``)."""
    from .client import ToolSimClient

    return ToolSimBfclExecutor(ToolSimClient(address, security=security))
