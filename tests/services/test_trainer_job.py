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
    env = dict(os.environ, LOOPTOOL_TRAINER__TORCH_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("LOOPTOOL_S3_ENDPOINT", None)
    return env


def _job(tmp_path: Path, request: dict, *extra: str, workdir: Path | None = None):
    req = tmp_path / f"req-{time.monotonic_ns()}.json"
    req.write_text(json.dumps(request))
    wd = workdir or tmp_path / "wd"
    return [sys.executable, "-m", "looptool.services.trainer.job", "--request", str(req), "--workdir", str(wd), *extra]


def _request(tmp_path: Path, ref, config=None, base=TINY_BASE, out="out"):
    return {
        "run_id": "job-test",
        "round": 1,
        "dataset": ref.model_dump() if hasattr(ref, "model_dump") else ref,
        "base_checkpoint_uri": base,
        "output_prefix": (tmp_path / out).as_uri(),
        "config": config or SMALL,
    }


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=_env())


def _wait_for_checkpoint(proc: subprocess.Popen, latest: Path, log: Path, phase: str | None = None, step: int = 0) -> None:
    """Poll until ``latest.json`` names a checkpoint (of ``phase``, at least ``step``); the job must still run."""
    deadline = time.monotonic() + 300  # a hang guard, not a timing assertion
    while proc.poll() is None and time.monotonic() < deadline:
        if latest.exists():
            info = json.loads(latest.read_text())  # written atomically
            if (phase is None or info["phase"] == phase) and info["step"] >= step:
                return
        time.sleep(0.02)
    raise AssertionError(f"job ended ({proc.poll()}) before a {phase or 'any'} checkpoint >= {step}:\n{log.read_text()[-2000:]}")


def _first_step(out: str, phase: str) -> int:
    return int(out.split(f"{phase} step ")[1].split("/")[0])


def _model_files(prefix: Path) -> list[tuple[str, str]]:
    """The committed model's content: (path, sha256) of every file."""
    manifest = json.loads((prefix / "model" / "_artifact.json").read_text())
    return sorted((f["path"], f["sha256"]) for f in manifest["files"])


def test_job_killed_or_terminated_resumes_on_its_workdir_to_the_same_model(tmp_path):
    from looptool.services.trainer.job import EXIT_CANCELLED

    ref = commit_toy_dataset((tmp_path / "ds").as_uri(), 4)
    # the uninterrupted run, on its own work directory and output prefix, beside the interrupted one
    config = {**SMALL, "sftEpochs": 9, "grpoSteps": 10}  # 9 SFT steps, 10 GRPO steps, a checkpoint every 3
    reference = _start(_job(tmp_path, _request(tmp_path, ref, config, out="ref"), workdir=tmp_path / "wd-ref"), tmp_path / "ref.log")
    wd = tmp_path / "wd"
    cmd = _job(tmp_path, _request(tmp_path, ref, config), workdir=wd)
    latest = tmp_path / "out" / "checkpoints" / "latest.json"
    try:
        # 1. SIGKILL (no chance to clean up) once the first resumable checkpoint exists: mid-SFT
        first = _start(cmd, tmp_path / "1.log")
        try:
            _wait_for_checkpoint(first, latest, tmp_path / "1.log")
        finally:
            first.kill()
            first.wait()
        assert first.returncode == -signal.SIGKILL
        killed = json.loads(latest.read_text())
        assert killed["phase"] == "sft" and killed["step"] > 0, killed
        assert not (tmp_path / "out" / "result.json").exists()
        # what a kill in the middle of a save or a download leaves on the volume
        leftovers = [wd / ".tiny-x", wd / "final-x", wd / "cache" / "ckpt" / ".ckpt-x", wd / "cache" / "models" / ".fetch-x"]
        for d in leftovers:
            (d / "part").mkdir(parents=True)

        # 2. restart on the same work directory; SIGTERM once GRPO has a checkpoint of its own
        second = _start(cmd, tmp_path / "2.log")
        try:
            _wait_for_checkpoint(second, latest, tmp_path / "2.log", "grpo", 3)
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=300)
        finally:
            if second.poll() is None:
                second.kill()
                second.wait()
        out2 = (tmp_path / "2.log").read_text()
        assert second.returncode == EXIT_CANCELLED, out2[-2000:]
        assert f"resumed from checkpoint {killed['tag']} (phase sft, step {killed['step']})" in out2
        assert _first_step(out2, "sft") == killed["step"] + 1  # finished SFT steps are not redone
        assert not [d for d in leftovers if d.exists()]
        stopped = json.loads(latest.read_text())
        assert stopped["phase"] == "grpo" and stopped["step"] >= 3
        reason = [ln for ln in out2.splitlines() if ln.strip()][-1]
        assert reason == f"error: cancelled during GRPO at step {stopped['step']}/10; checkpoint kept", reason

        # 3. restart again: resumes at the step SIGTERM saved and finishes
        third = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
        assert third.returncode == 0, third.stderr[-2000:]
        assert f"resumed from checkpoint {stopped['tag']} (phase grpo, step {stopped['step']})" in third.stdout
        assert "sft step" not in third.stdout and _first_step(third.stdout, "grpo") == stopped["step"] + 1
        summary = json.loads(third.stdout.split("result: ")[1])
        assert summary["resumed_from_step"] == stopped["step"] and summary["cached"] is False
    finally:
        reference.wait(timeout=300)
    assert reference.returncode == 0, (tmp_path / "ref.log").read_text()[-2000:]

    # the same model, bit for bit, as the run nothing interrupted
    assert _model_files(tmp_path / "out") == _model_files(tmp_path / "ref")
    result, expected = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("out", "ref"))
    assert result["reward_curve"] == expected["reward_curve"] and len(result["reward_curve"]) == 10
    assert result["sft_loss_curve"] == expected["sft_loss_curve"]

    # the same request again: a no-op that reports the finished result
    code, out, _ = _main_in_process(cmd[3:])
    assert code == 0 and '"cached": true' in out


