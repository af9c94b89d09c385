"""Dialogue synthesizer: services on loopback, BFCL toolset, filters, determinism, resume, LLM agents."""

from __future__ import annotations

import hashlib
import json
import re

import pyarrow.parquet as pq
import pytest

from looptool.services.synthesizer import server as synth_server
from looptool.services.synthesizer.agents import make_agents
from looptool.services.synthesizer.client import SynthesizerClient
from looptool.services.synthesizer.config import SynthesisConfig, parse_config
from looptool.services.synthesizer.engine import LocalToolBackend, filter_outcome, run_synthesis, Outcome
from looptool.services.synthesizer.filters import Deduper
from looptool.services.toolsim import server as toolsim_server
from looptool.shared.conversion import convert_dataset
from looptool.shared.generation import Completion, GenResult
from looptool.shared.grpc_util import wait_healthy
from looptool.shared.records import Dialog, Message, Tool, ToolCall
from looptool.shared.schema import validate_call
from looptool.shared.storage import open_dataset
from looptool.shared.toolsets import import_source, store_toolset
from looptool.shared.verl_format import VERL_COLUMNS

from support.inference import one_torch_thread  # noqa: F401  (one torch thread: the inference test is faster)


@pytest.fixture(scope="module")
def bfcl_tools():
    return import_source("bfcl:simple_python", limit=10).tools


@pytest.fixture(scope="module")
def services():
    toolsim = toolsim_server.start(None, port=0)
    synth = synth_server.start(None, port=0, toolsim_address=toolsim.address)
    wait_healthy(toolsim.address, 20)
    wait_healthy(synth.address, 20)
    yield toolsim, synth
    synth.stop(0)
    toolsim.stop(0)


def _engine(tools, n, seed, uri, cfg=None, concurrency=1, **kw):
    cfg = cfg or SynthesisConfig()
    return run_synthesis(tools, n, seed, uri, cfg, make_agents(cfg), LocalToolBackend(), concurrency=concurrency, **kw)


def test_services_synthesize_a_bfcl_dialogue_dataset_and_parquet(services, bfcl_tools, tmp_path):
    toolsim, synth = services
    base = (tmp_path / "store").as_uri()
    toolset = store_toolset(bfcl_tools, f"{base}/toolsets/simple")
    out = f"{base}/dialogs"
    with SynthesizerClient(synth.address) as client:
        result, dialogs, errors = client.synthesize(toolset, 24, seed=1, concurrency=2, output_prefix=out,
                                                    config={"toolsPerSample": 3, "maxNeeds": 2})
        assert result is not None and not errors
        c = result.counts
        assert c["processed"] == 24 and c["kept"] + sum(v for k, v in c.items() if k.startswith("rejected.")) == 24
        assert c["rejected.invalid_call"] == 0 and c["rejected.broken_turn"] == 0
        ref = result.outputs[0]
        assert ref.kind == "dialogs" and ref.record_count == c["kept"] == len(dialogs)
        stored = list(open_dataset(ref).iter(Dialog))
        assert [d.id for d in stored] == [d.id for d in dialogs]  # streamed in index order
        kinds, n_calls = set(), 0
        for d in stored:
            assert d.meta["tool_mode"] == "schema" and len(d.tools) == 3
            kinds.update(n["kind"] for n in d.plan["needs"])
            for m in d.messages:
                for call in m.tool_calls:
                    assert validate_call(call, d.tools) == []  # every stored call validates
                    n_calls += 1
            tool_msgs = [m for m in d.messages if m.role == "tool"]
            assert all(json.loads(m.content) for m in tool_msgs)
        assert n_calls > 20 and {"single", "parallel", "sequential", "clarification"} <= kinds
        # same request again: the committed dataset is returned (idempotent stage)
        again, redialogs, _ = client.synthesize(toolset, 24, seed=1, concurrency=2, output_prefix=out,
                                                config={"toolsPerSample": 3, "maxNeeds": 2})
        assert again.outputs[0].content_hash == ref.content_hash and not redialogs
    # same seed through the gRPC tool simulator and in-process: identical content
    local, _, _ = _engine(bfcl_tools, 24, 1, f"{base}/local", parse_config({"toolsPerSample": 3, "maxNeeds": 2}))
    assert local.outputs[0].content_hash == ref.content_hash
    conv = convert_dataset(ref, f"{base}/conv", heldout_fraction=0.2)
    assert conv.counts["samples"] > 24 and conv.counts["heldout"] > 0
    part = open_dataset(conv.train).manifest["parts"][0]["key"]
    table = pq.read_table(tmp_path / "store" / "conv" / "train" / part)
    assert tuple(table.column_names) == VERL_COLUMNS
    row = table.slice(0, 1).to_pylist()[0]
    assert row["prompt"][0]["role"] == "system" and row["reward_model"]["style"] == "rule"


