"""The cluster path end to end on one machine (tests/support/cluster_box.py): the chart's services and
operator as local processes against the fake Kubernetes API, SeaweedFS for S3, a local kubelet for
the trainer Jobs and Prometheus scraping what the chart's ServiceMonitor/PodMonitor select.

The user's flow: ``kubectl apply`` of a small CPU LoopRound -> Succeeded with real datasets and a real
checkpoint in S3; ``kubectl get`` shows the printer columns, ``kubectl describe`` the events; every
dashboard query returns data; the operator killed mid-round and the trainer's process killed once
still give the same dataset and checkpoint hashes; ``kubectl delete`` removes the round's Job and
nothing else; a LoopRound that violates the CRD schema is refused by ``kubectl apply``.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from looptool.operators import dashboard

from support import REPO
from support.cluster_box import ClusterBox

pytestmark = pytest.mark.slow

ROUND = """\
apiVersion: looptool.io/v1alpha1
kind: LoopRound
metadata:
  name: {name}
spec:
  round: 1
  baseModel: {{builtin: tiny, tinyHiddenSize: 64, tinyLayers: 2, tinyVocabSize: 600}}
  toolset: {{bfcl: {{category: simple_python, limit: 4}}}}
  synthesis: {{numDialogues: 12, concurrency: 2, seed: 3, heldoutFraction: 0.25, labelNoise: 0.2}}
  training: {{backend: cpu, gpus: 0, sftEpochs: 1, grpoSteps: 12, groupSize: 2, promptsPerStep: 2, maxResponseTokens: 24}}
  probe: {{maxTokens: 24}}
  judge: {{backend: grounding, candidates: 2, candidateMaxTokens: 24}}
  expand: {{factor: 2}}
  eval: {{heldout: true, bfclCategories: [simple_python], bfclLimit: 4, maxTokens: 24}}
"""
ROUND2 = """\
apiVersion: looptool.io/v1alpha1
kind: LoopRound
metadata:
  name: tiny-r2
spec:
  round: 2
  previousRound: tiny-r1
  toolset: {bfcl: {category: simple_python, limit: 4}}
  synthesis: {numDialogues: 6, concurrency: 2, seed: 3}
  training: {backend: cpu, gpus: 0, sftEpochs: 1, grpoSteps: 2, groupSize: 2, promptsPerStep: 2, maxResponseTokens: 24}
  probe: {maxTokens: 24}
  judge: {backend: grounding}
  expand: {factor: 1}
  eval: {heldout: true, maxTokens: 24}
