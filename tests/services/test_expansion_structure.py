"""EDDE structure switches (services/expander/structure.py): count/order changes, sibling-tool swaps,
multi-turn context — each on/off on small hand-built seeds; every output passes schema + grounding."""

from __future__ import annotations

from collections import Counter

import pytest

from looptool.services.expander.drafts import Draft, check_draft
from looptool.services.expander.expand import ExpandConfig, Expander, expand
from looptool.services.expander.llm_drafts import llm_prompt
from looptool.services.expander.seeds import Seed, call_shape, seed_from_judged
from looptool.services.expander.structure import StructureOptions, are_siblings, siblings_of
from looptool.shared.loop.manifest import ExpandSpec
from looptool.shared.records import (
    Decision,
    JudgedSample,
    Message,
    ProbeResult,
    Sample,
    Tool,
    ToolCall,
    Verdict,
)
from looptool.shared.scenarios.grounding import ungrounded_values
from looptool.shared.schema import validate_call
from looptool.shared.storage import open_dataset, writer_for_uri
from looptool.shared.toolcall_format import render_tool_calls


def _tool(name: str, desc: str, props: dict, required: list[str]) -> Tool:
    return Tool(name=name, description=desc, parameters={"type": "object", "properties": props, "required": required})


WEATHER = _tool("get_weather", "Get the current weather for a city.",
                {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, ["city"])
STOCK = _tool("get_stock_price", "Get the latest stock price for a ticker symbol.", {"ticker": {"type": "string"}}, ["ticker"])
FLIGHT = _tool("book_flight", "Book a flight between two airports.",
               {"origin": {"type": "string"}, "destination": {"type": "string"},
                "passengers": {"type": "integer", "minimum": 1, "maximum": 9}}, ["origin", "destination", "passengers"])
AREA = _tool("calculate_triangle_area", "Calculate the area of a triangle given its base and height.",
             {"base": {"type": "number"}, "height": {"type": "number"}}, ["base", "height"])
SEARCH_HOTELS = _tool("search_hotels", "Search hotels in a city.",
                      {"city": {"type": "string"}, "nights": {"type": "integer", "minimum": 1, "maximum": 30}}, ["city", "nights"])
BOOK_HOTELS = _tool("book_hotels", "Book hotel rooms.",
                    {"hotel_name": {"type": "string"}, "rooms": {"type": "integer", "minimum": 1, "maximum": 5},
                     "guests": {"type": "integer", "minimum": 1, "maximum": 9}}, ["hotel_name", "rooms", "guests"])
# in the corpus only (distractor pool), a sibling of get_weather by signature: never a swap target
DISTRACTOR = _tool("get_news", "Get the latest news about a topic.", {"topic": {"type": "string"}}, ["topic"])

SYSTEM = Message(role="system", content="You are an expert in composing functions.")


def call(name: str, **args) -> ToolCall:
    return ToolCall(name=name, arguments=args)


def sample(context: list[Message], tools: list[Tool], calls: list[ToolCall]) -> Sample:
    return Sample(context=context, tools=tools, reference=calls, source="synthesize").with_id()


def user(text: str) -> Message:
    return Message(role="user", content=text)


# single-turn, two different tools in parallel (order and count can change)
S_PAIR = sample([SYSTEM, user("Weather in Oslo in celsius, and the price of NVDA.")], [WEATHER, STOCK, AREA],
                [call("get_weather", city="Oslo", unit="celsius"), call("get_stock_price", ticker="NVDA")])
# single call whose tool has siblings (stock price ~ weather by signature) and a non-sibling (area)
S_STOCK = sample([SYSTEM, user("How is AAPL trading?")], [STOCK, WEATHER, AREA], [call("get_stock_price", ticker="AAPL")])
# multi-turn: an earlier request, its call, its result and the summary, then the failed turn's request
HISTORY = [
    SYSTEM,
    user("What's the weather in Paris?"),
    Message(role="assistant", tool_calls=[ToolCall(name="get_weather", arguments={"city": "Paris"}, id="c1")]),
    Message(role="tool", name="get_weather", tool_call_id="c1", content='{"city": "Paris", "temperature": 18}'),
    Message(role="assistant", content="It is 18 degrees in Paris right now."),
]
S_MULTI = sample(HISTORY + [user("Great. Now find me a hotel in Paris for 3 nights.")], [WEATHER, SEARCH_HOTELS, BOOK_HOTELS],
                 [call("search_hotels", city="Paris", nights=3)])
# multi-step: the failed turn follows an earlier call of the same request (context ends with a tool result)
S_STEP = sample(
    [SYSTEM, user("Book 2 rooms for 4 guests at the best hotel in Rome for 2 nights."),
     Message(role="assistant", tool_calls=[ToolCall(name="search_hotels", arguments={"city": "Rome", "nights": 2}, id="c1")]),
     Message(role="tool", name="search_hotels", tool_call_id="c1", content='{"best": "Hotel Roma"}')],
    [SEARCH_HOTELS, BOOK_HOTELS],
    [call("book_hotels", hotel_name="Hotel Roma", rooms=2, guests=4)],
)
SEEDS = [S_PAIR, S_STOCK, S_MULTI, S_STEP]


def judged(s: Sample) -> JudgedSample:
    wrong = [call(s.reference[0].name)]
    probe = ProbeResult(sample=s, prediction=render_tool_calls(wrong), predicted_calls=wrong)
    return JudgedSample(probe=probe, verdict=Verdict(sample_id=s.id, decision=Decision.MODEL_WRONG, reason="wrong value"))


def seed_of(s: Sample) -> Seed:
    seed, why = seed_from_judged(judged(s))
    assert seed is not None, why
    return seed


@pytest.fixture
def data(tmp_path):
    root = tmp_path.as_uri()
    w = writer_for_uri(f"{root}/verdicts", kind="verdicts")
    w.write_many([judged(s) for s in SEEDS])
    verdicts = w.commit()
    w = writer_for_uri(f"{root}/corpus")
    w.write_many(SEEDS + [sample([user("Any news on the elections?")], [DISTRACTOR], [call("get_news", topic="elections")])])
    return root, verdicts, w.commit()


def run(data, name: str, factor: int = 8, seed: int = 3, **switches) -> tuple[dict[str, int], list[Sample]]:
    root, verdicts, corpus = data
    result = expand(verdicts, f"{root}/{name}", factor=factor, seed=seed, round=1, corpus=corpus, config=ExpandConfig(**switches))
    out = list(open_dataset(f"{root}/{name}").iter(Sample))
    assert len(out) == result.counts["written"]
    return result.counts, out


def parent(s: Sample) -> Sample:
    return next(p for p in SEEDS if p.id == s.meta["edde_seed"])


def assert_valid(out: list[Sample]) -> None:
    """What check_draft guarantees, re-checked on the written samples: schema, grounding, toolset."""
    for s in out:
        p = parent(s)
        assert s.reference, s.id
        assert all(not validate_call(c, s.tools) for c in s.reference)
        request = s.context[-1]
        assert request.role == "user"
        assert ungrounded_values(request.content, s.reference, booleans=False) == []
        assert {c.name for c in s.reference} <= {t.name for t in p.tools}  # the seed's toolset only
        assert {t.name for t in p.tools} <= {t.name for t in s.tools}  # all of it still offered


def names(calls: list[ToolCall]) -> list[str]:
    return [c.name for c in calls]


# ----------------------------------------------------------------------------- siblings


def test_sibling_definition():
    assert are_siblings(WEATHER, STOCK) and are_siblings(STOCK, WEATHER)  # one required string each
    assert are_siblings(SEARCH_HOTELS, BOOK_HOTELS)  # names: {hotels} vs {book, hotels}
    assert not are_siblings(WEATHER, WEATHER)
    assert not are_siblings(WEATHER, AREA) and not are_siblings(FLIGHT, STOCK)
    assert [t.name for t in siblings_of("get_stock_price", [STOCK, WEATHER, AREA, FLIGHT])] == ["get_weather"]
    assert siblings_of("unknown", [STOCK, WEATHER]) == []


# ----------------------------------------------------------------------------- switches off / on


def test_all_off_keeps_the_seed_structure_and_flattens_context(data):
    counts, out = run(data, "off", keepContext=False)
    assert counts["written"] >= len(SEEDS) * 6
    assert_valid(out)
    for s in out:
        assert call_shape(s.reference) == call_shape(parent(s).reference)
        assert [m.role for m in s.context] == ["system", "user"]  # single-turn
        assert "edde_structure" not in s.meta


def test_change_calls_changes_count_and_order_only_when_enabled(data):
    _, off = run(data, "off", keepContext=False)
    assert all(names(s.reference) == names(parent(s).reference) for s in off)
    counts, on = run(data, "on", changeCalls=True)
    assert_valid(on)
    assert counts["rejected_structure"] == 0
    ops = Counter(s.meta.get("edde_structure", "").split(":")[0] for s in on)
    assert ops["add"] and ops["drop"] and ops["reorder"] and ops[""]  # each operation, and unchanged drafts
    pair = [s for s in on if parent(s) is S_PAIR]
    assert any(len(s.reference) != 2 for s in pair)  # count changed
    assert any(names(s.reference) == ["get_stock_price", "get_weather"] for s in pair)  # order changed
    for s in on:
        label = s.meta.get("edde_structure", "")
        seed_names = names(parent(s).reference)
        if label == "drop":
            assert len(s.reference) == len(seed_names) - 1
        elif label.startswith("add:"):
            assert len(s.reference) == len(seed_names) + 1 and label[4:] in names(s.reference)
        elif label == "reorder":
            assert Counter(names(s.reference)) == Counter(seed_names)
        else:
            assert names(s.reference) == seed_names
        # the request asks for exactly the calls: the first-mentioned task comes first in the text
        assert ungrounded_values(s.context[-1].content, s.reference, booleans=False) == []


def test_sibling_swaps_pick_siblings_from_the_toolset_only(data):
    _, off = run(data, "off")
    assert all(names(s.reference) == names(parent(s).reference) for s in off)
    counts, on = run(data, "on", siblingTools=True)
    assert_valid(on)
    assert counts["rejected_structure"] == 0
    swapped = [s for s in on if s.meta.get("edde_structure", "").startswith("sibling:")]
    assert swapped
    for s in on:
        p = parent(s)
        assert len(s.reference) == len(p.reference)  # count kept without changeCalls
        for new, old in zip(s.reference, p.reference):
            if new.name != old.name:
                sibs = {t.name for t in siblings_of(old.name, p.tools)}
                assert new.name in sibs and new.name in {t.name for t in p.tools}
                assert new.name != "get_news"  # the pool's sibling-shaped distractor never
    stock = [s for s in on if parent(s) is S_STOCK]
    assert {names(s.reference)[0] for s in stock} == {"get_stock_price", "get_weather"}


def test_multi_turn_context_kept_verbatim_up_to_the_failed_turn(data):
    counts, on = run(data, "keep")  # keepContext is on by default
    assert_valid(on)
    multi = [s for s in on if parent(s) is S_MULTI]
    assert multi
    for s in multi:
        assert s.context[:-1] == HISTORY  # verbatim: system, earlier request, its call, result, summary
        assert s.context[-1].role == "user" and s.context[-1] != S_MULTI.context[-1]
    # the multi-step seed: its old request and the earlier step belong to the old values, so the new
    # request replaces them (there is no earlier user turn to keep)
    step = [s for s in on if parent(s) is S_STEP]
    assert step and all([m.role for m in s.context] == ["system", "user"] for s in step)
    _, flat = run(data, "flat", keepContext=False)
    assert all([m.role for m in s.context] == ["system", "user"] for s in flat if parent(s) is S_MULTI)


def test_rewrite_context_moves_the_history_to_the_new_values(data):
    _, out = run(data, "rewrite", rewriteContext=True)
    assert_valid(out)
    multi = [s for s in out if parent(s) is S_MULTI]
    assert any(s.reference[0].arguments["city"] != "Paris" for s in multi)
    for s in multi:
        city = s.reference[0].arguments["city"]
        history = s.context[:-1]
        assert history[0] == SYSTEM and [m.role for m in history] == [m.role for m in HISTORY]
        if city == "Paris":
            continue
        text = " ".join(m.content for m in history)
        assert "Paris" not in text and city in history[1].content and city in history[3].content
        assert history[2].tool_calls[0].arguments == {"city": city} and history[2].tool_calls[0].id == "c1"


def test_all_switches_on_is_valid_and_deterministic(data):
    switches = dict(changeCalls=True, siblingTools=True, rewriteContext=True)
    a_counts, a = run(data, "a", **switches)
    b_counts, b = run(data, "b", **switches)
    _, c = run(data, "c", seed=4, **switches)
    assert_valid(a)
    assert a_counts == b_counts
    assert [s.model_dump() for s in a] == [s.model_dump() for s in b]
    assert [s.id for s in a] != [s.id for s in c]
    assert len({s.id for s in a}) == len(a)  # dedup still applies


# ----------------------------------------------------------------------------- validation per switch


def test_check_draft_allows_only_the_enabled_structures():
    seed = seed_of(S_STOCK)
    swap = Draft(user="Weather in Lima please.", calls=[call("get_weather", city="Lima")])
    add = Draft(user="Price of TSLA and weather in Lima.", calls=[call("get_stock_price", ticker="TSLA"), call("get_weather", city="Lima")])
    outside = Draft(user="Price of TSLA and news on Lima.", calls=[call("get_stock_price", ticker="TSLA"), call("get_news", topic="Lima")])
    not_sibling = Draft(user="Area with base 2 and height 5.", calls=[call("calculate_triangle_area", base=2, height=5)])
    off, sib, chg = StructureOptions(), StructureOptions(sibling_tools=True), StructureOptions(change_calls=True)
    assert check_draft(seed, swap, True, off)[0] == "structure"
    assert check_draft(seed, swap, True, sib) == ("", "")
    assert check_draft(seed, add, True, sib)[0] == "structure"
    assert check_draft(seed, add, True, chg) == ("", "")
    assert check_draft(seed, not_sibling, True, sib)[0] == "structure"
    assert check_draft(seed, outside, True, chg)[0] == "structure"
    # the other validators still run on a structure the switches allow
    assert check_draft(seed, Draft(user="Weather please.", calls=[call("get_weather", city="Lima")]), True, sib)[0] == "ungrounded"
    assert check_draft(seed, Draft(user="Weather in 5.", calls=[call("get_weather", city=5)]), True, sib)[0] == "schema"


class FixedDrafts:
    """A generator that proposes the same drafts for every seed (to test dropping and counting)."""

    name = "fixed"

    def __init__(self, drafts: list[Draft]):
        self._drafts = drafts

    def drafts(self, seed, tasks, base_seed):
        return [self._drafts[slot % len(self._drafts)] for slot, _attempt in tasks]


def test_invalid_expansions_are_dropped_and_counted_by_reason(tmp_path):
    root = tmp_path.as_uri()
    w = writer_for_uri(f"{root}/verdicts", kind="verdicts")
    w.write(judged(S_STOCK))
    verdicts = w.commit()
    drafts = [
        Draft(user="Weather in Lima please.", calls=[call("get_weather", city="Lima")]),  # sibling swap
        Draft(user="Price of TSLA, news on Lima.", calls=[call("get_stock_price", ticker="TSLA"), call("get_news", topic="Lima")]),
        Draft(user="Price please.", calls=[call("get_stock_price", ticker="TSLA")]),  # ungrounded
    ]
    cfg = ExpandConfig(siblingTools=True, changeCalls=True, maxAttempts=1)
    result = Expander(cfg, FixedDrafts(drafts)).run(verdicts, f"{root}/out", 3, 0, 1, None)
    c = result.counts
    assert (c["written"], c["rejected_structure"], c["rejected_ungrounded"], c["invalid"]) == (1, 1, 1, 2)
    out = list(open_dataset(f"{root}/out").iter(Sample))
    assert [names(s.reference) for s in out] == [["get_weather"]]
    # the same swap with siblingTools off is a structure rejection
    off = Expander(ExpandConfig(maxAttempts=1), FixedDrafts(drafts[:1])).run(verdicts, f"{root}/off", 1, 0, 1, None)
    assert off.counts["rejected_structure"] == 1 and off.counts["written"] == 0


# ----------------------------------------------------------------------------- manifest and llm prompt


def test_manifest_defaults_and_llm_prompt_rules():
    spec = ExpandSpec()
    assert (spec.changeCalls, spec.siblingTools, spec.keepContext, spec.rewriteContext) == (False, False, True, False)
    assert StructureOptions.from_spec(ExpandSpec(changeCalls=True)) == StructureOptions(change_calls=True)
    seed = seed_of(S_STOCK)
    assert "similar tool" not in llm_prompt(seed, "v")
    assert "get_stock_price -> get_weather" in llm_prompt(seed, "v", StructureOptions(sibling_tools=True))
    assert "drop, add or reorder" in llm_prompt(seed, "v", StructureOptions(change_calls=True))
    assert "earlier turns of the conversation are kept" in llm_prompt(seed_of(S_MULTI), "v", StructureOptions())
    assert "earlier turns" not in llm_prompt(seed_of(S_MULTI), "v", StructureOptions(keep_context=False))


def test_worker_processes_give_the_same_structured_output(data):
    """The structure options travel with the drafter into the worker processes (shared.workers)."""
    root, verdicts, corpus = data
    cfg = ExpandConfig(changeCalls=True, siblingTools=True, rewriteContext=True)
    here = Expander(cfg).run(verdicts, f"{root}/here", 4, 2, 1, corpus)
    pooled = Expander(cfg, processes=2).run(verdicts, f"{root}/pooled", 4, 2, 1, corpus)
    assert pooled.outputs[0].content_hash == here.outputs[0].content_hash and pooled.counts == here.counts
    assert any(s.meta.get("edde_structure") for s in open_dataset(f"{root}/pooled").iter(Sample))
