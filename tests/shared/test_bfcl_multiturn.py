"""BFCL multi-turn (shared/bfcl_multiturn.py): our verdicts against bfcl-eval's runner, and
end-to-end runs of scripted generators on the tool simulator.

- Verdicts: trajectories built from the ground truth (correct) and from perturbations of it (a
  dropped call, a wrong argument, an extra state-changing call, undecodable blocks, a non-string
  name, a turn too many) are scored by our path (``bfcl_multiturn.score``) and by bfcl-eval's own
  runner function for one entry (``eval_runner._evaluate_single_multi_turn_entry`` with its Qwen FC
  handler's ``decode_execute``); the verdicts must agree.
- End to end: a generator that replays the ground truth in our ``<tool_call>`` format runs through
  ``evaluate(...)`` with the embedded tool simulator and scores 100% on a few entries of every
  multi-turn category; broken generators score 0%.
"""

from __future__ import annotations

import copy
import json
import uuid

import pytest

from looptool.services.toolsim.bfcl_env import ToolSimBfclExecutor
from looptool.shared import bfcl_multiturn as mt
from looptool.shared.evaluation import evaluate
from looptool.shared.generation import Completion, GenRequest, GenResult
from looptool.shared.records import ToolCall
from looptool.shared.toolcall_format import render_tool_calls

CATEGORIES = mt.MULTI_TURN_CATEGORIES
# the official path evals call texts such as "5(a=1)" (a non-string name), which Python warns about
pytestmark = pytest.mark.filterwarnings("ignore::SyntaxWarning")
PER_CATEGORY = 3  # entries per category (the checker re-executes every call: keep it small)


def test_all_four_categories_shipped():
    assert set(CATEGORIES) == {"multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context"}


# ---------------------------------------------------------------------------------------------
# bfcl-eval's own runner for one entry
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def official():
    """``(responses) -> valid`` through bfcl-eval's runner function and its Qwen FC handler."""
    from bfcl_eval.eval_checker import eval_runner
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils
    from bfcl_eval.model_handler.local_inference.qwen_fc import QwenFCHandler

    handler = QwenFCHandler.__new__(QwenFCHandler)  # decode_execute needs no model/server state

    def run(entry: mt.MultiTurnEntry, responses: list[list[str]]) -> bool:
        model_name = f"official_{uuid.uuid4().hex}"
        try:
            result = eval_runner._evaluate_single_multi_turn_entry(
                handler, entry.id, copy.deepcopy(responses), copy.deepcopy(entry.ground_truth),
                copy.deepcopy(entry.raw), model_name, entry.category,
            )
        finally:
            for name in [n for n in vars(multi_turn_utils) if n.startswith(model_name)]:
                del vars(multi_turn_utils)[name]
        return bool(result["valid"])

    return run


# ---------------------------------------------------------------------------------------------
# Trajectories from the ground truth, and perturbations
# ---------------------------------------------------------------------------------------------

CLOSING = "All done."
NO_CALL = "I cannot do that with the functions I have."

#: A call per class that changes its state from most scenarios (an extra, unrequested action).
EXTRA_CALLS = {
    "GorillaFileSystem": ToolCall(name="touch", arguments={"file_name": "looptool_extra.txt"}),
    "MessageAPI": ToolCall(name="add_contact", arguments={"user_name": "looptool_extra"}),
    "TwitterAPI": ToolCall(name="authenticate_twitter", arguments={"username": "looptool", "password": "x"}),
    "TicketAPI": ToolCall(name="ticket_login", arguments={"username": "looptool", "password": "x"}),
    "TradingBot": ToolCall(name="add_to_watchlist", arguments={"stock": "ZZZZ"}),
    "TravelAPI": ToolCall(name="set_budget_limit", arguments={"access_token": "x", "budget_limit": 1.0}),
    "VehicleControlAPI": ToolCall(name="lockDoors", arguments={"unlock": True, "door": ["driver"]}),
    "MathAPI": ToolCall(name="add", arguments={"a": 1, "b": 2}),
}


def gt_turns(entry: mt.MultiTurnEntry) -> list[list[ToolCall]]:
    return mt.ground_truth_calls(entry)


def responses_from(turns: list[list[ToolCall]], split_steps: bool = False, dress=lambda s: s) -> list[list[str]]:
    """What BFCL records for a model that makes ``turns``' calls: per turn, one step with all the
    calls (or one step per call), then a closing text; a turn without calls is one text step."""
    out = []
    for calls in turns:
        if not calls:
            out.append([NO_CALL])
            continue
        steps = [[c] for c in calls] if split_steps else [calls]
        out.append([dress(render_tool_calls(s)) for s in steps] + [CLOSING])
    return out


def _last_call_turn(turns: list[list[ToolCall]]) -> int:
    return max(i for i, t in enumerate(turns) if t)


