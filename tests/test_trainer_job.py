"""The training Job entry point: kill -9 and resume, idempotent re-runs, bad input before compute."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from looptool.services.trainer.toy import TINY_BASE, commit_toy_dataset, toy_rows

SMALL = {
    "sftEpochs": 20,
    "sftBatchSize": 4,
    "sftLearningRate": 0.01,
    "grpoSteps": 16,
    "groupSize": 4,
    "promptsPerStep": 4,
    "learningRate": 0.001,
    "warmupRatio": 0.1,
    "maxResponseTokens": 24,
    "checkpointEvery": 3,
}


def _env():
    env = dict(os.environ, LOOPTOOL_TORCH_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("LOOPTOOL_S3_ENDPOINT", None)
    return env


def _job(tmp_path: Path, request: dict, *extra: str, **kw):
    req = tmp_path / f"req-{time.monotonic_ns()}.json"
    req.write_text(json.dumps(request))
    cmd = [sys.executable, "-m", "looptool.services.trainer.job", "--request", str(req), "--workdir", str(tmp_path / "wd"), *extra]
    return cmd


def _request(tmp_path: Path, ref, config=None, base=TINY_BASE, out="out"):
    return {
        "run_id": "job-test",
        "round": 1,
        "dataset": ref.model_dump() if hasattr(ref, "model_dump") else ref,
        "base_checkpoint_uri": base,
        "output_prefix": (tmp_path / out).as_uri(),
        "config": config or SMALL,
    }


def test_kill_9_then_resume_from_last_checkpoint(tmp_path):
    ref = commit_toy_dataset((tmp_path / "ds").as_uri(), 4)
    request = _request(tmp_path, ref)
    cmd = _job(tmp_path, request)
    log = tmp_path / "first.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=_env())
    latest = tmp_path / "out" / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 120
    killed_after = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if latest.exists():
                info = json.loads(latest.read_text())
                if info["phase"] == "grpo" and info["step"] >= 3:
                    proc.send_signal(signal.SIGKILL)  # no chance to clean up
                    killed_after = info
                    break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert killed_after is not None, log.read_text()[-2000:]
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "out" / "result.json").exists()

    second = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    out = second.stdout + second.stderr
    resumed = json.loads((tmp_path / "out" / "result.json").read_text())["resumed_from"]
    assert resumed["phase"] == "grpo" and resumed["step"] >= killed_after["step"] > 0
    assert f"resumed from checkpoint {resumed['tag']}" in out
    assert "sft step" not in second.stdout  # SFT was finished before the kill: not redone
    first_step = int(second.stdout.split("grpo step ")[1].split("/")[0])
    assert first_step == resumed["step"] + 1
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert len(result["reward_curve"]) == 16 and result["metrics"]["resumed_from_step"] == resumed["step"]
    assert (tmp_path / "out" / "model" / "_artifact.json").exists()

    # the same request again: a no-op that reports the finished result
    third = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=120)
    assert third.returncode == 0 and '"cached": true' in third.stdout


def test_resume_is_exact_and_idempotent_in_process(tmp_path, monkeypatch):
    """Cancel at a step boundary, resume: the reward curve equals an uninterrupted run's."""
    import threading

    from looptool.services.trainer.common import TrainCancelled
    from looptool.services.trainer.runner import parse_job, run_training

    monkeypatch.setenv("LOOPTOOL_TORCH_THREADS", "1")
    ref = commit_toy_dataset((tmp_path / "ds").as_uri(), 4)
    cfg = {**SMALL, "grpoSteps": 8, "checkpointEvery": 0}
    full = run_training(parse_job(_request(tmp_path, ref, cfg, out="a")), workdir=tmp_path / "wa")

    cancel = threading.Event()

    def emit(p):
        if p.metrics.get("phase") == 1.0 and p.metrics.get("step") == 5:
            cancel.set()

    job_b = parse_job(_request(tmp_path, ref, cfg, out="b"))
    with pytest.raises(TrainCancelled, match="step 5/8"):
        run_training(job_b, workdir=tmp_path / "wb", emit=emit, cancel=cancel)
    assert json.loads((tmp_path / "b" / "checkpoints" / "latest.json").read_text())["step"] == 5
    resumed = run_training(job_b, workdir=tmp_path / "wb")
    assert resumed.metrics["resumed_from_step"] == 5
    curve = lambda r: [r.metrics[f"reward_step_{i}"] for i in range(1, 9)]  # noqa: E731
    assert curve(resumed) == curve(full)
    again = run_training(job_b, workdir=tmp_path / "wb")
    assert again.metrics["cached"] == 1.0 and again.checkpoint_uri == resumed.checkpoint_uri


