"""Schema-driven scenario generation: realistic argument values, calls, and user requests that ground them.

Everything here is a pure function of its inputs and a ``random.Random``: the same rng state gives
the same values and the same text, so synthesis and expansion are reproducible.

- :func:`sample_value` — one value for a parameter schema: JSON Schema types (and BFCL's
  Python-ish names), ``enum``/``const``, ``format`` (date, date-time, time, email, uri, uuid, ipv4),
  ``minimum``/``maximum`` (also exclusive), string length, ``pattern`` (a small regex sampler),
  arrays (``minItems``/``maxItems``/``uniqueItems``), nested objects, ``anyOf``/``oneOf``. Values
  are realistic per parameter name (cities, people, dates, emails, units, currencies, ...) from a
  small built-in vocabulary, and follow format hints in the parameter description
  ("YYYY-MM-DD", "City, State", "HH:MM"...).
- :func:`make_call` — a schema-valid call: every required argument, each optional one with a
  probability.
- :func:`render_request` — a natural user request for one or more calls (parallel requests joined
  naturally), in a style (``terse``, ``polite``, ``verbose``, ``casual``). Every argument value is
  mentioned verbatim (numbers as JSON writes them, strings as-is, booleans as ``true``/``false``),
  so a grounding check finds each value in the text: :func:`mentions` lists the strings that must
  occur and :func:`ungrounded_values` returns the ones that do not.
- :func:`render_clarification_question` / :func:`render_clarification_answer` — the assistant
  asking for missing required parameters, and the user supplying them.
- :func:`render_no_tool_request` — a request that no tool in the set can serve.
- :func:`vary_call` — a structurally identical call (same function, same argument keys and array
  lengths) with different values; used by expansion (EDDE).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import random
import re
import string
from typing import Any, Iterable, Mapping

try:  # Python ≥ 3.11 moved the regex parser; the old names warn
    from re import _constants as sre_constants  # type: ignore[attr-defined]
    from re import _parser as sre_parse  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    import sre_constants  # type: ignore[no-redef]
    import sre_parse  # type: ignore[no-redef]

from looptool.shared.records import Tool, ToolCall
from looptool.shared.schema import normalize_schema, validate_call

STYLES = ("terse", "polite", "verbose", "casual")

# ---------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------

CITIES = [
    ("San Francisco", "CA"), ("New York", "NY"), ("Seattle", "WA"), ("Austin", "TX"), ("Chicago", "IL"),
    ("Boston", "MA"), ("Denver", "CO"), ("Portland", "OR"), ("Miami", "FL"), ("Los Angeles", "CA"),
    ("Atlanta", "GA"), ("Phoenix", "AZ"), ("San Diego", "CA"), ("Nashville", "TN"), ("Berkeley", "CA"),
]
WORLD_CITIES = ["London", "Paris", "Tokyo", "Berlin", "Madrid", "Toronto", "Sydney", "Rome", "Amsterdam", "Seoul",
                "Singapore", "Dublin", "Vienna", "Lisbon", "Prague"]
COUNTRIES = ["United States", "Canada", "France", "Germany", "Japan", "Spain", "Italy", "Brazil", "India", "Australia",
             "Mexico", "Netherlands", "Sweden", "Kenya", "South Korea"]
COUNTRY_CODES = ["US", "CA", "FR", "DE", "JP", "ES", "IT", "BR", "IN", "AU", "MX", "NL", "SE", "KE", "KR"]
FIRST_NAMES = ["Alice", "Bob", "Carlos", "Diana", "Emma", "Farid", "Grace", "Hiro", "Isabel", "Jamal", "Kira",
               "Liam", "Maya", "Noah", "Olivia", "Priya", "Quentin", "Rosa", "Sam", "Tara"]
LAST_NAMES = ["Smith", "Johnson", "Garcia", "Chen", "Patel", "Nguyen", "Kim", "Brown", "Martinez", "Lopez",
              "Wilson", "Anderson", "Taylor", "Moore", "Okafor"]
COMPANIES = ["Acme Corp", "Globex", "Initech", "Umbrella Labs", "Stark Industries", "Wayne Enterprises", "Hooli",
             "Vandelay Industries", "Tyrell Systems", "Soylent Foods"]
TICKERS = ["AAPL", "MSFT", "GOOGL", "AMZN", "TSLA", "NVDA", "META", "NFLX", "IBM", "ORCL"]
CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CAD", "AUD", "CHF", "INR", "CNY", "MXN"]
LANGUAGES = ["English", "Spanish", "French", "German", "Japanese", "Italian", "Portuguese", "Korean", "Hindi", "Mandarin"]
LANGUAGE_CODES = ["en", "es", "fr", "de", "ja", "it", "pt", "ko", "hi", "zh"]
COLORS = ["red", "blue", "green", "black", "white", "yellow", "purple", "orange", "gray", "navy"]
GENRES = ["jazz", "rock", "pop", "classical", "hip hop", "comedy", "drama", "thriller", "documentary", "fantasy"]
ARTISTS = ["Taylor Swift", "Miles Davis", "Adele", "The Beatles", "Beyonce", "Radiohead", "Norah Jones", "Coldplay"]
TITLES = ["The Silent Harbor", "Midnight Garden", "Echoes of Tomorrow", "A River in Winter", "The Last Orchard",
          "Paper Lanterns", "Northern Lights", "The Glass Bridge"]
CUISINES = ["Italian", "Mexican", "Thai", "Japanese", "Indian", "French", "Chinese", "Greek", "Korean", "Vietnamese"]
AIRPORTS = ["SFO", "JFK", "LAX", "SEA", "ORD", "BOS", "DEN", "ATL", "MIA", "LHR", "CDG", "NRT"]
UNITS_LENGTH = ["meters", "kilometers", "miles", "feet", "inches", "centimeters"]
UNITS_WEIGHT = ["kilograms", "grams", "pounds", "ounces"]
UNITS_TEMP = ["celsius", "fahrenheit", "kelvin"]
UNITS_GENERIC = ["units", "meters", "kilograms", "seconds", "liters", "miles"]
TOPICS = ["renewable energy", "machine learning", "ancient Rome", "climate change", "quantum computing",
          "marathon training", "sourdough baking", "electric vehicles", "ocean conservation", "space exploration"]
SENTENCES = ["Running late, see you at 6", "Please review the attached report", "Happy birthday, hope you have a great day",
             "The meeting moved to Thursday", "Can we reschedule our call", "Thanks for your help yesterday",
             "Dinner is ready at 7", "The package arrived this morning"]
ANIMALS = ["cat", "dog", "horse", "rabbit", "parrot", "turtle", "hamster", "goldfish"]
FOODS = ["pizza", "pasta", "salad", "sushi", "tacos", "ramen", "burger", "curry"]
DEVICES = ["living room lamp", "thermostat", "garage door", "kitchen speaker", "bedroom fan", "front door lock"]
STATUSES = ["active", "pending", "completed", "cancelled", "open", "closed"]
DOMAINS = ["example.com", "mail.com", "acme.io", "inbox.org"]
STREETS = ["Main St", "Oak Avenue", "Pine Road", "Maple Drive", "Elm Street", "Cedar Lane", "Market St", "Lake Shore Dr"]
CATEGORIES = ["electronics", "books", "sports", "travel", "health", "finance", "music", "education"]
SHAPES = ["circle", "square", "triangle", "rectangle", "hexagon"]
WORDS = ["alpha", "bravo", "delta", "harbor", "summit", "willow", "maple", "river", "falcon", "ember", "cobalt", "meadow"]
CHEM = ["H2O", "NaCl", "CO2", "C6H12O6", "O2", "CH4", "NH3"]
SPECIES = ["Homo sapiens", "Canis lupus", "Felis catus", "Panthera leo", "Quercus robur"]
INSTRUMENTS = ["piano", "guitar", "violin", "drums", "cello", "flute"]
SPORTS_TEAMS = ["Lakers", "Yankees", "Warriors", "Patriots", "Celtics", "Dodgers", "Real Madrid", "Manchester United"]
SPORTS = ["basketball", "soccer", "tennis", "baseball", "golf", "hockey"]
NO_TOOL_REQUESTS = [
    "Write a short haiku about autumn leaves.",
    "Can you tell me a joke about penguins?",
    "What does the word 'serendipity' mean?",
    "Give me three tips for falling asleep faster.",
    "Translate 'good morning, friend' into a pirate accent, just for fun.",
    "Who painted the Mona Lisa?",
    "Suggest a name for my new houseplant.",
    "Explain in one paragraph why the sky looks blue.",
    "Write a limerick about a forgetful robot.",
    "What is a good way to start learning to juggle?",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "Recommend a board game for a family of four.",
    "Compose a two-line poem about coffee.",
    "What's the difference between a violin and a viola?",
    "Give me a motivational quote to start my week.",
    "How do I fold a paper crane?",
]


def _tokens(name: str) -> list[str]:
    """Parameter name → lowercase words (snake_case, camelCase, dots, dashes)."""
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return [t for t in re.split(r"[^A-Za-z0-9]+", name.lower()) if t]


def humanize(name: str) -> str:
    """``number_of_tickets`` → ``number of tickets``; ``perPage`` → ``per page``; ``_from`` → ``from``."""
    words = _tokens(name)
    return " ".join(words) if words else name


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------

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
        value = _named_string(_tokens(name), rng, hint) or ""
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
    lo, hi = schema.get("minimum"), schema.get("maximum")
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
    tokens = _tokens(name)
    if integer:
        dlo, dhi = _named_int_range(tokens)
        lo, hi = _bounds(schema, dlo, dhi, True)
        lo_i, hi_i = math.ceil(lo), math.floor(hi)
        if lo_i > hi_i:
            return int(lo_i)
        value = rng.randint(lo_i, hi_i)
        mult = schema.get("multipleOf")
        if isinstance(mult, int) and mult > 0:
            value = max(lo_i, (value // mult) * mult)
        return value
    dlo, dhi = _named_float_range(tokens)
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
            inner["items"] = {**(inner.get("items") if isinstance(inner.get("items"), dict) else {}), "enum": enum}
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
    return _has(_tokens(name), "count", "number", "num", "adults", "children", "singles", "quantity", "age", "year")


def _is_scalar_string(v: Any) -> bool:
    return isinstance(v, str)


# A tiny regex sampler for ``pattern`` (sre_parse tree walk; bounded repeats).
def sample_regex(pattern: str, rng: random.Random, max_repeat: int = 6) -> str | None:
    """A string matching ``pattern`` (re.search semantics), or None if the pattern is unsupported."""
    try:
        tree = sre_parse.parse(pattern)
    except Exception:  # noqa: BLE001 - an invalid pattern: no sample
        return None

    def gen(items) -> str:
        out = []
        for op, av in items:
            if op == sre_constants.LITERAL:
                out.append(chr(av))
            elif op == sre_constants.NOT_LITERAL:
                out.append(rng.choice([c for c in string.ascii_letters if ord(c) != av]))
            elif op == sre_constants.ANY:
                out.append(rng.choice(string.ascii_lowercase))
            elif op == sre_constants.IN:
                out.append(gen_in(av))
            elif op in (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT):
                lo, hi, sub = av
                hi = min(hi, lo + max_repeat) if hi != sre_constants.MAXREPEAT else lo + rng.randint(0, 3)
                out.extend(gen(sub) for _ in range(rng.randint(lo, max(lo, hi))))
            elif op == sre_constants.SUBPATTERN:
                out.append(gen(av[-1]))
            elif op == sre_constants.BRANCH:
                out.append(gen(rng.choice(av[1])))
            elif op in (sre_constants.AT,):
                continue
            elif op == sre_constants.CATEGORY:
                out.append(gen_cat(av))
            else:
                raise ValueError(op)
        return "".join(out)

    def gen_cat(cat) -> str:
        if cat == sre_constants.CATEGORY_DIGIT:
            return rng.choice(string.digits)
        if cat == sre_constants.CATEGORY_SPACE:
            return " "
        if cat == sre_constants.CATEGORY_WORD:
            return rng.choice(string.ascii_letters + string.digits)
        return rng.choice(string.ascii_letters)

    def gen_in(items) -> str:
        choices: list[str] = []
        negate = False
        for op, av in items:
            if op == sre_constants.NEGATE:
                negate = True
            elif op == sre_constants.LITERAL:
                choices.append(chr(av))
            elif op == sre_constants.RANGE:
                lo, hi = av
                choices.extend(chr(c) for c in range(lo, min(hi, lo + 200) + 1))
            elif op == sre_constants.CATEGORY:
                if av == sre_constants.CATEGORY_DIGIT:
                    choices.extend(string.digits)
                elif av == sre_constants.CATEGORY_WORD:
                    choices.extend(string.ascii_letters + string.digits + "_")
                elif av == sre_constants.CATEGORY_SPACE:
                    choices.append(" ")
        if negate:
            pool = [c for c in string.ascii_letters + string.digits if c not in choices]
            return rng.choice(pool or ["x"])
        return rng.choice(choices or ["x"])

    try:
        for _ in range(10):
            s = gen(tree)
            if re.search(pattern, s):
                return s
    except Exception:  # noqa: BLE001
        return None
    return None


# ---------------------------------------------------------------------------------------------
# Calls
# ---------------------------------------------------------------------------------------------


def _params(tool: Tool) -> tuple[dict[str, Any], list[str]]:
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
    props, required = _params(tool)
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
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        return {k: _vary_value(k, v, props.get(k, {}) if isinstance(props.get(k), dict) else {}, rng, hint) for k, v in old.items()}
    if isinstance(old, list):
        items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
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
    props, _ = _params(tool)
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


# ---------------------------------------------------------------------------------------------
# Rendering values and requests
# ---------------------------------------------------------------------------------------------


def render_value(value: Any) -> str:
    """A value as it appears in a request: numbers as JSON writes them, strings as-is (quoted when
    long), booleans ``true``/``false``, lists as ``a, b and c``, objects as ``key value`` pairs."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, str):
        return f'"{value}"' if (len(value.split()) > 4 or "," in value and len(value.split()) > 2) else value
    if isinstance(value, list):
        parts = [render_value(v) for v in value]
        if not parts:
            return "an empty list"
        if len(parts) == 1:
            return parts[0]
        sep = "; " if any(isinstance(v, (dict, list)) for v in value) else ", "
        return sep.join(parts[:-1]) + " and " + parts[-1]
    if isinstance(value, dict):
        if not value:
            return "nothing"
        return "(" + ", ".join(f"{humanize(k)} {render_value(v)}" for k, v in value.items()) + ")"
    return str(value)


