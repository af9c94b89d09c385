"""Label-noise injection (JGLV demo) and recovery metrics."""

from __future__ import annotations

import json
import random

import pytest

from looptool.shared.noise import clean_references, corrupt_sample, inject_label_noise, noise_recovery
from looptool.shared.records import Message, Sample, Tool, ToolCall
from looptool.shared.schema import validate_call

WEATHER = Tool(
    name="get_weather",
    description="Get the current weather for a city.",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit", "kelvin"]}},
        "required": ["city"],
    },
)
FLIGHT = Tool(
    name="book_flight",
    description="Book a flight.",
    parameters={
        "type": "object",
        "properties": {
            "origin": {"type": "string"},
            "destination": {"type": "string"},
            "passengers": {"type": "integer", "minimum": 1, "maximum": 9},
        },
        "required": ["origin", "destination", "passengers"],
    },
)
AREA = Tool(
    name="triangle_area",
    description="Area of a triangle.",
    parameters={"type": "object", "properties": {"base": {"type": "number"}, "height": {"type": "number"}}, "required": ["base", "height"]},
)
PRICES = Tool(
    name="get_prices",
    description="Latest prices for stock tickers.",
    parameters={"type": "object", "properties": {"tickers": {"type": "array", "items": {"type": "string"}}, "live": {"type": "boolean"}}},
)


def s(text: str, tools, calls) -> Sample:
    return Sample(context=[Message(role="user", content=text)], tools=tools, reference=calls).with_id()


def c(name, **args) -> ToolCall:
    return ToolCall(name=name, arguments=args)


def corpus() -> list[Sample]:
    out = []
    for i, city in enumerate(["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Denver", "Madrid", "Seoul"]):
        out.append(s(f"What's the weather in {city} in celsius? (#{i})", [WEATHER], [c("get_weather", city=city, unit="celsius")]))
    for i, (o, d, n) in enumerate([("SFO", "JFK", 2), ("LAX", "SEA", 1), ("BOS", "ORD", 4), ("MIA", "DEN", 3)]):
        out.append(s(f"Book {n} seats from {o} to {d}.", [FLIGHT], [c("book_flight", origin=o, destination=d, passengers=n)]))
    for b, h in [(3.5, 4.0), (10.0, 2.25), (7.0, 7.5)]:
        out.append(s(f"Triangle with base {b} and height {h}.", [AREA], [c("triangle_area", base=b, height=h)]))
    out.append(s("Prices for AAPL and MSFT, live please.", [PRICES], [c("get_prices", tickers=["AAPL", "MSFT"], live=True)]))
    out.append(s("Tell me a joke.", [WEATHER], []))  # no call: never corrupted
    out.append(s("Hi!", [], []))
    return out


def test_injection_rate_lineage_meta_and_detectability():
    samples = corpus()
    before = [x.model_copy(deep=True) for x in samples]
    out, ids = inject_label_noise(samples, 0.5, random.Random(0), round=1)
    with_calls = [x for x in samples if x.reference]
    assert len(ids) == int(0.5 * len(with_calls) + 0.5) == 8
    assert len(out) == len(samples) and [x.id for x in out] == [x.id for x in samples]
    assert [x.model_dump() for x in samples] == [x.model_dump() for x in before]  # inputs untouched
    by_id = {x.id: x for x in out}
    clean = clean_references(out)
    assert set(clean) == set(ids)
    for sid in ids:
        x, orig = by_id[sid], next(o for o in samples if o.id == sid)
        assert x.reference != orig.reference
        assert clean[sid] == [ToolCall(name=k.name, arguments=k.arguments) for k in orig.reference]
        assert json.loads(x.meta["clean_reference"]) == [k.model_dump(exclude={"id"}) for k in orig.reference]
        ev = x.lineage[-1]
        assert (ev.round, ev.stage, ev.action) == (1, "noise", "corrupted") and ev.reason == x.meta["noise"]
        text = x.context[-1].content.lower()
        if "dropped" in ev.reason:
            assert sum(len(k.arguments) for k in x.reference) == sum(len(k.arguments) for k in orig.reference) - 1
        else:  # a value change: schema-valid, and the new value is not in the context
            tool = {t.name: t for t in x.tools}
            assert all(not validate_call(k, [tool[k.name]]) for k in x.reference)
            changed = [
                (a, v) for k, ko in zip(x.reference, orig.reference) for a, v in k.arguments.items() if ko.arguments.get(a) != v
            ]
            assert len(changed) == 1
            arg, val = changed[0]
            vals = val if isinstance(val, list) else [val]
            new = [v for v in vals if v not in (orig.reference[0].arguments[arg] if isinstance(val, list) else [])]
            for v in new:
                assert json.dumps(v).strip('"').lower() not in text, (ev.reason, text)
    untouched = [x for x in out if x.id not in ids]
    assert all("clean_reference" not in x.meta and not any(e.stage == "noise" for e in x.lineage) for x in untouched)


def test_injection_is_deterministic_and_bounded():
    a, ia = inject_label_noise(corpus(), 0.3, random.Random(42), round=1)
    b, ib = inject_label_noise(corpus(), 0.3, random.Random(42), round=1)
    assert ia == ib and [x.model_dump() for x in a] == [x.model_dump() for x in b]
    all_, iall = inject_label_noise(corpus(), 1.0, random.Random(1), round=1)
    assert len(iall) == 16  # every sample with calls
    none, inone = inject_label_noise(corpus(), 0.0, random.Random(1), round=1)
    assert inone == []
    with pytest.raises(ValueError):
        inject_label_noise(corpus(), 1.5, random.Random(1))


