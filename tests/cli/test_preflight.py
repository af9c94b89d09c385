"""Validation before work (shared/loop/preflight.py, called by `looptool run` and the operator): every
reference a round names is checked in one pass, every problem is reported at once (one line each,
naming the round, the field or URI and the fix), and nothing starts or is written. Plus one runner
per round end to end: a second `looptool run` of the same manifest exits naming the first."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from looptool.runner import preflight_rounds
from looptool.shared.config import LoopToolConfig
from looptool.shared.loop.lease import Holder, StatusStore
from looptool.shared.loop.manifest import parse_round
from looptool.shared.loop.preflight import PreflightFailed, check_round, preflight
from looptool.shared.loop.state import Phase, RoundStatus
from looptool.shared.models import ModelNotFound

from support.net import free_port
from support.waiting import wait_for

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "bad_tool", "description": "Bad",
                                      "parameters": {"type": "object", "properties": {"x": {"type": "strng"}}}}},
]


def looptool(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "looptool.cli", *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))


def doc(name: str, **spec) -> dict:
    return {"apiVersion": "looptool.io/v1alpha1", "kind": "LoopRound", "metadata": {"name": name}, "spec": spec}


def write_manifest(path: Path, *docs: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump_all(list(docs)))
    return path


def config(root: Path) -> LoopToolConfig:
    cfg = LoopToolConfig()
    cfg.storage.backend, cfg.storage.root = "local", str(root)
    return cfg


BFCL = {"bfcl": {"category": "simple_python", "limit": 2}}


def test_every_bad_reference_is_named_at_once_and_nothing_starts(tmp_path):
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps(TOOLS))
    manifest = write_manifest(
        tmp_path / "bad.yaml",
        doc("p1", baseModel={"uri": str(tmp_path / "no-model")}, toolset={"file": str(tools)},
            datasets={"heldout": (tmp_path / "no-heldout").as_uri()}, synthesis={"numDialogues": 0},
            judge={"backend": "grounding"}),
        doc("p2", previousRound="ghost", toolset={"file": str(tmp_path / "missing.json")},
            datasets={"seed": str(tmp_path / "no-seed")}, judge={"backend": "grounding"}),
    )
    root = tmp_path / "store"
    proc = looptool("run", str(manifest), "--storage-root", str(root), "--quiet")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    expected = [
        ("p1", "spec.synthesis.numDialogues", "set numDialogues >= 1"),
        ("p1", "spec.toolset.file", "'bad_tool': field 'parameters.properties.x.type'"),
        ("p1", "spec.datasets.heldout", f"no committed dataset at {(tmp_path / 'no-heldout').as_uri()}"),
        ("p1", "spec.baseModel.uri", f"{tmp_path / 'no-model'} does not exist"),
        ("p2", "spec.previousRound", "'ghost' is neither an earlier round in this file nor in storage"),
        ("p2", "spec.toolset.file", "missing.json: file not found"),
        ("p2", "spec.datasets.seed", f"no committed dataset at {tmp_path / 'no-seed'}"),
    ]
    for name, field, text in expected:
        assert any(l.startswith(f"error: LoopRound {name}: {field}: ") and text in l for l in lines), (name, field, proc.stderr)
    assert len(lines) == len(expected) + 1, proc.stderr  # one line per problem, then the count
    assert lines[-1] == f"error: {len(expected)} problems in {manifest}; nothing was started or written"
    assert "Traceback" not in proc.stderr and "services up" not in proc.stdout
    assert not root.exists()  # nothing written: no status, no lease, no service logs (services never started)


def test_previous_round_in_storage_is_looked_up(tmp_path):
    root = tmp_path / "store"
    cfg = config(root)
    r1 = parse_round(doc("r1", previousRound="r0", toolset=BFCL, synthesis={"numDialogues": 2}, judge={"backend": "grounding"}))
    statuses = StatusStore(cfg.storage.base_uri())
    statuses.save("r0", RoundStatus(phase=Phase.FAILED, reason="TrainFailed"), "h")
    problems = preflight_rounds([r1], cfg, statuses)
    assert [(p.round, p.field) for p in problems] == [("r1", "spec.previousRound")]
    assert "'r0' is Failed in storage" in problems[0].message and "run it to the end first" in problems[0].message
    st, _ = statuses.load("r0")
    st.phase = Phase.SUCCEEDED
    statuses.save("r0", st, "h")
    assert preflight_rounds([r1], cfg, statuses) == []
    # and a manifest whose previousRound lives in storage (another file) is no longer refused when loaded
    manifest = write_manifest(tmp_path / "next.yaml", doc("r1", previousRound="r0", toolset=BFCL))
    from looptool.shared.loop.manifest import load_manifests

    assert [r.name for r in load_manifests(manifest)] == ["r1"]


def test_a_round_already_succeeded_is_not_rechecked(tmp_path):
    cfg = config(tmp_path / "store")
    from looptool.runner import spec_hash

    r = parse_round(doc("done", baseModel={"uri": str(tmp_path / "gone")}, toolset=BFCL, judge={"backend": "grounding"}))
    statuses = StatusStore(cfg.storage.base_uri())
    assert [p.field for p in preflight_rounds([r], cfg, statuses)] == ["spec.baseModel.uri"]
    statuses.save("done", RoundStatus(phase=Phase.SUCCEEDED), spec_hash(r))
    assert preflight_rounds([r], cfg, statuses) == []
    assert [p.field for p in preflight_rounds([r], cfg, statuses, fresh=True)] == ["spec.baseModel.uri"]


def test_unreachable_s3_store_is_a_problem_naming_the_endpoint(tmp_path):
    cfg = LoopToolConfig()
    cfg.storage.backend = "s3"
    cfg.storage.s3.endpoint = f"127.0.0.1:{free_port()}"
    r = parse_round(doc("s", baseModel={"builtin": "tiny"}, toolset=BFCL, judge={"backend": "grounding"}))
    problems = preflight([r], cfg)
    assert [(p.field) for p in problems] == ["storage"]
    assert cfg.storage.s3.endpoint in problems[0].message and "unreachable" in problems[0].message


def test_wrong_s3_credentials_are_a_problem(seaweed):
    cfg = LoopToolConfig()
    cfg.storage.backend = "s3"
    cfg.storage.s3 = seaweed.settings(bucket=f"pf-{uuid.uuid4().hex[:10]}")
    from pydantic import SecretStr

    cfg.storage.s3.secret_key = SecretStr("not-the-secret")
    r = parse_round(doc("s", baseModel={"builtin": "tiny"}, toolset=BFCL, judge={"backend": "grounding"}))
    problems = preflight([r], cfg)
    assert [p.field for p in problems] == ["storage"], problems
    assert "secret_key" in problems[0].message


def test_operator_check_lists_every_s3_reference_and_skips_local_paths(moto_s3):
    cfg = LoopToolConfig()
    cfg.storage.backend = "s3"
    cfg.storage.s3 = moto_s3.settings(bucket="opcheck")
    moto_s3.store("opcheck").put_bytes("keep", b"x")
    bad = parse_round(doc("op", baseModel={"uri": "s3://opcheck/models/none"}, toolset={"uri": "s3://opcheck/toolsets/none"},
                          datasets={"seed": "s3://opcheck/data/none", "heldout": "/local/path/in/the/image"},
                          judge={"backend": "grounding"}))
    with pytest.raises(PreflightFailed) as exc:
        check_round(bad, cfg)
    fields = [p.field for p in exc.value.problems]
    assert fields == ["spec.toolset.uri", "spec.datasets.seed", "spec.baseModel.uri"], str(exc.value)
    assert "s3://opcheck/toolsets/none" in str(exc.value) and "s3://opcheck/data/none" in str(exc.value)
    # only a model missing: ModelNotFound as before (the operator re-checks until it is imported)
    model_only = parse_round(doc("op", baseModel={"uri": "s3://opcheck/models/none"}, toolset={"file": "/tools/in/image.json"},
                                 judge={"backend": "grounding"}))
    with pytest.raises(ModelNotFound, match=r"^LoopRound op: spec\.baseModel\.uri: s3://opcheck/models/none"):
        check_round(model_only, cfg)


TINY = doc(
    "two-runners",
    baseModel={"builtin": "tiny", "tinyHiddenSize": 32, "tinyLayers": 1, "tinyVocabSize": 400},
    toolset=BFCL,
    synthesis={"numDialogues": 4, "concurrency": 1},
    training={"sftEpochs": 1, "grpoSteps": 1, "groupSize": 2, "promptsPerStep": 1, "maxResponseTokens": 8},
    probe={"maxTokens": 8}, judge={"backend": "grounding"}, expand={"factor": 1}, eval={"heldout": True, "maxTokens": 8},
)


def test_second_runner_of_a_round_exits_naming_the_holder(tmp_path):
    manifest = write_manifest(tmp_path / "tiny.yaml", TINY)
    root = tmp_path / "store"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "looptool.cli", "run", str(manifest), "--storage-root", str(root), "--quiet"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lease_file = root / "runs" / "two-runners" / "lease.json"
    try:
        wait_for(lambda: lease_file.exists() or first.poll() is not None, timeout=120, what="the first runner's lease")
        assert first.poll() is None, first.communicate()[0]
        second = looptool("run", str(manifest), "--storage-root", str(root), "--quiet")
        assert second.returncode == 3, second.stdout + second.stderr
        line = second.stderr.strip()
        assert "\n" not in line
        held = Holder.parse(lease_file.read_bytes())
        assert f"round two-runners is being run by host {socket.gethostname()} pid {first.pid} since {held.since}" in line
        assert "services up" not in second.stdout
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGINT)  # a clean stop releases the lease
            try:
                first.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                first.kill()
                first.communicate()
    assert Holder.parse(lease_file.read_bytes()).released


def test_operator_reports_every_missing_reference_as_invalid_spec_before_creating_anything(moto_s3):
    import time

    from kopf.testing import KopfRunner

    from looptool.operators.executor import ServiceExecutor
    from looptool.operators.main import build
    from looptool.operators.settings import OperatorSettings
    from looptool.shared.config import ServiceEndpoint, ServicesSettings, StorageSettings
    from support.fake_kube import FakeKubeApi

    dead = free_port()  # no services: the round must not get as far as calling one
    services = ServicesSettings(**{n: ServiceEndpoint(port=dead) for n in ("inference", "toolsim", "synthesizer", "expander", "trainer")})
    cfg = LoopToolConfig(storage=StorageSettings(backend="s3", s3=moto_s3.settings(bucket="opround")), services=services)
    lr = ("looptool.io/v1alpha1", "looprounds")
    body = doc("r1", baseModel={"builtin": "tiny"}, toolset={"uri": "s3://opround/toolsets/none"},
               datasets={"seed": "s3://opround/data/none"}, judge={"backend": "grounding"})
    with FakeKubeApi() as api:
        settings = OperatorSettings(namespaces=["default"], apiUrl=api.url, metricsPort=0, pollSeconds=0.3,
                                    progressSeconds=0.2, stageRetries=0, retryBackoffSeconds=0.05)
        rt, registry, kopf_settings = build(settings, ServiceExecutor(cfg))
        try:
            with KopfRunner(["run", "--standalone", "-n", "default"], registry=registry, settings=kopf_settings, timeout=60):
                api.create(*lr, body)
                st = wait_for(lambda: ((api.get(*lr, "r1") or {}).get("status") or {}).get("reason") == "InvalidSpec"
                              and api.get(*lr, "r1")["status"], what="InvalidSpec")
                lines = st["message"].splitlines()
                assert len(lines) == 2, st["message"]
                assert lines[0].startswith("LoopRound r1: spec.toolset.uri: s3://opround/toolsets/none")
                assert lines[1].startswith("LoopRound r1: spec.datasets.seed: no committed dataset at s3://opround/data/none")
                conds = {c["type"]: c for c in st["conditions"]}
                assert (conds["Ready"]["status"], conds["Ready"]["reason"]) == ("False", "InvalidSpec")
                assert conds["ReferencesFound"]["status"] == "False"
                time.sleep(1.0)  # several checks later: still Pending, nothing created
                st = api.get(*lr, "r1")["status"]
                assert st.get("phase", "Pending") == "Pending" and not st.get("stages")
                assert api.list("batch/v1", "jobs") == [] and api.list("v1", "configmaps") == []
        finally:
            rt.close()