def mentions(call: ToolCall) -> list[str]:
    """The strings a request grounding ``call`` must contain (one per leaf value)."""
    out: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, bool):
            out.append("true" if v else "false")
        elif v is None:
            return
        elif isinstance(v, (int, float)):
            out.append(json.dumps(v))
        else:
            out.append(str(v))

    walk(call.arguments)
    return out


def ungrounded_values(text: str, calls: Iterable[ToolCall]) -> list[str]:
    """Values of ``calls`` that do not occur verbatim (case-insensitive) in ``text``."""
    low = text.lower()
    return [m for c in calls for m in mentions(c) if m.lower() not in low]


_PREFIXES = re.compile(
    r"^(?:this (?:tool|function|api|endpoint|method|service) (?:is used to|will|can|allows (?:you|users) to|lets you|helps(?: to)?)?\s*|"
    r"(?:a |the )?(?:function|tool|api|endpoint|method|utility) (?:that|to|which|for)\s+|used to\s+|use this (?:tool |function )?to\s+|"
    r"allows (?:you|users|the user) to\s+|helps? (?:you )?(?:to )?|enables? (?:you |users )?to\s+)",
    re.I,
)
_VERBS = {
    "add", "analyze", "book", "buy", "calculate", "cancel", "change", "check", "compare", "compute", "convert", "count",
    "create", "delete", "demonstrate", "describe", "determine", "display", "download", "draw", "estimate", "evaluate",
    "explain", "extract", "fetch", "filter", "find", "generate", "get", "identify", "list", "locate", "log", "look",
    "lookup", "make", "monitor", "order", "perform", "place", "plan", "play", "post", "predict", "provide", "purchase",
    "query", "rate", "read", "record", "register", "remove", "rename", "reserve", "reset", "resolve", "retrieve", "return",
    "review", "run", "schedule", "search", "send", "set", "share", "show", "simulate", "solve", "sort", "start", "stop",
    "submit", "subtract", "summarize", "track", "transfer", "translate", "turn", "update", "upload", "validate",
    "verify", "view", "write", "multiply", "divide", "round", "open", "close", "lock", "unlock", "fill", "display",
    "compose", "authenticate", "mean", "obtain", "measure", "recommend", "suggest", "approve", "assign", "edit", "move",
    "copy", "print", "sum", "reply", "follow", "like", "block", "mute", "release", "activate", "adjust", "start",
    "notify", "invite", "pay", "request", "load", "save", "test", "apply", "design", "organize", "forecast", "detect",
}


