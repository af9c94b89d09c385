"""Tool simulator: schema/executable/llm modes, sessions with state, structured errors, gRPC service, metrics."""

from __future__ import annotations

import json

import grpc
import pytest
from prometheus_client import REGISTRY

from looptool.services.toolsim import server as toolsim_server
from looptool.services.toolsim.client import ToolSimClient
from looptool.services.toolsim.simulator import SessionError, ToolSimulator, parse_json_result
from looptool.shared.generation import Completion, GenResult
from looptool.shared.grpc_util import wait_healthy
from looptool.shared.records import Tool, ToolCall
from looptool.shared.toolsets import import_source

BOOK = Tool(
    name="book_hotel",
    description="Book a hotel room in a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}, "nights": {"type": "integer", "minimum": 1}},
                "required": ["city", "nights"]},
)
GET_BOOKING = Tool(
    name="get_booking",
    description="Get a hotel booking by its id.",
    parameters={"type": "object", "properties": {"hotel_id": {"type": "string"}}, "required": ["hotel_id"]},
)
AREA = Tool(
    name="calculate_area",
    description="Calculate the area of a circle.",
    parameters={"type": "object", "properties": {"radius": {"type": "number"}}, "required": ["radius"]},
)


class Scripted:
    """A deterministic Generator: returns the given texts in order (last one repeats)."""

    def __init__(self, texts):
        self.texts, self.calls = list(texts), 0

    def generate(self, requests):
        out = []
        for _ in requests:
            text = self.texts[min(self.calls, len(self.texts) - 1)]
            self.calls += 1
            out.append(GenResult(completions=[Completion(text=text)]))
        return out


def test_schema_mode_is_deterministic_stateful_and_validates():
    sim = ToolSimulator()
    s = sim.open_session([BOOK, GET_BOOKING, AREA], seed=5)
    assert s.mode == "schema"
    r1 = sim.execute(s.id, ToolCall(name="book_hotel", arguments={"city": "Paris", "nights": 3}))
    booking = r1.value
    assert not r1.is_error and booking["status"] == "success" and booking["city"] == "Paris" and booking["nights"] == 3
    hotel_id = booking["hotel_id"]
    # the same entity id returns the same record, the same call the same result
    r2 = sim.execute(s.id, ToolCall(name="get_booking", arguments={"hotel_id": hotel_id}))
    assert r2.value["city"] == "Paris" and r2.value["nights"] == 3 and r2.value["hotel_id"] == hotel_id
    assert sim.execute(s.id, ToolCall(name="book_hotel", arguments={"city": "Paris", "nights": 3})).content == r1.content
    area = sim.execute(s.id, ToolCall(name="calculate_area", arguments={"radius": 2.5})).value
    assert isinstance(area["result"], float)
    # another session with the same seed gives the same results (no dependence on order/concurrency)
    s2 = sim.open_session([BOOK, GET_BOOKING, AREA], seed=5)
    assert sim.execute(s2.id, ToolCall(name="calculate_area", arguments={"radius": 2.5})).value == area
    # schema violations → structured errors, like a real API
    bad = sim.execute(s.id, ToolCall(name="book_hotel", arguments={"city": "Paris", "nights": "three"}))
    assert bad.is_error and bad.value["error"] == {"type": "invalid_arguments", "field": "arguments.nights",
                                                   "message": "arguments.nights: 'three' is not of type 'integer'"}
    missing = sim.execute(s.id, ToolCall(name="book_hotel", arguments={"city": "Paris"})).value["error"]
    assert missing["type"] == "invalid_arguments" and missing["field"] == "arguments.nights"
    extra = sim.execute(s.id, ToolCall(name="calculate_area", arguments={"radius": 1.5, "color": "red"})).value["error"]
    assert extra["field"] == "arguments.color"
    unknown = sim.execute(s.id, ToolCall(name="launch_rocket", arguments={}))
    assert unknown.is_error and unknown.value["error"]["type"] == "unknown_tool"
    sim.close_session(s.id)
    with pytest.raises(SessionError, match="unknown or expired session"):
        sim.execute(s.id, ToolCall(name="calculate_area", arguments={"radius": 1.0}))


def test_bad_sessions_are_rejected():
    sim = ToolSimulator()
    with pytest.raises(SessionError, match="field 'description'"):
        sim.open_session([Tool(name="x", parameters={"type": "object", "properties": {}})])
    with pytest.raises(SessionError, match="not executable"):
        sim.open_session([AREA], mode="executable", environment="os")
    with pytest.raises(SessionError, match="needs an environment"):
        sim.open_session([AREA], mode="executable")
    with pytest.raises(SessionError, match="needs an inference server"):
        sim.open_session([AREA], mode="llm")
    with pytest.raises(SessionError, match="unknown mode"):
        sim.open_session([AREA], mode="magic")


