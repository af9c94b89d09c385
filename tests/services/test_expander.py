"""EDDE: the expander algorithm (programmatic and llm generators), resume, and the gRPC service."""

from __future__ import annotations

import json

import grpc
import pytest

from looptool.services.expander.drafts import Draft
from looptool.services.expander.expand import ExpandConfig, Expander, expand
from looptool.services.expander.llm_drafts import LLMGenerator, llm_prompt, parse_llm_draft
from looptool.services.expander.seeds import call_shape, seed_from_judged
from looptool.shared.generation import Completion, GenResult
from looptool.shared.records import (
    Decision,
    ErrorInfo,
    JudgedSample,
    Message,
    ProbeResult,
    Progress,
    Sample,
    StageResult,
    Tool,
    ToolCall,
    Verdict,
)
from looptool.shared.schema import validate_call
from looptool.shared.storage import open_dataset, writer_for_uri
from looptool.shared.toolcall_format import render_tool_calls

WEATHER = Tool(
    name="get_weather",
    description="Get the current weather for a city.",
    parameters={
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "City name"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city"],
    },
)
FLIGHT = Tool(
    name="book_flight",
    description="Book a flight between two airports.",
    parameters={
        "type": "object",
        "properties": {
            "origin": {"type": "string", "description": "IATA airport code"},
            "destination": {"type": "string", "description": "IATA airport code"},
            "passengers": {"type": "integer", "minimum": 1, "maximum": 9},
        },
        "required": ["origin", "destination", "passengers"],
    },
)
AREA = Tool(
    name="calculate_triangle_area",
    description="Calculate the area of a triangle given its base and height.",
    parameters={
        "type": "object",
        "properties": {"base": {"type": "number"}, "height": {"type": "number"}},
        "required": ["base", "height"],
    },
)
STOCK = Tool(
    name="get_stock_price",
    description="Get the latest stock price for a ticker symbol.",
    parameters={"type": "object", "properties": {"ticker": {"type": "string"}}, "required": ["ticker"]},
)
TRANSLATE = Tool(
    name="translate_text",
    description="Translate a text into a target language.",
    parameters={
        "type": "object",
        "properties": {"text": {"type": "string"}, "target_language": {"type": "string"}},
        "required": ["text", "target_language"],
    },
)


def sample(text: str, tools: list[Tool], calls: list[ToolCall]) -> Sample:
    return Sample(context=[Message(role="user", content=text)], tools=tools, reference=calls, source="synthesize").with_id()


def call(name: str, **args) -> ToolCall:
    return ToolCall(name=name, arguments=args)


def judged(s: Sample, decision: Decision, predicted: list[ToolCall], corrected=(), reason="wrong value") -> JudgedSample:
    probe = ProbeResult(sample=s, prediction=render_tool_calls(predicted), predicted_calls=predicted)
    return JudgedSample(probe=probe, verdict=Verdict(sample_id=s.id, decision=decision, reason=reason, corrected=list(corrected)))


S_WEATHER = sample("What's the weather in Paris in celsius?", [WEATHER, AREA], [call("get_weather", city="Paris", unit="celsius")])
S_FLIGHT = sample(
    "Book a flight from SFO to JFK for 2 people, and one from JFK to LAX for 1.",
    [FLIGHT, WEATHER],
    [call("book_flight", origin="SFO", destination="JFK", passengers=2), call("book_flight", origin="JFK", destination="LAX", passengers=1)],
)
S_AREA = sample("Area of a triangle with base 3 and height 4?", [AREA], [call("calculate_triangle_area", base=3, height=4)])
S_STOCK = sample("How is AAPL trading?", [STOCK, WEATHER], [call("get_stock_price", ticker="MSFT")])  # a wrong label
S_TRANSLATE = sample(
    "Translate 'good morning' into French.", [TRANSLATE], [call("translate_text", text="good morning", target_language="French")]
)
S_UNCLEAR = sample("Weather in Rome?", [WEATHER], [call("get_weather", city="Rome")])
S_NOCALL = sample("Book me something nice.", [FLIGHT], [call("book_flight", origin="SFO", destination="JFK", passengers=1)])


