"""One realistic value for a parameter schema (:func:`sample_value`).

JSON Schema types (and BFCL's Python-ish names), ``enum``/``const``, ``format``, bounds, string
length, ``pattern`` (through :mod:`.regex_sampler`), arrays, nested objects, ``anyOf``/``oneOf``/
``allOf``. Strings are realistic per parameter name (from :mod:`.vocab`) and follow format hints in
the parameter description ("YYYY-MM-DD", "City, State", "HH:MM"...).
"""

from __future__ import annotations

import datetime as _dt
import math
import random
import re
import string
from typing import Any, Mapping

from looptool.shared.schema import normalize_schema

from .regex_sampler import sample_regex
from .vocab import (
    AIRPORTS,
    ANIMALS,
    ARTISTS,
    CATEGORIES,
    CHEM,
    CITIES,
    COLORS,
    COMPANIES,
    COUNTRIES,
    COUNTRY_CODES,
    CUISINES,
    CURRENCIES,
    DOMAINS,
    FIRST_NAMES,
    FOODS,
    GENRES,
    INSTRUMENTS,
    LANGUAGE_CODES,
    LANGUAGES,
    LAST_NAMES,
    SENTENCES,
    SHAPES,
    SPECIES,
    SPORTS,
    SPORTS_TEAMS,
    STATUSES,
    STREETS,
    TICKERS,
    TITLES,
    TOPICS,
    UNITS_GENERIC,
    UNITS_LENGTH,
    UNITS_TEMP,
    UNITS_WEIGHT,
    WORDS,
    WORLD_CITIES,
    tokens,
)

_DATE_FORMATS = [
    (re.compile(r"yyyy-mm-dd|%y-%m-%d|\d{4}-\d{2}-\d{2}", re.I), "%Y-%m-%d"),
    (re.compile(r"mm/dd/yyyy|%m/%d/%y|\d{2}/\d{2}/\d{4}", re.I), "%m/%d/%Y"),
    (re.compile(r"dd/mm/yyyy|%d/%m/%y", re.I), "%d/%m/%Y"),
    (re.compile(r"dd-mm-yyyy|%d-%m-%y", re.I), "%d-%m-%Y"),
    (re.compile(r"mm-dd-yyyy|%m-%d-%y", re.I), "%m-%d-%Y"),
    (re.compile(r"yyyy/mm/dd", re.I), "%Y/%m/%d"),
]
_QUOTED_EXAMPLE = re.compile(r"(?:e\.g\.,?|for example,?|such as|like)\s*'([^'\n]{1,40})'", re.I)


def _date(rng: random.Random) -> _dt.date:
    return _dt.date(2025, 1, 1) + _dt.timedelta(days=rng.randrange(0, 700))


def _date_str(rng: random.Random, hint: str) -> str:
    fmt = "%Y-%m-%d"
    for pattern, f in _DATE_FORMATS:
        if pattern.search(hint):
            fmt = f
            break
    return _date(rng).strftime(fmt)


def _time_str(rng: random.Random, hint: str) -> str:
    h, m = rng.randrange(6, 23), rng.choice([0, 15, 30, 45])
    if re.search(r"hh:mm:ss", hint, re.I):
        return f"{h:02d}:{m:02d}:00"
    if re.search(r"am|pm|12-hour", hint, re.I) and not re.search(r"24", hint):
        return f"{(h - 1) % 12 + 1}:{m:02d} {'AM' if h < 12 else 'PM'}"
    return f"{h:02d}:{m:02d}"


def _city_str(rng: random.Random, hint: str) -> str:
    city, state = rng.choice(CITIES)
    if re.search(r"city,\s*state|state abbreviation|'[A-Z][a-z]+(?: [A-Z][a-z]+)*, [A-Z]{2}'", hint, re.I):
        return f"{city}, {state}"
    if re.search(r"city,\s*country", hint, re.I):
        return f"{rng.choice(WORLD_CITIES)}, {rng.choice(COUNTRIES)}"
    return rng.choice([f"{city}, {state}", city, rng.choice(WORLD_CITIES)])


