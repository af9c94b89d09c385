"""The tool-call reward (shared/reward.py): every documented rule and its tricky cases."""

from __future__ import annotations

import json

import pytest

from looptool.shared.records import Message, Sample, Tool, ToolCall
from looptool.shared.reward import (
    RewardConfig,
    RewardResult,
    calls_match,
    compute_score,
    normalize_string,
    parse_ground_truth,
    score_response,
    score_sample,
)
from looptool.shared.toolcall_format import render_tool_calls

WEATHER = Tool(
    name="get_weather",
    description="Weather for a city.",
    parameters={
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
            "days": {"type": "integer", "default": 1},
            "detailed": {"type": "boolean"},
            "lat": {"type": "number"},
        },
        "required": ["city"],
    },
)
MATH = Tool(
    name="sum_numbers",
    description="Add numbers.",
    parameters={
        "type": "dict",  # BFCL-style type names are normalised
        "properties": {
            "numbers": {"type": "array", "items": {"type": "float"}},
            "options": {
                "type": "dict",
                "properties": {"round": {"type": "integer", "default": 2}, "label": {"type": "string"}},
            },
            "flags": {"type": "array", "items": {"type": "boolean"}},
        },
        "required": ["numbers"],
    },
)
TOOLS = [WEATHER, MATH]


def call(name: str, **arguments) -> ToolCall:
    return ToolCall(name=name, arguments=arguments)


def resp(*calls: ToolCall, text: str = "") -> str:
    return render_tool_calls(list(calls), text=text)


def score(response: str, reference: list[ToolCall], tools=TOOLS, **cfg) -> RewardResult:
    return score_response(response, reference, tools, RewardConfig(**cfg) if cfg else None)


# --- exact matches and the multiset rule ------------------------------------------------------


def test_exact_match_scores_one():
    ref = [call("get_weather", city="Paris")]
    r = score(resp(*ref), ref)
    assert (r.score, r.correct, r.format_ok, r.reason) == (1.0, True, True, "ok")


def test_parallel_calls_in_another_order_are_correct():
    ref = [call("get_weather", city="Paris"), call("get_weather", city="Rome"), call("sum_numbers", numbers=[1.0])]
    r = score(resp(ref[2], ref[1], ref[0]), ref)
    assert r.correct and r.score == 1.0


def test_parallel_multiset_respects_multiplicity():
    ref = [call("get_weather", city="Paris"), call("get_weather", city="Rome")]
    r = score(resp(ref[0], ref[0]), ref)
    assert not r.correct and r.reason.startswith("argument_mismatch")
    # the same call twice when it is expected twice is right
    twice = [ref[0], ref[0]]
    assert score(resp(*twice), twice).correct


def test_call_count_must_match():
    ref = [call("get_weather", city="Paris"), call("get_weather", city="Rome")]
    assert score(resp(ref[0]), ref).reason.startswith("count_mismatch")
    assert score(resp(*ref, ref[0]), ref).reason.startswith("count_mismatch")


def test_function_names_are_exact():
    ref = [call("get_weather", city="Paris")]
    r = score(resp(call("Get_Weather", city="Paris")), ref, tools=None)
    assert not r.correct and r.reason.startswith("wrong_name")


def test_hallucinated_function_is_wrong_even_if_label_names_it():
    ref = [call("get_forecast", city="Paris")]  # not in the toolset
    r = score(resp(call("get_forecast", city="Paris")), ref)
    assert not r.correct and r.reason.startswith("hallucinated_function")
    # without a toolset there is nothing to check it against
    assert score(resp(call("get_forecast", city="Paris")), ref, tools=None).correct


# --- arguments: schema --------------------------------------------------------------------


def test_extra_argument_not_in_schema_is_wrong():
    ref = [call("get_weather", city="Paris")]
    r = score(resp(call("get_weather", city="Paris", country="FR")), ref)
    assert not r.correct and r.reason.startswith("extra_argument")


def test_missing_required_argument_is_wrong():
    ref = [call("sum_numbers", numbers=[1.0, 2.0])]
    r = score(resp(call("sum_numbers", options={"round": 2})), ref)
    assert not r.correct and r.reason.startswith("missing_required")