_FUNCTION_WORDS = {"a", "an", "the", "of", "for", "with", "to", "in", "on", "by", "and", "or", "from", "at", "its", "their"}


def _base_verb(word: str) -> str | None:
    w = word.lower()
    if w in _VERBS:
        return w
    cands = []
    if w.endswith("ies"):
        cands.append(w[:-3] + "y")
    if w.endswith("es"):
        cands.append(w[:-2])
    if w.endswith("s"):
        cands.append(w[:-1])
    for c in cands:
        if c in _VERBS:
            return c
    return None


def task_phrase(tool: Tool) -> str:
    """The tool description as an imperative verb phrase ("calculate the area of a triangle").

    Falls back to ``use <tool name in words>`` when the description does not start with a verb.
    """
    desc = tool.description or ""
    if "Tool description:" in desc:
        desc = desc.split("Tool description:", 1)[1]
    desc = re.sub(r"\s+", " ", desc).strip()
    first = re.split(r"(?<=[.!?])\s", desc, maxsplit=1)[0].rstrip(".!? ")
    first = _PREFIXES.sub("", first).strip()
    words = first.split()
    if len(words) > 22:
        cut = re.split(r",|;| - | \(", first, maxsplit=1)[0]
        words = cut.split()[:22]
    if len(words) > 1 and words[0].lower() in ("function", "tool", "api", "method", "endpoint", "this") and _base_verb(words[1]):
        words = words[1:]
    if words:
        verb = _base_verb(words[0])
        if verb:
            rest = " ".join(words[1:])
            # "... of a triangle given its base and height" → "... of a triangle"
            cut = re.split(r",? (?:given|based on|using the|using its|by providing|with the given|with a given|with given|"
                           r"from the given|for the given|for a given|and returns?|and outputs?) ", rest, maxsplit=1)[0]
            if len(cut.split()) >= 2 and cut.split()[-1].lower() not in _FUNCTION_WORDS:
                rest = cut
            rest = re.sub(r"\b(?:a |an )?(?:specified|given|provided) ", "the ", rest)
            return f"{verb} {rest}".strip()
    return f"use {humanize(tool.name)}"