def judged_set() -> list[JudgedSample]:
    return [
        judged(S_WEATHER, Decision.MODEL_WRONG, [call("get_weather", city="London")], reason="the user asked about Paris"),
        judged(S_FLIGHT, Decision.MODEL_WRONG, [S_FLIGHT.reference[0]], reason="the second flight is missing"),
        judged(S_STOCK, Decision.LABEL_WRONG, [call("get_stock_price", ticker="AAPL")], corrected=[call("get_stock_price", ticker="AAPL")]),
        judged(S_AREA, Decision.BOTH_ACCEPTABLE, [call("calculate_triangle_area", base=3.0, height=4.0)]),
        judged(S_UNCLEAR, Decision.UNCLEAR, []),
        judged(S_NOCALL, Decision.LABEL_WRONG, [], reason="the assistant should ask for details"),
        judged(S_TRANSLATE, Decision.MODEL_WRONG, [call("translate_text", text="good morning", target_language="fr")]),
    ]


@pytest.fixture
def data(tmp_path):
    root = tmp_path.as_uri()
    w = writer_for_uri(f"{root}/verdicts", kind="verdicts")
    w.write_many(judged_set())
    verdicts = w.commit()
    w = writer_for_uri(f"{root}/corpus")
    w.write_many([S_WEATHER, S_FLIGHT, S_AREA, S_STOCK, S_TRANSLATE, S_UNCLEAR, S_NOCALL])
    corpus = w.commit()
    return root, verdicts, corpus


def _samples(uri: str) -> list[Sample]:
    return list(open_dataset(uri).iter(Sample))


def _check_invariant(counts: dict[str, int]) -> None:
    assert counts["generated"] == counts["invalid"] + counts["duplicates"] + counts["filtered_mastered"] + counts["written"]
    assert counts["invalid"] == sum(v for k, v in counts.items() if k.startswith("rejected_"))


# ----------------------------------------------------------------------------- seeds


def test_seed_selection():
    js = judged_set()
    seeds = [seed_from_judged(j) for j in js]
    assert [s.decision.value if s else why for s, why in seeds] == [
        "model_wrong", "model_wrong", "label_wrong", "not_error", "unclear", "no_call", "model_wrong",
    ]
    label_wrong = seeds[2][0]
    assert label_wrong.correct == [call("get_stock_price", ticker="AAPL")]  # the judge's correction
    assert label_wrong.wrong == [call("get_stock_price", ticker="MSFT")]  # the old label
    unclear, _ = seed_from_judged(js[4], include_unclear=True)
    assert unclear is not None and unclear.correct == S_UNCLEAR.reference


# ----------------------------------------------------------------------------- programmatic


def test_programmatic_expansion_keeps_structure_changes_values(data):
    root, verdicts, corpus = data
    result = expand(verdicts, f"{root}/out", factor=4, seed=7, round=2, corpus=corpus)
    c = result.counts
    assert c["seeds"] == 4
    assert c["skipped_not_error"] == 1 and c["skipped_unclear"] == 1 and c["skipped_no_call"] == 1
    _check_invariant(c)
    out = _samples(f"{root}/out")
    assert len(out) == c["written"] == result.outputs[0].record_count
    assert c["written"] >= 12  # 4 seeds × 4, a few may be rejected
    seeds = {s.id: s for s, _ in map(seed_from_judged, judged_set()) if s is not None}
    corpus_texts = {s.context[-1].content for s in _samples(corpus.uri)}
    by_parent: dict[str, list[Sample]] = {}
    for s in out:
        parent = s.meta["edde_seed"]
        seed = seeds[parent]
        by_parent.setdefault(parent, []).append(s)
        # structure kept: same functions, same number/order of calls, same argument names
        assert call_shape(s.reference) == call_shape(seed.correct)
        # values changed
        assert sorted(c.key() for c in s.reference) != sorted(c.key() for c in seed.correct)
        # schema-valid reference calls, and the seed's tools are all offered (plus distractors)
        assert all(not validate_call(c, s.tools) for c in s.reference)
        assert {t.name for t in seed.tools} <= {t.name for t in s.tools}
        # a new request that states every value
        assert s.context[-1].role == "user" and s.context[-1].content not in corpus_texts
        for c_ in s.reference:
            for v in c_.arguments.values():
                assert str(v).lower() in s.context[-1].content.lower()
        # lineage: one expand event pointing at the seed
        assert s.source == "edde"
        assert len(s.lineage) == 1
        ev = s.lineage[0]
        assert (ev.round, ev.stage, ev.action, ev.parent_id) == (2, "expand", "expanded", parent)
        assert ev.reason == f"from {parent}: {seed.decision.value}"
        assert s.id == s.content_id()
    assert set(by_parent) == set(seeds)
    assert len({s.id for s in out}) == len(out)
    # distractors: some samples got tools beyond the seed's own
    assert any(len(s.tools) > len(seeds[s.meta["edde_seed"]].tools) for s in out)