def _person(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def _has(tokens: list[str], *words: str) -> bool:
    return any(w in tokens for w in words)


def _named_string(tokens: list[str], rng: random.Random, hint: str) -> str | None:
    """A realistic string for a parameter named ``tokens`` (None = no idea)."""
    t = tokens
    joined = "_".join(t)
    last = t[-1] if t else ""
    if _has(t, "email", "mail") and not _has(t, "subject", "body", "content"):
        return f"{rng.choice(FIRST_NAMES).lower()}.{rng.choice(LAST_NAMES).lower()}@{rng.choice(DOMAINS)}"
    if _has(t, "url", "link", "website", "endpoint", "uri"):
        return f"https://www.{rng.choice(DOMAINS)}/{rng.choice(WORDS)}"
    if _has(t, "phone", "mobile"):
        return f"+1-555-{rng.randrange(100, 999)}-{rng.randrange(1000, 9999)}"
    if _has(t, "date", "day", "birthday", "deadline") and not _has(t, "days", "format"):
        return _date_str(rng, hint)
    if _has(t, "time", "hour") and not _has(t, "zone", "timezone", "times"):
        return _time_str(rng, hint)
    if _has(t, "timezone", "tz") or joined.endswith("time_zone"):
        return rng.choice(["America/New_York", "Europe/London", "Asia/Tokyo", "America/Los_Angeles", "UTC"])
    if _has(t, "airport") or (_has(t, "origin", "destination") and "airport" in hint.lower()):
        return rng.choice(AIRPORTS)
    if _has(t, "city", "location", "destination", "origin", "where", "place", "from", "to", "town", "near",
            "pickup", "venue", "region") and not _has(t, "id", "type", "name") or joined in ("place_name",):
        return _city_str(rng, hint)
    if _has(t, "address", "street"):
        return f"{rng.randrange(10, 999)} {rng.choice(STREETS)}, {rng.choice(CITIES)[0]}"
    if _has(t, "country", "nation"):
        return rng.choice(COUNTRY_CODES) if _has(t, "code") else rng.choice(COUNTRIES)
    if _has(t, "state", "province") and not _has(t, "id"):
        return rng.choice(["California", "Texas", "New York", "Ontario", "Bavaria", "Queensland"])
    if _has(t, "zip", "postal", "zipcode"):
        return str(rng.randrange(10000, 99999))
    if _has(t, "currency"):
        return rng.choice(CURRENCIES)
    if _has(t, "language", "lang", "locale"):
        return rng.choice(LANGUAGE_CODES) if _has(t, "code") or "code" in hint.lower() else rng.choice(LANGUAGES)
    if _has(t, "username", "nickname", "handle", "login"):
        return f"{rng.choice(FIRST_NAMES).lower()}_{rng.choice(WORDS)}{rng.randrange(1, 99)}"
    if _has(t, "password", "pwd", "secret", "token", "key") and not _has(t, "keyword", "keywords"):
        return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(12))
    if _has(t, "id", "identifier", "uuid", "serial", "serials", "number") and not _has(t, "phone"):
        prefix = (t[0][:3].upper() if t and t[0] not in ("id", "number") else "ID")
        return f"{prefix}-{rng.randrange(1000, 99999)}"
    if _has(t, "company", "organization", "org", "employer", "brand", "manufacturer", "publisher", "airline", "airlines"):
        return rng.choice(COMPANIES)
    if _has(t, "ticker", "symbol", "stock"):
        return rng.choice(TICKERS)
    if _has(t, "first") and _has(t, "name"):
        return rng.choice(FIRST_NAMES)
    if _has(t, "last", "surname") and _has(t, "name"):
        return rng.choice(LAST_NAMES)
    if _has(t, "artist", "singer", "author", "director", "directed", "actor", "cast", "starring", "player", "receiver",
            "recipient", "user", "person", "customer", "owner", "contact", "sender", "patient", "host", "guest", "who",
            "assignee", "manager", "employee", "friend", "traveler", "passenger", "student", "teacher", "doctor"):
        return rng.choice(ARTISTS) if _has(t, "artist", "singer") else _person(rng)
    if _has(t, "genre"):
        return rng.choice(GENRES)
    if _has(t, "cuisine", "food", "dish", "recipe", "ingredient", "ingredients", "meal"):
        return rng.choice(CUISINES) if _has(t, "cuisine") else rng.choice(FOODS)
    if _has(t, "title", "movie", "film", "book", "album", "song", "track", "show", "novel", "event") and not _has(t, "type"):
        return rng.choice(TITLES)
    if _has(t, "restaurant", "hotel", "theater", "theatre", "store", "shop", "property"):
        return f"The {rng.choice(WORDS).title()} {rng.choice(['Grill', 'Inn', 'House', 'Hall', 'Market', 'Lodge'])}"
    if _has(t, "color", "colour"):
        return rng.choice(COLORS)
    if _has(t, "unit", "units"):
        low = hint.lower()
        if "temperature" in low or "celsius" in low:
            return rng.choice(UNITS_TEMP)
        if "weight" in low or "mass" in low:
            return rng.choice(UNITS_WEIGHT)
        if any(w in low for w in ("distance", "length", "circle", "triangle", "area", "radius", "height")):
            return rng.choice(UNITS_LENGTH)
        return rng.choice(UNITS_GENERIC)
    if _has(t, "team"):
        return rng.choice(SPORTS_TEAMS)
    if _has(t, "sport"):
        return rng.choice(SPORTS)
    if _has(t, "instrument"):
        return rng.choice(INSTRUMENTS)
    if _has(t, "species", "organism"):
        return rng.choice(SPECIES)
    if _has(t, "animal", "pet", "breed"):
        return rng.choice(ANIMALS)
    if _has(t, "compound", "formula", "molecule", "chemical"):
        return rng.choice(CHEM)
    if _has(t, "shape"):
        return rng.choice(SHAPES)
    if _has(t, "status", "state"):
        return rng.choice(STATUSES)
    if _has(t, "category", "type", "kind", "class", "mode"):
        return rng.choice(CATEGORIES)
    if _has(t, "message", "text", "content", "body", "note", "comment", "description", "review", "sentence", "subject"):
        return rng.choice(SENTENCES)
    if _has(t, "query", "keyword", "keywords", "topic", "search", "term", "question", "subject", "interest"):
        return rng.choice(TOPICS)
    if _has(t, "file", "filename", "path", "directory", "dir", "folder"):
        ext = "" if _has(t, "directory", "dir", "folder") else rng.choice([".txt", ".csv", ".pdf", ".json"])
        return f"{rng.choice(WORDS)}_{rng.choice(WORDS)}{ext}"
    if _has(t, "name"):
        return _person(rng) if _has(t, "full", "person", "customer", "user") else f"{rng.choice(WORDS).title()} {rng.choice(WORDS).title()}"
    if _has(t, "command", "cmd"):
        return rng.choice(["ls -la", "git status", "make build", "echo hello"])
    if _has(t, "equation", "function", "expression", "formula", "polynomial"):
        return rng.choice(["3x**2 + 2x - 1", "x**3 - 4x", "2x + 5", "sin(x) * x"])
    if _has(t, "version"):
        return f"{rng.randrange(1, 9)}.{rng.randrange(0, 20)}.{rng.randrange(0, 10)}"
    if _has(t, "size"):
        return rng.choice(["small", "medium", "large"])
    return None