def test_additional_properties_allows_extra_arguments():
    open_tool = Tool(name="log", description="d", parameters={"type": "object", "properties": {}, "additionalProperties": True})
    ref = [call("log", anything=1)]
    assert score(resp(*ref), ref, tools=[open_tool]).correct


# --- arguments: optional and defaults ------------------------------------------------------


def test_omitted_optional_equals_declared_default():
    ref = [call("get_weather", city="Paris", unit="celsius")]
    assert score(resp(call("get_weather", city="Paris")), ref).correct
    # and vice versa: the prediction spells out the default the label omits
    ref2 = [call("get_weather", city="Paris")]
    assert score(resp(call("get_weather", city="Paris", unit="celsius", days=1)), ref2).correct


def test_omitted_optional_with_non_default_reference_is_wrong():
    ref = [call("get_weather", city="Paris", unit="fahrenheit")]
    r = score(resp(call("get_weather", city="Paris")), ref)
    assert not r.correct and "unit" in r.reason


def test_extra_optional_with_non_default_value_is_wrong():
    ref = [call("get_weather", city="Paris")]
    assert not score(resp(call("get_weather", city="Paris", days=3)), ref).correct


def test_extra_optional_without_default_is_wrong():
    ref = [call("get_weather", city="Paris")]
    r = score(resp(call("get_weather", city="Paris", detailed=False)), ref)
    assert not r.correct and "detailed" in r.reason


def test_defaults_can_be_turned_off():
    ref = [call("get_weather", city="Paris", unit="celsius")]
    assert not score(resp(call("get_weather", city="Paris")), ref, use_schema_defaults=False).correct


def test_nested_object_defaults_are_filled():
    ref = [call("sum_numbers", numbers=[1.0], options={"round": 2, "label": "x"})]
    assert score(resp(call("sum_numbers", numbers=[1.0], options={"label": "X"})), ref).correct


def test_null_is_not_the_same_as_absent_without_a_default():
    ref = [call("get_weather", city="Paris")]
    assert not score(resp(call("get_weather", city="Paris", detailed=None)), ref).correct


# --- arguments: types ----------------------------------------------------------------------


def test_bool_never_equals_int():
    ref = [call("get_weather", city="Paris", detailed=True)]
    assert not score(resp(call("get_weather", city="Paris", detailed=1)), ref).correct
    ref0 = [call("get_weather", city="Paris", days=1)]
    assert not score(resp(call("get_weather", city="Paris", days=True)), ref0).correct
    ref_false = [call("sum_numbers", numbers=[0.0], flags=[False])]
    assert not score(resp(call("sum_numbers", numbers=[0.0], flags=[0])), ref_false).correct
    # also without any schema
    assert not calls_match([call("f", x=True)], [call("f", x=1)])[0]
    assert not calls_match([call("f", x=0)], [call("f", x=False)])[0]


def test_int_equals_float_for_number_parameters_only():
    ref = [call("get_weather", city="Paris", lat=48.0)]
    assert score(resp(call("get_weather", city="Paris", lat=48)), ref).correct
    ref_list = [call("sum_numbers", numbers=[1.0, 2.5])]
    assert score(resp(call("sum_numbers", numbers=[1, 2.5])), ref_list).correct
    # integer parameter: 3.0 is not 3 (as in BFCL)
    ref_int = [call("get_weather", city="Paris", days=3)]
    assert not score(resp(call("get_weather", city="Paris", days=3.0)), ref_int).correct
    # no schema: numbers compare by value
    assert calls_match([call("f", x=5)], [call("f", x=5.0)])[0]


def test_wrong_types_are_wrong():
    ref = [call("get_weather", city="Paris", days=3)]
    assert not score(resp(call("get_weather", city="Paris", days="3")), ref).correct
    ref_s = [call("get_weather", city="5")]
    assert not score(resp(call("get_weather", city=5)), ref_s).correct
    ref_l = [call("sum_numbers", numbers=[1.0])]
    assert not score(resp(call("sum_numbers", numbers=1.0)), ref_l).correct


def test_lists_keep_order_and_multiplicity():
    ref = [call("sum_numbers", numbers=[1.0, 2.0])]
    assert not score(resp(call("sum_numbers", numbers=[1.0, 2.0, 2.0])), ref).correct
    assert not score(resp(call("sum_numbers", numbers=[2.0, 1.0])), ref).correct
    assert not score(resp(call("sum_numbers", numbers=[1.0])), ref).correct
    dup = [call("sum_numbers", numbers=[1.0, 2.0, 2.0])]
    assert not score(resp(call("sum_numbers", numbers=[1.0, 2.0])), dup).correct