def test_deterministic_and_idempotent(data):
    root, verdicts, corpus = data
    a = expand(verdicts, f"{root}/a", factor=3, seed=11, round=1, corpus=corpus)
    b = expand(verdicts, f"{root}/b", factor=3, seed=11, round=1, corpus=corpus)
    other = expand(verdicts, f"{root}/c", factor=3, seed=12, round=1, corpus=corpus)
    assert a.outputs[0].content_hash == b.outputs[0].content_hash
    assert a.counts == b.counts
    assert other.outputs[0].content_hash != a.outputs[0].content_hash
    again = expand(verdicts, f"{root}/a", factor=3, seed=11, round=1, corpus=corpus)  # committed: reused
    assert again.outputs[0] == a.outputs[0] and again.counts == a.counts


class CountingExpander(Expander):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.expanded: list[str] = []

    def expand_group(self, seeds, *a, **kw):
        self.expanded += [sd.id for sd in seeds]
        return super().expand_group(seeds, *a, **kw)


@pytest.mark.parametrize("group", [1, 3])
def test_resume_after_interruption_gives_identical_output(data, group):
    root, verdicts, corpus = data
    cfg = ExpandConfig(flushEvery=group)
    full = Expander(cfg).run(verdicts, f"{root}/full", 3, 5, 1, corpus)

    calls = {"n": 0}

    def stop_after_first_groups() -> bool:
        calls["n"] += 1
        return calls["n"] > (2 if group == 1 else 1)

    events = list(Expander(cfg).events(verdicts, f"{root}/part", 3, 5, 1, corpus, should_stop=stop_after_first_groups))
    assert not any(isinstance(e, StageResult) for e in events)  # interrupted: nothing committed
    done_before = [e for e in events if isinstance(e, Progress)][-1].done
    assert done_before == (2 if group == 1 else 3)

    resumed_exp = CountingExpander(cfg)
    resumed = resumed_exp.run(verdicts, f"{root}/part", 3, 5, 1, corpus)
    assert len(resumed_exp.expanded) == full.counts["seeds"] - done_before  # finished seeds were skipped
    assert resumed.outputs[0].content_hash == full.outputs[0].content_hash
    assert resumed.counts == full.counts


def test_resume_after_a_crash_between_stats_and_part(data, monkeypatch):
    """The stats record of a group lands, its part does not: the group is redone, output identical."""
    from looptool.shared.storage.datasets import DatasetWriter

    root, verdicts, corpus = data
    cfg = ExpandConfig(flushEvery=2)
    full = Expander(cfg).run(verdicts, f"{root}/full", 2, 9, 1, corpus)
    real_flush = DatasetWriter.flush
    n = {"flush": 0}

    def crashing_flush(self):
        n["flush"] += 1
        if n["flush"] == 2:
            raise OSError("disk gone")
        return real_flush(self)

    monkeypatch.setattr(DatasetWriter, "flush", crashing_flush)
    with pytest.raises(OSError):
        Expander(cfg).run(verdicts, f"{root}/crash", 2, 9, 1, corpus)
    monkeypatch.setattr(DatasetWriter, "flush", real_flush)
    again = CountingExpander(cfg)
    resumed = again.run(verdicts, f"{root}/crash", 2, 9, 1, corpus)
    assert len(again.expanded) == 2  # the second group only
    assert resumed.outputs[0].content_hash == full.outputs[0].content_hash and resumed.counts == full.counts


class FixedDrafts:
    """A DraftGenerator that always proposes the same drafts (to exercise dedup)."""

    name = "fixed"

    def __init__(self, drafts: list[Draft]):
        self._drafts = drafts

    def drafts(self, seed, tasks, base_seed):
        return [self._drafts[min(i, len(self._drafts) - 1)] for i, _ in enumerate(tasks)]