def _arg_phrases(call: ToolCall, style: str, rng: random.Random) -> list[str]:
    out = []
    for k, v in call.arguments.items():
        name, val = humanize(k), render_value(v)
        if style == "terse":
            out.append(f"{name} {val}")
        elif style == "verbose":
            out.append(rng.choice([f"the {name} is {val}", f"the {name} should be {val}", f"for {name} use {val}"]))
        elif style == "casual":
            out.append(rng.choice([f"{name} {val}", f"{name}: {val}"]))
        else:
            out.append(rng.choice([f"{name} {val}", f"a {name} of {val}", f"the {name} {val}"]))
    return out


def _join(parts: list[str], conj: str = "and") -> str:
    if not parts:
        return ""
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + f" {conj} " + parts[-1]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:] if s else s


def _by_name(tools: Iterable[Tool] | Mapping[str, Tool]) -> dict[str, Tool]:
    return dict(tools) if isinstance(tools, Mapping) else {t.name: t for t in tools}


def _clause(call: ToolCall, tool: Tool | None, style: str, rng: random.Random) -> tuple[str, str]:
    task = task_phrase(tool) if tool is not None else f"use {humanize(call.name)}"
    return task, _join(_arg_phrases(call, style, rng))


def render_request(calls: list[ToolCall], tools: Iterable[Tool] | Mapping[str, Tool], rng: random.Random, style: str = "") -> str:
    """A natural user request asking for ``calls`` (parallel when several), mentioning every
    argument value verbatim. ``style``: one of :data:`STYLES` (empty = chosen by ``rng``)."""
    style = style or rng.choice(STYLES)
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; use one of {STYLES}")
    by_name = _by_name(tools)
    if not calls:
        return render_no_tool_request(list(by_name.values()), rng)
    groups: dict[str, list[ToolCall]] = {}
    for c in calls:
        groups.setdefault(c.name, []).append(c)
    sentences: list[str] = []
    for gi, (name, group) in enumerate(groups.items()):
        tool = by_name.get(name)
        task = task_phrase(tool) if tool is not None else f"use {humanize(name)}"
        arg_sets = [_join(_arg_phrases(c, style, rng)) for c in group]
        if len(group) == 1:
            args = arg_sets[0]
        else:
            args = "; ".join(f"({i + 1}) {a or 'with the defaults'}" for i, a in enumerate(arg_sets))
        sentences.append(_sentence(task, args, style, rng, first=gi == 0, multi=len(group) > 1))
    text = " ".join(sentences)
    if style == "polite":
        text += rng.choice([" Thank you!", " Thanks so much.", " I appreciate it.", ""])
    elif style == "verbose":
        text += rng.choice([" Could you take care of that for me?", " Let me know what you find.", " Thanks in advance for the help!"])
    return text.strip()