def test_bad_requests_are_rejected_clearly(services, tmp_path):
    import grpc

    _, synth = services
    with SynthesizerClient(synth.address) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.synthesize(store_toolset([Tool(name="a", description="A tool.")], (tmp_path / "t").as_uri()), 1,
                              output_prefix=(tmp_path / "o").as_uri(), config={"agents": "wizard"})
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "config_json" in err.value.details()
        from looptool.shared.records import DatasetRef

        with pytest.raises(grpc.RpcError) as err:
            client.synthesize(DatasetRef(uri=(tmp_path / "missing").as_uri(), kind="tools"), 1, output_prefix=(tmp_path / "o").as_uri())
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "toolset" in err.value.details()


def test_deterministic_regardless_of_concurrency(bfcl_tools, tmp_path):
    r1, d1, _ = _engine(bfcl_tools, 40, 11, (tmp_path / "c1").as_uri(), concurrency=1)
    r4, d4, _ = _engine(bfcl_tools, 40, 11, (tmp_path / "c4").as_uri(), concurrency=4)
    assert r1.outputs[0].content_hash == r4.outputs[0].content_hash
    assert [d.id for d in d1] == [d.id for d in d4]
    r_other, _, _ = _engine(bfcl_tools, 40, 12, (tmp_path / "c5").as_uri(), concurrency=4)
    assert r_other.outputs[0].content_hash != r1.outputs[0].content_hash


DET_SCRIPT = """
import sys
from looptool.services.synthesizer.agents import make_agents
from looptool.services.synthesizer.config import SynthesisConfig
from looptool.services.synthesizer.engine import LocalToolBackend, run_synthesis
from looptool.shared.toolsets import import_source
cfg = SynthesisConfig()
res, _, _ = run_synthesis(import_source("bfcl:simple_python", limit=10).tools, 20, 9, sys.argv[1], cfg, make_agents(cfg),
                          LocalToolBackend(), concurrency=2)
print(res.outputs[0].content_hash)
"""


def test_deterministic_across_processes_and_hash_seeds(bfcl_tools, tmp_path):
    import os
    import subprocess
    import sys

    here, _, _ = _engine(bfcl_tools, 20, 9, (tmp_path / "here").as_uri())
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", DET_SCRIPT, (tmp_path / "there").as_uri()], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == here.outputs[0].content_hash


def test_resume_skips_finished_indices_and_reproduces_the_dataset(bfcl_tools, tmp_path):
    cfg = SynthesisConfig(part_size=4)
    full, _, _ = _engine(bfcl_tools, 20, 3, (tmp_path / "full").as_uri(), cfg)
    uri = (tmp_path / "resumed").as_uri()
    partial, streamed, _ = _engine(bfcl_tools, 20, 3, uri, cfg, stop_after=11)  # "crash" after 11 dialogues
    assert partial is None and not (tmp_path / "resumed" / "_manifest.json").exists()
    assert len(streamed) >= 8
    res, rest, _ = _engine(bfcl_tools, 20, 3, uri, cfg, concurrency=3)
    assert res.counts["resumed"] == 8  # the two parts of 4 flushed before the "crash"
    assert res.outputs[0].content_hash == full.outputs[0].content_hash
    assert res.counts["kept"] == full.counts["kept"]