def test_dedup_against_corpus_and_within_batch(data):
    root, verdicts, corpus = data
    weather_seed = seed_from_judged(judged_set()[0])[0]
    oslo = Draft(user="Weather in Oslo, in fahrenheit please.", calls=[call("get_weather", city="Oslo", unit="fahrenheit")])
    # same request modulo case/punctuation/whitespace as a corpus sample → a duplicate
    corpus_copy = Draft(user="what's the WEATHER in paris   in celsius", calls=[call("get_weather", city="paris", unit="celsius")])
    exp = Expander(ExpandConfig(maxAttempts=2), generator=FixedDrafts([oslo, oslo, corpus_copy]))
    from looptool.services.expander.expand import _State

    state = _State(counts={}, texts=set(), ids=set())
    from looptool.services.expander.expand import user_text_key

    state.texts.add(user_text_key(S_WEATHER))
    samples, counts, rejects = exp.expand_seed(weather_seed, 3, 0, 1, [], state)
    assert [s.context[-1].content for s in samples] == [oslo.user]
    assert counts["written"] == 1
    # attempt 0: slot 1 repeats slot 0, slot 2 repeats the corpus; attempt 1: slots 1 and 2 repeat Oslo
    assert counts["duplicates"] == 4
    assert rejects and all(r == "duplicate" for r in rejects)
    _check_invariant(counts)


# ----------------------------------------------------------------------------- llm generator


class ScriptedGenerator:
    """A Generator whose answer depends on the request (its id names seed, slot and attempt)."""

    def __init__(self, script):
        self.script = script
        self.requests = []

    def generate(self, requests):
        out = []
        for r in requests:
            self.requests.append(r)
            answer = self.script(r)
            if isinstance(answer, GenResult):
                out.append(answer)
            else:
                out.append(GenResult(completions=[Completion(text=answer)]))
        return out


def _slot_attempt(request_id: str) -> tuple[int, int]:
    parts = request_id.rsplit("-", 2)
    return int(parts[1]), int(parts[2])


def _draft(user: str, city: str, unit: str = "fahrenheit") -> str:
    return json.dumps({"user": user, "calls": [{"name": "get_weather", "arguments": {"city": city, "unit": unit}}]})


def weather_script(request):
    slot, attempt = _slot_attempt(request.request_id)
    table = {
        (0, 0): _draft("How warm is it in Oslo right now, in fahrenheit?", "Oslo"),
        (1, 0): "Sure! Here is an example: {not json",
        (1, 1): "```json\n" + _draft("Rome weather in celsius, please.", "Rome", "celsius") + "\n```",
        (2, 0): _draft("Weather in Lima in kelvin?", "Lima", "kelvin"),  # schema: kelvin is not in the enum
        (2, 1): json.dumps({"user": "Weather in Lima?", "calls": [{"name": "get_weather", "arguments": {"city": "Lima"}}]}),  # structure
        (2, 2): _draft("What's it like outside today, in fahrenheit?", "Lima"),  # ungrounded: Lima never said
        (3, 0): GenResult(error="prompt over the context limit"),
        (3, 1): "<think>pick a city</think>" + _draft("Cairo weather please, fahrenheit.", "Cairo"),
    }
    return table[(slot, attempt)]


def test_llm_generator_strict_parsing_retries_and_rejections(data):
    root, verdicts, corpus = data
    gen = ScriptedGenerator(weather_script)
    only_weather = f"{root}/v-weather"
    w = writer_for_uri(only_weather, kind="verdicts")
    w.write(judged_set()[0])
    ref = w.commit()
    result = expand(ref, f"{root}/llm", factor=4, seed=3, round=1, corpus=corpus, config=ExpandConfig(generator="llm"), generator=gen)
    c = result.counts
    assert c["written"] == 3
    assert c["generated"] == 8
    assert (c["rejected_parse"], c["rejected_schema"], c["rejected_structure"], c["rejected_ungrounded"], c["rejected_generation_error"]) == (1, 1, 1, 1, 1)
    _check_invariant(c)
    out = _samples(f"{root}/llm")
    assert sorted(s.reference[0].arguments["city"] for s in out) == ["Cairo", "Oslo", "Rome"]
    assert all(s.meta["edde_generator"] == "llm" for s in out)
    # the prompt carries tools, context, the correct call, the wrong call, the judge's reason and a variation
    prompt = gen.requests[0].messages[-1].content
    for needle in ('"get_weather"', "What's the weather in Paris", '"city": "Paris"', '"city": "London"', "the user asked about Paris", "## Scenario variation"):
        assert needle in prompt, needle
    assert gen.requests[0].params.temperature > 0