def _wrong_argument(turns: list[list[ToolCall]]) -> list[list[ToolCall]] | None:
    turns = copy.deepcopy(turns)
    for t in turns:
        for i, c in enumerate(t):
            for k, v in c.arguments.items():
                if isinstance(v, str):
                    t[i] = ToolCall(name=c.name, arguments={**c.arguments, k: v + "_looptool_wrong"})
                    return turns
                if type(v) in (int, float):
                    t[i] = ToolCall(name=c.name, arguments={**c.arguments, k: v + 7})
                    return turns
    return None


def trajectories(entry: mt.MultiTurnEntry) -> list[tuple[str, list[list[str]]]]:
    turns = gt_turns(entry)
    last = _last_call_turn(turns)
    out = [
        ("answer", responses_from(turns)),
        ("answer_per_call_steps", responses_from(turns, split_steps=True)),
        ("answer_with_text_and_reasoning", responses_from(turns, dress=lambda s: "Sure, doing it.\n" + s + "\nDone.")),
    ]
    dropped = copy.deepcopy(turns)
    dropped[last] = dropped[last][:-1]
    out.append(("dropped_call", responses_from(dropped)))
    wrong = _wrong_argument(turns)
    if wrong is not None:
        out.append(("wrong_argument", responses_from(wrong)))
    extra = copy.deepcopy(turns)
    extra[last] = extra[last] + [EXTRA_CALLS[entry.involved_classes[0]]]
    out.append(("extra_call", responses_from(extra)))
    unnewlined = responses_from(turns)
    unnewlined[last][0] = unnewlined[last][0].replace("<tool_call>\n", "<tool_call>")  # BFCL cannot decode these
    out.append(("blocks_without_newlines", unnewlined))
    broken = responses_from(turns)
    broken[last][0] = broken[last][0] + '\n<tool_call>\n{"name": "cd", "arguments": [1]}\n</tool_call>'  # decoder raises
    out.append(("one_broken_block", broken))
    odd = responses_from(turns)
    odd[last].insert(0, '<tool_call>\n{"name": 5, "arguments": {"a": 1}}\n</tool_call>')
    out.append(("non_string_name_step", odd))
    out.append(("turn_too_many", responses_from(turns) + [[CLOSING]]))
    out.append(("no_calls_at_all", [[NO_CALL] for _ in turns]))
    return out


@pytest.mark.parametrize("category", CATEGORIES)
def test_verdicts_agree_with_bfcl_runner(category, official):
    entries = mt.load_entries(category, limit=PER_CATEGORY)
    seen: dict[str, list[bool]] = {}
    disagreements = []
    for entry in entries:
        for kind, responses in trajectories(entry):
            ours, err = mt.score(entry, responses)
            theirs = official(entry, responses)
            seen.setdefault(kind, []).append(theirs)
            if ours != theirs:
                disagreements.append((entry.id, kind, ours, theirs, err))
    assert not disagreements, disagreements[:3]
    # the ground truth passes in every dress; the checker is not trivially lenient
    for kind in ("answer", "answer_per_call_steps", "answer_with_text_and_reasoning"):
        assert all(seen[kind]), kind
    for kind in ("dropped_call", "blocks_without_newlines", "turn_too_many", "no_calls_at_all"):
        assert not any(seen[kind]), kind
    assert not all(seen["wrong_argument"] + seen["extra_call"])


def test_refused_calls_never_reach_python():
    entry = mt.load_entries("multi_turn_base", limit=1)[0]
    methods = mt._method_names(entry.involved_classes)
    step = render_tool_calls([
        ToolCall(name="open", arguments={"file": "/tmp/x", "mode": "w"}),
        ToolCall(name="cd", arguments={"folder": "document"}),
        ToolCall(name="ls", arguments={"a=__import__('os').getcwd(),b": 1}),
    ])
    assert mt.decode_step(step, methods) == [mt.REFUSED_CALL, "cd(folder='document')", mt.REFUSED_CALL]


# ---------------------------------------------------------------------------------------------
# End to end with scripted generators on the embedded tool simulator
# ---------------------------------------------------------------------------------------------


class ReplayGenerator:
    """Replays each entry's ground truth as a model would, in our prompt format: on a user message
    the turn's calls in one step (a polite refusal when the turn has none), after tool results a
    closing text. ``break_with`` replaces the calls' text (a broken model)."""

    def __init__(self, entries: list[mt.MultiTurnEntry], break_with: str | None = None):
        self.turns = {e.id: gt_turns(e) for e in entries}
        self.entries = {e.id: e for e in entries}
        self.break_with = break_with
        self.requests: list[GenRequest] = []

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        out = []
        for r in requests:
            self.requests.append(r)
            entry_id, _, rest = r.request_id.rpartition("-t")
            turn = sum(1 for m in r.messages if m.role == "user") - 1
            assert int(rest.split("-s")[0]) == turn
            if r.messages[-1].role == "user":
                calls = self.turns[entry_id][turn]
                text = render_tool_calls(calls) if calls else NO_CALL
                if calls and self.break_with is not None:
                    text = self.break_with
            else:
                assert r.messages[-1].role == "tool"
                text = CLOSING
            out.append(GenResult(completions=[Completion(text=text)]))
        return out


