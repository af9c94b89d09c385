"""The <tool_call> parser is strict and total; the renderer round-trips through it."""

from __future__ import annotations

import json
import random

import pytest

from looptool.shared.records import ToolCall
from looptool.shared.toolcall_format import (
    ParsedOutput,
    ParseErrorKind,
    parse_tool_calls,
    render_tool_call,
    render_tool_calls,
    strip_reasoning,
)


def block(body: str) -> str:
    return f"<tool_call>\n{body}\n</tool_call>"


def call_json(name: str, args) -> str:
    return json.dumps({"name": name, "arguments": args})


def test_single_call():
    out = parse_tool_calls(block(call_json("get_weather", {"city": "Paris", "days": 3})))
    assert out.ok and out.text == "" and out.reasoning == ""
    assert out.calls == [ToolCall(name="get_weather", arguments={"city": "Paris", "days": 3})]


def test_several_calls_and_surrounding_text():
    text = "Sure, checking both.\n" + block(call_json("a", {"x": 1})) + "\n" + block(call_json("b", {"y": [1.5, None]})) + "\nDone."
    out = parse_tool_calls(text)
    assert out.ok
    assert [c.name for c in out.calls] == ["a", "b"]
    assert out.calls[1].arguments == {"y": [1.5, None]}
    assert "Sure, checking both." in out.text and "Done." in out.text and "tool_call" not in out.text


def test_types_are_kept():
    out = parse_tool_calls(block('{"name": "f", "arguments": {"i": 1, "f": 1.0, "b": true, "n": null, "s": "1"}}'))
    args = out.calls[0].arguments
    assert [type(args[k]) for k in "ifbns"] == [int, float, bool, type(None), str]


def test_plain_text_has_no_calls():
    out = parse_tool_calls("  The weather is nice.  ")
    assert out.ok and out.calls == [] and out.text == "The weather is nice."
    assert parse_tool_calls("").ok


def test_calls_inside_think_are_ignored():
    text = "<think>maybe " + block(call_json("wrong", {})) + "</think>" + block(call_json("right", {"a": 1}))
    out = parse_tool_calls(text)
    assert out.ok and [c.name for c in out.calls] == ["right"]
    assert "wrong" in out.reasoning and "maybe" in out.reasoning


def test_unclosed_think_swallows_the_rest():
    out = parse_tool_calls("<think>still thinking " + block(call_json("f", {})))
    assert out.ok and out.calls == [] and out.text == ""
    assert "still thinking" in out.reasoning


def test_orphan_think_close_makes_prefix_reasoning():
    # templates that open <think> in the prompt: the output starts inside the reasoning
    text = "reasoning " + block(call_json("wrong", {})) + "</think>\n" + block(call_json("right", {}))
    out = parse_tool_calls(text)
    assert out.ok and [c.name for c in out.calls] == ["right"]
    assert out.reasoning.startswith("reasoning")


def test_several_think_blocks():
    text = "<think>a</think>x<think>b " + block(call_json("no", {})) + "</think>" + block(call_json("yes", {}))
    out = parse_tool_calls(text)
    assert [c.name for c in out.calls] == ["yes"] and out.text == "x"
    visible, reasoning = strip_reasoning(text)
    assert "no" not in visible and reasoning.startswith("a")


