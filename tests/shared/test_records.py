"""Records ⇄ protobuf must be lossless: types (int vs float vs bool), nesting, unicode, empties."""

from __future__ import annotations

import json
import math
import random

import pytest
from pydantic import ValidationError

from looptool.shared import proto_convert as pc
from looptool.shared.records import (
    DatasetRef,
    Decision,
    Dialog,
    ErrorInfo,
    LineageEvent,
    Message,
    Progress,
    Sample,
    Stage,
    StageResult,
    Tool,
    ToolCall,
    Verdict,
    canonical_json,
)
from looptool.v1 import common_pb2 as pb

TRICKY_ARGS = {
    "int": 1,
    "float_integral": 1.0,
    "float": 2.5,
    "neg_zero": -0.0,
    "big_int": 2**62 + 1,
    "bigger_than_int64": 10**30,
    "tiny": 5e-324,
    "huge": 1.7976931348623157e308,
    "bool": True,
    "false": False,
    "null": None,
    "empty_str": "",
    "empty_list": [],
    "empty_obj": {},
    "nested": {"a": [1, 2.0, {"b": [None, True, "x"]}], "c": {"d": {"e": {}}}},
    "unicode": "naïve café — 東京 🚀 \u0000 \n\t \"quoted\" \\ back",
    "dup_list": [1, 2, 2],
    "mixed_list": [1, "1", 1.0, True],
    "ключ": "значение",
}


def _tool(name: str = "get_weather") -> Tool:
    return Tool(
        name=name,
        description="Weather for a city — ünïcode",
        parameters={
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "default": 3}, "t": {"type": "number"}},
            "required": ["city"],
        },
    )


def _sample(**kw) -> Sample:
    s = Sample(
        id="s-1",
        context=[
            Message(role="system", content="You are an expert in composing functions."),
            Message(role="user", content="Weather in 東京 for 3 days? 🚀"),
            Message(
                role="assistant",
                content="",
                tool_calls=[ToolCall(name="get_weather", arguments=TRICKY_ARGS, id="call_1")],
                reasoning="think about it",
            ),
            Message(role="tool", content='{"temp": 21.0}', name="get_weather", tool_call_id="call_1"),
        ],
        tools=[_tool(), Tool(name="noargs")],
        reference=[ToolCall(name="get_weather", arguments={"city": "Tokyo", "days": 3, "t": 3.0})],
        reference_text="",
        lineage=[
            LineageEvent(round=0, stage="synthesize", action="created", reason="seed", at="2026-01-01T00:00:00+00:00"),
            LineageEvent(round=2, stage=Stage.JUDGE.value, action="relabelled", reason="label wrong", parent_id="s-0"),
        ],
        meta={"difficulty": "hard", "ü": "✓", "": ""},
        source="bfcl",
    )
    return s.model_copy(update=kw)


def _same(a, b) -> None:
    """Equal *and* the same JSON text (so 1 vs 1.0 vs True differences are caught)."""
    assert a == b
    assert canonical_json(a.model_dump(mode="json")) == canonical_json(b.model_dump(mode="json"))


def _through_wire(msg):
    """Serialize to bytes and parse again, as a gRPC hop does."""
    return type(msg).FromString(msg.SerializeToString())


def test_sample_round_trip_is_lossless():
    s = _sample()
    back = pc.sample_from_pb(_through_wire(pc.sample_to_pb(s)))
    _same(s, back)
    args = back.context[2].tool_calls[0].arguments
    assert type(args["int"]) is int and type(args["float_integral"]) is float and type(args["bool"]) is bool
    assert args["big_int"] == 2**62 + 1 and args["bigger_than_int64"] == 10**30
    assert math.copysign(1.0, args["neg_zero"]) == -1.0
    assert args["dup_list"] == [1, 2, 2] and [type(x) for x in args["mixed_list"]] == [int, str, float, bool]
    assert back.context[2].tool_calls[0].id == "call_1"
    assert back.reference[0].arguments["t"] == 3.0 and type(back.reference[0].arguments["t"]) is float


def test_empty_sample_round_trip():
    s = Sample(context=[])
    back = pc.sample_from_pb(_through_wire(pc.sample_to_pb(s)))
    _same(s, back)
    # a tool with an empty parameters object and a call with empty arguments stay empty (not defaults)
    s2 = Sample(context=[Message(role="user")], tools=[Tool(name="t", parameters={})], reference=[ToolCall(name="t")])
    _same(s2, pc.sample_from_pb(_through_wire(pc.sample_to_pb(s2))))


def test_nan_and_infinity_survive():
    s = Sample(context=[], reference=[ToolCall(name="f", arguments={"x": float("inf"), "y": float("-inf"), "z": float("nan")})])
    back = pc.sample_from_pb(_through_wire(pc.sample_to_pb(s)))
    args = back.reference[0].arguments
    assert args["x"] == float("inf") and args["y"] == float("-inf") and math.isnan(args["z"])


def test_dialog_round_trip():
    d = Dialog(
        id="d-1",
        messages=_sample().context,
        tools=[_tool()],
        plan={"needs": [{"kind": "parallel", "tools": ["a", "b"], "n": 2, "w": 0.5}], "style": "terse", "empty": {}},
        meta={"seed": "7"},
    )
    back = pc.dialog_from_pb(_through_wire(pc.dialog_to_pb(d)))
    _same(d, back)
    assert type(back.plan["needs"][0]["n"]) is int and type(back.plan["needs"][0]["w"]) is float
    empty = Dialog(messages=[])
    _same(empty, pc.dialog_from_pb(_through_wire(pc.dialog_to_pb(empty))))


