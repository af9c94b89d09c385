"""Python client of the tool simulator service."""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Any, Iterator

import grpc

from looptool.shared.config import SecuritySettings
from looptool.shared.grpc_util import channel
from looptool.shared.proto_convert import call_to_pb, error_from_pb, tool_to_pb
from looptool.shared.records import Tool, ToolCall
from looptool.v1 import toolsim_pb2 as pb
from looptool.v1 import toolsim_pb2_grpc as pb_grpc

from .simulator import ExecResult


class ToolSimClient:
    def __init__(self, address: str, timeout: float = 60.0, security: SecuritySettings | None = None):
        self.address = address
        self.timeout = timeout
        self._channel = channel(address, security)
        self._stub = pb_grpc.ToolSimulatorStub(self._channel)

    def open_session(self, tools: list[Tool], mode: str = "auto", environment: str = "", initial_state: Any = None,
                     seed: int = 0) -> tuple[str, str]:
        """Returns (session id, the mode the session runs in)."""
        state = initial_state if isinstance(initial_state, str) else json.dumps(initial_state or {})
        resp = self._stub.OpenSession(
            pb.OpenSessionRequest(tools=[tool_to_pb(t) for t in tools], mode=mode, environment=environment,
                                  initial_state_json=state, seed=seed),
            timeout=self.timeout,
        )
        return resp.session_id, resp.mode

    def execute(self, session_id: str, call: ToolCall) -> ExecResult:
        resp = self._stub.Execute(pb.ExecuteRequest(session_id=session_id, call=call_to_pb(call)), timeout=self.timeout)
        err = error_from_pb(resp.error) if resp.HasField("error") and resp.error.code else None
        return ExecResult(resp.content, resp.is_error, err)

    def close_session(self, session_id: str) -> None:
        try:
            self._stub.CloseSession(pb.CloseSessionRequest(session_id=session_id), timeout=self.timeout)
        except grpc.RpcError:
            pass

    @contextmanager
    def session(self, tools: list[Tool], **kw: Any) -> Iterator[str]:
        sid, _ = self.open_session(tools, **kw)
        try:
            yield sid
        finally:
            self.close_session(sid)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "ToolSimClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