@pytest.mark.parametrize(
    "text, kind",
    [
        ("<tool_call>" + call_json("f", {}), ParseErrorKind.UNCLOSED_BLOCK),
        (block(call_json("f", {})) + "\n<tool_call>" + call_json("g", {}), ParseErrorKind.UNCLOSED_BLOCK),
        ("</tool_call>" + block(call_json("f", {})), ParseErrorKind.STRAY_CLOSE),
        (block(call_json("f", {})) + "</tool_call>", ParseErrorKind.STRAY_CLOSE),
        (block('{"name": "f", "arguments": {"a": 1,}}'), ParseErrorKind.INVALID_JSON),
        (block("{'name': 'f', 'arguments': {}}"), ParseErrorKind.INVALID_JSON),
        (block(""), ParseErrorKind.INVALID_JSON),
        (block(call_json("f", {}) + " trailing"), ParseErrorKind.INVALID_JSON),
        (block("[1, 2]"), ParseErrorKind.NOT_AN_OBJECT),
        (block('"just a string"'), ParseErrorKind.NOT_AN_OBJECT),
        (block('{"arguments": {}}'), ParseErrorKind.MISSING_NAME),
        (block('{"name": "", "arguments": {}}'), ParseErrorKind.MISSING_NAME),
        (block('{"name": 42, "arguments": {}}'), ParseErrorKind.MISSING_NAME),
        (block('{"name": "f", "arguments": [1]}'), ParseErrorKind.BAD_ARGUMENTS),
        (block('{"name": "f", "arguments": "not json"}'), ParseErrorKind.BAD_ARGUMENTS),
        (block('{"name": "f", "arguments": "[1, 2]"}'), ParseErrorKind.BAD_ARGUMENTS),
        (block('{"name": "f", "arguments": null}'), ParseErrorKind.BAD_ARGUMENTS),
        (block('{"name": "f", "arguments": {}, "id": "x"}'), ParseErrorKind.EXTRA_KEYS),
        (block('{"name": "f", "parameters": {}}'), ParseErrorKind.EXTRA_KEYS),
        ("<tool_call><tool_call>" + call_json("f", {}) + "</tool_call>", ParseErrorKind.INVALID_JSON),
    ],
)
def test_malformed_output_is_a_typed_error(text, kind):
    out = parse_tool_calls(text)
    assert not out.ok
    assert out.error.kind is kind, out.error
    assert out.calls == []  # strict: one bad block invalidates the turn
    assert kind.value in str(out.error)


def test_error_names_the_block():
    text = block(call_json("ok", {})) + block("{broken")
    out = parse_tool_calls(text)
    assert out.error.kind is ParseErrorKind.INVALID_JSON and out.error.block_index == 1
    assert "(block 1)" in str(out.error)


def test_arguments_as_json_string_are_accepted():
    out = parse_tool_calls(block(json.dumps({"name": "f", "arguments": json.dumps({"a": 1, "b": [2.0]})})))
    assert out.ok and out.calls[0].arguments == {"a": 1, "b": [2.0]}


def test_missing_arguments_means_no_arguments():
    out = parse_tool_calls(block('{"name": "now"}'))
    assert out.ok and out.calls == [ToolCall(name="now", arguments={})]


def test_name_whitespace_is_trimmed_but_body_must_be_json():
    out = parse_tool_calls("<tool_call>   " + call_json(" f ", {}) + "   </tool_call>")
    assert out.ok and out.calls[0].name == "f"


@pytest.mark.parametrize("value", [None, 42, 3.5, b"<tool_call>", ["<tool_call>"], {"text": "x"}, object()])
def test_non_string_input(value):
    out = parse_tool_calls(value)
    assert isinstance(out, ParsedOutput) and out.error.kind is ParseErrorKind.NOT_A_STRING and out.calls == []


def test_deeply_nested_json_does_not_raise():
    deep = "[" * 100_000 + "]" * 100_000
    out = parse_tool_calls(block('{"name": "f", "arguments": {"x": ' + deep + "}}"))
    assert not out.ok and out.error.kind is ParseErrorKind.INVALID_JSON


def test_huge_inputs_are_handled_quickly():
    # quadratic scanning would take minutes here; the parser is linear
    many_opens = "<tool_call>" * 200_000
    assert parse_tool_calls(many_opens).error.kind is ParseErrorKind.UNCLOSED_BLOCK
    many_thinks = "<think>" * 100_000 + "x"
    assert parse_tool_calls(many_thinks).ok
    many_blocks = "\n".join(block(call_json(f"f{i}", {"i": i})) for i in range(5_000))
    out = parse_tool_calls(many_blocks)
    assert out.ok and len(out.calls) == 5_000 and out.calls[-1].arguments == {"i": 4999}
    big_text = "x" * 5_000_000
    assert parse_tool_calls(big_text).text == big_text