def test_resume_is_exact_and_idempotent_in_process(tmp_path, monkeypatch):
    """Cancel at a step boundary, resume: the reward curve equals an uninterrupted run's."""
    import threading

    from looptool.services.trainer.common import TrainCancelled
    from looptool.services.trainer.runner import parse_job, run_training

    monkeypatch.setenv("LOOPTOOL_TRAINER__TORCH_THREADS", "1")
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


def _main_in_process(argv: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the Job entry point run in-process (same code path as the
    subprocess, minus the interpreter start)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from looptool.services.trainer import job

    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    out, err = io.StringIO(), io.StringIO()
    try:
        with redirect_stderr(err), redirect_stdout(out):
            code = job.main(argv)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    return code, out.getvalue(), err.getvalue()


def _run_bad(tmp_path, request, *extra) -> tuple[int, str]:
    req = tmp_path / f"req-{time.monotonic_ns()}.json"
    req.write_text(json.dumps(request))
    code, _, stderr = _main_in_process(["--request", str(req), "--workdir", str(tmp_path / "wd"), *extra])
    return code, stderr


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

    monkeypatch.setenv("LOOPTOOL_TRAINER__TORCH_THREADS", "1")
    ref = commit_toy_dataset((tmp_path / "ds").as_uri(), 4)
    with pytest.raises(InputError, match=r"config.maxPromptTokens: is 16 but every prompt is longer"):
        run_training(parse_job(_request(tmp_path, ref, {**SMALL, "maxPromptTokens": 16})), workdir=tmp_path / "wd")
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_workdir_claim_waits_for_the_same_run_and_spares_live_temporaries(tmp_path):
    """A retried pod waits for its predecessor (same run key) to let go; temporaries are swept
    only when no other run uses the work directory."""
    import fcntl
    import threading

    from looptool.services.trainer.runner import claim_workdir

    wd, key = tmp_path / "wd", "k" * 64
    live = wd / "cache" / "ckpt" / ".ckpt-live"
    live.mkdir(parents=True)
    (wd / "locks").mkdir()
    events: list[str] = []
    entered = threading.Event()

    def run() -> None:
        with claim_workdir(wd, key, lambda p: events.append(p.message)) as waited:
            events.append(f"waited={waited}")
            entered.set()

    with open(wd / "locks" / "workdir.lock", "a+") as other_run, open(wd / "locks" / f"run-{key[:16]}.lock", "a+") as predecessor:
        fcntl.flock(other_run, fcntl.LOCK_SH)  # another run (another key) is active here
        fcntl.flock(predecessor, fcntl.LOCK_EX)  # the same run, still saving its checkpoint
        t = threading.Thread(target=run)
        t.start()
        while not events:  # the waiting message comes before blocking
            time.sleep(0.01)
        assert events[0].startswith("waiting for another run of this job") and not entered.is_set()
        fcntl.flock(predecessor, fcntl.LOCK_UN)
        t.join(30)
    assert events[-1] == "waited=True" and live.exists()  # the other run's temporary was kept

    with claim_workdir(wd, key, events.append) as waited:  # nobody else here now: swept
        assert not waited and not live.exists()


def test_s3_base_model_is_cached_in_the_workdir_and_reused_on_restart(tmp_path, moto_s3, monkeypatch):  # noqa: F811
    """A restarted Job on the same work directory loads the base model from its verified cache."""
    from looptool.services.trainer.runner import CpuRun, Prepared, parse_job
    from looptool.shared.storage.artifacts import upload_dir
    from looptool.shared.storage.s3 import S3Store
    from looptool.shared.tiny_model import TinyModelSpec, build_tiny_model

    settings = moto_s3.settings("cache")
    store = moto_s3.store("cache")
    tiny = TinyModelSpec(vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=1)
    build_tiny_model(tmp_path / "m", ["hello world", "weather in Oslo"], tiny)
    upload_dir(store, "models/base", tmp_path / "m")
    ref = commit_toy_dataset((tmp_path / "ds").as_uri(), 2)
    job = parse_job(_request(tmp_path, ref, base="s3://cache/models/base"))
    prep = Prepared(job=job, store=store, prefix="out", key="k" * 64, base_identity="")
    downloads: list[str] = []
    real_get = S3Store.get_file
    monkeypatch.setattr(S3Store, "get_file", lambda self, key, path: (downloads.append(key), real_get(self, key, path))[1])

    wd = tmp_path / "wd"
    first = CpuRun(prep, lambda p: None, None, wd, settings)._base_dir([])
    assert first.parent == wd / "cache" / "models" and (first / "config.json").is_file()
    n = len(downloads)
    assert n == sum(1 for f in (tmp_path / "m").rglob("*") if f.is_file())
    again = CpuRun(prep, lambda p: None, None, wd, settings)._base_dir([])  # the restarted Job
    assert again == first and len(downloads) == n  # nothing downloaded twice
