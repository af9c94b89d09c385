"""Schema-valid calls: :func:`make_call` (a new call to a tool) and :func:`vary_call` (the same
call structure with new values, for expansion)."""

from __future__ import annotations

import json
import random
from typing import Any, Mapping

from looptool.shared.records import Tool, ToolCall
from looptool.shared.schema import normalize_schema, validate_call

from .values import sample_value


def tool_params(tool: Tool) -> tuple[dict[str, Any], list[str]]:
    params = normalize_schema(tool.parameters) if isinstance(tool.parameters, dict) else {}
    props = params.get("properties") if isinstance(params.get("properties"), dict) else {}
    required = [r for r in (params.get("required") or []) if r in props]
    return props, required


def _tool_hint(tool: Tool) -> str:
    return tool.description or ""


def make_call(tool: Tool, rng: random.Random, include_optional: float = 0.5, attempts: int = 6) -> ToolCall:
    """A schema-valid call to ``tool``: all required arguments; each optional one with probability
    ``include_optional``. Values are re-drawn (up to ``attempts`` times) until the call validates;
    an optional argument that never validates is left out."""
    props, required = tool_params(tool)
    hint = _tool_hint(tool)
    args: dict[str, Any] = {}
    for pname, pschema in props.items():
        if pname in required or rng.random() < include_optional:
            args[pname] = sample_value(pname, pschema if isinstance(pschema, dict) else {}, rng, hint)
    call = ToolCall(name=tool.name, arguments=args)
    for _ in range(attempts):
        try:
            issues = validate_call(call, [tool])
        except Exception:  # noqa: BLE001 - a broken schema: return the best effort
            return call
        if not issues:
            return call
        # a sorted list, not a set: the redraw order must not depend on PYTHONHASHSEED
        bad = sorted({i.field.split(".")[1] for i in issues if i.field.startswith("arguments.") and len(i.field.split(".")) > 1})
        if not bad:
            break
        for pname in bad:
            if pname in props:
                call.arguments[pname] = sample_value(pname, props[pname] if isinstance(props[pname], dict) else {}, rng, hint)
    try:
        issues = validate_call(call, [tool])
    except Exception:  # noqa: BLE001
        return call
    for i in issues:
        parts = i.field.split(".")
        if len(parts) > 1 and parts[1] in call.arguments and parts[1] not in required:
            call.arguments.pop(parts[1], None)
    return call


def _vary_value(name: str, old: Any, schema: Mapping[str, Any], rng: random.Random, hint: str) -> Any:
    schema = normalize_schema(dict(schema or {}))
    if isinstance(old, dict):
        found = schema.get("properties")
        props = found if isinstance(found, dict) else {}
        return {k: _vary_value(k, v, props.get(k, {}) if isinstance(props.get(k), dict) else {}, rng, hint) for k, v in old.items()}
    if isinstance(old, list):
        found = schema.get("items")
        items = found if isinstance(found, dict) else {}
        item_name = name[:-1] if name.endswith("s") and len(name) > 3 else name
        return [_vary_value(item_name, v, items, rng, hint) for v in old]
    if isinstance(old, bool):
        return rng.random() < 0.5
    if isinstance(old, int) and not schema.get("type") and not schema.get("enum"):
        schema = {**schema, "type": "integer"}
    if isinstance(old, float) and not schema.get("type") and not schema.get("enum"):
        schema = {**schema, "type": "number"}
    return sample_value(name, schema, rng, hint)


def vary_call(call: ToolCall, tool: Tool, rng: random.Random, attempts: int = 8) -> ToolCall:
    """The same function with the same argument keys (and array lengths, nested keys) but new
    values; the result validates against ``tool`` whenever ``call`` did. When no different valid
    values can be found (e.g. single-value enums), a copy of ``call`` comes back."""
    props, _ = tool_params(tool)
    hint = _tool_hint(tool)
    try:
        originally_valid = not validate_call(call, [tool])
    except Exception:  # noqa: BLE001
        originally_valid = False
    best: ToolCall | None = None
    for _ in range(attempts):
        args = {k: _vary_value(k, v, props.get(k, {}) if isinstance(props.get(k), dict) else {}, rng, hint)
                for k, v in call.arguments.items()}
        cand = ToolCall(name=call.name, arguments=args)
        try:
            ok = not validate_call(cand, [tool])
        except Exception:  # noqa: BLE001
            ok = False
        if ok or not originally_valid:
            if cand.key() != call.key():
                return cand
            best = best or cand
    return ToolCall(name=call.name, arguments=json.loads(json.dumps(call.arguments)))