def _sentence(task: str, args: str, style: str, rng: random.Random, first: bool, multi: bool) -> str:
    with_args = (f" for each of these: {args}" if multi else f" with {args}") if args else ""
    if not first:
        lead = rng.choice(["Also, ", "In addition, ", "And ", "On top of that, "]) if style != "terse" else "Also "
        if style == "terse":
            return f"{lead}{task}{' — ' + args if args else ''}."
        if style == "verbose" and args:
            return f"{lead}I also need to {task}{' for each of these' if multi else ''}: {args}."
        return f"{lead}please {task}{with_args}."
    if style == "terse":
        return f"{_cap(task)}{': ' + args if args else ''}."
    if style == "polite":
        return rng.choice([
            f"Could you please {task}{with_args}?",
            f"Would you kindly {task}{with_args}?",
            f"Please {task}{with_args}.",
        ])
    if style == "verbose":
        opener = rng.choice([
            "Hi there! I'm working on a project and",
            "Hello! I have a quick task:",
            "Good morning. For some planning I'm doing,",
            "Hey, hoping you can help —",
        ])
        if args and not multi:
            return f"{opener} I need to {task}. To be specific, {args}."
        return f"{opener} I need to {task}{with_args}."
    return rng.choice([f"hey, can you {task}{with_args}?", f"need to {task}{with_args}", f"{task}{with_args} pls"])


