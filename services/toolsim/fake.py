"""``schema`` mode: deterministic, schema-shaped fake results derived from the tool's name and
description and the call's arguments, consistent with the session's memory of earlier results.

Result shape by the tool's action (first verb of its name/description):
compute-like (calculate, convert, solve...) → ``{"result": <number>, ...}``; search-like (search,
list, find...) → ``{"results": [records], "count": n}``; read-like (get, retrieve, check...) → one
record; create-like (book, create, send...) → ``{"status": "success", "<entity>_id": ..., <args>}``;
delete-like → ``{"status": "success", ...}``; update-like → ``{"status": "success", "updated": ...}``.
Records echo the call's arguments (so results agree with the request) plus a few fields typical
of the entity (a weather record has a temperature...). A record returned for an entity id is
remembered: any later call naming that id gets the same record.
"""

from __future__ import annotations

import random
import re
from typing import Any

from looptool.shared.records import Tool, ToolCall
from looptool.shared.scenarios.values import sample_value
from looptool.shared.scenarios.vocab import tokens

_COMPUTE = {"calculate", "calc", "compute", "convert", "solve", "estimate", "predict", "evaluate", "sum", "add", "subtract",
            "multiply", "divide", "mean", "average", "median", "factorial", "hypot", "integrate", "derivative", "round",
            "sqrt", "power", "log", "logarithm", "percentage", "standard", "gcd", "lcm", "area", "volume", "distance"}
_SEARCH = {"search", "list", "find", "query", "lookup", "recommend", "suggest", "browse", "discover", "filter", "locate"}
_READ = {"get", "retrieve", "fetch", "check", "show", "view", "read", "display", "describe", "obtain", "lookup", "track", "monitor"}
_CREATE = {"create", "book", "add", "register", "send", "post", "schedule", "reserve", "buy", "purchase", "order", "make",
           "submit", "upload", "start", "open", "play", "share", "invite", "transfer", "pay", "log", "record", "write", "set"}
_DELETE = {"delete", "cancel", "remove", "stop", "close", "unsubscribe", "block", "revoke"}
_UPDATE = {"update", "edit", "modify", "change", "rename", "adjust", "move", "reset", "toggle"}
_VERBS = _COMPUTE | _SEARCH | _READ | _CREATE | _DELETE | _UPDATE

