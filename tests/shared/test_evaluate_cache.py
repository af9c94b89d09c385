"""The evaluate stage's result is content-keyed (shared/loop/stages.py ``stage_evaluate``): equal
inputs ask no model again and restore the same status; another checkpoint or eval setting misses;
a damaged cached result stops the stage naming it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from looptool.shared.config import LoopToolConfig
from looptool.shared.generation import GenRequest
from looptool.shared.loop import stages
from looptool.shared.loop.chain import sft_model_uri
from looptool.shared.loop.manifest import parse_round
from looptool.shared.loop.state import Phase, RoundStatus
from looptool.shared.records import Sample
from looptool.shared.storage import open_dataset, split_uri
from looptool.shared.storage.artifacts import upload_dir
from support.inference import ScriptedGenerator, make_samples, write_samples

HELDOUT_N = 12


def _answer(sample: Sample) -> str:
    call = sample.reference[0]
    return "<tool_call>\n" + json.dumps({"name": call.name, "arguments": call.arguments}) + "\n</tool_call>"


class Models:
    """Model endpoints by model URI; the final model gets every other held-out sample right, the
    post-SFT one every third (so the two scores differ). Every request is counted."""

    def __init__(self, samples: list[Sample]):
        self.answers = {s.context[-1].content: (i, _answer(s)) for i, s in enumerate(samples)}
        self.asked: dict[str, int] = {}
        self.down: set[str] = set()  # replica addresses whose every request fails as a lost connection

    def __call__(self, address: str, *, model: str, timeout_s: float, security=None) -> ScriptedGenerator:
        step = 3 if model.endswith("model_sft") else 2
        if address in self.down:
            return Down()

        def script(req: GenRequest, _i: int) -> str:
            if self.down:  # slow enough that the dispatcher hands the dead replica a shard
                time.sleep(0.02)
            self.asked[model] = self.asked.get(model, 0) + 1
            hit = self.answers.get(req.messages[-1].content or "")
            return hit[1] if hit is not None and hit[0] % step == 0 else "I cannot help with that."

        return ScriptedGenerator(script)

    @property
    def total(self) -> int:
        return sum(self.asked.values())


class Down:
    def generate(self, requests: list[GenRequest]) -> list:
        raise ConnectionError("connection refused")


def _checkpoint(root: Path, name: str, content: str) -> str:
    """A committed model artifact at ``<store>/runs/r1/<name>/model`` plus its post-SFT model."""
    src = root / "src" / name
    src.mkdir(parents=True, exist_ok=True)
    (src / "weights.bin").write_text(content)
    uri = (root / "store" / "runs" / "r1" / name / "model").as_uri()
    for u in (uri, sft_model_uri(uri)):
        store, key = split_uri(u)
        upload_dir(store, key, src)
    return uri


def _setup(tmp_path: Path, eval_spec: dict | None = None, checkpoint: str = ""):
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([{"type": "function", "function": {
        "name": "get_weather", "description": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]))
    rnd = parse_round({
        "apiVersion": "looptool.io/v1alpha1", "kind": "LoopRound", "metadata": {"name": "r1"},
        "spec": {"baseModel": {"builtin": "tiny"}, "toolset": {"file": str(tools)}, "synthesis": {"numDialogues": 0},
                 "eval": {"bfclCategories": ["irrelevance"], "bfclLimit": 3, "maxTokens": 64, **(eval_spec or {})}},
    })
    samples = make_samples(HELDOUT_N)
    heldout_uri = (tmp_path / "heldout").as_uri()
    heldout = open_dataset(heldout_uri).ref if (tmp_path / "heldout").is_dir() else write_samples(heldout_uri, samples)
    models = Models(samples)
    ctx = stages.StageContext(round=rnd, config=LoopToolConfig(), addresses={"inference": "127.0.0.1:1"},
                              base_uri=(tmp_path / "store").as_uri(), generator=models)
    status = RoundStatus(checkpointUri=checkpoint or _checkpoint(tmp_path, "train-aaa", "weights v1"))
    status.stage("synthesize").outputs["heldout"] = heldout
    status.stage("train").counts.update(sft_steps=2, grpo_steps=1)
    return ctx, status, models


def _evaluated(ctx, status: RoundStatus) -> RoundStatus:
    stages.run_data_stage(Phase.EVALUATING, ctx, status, lambda p: None)
    return status


def _result(status: RoundStatus) -> dict:
    ev = status.stage("evaluate")
    return {"accuracy": status.accuracy, "metrics": ev.metrics, "counts": ev.counts, "message": ev.message,
            # the order too: the status is written as JSON as the stage filled it
            "order": (list(ev.metrics), list(ev.counts), list(status.accuracy))}


def test_equal_inputs_ask_no_model_the_second_time_and_restore_the_same_status(tmp_path):
    ctx, status, models = _setup(tmp_path)
    first = _result(_evaluated(ctx, status))
    asked = dict(models.asked)
    assert asked[status.checkpointUri] == HELDOUT_N + 3 and asked[sft_model_uri(status.checkpointUri)] == HELDOUT_N
    assert first["accuracy"]["heldout"] == 0.5 and first["accuracy"]["heldout_after_sft"] == 0.3333
    assert first["metrics"]["accuracy_bfcl_irrelevance"] == 1.0 and first["counts"]["replicas"] == 1
    assert len(list((tmp_path / "store" / "runs" / "r1").glob("evaluate-*/_manifest.json"))) == 1

    # a fresh status (a resumed round, or an ablation variant sharing the round's folder)
    ctx2, status2, models2 = _setup(tmp_path, checkpoint=status.checkpointUri)
    second = _result(_evaluated(ctx2, status2))
    assert models2.total == 0
    assert second == first
    assert status2.model_dump(exclude={"stages"}) == status.model_dump(exclude={"stages"})


def test_another_checkpoint_or_eval_setting_misses(tmp_path):
    ctx, status, _ = _setup(tmp_path)
    _evaluated(ctx, status)
    # another checkpoint URI
    ctx2, status2, models2 = _setup(tmp_path, checkpoint=_checkpoint(tmp_path, "train-bbb", "weights v2"))
    _evaluated(ctx2, status2)
    assert models2.asked[status2.checkpointUri] == HELDOUT_N + 3
    # the same URI with other bytes (a retrained checkpoint)
    ctx3, status3, models3 = _setup(tmp_path, checkpoint=_checkpoint(tmp_path, "train-aaa", "weights v3"))
    _evaluated(ctx3, status3)
    assert models3.total == 2 * HELDOUT_N + 3
    # another eval setting
    ctx4, status4, models4 = _setup(tmp_path, {"maxTokens": 65}, checkpoint=status3.checkpointUri)
    _evaluated(ctx4, status4)
    assert models4.total == 2 * HELDOUT_N + 3
    # other held-out samples
    ctx5, status5, models5 = _setup(tmp_path, checkpoint=status3.checkpointUri)
    other = write_samples((tmp_path / "heldout2").as_uri(), make_samples(HELDOUT_N, start=100))
    status5.stage("synthesize").outputs["heldout"] = other
    _evaluated(ctx5, status5)
    assert models5.total == 2 * HELDOUT_N + 3
    # no GRPO this round: the post-SFT score is the final model's, and the key says so
    ctx6, status6, models6 = _setup(tmp_path, checkpoint=status3.checkpointUri)
    status6.stage("train").counts["grpo_steps"] = 0
    _evaluated(ctx6, status6)
    assert models6.total == HELDOUT_N + 3 and status6.accuracy["heldout_after_sft"] == status6.accuracy["heldout"]
    assert len(list((tmp_path / "store" / "runs" / "r1").glob("evaluate-*/_manifest.json"))) == 6


def test_a_damaged_cached_result_stops_the_stage_naming_it(tmp_path):
    ctx, status, _ = _setup(tmp_path)
    _evaluated(ctx, status)
    (cached,) = (tmp_path / "store" / "runs" / "r1").glob("evaluate-*")
    (part,) = (cached / "parts").iterdir()
    part.write_text(part.read_text().replace('"heldout",0.5', '"heldout",0.9'))
    ctx2, status2, models2 = _setup(tmp_path, checkpoint=status.checkpointUri)
    with pytest.raises(stages.StageError) as exc:
        _evaluated(ctx2, status2)
    assert exc.value.reason == "DatasetCorrupt" and cached.name in exc.value.message
    assert models2.total == 0 and "heldout" not in status2.accuracy


def test_a_dead_replica_is_not_replayed_by_a_reused_result(tmp_path):
    ctx, status, models = _setup(tmp_path)
    ctx.endpoints = {"inference": ["127.0.0.1:1", "127.0.0.1:2"]}
    models.down = {"127.0.0.1:2"}
    first = _result(_evaluated(ctx, status))
    assert first["counts"]["replicas"] == 2 and first["counts"]["replicas_dead"] == 1
    assert first["message"].startswith("dead replicas: 127.0.0.1:2")
    ctx2, status2, models2 = _setup(tmp_path, checkpoint=status.checkpointUri)
    ctx2.endpoints = dict(ctx.endpoints)
    second = _result(_evaluated(ctx2, status2))
    assert models2.total == 0
    # this run asked no replica: none dead, no message; every result field as the first run had it
    assert second["counts"] == {**first["counts"], "replicas_dead": 0} and second["message"] == ""
    assert (second["accuracy"], second["metrics"]) == (first["accuracy"], first["metrics"])