def test_error_rate_and_retry_draws_again():
    sim = ToolSimulator()
    s = sim.open_session([AREA], initial_state={"error_rate": 0.5}, seed=1)
    outcomes = []
    for r in range(40):
        res = sim.execute(s.id, ToolCall(name="calculate_area", arguments={"radius": float(r) + 0.5}))
        outcomes.append(res.is_error)
        if res.is_error:
            assert res.value["error"]["type"] in {"not_found", "rate_limited", "service_unavailable", "timeout"}
    assert 5 < sum(outcomes) < 35
    # a failed call retried gets a fresh draw; a success is remembered
    call = ToolCall(name="calculate_area", arguments={"radius": 0.5})
    results = [sim.execute(s.id, call) for _ in range(8)]
    first_ok = next(i for i, r in enumerate(results) if not r.is_error)
    assert all(not r.is_error and r.content == results[first_ok].content for r in results[first_ok:])


def test_executable_bfcl_classes():
    sim = ToolSimulator()
    math_tools = import_source("bfcl:math_api").tools
    s = sim.open_session(math_tools)  # auto: every tool is a MathAPI method
    assert s.mode == "executable" and s.env.name == "MathAPI"
    assert sim.execute(s.id, ToolCall(name="add", arguments={"a": 2.5, "b": 4.0})).value == {"result": 6.5}
    err = sim.execute(s.id, ToolCall(name="mean", arguments={"numbers": []}))
    assert err.is_error and "empty" in err.value["error"]
    travel = import_source("bfcl:travel_booking").tools
    t = sim.open_session(travel, mode="executable", environment="travel_booking", initial_state={})
    assert t.env.name == "TravelAPI"
    assert sim.execute(t.id, ToolCall(name="get_nearest_airport_by_city", arguments={"location": "Rivermist"})).value == {"nearest_airport": "RMS"}
    # state: authenticate then book — the class keeps the session's state between calls
    auth = sim.execute(t.id, ToolCall(name="authenticate_travel", arguments={
        "client_id": "c1", "client_secret": "s1", "refresh_token": "r1", "grant_type": "read_write",
        "user_first_name": "Ada", "user_last_name": "Lovelace"})).value
    assert "access_token" in auth
    assert sim.execute(t.id, ToolCall(name="travel_get_login_status", arguments={})).value == {"status": True}
    # schema checks still apply before execution
    bad = sim.execute(t.id, ToolCall(name="get_nearest_airport_by_city", arguments={"location": 3}))
    assert bad.is_error and bad.value["error"]["type"] == "invalid_arguments"


def test_llm_mode_retries_invalid_json_then_structured_error():
    gen = Scripted(["sure! here you go", '```json\n{"temperature": 21, "condition": "sunny"}\n```'])
    sim = ToolSimulator(generator=gen, llm_retries=2)
    s = sim.open_session([AREA], mode="llm", seed=3)
    res = sim.execute(s.id, ToolCall(name="calculate_area", arguments={"radius": 1.5}))
    assert not res.is_error and res.value == {"temperature": 21, "condition": "sunny"} and gen.calls == 2
    # the history reaches the prompt (consistency with earlier results)
    msgs = sim.llm_messages(sim.get(s.id), AREA, ToolCall(name="calculate_area", arguments={"radius": 3.5}))
    assert '"radius": 1.5' in msgs[-1].content and '"condition": "sunny"' in msgs[-1].content
    bad = ToolSimulator(generator=Scripted(["no json at all"]), llm_retries=1)
    s2 = bad.open_session([AREA], mode="llm")
    res = bad.execute(s2.id, ToolCall(name="calculate_area", arguments={"radius": 1.5}))
    assert res.is_error and res.value["error"]["type"] == "simulator_error"
    assert parse_json_result("<think>hmm {not json}</think> {\"a\": 1}") == {"a": 1}


def _metric(name, labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_grpc_service_roundtrip_and_metrics():
    running = toolsim_server.start(None, port=0)
    try:
        wait_healthy(running.address, timeout=20)
        before = _metric("looptool_toolsim_calls_total", {"mode": "executable"})
        errors_before = _metric("looptool_toolsim_errors_total", {"type": "invalid_arguments"})
        with ToolSimClient(running.address) as client:
            sid, mode = client.open_session(import_source("bfcl:math_api").tools, environment="MathAPI")
            assert mode == "executable"
            res = client.execute(sid, ToolCall(name="multiply", arguments={"a": 3.0, "b": 4.0}))
            assert json.loads(res.content) == {"result": 12.0} and not res.is_error
            bad = client.execute(sid, ToolCall(name="multiply", arguments={"a": "x", "b": 4.0}))
            assert bad.is_error and bad.error.code == "invalid_arguments" and bad.error.field == "arguments.a"
            client.close_session(sid)
            with pytest.raises(grpc.RpcError) as err:
                client.execute(sid, ToolCall(name="multiply", arguments={"a": 1.0, "b": 1.0}))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.RpcError) as err:
                client.open_session([AREA], mode="executable", environment="subprocess")
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not executable" in err.value.details()
            with client.session([BOOK, GET_BOOKING], seed=2) as sid2:
                a = client.execute(sid2, ToolCall(name="book_hotel", arguments={"city": "Oslo", "nights": 2}))
                assert json.loads(a.content)["city"] == "Oslo"
        assert _metric("looptool_toolsim_calls_total", {"mode": "executable"}) - before == 2
        assert _metric("looptool_toolsim_errors_total", {"type": "invalid_arguments"}) - errors_before == 1
        assert _metric("looptool_toolsim_call_latency_seconds_count", {"mode": "schema"}) >= 1
    finally:
        running.stop(0)