def test_filters():
    tool = Tool(name="f", description="F.", parameters={"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]})

    def outcome(calls, content="", query="hello there"):
        msgs = [Message(role="user", content=query), Message(role="assistant", content=content, tool_calls=calls)]
        if calls:
            msgs += [Message(role="tool", name="f", content="{}"), Message(role="assistant", content="done")]
        return Outcome(0, dialog=Dialog(messages=msgs, tools=[tool]))

    dd = Deduper(0.9)
    assert filter_outcome(outcome([ToolCall(name="f", arguments={"x": "1"})]), dd).reject == "invalid_call"
    assert filter_outcome(outcome([ToolCall(name="g", arguments={})]), dd).reject == "invalid_call"
    assert filter_outcome(outcome([], content="   "), dd).reject == "broken_turn"
    assert filter_outcome(outcome([], content="ok \ufffd\x1c garbage"), dd).reject == "broken_turn"
    ok = filter_outcome(outcome([ToolCall(name="f", arguments={"x": 1})], query="Please compute f of 1 for the report today now"), dd)
    assert ok.reject == ""
    assert filter_outcome(outcome([ToolCall(name="f", arguments={"x": 1})], query="please compute F of 1, for the report today now!"), dd).reject == "duplicate"
    # Jaccard: one extra token among 10 → 10/11 ≥ 0.9
    assert filter_outcome(outcome([ToolCall(name="f", arguments={"x": 1})], query="Please compute f of 1 for the report today now again"), dd).reject == "duplicate"
    assert filter_outcome(outcome([ToolCall(name="f", arguments={"x": 2})], query="Something entirely different"), dd).reject == ""
    exact_only = Deduper(0)
    exact_only.add("a b c d e f g h i j")
    assert not exact_only.seen("a b c d e f g h i j k") and exact_only.seen("A b c d e f g h i j.")


WEATHER = Tool(
    name="get_weather",
    description="Get the current weather for a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


class ScriptedAgentsModel:
    """A deterministic test double of the inference server (Generator protocol) playing every agent.

    Planner → a fixed JSON plan; User → a request mentioning the values it was given (remembered);
    Assistant → the remembered call, except: cities hashing to 0 mod 4 always get an unparseable
    turn, to 1 mod 4 three different calls (a disagreement), to 2 mod 4 garbage first then two
    agreeing samples. A tool response → a text summary.
    """

    def __init__(self):
        self.requested: dict[str, dict] = {}
        self.requests = 0

    @staticmethod
    def bucket(city: str) -> int:
        return int(hashlib.sha256(city.encode()).hexdigest(), 16) % 4

    def _one(self, req, i):
        first = req.messages[-1].content if req.messages else ""
        if "You plan realistic conversations" in first:
            return '{"needs": [{"kind": "single", "tools": ["get_weather"]}]}'
        if "You are a user" in first:
            m = re.search(r'with (\{.*?\})', first)
            if not m:
                return "Tell me a joke about cats."
            args = json.loads(m.group(1))
            text = f"What's the weather like in {args['city']} right now?"
            self.requested[text] = args
            return text
        last = req.messages[-1]
        if last.role == "tool":
            return "It is sunny there."
        args = self.requested.get(last.content)
        if args is None:
            return "I can't help with that."
        b = self.bucket(args["city"])
        call = lambda a: '<tool_call>\n' + json.dumps({"name": "get_weather", "arguments": a}) + '\n</tool_call>'  # noqa: E731
        if b == 0:
            return '<tool_call>{"name": "get_weather", "arguments": {"city": '  # unclosed, invalid
        if b == 1:
            return call({"city": f"{args['city']} #{self.requests}-{i}"})
        if b == 2 and i == 0 and req.params.n == 2:
            return "<tool_call>not json</tool_call>"
        return call(args)

    def generate(self, requests):
        out = []
        for r in requests:
            self.requests += 1
            out.append(GenResult(completions=[Completion(text=self._one(r, i)) for i in range(max(1, r.params.n))]))
        return out


def test_llm_agents_vote_mark_disagreements_and_filter_unparseable_turns(tmp_path):
    cfg = SynthesisConfig(agents="llm", votes=3, max_turn_retries=1, max_needs=1)
    model = ScriptedAgentsModel()
    res, dialogs, errors = run_synthesis([WEATHER], 24, 5, (tmp_path / "llm").as_uri(), cfg, make_agents(cfg, model),
                                         LocalToolBackend(), concurrency=2)
    c = res.counts
    assert c["processed"] == 24
    assert c["rejected.broken_turn"] >= 1 and c["rejected.broken_turn"] == len([e for e in errors if e.code == "UNPARSEABLE_TURN"])
    assert all(e.item_id and "unparseable turn" in e.message for e in errors)
    assert c["kept"] >= 1 and c["kept"] + c["rejected.broken_turn"] + c["rejected.duplicate"] + c["rejected.invalid_call"] == 24
    marked = [d for d in dialogs if any(k.startswith("disagreement.") for k in d.meta)]
    assert marked and c["disagreement"] >= len(marked)
    for d in dialogs:
        assert d.meta["agents"] == "llm" and d.plan["planner"] == "llm"
        city = d.messages[1].tool_calls[0].arguments["city"] if d.messages[1].tool_calls else None
        assert city is not None and d.messages[-1].content == "It is sunny there."
        assert validate_call(d.messages[1].tool_calls[0], [WEATHER]) == []
    # the disagreement mark reaches the converted samples
    from looptool.shared.conversion import dialog_to_samples

    s = dialog_to_samples(marked[0], at="2026-01-01T00:00:00+00:00")
    assert s[0].meta.get("disagreement")


def test_llm_agents_need_a_generator():
    with pytest.raises(ValueError, match="need a generator"):
        make_agents(SynthesisConfig(agents="llm"))


def test_llm_agents_against_the_inference_server_with_a_tiny_model(tmp_path):
    """End to end with real services: inference (tiny local model) + toolsim + synthesizer.

    A random tiny model writes nonsense: the planner and user fall back to the schema-driven ones,
    unparseable assistant turns are per-item errors, and the run still completes with counts."""
    from support.inference import tiny_model_dir

    from looptool.services.inference import server as inference_server
    from looptool.shared.config import InferenceSettings, LoopToolConfig

    cfg = LoopToolConfig(inference=InferenceSettings(model=str(tiny_model_dir()), max_batch_size=8, batch_wait_ms=2))
    cfg.services.inference.port = 0
    inference = inference_server.start(cfg, port=0)
    cfg.services.inference.port = inference.port
    toolsim = toolsim_server.start(None, port=0)
    synth = synth_server.start(cfg, port=0, toolsim_address=toolsim.address, storage_base=(tmp_path / "store").as_uri())
    try:
        for r in (inference, toolsim, synth):
            wait_healthy(r.address, 60)
        toolset = store_toolset([WEATHER], (tmp_path / "store" / "ts").as_uri())
        with SynthesizerClient(synth.address, timeout=120) as client:
            result, dialogs, errors = client.synthesize(toolset, 3, seed=2, concurrency=2, config={
                "agents": "llm", "votes": 2, "maxTurnRetries": 1, "maxTokens": 16, "maxNeeds": 1, "maxSteps": 2})
        assert result is not None
        c = result.counts
        assert c["processed"] == 3 and c["kept"] + sum(v for k, v in c.items() if k.startswith("rejected.")) + c["errors"] == 3
        assert c.get("planner_fallback", 0) + c.get("user_fallback", 0) >= 1 or c["kept"] == 3
        assert result.outputs[0].uri.startswith((tmp_path / "store").as_uri() + "/synthesis/")
        for d in dialogs:
            for m in d.messages:
                for call in m.tool_calls:
                    assert validate_call(call, [WEATHER]) == []
    finally:
        synth.stop(0)
        toolsim.stop(0)
        inference.stop(0)


# ----------------------------------------------------------------------------- scenarios (shared/scenarios.py)


def test_scenarios_calls_are_valid_and_requests_ground_every_value():
    import random

    from looptool.shared import scenarios

    tools = []
    for cat in ("simple_python", "multiple", "live_simple", "live_multiple"):
        tools += import_source(f"bfcl:{cat}", limit=80).tools
    rng = random.Random(0)
    invalid = 0
    for i, tool in enumerate(tools):
        call = scenarios.make_call(tool, rng, include_optional=0.7)
        invalid += bool(validate_call(call, [tool]))
        style = scenarios.STYLES[i % len(scenarios.STYLES)]
        text = scenarios.render_request([call], [tool], rng, style)
        assert scenarios.ungrounded_values(text, [call]) == [], (tool.name, text)
        varied = scenarios.vary_call(call, tool, rng)
        assert varied.name == call.name and set(varied.arguments) == set(call.arguments)
        if not validate_call(call, [tool]):
            assert validate_call(varied, [tool]) == [], (tool.name, varied)
    assert invalid <= len(tools) // 200  # only unsatisfiable schemas (an enum on an array of strings)
    # parallel requests mention every value of every call
    a, b = tools[0], tools[1]
    calls = [scenarios.make_call(a, rng), scenarios.make_call(a, rng), scenarios.make_call(b, rng)]
    text = scenarios.render_request(calls, [a, b], rng, "verbose")
    assert scenarios.ungrounded_values(text, calls) == []
    # deterministic for the same rng state
    assert scenarios.make_call(a, random.Random(5)) == scenarios.make_call(a, random.Random(5))
    assert scenarios.render_request(calls, [a, b], random.Random(5)) == scenarios.render_request(calls, [a, b], random.Random(5))


def test_scenarios_values_follow_schemas_and_names():
    import random
    import re as _re

    from looptool.shared import scenarios

    rng = random.Random(1)
    for _ in range(20):
        assert 3 <= scenarios.sample_value("n", {"type": "integer", "minimum": 3, "maximum": 5}, rng) <= 5
        v = scenarios.sample_value("ratio", {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}, rng)
        assert 0 < v < 1 and isinstance(v, float)
        assert scenarios.sample_value("unit", {"type": "string", "enum": ["a", "b"]}, rng) in ("a", "b")
        assert _re.fullmatch(r"\d{4}-\d{2}-\d{2}", scenarios.sample_value("date", {"type": "string"}, rng))
        assert _re.fullmatch(r"\d{2}/\d{2}/\d{4}", scenarios.sample_value("when", {"type": "string", "description": "Date in MM/DD/YYYY"}, rng))
        assert "@" in scenarios.sample_value("email", {"type": "string"}, rng)
        assert _re.fullmatch(r"[A-Z]{3}\d{2}", scenarios.sample_value("code", {"type": "string", "pattern": "^[A-Z]{3}\\d{2}$"}, rng))
        arr = scenarios.sample_value("cities", {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 3}, rng)
        assert 2 <= len(arr) <= 3
        obj = scenarios.sample_value("p", {"type": "dict", "properties": {"x": {"type": "float"}, "y": {"type": "integer"}}, "required": ["x"]}, rng)
        assert isinstance(obj["x"], float)
        city = scenarios.sample_value("location", {"type": "string", "description": "The city, in the format of 'City, State'"}, rng)
        assert _re.fullmatch(r"[A-Za-z .]+, [A-Z]{2}", city), city
    tool = Tool(name="book", description="Books a table at a restaurant for a party.",
                parameters={"type": "object", "properties": {"restaurant": {"type": "string", "description": "Restaurant name"},
                                                             "party_size": {"type": "integer"}},
                            "required": ["restaurant", "party_size"]})
    assert scenarios.task_phrase(tool) == "book a table at a restaurant for a party"
    q = scenarios.render_clarification_question(tool, ["party_size"])
    assert "party size" in q and q.endswith("?")
    call = ToolCall(name="book", arguments={"restaurant": "The Ember Grill", "party_size": 4})
    partial = scenarios.render_partial_request(call, tool, ["party_size"], rng)
    assert "The Ember Grill" in partial and "4" not in partial
    assert scenarios.ungrounded_values(scenarios.render_clarification_answer(call, ["party_size"], rng), [ToolCall(name="book", arguments={"party_size": 4})]) == []
    no_tool = scenarios.render_no_tool_request([tool], rng)
    assert no_tool in scenarios.NO_TOOL_REQUESTS and "restaurant" not in no_tool.lower()