def test_llm_empty_expansion_reports_an_item_error(data):
    root, verdicts, corpus = data
    gen = ScriptedGenerator(lambda r: "no JSON here")
    w = writer_for_uri(f"{root}/v1", kind="verdicts")
    w.write(judged_set()[0])
    ref = w.commit()
    exp = Expander(ExpandConfig(generator="llm", maxAttempts=2), LLMGenerator(gen))
    events = list(exp.events(ref, f"{root}/empty", 2, 0, 1, corpus))
    errors = [e for e in events if isinstance(e, ErrorInfo)]
    assert len(errors) == 1 and errors[0].code == "EXPANSION_EMPTY" and "parse" in errors[0].message
    result = events[-1]
    assert isinstance(result, StageResult) and result.counts["written"] == 0 and result.counts["rejected_parse"] == 4


def test_parse_llm_draft_is_strict():
    good = _draft("Weather in Oslo, fahrenheit", "Oslo")
    assert parse_llm_draft(good).error == ""
    for bad in (
        "Here you go: " + good,
        json.dumps({"user": "x", "calls": [], }),
        json.dumps({"user": "x", "calls": [{"name": "f", "arguments": {}}], "extra": 1}),
        json.dumps({"user": "", "calls": [{"name": "f", "arguments": {}}]}),
        json.dumps({"user": "x", "calls": [{"name": "f", "arguments": "{}", "id": 3}]}),
        json.dumps([1, 2]),
    ):
        assert parse_llm_draft(bad).error == "parse", bad


def test_llm_prompt_for_label_wrong_shows_the_old_label():
    seed = seed_from_judged(judged_set()[2])[0]
    text = llm_prompt(seed, "a terse request")
    assert "Wrong label the example had" in text and '"ticker": "MSFT"' in text and '"ticker": "AAPL"' in text


# ----------------------------------------------------------------------------- filter mastered


def test_filter_mastered_drops_what_the_model_already_answers(data):
    root, verdicts, corpus = data

    def answer(request):  # the "current model" knows get_weather, nothing else
        text = request.messages[-1].content
        ref = None
        for s in _samples(f"{root}/probe-src"):
            if s.context[-1].content == text:
                ref = s.reference
        assert request.params.temperature == 0.0
        return render_tool_calls(ref) if ref and ref[0].name == "get_weather" else "I don't know"

    plain = expand(verdicts, f"{root}/probe-src", factor=2, seed=1, round=1, corpus=corpus)
    prober = ScriptedGenerator(answer)
    filtered = expand(
        verdicts, f"{root}/filtered", factor=2, seed=1, round=1, corpus=corpus, config=ExpandConfig(filterMastered=True), prober=prober
    )
    n_weather = sum(1 for s in _samples(f"{root}/probe-src") if s.reference[0].name == "get_weather")
    assert n_weather >= 1
    assert filtered.counts["filtered_mastered"] == n_weather
    assert filtered.counts["written"] == plain.counts["written"] - n_weather
    assert all(s.reference[0].name != "get_weather" for s in _samples(f"{root}/filtered"))
    _check_invariant(filtered.counts)


# ----------------------------------------------------------------------------- gRPC service