def test_fuzz_never_raises():
    """Seeded random fuzz (hypothesis is not installed): arbitrary text and mutated call blocks."""
    rng = random.Random(20260101)
    pieces = [
        "<tool_call>", "</tool_call>", "<think>", "</think>", "{", "}", "[", "]", '"', "\\", ":", ",",
        '"name"', '"arguments"', "null", "true", "1e999", "NaN", "-0", "\n", " ", "é", "🚀", "\x00", "\ud800",
        call_json("f", {"a": 1}), block(call_json("g", {})), "<tool_", "call>", "</", "tool_call",
    ]  # fmt: skip
    for i in range(3000):
        if i % 3 == 0:
            text = "".join(chr(rng.randint(0, 0x10FFFF)) if rng.random() < 0.2 else rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        elif i % 3 == 1:
            good = render_tool_calls([ToolCall(name="f", arguments={"k": rng.random(), "s": "x" * rng.randint(0, 5)})])
            pos = rng.randint(0, len(good))
            cut = rng.randint(0, 5)
            text = good[:pos] + rng.choice(pieces) + good[pos + cut :]
        else:
            text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 200)))
        out = parse_tool_calls(text)
        assert isinstance(out, ParsedOutput)
        assert (out.error is None) or (out.calls == [])
        for c in out.calls:
            assert isinstance(c, ToolCall) and isinstance(c.arguments, dict) and c.name


def test_render_format():
    c = ToolCall(name="get_weather", arguments={"city": "Zürich"})
    assert render_tool_call(c) == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich"}}\n</tool_call>'
    two = render_tool_calls([c, ToolCall(name="now")], text=" Let me check. ")
    assert two.startswith("Let me check.\n<tool_call>\n") and two.count("<tool_call>") == 2
    assert render_tool_calls([]) == ""


def test_render_parse_round_trip_with_hostile_arguments():
    calls = [
        ToolCall(name="f", arguments={"text": "</tool_call> and <tool_call> and <think>x</think>", "n": 1, "x": 1.0}),
        ToolCall(name="g", arguments={"nested": {"deep": [{"</think>": "<think>"}], "t": True}, "u": "東京 🚀 \\ \" \n"}),
        ToolCall(name="h", arguments={}),
        ToolCall(name="i", arguments={"path": "C:\\<think>\\dir", "esc": "\\u003cthink>"}),
    ]
    text = render_tool_calls(calls, text="Calling three tools.")
    out = parse_tool_calls(text)
    assert out.ok, out.error
    assert out.calls == calls and out.text == "Calling three tools."
    for a, b in zip(out.calls, calls):
        assert json.dumps(a.arguments, sort_keys=True) == json.dumps(b.arguments, sort_keys=True)


def test_render_parse_round_trip_fuzz():
    rng = random.Random(7)
    alphabet = ["a", "é", "東", "🚀", "<", ">", "/", "\\", '"', "\n", "<tool_call>", "</tool_call>", "<think>", "</think>", "u003c"]

    def s() -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 10)))

    def v(d=0):
        r = rng.random()
        if d < 3 and r < 0.2:
            return {s(): v(d + 1) for _ in range(rng.randint(0, 3))}
        if d < 3 and r < 0.35:
            return [v(d + 1) for _ in range(rng.randint(0, 3))]
        return rng.choice([s(), rng.randint(-10, 10), rng.random(), True, False, None])

    for _ in range(500):
        calls = [ToolCall(name=rng.choice(["f", "get_x", "a.b-c"]), arguments={s(): v() for _ in range(rng.randint(0, 4))}) for _ in range(rng.randint(1, 3))]
        out = parse_tool_calls(render_tool_calls(calls))
        assert out.ok and out.calls == calls
