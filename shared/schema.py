"""JSON-Schema checks: tool definitions and calls against their tools (jsonschema library)."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from looptool.shared.records import Tool, ToolCall

# BFCL and many hand-written toolsets use Python-ish type names; map them to JSON Schema.
_TYPE_ALIASES = {
    "dict": "object",
    "float": "number",
    "int": "integer",
    "bool": "boolean",
    "list": "array",
    "tuple": "array",
    "str": "string",
    "any": None,
    "String": "string",
    "Boolean": "boolean",
    "Integer": "integer",
    "Array": "array",
    "ArrayList": "array",
    "HashMap": "object",
    "Hashtable": "object",
    "Queue": "array",
    "Stack": "array",
    "Any": None,
    "double": "number",
    "long": "integer",
    "char": "string",
    "short": "integer",
    "byte": "integer",
    "Bigint": "integer",
    "Set": "array",
    "object": "object",
}


class ToolSchemaError(ValueError):
    """A tool definition is unusable; the message names the tool and the field."""

    def __init__(self, tool: str, field: str, problem: str):
        problem = " ".join(str(problem).split())  # one line, whatever jsonschema said
        if len(problem) > 300:
            problem = problem[:297] + "..."
        self.tool, self.field, self.problem = tool, field, problem
        super().__init__(f"tool {tool!r}: field {field!r}: {problem}; fix the tool definition")


_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_VALUES = ("items", "additionalProperties", "additionalItems", "unevaluatedProperties", "unevaluatedItems",
                  "contains", "propertyNames", "not", "if", "then", "else")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")


def _normalize_type(value: Any) -> Any:
    """Map one ``type`` value; returns None when the type must be dropped (``any``)."""
    if isinstance(value, str):
        return _TYPE_ALIASES.get(value, value) if value in _TYPE_ALIASES else value
    if isinstance(value, list):
        mapped = [_TYPE_ALIASES.get(v, v) if isinstance(v, str) and v in _TYPE_ALIASES else v for v in value]
        if any(m is None for m in mapped):
            return None
        out: list[Any] = []
        for m in mapped:
            if m not in out:
                out.append(m)
        return out
    return value


def normalize_schema(schema: Any) -> Any:
    """Return a JSON Schema with Python-style type names (BFCL's ``dict``, ``float``, ...) mapped to
    JSON Schema names, recursively through every keyword that holds sub-schemas. ``any`` drops the
    ``type`` constraint. The input is not modified."""
    if isinstance(schema, list):
        return [normalize_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type":
            mapped = _normalize_type(value)
            if mapped is not None:
                out[key] = mapped
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {k: normalize_schema(v) for k, v in value.items()}
        elif key in _SCHEMA_VALUES or key in _SCHEMA_LISTS:
            out[key] = normalize_schema(value)
        else:
            out[key] = value
    return out


def check_tool(tool: Tool) -> None:
    """Raise ToolSchemaError when the tool cannot be used."""
    try:
        params_key = json.dumps(tool.parameters, sort_keys=True)
    except (TypeError, ValueError):  # not JSON at all: the uncached check names the field
        _check_tool(tool)
        return
    problem = _tool_problem(tool.name, tool.description, params_key)
    if problem is not None:
        raise ToolSchemaError(*problem)


# Every simulator session, probe and expansion re-checks its tools; the meta-schema check dominated
# a synthesized dialogue's CPU, and the same few tools come back again and again.
@functools.lru_cache(maxsize=4096)
def _tool_problem(name: str, description: str, params_json: str) -> tuple[str, str, str] | None:
    try:
        _check_tool(Tool(name=name, description=description, parameters=json.loads(params_json)))
    except ToolSchemaError as exc:
        return exc.tool, exc.field, exc.problem
    return None


def _check_tool(tool: Tool) -> None:
    if not tool.name or not tool.name.replace("_", "a").replace(".", "a").replace("-", "a").isalnum():
        raise ToolSchemaError(tool.name or "<unnamed>", "name", "must be non-empty letters, digits, '_', '.', '-'")
    if not tool.description.strip():
        raise ToolSchemaError(tool.name, "description", "is empty; describe what the tool does")
    params = tool.parameters
    if not isinstance(params, dict):
        raise ToolSchemaError(tool.name, "parameters", "must be a JSON Schema object")
    if params.get("type") not in ("object", "dict"):
        raise ToolSchemaError(tool.name, "parameters.type", f"must be 'object', got {params.get('type')!r}")
    props = params.get("properties", {})
    if not isinstance(props, dict):
        raise ToolSchemaError(tool.name, "parameters.properties", "must be an object of property schemas")
    required = params.get("required", [])
    if not isinstance(required, list) or any(not isinstance(r, str) for r in required):
        raise ToolSchemaError(tool.name, "parameters.required", "must be a list of property names")
    missing = [r for r in required if r not in props]
    if missing:
        raise ToolSchemaError(tool.name, "parameters.required", f"names undefined properties {missing}")
    try:
        Draft202012Validator.check_schema(normalize_schema(params))
    except SchemaError as exc:
        path = ".".join(str(p) for p in exc.path) or "parameters"
        raise ToolSchemaError(tool.name, f"parameters.{path}" if path != "parameters" else path, exc.message) from None


@dataclass(frozen=True)
class CallIssue:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@functools.lru_cache(maxsize=1024)
def _validator_for(tool_name: str, schema_json: str) -> Draft202012Validator:
    schema = normalize_schema(json.loads(schema_json))
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        path = ".".join(str(p) for p in exc.path)
        raise ToolSchemaError(tool_name, f"parameters.{path}" if path else "parameters", exc.message) from None
    return Draft202012Validator(schema)


def _issues_for(err: jsonschema.ValidationError) -> list[CallIssue]:
    path = ".".join(str(p) for p in err.absolute_path)
    base = f"arguments.{path}" if path else "arguments"
    # the schema is parsed JSON that passed check_schema, so "required" is always a list
    if err.validator == "required" and isinstance(err.instance, dict) and isinstance(err.validator_value, list):
        # one error per missing property; name the property in the field
        missing = [r for r in err.validator_value if r not in err.instance and repr(r) in err.message]
        if missing:
            return [CallIssue(f"{base}.{missing[0]}", "required argument is missing")]
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        schema = err.schema if isinstance(err.schema, dict) else {}
        known = set(schema.get("properties", {}))
        patterns = list(schema.get("patternProperties", {}))
        extra = [k for k in err.instance if k not in known and not any(re.search(p, k) for p in patterns)]
        if extra:
            return [CallIssue(f"{base}.{k}", "unexpected argument: the tool does not define it") for k in extra]
    return [CallIssue(base, err.message)]


def validate_call(call: ToolCall, tools: list[Tool] | dict[str, Tool]) -> list[CallIssue]:
    """Check a call against its tool's schema. Returns a list of issues (empty = valid).

    Each issue's ``field`` names the argument (``arguments.city``, ``arguments.dates.0``).
    Top-level arguments the tool does not define are issues unless the tool's schema sets
    ``additionalProperties`` itself: a model that invents a parameter made a wrong call.
    A tool whose schema is not valid JSON Schema raises ToolSchemaError (the tool is at fault).
    """
    by_name = tools if isinstance(tools, dict) else {t.name: t for t in tools}
    tool = by_name.get(call.name)
    if tool is None:
        return [CallIssue("name", f"unknown function {call.name!r}")]
    params = tool.parameters if isinstance(tool.parameters, dict) else {}
    if "additionalProperties" not in params and isinstance(params.get("properties"), dict):
        params = {**params, "additionalProperties": False}
    validator = _validator_for(tool.name, json.dumps(params, sort_keys=True, default=str))
    issues: list[CallIssue] = []
    try:
        errors = sorted(validator.iter_errors(call.arguments), key=lambda e: [str(p) for p in e.absolute_path])
    except Exception as exc:  # e.g. an unresolvable $ref: the schema, not the call, is broken
        raise ToolSchemaError(tool.name, "parameters", f"cannot be evaluated ({exc.__class__.__name__}: {exc})") from None
    for err in errors:
        issues.extend(_issues_for(err))
    return sorted(issues, key=lambda i: i.field)


def is_valid_call(call: ToolCall, tools: list[Tool] | dict[str, Tool]) -> bool:
    return not validate_call(call, tools)


__all__ = [
    "ToolSchemaError",
    "CallIssue",
    "check_tool",
    "validate_call",
    "is_valid_call",
    "normalize_schema",
    "jsonschema",
]
