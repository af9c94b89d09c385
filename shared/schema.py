"""JSON-Schema checks: tool definitions and calls against their tools (jsonschema library)."""

from __future__ import annotations

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
        self.tool, self.field, self.problem = tool, field, problem
        super().__init__(f"tool {tool!r}: field {field!r}: {problem}")


def normalize_schema(schema: Any) -> Any:
    """Return a JSON Schema with Python-style type names mapped to JSON Schema names."""
    if isinstance(schema, list):
        return [normalize_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, str) and value in _TYPE_ALIASES:
            mapped = _TYPE_ALIASES[value]
            if mapped is not None:
                out[key] = mapped
        elif key == "properties" and isinstance(value, dict):
            out[key] = {k: normalize_schema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "anyOf", "oneOf", "allOf", "not"):
            out[key] = normalize_schema(value)
        else:
            out[key] = value
    return out


def check_tool(tool: Tool) -> None:
    """Raise ToolSchemaError when the tool cannot be used."""
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


def validate_call(call: ToolCall, tools: list[Tool] | dict[str, Tool]) -> list[CallIssue]:
    """Check a call against its tool's schema. Returns a list of issues (empty = valid)."""
    by_name = tools if isinstance(tools, dict) else {t.name: t for t in tools}
    tool = by_name.get(call.name)
    if tool is None:
        return [CallIssue("name", f"unknown function {call.name!r}")]
    schema = normalize_schema(tool.parameters)
    validator = Draft202012Validator(schema)
    issues = []
    for err in sorted(validator.iter_errors(call.arguments), key=lambda e: list(e.path)):
        path = ".".join(str(p) for p in err.path)
        issues.append(CallIssue(f"arguments.{path}" if path else "arguments", err.message))
    return issues


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