def _string_value(name: str, schema: Mapping[str, Any], rng: random.Random, hint: str) -> str:
    fmt = str(schema.get("format", "")).lower()
    if fmt == "date":
        value = _date(rng).isoformat()
    elif fmt in ("date-time", "datetime"):
        value = f"{_date(rng).isoformat()}T{_time_str(rng, '')}:00Z"
    elif fmt == "time":
        value = _time_str(rng, "hh:mm:ss")
    elif fmt == "email":
        value = f"{rng.choice(FIRST_NAMES).lower()}@{rng.choice(DOMAINS)}"
    elif fmt in ("uri", "url", "uri-reference", "iri"):
        value = f"https://www.{rng.choice(DOMAINS)}/{rng.choice(WORDS)}"
    elif fmt == "uuid":
        value = "%08x-%04x-4%03x-a%03x-%012x" % (rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(12),
                                                 rng.getrandbits(12), rng.getrandbits(48))
    elif fmt == "ipv4":
        value = f"192.168.{rng.randrange(0, 255)}.{rng.randrange(1, 254)}"
    elif fmt == "hostname":
        value = f"{rng.choice(WORDS)}.{rng.choice(DOMAINS)}"
    else:
        value = ""
    own = str(schema.get("description", ""))  # format hints in the parameter's own description
    if not value and any(p.search(own) for p, _ in _DATE_FORMATS):
        value = _date_str(rng, own)
    if not value and re.search(r"\bhh:mm\b", own, re.I):
        value = _time_str(rng, own)
    if not value and isinstance(schema.get("pattern"), str):
        value = sample_regex(schema["pattern"], rng) or ""
    if not value:
        examples = _QUOTED_EXAMPLE.findall(hint)
        if examples and rng.random() < 0.3:
            value = rng.choice(examples)
    if not value:
        value = _named_string(tokens(name), rng, hint) or ""
    if not value:
        value = f"{rng.choice(WORDS)} {rng.choice(WORDS)}" if rng.random() < 0.5 else rng.choice(WORDS)
    lo = int(schema.get("minLength", 0) or 0)
    hi = schema.get("maxLength")
    if len(value) < lo:
        value = value + "x" * (lo - len(value))
    if isinstance(hi, int) and hi >= 0 and len(value) > hi:
        value = value[:hi].rstrip() or value[:hi]
    return value


