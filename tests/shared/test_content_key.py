"""The one content-key helper: every id it replaced keeps the exact bytes it had before."""

from __future__ import annotations

import hashlib
import json

from looptool.shared.records import Message, Sample, Tool, ToolCall, canonical_json, content_key, text_key


def test_text_key_is_a_truncated_sha256_of_utf8_text():
    assert text_key("é") == hashlib.sha256("é".encode()).hexdigest()
    assert text_key("abc", 12) == hashlib.sha256(b"abc").hexdigest()[:12]
    assert text_key("", 24) == hashlib.sha256(b"").hexdigest()[:24]


def test_content_key_hashes_canonical_json_with_a_prefix():
    value = {"b": [1, "ü"], "a": {"y": None, "x": True}}
    digest = hashlib.sha256(canonical_json(value).encode()).hexdigest()
    assert content_key(value) == digest
    assert content_key(value, 20, prefix="s-") == "s-" + digest[:20]
    assert content_key({"a": 1, "b": 2}, 16) == content_key({"b": 2, "a": 1}, 16)  # key order does not matter


def test_sample_content_id_is_unchanged():
    s = Sample(
        context=[Message(role="user", content="Weather in Zürich?", reasoning="ignored")],
        tools=[Tool(name="b"), Tool(name="a")],
        reference=[ToolCall(name="get_weather", arguments={"city": "Zürich"}, id="call-1")],
    )
    # the serialisation Sample.content_id used before the helper existed, spelt out
    payload = json.dumps(
        {
            "context": [{"content": "Weather in Zürich?", "name": "", "role": "user", "tool_call_id": "", "tool_calls": []}],
            "tools": ["a", "b"],
            "reference": [{"arguments": {"city": "Zürich"}, "name": "get_weather"}],
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    assert s.content_id() == "s-" + hashlib.sha256(payload.encode()).hexdigest()[:20]


def test_result_to_stage_reads_a_trainer_result_once_for_trainer_and_operator():
    from looptool.shared.records import result_to_stage

    result = {"checkpoint_uri": "file:///m", "metrics": {"loss": 1, "flag": True, "note": "x"}, "reward_curve": [0.5, "?"], "counts": {"steps": 3.0}}
    op = result_to_stage(result)  # the operator: no "cached" metric
    assert op.metrics == {"loss": 1.0, "reward_step_1": 0.5} and op.counts == {"steps": 3} and op.checkpoint_uri == "file:///m"
    assert result_to_stage(result, cached=True).metrics == {**op.metrics, "cached": 1.0}  # the trainer says whether it reused a run
    assert result_to_stage({}, cached=False).model_dump() == {"outputs": [], "counts": {}, "metrics": {"cached": 0.0}, "checkpoint_uri": ""}
