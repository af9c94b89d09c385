"""The Trainer gRPC service end to end on loopback: stream progress + result, cancel, bad input, metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from looptool.services.trainer.toy import TINY_BASE, commit_toy_dataset

from support.net import free_port


CFG = {
    "sftEpochs": 10,
    "sftBatchSize": 4,
    "sftLearningRate": 0.01,
    "grpoSteps": 4,
    "groupSize": 4,
    "promptsPerStep": 2,
    "learningRate": 0.001,
    "maxResponseTokens": 16,
    "checkpointEvery": 2,
}


@pytest.fixture
def server(tmp_path, monkeypatch):
    from looptool.services.trainer.server import start

    monkeypatch.setenv("LOOPTOOL_TRAINER__TORCH_THREADS", "1")
    mport = free_port()
    running = start(None, port=0, metrics_port=mport, workdir=tmp_path / "wd")
    yield running
    running.stop(0)


def test_train_streams_progress_then_result(server, tmp_path):
    from looptool.services.trainer.client import TrainerClient
    from looptool.shared.records import Progress

    ref = commit_toy_dataset((tmp_path / "ds").as_uri(), 4)
    with TrainerClient(server.address) as client:
        job = client.make_job(ref, TINY_BASE, (tmp_path / "out").as_uri(), CFG, run_id="svc-1", round=2)
        seen: list[Progress] = []
        result = client.train(job, on_progress=seen.append, timeout=300)
        grpo = [p for p in seen if p.metrics.get("phase") == 1.0]
        assert [int(p.metrics["step"]) for p in grpo] == [1, 2, 3, 4]
        assert {"reward_mean", "reward_std", "loss", "kl", "tokens_per_second", "gen_share"} <= set(grpo[0].metrics)
        assert grpo[-1].done == grpo[-1].total == 10 + 4
        assert result.checkpoint_uri == (tmp_path / "out" / "model").as_uri()
        assert {k for k in result.metrics if k.startswith("reward_step_")} == {f"reward_step_{i}" for i in range(1, 5)}
        assert result.counts["grpo_steps"] == 4 and result.metrics["cached"] == 0.0

        again = client.train(job, timeout=60)  # same dataset/config/base: no-op
        assert again.metrics["cached"] == 1.0 and again.checkpoint_uri == result.checkpoint_uri

    body = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    for name in (
        'looptool_trainer_step{phase="grpo"} 4.0',
        "looptool_trainer_reward_mean ",
        "looptool_trainer_reward_std ",
        'looptool_trainer_loss{phase="grpo"}',
        "looptool_trainer_kl ",
        'looptool_trainer_tokens_per_second{phase="grpo"}',
        'looptool_trainer_runs_total{state="succeeded"}',
        'looptool_trainer_runs_total{state="cached"}',
        'looptool_trainer_rpc_requests_total{code="OK",method="Train"}',
    ):
        assert name in body, name


def test_cancel_stops_at_step_boundary_and_keeps_checkpoint(server, tmp_path):
    from looptool.services.trainer.client import TrainerClient, TrainerError

    ref = commit_toy_dataset((tmp_path / "ds").as_uri(), 4)
    with TrainerClient(server.address) as client:
        job = client.make_job(ref, TINY_BASE, (tmp_path / "out").as_uri(), {**CFG, "grpoSteps": 200}, run_id="svc-cancel")
        err: list[TrainerError] = []
        steps: list[int] = []

        def consume():
            try:
                for ev in client.stream(job, timeout=300):
                    if getattr(ev, "metrics", {}).get("phase") == 1.0:
                        steps.append(int(ev.metrics["step"]))
            except TrainerError as exc:
                err.append(exc)

        t = threading.Thread(target=consume)
        t.start()
        deadline = time.monotonic() + 120
        while not steps and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.cancel("svc-cancel") is True
        t.join(120)
        assert err and err[0].code == "CANCELLED" and "checkpoint kept" in err[0].reason
        assert steps[-1] < 200
        latest = json.loads((tmp_path / "out" / "checkpoints" / "latest.json").read_text())
        assert latest["phase"] == "grpo" and latest["step"] == steps[-1]
        assert client.cancel("svc-cancel") is False  # no longer running
        assert not (tmp_path / "out" / "result.json").exists()


def test_bad_request_is_invalid_argument(server, tmp_path):
    from looptool.services.trainer.client import TrainerClient, TrainerError
    from looptool.services.trainer.runner import job_to_pb, parse_job
    from looptool.v1 import trainer_pb2_grpc

    ref = commit_toy_dataset((tmp_path / "ds").as_uri(), 4)
    with TrainerClient(server.address) as client:
        job = client.make_job(ref, str(tmp_path / "missing-model"), (tmp_path / "out").as_uri(), CFG)
        with pytest.raises(TrainerError) as ei:
            client.train(job, timeout=60)
        assert ei.value.code == "INVALID_ARGUMENT" and ei.value.reason.startswith("base_checkpoint_uri: ")

        req = job_to_pb(parse_job({"dataset": ref.model_dump(), "base_checkpoint_uri": TINY_BASE, "output_prefix": "/x"}))
        req.config_json = json.dumps({"groupSize": 1})
        import grpc

        with pytest.raises(grpc.RpcError) as ei2:
            list(trainer_pb2_grpc.TrainerStub(client._channel).Train(req, timeout=30))
        assert ei2.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "config.groupSize" in ei2.value.details()


def test_looptool_serve_trainer_cli(tmp_path):
    from looptool.shared.grpc_util import wait_healthy

    port_file = tmp_path / "port"
    env = dict(os.environ, LOOPTOOL_TRAINER__WORKDIR=str(tmp_path / "wd"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "looptool.cli", "serve", "trainer", "--port", "0", "--metrics-port", "0", "--port-file", str(port_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert port_file.exists(), proc.stdout.read().decode() if proc.poll() is not None else "no port file"
        wait_healthy(f"127.0.0.1:{port_file.read_text()}", timeout=30, service="looptool.v1.Trainer")
    finally:
        proc.terminate()
        proc.wait(30)
