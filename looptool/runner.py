"""The local runner: a chain of LoopRounds on one machine (``looptool run``).

Starts the five gRPC services as local processes on loopback, uses local storage (or the configured
S3), drives the shared state machine (``looptool.shared.loop``) with a progress bar per stage, and
persists each round's status after every stage so that running the same command again resumes where
a killed run stopped. The operator drives the same stages and chain policy on Kubernetes.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from looptool.shared.config import SERVICE_NAMES, LoopToolConfig
from looptool.shared.grpc_util import wait_healthy
from looptool.shared.logs import get_logger
from looptool.shared.loop.chain import StopDecision, classify_failure, mark_stopped, not_run_status, stop_decision
from looptool.shared.loop.lease import DEFAULT_TTL_S, RoundLease, StatusStore
from looptool.shared.loop.manifest import LoopRound
from looptool.shared.loop.preflight import Problem, preflight
from looptool.shared.loop.stages import StageContext, StageError, run_data_stage, stage_train
from looptool.shared.loop.state import (
    STAGE_OF,
    TERMINAL,
    Phase,
    RoundStatus,
    begin,
    fail,
    finish_stage,
    start_stage,
)
from looptool.shared.records import Progress, content_key

log = get_logger("looptool.runner")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child before exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class LocalServices:
    """The five services as child processes on loopback (they die with the runner)."""

    config: LoopToolConfig
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)

    def start(self, timeout: float = 120.0) -> dict[str, str]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        ports = {name: _free_port() for name in SERVICE_NAMES}
        env = dict(os.environ)
        env.update(self.env)
        for name, port in ports.items():
            env[f"LOOPTOOL_SERVICES__{name.upper()}__PORT"] = str(port)
            env[f"LOOPTOOL_SERVICES__{name.upper()}__HOST"] = "127.0.0.1"
            env.setdefault(f"LOOPTOOL_SERVICES__{name.upper()}__METRICS_PORT", "0")
        storage = self.config.storage
        env["LOOPTOOL_STORAGE__BACKEND"] = storage.backend
        env["LOOPTOOL_STORAGE__ROOT"] = str(Path(storage.root).resolve())
        # Trainer scratch space (base-model builds, model cache) beside this run's storage.
        # Passive OpenMP waits: spinning threads of five torch processes starve each other on small machines.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        env.setdefault("MKL_DYNAMIC", "FALSE")
        env.setdefault("LOOPTOOL_TRAINER__WORKDIR", str(Path(storage.root).resolve() / "work" / "trainer"))
        for name in SERVICE_NAMES:
            logf = open(self.log_dir / f"{name}.log", "ab")
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "looptool.cli", "serve", name],
                env=env,
                stdout=logf,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
            self.addresses[name] = f"127.0.0.1:{ports[name]}"
        deadline = time.monotonic() + timeout
        for name in SERVICE_NAMES:
            proc = self.procs[name]
            while True:
                if proc.poll() is not None:
                    tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                    raise StageError("ServiceFailed", f"the {name} service exited with code {proc.returncode}:\n{tail}")
                try:
                    wait_healthy(
                        self.addresses[name], timeout=min(5.0, max(0.1, deadline - time.monotonic())), security=self.config.security
                    )
                    break
                except TimeoutError:
                    if time.monotonic() > deadline:
                        raise StageError("ServiceFailed", f"the {name} service did not become healthy in {timeout:.0f}s")
        return self.addresses

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()

    def __enter__(self) -> "LocalServices":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def spec_hash(r: LoopRound) -> str:
    return content_key(r.spec.model_dump(mode="json"), 16)


def preflight_rounds(rounds: list[LoopRound], config: LoopToolConfig, statuses: StatusStore, fresh: bool = False) -> list[Problem]:
    """Every problem of the rounds that will run (``shared/loop/preflight``), before anything starts
    or is written; a round already Succeeded with this spec is skipped (unless ``fresh``)."""

    def finished(r: LoopRound) -> bool:
        if fresh:
            return False
        st, saved_hash = statuses.load(r.name)
        return st is not None and st.phase == Phase.SUCCEEDED and saved_hash == spec_hash(r)

    return preflight(rounds, config, statuses=lambda name: statuses.load(name)[0], skip=finished)


def hold_rounds(
    rounds: list[LoopRound], statuses: StatusStore, s3=None, *, wait: bool = False, ttl_s: float = DEFAULT_TTL_S
) -> ExitStack:
    """Take the lease of every round (``shared/loop/lease``): ``LeaseHeld`` names a live holder unless
    ``wait``. Closing the returned stack releases them. Leases are taken in name order, one order for
    every runner, so two waiting runners of overlapping files cannot deadlock."""
    stack = ExitStack()
    try:
        for r in sorted(rounds, key=lambda r: r.name):
            lease = RoundLease.for_round(statuses.base_uri, r.name, s3, ttl_s=ttl_s).acquire(wait=wait)
            stack.callback(statuses.leases.pop, r.name, None)
            stack.callback(lease.release)
            statuses.leases[r.name] = lease
    except BaseException:
        stack.close()
        raise
    return stack


ProgressUI = Callable[[str, Progress | None], None]


def drive_round(
    r: LoopRound,
    ctx: StageContext,
    statuses: StatusStore,
    ui: ProgressUI,
    stop_after: Phase | None = None,
) -> RoundStatus:
    """Drive one round through the state machine, saving status after every stage. Saves are
    compare-and-swap and renew the round's lease (``statuses.leases``): a runner that lost the lease
    stops with ``LeaseLost`` / ``StatusConflict`` instead of overwriting the holder's status."""
    status, saved_hash = statuses.load(r.name)
    h = spec_hash(r)
    if status is None or saved_hash != h:
        # New round, or the spec changed: start over; stage outputs keyed by inputs are reused.
        status = RoundStatus(observedGeneration=1 if status is None else status.observedGeneration + 1)
    if status.phase == Phase.FAILED:
        # Retry: resume at the first stage that did not finish; finished outputs are kept.
        log.info("retrying failed round", extra={"round": r.name, "reason": status.reason})
        status.phase = next((p for p, stage in STAGE_OF.items() if status.stage(stage).state != "Done"), Phase.EVALUATING)
        status.stage(STAGE_OF[status.phase]).state = "Pending"
        status.reason = status.message = ""
    begin(status)
    statuses.save(r.name, status, h)
    while status.phase not in TERMINAL:
        phase = status.phase
        stage = STAGE_OF[phase]
        st = start_stage(status, stage)
        statuses.save(r.name, status, h)
        ui(stage, None)

        def on_progress(p: Progress, _st=st, _stage=stage) -> None:
            _st.done, _st.total = p.done, p.total
            status.progress = f"{_stage} {p.done}/{p.total}"
            ui(_stage, p)

        try:
            if phase == Phase.TRAINING:
                stage_train(ctx, status, on_progress)
            else:
                run_data_stage(phase, ctx, status, on_progress)
        except Exception as exc:  # keep outputs, record why (the same classification as the operator)
            failure = classify_failure(exc)
            if failure.internal:  # a bug or an unexpected failure
                log.exception("stage crashed", extra={"round": r.name, "stage": stage})
            fail(status, failure.reason, failure.message)
            statuses.save(r.name, status, h)
            ui(stage, Progress(stage=stage, message=f"FAILED: {failure.message}"))
            return status
        finish_stage(status, stage)
        statuses.save(r.name, status, h)
        ui(stage, Progress(stage=stage, message="done"))
        if stop_after is not None and phase == stop_after:
            break
    return status


