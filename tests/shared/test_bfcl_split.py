"""Train/test split of a BFCL toolset by function, and BFCL evaluation that leaves out the
functions a round trained on (shared/loop/function_split.py, shared/loop/stages.py)."""

from __future__ import annotations

import json

import pytest

from looptool.shared import bfcl
from looptool.shared.config import LoopToolConfig
from looptool.shared.generation import Completion, GenResult
from looptool.shared.loop import stages
from looptool.shared.loop.function_split import split_functions
from looptool.shared.loop.manifest import parse_round
from looptool.shared.loop.state import RoundStatus
from looptool.shared.storage import open_dataset
from looptool.shared.records import Tool

NAMES = [f"fn_{i}" for i in range(400)]


def test_split_is_seeded_disjoint_and_covers_the_functions():
    train, test = split_functions(NAMES, 0.5, seed=3)
    assert (train, test) == split_functions(NAMES, 0.5, seed=3)
    assert set(train).isdisjoint(test) and set(train) | set(test) == set(NAMES)
    assert 150 < len(test) < 250  # about half
    assert split_functions(NAMES, 0.5, seed=4) != (train, test)
    # a function's side depends on its name and the seed only, not on the other functions
    sub_train, sub_test = split_functions(list(reversed(NAMES[:100])), 0.5, seed=3)
    assert set(sub_test) == set(test) & set(NAMES[:100])
    assert len(split_functions(NAMES, 0.2, seed=3)[1]) < len(test)


def test_split_keeps_one_function_on_each_side():
    assert split_functions(["only"], 0.99, seed=0) == (["only"], [])
    train, test = split_functions(["a", "b"], 0.99, seed=0)
    assert len(train) == 1 and len(test) == 1
    train, test = split_functions(["a", "b", "c"], 0.0, seed=0)
    assert test == [] and train == ["a", "b", "c"]
    with pytest.raises(ValueError):
        split_functions(NAMES, 1.0, seed=0)


class Recorder:
    """A model endpoint that answers "no call" and keeps every request it was asked."""

    def __init__(self):
        self.requests = []

    def generate(self, requests):
        self.requests.extend(requests)
        return [GenResult(completions=[Completion(text="I cannot help with that.")]) for _ in requests]

    def close(self):
        pass


def _ctx(tmp_path, toolset: dict, eval_spec: dict, previous: RoundStatus | None = None):
    rnd = parse_round({
        "apiVersion": "looptool.io/v1alpha1", "kind": "LoopRound", "metadata": {"name": "r1"},
        "spec": {"baseModel": {"builtin": "tiny"}, "toolset": toolset, "synthesis": {"numDialogues": 0},
                 "eval": {"heldout": False, **eval_spec}},
    })
    rec = Recorder()
    ctx = stages.StageContext(round=rnd, config=LoopToolConfig(), addresses={"inference": "127.0.0.1:1"},
                              base_uri=(tmp_path / "store").as_uri(), generator=lambda *a, **k: rec, previous=previous)
    return ctx, rec


def _all_functions(category: str) -> set[str]:
    return {f["name"] for e in bfcl.load_entries(category) for f in e.functions}


def test_synthesis_trains_on_the_training_functions_and_records_the_split(tmp_path):
    ctx, _ = _ctx(tmp_path, {"bfcl": {"category": "simple_python", "limit": 40}}, {"testFraction": 0.3, "splitSeed": 5})
    status = RoundStatus()
    stages.stage_synthesize(ctx, status, lambda p: None)
    split = status.functionSplit
    assert split is not None and split.seed == 5 and split.testFraction == 0.3 and not split.allowOverlap
    assert set(split.train).isdisjoint(split.test) and len(split.train) + len(split.test) == 40
    assert 0 < len(split.test) < 40
    toolset = open_dataset(status.stage("synthesize").outputs["toolset"]).iter(Tool)
    assert sorted(t.name for t in toolset) == sorted(split.train)  # synthesis sees training functions only
    assert status.stage("synthesize").counts["tools"] == len(split.train)
    # recorded in the status: survives the Kubernetes round trip
    again = RoundStatus.model_validate(json.loads(json.dumps(status.to_k8s())))
    assert again.functionSplit == split
    # the same spec splits the same way
    status2 = RoundStatus()
    stages.stage_synthesize(ctx, status2, lambda p: None)
    assert status2.functionSplit == split


def test_a_chained_round_counts_earlier_training_functions_as_trained(tmp_path):
    prev = RoundStatus()
    ctx1, _ = _ctx(tmp_path, {"bfcl": {"category": "simple_python", "limit": 20}}, {})
    stages.stage_synthesize(ctx1, prev, lambda p: None)
    ctx2, _ = _ctx(tmp_path, {"bfcl": {"category": "multiple", "limit": 20}}, {}, previous=prev)
    status = RoundStatus()
    stages.stage_synthesize(ctx2, status, lambda p: None)
    assert set(prev.functionSplit.train) <= set(status.functionSplit.train)
    assert set(status.functionSplit.train).isdisjoint(status.functionSplit.test)


