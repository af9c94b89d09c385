"""Canonical JSON, fast: orjson where it gives the same bytes as the standard library, the stdlib where not.

The canonical form is what ``json.dumps(value, sort_keys=True, separators=(",", ":"),
ensure_ascii=False)`` writes, encoded as UTF-8. Dataset content hashes and content keys are defined
on it, so these bytes must never change: old datasets still verify and old ids stay valid.

orjson (``OPT_SORT_KEYS``) writes the same bytes for the same values except in these cases, each
of which falls back to the standard library for that value:

- a value orjson refuses: integers beyond 64 bits, non-string dict keys (the stdlib turns ``1``
  into ``"1"``), subclasses of str/int/float/dict/list, datetimes, dataclasses, lone surrogates;
- floats below 1e-4 in magnitude: the stdlib writes ``1e-05``, orjson ``0.00001`` or ``1e-5``. Seen
  in orjson's output as ``0.0000`` or a digit before ``e-`` (above 1e16 both write ``1e+16``);
- NaN and infinities: the stdlib writes ``NaN`` / ``Infinity``, orjson ``null``. Seen as ``null``.

The two checks read orjson's output, so a string that happens to contain ``null``, ``0.0000`` or
``3e-`` only costs the slower path, never a different result. (orjson also accepts ``uuid.UUID`` and
plain ``Enum`` members, which the stdlib refuses; they are written as their string / value.)

Decoding: orjson parses everything the canonical form contains the same way as the stdlib except
integers beyond 64 bits (it returns a float) and ``NaN`` / ``Infinity`` / lone surrogates (it
refuses them); text with a run of 19+ digits, or that orjson refuses, is parsed by the stdlib.
"""

from __future__ import annotations

import functools
import json
import operator
import re
from typing import Any, Callable, Iterable, Iterator

import orjson

_OPTIONS = (
    orjson.OPT_SORT_KEYS
    | orjson.OPT_PASSTHROUGH_SUBCLASS  # the stdlib writes subclasses its own way (e.g. int.__repr__)
    | orjson.OPT_PASSTHROUGH_DATETIME  # ... and refuses these two: leave the verdict to it
    | orjson.OPT_PASSTHROUGH_DATACLASS
)
_STD_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_STD_DECODE = json.JSONDecoder().decode
_orjson_dumps: Callable[..., bytes] = orjson.dumps
_orjson_loads: Callable[[bytes | str], Any] = orjson.loads
_dumps_fast = functools.partial(orjson.dumps, option=_OPTIONS)
_LINE_BREAK = orjson.Fragment(b"\n")  # a raw newline between values in one orjson.dumps call
_SMALL_FLOAT = re.compile(rb"\de-")  # (with "0.0000") where orjson writes a float below 1e-4 differently
# An integer orjson may read as a float (beyond 64 bits) has 19+ digits. Found by mapping every
# digit to "0" and looking for 19 of them: much faster than a regular expression over a part.
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_RUN = b"0" * 19

EncodeErrors = (TypeError, ValueError, UnicodeEncodeError, RecursionError)
"""What :func:`dumps` raises for a value that is not JSON data (the stdlib's errors)."""
DecodeErrors = (ValueError, UnicodeDecodeError, RecursionError)
"""What :func:`loads` raises for text that is not JSON (``json.JSONDecodeError`` is a ValueError)."""


def _std_dumps(value: Any) -> bytes:
    return _STD_ENCODER.encode(value).encode("utf-8")


def _suspect(out: bytes) -> bool:
    """Whether orjson's bytes may differ from the stdlib's (see the module notes)."""
    return b"null" in out or b"0.0000" in out or (b"e-" in out and _SMALL_FLOAT.search(out) is not None)


def _long_digits(text: bytes) -> bool:
    return _LONG_RUN in text.translate(_DIGITS_TO_ZERO)


