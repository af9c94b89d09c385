"""The fast codec writes exactly the stdlib's canonical JSON, so content hashes and ids never change."""

from __future__ import annotations

import enum
import json
import math
import random
import struct

import pytest

from looptool.shared import jsoncodec
from looptool.shared.records import Sample, canonical_json, content_key
from looptool.shared.storage import DatasetWriter, LocalStore, RecordHasher, open_dataset_at
from looptool.shared.storage.datasets import canonical_line, canonical_lines


def stdlib(value) -> bytes:
    """The canonical form as it was defined before the fast codec (the hash definition)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class Colour(str, enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class MyStr(str):
    pass


class MyInt(int):
    pass


class MyDict(dict):
    pass


FIXED = [
    {},
    [],
    "",
    0,
    -0.0,
    {"b": 1, "a": 2, "A": 3, "_": 4, "é": 5, "\uffff": 6, "\U0001f600": 7, "": 8},
    {"text": "naïve café 日本語 😀 \u2028\u2029 \x7f"},
    {"esc": "quote \" backslash \\ slash / nl \n cr \r tab \t bs \b ff \f nul \x00 us \x1f"},
    {"floats": [0.1, 1.0, 2.5, 1e-4, 9.99e-5, 1e-5, 1.5e-7, 5e-324, 1e15, 1e16, 1e17, 1e22, 1.7976931348623157e308, -3.14]},
    {"floats": [123456789.123456789, 1 / 3, 2 / 3, 100.0, 1e21, 1.2345678901234567e-10]},
    {"ints": [0, -1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**40, -(10**40)]},
    {"nonfinite": [float("nan"), float("inf"), float("-inf")]},
    {"nulls": [None, {"x": None}], "bools": [True, False]},
    {"nested": {"z": [{"b": [1, {"d": {}, "c": []}]}, "x"], "a": {"k": [[[]]]}}},
    {"int keys": {1: "a", 10: "b", 2: "c"}},  # the stdlib sorts them as numbers, then writes strings
    {"tuple": (1, "a", (2.5, None))},
    {"enums": [Colour.RED, Level.HIGH]},
    {"subclasses": [MyStr("s"), MyInt(7), MyDict(b=1, a=2)]},
    {"looks like a number in text": "null 0.00001 3e-5 1e-05 12345678901234567890"},
    {"deep": [[[[[[[[[[{"a": [[[[1]]]]}]]]]]]]]]]},
]


def random_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([rng.randint(-(2**70), 2**70), rng.randint(-1000, 1000), rng.getrandbits(64)])
    if kind == 2:
        x = struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0]
        return x if math.isfinite(x) or rng.random() < 0.1 else rng.uniform(-1, 1) * 10 ** rng.randint(-12, 25)
    if kind == 3:
        return rng.random() * 10 ** rng.randint(-8, 20)
    if kind in (4, 5):
        alphabet = "aZ09 _-\"\\/\n\t\x00\x1f\x7fé日😀\u2028"
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
    if kind in (6, 7):
        keys = ("".join(rng.choice("abAé😀_\n") for _ in range(rng.randrange(5))) for _ in range(rng.randrange(5)))
        return {k: random_value(rng, depth + 1) for k in keys}
    return [random_value(rng, depth + 1) for _ in range(rng.randrange(5))]


@pytest.mark.parametrize("value", FIXED, ids=range(len(FIXED)))
def test_fixed_values_are_byte_identical(value):
    assert jsoncodec.dumps(value) == stdlib(value)
    assert canonical_json(value) == stdlib(value).decode("utf-8")
    assert canonical_line(value if isinstance(value, dict) else {"v": value}) == stdlib(value if isinstance(value, dict) else {"v": value}) + b"\n"


def test_random_values_are_byte_identical():
    rng = random.Random(20260117)
    values = [random_value(rng) for _ in range(3000)]
    for v in values:
        assert jsoncodec.dumps(v) == stdlib(v), v
    records = [{"v": v, "i": i} for i, v in enumerate(values)]
    assert jsoncodec.dumps_lines(records) == b"".join(stdlib(r) + b"\n" for r in records)


def test_batched_lines_match_value_by_value():
    """dumps_lines encodes a batch in one orjson call and splits it at the newline fragments:
    separators inside strings, top-level scalars, a value orjson refuses and a NaN in the batch
    must all come out as one stdlib line per value."""
    batches = [
        [{"s": ",\n,"}, {"s": "a,\n,b", ",\n,": [",", "\n"]}],
        [",\n,", [], {}, None, 0, -1.5, "x", [{"a": ",\n,"}]],
        [{"only": 1}],
        [{"i": 1}, {"big": 2**70}, {"i": 2}],  # orjson refuses the big int: the whole batch value by value
        [{"i": 1}, {"nan": float("nan")}, {"tiny": 1e-7}, {"i": 2}],  # suspect values redone by the stdlib
    ]
    for values in batches:
        assert jsoncodec.dumps_lines(values) == b"".join(stdlib(v) + b"\n" for v in values), values
    assert jsoncodec.dumps_lines([]) == b""


def test_many_random_floats_are_byte_identical():
    rng = random.Random(7)
    xs = [struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0] for _ in range(20000)]
    xs += [rng.uniform(-1, 1) * 10 ** rng.randint(-20, 30) for _ in range(20000)]
    records = [{"x": x} for x in xs]
    assert jsoncodec.dumps_lines(records) == b"".join(stdlib(r) + b"\n" for r in records)


def test_decoding_matches_the_stdlib():
    rng = random.Random(11)
    values = [random_value(rng) for _ in range(2000)] + FIXED[:10]
    blob = b"".join(stdlib({"v": v}) + b"\n" for v in values)
    want = [json.loads(line) for line in blob.decode("utf-8").split("\n")[:-1]]
    got = jsoncodec.loads_lines(blob)
    # compare through the canonical form: NaN != NaN, and 1 == 1.0 == True would hide type changes
    assert [stdlib(g) for g in got] == [stdlib(w) for w in want]
    assert [type(g["v"]) for g in got] == [type(w["v"]) for w in want]

    def canonical(blob: bytes) -> list:  # the verified reader's fast path
        return list(jsoncodec.iter_canonical(blob.split(b"\n")[:-1], blob))

    assert [stdlib(g) for g in canonical(jsoncodec.dumps_lines(want))] == [stdlib(w) for w in want]
    plain = [{"i": i, "s": "x\ny"} for i in range(100)]
    assert canonical(jsoncodec.dumps_lines(plain)) == plain
    # orjson refuses NaN / Infinity mid-part: those lines go to the stdlib, in place
    odd = [{"i": 0}, {"x": float("nan")}, {"i": 2}, {"x": float("-inf")}, {"x": float("inf")}, {"i": 5}]
    assert [stdlib(g) for g in canonical(jsoncodec.dumps_lines(odd))] == [stdlib(o) for o in odd]
    big = b'{"n":18446744073709551616,"m":-9223372036854775809,"f":1e400}\n'
    assert jsoncodec.loads_lines(big) == [json.loads(big)] and isinstance(jsoncodec.loads(big)["n"], int)
    assert list(jsoncodec.iter_canonical([big[:-1]], big)) == [json.loads(big)]
    assert jsoncodec.loads_lines(b'\n{"a":NaN}\n\n') == [{"a": pytest.approx(float("nan"), nan_ok=True)}]


def test_refused_values_are_refused_like_the_stdlib():
    for bad in ({"x": object()}, {"s": "\ud800"}, {"x": {1, 2}}, {(1, 2): 3}, {"b": b"bytes"}):
        with pytest.raises(jsoncodec.EncodeErrors):
            stdlib(bad)
        with pytest.raises(jsoncodec.EncodeErrors):
            jsoncodec.dumps(bad)
    with pytest.raises(jsoncodec.DecodeErrors):
        jsoncodec.loads_lines(b'{"a": 1}\nnot json\n')


def test_content_keys_and_dataset_hashes_are_unchanged(tmp_path):
    sample = Sample.model_validate(
        {
            "context": [{"role": "user", "content": "Wetter in Zürich? 🌦 \"bitte\"\n"}],
            "reference": [{"name": "get_weather", "arguments": {"city": "Zürich", "days": 3, "p": 1e-06, "big": 2**70}}],
        }
    ).with_id()
    import hashlib

    payload = {
        "context": [m.model_dump(exclude={"reasoning"}) for m in sample.context],
        "tools": [],
        "reference": [c.model_dump(exclude={"id"}) for c in sample.reference],
    }
    assert sample.id == "s-" + hashlib.sha256(stdlib(payload)).hexdigest()[:20]
    assert content_key(FIXED) == hashlib.sha256(stdlib(FIXED)).hexdigest()

    records = [{"v": v, "i": i} for i, v in enumerate(FIXED[:16])] + [sample.model_dump(mode="json")]
    want = hashlib.sha256(b"".join(stdlib(r) + b"\n" for r in records)).hexdigest()
    assert canonical_lines(records) == b"".join(stdlib(r) + b"\n" for r in records)
    h = RecordHasher()
    for r in records:
        h.update(r)
    assert h.hexdigest() == want
    store = LocalStore(tmp_path)
    for fmt in ("jsonl", "parquet"):
        w = DatasetWriter(store, f"ds-{fmt}", fmt=fmt, part_size=5)
        w.write_many(records)
        assert w.commit().content_hash == want
        back = list(open_dataset_at(store, f"ds-{fmt}").iter_dicts())
        assert [stdlib(b) for b in back] == [stdlib(json.loads(stdlib(r))) for r in records]