def test_each_kind_of_corruption():
    rng = random.Random(3)
    flight = corpus()[8]
    kinds = set()
    for _ in range(40):
        calls, what = corrupt_sample(flight, rng)
        kinds.add("drop" if "dropped" in what else "value")
        n = calls[0].arguments.get("passengers")
        if n is not None:
            assert 1 <= n <= 9
    assert kinds == {"drop", "value"}
    area = corpus()[12]
    calls, what = corrupt_sample(area, random.Random(5), drop_weight=0.0)
    assert isinstance(calls[0].arguments["base"], float) and isinstance(calls[0].arguments["height"], float)
    weather = corpus()[0]
    for seed in range(10):
        calls, what = corrupt_sample(weather, random.Random(seed), drop_weight=0.0)
        city, unit = calls[0].arguments["city"], calls[0].arguments["unit"]
        assert (city != "Paris") != (unit != "celsius")  # exactly one value changed
        assert city.lower() not in weather.context[0].content.lower() or city == "Paris"
        assert unit in ("celsius", "fahrenheit", "kelvin")
    prices = corpus()[15]
    calls, what = corrupt_sample(prices, random.Random(0))
    assert len(calls[0].arguments["tickers"]) == 2 and calls[0].arguments["live"] is True
    assert corrupt_sample(corpus()[-1], random.Random(0)) is None


def test_recovery_metrics():
    w = lambda city: [c("get_weather", city=city)]  # noqa: E731
    corrupted = ["a", "b", "c", "d"]
    clean = {"a": w("Paris"), "b": w("Tokyo"), "c": w("Lima"), "d": w("Oslo")}
    relabelled = {
        "a": w("Paris"),  # fixed exactly
        "b": w(" tokyo "),  # fixed (the reward's string normalisation)
        "c": w("Lyon"),  # detected, wrong fix
        "x": w("Rome"),  # a clean sample relabelled: false positive
    }
    r = noise_recovery(corrupted, clean, relabelled, judged_ids=["a", "b", "c", "x"])
    assert r["fixed_exactly"] == 2 and r["detected"] == 3 and r["wrong_fix"] == 1
    assert r["false_relabels"] == 1 and r["missed"] == 1 and r["corrupted"] == 4 and r["relabelled"] == 4
    assert r["precision"] == pytest.approx(2 / 4) and r["recall"] == pytest.approx(2 / 4) and r["f1"] == pytest.approx(0.5)
    assert r["detection_precision"] == pytest.approx(3 / 4) and r["detection_recall"] == pytest.approx(3 / 4)
    assert r["corrupted_judged"] == 3 and r["recall_judged"] == pytest.approx(2 / 3)
    empty = noise_recovery([], {}, {})
    assert empty["precision"] == 0.0 and empty["recall"] == 0.0 and empty["f1"] == 0.0
    assert all(isinstance(v, (int, float)) for v in r.values())


def test_end_to_end_with_a_perfect_judge():
    """Inject, let an oracle 'judge' relabel every corrupted sample to its clean label: precision = recall = 1."""
    out, ids = inject_label_noise(corpus(), 0.5, random.Random(9), round=1)
    clean = clean_references(out)
    r = noise_recovery(ids, clean, {i: clean[i] for i in ids})
    assert r["precision"] == r["recall"] == r["f1"] == 1.0


def test_label_noise_state_follows_labels_and_lineage_across_rounds():
    from looptool.shared.noise import label_noise_state, loop_noise_summary

    out, ids = inject_label_noise(corpus(), 0.5, random.Random(9), round=1)
    clean = clean_references(out)
    by_id = {x.id: x for x in out}
    a, b, d, e = ids[:4]
    # round 1: a relabelled to its clean label; b relabelled wrongly; a clean sample relabelled
    by_id[a].reference = clean[a]
    by_id[a].add_lineage(1, "judge", "relabelled")
    by_id[b].reference = [c("get_weather", city="Nowhere")]
    by_id[b].add_lineage(1, "judge", "relabelled")
    innocent = next(x for x in out if x.id not in ids and x.reference)
    innocent.add_lineage(1, "judge", "relabelled")
    # d dropped unfixed (mastered); e dropped after its fix: fixed, not removed
    by_id[d].add_lineage(1, "compose", "dropped")
    by_id[e].reference = clean[e]
    by_id[e].add_lineage(2, "judge", "relabelled")
    by_id[e].add_lineage(2, "compose", "dropped")
    kept = [x for x in out if x.id not in (d, e)]
    gone = [by_id[d], by_id[e]]
    here, left = label_noise_state(kept), label_noise_state(gone)
    total = {k: here[k] + left[k] for k in here}
    assert total == label_noise_state(out)  # counts add up over disjoint sets
    assert total == {"corrupted": len(ids), "relabelled": 4, "detected": 3, "fixed_exactly": 2, "false_relabels": 1, "removed": 1}
    summ = loop_noise_summary(total)
    assert summ["recall"] == pytest.approx(2 / len(ids)) and summ["precision"] == pytest.approx(2 / 4)
    assert summ["detection_precision"] == pytest.approx(3 / 4)
    assert summ["still_wrong"] == len(ids) - 2 - 1
    assert label_noise_state(corpus())["corrupted"] == 0 and loop_noise_summary({})["recall"] == 0.0


def test_noise_swaps_within_the_scenarios_word_lists_in_name_order():
    """``VOCABULARIES`` is every list of strings in ``scenarios.vocab``, ordered by name (the first
    list holding a value decides its replacements)."""
    from looptool.shared.scenarios import vocab

    names = sorted(n for n in dir(vocab) if n.isupper() and n != "VOCABULARIES")
    lists = [getattr(vocab, n) for n in names]
    expected = tuple(tuple(v) for v in lists if isinstance(v, (list, tuple)) and len(v) > 2 and all(isinstance(x, str) for x in v))
    assert vocab.VOCABULARIES == expected
