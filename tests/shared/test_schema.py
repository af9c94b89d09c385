"""Tool definition checks and call validation (jsonschema)."""

from __future__ import annotations

import copy

import pytest

from looptool.shared.records import Tool, ToolCall
from looptool.shared.schema import (
    CallIssue,
    ToolSchemaError,
    check_tool,
    is_valid_call,
    normalize_schema,
    validate_call,
)

WEATHER = Tool(
    name="get_weather",
    description="Current weather for a city",
    parameters={
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer", "minimum": 1, "maximum": 14},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "coords": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
            "options": {"type": "object", "properties": {"alerts": {"type": "boolean"}}, "required": ["alerts"]},
        },
        "required": ["city"],
    },
)

# A BFCL-style function doc: Python type names.
BFCL = Tool(
    name="calc.area-v2",
    description="Area of a shape",
    parameters={
        "type": "dict",
        "properties": {
            "base": {"type": "float", "description": "base"},
            "height": {"type": "int"},
            "tags": {"type": "tuple", "items": {"type": "str"}},
            "extra": {"type": "dict", "properties": {"flag": {"type": "bool"}}},
            "anything": {"type": "any"},
            "nullable": {"type": ["float", "null"]},
            "choice": {"anyOf": [{"type": "int"}, {"type": "String"}]},
        },
        "required": ["base", "height"],
    },
)


def test_good_tools_pass():
    check_tool(WEATHER)
    check_tool(BFCL)
    check_tool(Tool(name="now", description="current time", parameters={"type": "object", "properties": {}}))
    check_tool(Tool(name="now2", description="current time", parameters={"type": "object"}))


def test_normalize_bfcl_types():
    n = normalize_schema(BFCL.parameters)
    assert n["type"] == "object"
    p = n["properties"]
    assert p["base"]["type"] == "number" and p["height"]["type"] == "integer"
    assert p["tags"]["type"] == "array" and p["tags"]["items"]["type"] == "string"
    assert p["extra"]["type"] == "object" and p["extra"]["properties"]["flag"]["type"] == "boolean"
    assert "type" not in p["anything"]
    assert p["nullable"]["type"] == ["number", "null"]
    assert [s["type"] for s in p["choice"]["anyOf"]] == ["integer", "string"]
    assert BFCL.parameters["type"] == "dict"  # the input is not modified


def test_normalize_reaches_defs_and_prefix_items():
    schema = {
        "type": "dict",
        "$defs": {"point": {"type": "dict", "properties": {"x": {"type": "float"}}}},
        "properties": {
            "pair": {"type": "list", "prefixItems": [{"type": "int"}, {"type": "str"}]},
            "m": {"type": "dict", "additionalProperties": {"type": "long"}},
            "props_named_type": {"type": "dict", "properties": {"type": {"type": "str"}}},
        },
    }
    n = normalize_schema(schema)
    assert n["$defs"]["point"]["properties"]["x"]["type"] == "number"
    assert [s["type"] for s in n["properties"]["pair"]["prefixItems"]] == ["integer", "string"]
    assert n["properties"]["m"]["additionalProperties"]["type"] == "integer"
    assert n["properties"]["props_named_type"]["properties"]["type"] == {"type": "string"}


@pytest.mark.parametrize(
    "tool, field",
    [
        (Tool(name="", description="x"), "name"),
        (Tool(name="has space", description="x"), "name"),
        (Tool(name="f", description="   "), "description"),
        (Tool(name="f", description="x", parameters={"type": "array"}), "parameters.type"),
        (Tool(name="f", description="x", parameters={"properties": {}}), "parameters.type"),
        (Tool(name="f", description="x", parameters={"type": "object", "properties": []}), "parameters.properties"),
        (Tool(name="f", description="x", parameters={"type": "object", "required": "city"}), "parameters.required"),
        (
            Tool(name="f", description="x", parameters={"type": "object", "properties": {}, "required": ["city"]}),
            "parameters.required",
        ),
        (
            Tool(name="f", description="x", parameters={"type": "object", "properties": {"a": {"type": "strin"}}}),
            "parameters.properties.a.type",
        ),
        (
            Tool(name="f", description="x", parameters={"type": "object", "properties": {"a": {"type": "string", "minLength": -1}}}),
            "parameters.properties.a.minLength",
        ),
        (
            Tool(name="f", description="x", parameters={"type": "object", "properties": {"a": {"enum": "notalist"}}}),
            "parameters.properties.a.enum",
        ),
    ],
)
def test_bad_tools_name_tool_and_field(tool, field):
    with pytest.raises(ToolSchemaError) as ei:
        check_tool(tool)
    err = ei.value
    assert err.field == field, str(err)
    assert err.tool == (tool.name or "<unnamed>")
    msg = str(err)
    assert "\n" not in msg and f"'{field}'" in msg and repr(err.tool) in msg


def test_valid_calls():
    assert validate_call(ToolCall(name="get_weather", arguments={"city": "Paris"}), [WEATHER]) == []
    full = {"city": "Paris", "days": 3, "unit": "celsius", "coords": [48.8, 2.35], "options": {"alerts": True}}
    assert is_valid_call(ToolCall(name="get_weather", arguments=full), {"get_weather": WEATHER})
    assert is_valid_call(ToolCall(name="calc.area-v2", arguments={"base": 2, "height": 3, "tags": ["a"], "nullable": None}), [BFCL])
    assert is_valid_call(ToolCall(name="calc.area-v2", arguments={"base": 2.5, "height": 3, "anything": [1, {"x": 2}]}), [BFCL])