def dumps(value: Any) -> bytes:
    """The canonical JSON bytes of ``value`` (sorted keys, no whitespace, UTF-8)."""
    try:
        out = _orjson_dumps(value, option=_OPTIONS)
    except orjson.JSONEncodeError:
        return _std_dumps(value)
    return _std_dumps(value) if _suspect(out) else out


def dumps_text(value: Any) -> str:
    """:func:`dumps` as text."""
    return dumps(value).decode("utf-8")


def dumps_lines(values: Iterable[Any]) -> bytes:
    """Canonical JSON of each value, one per line, each line ending in a newline ("" for none)."""
    values = values if isinstance(values, list) else list(values)
    if not values:
        return b""
    encoded: list[bytes] = []
    for i in range(0, len(values), _BATCH):
        encoded += _encode_batch(values[i : i + _BATCH])
    encoded.append(b"")
    return b"\n".join(encoded)


# Values per orjson call: few calls (each costs far less than one per value), yet each short
# enough (a few ms) that a thread waiting for the GIL, e.g. a writer's upload, is not held up long.
_BATCH = 1024


def _encode_batch(values: list[Any]) -> list[bytes]:
    """The canonical JSON of each value. One orjson call for the whole batch: the values
    interleaved with a raw newline fragment come out as ``[v1,\n,v2,\n,...,vn,\n]``; compact JSON
    never holds a raw newline (strings escape it), so ``,\n,`` only ever separates values."""
    interleaved: list[Any] = [_LINE_BREAK] * (2 * len(values))
    interleaved[::2] = values
    try:
        out = _orjson_dumps(interleaved, option=_OPTIONS)
    except orjson.JSONEncodeError:  # some value orjson refuses: value by value
        return [dumps(v) for v in values]
    encoded = out[1:-3].split(b",\n,")
    if len(encoded) != len(values):  # an orjson.Fragment among the values: value by value
        encoded = list(map(_dumps_fast, values))
    if _suspect(out):  # checked once per batch (fast substring search); then value by value
        encoded = [_std_dumps(v) if _suspect(e) else e for v, e in zip(values, encoded)]
    return encoded


def loads(text: bytes | str) -> Any:
    """Parse JSON text exactly as ``json.loads`` would."""
    if _long_digits(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")):
        return _std_loads(text)
    try:
        return _orjson_loads(text)
    except orjson.JSONDecodeError:
        return _std_loads(text)


def _std_loads(text: bytes | str) -> Any:
    return _STD_DECODE(text.decode("utf-8") if isinstance(text, bytes) else text)


def iter_lines(blob: bytes) -> Iterator[Any]:
    """Parse JSON lines lazily, as one ``json.loads`` per line would; blank lines are skipped."""
    long_digits = _long_digits(blob)
    loads_one = _orjson_loads
    for line in blob.split(b"\n"):
        if long_digits and _long_digits(line):
            yield _std_loads(line)
            continue
        try:
            value = loads_one(line)
        except orjson.JSONDecodeError:
            if not line.strip():
                continue
            value = _std_loads(line)  # NaN, lone surrogates: the stdlib decides, or raises
        yield value


def iter_canonical(lines: list[bytes], blob: bytes) -> Iterator[Any]:
    """Parse canonical lines (a verified part's: no blank lines, no ``\\u`` escapes but for control
    characters), ``lines`` being ``blob`` split at its newlines. One orjson call per line through
    ``map``, no Python step in between; the rare line orjson refuses (``NaN``, ``Infinity``) goes
    to the stdlib, and text with a long digit run (a possible integer beyond 64 bits) to
    :func:`loads` line by line."""
    if _long_digits(blob):
        yield from map(loads, lines)
        return
    it = iter(lines)
    while True:
        try:
            yield from map(_orjson_loads, it)
            return
        except orjson.JSONDecodeError:
            # map took the failing line from ``it`` before orjson refused it
            yield _std_loads(lines[len(lines) - operator.length_hint(it) - 1])


def loads_lines(blob: bytes) -> list[Any]:
    """:func:`iter_lines` as a list."""
    return list(iter_lines(blob))