def test_dicts_compare_recursively_ignoring_key_order():
    ref = [call("sum_numbers", numbers=[1.0], options={"round": 3, "label": "Total"})]
    assert score(resp(call("sum_numbers", numbers=[1.0], options={"label": "total", "round": 3})), ref).correct
    assert not score(resp(call("sum_numbers", numbers=[1.0], options={"label": "Total", "round": 4})), ref).correct
    assert not calls_match([call("f", d={"a": {"b": [1, 2]}})], [call("f", d={"a": {"b": [2, 1]}})])[0]
    assert calls_match([call("f", d={"a": {"b": " X  y"}})], [call("f", d={"a": {"b": "x y"}})])[0]


# --- strings -------------------------------------------------------------------------------


def test_string_normalisation_rules():
    assert normalize_string("  New   York\tCity \n") == "new york city"
    assert normalize_string("ＡＢＣ") == "abc"  # NFKC folds full-width forms
    assert normalize_string("Straße") == normalize_string("STRASSE")  # casefold, not lower
    ref = [call("get_weather", city="New York")]
    assert score(resp(call("get_weather", city="  new   YORK ")), ref).correct
    # punctuation is kept
    assert not score(resp(call("get_weather", city="New-York")), ref).correct
    assert not score(resp(call("get_weather", city="NewYork")), ref).correct


def test_exact_strings_when_normalisation_is_off():
    ref = [call("get_weather", city="Paris")]
    assert not score(resp(call("get_weather", city="paris")), ref, normalize_strings=False).correct
    assert score(resp(call("get_weather", city="Paris")), ref, normalize_strings=False).correct


# --- format, reasoning, irrelevance ---------------------------------------------------------


def test_calls_inside_think_never_count():
    ref = [call("get_weather", city="Paris")]
    thought = "<think>maybe " + resp(call("get_weather", city="Rome")) + "</think>\n"
    assert score(thought + resp(*ref), ref).correct
    only_thought = score("<think>" + resp(*ref) + "</think>The weather is nice.", ref)
    assert not only_thought.correct and only_thought.reason.startswith("no_call")
    unclosed = score("<think>" + resp(*ref), ref)
    assert not unclosed.correct
    assert score(thought + resp(*ref), ref).details["reasoning_stripped"] is True


def test_text_instead_of_call_is_wrong():
    ref = [call("get_weather", city="Paris")]
    r = score("The weather in Paris is sunny.", ref)
    assert (r.correct, r.format_ok, r.score) == (False, False, 0.0)
    assert r.reason.startswith("no_call")
    assert score("", ref).reason == "no_call: empty response"


def test_text_next_to_calls_is_tolerated_unless_strict():
    ref = [call("get_weather", city="Paris")]
    text = resp(*ref, text="Let me check.")
    assert score(text, ref).correct
    strict = score(text, ref, strict_format=True)
    assert not strict.correct and strict.reason.startswith("text_with_calls") and not strict.format_ok


def test_irrelevance_right_answer_is_no_call():
    assert score("I cannot help with that using these tools.", []).correct
    assert score("<think>" + resp(call("get_weather", city="Paris")) + "</think>No tool fits.", []).correct
    r = score(resp(call("get_weather", city="Paris")), [])
    assert not r.correct and not r.format_ok and r.reason.startswith("unexpected_call")


def test_parse_errors_score_zero():
    ref = [call("get_weather", city="Paris")]
    for bad in ("<tool_call>{\"name\": \"get_weather\"", "<tool_call>not json</tool_call>", "</tool_call>"):
        r = score(bad, ref)
        assert (r.score, r.correct, r.format_ok) == (0.0, False, False)
        assert r.reason.startswith("parse_error")
    assert score(None, ref).reason.startswith("parse_error")  # type: ignore[arg-type]
    # a broken block is a format error when no call is expected as well
    assert not score("<tool_call>{oops", []).correct


# --- partial credit ------------------------------------------------------------------------


def test_binary_by_default():
    ref = [call("get_weather", city="Paris")]
    assert score(resp(call("get_weather", city="Rome")), ref).score == 0.0