def render_partial_request(call: ToolCall, tool: Tool, omit: Iterable[str], rng: random.Random, style: str = "") -> str:
    """A request for ``call`` that leaves the ``omit`` arguments out (the assistant must ask)."""
    omit = set(omit)
    partial = ToolCall(name=call.name, arguments={k: v for k, v in call.arguments.items() if k not in omit})
    return render_request([partial], [tool], rng, style)


def render_clarification_question(tool: Tool, missing: list[str]) -> str:
    """The assistant asking for the missing required parameters of ``tool``."""
    props, _ = _params(tool)
    asks = []
    for m in missing:
        desc = props.get(m, {}).get("description", "") if isinstance(props.get(m), dict) else ""
        desc = re.sub(r"\s+", " ", str(desc)).strip().rstrip(".")
        asks.append(f"the {humanize(m)}" + (f" ({desc[:80]})" if desc else ""))
    return f"I can {task_phrase(tool)} for you, but I need a bit more information first: what is {_join(asks)}?"


def render_clarification_answer(call: ToolCall, provided: Iterable[str], rng: random.Random) -> str:
    """The user supplying the ``provided`` arguments of ``call`` (values verbatim)."""
    parts = [f"the {humanize(k)} is {render_value(call.arguments[k])}" for k in provided if k in call.arguments]
    lead = rng.choice(["Sure — ", "Oh right, ", "Of course: ", "Sorry about that, ", ""])
    return _cap(lead + _join(parts) + ".") if lead == "" else lead + _join(parts) + "."