@pytest.fixture(scope="module")
def executor():
    return ToolSimBfclExecutor()


@pytest.mark.parametrize("category", CATEGORIES)
def test_replayed_ground_truth_scores_100_percent(category, executor, official):
    every = mt.load_entries(category)
    report = evaluate(ReplayGenerator(every), bfcl_categories=[category], bfcl_limit=PER_CATEGORY, tool_executor=executor)
    assert report.counts[f"bfcl_{category}"] == PER_CATEGORY
    assert report.accuracy[f"bfcl_{category}"] == 1.0, report.failures
    assert report.bfcl[category].correct == PER_CATEGORY and report.undecodable[f"bfcl_{category}"] == 0
    # the same trajectories, scored by bfcl-eval's runner
    entries = mt.select_entries(category, PER_CATEGORY)
    trajs = mt.run_entries(ReplayGenerator(entries), entries, executor, max_tokens=64)
    assert [official(e, t.responses) for e, t in zip(entries, trajs)] == [True] * len(entries)


@pytest.mark.parametrize("break_with", [NO_CALL, '<tool_call>{"name": "cd", "arguments": {"folder": "x"}}</tool_call>'])
def test_broken_generators_score_0_percent(break_with, executor):
    for category in CATEGORIES:
        report = evaluate(ReplayGenerator(mt.load_entries(category), break_with), bfcl_categories=[category], bfcl_limit=2,
                          tool_executor=executor)
        assert report.counts[f"bfcl_{category}"] == 2
        assert report.accuracy[f"bfcl_{category}"] == 0.0


def test_loop_follows_bfcl(executor):
    """Tool results come back as BFCL formats them; the held-out function is announced at its turn
    (and stays out of the tools); a turn over the step limit force-quits the entry."""
    entry = mt.load_entries("multi_turn_miss_func", limit=1)[0]
    ((turn, docs),) = entry.missed_function.items()
    gen = ReplayGenerator([entry])
    (traj,) = mt.run_entries(gen, [entry], executor, max_tokens=64)
    assert len(traj.responses) == len(entry.question)
    names = {d["name"] for d in docs}
    assert all(not names & {t.name for t in r.tools} for r in gen.requests)
    announced = [m for m in traj.messages if m.role == "user" and "I have updated some more functions" in m.content]
    assert len(announced) == 1 and str(docs) in announced[0].content
    # turn 0 of miss_func_0 is cd + mkdir + mv: results are BFCL's strings (dicts as json.dumps)
    tool_msgs = [m for m in traj.messages if m.role == "tool"]
    assert json.loads(tool_msgs[0].content) == {"current_working_directory": "document"}
    assert tool_msgs[0].content == json.dumps({"current_working_directory": "document"})

    class Looping:
        def generate(self, requests):
            return [GenResult(completions=[Completion(text=render_tool_calls([ToolCall(name="pwd", arguments={})]))]) for _ in requests]

    (loop,) = mt.run_entries(Looping(), [entry], executor, max_tokens=64)
    assert loop.force_quit and len(loop.responses) == 1 and len(loop.responses[0]) == mt.max_steps() + 1
    assert mt.score(entry, loop.responses)[1]["error_type"] == "multi_turn:force_terminated"


def test_execution_errors_read_like_bfcl(executor):
    env = executor.open(["GorillaFileSystem"], {"GorillaFileSystem": {"root": {"alex": {"type": "directory", "contents": {}}}}}, False)
    try:
        assert env.execute(ToolCall(name="no_such_fn", arguments={})) == "Error during execution: name 'no_such_fn' is not defined"
        assert env.execute(ToolCall(name="cd", arguments={"dir": "x"})).startswith("Error during execution: ")
        assert env.execute(ToolCall(name="pwd", arguments={})) == json.dumps({"current_working_directory": "/alex"})
    finally:
        env.close()


def test_long_context_loads_the_long_scenario(executor):
    """BFCL's long-context loading fills a bottom directory with many files and lengthens files."""
    config = {"GorillaFileSystem": {"root": {"alex": {"type": "directory", "contents": {"a.txt": {"type": "file", "content": "hi"}}}}}}
    short = executor.open(["GorillaFileSystem"], config, False)
    long = executor.open(["GorillaFileSystem"], config, True)
    try:
        listing = ToolCall(name="ls", arguments={})
        assert json.loads(short.execute(listing)) == {"current_directory_content": ["a.txt"]}
        assert len(json.loads(long.execute(listing))["current_directory_content"]) > 1
        assert mt.long_context("multi_turn_long_context") and not mt.long_context("multi_turn_base")
    finally:
        short.close()
        long.close()