ENTITY_FIELDS: dict[str, dict[str, dict[str, Any]]] = {
    "weather": {"temperature": {"type": "number", "minimum": -10, "maximum": 38}, "condition": {"enum": ["sunny", "cloudy", "rain", "snow", "windy"]},
                "humidity": {"type": "integer", "minimum": 10, "maximum": 95}},
    "flight": {"flight_number": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{3,4}$"}, "departure_time": {"type": "string", "format": "time"},
               "price": {"type": "number", "minimum": 80, "maximum": 1500}, "seats_left": {"type": "integer", "minimum": 1, "maximum": 40}},
    "hotel": {"name": {"type": "string"}, "rating": {"type": "number", "minimum": 2.5, "maximum": 5}, "price_per_night": {"type": "number", "minimum": 60, "maximum": 600}},
    "restaurant": {"name": {"type": "string"}, "rating": {"type": "number", "minimum": 2.5, "maximum": 5}, "cuisine": {"type": "string"}, "address": {"type": "string"}},
    "stock": {"symbol": {"type": "string"}, "price": {"type": "number", "minimum": 5, "maximum": 900}, "change_percent": {"type": "number", "minimum": -5, "maximum": 5}},
    "price": {"price": {"type": "number", "minimum": 1, "maximum": 900}, "currency": {"type": "string"}},
    "movie": {"title": {"type": "string"}, "year": {"type": "integer"}, "rating": {"type": "number", "minimum": 1, "maximum": 10}, "genre": {"type": "string"}},
    "book": {"title": {"type": "string"}, "author": {"type": "string"}, "year": {"type": "integer"}},
    "user": {"name": {"type": "string"}, "email": {"type": "string", "format": "email"}, "status": {"type": "string"}},
    "order": {"status": {"enum": ["processing", "shipped", "delivered"]}, "total": {"type": "number", "minimum": 5, "maximum": 900}},
    "booking": {"status": {"enum": ["confirmed", "pending"]}, "total_price": {"type": "number", "minimum": 50, "maximum": 2000}},
    "event": {"name": {"type": "string"}, "date": {"type": "string", "format": "date"}, "venue": {"type": "string"}},
    "song": {"title": {"type": "string"}, "artist": {"type": "string"}, "duration_seconds": {"type": "integer", "minimum": 120, "maximum": 420}},
    "news": {"headline": {"type": "string"}, "source": {"type": "string"}, "published": {"type": "string", "format": "date"}},
    "product": {"name": {"type": "string"}, "price": {"type": "number", "minimum": 2, "maximum": 800}, "in_stock": {"type": "boolean"}},
    "recipe": {"name": {"type": "string"}, "prep_minutes": {"type": "integer", "minimum": 5, "maximum": 120}, "calories": {"type": "integer", "minimum": 100, "maximum": 1200}},
    "directions": {"distance_km": {"type": "number", "minimum": 1, "maximum": 900}, "duration_minutes": {"type": "integer", "minimum": 5, "maximum": 600}},
    "route": {"distance_km": {"type": "number", "minimum": 1, "maximum": 900}, "duration_minutes": {"type": "integer", "minimum": 5, "maximum": 600}},
    "population": {"population": {"type": "integer", "minimum": 10000, "maximum": 9000000}},
    "account": {"balance": {"type": "number", "minimum": 0, "maximum": 20000}, "currency": {"type": "string"}},
}
_DEFAULT_FIELDS = {"name": {"type": "string"}, "status": {"type": "string"}, "updated": {"type": "string", "format": "date"}}


def action_of(tool: Tool) -> tuple[str, str]:
    """(action, entity noun) from the tool name, falling back to the description's first word."""
    toks = tokens(tool.name)
    desc_toks = tokens(tool.description.split("Tool description:")[-1])[:1]
    verb = next((t for t in toks if t in _VERBS), None) or next((t for t in desc_toks if t in _VERBS or t.rstrip("s") in _VERBS), "")
    verb = verb if verb in _VERBS else verb.rstrip("s")
    nouns = [t for t in toks if t not in _VERBS and t not in ("for", "by", "the", "a", "of", "to", "api", "info", "details", "data")]
    entity = next((n for n in reversed(nouns) if n in ENTITY_FIELDS or n.rstrip("s") in ENTITY_FIELDS), nouns[-1] if nouns else "item")
    entity = entity.rstrip("s") if entity.rstrip("s") in ENTITY_FIELDS else entity
    desc_head = tokens(tool.description.split("Tool description:")[-1])[:8]
    mathy = {"roots", "equation", "quadratic", "integral", "probability", "formula", "factorial", "hypotenuse", "velocity"}
    if verb in _COMPUTE or any(t in _COMPUTE for t in toks) or any(t in _COMPUTE or t in mathy for t in desc_head):
        action = "compute"
    elif verb in _SEARCH:
        action = "search"
    elif verb in _DELETE:
        action = "delete"
    elif verb in _UPDATE:
        action = "update"
    elif verb in _CREATE:
        action = "create"
    elif verb in _READ:
        action = "read"
    else:
        action = "read"
    return action, entity


def _scalars(args: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in args.items() if not isinstance(v, (dict, list))}


def _record(entity: str, call: ToolCall, rng: random.Random, hint: str) -> dict[str, Any]:
    fields = ENTITY_FIELDS.get(entity, _DEFAULT_FIELDS)
    rec: dict[str, Any] = {}
    for k, schema in fields.items():
        rec[k] = sample_value(k, schema, rng, hint)
    rec.update(_scalars(call.arguments))
    return rec