def render_no_tool_request(tools: Iterable[Tool], rng: random.Random) -> str:
    """A request none of ``tools`` can serve: an off-topic request sharing as few content words as
    possible with the tools' names and descriptions."""
    vocab: set[str] = set()
    for t in tools:
        vocab.update(w for w in _tokens(t.name + " " + t.description) if len(w) > 3)
    scored = []
    for req in NO_TOOL_REQUESTS:
        overlap = sum(1 for w in _tokens(req) if len(w) > 3 and w in vocab)
        scored.append((overlap, req))
    best = min(s for s, _ in scored)
    return rng.choice([r for s, r in scored if s == best])


def render_no_tool_answer(tools: Iterable[Tool]) -> str:
    names = [t.name for t in tools][:4]
    listed = f" (I have {', '.join(names)})" if names else ""
    return f"Sorry, none of the tools available to me can help with that{listed}, so I can't do it with a function call."


def render_result_summary(calls: list[ToolCall], results: list[str]) -> str:
    """The assistant reporting tool results back to the user (after the tool turn)."""
    parts = []
    for c, r in zip(calls, results):
        r = re.sub(r"\s+", " ", r).strip()
        parts.append(f"{c.name} returned {r[:160]}{'…' if len(r) > 160 else ''}")
    return "Done. " + "; ".join(parts) + "." if parts else "Done."


def render_followup(rng: random.Random) -> str:
    return rng.choice(["Great, thanks!", "Perfect, that's what I needed.", "Thanks, that helps.", "Awesome, thank you."])


__all__ = [
    "STYLES",
    "humanize",
    "make_call",
    "mentions",
    "render_clarification_answer",
    "render_clarification_question",
    "render_followup",
    "render_no_tool_answer",
    "render_no_tool_request",
    "render_partial_request",
    "render_request",
    "render_result_summary",
    "render_value",
    "sample_regex",
    "sample_value",
    "task_phrase",
    "ungrounded_values",
    "vary_call",
]