def _run_bad(tmp_path, request, *extra) -> tuple[int, str]:
    """Run the Job entry point in-process (same code path as the subprocess, minus interpreter start)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from looptool.services.trainer import job

    req = tmp_path / f"req-{time.monotonic_ns()}.json"
    req.write_text(json.dumps(request))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    err = io.StringIO()
    try:
        with redirect_stderr(err), redirect_stdout(io.StringIO()):
            code = job.main(["--request", str(req), "--workdir", str(tmp_path / "wd"), *extra])
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    return code, err.getvalue()


def _error_line(stderr: str) -> str:
    lines = [l for l in stderr.strip().splitlines() if l.strip()]
    return lines[-1]


def test_bad_input_fails_fast_with_one_line(tmp_path):
    from looptool.shared.storage import writer_for_uri

    good = commit_toy_dataset((tmp_path / "ds").as_uri(), 4)
    empty = writer_for_uri((tmp_path / "empty").as_uri(), kind="grpo").commit()
    rows = toy_rows(3)
    del rows[1]["reward_model"]
    missing_col = writer_for_uri((tmp_path / "nocol").as_uri(), kind="grpo")
    missing_col.write_many(rows)
    missing_col = missing_col.commit()
    rows = toy_rows(3)
    rows[2]["reward_model"]["ground_truth"] = "[{oops"
    bad_gt = writer_for_uri((tmp_path / "badgt").as_uri(), kind="grpo")
    bad_gt.write_many(rows)
    bad_gt = bad_gt.commit()

    cases = [
        (_request(tmp_path, empty), "dataset: ", "is empty"),
        (_request(tmp_path, missing_col), "dataset[1]: missing column(s) reward_model", ""),
        (_request(tmp_path, bad_gt), "dataset[2].reward_model.ground_truth", "not JSON"),
        (_request(tmp_path, (tmp_path / "nope").as_uri()), "dataset.uri: no committed dataset", ""),
        (_request(tmp_path, good, base=str(tmp_path / "no-model")), "base_checkpoint_uri: ", "does not exist"),
        (_request(tmp_path, good, base="builtin:huge"), "base_checkpoint_uri: unknown builtin model", ""),
        (_request(tmp_path, good, {**SMALL, "groupSize": 1}), "config.groupSize", "greater than or equal to 2"),
        (_request(tmp_path, good, {**SMALL, "microBatchSize": 6}), "config.microBatchSize: 6 must be a multiple of groupSize 4", ""),
        (_request(tmp_path, good, {**SMALL, "microBatchSize": 12}), "config.microBatchSize: 12", "divide the mini-batch of 16"),
        (_request(tmp_path, good, {**SMALL, "ppoMiniBatches": 3}), "config.ppoMiniBatches: 3 does not divide promptsPerStep 4", ""),
        (_request(tmp_path, good, {**SMALL, "grpoStepz": 3}), "config.grpoStepz: unknown field", ""),
        (_request(tmp_path, good, {"backend": "verl", "gpus": 3}), "config.verl.trainBatchSize", "not divisible by the 3 GPUs"),
        (_request(tmp_path, good, {"backend": "verl", "gpus": 8, "verl": {"ppoMiniBatchSize": 48}}), "config.verl.ppoMiniBatchSize", "divide"),
        (_request(tmp_path, good, {"backend": "verl", "gpus": 8}), "base_checkpoint_uri: builtin:tiny is a CPU demo model", ""),
    ]
    for request, head, tail in cases:
        code, stderr = _run_bad(tmp_path, request)
        line = _error_line(stderr)
        assert code == 2, (request, stderr[-1500:])
        assert line.startswith("error: ") and head in line and tail in line, line
        assert "Traceback" not in stderr
    # nothing was computed: no base model built, no checkpoint written
    assert not list((tmp_path / "wd").glob("base-*")) if (tmp_path / "wd").exists() else True
    assert not (tmp_path / "out").exists()

    code, stderr = _run_bad(tmp_path, "not an object")
    assert code == 2 and "request: must be a JSON object" in _error_line(stderr)
    term = tmp_path / "termination-log"
    code, _ = _run_bad(tmp_path, _request(tmp_path, good, {**SMALL, "groupSize": 1}), "--termination-log", str(term))
    assert code == 2 and "config.groupSize" in term.read_text() and "\n" not in term.read_text()

    # and once through a real interpreter: exit status 2, the reason as the last stderr line
    p = subprocess.run(_job(tmp_path, _request(tmp_path, empty)), capture_output=True, text=True, env=_env(), timeout=120)
    assert p.returncode == 2 and _error_line(p.stderr).startswith("error: dataset: ")


def test_prompt_longer_than_max_prompt_tokens_is_rejected(tmp_path, monkeypatch):
    from looptool.services.trainer.runner import parse_job, run_training
    from looptool.shared.errors import InputError

    monkeypatch.setenv("LOOPTOOL_TORCH_THREADS", "1")
    ref = commit_toy_dataset((tmp_path / "ds").as_uri(), 4)
    with pytest.raises(InputError, match=r"config.maxPromptTokens: is 16 but every prompt is longer"):
        run_training(parse_job(_request(tmp_path, ref, {**SMALL, "maxPromptTokens": 16})), workdir=tmp_path / "wd")
    assert not (tmp_path / "out" / "checkpoints").exists()