def _returns_key(description: str) -> str | None:
    m = re.search(r"\breturns?\s+(?:the\s+|a\s+|an\s+)?([a-z][a-z ]{2,30}?)(?:[.,;]| of | for | in | from |$)", description, re.I)
    if not m:
        return None
    key = "_".join(m.group(1).lower().split()[:3])
    return key if key and key not in ("a", "the", "it", "result") else None


def fake_result(tool: Tool, call: ToolCall, rng: random.Random, memory: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A plausible result for ``call``; ``memory`` (entity id → record) is read and updated."""
    action, entity = action_of(tool)
    hint = tool.description
    # entity ids named in the call: reuse what was returned for them before
    known: dict[str, Any] = {}
    for k, v in call.arguments.items():
        if isinstance(v, (str, int)) and not isinstance(v, bool) and (k == "id" or k.endswith("_id") or k.endswith("Id")):
            rec = memory.get(f"{k}={v}") or memory.get(f"*={v}")
            if rec:
                known.update(rec)
    if action == "compute":
        value = sample_value("result", {"type": "number", "minimum": 0.5, "maximum": 5000}, rng, hint)
        key = _returns_key(hint) or "result"
        out: dict[str, Any] = {key if re.fullmatch(r"[a-z_]{1,30}", key) else "result": value}
        for u in ("unit", "units", "unit_out", "to_unit", "target_unit"):
            if isinstance(call.arguments.get(u), str):
                out["unit"] = call.arguments[u]
        return out
    if action == "search":
        n = rng.randint(1, 3)
        results = []
        for i in range(n):
            rec = _record(entity, call, rng, hint)
            rec[f"{entity}_id"] = f"{entity[:3].upper()}-{rng.randrange(1000, 99999)}"
            results.append(rec)
            memory[f"{entity}_id={rec[f'{entity}_id']}"] = rec
            memory[f"*={rec[f'{entity}_id']}"] = rec
        return {"results": results, "count": n}
    if action == "read":
        rec = {**_record(entity, call, rng, hint), **known}
        rec.update(_scalars(call.arguments))
        _remember(rec, call, memory)
        return rec
    if action == "create":
        id_key = f"{entity}_id"
        rec = {"status": "success", id_key: known.get(id_key) or f"{entity[:3].upper()}-{rng.randrange(10000, 999999)}"}
        rec.update(_scalars(call.arguments))
        for k, v in call.arguments.items():
            if isinstance(v, (dict, list)):
                rec[k] = v
        memory[f"{id_key}={rec[id_key]}"] = rec
        memory[f"*={rec[id_key]}"] = rec
        return rec
    if action == "delete":
        rec = {"status": "success", "message": f"{entity} removed"}
        rec.update({k: v for k, v in _scalars(call.arguments).items()})
        for k, v in call.arguments.items():  # the entity is gone: later reads fall back to fresh records
            memory.pop(f"{k}={v}", None)
        return rec
    if action == "update":
        rec = {**known, **_scalars(call.arguments)}
        _remember(rec, call, memory)
        return {"status": "success", "updated": rec}
    return {"status": "success", "data": _record(entity, call, rng, hint)}


def _remember(rec: dict[str, Any], call: ToolCall, memory: dict[str, dict[str, Any]]) -> None:
    for k, v in list(rec.items()) + list(call.arguments.items()):
        if isinstance(v, (str, int)) and not isinstance(v, bool) and (k == "id" or k.endswith("_id") or k.endswith("Id")):
            memory[f"{k}={v}"] = rec
            memory[f"*={v}"] = rec


def fake_error(rng: random.Random, tool: Tool) -> dict[str, Any]:
    kind = rng.choice(["not_found", "rate_limited", "service_unavailable", "timeout"])
    msg = {
        "not_found": "no matching record was found",
        "rate_limited": "too many requests; retry later",
        "service_unavailable": "the service is temporarily unavailable",
        "timeout": "the upstream service timed out",
    }[kind]
    return {"error": {"type": kind, "message": f"{tool.name}: {msg}"}}