@dataclass
class ChainRun:
    """What ``drive_chain`` did: each round it drove with its status, and why it stopped early."""

    results: list[tuple[LoopRound, RoundStatus]] = field(default_factory=list)
    stopped: StopDecision | None = None  # spec.stopWhen ended the chain after that round
    not_run: list[str] = field(default_factory=list)  # rounds after the stop

    @property
    def succeeded(self) -> bool:
        return all(s.phase == Phase.SUCCEEDED for _, s in self.results)


def drive_chain(
    rounds: list[LoopRound],
    context: Callable[[LoopRound, RoundStatus | None], StageContext],
    statuses: StatusStore,
    ui: Callable[[LoopRound], ProgressUI],
) -> ChainRun:
    """Drive ``rounds`` in order (``drive_round``); ``context(round, previous status)`` builds each
    round's StageContext. Stops at the first failed round, or early where a round's
    ``spec.stopWhen`` says its held-out gain was too small (``chain.stop_decision``): that round keeps
    a ``ChainStop`` condition, the rounds after it are saved as not run with reason ``ChainStopped``.
    A rerun decides the same from the saved statuses, so it stops at the same round."""
    out = ChainRun()
    for i, r in enumerate(rounds):
        previous = statuses.load(r.spec.previousRound)[0] if r.spec.previousRound else None
        status = drive_round(r, context(r, previous), statuses, ui(r))
        out.results.append((r, status))
        if status.phase != Phase.SUCCEEDED:
            break
        decision = stop_decision(r.name, r.spec.stopWhen, status, previous)
        if decision.stop:
            mark_stopped(status, decision)
            statuses.save(r.name, status, spec_hash(r))
            for later in rounds[i + 1:]:
                saved, _ = statuses.load(later.name)
                if saved is None or saved.phase != Phase.SUCCEEDED:  # a round that ran before keeps its result
                    statuses.save(later.name, not_run_status(decision), spec_hash(later))
            out.stopped, out.not_run = decision, [later.name for later in rounds[i + 1:]]
            break
    return out