def _bounds(schema: Mapping[str, Any], default_lo: float, default_hi: float, integer: bool) -> tuple[float, float]:
    # the schema's values as written (any JSON): each use checks its type
    lo: Any = schema.get("minimum")
    hi: Any = schema.get("maximum")
    xlo, xhi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    step = 1 if integer else 0.01
    if isinstance(xlo, bool):  # draft-4 boolean form
        xlo = lo if xlo else None
    if isinstance(xhi, bool):
        xhi = hi if xhi else None
    if isinstance(xlo, (int, float)):
        lo = max(lo, xlo + step) if isinstance(lo, (int, float)) else xlo + step
    if isinstance(xhi, (int, float)):
        hi = min(hi, xhi - step) if isinstance(hi, (int, float)) else xhi - step
    has_lo, has_hi = isinstance(lo, (int, float)), isinstance(hi, (int, float))
    if has_lo and not has_hi:
        hi = max(lo + (default_hi - default_lo), lo)
    elif has_hi and not has_lo:
        lo = min(hi - (default_hi - default_lo), hi)
    elif not has_lo and not has_hi:
        lo, hi = default_lo, default_hi
    if lo > hi:
        lo, hi = hi, lo
    return float(lo), float(hi)


def _named_int_range(tokens: list[str]) -> tuple[int, int]:
    t = tokens
    if _has(t, "year", "years") and not _has(t, "num", "number"):
        return (1990, 2025) if "years" not in t else (1, 30)
    if _has(t, "month"):
        return 1, 12
    if _has(t, "day") and not _has(t, "days"):
        return 1, 28
    if _has(t, "hour", "hours"):
        return 1, 23
    if _has(t, "minute", "minutes"):
        return 5, 55
    if _has(t, "age"):
        return 18, 80
    if _has(t, "port"):
        return 1024, 9000
    if _has(t, "rating", "stars", "star"):
        return 1, 5
    if _has(t, "percent", "percentage"):
        return 5, 95
    if _has(t, "id", "identifier"):
        return 1000, 99999
    if _has(t, "timeout", "seconds", "duration"):
        return 5, 120
    if _has(t, "limit", "page", "per", "top", "max", "results"):
        return 5, 50
    if _has(t, "population", "amount", "price", "cost", "salary", "income", "budget", "principal", "revenue"):
        return 100, 50000
    if _has(t, "days", "nights", "weeks", "length", "stay"):
        return 1, 14
    if _has(t, "number", "num", "count", "quantity", "tickets", "adults", "rooms", "seats", "people", "guests",
            "passengers", "n", "k", "times", "rolls", "players"):
        return 1, 8
    return 1, 100


def _named_float_range(tokens: list[str]) -> tuple[float, float]:
    t = tokens
    if _has(t, "latitude", "lat"):
        return -60.0, 60.0
    if _has(t, "longitude", "lon", "lng"):
        return -150.0, 150.0
    if _has(t, "rate", "probability", "prob", "ratio", "fraction", "alpha", "confidence"):
        return 0.01, 0.99
    if _has(t, "percent", "percentage", "interest"):
        return 0.5, 12.0
    if _has(t, "temperature", "temp"):
        return -10.0, 40.0
    if _has(t, "amount", "price", "cost", "balance", "budget", "principal", "salary", "total", "value", "investment"):
        return 10.0, 5000.0
    if _has(t, "weight", "mass"):
        return 0.5, 120.0
    return 0.5, 100.0