def test_bfcl_evaluation_leaves_out_every_trained_function(tmp_path):
    ctx, rec = _ctx(tmp_path, {"bfcl": {"category": "simple_python", "limit": 60}}, {"bfclCategories": ["simple_python", "multiple"]})
    status = RoundStatus()
    stages.stage_synthesize(ctx, status, lambda p: None)
    trained = set(status.functionSplit.train)
    stages.stage_evaluate(ctx, status, lambda p: None)
    asked = [{t.name for t in r.tools} for r in rec.requests]
    assert asked and all(names.isdisjoint(trained) for names in asked)
    expected = {c: sum(1 for e in bfcl.load_entries(c) if not any(f["name"] in trained for f in e.functions))
                for c in ("simple_python", "multiple")}
    assert 0 < expected["simple_python"] <= len(bfcl.load_entries("simple_python")) - len(trained)
    ev = status.stage("evaluate")
    assert ev.counts["n_bfcl_simple_python"] == expected["simple_python"]
    assert ev.counts["n_bfcl_multiple"] == expected["multiple"]
    assert len(rec.requests) == sum(expected.values())
    # the test functions themselves are scored
    assert set(status.functionSplit.test) <= set().union(*asked)
    # BFCL aggregates of the groups run only; live/multi-turn were not run: absent, not 0
    assert "bfcl_non_live" in ev.metrics and "bfcl_overall" in ev.metrics
    assert "bfcl_live" not in ev.metrics and "bfcl_multi_turn" not in ev.metrics
    assert ev.counts["undecodable_bfcl_simple_python"] == 0


def test_allow_overlap_scores_whole_categories(tmp_path):
    ctx, rec = _ctx(tmp_path, {"bfcl": {"category": "simple_python", "limit": 60}},
                    {"bfclCategories": ["simple_python"], "allowOverlap": True})
    status = RoundStatus()
    stages.stage_synthesize(ctx, status, lambda p: None)
    assert status.functionSplit.allowOverlap
    stages.stage_evaluate(ctx, status, lambda p: None)
    assert len(rec.requests) == len(bfcl.load_entries("simple_python"))
    assert set(status.functionSplit.train) <= set().union(*[{t.name for t in r.tools} for r in rec.requests])


def test_a_toolset_not_from_bfcl_scores_whole_categories(tmp_path):
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([{"type": "function", "function": {
        "name": "get_weather", "description": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]))
    ctx, rec = _ctx(tmp_path, {"file": str(tools)}, {"bfclCategories": ["irrelevance"], "bfclLimit": 7})
    status = RoundStatus()
    stages.stage_synthesize(ctx, status, lambda p: None)
    assert status.functionSplit is None
    assert stages.trained_functions(ctx, status) is None
    stages.stage_evaluate(ctx, status, lambda p: None)
    assert len(rec.requests) == 7 and status.accuracy["bfcl_irrelevance"] == 1.0


def test_unknown_category_fails_the_stage_in_one_line(tmp_path):
    ctx, rec = _ctx(tmp_path, {"bfcl": {"category": "simple_python", "limit": 4}}, {"bfclCategories": ["nope"]})
    status = RoundStatus()
    with pytest.raises(stages.StageError) as exc:
        stages.stage_evaluate(ctx, status, lambda p: None)
    assert exc.value.reason == "InvalidSpec" and "nope" in exc.value.message and rec.requests == []


def test_the_round_report_shows_the_scorecard_per_round(tmp_path):
    from looptool.shared.loop.report import write_report

    rounds = []
    for allow in (False, True):
        ctx, _ = _ctx(tmp_path, {"bfcl": {"category": "simple_python", "limit": 30}},
                      {"bfclCategories": ["simple_python", "irrelevance"], "bfclLimit": 5, "allowOverlap": allow})
        ctx.round.metadata.name = f"r-{int(allow)}"
        status = RoundStatus(checkpointUri=f"file:///ckpt/{int(allow)}")
        stages.stage_synthesize(ctx, status, lambda p: None)
        stages.stage_evaluate(ctx, status, lambda p: None)
        rounds.append((ctx.round, status))
    md_path, _ = write_report(rounds, tmp_path / "report")
    md = md_path.read_text()
    trained = len(rounds[0][1].functionSplit.train)
    assert "## BFCL scorecard" in md
    assert f"- r-0: BFCL scorecard — model: file:///ckpt/0; overlap: none — BFCL entries using any of the {trained} trained functions are excluded" in md
    assert "- r-1: BFCL scorecard — model: file:///ckpt/1; overlap: ALLOWED" in md
    assert "| Overall Acc |" in md and "| Non-Live Simple AST |" in md and "| Irrelevance Detection | 100.00* | 100.00* |" in md
    assert "| Live Acc |" not in md  # no round ran a live category
    card = json.loads((tmp_path / "report" / "scorecard-r-0.json").read_text())
    assert card["categories"]["simple_python"]["total"] == 5 and card["tables"]["overall"]["Multi Turn Acc"] == "N/A"