def fields(issues: list[CallIssue]) -> list[str]:
    return [i.field for i in issues]


def test_unknown_function():
    issues = validate_call(ToolCall(name="get_wether", arguments={}), [WEATHER])
    assert fields(issues) == ["name"] and "get_wether" in issues[0].message


def test_call_issues_name_the_argument():
    call = ToolCall(
        name="get_weather",
        arguments={"days": "3", "unit": "kelvin", "coords": [1, "x"], "options": {}, "invented": 1},
    )
    issues = validate_call(call, [WEATHER])
    by_field = {i.field: i.message for i in issues}
    assert set(by_field) == {
        "arguments.city",  # missing required
        "arguments.days",  # wrong type
        "arguments.unit",  # not in enum
        "arguments.coords.1",  # wrong item type
        "arguments.options.alerts",  # nested required
        "arguments.invented",  # not defined by the tool
    }, issues
    assert "missing" in by_field["arguments.city"]
    assert "integer" in by_field["arguments.days"]
    assert "kelvin" in by_field["arguments.unit"]
    assert "unexpected" in by_field["arguments.invented"]
    assert str(issues[0]).startswith(issues[0].field + ": ")


def test_type_strictness():
    # booleans are not integers, and integral floats count as integers (JSON Schema semantics)
    assert fields(validate_call(ToolCall(name="get_weather", arguments={"city": "P", "days": True}), [WEATHER])) == ["arguments.days"]
    assert validate_call(ToolCall(name="get_weather", arguments={"city": "P", "days": 3.0}), [WEATHER]) == []
    assert fields(validate_call(ToolCall(name="get_weather", arguments={"city": "P", "days": 0}), [WEATHER])) == ["arguments.days"]
    # BFCL "float" accepts ints (JSON numbers), "int" rejects 2.5
    assert fields(validate_call(ToolCall(name="calc.area-v2", arguments={"base": 1, "height": 2.5}), [BFCL])) == ["arguments.height"]


def test_explicit_additional_properties_are_respected():
    open_tool = Tool(
        name="kv",
        description="store",
        parameters={"type": "object", "properties": {"k": {"type": "string"}}, "additionalProperties": True},
    )
    assert validate_call(ToolCall(name="kv", arguments={"k": "a", "other": 1}), [open_tool]) == []
    typed = copy.deepcopy(open_tool)
    typed.parameters["additionalProperties"] = {"type": "integer"}
    assert validate_call(ToolCall(name="kv", arguments={"k": "a", "n": 1}), [typed]) == []
    assert fields(validate_call(ToolCall(name="kv", arguments={"k": "a", "n": "x"}), [typed])) == ["arguments.n"]
    patterned = Tool(
        name="pp",
        description="x",
        parameters={
            "type": "object",
            "properties": {},
            "patternProperties": {"^x_": {"type": "string"}},
            "additionalProperties": False,
        },
    )
    assert validate_call(ToolCall(name="pp", arguments={"x_a": "1"}), [patterned]) == []
    assert fields(validate_call(ToolCall(name="pp", arguments={"x_a": "1", "y": 2}), [patterned])) == ["arguments.y"]


def test_invalid_tool_schema_raises_on_validation():
    bad = Tool(name="bad", description="x", parameters={"type": "object", "properties": {"a": {"type": "strin"}}})
    with pytest.raises(ToolSchemaError) as ei:
        validate_call(ToolCall(name="bad", arguments={"a": 1}), [bad])
    assert ei.value.tool == "bad" and ei.value.field == "parameters.properties.a.type"
    dangling = Tool(name="ref", description="x", parameters={"type": "object", "properties": {"a": {"$ref": "#/$defs/nope"}}})
    with pytest.raises(ToolSchemaError):
        validate_call(ToolCall(name="ref", arguments={"a": 1}), [dangling])


def test_refs_resolve():
    tool = Tool(
        name="pts",
        description="x",
        parameters={
            "type": "object",
            "$defs": {"pt": {"type": "object", "properties": {"x": {"type": "float"}}, "required": ["x"]}},
            "properties": {"p": {"$ref": "#/$defs/pt"}},
        },
    )
    check_tool(tool)
    assert validate_call(ToolCall(name="pts", arguments={"p": {"x": 1.5}}), [tool]) == []
    assert fields(validate_call(ToolCall(name="pts", arguments={"p": {}}), [tool])) == ["arguments.p.x"]


def test_check_tool_cache_keeps_verdicts_per_definition():
    """check_tool memoises by definition: the same name with another schema is checked afresh,
    and a cached failure is raised again with the same message."""
    import pytest

    from looptool.shared.records import Tool
    from looptool.shared.schema import ToolSchemaError, check_tool

    good = Tool(name="cached_tool", description="d", parameters={"type": "object", "properties": {"a": {"type": "string"}}})
    bad = Tool(name="cached_tool", description="d", parameters={"type": "object", "properties": {"a": {"type": 7}}})
    for _ in range(2):
        check_tool(good)
        with pytest.raises(ToolSchemaError) as err:
            check_tool(bad)
        assert "cached_tool" in str(err.value) and "properties" in err.value.field