def _number_value(name: str, schema: Mapping[str, Any], rng: random.Random, integer: bool) -> int | float:
    words = tokens(name)
    if integer:
        lo, hi = _bounds(schema, *_named_int_range(words), True)
        lo_i, hi_i = math.ceil(lo), math.floor(hi)
        if lo_i > hi_i:
            return int(lo_i)
        n = rng.randint(lo_i, hi_i)
        mult = schema.get("multipleOf")
        if isinstance(mult, int) and mult > 0:
            n = max(lo_i, (n // mult) * mult)
        return n
    dlo, dhi = _named_float_range(words)
    lo, hi = _bounds(schema, dlo, dhi, False)
    for _ in range(8):
        value = round(rng.uniform(lo, hi), 2)
        if value == int(value):  # keep floats visibly floats ("12.5", not "12.0" → "12")
            value = round(value + 0.25, 2) if value + 0.25 <= hi else round(value - 0.25, 2)
        if lo <= value <= hi and value != int(value):
            return value
    return round((lo + hi) / 2, 2)


def _pick_type(schema: Mapping[str, Any], rng: random.Random) -> str | None:
    t = schema.get("type")
    if isinstance(t, list):
        options = [x for x in t if x != "null"] or t
        return options[0] if options else None
    if isinstance(t, str):
        return t
    if "properties" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return None


def sample_value(name: str, schema: Mapping[str, Any] | None, rng: random.Random, context_hint: str = "", _depth: int = 0) -> Any:
    """A realistic value for parameter ``name`` with JSON Schema ``schema``.

    ``context_hint`` is free text that helps (the parameter description, the tool description):
    date formats, "City, State" and quoted examples in it are honoured. BFCL's type names
    (``dict``, ``float``...) are accepted. Deterministic for a given rng state.
    """
    schema = normalize_schema(dict(schema or {}))
    hint = " ".join(x for x in (str(schema.get("description", "")), context_hint) if x)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        if _pick_type(schema, rng) == "array" and not any(isinstance(e, list) for e in enum):
            # enum written on the array instead of its items (seen in BFCL live data)
            inner = {k: v for k, v in schema.items() if k != "enum"}
            items = inner.get("items")
            inner["items"] = {**(items if isinstance(items, dict) else {}), "enum": enum}
            return sample_value(name, inner, rng, context_hint, _depth)
        return rng.choice(enum)
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            non_null = [o for o in options if isinstance(o, dict) and o.get("type") != "null"] or options
            merged = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
            return sample_value(name, {**merged, **rng.choice(non_null)}, rng, context_hint, _depth)
    if isinstance(schema.get("allOf"), list):
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            if isinstance(part, dict):
                merged.update(part)
        return sample_value(name, merged, rng, context_hint, _depth)
    kind = _pick_type(schema, rng)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "integer":
        return _number_value(name, schema, rng, integer=True)
    if kind == "number":
        return _number_value(name, schema, rng, integer=False)
    if kind == "null":
        return None
    if kind == "array":
        items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        prefix = schema.get("prefixItems") if isinstance(schema.get("prefixItems"), list) else None
        if prefix:
            return [sample_value(name, p, rng, context_hint, _depth + 1) for p in prefix]
        lo = int(schema.get("minItems", 1) or 0)
        hi = int(schema.get("maxItems", max(lo, 3)))
        lo = min(max(lo, 1 if hi >= 1 else 0), hi)
        n = rng.randint(lo, max(lo, min(hi, lo + 2 if lo >= 2 else 3)))
        item_name = name[:-1] if name.endswith("s") and len(name) > 3 else name
        out: list[Any] = []
        for _ in range(n * 4):
            if len(out) >= n:
                break
            v = sample_value(item_name, items, rng, context_hint, _depth + 1)
            if v not in out or not (schema.get("uniqueItems") or _is_scalar_string(v)):
                out.append(v)
        return out
    if kind == "object":
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        if not props and schema.get("required"):
            props = {r: {"type": "integer"} if _looks_count(r) else {} for r in schema["required"] if isinstance(r, str)}
        if not props or _depth > 4:
            if not props:
                return {rng.choice(WORDS): rng.choice(WORDS)} if rng.random() < 0.5 else {}
            return {}
        required = set(schema.get("required", []) or [])
        obj: dict[str, Any] = {}
        for pname, pschema in props.items():
            if pname in required or rng.random() < 0.5:
                obj[pname] = sample_value(pname, pschema if isinstance(pschema, dict) else {}, rng, context_hint, _depth + 1)
        return obj
    return _string_value(name, schema, rng, hint)


def _looks_count(name: str) -> bool:
    return _has(tokens(name), "count", "number", "num", "adults", "children", "singles", "quantity", "age", "year")


def _is_scalar_string(v: Any) -> bool:
    return isinstance(v, str)
