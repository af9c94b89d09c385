"""The inference gRPC server on loopback with the transformers backend and a tiny local model:
health + reflection, Generate / GenerateStream / GenerateBatch, deadlines and cancellation,
Probe and Judge end to end, metrics, the client's errors, and a probe that survives ``kill -9``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from looptool.services.inference.client import InferenceClient, InferenceError, InferenceUnavailable, drain
from looptool.services.inference.server import start
from looptool.shared.config import InferenceSettings, LoopToolConfig, StorageSettings
from looptool.shared.generation import GenRequest, SamplingParams
from looptool.shared.grpc_util import channel
from looptool.shared.loop.manifest import JudgeSpec, ProbeSpec
from looptool.shared.proto_convert import gen_request_to_pb
from looptool.shared.records import Decision, JudgedSample, Message, ProbeResult
from looptool.shared.storage import open_dataset
from looptool.v1 import inference_pb2_grpc

from support import REPO
from support.inference import CITIES, WEATHER, looptool_env, make_samples, one_torch_thread, tiny_model_dir, write_samples  # noqa: F401
from support.net import free_port



def metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference-server")
    cfg = LoopToolConfig(
        inference=InferenceSettings(model=str(tiny_model_dir()), max_batch_size=8, batch_wait_ms=20, max_context=2048),
        storage=StorageSettings(root=str(root / "store")),
    )
    running = start(cfg, host="127.0.0.1", port=0, metrics_port=free_port())
    running.root = root
    yield running
    running.stop(0.5)


@pytest.fixture(scope="module")
def client(server):
    c = InferenceClient(server.address, timeout_s=60)
    yield c
    c.close()


def req(text: str, max_tokens: int = 16, **params) -> GenRequest:
    return GenRequest([Message(role="user", content=text)], [WEATHER], SamplingParams(max_tokens=max_tokens, **params))


def test_health_reflection_and_model_info(server, client):
    with channel(server.address) as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="looptool.v1.InferenceService"))
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        [resp] = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in resp.list_services_response.service}
        assert "looptool.v1.InferenceService" in names and "grpc.health.v1.Health" in names
    info = client.model_info()
    assert info == {"backend": "transformers", "model": str(tiny_model_dir()), "max_context": 2048}


def test_generate_batch_and_single_agree_and_count_metrics(server, client):
    before_ok = metric("looptool_inference_generate_requests_total", rpc="GenerateBatch", status="OK")
    before_batches = metric("looptool_inference_batch_size_count", backend="transformers")
    reqs = [req(f"weather in {c}") for c in CITIES[:6]] + [req("hi " * 3000)]  # the last one is too long
    results = client.generate(reqs)
    assert all(not r.error for r in results[:6]) and "INVALID_ARGUMENT" in results[6].error
    single = client.generate_one(reqs[2])
    assert single.completions[0].text == results[2].completions[0].text
    assert results[0].prompt_tokens > 100 and results[0].completion_tokens > 0
    assert metric("looptool_inference_generate_requests_total", rpc="GenerateBatch", status="OK") - before_ok == 6
    assert metric("looptool_inference_generate_requests_total", rpc="GenerateBatch", status="INVALID_ARGUMENT") >= 1
    assert metric("looptool_inference_batch_size_count", backend="transformers") > before_batches
    assert metric("looptool_inference_tokens_total", backend="transformers", kind="prompt") > 0
    text = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics").text
    for name in ("looptool_inference_generate_latency_seconds_bucket", "looptool_inference_queue_depth",
                 "looptool_inference_batch_size_bucket", "looptool_inference_rpc_requests_total"):
        assert name in text
    with pytest.raises(InferenceError, match="INVALID_ARGUMENT"):
        client.generate_one(req("hi " * 3000))


def test_generate_with_unknown_model_is_not_found(server):
    # inside the allowed roots (the local store), so the lookup runs and finds nothing
    c = InferenceClient(server.address, model=str(server.root / "store" / "nonexistent-model"))
    try:
        [r] = c.generate([req("hi")])
        assert r.error.startswith("NOT_FOUND") and "does not exist" in r.error
        with pytest.raises(InferenceError, match="NOT_FOUND"):
            c.generate_one(req("hi"))
    finally:
        c.close()


def test_generate_stream_deltas_match_the_final_completion(client):
    gen = client.stream(req("weather in Oslo", max_tokens=24))
    deltas = []
    while True:
        try:
            deltas.append(next(gen))
        except StopIteration as stop:
            final = stop.value
            break
    assert len(deltas) > 3 and "".join(deltas) == final.completions[0].text
    assert final.completion_tokens > 0 and final.completions[0].finish_reason in ("length", "stop")


def _completion_tokens() -> float:
    return metric("looptool_inference_tokens_total", backend="transformers", kind="completion")


def test_deadline_exceeded_stops_the_work(server, client):
    before = _completion_tokens()
    t0 = time.monotonic()
    with pytest.raises(InferenceError, match="DEADLINE_EXCEEDED"):
        client.generate_one(req("hi", max_tokens=1000), timeout_s=0.25)
    assert time.monotonic() - t0 < 2
    client.generate_one(req("hi", max_tokens=2))  # queued behind whatever is left of the long one
    assert _completion_tokens() - before < 600  # the 1000-token generation was cut short
    [r] = InferenceClient(server.address, timeout_s=0.2).generate([req("hi", max_tokens=1000)])
    assert r.error.startswith("DEADLINE_EXCEEDED")


def test_client_cancellation_stops_the_generation(server):
    before = _completion_tokens()
    with channel(server.address) as ch:
        stub = inference_pb2_grpc.InferenceServiceStub(ch)
        call = stub.GenerateStream(gen_request_to_pb(req("hi", max_tokens=1000)), timeout=30)
        next(call)
        next(call)
        call.cancel()
        with pytest.raises(grpc.RpcError) as info:
            list(call)
        assert info.value.code() == grpc.StatusCode.CANCELLED
        stub.Generate(gen_request_to_pb(req("hi", max_tokens=2)), timeout=30)
    assert _completion_tokens() - before < 600


def test_probe_and_judge_end_to_end(server, client):
    root = server.root
    samples = make_samples(10)
    ref = write_samples(str(root / "samples"), samples)
    events = list(client.probe(ref, str(root / "probe"), ProbeSpec(k=1, maxTokens=24), round=1))
    result, errors, progress = drain(events)
    assert not errors and progress and progress[-1].done == 10
    assert sum(result.counts[k] for k in ("mastered", "borderline", "failed")) == 10
    assert metric("looptool_inference_probe_outcomes_total", outcome="failed") >= result.counts["failed"]
    probed = list(open_dataset(result.outputs[0]).iter(ProbeResult))
    assert {p.sample.id for p in probed} == {s.id for s in samples}
    assert all(p.sampled_total == 1 and p.perplexity > 1 and p.sample.lineage[-1].stage == "probe" for p in probed)
    failed = result.counts["failed"]
    assert failed > 0  # an untrained model fails

    g_result, g_errors, _ = drain(client.judge(result.outputs[0], str(root / "verdicts-g"), JudgeSpec(backend="grounding"), round=1))
    assert not g_errors and g_result.counts["judged"] == failed
    assert metric("looptool_inference_judge_verdicts_total", decision="model_wrong") >= g_result.counts["model_wrong"] > 0
    judged = list(open_dataset(g_result.outputs[0]).iter(JudgedSample))
    assert all(j.verdict.decision in set(Decision) for j in judged)

    # the LLM judge with the untrained tiny model: nothing parses → retried, recorded unclear, never crashes
    l_result, l_errors, _ = drain(client.judge(result.outputs[0], str(root / "verdicts-l"), JudgeSpec(backend="llm", votes=1), round=1))
    assert l_result.counts["unclear"] == failed and not l_errors

    # a bad dataset reference is a clear gRPC error
    bad = ref.model_copy(update={"uri": str(root / "missing")})
    with pytest.raises(InferenceError, match="NOT_FOUND"):
        list(client.probe(bad, str(root / "probe-x")))
    empty = write_samples(str(root / "empty"), [])
    with pytest.raises(InferenceError, match="INVALID_ARGUMENT.*empty"):
        list(client.probe(empty, str(root / "probe-y")))


def test_client_errors_clearly_when_the_server_is_down():
    c = InferenceClient(f"127.0.0.1:{free_port()}", timeout_s=2)
    try:
        with pytest.raises(InferenceUnavailable, match="looptool serve inference"):
            c.generate([req("hi")])
        with pytest.raises(InferenceUnavailable):
            c.wait_ready(timeout=0.5)
    finally:
        c.close()


# ------------------------------------------------------------------------------ kill -9 mid-probe


def _serve(env: dict[str, str], port_file: Path) -> tuple[subprocess.Popen, str]:
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "looptool.cli", "serve", "inference", "--port", "0", "--metrics-port", "0",
         "--port-file", str(port_file)],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("server did not start in 60 s")
        time.sleep(0.05)
    return proc, f"127.0.0.1:{port_file.read_text().strip()}"


def test_probe_resumes_after_the_server_is_killed(tmp_path):
    env = looptool_env(tiny_model_dir(), tmp_path / "store", LOOPTOOL_INFERENCE__MAX_BATCH_SIZE="4", OMP_NUM_THREADS="1")
    samples = make_samples(40)
    ref = write_samples(str(tmp_path / "samples"), samples)
    out = str(tmp_path / "probe-out")
    spec = ProbeSpec(maxTokens=48)

    proc, address = _serve(env, tmp_path / "port")
    killed_at = None
    try:
        c = InferenceClient(address)
        with pytest.raises((InferenceUnavailable, InferenceError)):
            for ev in c.probe(ref, out, spec, round=1):
                if getattr(ev, "done", 0) >= 12 and killed_at is None:
                    killed_at = ev.done
                    os.kill(proc.pid, signal.SIGKILL)
        c.close()
    finally:
        proc.kill()
        proc.wait()
    assert killed_at is not None and killed_at < 40

    proc, address = _serve(env, tmp_path / "port")
    try:
        c = InferenceClient(address)
        result, errors, _ = drain(c.probe(ref, out, spec, round=1))
        assert not errors
        assert killed_at <= result.counts["resumed"] < 40
        ids = [p.sample.id for p in open_dataset(result.outputs[0]).iter(ProbeResult)]
        assert len(ids) == 40 and sorted(ids) == sorted(s.id for s in samples)  # none missing, none doubled
        again, _, _ = drain(c.probe(ref, out, spec, round=1))  # committed: returned as is
        assert again.outputs[0].content_hash == result.outputs[0].content_hash
        c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