def test_grpc_expand_on_loopback_with_health_and_metrics(data):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from prometheus_client import REGISTRY

    from looptool.services.expander.client import ExpandFailed, ExpanderClient
    from looptool.services.expander.server import start
    from looptool.shared.config import load_config
    from looptool.shared.grpc_util import channel, wait_healthy

    root, verdicts, corpus = data
    factory_calls = []

    def factory(address, model):
        factory_calls.append((address, model))
        return ScriptedGenerator(weather_script)

    running = start(load_config(None, environ={}), host="127.0.0.1", port=0, metrics_port=0, generator_factory=factory)
    try:
        wait_healthy(running.address, timeout=20)
        with channel(running.address) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="looptool.v1.Expander"), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        before = REGISTRY.get_sample_value("looptool_expander_written_total") or 0.0
        progress = []
        with ExpanderClient(running.address, timeout_s=60) as client:
            result = client.expand(verdicts, f"{root}/rpc", factor=2, seed=4, corpus=corpus, round=1, on_progress=progress.append)
            assert result.counts["seeds"] == 4 and result.counts["written"] >= 6
            assert result.outputs[0].record_count == result.counts["written"]
            assert progress and progress[-1].done == progress[-1].total == 4
            local = expand(verdicts, f"{root}/local", factor=2, seed=4, round=1, corpus=corpus)
            assert local.outputs[0].content_hash == result.outputs[0].content_hash  # same algorithm, same bytes
            after = REGISTRY.get_sample_value("looptool_expander_written_total")
            assert after - before >= result.counts["written"]
            # llm generator through the injected inference client
            w = writer_for_uri(f"{root}/v-weather", kind="verdicts")
            w.write(judged_set()[0])
            vref = w.commit()
            cfg = ExpandConfig(generator="llm", inferenceAddress="127.0.0.1:1", generatorModel="file:///models/gen")
            llm = client.expand(vref, f"{root}/rpc-llm", factor=4, seed=3, config=cfg, round=1)
            assert llm.counts["written"] == 3
            assert factory_calls == [("127.0.0.1:1", "file:///models/gen")]
            # bad input: a named field, INVALID_ARGUMENT
            from looptool.v1 import expander_pb2, expander_pb2_grpc
            from looptool.shared.proto_convert import dataset_to_pb

            stub = expander_pb2_grpc.ExpanderStub(client._channel)
            bad = expander_pb2.ExpandRequest(verdicts=dataset_to_pb(verdicts), output_prefix=f"{root}/x", factor=1, config_json='{"factr": 2}')
            with pytest.raises(grpc.RpcError) as err:
                list(stub.Expand(bad, timeout=10))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "factr" in err.value.details()
            with pytest.raises(ExpandFailed) as missing:
                client.expand(verdicts.model_copy(update={"uri": f"{root}/nope", "content_hash": ""}), f"{root}/y", factor=1)
            assert missing.value.code == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        running.stop(0)


def test_llm_drafts_are_batched_across_seeds(data):
    root, verdicts, corpus = data

    class Counting(ScriptedGenerator):
        batches: list[int] = []

        def generate(self, requests):
            self.batches.append(len(requests))
            return super().generate(requests)

    gen = Counting(lambda r: "nope")
    Counting.batches = []
    result = expand(verdicts, f"{root}/batched", factor=2, seed=0, round=1, corpus=corpus,
                    config=ExpandConfig(generator="llm", maxAttempts=2), generator=gen)
    assert result.counts["seeds"] == 4 and result.counts["written"] == 0
    assert gen.batches == [8, 8]  # one model call per attempt for the whole group of 4 seeds × 2 slots


def test_seed_with_a_schema_invalid_correct_side_is_skipped():
    bad = judged(S_WEATHER, Decision.LABEL_WRONG, [], corrected=[call("get_weather", city="Paris", unit="kelvin")])
    assert seed_from_judged(bad) == (None, "invalid_label")


def test_label_wrong_seed_written_by_the_judge_keeps_the_old_label_as_the_wrong_side():
    relabelled = S_STOCK.model_copy(deep=True)
    relabelled.meta["label_before_judge"] = '[{"name":"get_stock_price","arguments":{"ticker":"MSFT"}}]'
    relabelled.reference = [call("get_stock_price", ticker="AAPL")]
    seed, _ = seed_from_judged(judged(relabelled, Decision.LABEL_WRONG, [call("get_stock_price", ticker="AAPL")],
                                      corrected=[call("get_stock_price", ticker="AAPL")]))
    assert seed.correct == [call("get_stock_price", ticker="AAPL")] and seed.wrong == [call("get_stock_price", ticker="MSFT")]
    no_meta = S_STOCK.model_copy(deep=True)
    no_meta.reference = [call("get_stock_price", ticker="AAPL")]
    seed, _ = seed_from_judged(judged(no_meta, Decision.LABEL_WRONG, [], corrected=no_meta.reference))
    assert seed.wrong == []  # the old label is unknown: not shown as the wrong side