def test_partial_credit_mode():
    ref = [call("get_weather", city="Paris"), call("sum_numbers", numbers=[1.0])]
    cfg = {"partial_credit": True}
    assert score(resp(*ref), ref, **cfg).score == 1.0
    right_names = score(resp(call("get_weather", city="Rome"), ref[1]), ref, **cfg)
    assert right_names.score == pytest.approx(0.1 + 0.2)
    half_names = score(resp(call("get_weather", city="Rome"), call("get_weather", city="Oslo")), ref, **cfg)
    assert half_names.score == pytest.approx(0.1 + 0.2 * 0.5)
    assert score("just text", ref, **cfg).score == 0.0  # wrong shape: no credit
    assert score("<tool_call>{", ref, **cfg).score == 0.0
    assert score(resp(call("get_weather", city="Paris")), [], **cfg).score == 0.0


def test_config_validation():
    with pytest.raises(ValueError):
        RewardConfig(format_credit=0.6, name_credit=0.5)
    with pytest.raises(ValueError, match="unknown option"):
        RewardConfig.from_mapping({"partial": True})


# --- Sample and verl entry points -----------------------------------------------------------


def test_score_sample_uses_the_sample_tools_and_reference():
    sample = Sample(
        context=[Message(role="user", content="Weather in Paris?")],
        tools=[WEATHER],
        reference=[call("get_weather", city="Paris")],
    )
    assert score_sample(resp(call("get_weather", city="paris")), sample).correct
    assert score_sample(resp(call("get_weather", city="Paris", x=1)), sample).reason.startswith("extra_argument")
    text_turn = Sample(context=[Message(role="user", content="hi")], tools=[WEATHER], reference_text="Hello!")
    assert score_sample("Hello! How can I help?", text_turn).correct


def test_compute_score_verl_signature():
    gt = json.dumps([{"name": "get_weather", "arguments": {"city": "Paris"}}])
    out = compute_score("looptool/synth", resp(call("get_weather", city="Paris")), gt)
    assert out["score"] == 1.0 and out["correct"] == 1.0 and out["format_ok"] == 1.0
    assert all(isinstance(v, float) for v in out.values())
    assert compute_score("anything", "no call", gt)["score"] == 0.0
    # the data source never changes the rules
    assert compute_score("other_experiment", resp(call("get_weather", city="Paris")), gt)["score"] == 1.0


def test_compute_score_tools_and_kwargs():
    gt = json.dumps([{"name": "get_weather", "arguments": {"city": "Paris"}}])
    extra = {"tools": json.dumps([WEATHER.to_openai()])}
    bad = resp(call("get_weather", city="Paris", country="FR"))
    assert compute_score("d", bad, gt)["score"] == 0.0  # differs from the reference anyway
    assert compute_score("d", resp(call("get_weather", city="Paris", unit="celsius")), gt, extra)["score"] == 1.0
    assert compute_score("d", resp(call("get_weather", city="Paris", unit="celsius")), gt)["score"] == 0.0
    partial = compute_score("d", resp(call("get_weather", city="Rome")), gt, extra, partial_credit=True)
    assert partial["score"] == pytest.approx(0.3)
    embedded = json.dumps({"calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}], "tools": [WEATHER.to_openai()]})
    assert compute_score("d", resp(call("get_weather", city="Paris", days=1)), embedded)["score"] == 1.0


def test_parse_ground_truth_shapes_and_errors():
    calls, tools = parse_ground_truth('[{"function": {"name": "f", "arguments": "{\\"a\\": 1}"}}]')
    assert calls == [ToolCall(name="f", arguments={"a": 1})] and tools is None
    assert parse_ground_truth("[]") == ([], None)
    assert parse_ground_truth([{"name": "f", "arguments": {}}])[0][0].name == "f"
    for bad in ("{not json", '{"calls": 3}', '[{"arguments": {}}]', '[1]'):
        with pytest.raises(ValueError):
            parse_ground_truth(bad)


def test_tools_as_openai_dicts():
    ref = [call("get_weather", city="Paris")]
    assert score_response(resp(*ref), ref, [WEATHER.to_openai()]).correct
    assert score_response(resp(*ref), ref, [WEATHER.model_dump()]).correct