def test_evaluate_needs_an_executor_for_multi_turn():
    with pytest.raises(ValueError, match="tool executor"):
        evaluate(ReplayGenerator([]), bfcl_categories=["multi_turn_base"], bfcl_limit=1)


def test_replay_over_the_toolsim_service_matches_embedded(executor):
    """The same loop with the classes on a running tool simulator (gRPC): the same trajectories."""
    from looptool.services.toolsim import server as toolsim_server
    from looptool.services.toolsim.client import ToolSimClient
    from looptool.shared.grpc_util import wait_healthy

    entries = [mt.load_entries(c, limit=1)[0] for c in CATEGORIES]
    running = toolsim_server.start(None, port=0)
    try:
        wait_healthy(running.address, timeout=20)
        with ToolSimClient(running.address) as client:
            remote = mt.run_entries(ReplayGenerator(entries), entries, ToolSimBfclExecutor(client), max_tokens=64)
    finally:
        running.stop(0)
    local = mt.run_entries(ReplayGenerator(entries), entries, executor, max_tokens=64)
    assert [t.messages for t in remote] == [t.messages for t in local]
    assert all(mt.score(e, t.responses)[0] for e, t in zip(entries, remote))


def test_evaluate_stage_runs_multi_turn_on_the_toolsim_it_is_given(tmp_path):
    """The loop's evaluate stage: a multi-turn category runs through ``ctx.tool_executor`` (the
    runner/operator pass the toolsim client's factory); without one it is a clear spec error."""
    from looptool.shared.config import LoopToolConfig, StorageSettings
    from looptool.shared.loop.manifest import parse_round
    from looptool.shared.loop.stages import StageContext, StageError, stage_evaluate
    from looptool.shared.loop.state import RoundStatus

    every = mt.load_entries("multi_turn_base")
    rnd = parse_round({
        "apiVersion": "looptool.io/v1alpha1", "kind": "LoopRound", "metadata": {"name": "r1"},
        "spec": {"baseModel": {"builtin": "tiny"}, "toolset": {"bfcl": {"category": "simple_python", "limit": 10}},
                 "eval": {"bfclCategories": ["multi_turn_base"], "bfclLimit": 2, "maxTokens": 8}},
    })
    asked: list[str] = []

    def factory(address, *, security=None):
        asked.append(address)
        return ToolSimBfclExecutor()

    def ctx(tool_executor):
        return StageContext(round=rnd, config=LoopToolConfig(storage=StorageSettings(root=str(tmp_path / "store"))),
                            addresses={"inference": "127.0.0.1:1", "toolsim": "127.0.0.1:2"},
                            base_uri=(tmp_path / "store").as_uri(),
                            generator=lambda address, **kw: ReplayGenerator(every), tool_executor=tool_executor)

    status = RoundStatus()
    stage_evaluate(ctx(factory), status, lambda p: None)
    st = status.stage("evaluate")
    assert asked == ["127.0.0.1:2"]
    assert st.counts["n_bfcl_multi_turn_base"] == 2 and st.metrics["accuracy_bfcl_multi_turn_base"] == 1.0
    with pytest.raises(StageError, match="tool executor"):
        stage_evaluate(ctx(None), RoundStatus(), lambda p: None)


def test_batching_keeps_entry_order_and_results(executor):
    entries = mt.load_entries("multi_turn_base", limit=5)
    sizes: list[int] = []

    class Counting(ReplayGenerator):
        def generate(self, requests):
            sizes.append(len(requests))
            return super().generate(requests)

    small = mt.run_entries(Counting(entries), entries, executor, max_tokens=64, batch=2)
    assert max(sizes) == 2
    whole = mt.run_entries(ReplayGenerator(entries), entries, executor, max_tokens=64)
    assert [t.entry_id for t in small] == [e.id for e in entries]
    assert [t.responses for t in small] == [t.responses for t in whole]


def test_a_generation_error_fails_the_entry(executor):
    entries = mt.load_entries("multi_turn_base", limit=2)

    class Failing:
        def generate(self, requests):
            return [GenResult(error="INVALID_ARGUMENT: prompt too long") for _ in requests[:1]] + [
                GenResult(completions=[Completion(text=NO_CALL)]) for _ in requests[1:]]

    res = mt.evaluate_multi_turn(Failing(), "multi_turn_base", executor, limit=2, max_tokens=8)
    assert res.result.total == 2 and res.result.correct == 0
    assert any("inference_error" in f["reason"] for f in res.failures)
    assert entries  # the category has entries to fail