"""
NS, FAULTS = "looptool", "faults"
# Queries that have data only when something goes wrong or with a backend this box does not run:
# failures, errors, rejections, retries (the remote OpenAI-compatible backend), invalid specs.
ONLY_ON_TROUBLE = re.compile(r"failures|errors_total|code!=\"OK\"|rejections|rejected|remote_retries|invalid_specs")
# On Kubernetes the operator trains in Jobs: the trainer *service* (for `looptool run`) gets no RPC, so
# its looptool_trainer_rpc_* series do not exist here; the test checks those queries stay empty (an
# exclusion that no longer holds fails). The "Training runs" panel counts Job runs from the operator.
NOT_ON_KUBERNETES = re.compile(r"looptool_trainer_rpc_")
# An image no registry has, allowed by the chart's training.allowedImages so a round may name it.
MISSING_IMAGE = "registry.invalid/looptool/no-such-trainer:0.0"


def _apply(box: ClusterBox, name: str, ns: str) -> None:
    path = box.workdir / f"{ns}-{name}.yaml"
    path.write_text(ROUND.format(name=name))
    out = box.kubectl("apply", "-n", ns, "-f", str(path)).stdout
    assert out.strip() == f"loopround.looptool.io/{name} created", out


def _dataset_hashes(status: dict[str, Any]) -> dict[str, str]:
    return {f"{stage}.{out}": ref["content_hash"] for stage, s in status["stages"].items() for out, ref in (s.get("outputs") or {}).items()}


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    with ClusterBox(tmp_path_factory.mktemp("box"), namespace=NS, extra_namespaces=(FAULTS,), prometheus=True,
                    values={"training": {"allowedImages": [MISSING_IMAGE]}}) as b:
        b.t0 = time.time()  # type: ignore[attr-defined]
        yield b


@pytest.fixture(scope="module")
def undisturbed(box):
    _apply(box, "tiny-r1", NS)
    st = box.wait_round("tiny-r1", NS, timeout=420)
    assert st["phase"] == "Succeeded", json.dumps(st)[:3000]
    return st


def test_a_round_that_violates_the_crd_schema_is_refused_by_kubectl_apply(box):
    bad = REPO / "examples" / "invalid" / "unknown-field.yaml"
    p = box.kubectl("apply", "-f", str(bad), check=False)
    assert p.returncode != 0
    assert 'The LoopRound "typo" is invalid' in p.stderr and "numDialogs" in p.stderr, p.stderr
    assert box.round("typo") is None
    p = box.kubectl("apply", "-f", str(REPO / "examples" / "invalid" / "out-of-range.yaml"), check=False)
    assert p.returncode != 0 and "spec.synthesis.heldoutFraction" in p.stderr and "spec.training.gpus" in p.stderr, p.stderr


def test_round_succeeds_with_real_datasets_and_checkpoint_in_s3(box, undisturbed):
    st = undisturbed
    assert {"synthesize", "train", "probe", "judge", "expand", "evaluate"} <= set(st["stages"])
    for stage, s in st["stages"].items():
        for out, ref in (s.get("outputs") or {}).items():
            assert ref["uri"].startswith("s3://looptool/"), (stage, out, ref)
            assert box.object_hashes(ref["uri"]), f"{stage}.{out}: nothing in SeaweedFS under {ref['uri']}"
    ckpt = box.object_hashes(st["checkpointUri"])
    assert any(k.endswith(".safetensors") or k.endswith(".bin") or k.endswith(".pt") for k in ckpt), ckpt
    assert 0.0 <= st["accuracy"]["heldout"] <= 1.0
    job = box.api.list("batch/v1", "jobs", NS)
    assert len(job) == 1 and job[0]["status"]["succeeded"] == 1 and job[0]["status"]["failed"] == 0


def test_kubectl_get_prints_the_printer_columns_with_real_values(box, undisturbed):
    out = box.kubectl("get", "looprounds").stdout.splitlines()
    assert out[0].split() == ["NAME", "ROUND", "PHASE", "PROGRESS", "ACCURACY", "AGE"], out
    row = next(line for line in out if line.startswith("tiny-r1 "))
    cells = row.split()
    assert cells[1] == "1" and cells[2] == "Succeeded" and float(cells[-2]) == pytest.approx(undisturbed["accuracy"]["heldout"]), row
    assert re.fullmatch(r"\d+(s|m\d*s?)", cells[-1]), row
    wide = box.kubectl("get", "lr", "tiny-r1", "-o", "wide").stdout
    assert "CHECKPOINT" in wide and undisturbed["checkpointUri"] in wide, wide


def test_kubectl_describe_shows_the_events(box, undisturbed):
    out = box.kubectl("describe", "loopround", "tiny-r1").stdout
    events = [e for e in box.api.list("v1", "events", NS) if e["involvedObject"]["name"] == "tiny-r1"]
    assert events
    section = out[out.index("Events:"):]
    for e in events:
        assert e["reason"] in section, (e["reason"], section)
    assert "Succeeded" in out


def _query_range(base: str, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query_range?" + urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": "1"})
    with urllib.request.urlopen(url, timeout=20) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def _concrete(expr: str) -> str:
    for k, v in {"$__rate_interval": "1m", "$__range": "15m", "$__interval": "10s"}.items():
        expr = expr.replace(k, v)
    return re.sub(r"\$\{?(namespace|round)\}?", ".*", expr)


def test_every_dashboard_query_returns_data_for_the_stages_that_ran(box, undisturbed):
    """Grafana's view: each panel query over the run's time range (as a time-series panel asks)."""
    time.sleep(3)  # the last scrape after the round finished
    board = json.loads(dashboard.CHART_DASHBOARD.read_text())
    empty, stale, checked = [], [], 0
    runs: list[dict[str, Any]] = []
    for panel in board["panels"]:
        for t in panel.get("targets", []):
            expr = _concrete(t["expr"])
            metrics = re.findall(r"looptool_[a-z_]+", expr)
            if NOT_ON_KUBERNETES.search(expr):
                if _query_range(box.prometheus_url, expr, box.t0, time.time()):
                    stale.append(f"{panel['title']}: {metrics} has data, so NOT_ON_KUBERNETES should no longer exclude it")
                continue
            if ONLY_ON_TROUBLE.search(expr):
                continue
            checked += 1
            result = _query_range(box.prometheus_url, expr, box.t0, time.time())
            if not result:
                empty.append(f"{panel['title']}: {metrics}")
            if panel["title"] == "Training runs" and t["legendFormat"] == "{{state}}":
                runs = result
    assert checked > 40
    assert not empty, "dashboard panels with no data:\n" + "\n".join(empty)
    assert not stale, "\n".join(stale)
    # The undisturbed round's trainer Job, counted by the operator when it saw the Job end.
    last = {r["metric"].get("state"): float(r["values"][-1][1]) for r in runs}
    assert last.get("succeeded", 0) >= 1, runs


def test_operator_and_trainer_killed_still_give_the_same_hashes(box, undisturbed):
    """The trainer's process is SIGKILLed once (the Job retries within backoffLimit) and the operator is
    SIGKILLed mid-round and restarted: same dataset and checkpoint hashes as the undisturbed round."""
    kills: list[str] = []

    def kill_trainer_once(st) -> None:  # the kubelet hook: runs right after a pod's process started
        if st.namespace != FAULTS or kills:
            return
        kills.append(st.pod_name)

        def later() -> None:
            time.sleep(2.0)
            if st.pod is not None:
                st.pod.kill()  # the process, or the container's (podman kill)

        threading.Thread(target=later, daemon=True).start()

    box.kubelet.on_pod_started = kill_trainer_once
    restarted: list[str] = []

    def kill_operator_in_probing(status: dict[str, Any]) -> None:
        if status.get("phase") == "Probing" and not restarted:
            restarted.append("Probing")
            box.kill_operator()
            box.start_operator()

    try:
        # Another name: outputs live under runs/<round name>/ in S3 whatever the namespace, so the same
        # name would reuse the undisturbed round's committed outputs and run no trainer Job at all.
        _apply(box, "tiny-r1-faults", FAULTS)
        st = box.wait_round("tiny-r1-faults", FAULTS, timeout=420, on_poll=kill_operator_in_probing)
    finally:
        box.kubelet.on_pod_started = None
    assert st["phase"] == "Succeeded", json.dumps(st)[:3000]
    assert kills and restarted == ["Probing"]
    (job,) = box.api.list("batch/v1", "jobs", FAULTS)
    assert job["status"]["failed"] == 1 and job["status"]["succeeded"] == 1, job["status"]
    pods = [p for p in box.api.list("v1", "pods", FAULTS) if p["metadata"]["labels"].get("job-name") == job["metadata"]["name"]]
    codes = sorted(p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] for p in pods)
    assert codes == [0, 137], codes
    assert _dataset_hashes(st) == _dataset_hashes(undisturbed)
    # Every file of the checkpoint but its metadata (looptool_train.json: run id with the round's name,
    # times; _artifact.json lists that file's hash) is byte-identical.
    meta = {"_artifact.json", "files/looptool_train.json"}
    disturbed, calm = box.object_hashes(st["checkpointUri"]), box.object_hashes(undisturbed["checkpointUri"])
    assert set(disturbed) == set(calm) and meta <= set(calm)
    assert {k: v for k, v in disturbed.items() if k not in meta} == {k: v for k, v in calm.items() if k not in meta}


def _job_of(box: ClusterBox, round_name: str, ns: str) -> dict[str, Any]:
    (job,) = [j for j in box.api.list("batch/v1", "jobs", ns) if j["metadata"]["labels"].get("looptool.io/round") == round_name]
    return job


def test_a_second_round_chains_from_the_first(box, undisturbed):
    """previousRound: round 2 trains from round 1's checkpoint (its Job's request says so)."""
    path = box.workdir / "tiny-r2.yaml"
    path.write_text(ROUND2)
    box.kubectl("apply", "-f", str(path))
    st = box.wait_round("tiny-r2", NS, timeout=420)
    assert st["phase"] == "Succeeded", json.dumps(st)[:3000]
    job = _job_of(box, "tiny-r2", NS)
    request = json.loads(box.api.get("v1", "configmaps", job["metadata"]["name"], NS)["data"]["request.json"])
    assert request["base_checkpoint_uri"] == undisturbed["checkpointUri"]
    assert st["checkpointUri"] != undisturbed["checkpointUri"] and box.object_hashes(st["checkpointUri"])
    out = box.kubectl("get", "looprounds").stdout
    assert re.search(r"^tiny-r2\s+2\s+Succeeded\s", out, flags=re.M), out


def test_kubectl_delete_removes_the_job_and_nothing_else(box, undisturbed):
    def snapshot(ns: str) -> dict[str, set[str]]:
        return {plural: {o["metadata"]["name"] for o in box.api.list(v, plural, ns)}
                for v, plural in (("batch/v1", "jobs"), ("v1", "configmaps"), ("v1", "persistentvolumeclaims"), ("v1", "secrets"),
                                  ("looptool.io/v1alpha1", "looprounds"))}

    before, other_before = snapshot(NS), snapshot(FAULTS)
    job = _job_of(box, "tiny-r1", NS)["metadata"]["name"]
    data_uri = undisturbed["stages"]["synthesize"]["outputs"]["train"]["uri"]
    objects_before = box.object_hashes(data_uri)
    out = box.kubectl("delete", "loopround", "tiny-r1").stdout
    assert 'loopround.looptool.io "tiny-r1" deleted' in out, out
    deadline = time.monotonic() + 60
    while box.round("tiny-r1") is not None and time.monotonic() < deadline:
        time.sleep(0.3)
    after = snapshot(NS)
    assert after["looprounds"] == before["looprounds"] - {"tiny-r1"}
    assert after["jobs"] == before["jobs"] - {job}, after  # round 2's Job stays
    gone_cms = before["configmaps"] - after["configmaps"]
    assert gone_cms == {job}, gone_cms  # the Job's request ConfigMap; the chart's config stays
    assert after["secrets"] == before["secrets"]
    assert snapshot(FAULTS) == other_before
    assert box.object_hashes(data_uri) == objects_before  # datasets and checkpoints stay in S3
    jobs = box.kubectl("get", "jobs").stdout
    assert job not in jobs and _job_of(box, "tiny-r2", NS)["metadata"]["name"] in jobs, jobs


def test_a_round_whose_trainer_image_does_not_exist_reports_the_image_pull_failure(box):
    """The image is allowed (training.allowedImages) but no registry has it: the kubelet backs off
    pulling, the Job stays active, and the round says why it is not training."""
    path = box.workdir / "no-image.yaml"
    path.write_text(ROUND.format(name="no-image").replace("  probe: {maxTokens: 24}\n",
                                                           f"  probe: {{maxTokens: 24}}\n  resources: {{trainerImage: {MISSING_IMAGE}}}\n")
                    .replace("numDialogues: 12", "numDialogues: 4"))
    box.kubectl("apply", "-f", str(path))

    def stuck() -> dict[str, Any] | None:
        st = (box.round("no-image") or {}).get("status") or {}
        ready = next((c for c in st.get("conditions") or [] if c["type"] == "Ready"), {})
        return st if ready.get("reason") in ("ErrImagePull", "ImagePullBackOff") else None

    deadline = time.monotonic() + 300
    while (st := stuck()) is None:
        assert time.monotonic() < deadline, json.dumps((box.round("no-image") or {}).get("status"))[:3000]
        time.sleep(1)
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and MISSING_IMAGE in ready["message"], ready
    assert st["phase"] == "Training", st
    job = _job_of(box, "no-image", NS)
    assert job["status"]["active"] == 1 and not job["status"].get("conditions"), job["status"]
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == MISSING_IMAGE
    out = box.kubectl("describe", "loopround", "no-image").stdout
    assert "TrainerImagePullFailed" in out and MISSING_IMAGE in out, out
    box.kubectl("delete", "loopround", "no-image")