@pytest.mark.parametrize("decision", list(Decision))
def test_verdict_round_trip(decision):
    v = Verdict(
        sample_id="s-1",
        decision=decision,
        reason="the label misses 'unit' — ünïcode",
        corrected=[ToolCall(name="f", arguments={"a": 1, "b": 1.5, "c": [True, None]})],
        votes=2,
        total_votes=3,
        raw='{"decision": "label_wrong"}',
    )
    _same(v, pc.verdict_from_pb(_through_wire(pc.verdict_to_pb(v))))
    bare = Verdict(sample_id="", decision=decision)
    _same(bare, pc.verdict_from_pb(_through_wire(pc.verdict_to_pb(bare))))


def test_dataset_ref_round_trip():
    for ref in (
        DatasetRef(uri="s3://bucket/rounds/r1/samples", content_hash="ab" * 32, record_count=10**12, format="parquet", kind="verdicts"),
        DatasetRef(uri="file:///tmp/x y/ü"),
        DatasetRef(uri="/abs/path", record_count=0),
    ):
        _same(ref, pc.dataset_from_pb(_through_wire(pc.dataset_to_pb(ref))))


def test_dataset_ref_rejects_relative_uri():
    with pytest.raises(ValidationError, match="must start with"):
        DatasetRef(uri="relative/path")


def test_stage_events_round_trip():
    events = [
        Progress(stage="probe", done=5, total=10, message="probing", metrics={"acc": 0.5, "n": 3.0}),
        ErrorInfo(code="SCHEMA_VIOLATION", message="bad", field="arguments.city", item_id="s-9"),
        StageResult(
            outputs=[DatasetRef(uri="s3://b/p", content_hash="x", record_count=3)],
            counts={"kept": 3, "dropped": 0},
            metrics={"reward": 0.25},
            checkpoint_uri="file:///ckpt",
        ),
    ]
    for ev in events:
        back = pc.stage_event_from_pb(_through_wire(pc.stage_event_to_pb(ev)))
        _same(ev, back)
    with pytest.raises(ValueError):
        pc.stage_event_from_pb(pb.StageEvent())


def test_random_samples_round_trip():
    """A seeded fuzz over random JSON arguments and texts."""
    rng = random.Random(1234)
    alphabet = "abcxyz é東🚀\"\\\n\t{}[]<>"

    def text(n: int = 8) -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, n)))

    def value(depth: int = 0):
        kinds = ["int", "float", "bool", "null", "str"] + (["list", "dict"] if depth < 3 else [])
        k = rng.choice(kinds)
        if k == "int":
            return rng.randint(-(2**63), 2**63)
        if k == "float":
            return rng.choice([rng.uniform(-1e6, 1e6), float(rng.randint(-5, 5)), rng.random() * 1e-300])
        if k == "bool":
            return rng.random() < 0.5
        if k == "null":
            return None
        if k == "str":
            return text()
        if k == "list":
            return [value(depth + 1) for _ in range(rng.randint(0, 4))]
        return {text(5): value(depth + 1) for _ in range(rng.randint(0, 4))}

    for _ in range(200):
        calls = [ToolCall(name=text(6) or "f", arguments={text(6): value() for _ in range(rng.randint(0, 5))}) for _ in range(rng.randint(0, 3))]
        s = Sample(
            id=text(),
            context=[Message(role=rng.choice(["system", "user", "assistant", "tool"]), content=text(30), tool_calls=calls)],
            reference=calls,
            meta={text(4): text(4) for _ in range(rng.randint(0, 3))},
        )
        back = pc.sample_from_pb(_through_wire(pc.sample_to_pb(s)))
        _same(s, back)


def test_content_id_is_stable_and_ignores_lineage():
    a = _sample(id="")
    b = _sample(id="", lineage=[], source="other")
    assert a.content_id() == b.content_id()
    assert a.with_id().id == a.content_id() and a.id.startswith("s-")
    c = _sample(id="", reference=[ToolCall(name="get_weather", arguments={"city": "Paris"})])
    assert c.content_id() != a.content_id()
    # dict key order does not change the id
    d = _sample(id="", reference=[ToolCall(name="get_weather", arguments={"t": 3.0, "days": 3, "city": "Tokyo"})])
    assert d.content_id() == a.content_id()


def test_add_lineage_accepts_stage_enum():
    s = Sample(context=[])
    s.add_lineage(1, Stage.EXPAND, "expanded", reason="EDDE", parent_id="p")
    ev = s.lineage[-1]
    assert (ev.stage, ev.action, ev.round, ev.reason, ev.parent_id) == ("expand", "expanded", 1, "EDDE", "p")


def test_records_reject_unknown_fields():
    with pytest.raises(ValidationError):
        Sample.model_validate({"context": [], "contxt": []})
    with pytest.raises(ValidationError):
        Message(role="robot")  # type: ignore[arg-type]


def test_canonical_json_is_deterministic():
    assert canonical_json({"b": 1, "a": [1.0, "é"]}) == '{"a":[1.0,"é"],"b":1}'
    assert json.loads(canonical_json(TRICKY_ARGS)) == TRICKY_ARGS
