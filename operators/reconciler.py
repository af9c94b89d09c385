"""Level-triggered reconciliation of one LoopRound: the shared state machine, driven on Kubernetes.

Each step reads the whole desired state (the live object's spec) and observed state (``.status``, the
training Job), does the next piece of work and writes ``.status``. Nothing depends on which event
woke it, so a restarted operator resumes exactly where ``.status`` says: finished stages are never
redone, a running data stage is re-entered (stages are idempotent: their outputs are keyed by their
inputs), and the training Job is found by its deterministic name instead of being created twice.

One :class:`RoundReconciler` per LoopRound runs inside a kopf daemon; it is the only writer of that
round's ``.status``, so status writes never race. That is the cluster's "one runner per round" (the
local runner needs a lease, ``shared/loop/lease.py``): the chart runs one operator replica with the
Recreate strategy (no two operators during a rollout), and kopf runs one daemon per object. The
compare-and-swap token of ``.status`` is the LoopRound's ``metadata.resourceVersion``; the status
patch (``Kube.patch_round_status``) is a merge patch without it, which is safe only under that
single-writer rule, and a terminal status is never rewritten here (``step`` returns at Succeeded or
Failed before any work), so a late failure cannot replace Succeeded.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import ValidationError

from looptool.operators import jobs as jobs_
from looptool.operators import rayjobs as rayjobs_
from looptool.operators.executor import StageExecutor
from looptool.operators.kube import Kube, KubeError
from looptool.operators.metrics import OperatorMetrics
from looptool.operators.settings import OperatorSettings, TrainerJobSettings
from looptool.shared.loop.chain import (
    CHAIN_STOPPED,
    GATE_REASONS,
    PREVIOUS_FAILED,
    PreviousGate,
    classify_failure,
    stop_decision,
)
from looptool.shared.loop.manifest import LoopRound, ManifestError, StopSpec, parse_round
from looptool.shared.loop.preflight import PreflightFailed
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
from looptool.shared.models import ModelNotFound
from looptool.shared.records import Progress
from looptool.shared.storage.base import StorageError

log = logging.getLogger("looptool.operator")

# Returned by a step: run the next step now / wait for a wake-up at most this long / stop.
NOW = 0.0
IDLE = 3600.0


class InvalidSpec(ValueError):
    pass


@dataclass
class Runtime:
    """What every round's reconciler shares inside one operator process."""

    settings: OperatorSettings
    kube: Kube
    executor: StageExecutor
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    stage_pool: ThreadPoolExecutor | None = None
    wakers: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stage_pool is None:
            self.stage_pool = ThreadPoolExecutor(self.settings.maxConcurrentStages, thread_name_prefix="stage")

    def waker(self, ns: str, name: str) -> asyncio.Event:
        return self.wakers.setdefault((ns, name), asyncio.Event())

    def wake(self, ns: str, name: str) -> None:
        ev = self.wakers.get((ns, name))
        if ev is not None:
            ev.set()

    def wake_namespace(self, ns: str) -> None:
        """Wake every round in ``ns`` (a round finished: rounds chained after it may start)."""
        for (n, _), ev in list(self.wakers.items()):
            if n == ns:
                ev.set()

    def close(self) -> None:
        """Release threads and connections. A data stage still running in a worker thread finishes on
        its own (its result is dropped; the next operator re-enters the stage)."""
        if self.stage_pool is not None:
            self.stage_pool.shutdown(wait=False, cancel_futures=True)
        self.kube.close()


def parse_status(raw: Any) -> RoundStatus:
    """``.status`` as the state machine's model; unknown keys (another writer, older CRD) are dropped."""
    if not isinstance(raw, dict):
        return RoundStatus()
    known = {k: v for k, v in raw.items() if k in RoundStatus.model_fields}
    try:
        return RoundStatus.model_validate(known)
    except ValidationError:
        # Keep what can be trusted; the phase decides what happens next.
        phase = raw.get("phase")
        try:
            return RoundStatus(phase=Phase(phase)) if phase else RoundStatus()
        except ValueError:
            return RoundStatus()


def validate(obj: dict[str, Any], trainer: TrainerJobSettings | None = None) -> LoopRound:
    """Schema + semantic checks through the pydantic models, plus what only the operator cares about
    (``trainer``: the operator's Job settings, whose image allow-list spec.resources.trainerImage must meet)."""
    meta = obj.get("metadata") or {}
    manifest = {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace") or "default"},
        "spec": obj.get("spec"),
    }
    try:
        lr = parse_round(manifest, source=f"LoopRound {meta.get('namespace')}/{meta.get('name')}")
    except ManifestError as exc:
        raise InvalidSpec(str(exc)) from None
    spec = lr.spec
    problems = []
    if spec.previousRound == lr.name:
        problems.append("field 'spec.previousRound': a round cannot continue from itself")
    if spec.training.nnodes > 1:  # a KubeRay RayJob (operators/rayjobs.py); verl is the trainer that runs on Ray
        if spec.training.backend != "verl":
            problems.append("field 'spec.training.nnodes': multi-node training needs training.backend: verl "
                            "(the CPU trainer runs on one node); set nnodes to 1")
        if spec.training.gpus < 1:
            problems.append("field 'spec.training.gpus': multi-node training needs the GPUs per node (gpus >= 1)")
    if spec.toolset.file and not spec.toolset.file.startswith(("s3://", "file://", "/")):
        problems.append(
            "field 'spec.toolset.file': a relative path means nothing inside the cluster; "
            "use an absolute path in the service image, a file:// or s3:// URI, or toolset.uri / toolset.bfcl"
        )
    if trainer is not None and (image := trainer.image_problem(spec.resources.trainerImage)):
        problems.append(image)
    if problems:
        raise InvalidSpec("\n".join(problems))
    return lr


def _summary(counts: dict[str, int], limit: int = 6) -> str:
    return ", ".join(f"{k}={v}" for k, v in list(counts.items())[:limit])


class RoundReconciler:
    def __init__(self, rt: Runtime, body: Any, logger: logging.Logger | logging.LoggerAdapter[Any] | None = None):
        self.rt = rt
        self.body = body  # kopf's live body: spec/metadata updates arrive here
        self.log = logger or log
        meta = body["metadata"]
        self.ns: str = meta.get("namespace") or "default"
        self.name: str = meta["name"]
        self.status = parse_status(body.get("status"))
        self._written: dict[str, Any] | None = body.get("status") if isinstance(body.get("status"), dict) else None
        self._progress: Progress | None = None
        self._attempts: dict[str, int] = {}
        self._last_invalid = ""
        self._last_model_problem = ""
        self._last_pod_check = 0.0
        self._image_pull: tuple[str, str] | None = None  # (reason, message) while the trainer pod cannot pull its image
        self._rayjobs_served = False  # KubeRay's RayJob API was found (checked until it is)
        self._stopped: Any = None

    def stopping(self) -> bool:
        return self._stopped is not None and bool(self._stopped)

    # ------------------------------------------------------------------------------ plumbing

    def snapshot(self) -> dict[str, Any]:
        return copy.deepcopy({k: self.body[k] for k in self.body})

    async def write(self) -> None:
        """Write ``.status`` if it changed (observedGeneration follows metadata.generation)."""
        gen = (self.body.get("metadata") or {}).get("generation")
        if isinstance(gen, int):
            self.status.observedGeneration = gen
        data = self.status.to_k8s()
        if data == self._written:
            return
        await self.rt.kube.patch_round_status(self.ns, self.name, data)
        self._written = data
        plan = ((self.body.get("metadata") or {}).get("labels") or {}).get("looptool.io/plan")
        if plan:  # a LoopPlan summarises this round: let it look
            self.rt.wake(self.ns, f"plan/{plan}")
        self.rt.metrics.set_phase(self.ns, self.name, self.status.phase.value, (self.body.get("spec") or {}).get("round"))

    async def event(self, type_: str, reason: str, message: str) -> None:
        try:
            await self.rt.kube.event(self.snapshot(), type_, reason, message)
        except Exception as exc:  # events are best effort; never block reconciliation on them
            self.log.debug("event %s not recorded: %s", reason, exc)

    async def _in_thread(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.rt.stage_pool, fn)

    # ------------------------------------------------------------------------------ the loop

    async def run(self, stopped: Any = None) -> None:
        """Reconcile until the round is terminal or ``stopped`` (kopf's daemon flag) becomes true."""
        self._stopped = stopped
        waker = self.rt.waker(self.ns, self.name)
        try:
            while not self.stopping():
                waker.clear()
                started = time.perf_counter()
                try:
                    delay = await self.step()
                    self.rt.metrics.reconciles.labels("ok").inc()
                except KubeError as exc:  # API trouble: retry later, state is safe in .status
                    self.log.warning("reconcile of %s/%s: %s; retrying", self.ns, self.name, exc)
                    self.rt.metrics.reconciles.labels("api_error").inc()
                    delay = min(self.rt.settings.pollSeconds, 5.0)
                finally:
                    self.rt.metrics.reconcile_seconds.observe(time.perf_counter() - started)
                if delay is None:
                    return
                if delay > 0:
                    await self._sleep(waker, delay)
        finally:
            self.rt.wakers.pop((self.ns, self.name), None)

    async def _sleep(self, waker: asyncio.Event, delay: float) -> None:
        """Until woken (spec change, Job event, a round finished), stopped, or ``delay`` passes."""
        waiters = [asyncio.ensure_future(waker.wait())]
        if self._stopped is not None and hasattr(self._stopped, "wait"):
            waiters.append(asyncio.ensure_future(self._stopped.wait()))
        try:
            await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def step(self) -> float | None:
        """One level-triggered step. Returns how long to wait before the next, or None when done."""
        obj = self.snapshot()
        if self.status.phase in TERMINAL:
            await self.write()  # observedGeneration of later spec edits; no work
            self.rt.metrics.set_phase(self.ns, self.name, self.status.phase.value, (obj.get("spec") or {}).get("round"))
            self.rt.metrics.set_accuracy(self.ns, self.name, self.status.accuracy)
            return None
        try:
            lr = validate(obj, self.rt.settings.trainer)
        except InvalidSpec as exc:
            return await self._invalid(str(exc))
        if rayjobs_.is_multi_node(lr.spec) and self.status.stage("train").state != "Done":
            problem = await self._multi_node_problem()
            if problem:
                # Not a spec edit away from working (KubeRay may get installed): look again every poll.
                return await self._invalid(problem, retry=self.rt.settings.pollSeconds)
        if self._last_invalid:
            self._last_invalid = ""
            await self.event("Normal", "SpecValid", "spec is valid now; reconciling")
        self.status.set_condition("SpecValid", True, "Valid", "")
        if self.status.reason == "InvalidSpec":  # fixed (or KubeRay installed): the old complaint goes
            self.status.reason = self.status.message = ""

        previous = None
        if lr.spec.previousRound:
            previous = await self._previous(lr.spec.previousRound)
            if previous is None:
                await self.write()
                return IDLE  # woken when a round in this namespace finishes

        phase = self.status.phase
        if phase == Phase.PENDING:
            blocked = await self._check_models(lr)
            if blocked is not None:
                return blocked
            begin(self.status)
            self.status.set_condition("Ready", False, "InProgress", "round started")
            self.status.progress = "starting"
            await self.write()
            await self.event("Normal", "RoundStarted", f"round {lr.spec.round} started" + (f" from {lr.spec.previousRound}" if previous else ""))
            return NOW
        if phase == Phase.TRAINING:
            return await self._train(lr, obj, previous)
        return await self._data_stage(phase, lr, previous)

    # ------------------------------------------------------------------------------ validation / chaining

    async def _multi_node_problem(self) -> str:
        """Why a multi-node round cannot run here ("" = it can): the operator's work-volume settings, or
        a cluster without KubeRay's RayJob API (nothing is created until it is served)."""
        problems = rayjobs_.setting_problems(self.rt.settings.trainer)
        if problems:
            return "\n".join(problems)
        if not self._rayjobs_served:
            self._rayjobs_served = await self.rt.kube.serves(rayjobs_.API_VERSION, rayjobs_.PLURAL)
        return "" if self._rayjobs_served else rayjobs_.missing_crd_message()

    async def _invalid(self, message: str, retry: float = IDLE) -> float:
        self.status.set_condition("SpecValid", False, "InvalidSpec", message)
        self.status.set_condition("Ready", False, "InvalidSpec", message)
        self.status.reason, self.status.message = "InvalidSpec", message
        await self.write()
        if message != self._last_invalid:
            self._last_invalid = message
            self.rt.metrics.invalid.inc()
            await self.event("Warning", "InvalidSpec", message)
        return retry  # an update of the spec wakes us

    async def _check_models(self, lr: LoopRound) -> float | None:
        """Before the round starts: the models it loads exist (``shared/loop/preflight``, run by the
        executor, which holds the storage settings). Until they do nothing is created and no stage
        runs; the check is repeated every ``pollSeconds``, so importing the model is the whole fix.
        The same check lists every other reference that is not there (``preflight.check_round``:
        s3:// toolset and datasets, the store) as an ``InvalidSpec`` reason, all problems at once."""
        condition = "ModelsFound"
        try:
            await self._in_thread(lambda: self.rt.executor.check_models(lr))
        except ModelNotFound as exc:
            reason, message = "ModelNotFound", str(exc)
        except PreflightFailed as exc:  # every reference that is not there (toolset, datasets, ...), one line each
            condition, reason, message = "ReferencesFound", "InvalidSpec", str(exc)
        except StorageError as exc:
            reason, message = "ModelCheckFailed", f"LoopRound {lr.name}: cannot check its models: {str(exc).splitlines()[0]}"
        else:
            self.status.set_condition("ModelsFound", True, "Found", "")
            if any(c.type == "ReferencesFound" for c in self.status.conditions):
                self.status.set_condition("ReferencesFound", True, "Found", "")
            if self.status.reason in ("ModelNotFound", "ModelCheckFailed", "InvalidSpec"):
                self.status.reason = self.status.message = ""
            self._last_model_problem = ""
            return None
        self.status.set_condition(condition, False, reason, message)
        self.status.set_condition("Ready", False, reason, message)
        self.status.reason, self.status.message = reason, message
        await self.write()
        if message != self._last_model_problem:
            self._last_model_problem = message
            await self.event("Warning", reason, message)
        return self.rt.settings.pollSeconds

    async def _previous(self, prev_name: str) -> RoundStatus | None:
        """The previous round's status once it succeeded (``shared/loop/chain``); until then None,
        with the reason in the Ready condition."""
        prev = await self.rt.kube.get_round(self.ns, prev_name)
        gate = PreviousGate(prev_name, None if prev is None else parse_status(prev.get("status")))
        if gate.open:
            if self.status.phase == Phase.PENDING and prev is not None and await self._chain_stopped(prev_name, prev, gate.status):
                return None
            if self.status.reason in GATE_REASONS or self.status.reason == CHAIN_STOPPED:
                self.status.reason = self.status.message = ""
            return gate.status
        if gate.status is None:
            self.status.set_condition("Ready", False, gate.reason, f"LoopRound {prev_name!r} does not exist (yet)")
            return None
        if gate.reason == PREVIOUS_FAILED:
            msg = f"LoopRound {prev_name!r} failed ({gate.status.reason}); re-create it or point spec.previousRound elsewhere"
        else:
            msg = f"waiting for LoopRound {prev_name!r} (phase {gate.status.phase.value})"
        self.status.set_condition("Ready", False, gate.reason, msg)
        self.status.progress = f"waiting for {prev_name}"
        return None

    async def _chain_stopped(self, prev_name: str, prev: dict[str, Any], prev_status: RoundStatus | None) -> bool:
        """Did the round this one continues from end the chain (its ``spec.stopWhen``: a held-out gain
        below the threshold, ``shared/loop/chain.stop_decision``)? Then this round is not started: it
        stays Pending with reason ChainStopped (a LoopPlan does the same by not creating it)."""
        spec = prev.get("spec") or {}
        try:
            stop = StopSpec.model_validate(spec.get("stopWhen") or {})
        except ValidationError:
            return False
        if stop.minHeldoutGain is None or prev_status is None:
            return False
        before = None
        if spec.get("previousRound"):
            earlier = await self.rt.kube.get_round(self.ns, spec["previousRound"])
            before = parse_status(earlier.get("status")) if earlier else None
        decision = stop_decision(prev_name, stop, prev_status, before)
        if not decision.stop:
            return False
        first = self.status.reason != CHAIN_STOPPED
        self.status.reason = CHAIN_STOPPED
        self.status.message = f"not run: the chain stopped after {prev_name}: {decision.message}"
        self.status.set_condition("Ready", False, CHAIN_STOPPED, self.status.message)
        self.status.progress = f"chain stopped after {prev_name}"
        if first:
            await self.event("Normal", CHAIN_STOPPED, self.status.message)
        return True

    # ------------------------------------------------------------------------------ data stages

    def _on_progress(self, p: Progress) -> None:  # called from the stage's worker thread
        self._progress = p

    async def _data_stage(self, phase: Phase, lr: LoopRound, previous: RoundStatus | None) -> float | None:
        stage = STAGE_OF[phase]
        st = self.status.stage(stage)
        resumed = st.state == "Running"
        start_stage(self.status, stage)
        self.status.progress = f"{stage} running"
        await self.write()
        await self.event("Normal", "StageResumed" if resumed else "StageStarted", f"{stage} {'resumed' if resumed else 'started'}")

        work = self.status.model_copy(deep=True)  # the executor mutates its own copy in a thread
        self._progress = None
        started = time.perf_counter()
        fut = asyncio.get_running_loop().run_in_executor(
            self.rt.stage_pool, lambda: self.rt.executor.run_data_stage(phase, lr, work, previous, self._on_progress)
        )
        seen: Progress | None = None
        every = self.rt.settings.progressSeconds
        last_write = time.monotonic()
        while True:
            done, _ = await asyncio.wait({fut}, timeout=min(every, 1.0))
            if done:
                break
            if self.stopping():
                # Operator shutting down or round deleted: leave the stage to the next operator
                # (it re-enters the stage; outputs are keyed by inputs). The worker's result is dropped.
                return None
            p = self._progress
            if p is not None and p is not seen and time.monotonic() - last_write >= every:
                seen, last_write = p, time.monotonic()
                await self._record_progress(stage, p)
        seen = self._progress
        try:
            fut.result()
        except Exception as exc:
            return await self._stage_failed(stage, exc)

        # Adopt the executor's outputs, keep our bookkeeping.
        work.conditions = self.status.conditions
        work.stages[stage].state, work.stages[stage].startedAt = "Running", st.startedAt or work.stages[stage].startedAt
        self.status = work
        st = self.status.stage(stage)
        if seen is not None and seen.total:
            st.done, st.total = seen.total, seen.total
        self._attempts.pop(stage, None)
        finish_stage(self.status, stage)
        self.status.progress = f"{stage} done" if self.status.phase != Phase.SUCCEEDED else "done"
        self.rt.metrics.stage_seconds.labels(stage).observe(time.perf_counter() - started)
        self.rt.metrics.stage_progress.labels(self.ns, self.name, stage).set(1.0)
        if self.status.accuracy:
            self.rt.metrics.set_accuracy(self.ns, self.name, self.status.accuracy)
        await self.write()
        await self.event("Normal", "StageSucceeded", f"{stage} finished" + (f": {_summary(st.counts)}" if st.counts else ""))
        if self.status.phase == Phase.SUCCEEDED:
            await self._finished()
            return None
        return NOW

    async def _record_progress(self, stage: str, p: Progress) -> None:
        st = self.status.stage(stage)
        st.done, st.total = p.done, p.total
        if p.message:
            st.message = p.message[:300]
        self.status.progress = f"{stage} {p.done}/{p.total}" if p.total else f"{stage} {p.done}"
        if p.total:
            self.rt.metrics.stage_progress.labels(self.ns, self.name, stage).set(p.done / p.total)
        await self.write()

    async def _stage_failed(self, stage: str, exc: Exception) -> float | None:
        failure = classify_failure(exc)  # the same classification as the local runner
        reason, message = failure.reason, failure.message
        self.rt.metrics.stage_failures.labels(stage, reason).inc()
        attempts = self._attempts.get(stage, 0) + 1
        self._attempts[stage] = attempts
        if failure.internal:
            self.log.exception("stage %s of %s/%s raised", stage, self.ns, self.name, exc_info=exc)
        if attempts <= self.rt.settings.stageRetries:
            self.status.stage(stage).message = f"attempt {attempts} failed: {reason}: {message}"[:500]
            await self.write()
            await self.event("Warning", "StageRetrying", f"{stage} attempt {attempts} failed ({reason}: {message}); retrying")
            return self.rt.settings.retryBackoffSeconds * attempts or NOW
        fail(self.status, reason, f"{stage}: {message}")
        self.status.progress = f"failed in {stage}"
        await self.write()
        await self._finished()
        return None

    # ------------------------------------------------------------------------------ training Job

    async def _train(self, lr: LoopRound, obj: dict[str, Any], previous: RoundStatus | None) -> float | None:
        kube, cfg = self.rt.kube, self.rt.settings
        meta = obj["metadata"]
        # One node: a batch/v1 Job. Several: a KubeRay RayJob (verl on a Ray cluster of nnodes pods).
        multi = rayjobs_.is_multi_node(lr.spec)
        outcome_of: Callable[[dict[str, Any]], tuple[str, str, str]]
        if multi:
            api, plural, kind, label = rayjobs_.API_VERSION, rayjobs_.PLURAL, "RayJob", "rayjob"
            name, outcome_of = rayjobs_.rayjob_name(self.name, meta["uid"]), rayjobs_.rayjob_outcome
        else:
            api, plural, kind, label = "batch/v1", "jobs", "Job", "job"
            name, outcome_of = jobs_.job_name(self.name, meta["uid"]), jobs_.job_outcome
        st = self.status.stage("train")
        job = await kube.get(api, plural, self.ns, name)
        if job is None:
            try:
                request = await self._in_thread(lambda: self.rt.executor.training_request(lr, self.status.model_copy(deep=True), previous))
            except Exception as exc:
                return await self._stage_failed("train", exc)
            # The same training run already finished (its Job was deleted afterwards): reuse the result.
            result = await self._in_thread(lambda: self.rt.executor.read_training_result(request["output_prefix"]))
            if result is not None:
                return await self._train_done(result, f"result of run {request.get('run_id')} already in storage")
            await kube.create("v1", "configmaps", self.ns, jobs_.request_configmap(obj, request))
            # The work directory first: it outlives this Job (a re-created Job resumes from it).
            claim = jobs_.work_claim(obj, lr.spec, cfg.trainer)
            if claim is not None:
                _, claimed = await kube.create("v1", "persistentvolumeclaims", self.ns, claim)
                if claimed:
                    await self.event("Normal", "WorkVolumeCreated", f"trainer work volume {claim['metadata']['name']} created "
                                     f"({claim['spec']['resources']['requests']['storage']})")
            if multi:
                body = rayjobs_.ray_job(obj, lr.spec, request, cfg.trainer)
            else:
                body = jobs_.training_job(obj, lr.spec, request, cfg.trainer)
            job, created = await kube.create(api, plural, self.ns, body)
            if outcome_of(job)[0] == "Queued":
                self._queued(name, job, kind)
            else:
                start_stage(self.status, "train")
                self.status.progress = f"train: {label} created"
                st.message = f"{label} {name}"
            await self.write()
            if created:
                self.rt.metrics.jobs.labels("created").inc()
                gpus, nodes = lr.spec.training.gpus, lr.spec.training.nnodes
                queue = jobs_.queue_name(lr.spec, cfg.trainer)
                where = f"{gpus} x {cfg.trainer.gpuResource}" if gpus else "CPU"
                if multi:
                    where = f"{nodes} nodes: a Ray head and {nodes - 1} workers, {gpus} x {cfg.trainer.gpuResource} each"
                await self.event("Normal", "JobCreated", f"training {kind} {name} created ({where})"
                                 + (f", queued in Kueue LocalQueue {queue!r}" if queue else ""))
            return cfg.pollSeconds

        outcome, reason, message = outcome_of(job)
        if outcome == "Queued":
            was = st.state
            self._queued(name, job, kind)
            await self.write()
            if was != "Queued":
                await self.event("Normal", "JobQueued", self.status.stage("train").message)
            return cfg.pollSeconds
        if outcome == "Running":
            js = job.get("status") or {}
            admitted = st.state == "Queued"
            start_stage(self.status, "train")  # no-op when already Running (e.g. after a restart)
            if admitted:
                await self.event("Normal", "JobAdmitted", f"training {kind} {name} is no longer suspended; training")
            if multi:
                progress = rayjobs_.rayjob_progress(job)
                settled = js.get("jobStatus") == "RUNNING"
            else:
                progress = f"train: {js.get('active', 0)} active, {js.get('failed', 0)} failed pods"
                settled = bool(js.get("ready"))
            if time.monotonic() - self._last_pod_check > cfg.pollSeconds * 2 and not settled:
                self._last_pod_check = time.monotonic()
                pods = await self._pods(name, multi)
                details = jobs_.pod_failure_details(pods)
                st.message = f"{label} {name}" + (f": {details}" if details else "")
                pull = jobs_.image_pull_problem(pods)
                if pull is not None and self._image_pull is None:  # once per stuck spell (the reason flips on each retry)
                    await self.event("Warning", "TrainerImagePullFailed", f"training {kind} {name}: {pull[1]}")
                self._image_pull = pull
            elif settled:
                self._image_pull = None
            if self._image_pull is not None:
                # The Job stays active while the kubelet retries the pull: say why the round is not training.
                self.status.set_condition("Ready", False, self._image_pull[0], f"train: {label} {name}: {self._image_pull[1]}")
            self.status.progress = progress
            await self.write()
            return cfg.pollSeconds
        if outcome == "Succeeded":
            prefix = (meta_ann := (job.get("metadata") or {}).get("annotations") or {}).get(jobs_.ANN_OUTPUT, "")
            result = await self._in_thread(lambda: self.rt.executor.read_training_result(prefix)) if prefix else None
            if result is None:
                self.rt.metrics.jobs.labels("failed").inc()
                fail(self.status, "TrainingResultMissing",
                     f"train: {label} {name} completed but {prefix or '<no output prefix>'}/result.json is missing")
                self.status.progress = "failed in train"
                await self.write()
                await self._finished()
                return None
            self.rt.metrics.jobs.labels("succeeded").inc()
            return await self._train_done(result, f"{label} {name} succeeded (run {meta_ann.get(jobs_.ANN_RUN_ID, '?')})")
        # Failed
        self.rt.metrics.jobs.labels("failed").inc()
        details = jobs_.pod_failure_details(await self._pods(name, multi))
        msg = f"train: {label} {name} failed: {reason}" + (f": {message}" if message else "") + (f"; {details}" if details else "")
        self.rt.metrics.stage_failures.labels("train", "TrainingJobFailed").inc()
        fail(self.status, "TrainingJobFailed", msg)
        self.status.progress = "failed in train"
        await self.write()
        await self._finished()
        return None

    def _queued(self, name: str, job: dict[str, Any], kind: str = "Job") -> None:
        """A suspended Job or RayJob: waiting for admission (Kueue), or preempted and waiting again. Not running."""
        st = self.status.stage("train")
        queue = ((job.get("metadata") or {}).get("labels") or {}).get(jobs_.LABEL_KUEUE_QUEUE, "")
        where = f"admission by Kueue LocalQueue {queue!r}" if queue else f"the {kind} to be resumed (spec.suspend)"
        again = " again (preempted or evicted; it resumes from its last checkpoint)" if st.startedAt else ""
        st.state = "Queued"
        st.message = f"{kind.lower()} {name} is suspended, waiting for {where}{again}"
        self.status.progress = "train: queued"
        self.status.set_condition("Ready", False, "Queued", st.message)

    async def _train_done(self, result: dict[str, Any], note: str) -> float | None:
        try:
            self.rt.executor.record_training_result(self.status, result)
        except Exception as exc:
            return await self._stage_failed("train", exc)
        st = self.status.stage("train")
        st.message = note
        started = st.startedAt
        finish_stage(self.status, "train")
        self.status.progress = "train done"
        await self.write()
        await self.event("Normal", "StageSucceeded", f"train finished: {note}; checkpoint {self.status.checkpointUri}")
        if started:
            self.rt.metrics.stage_seconds.labels("train").observe(max(0.0, _age(started)))
        return NOW

    async def _pods(self, job: str, multi: bool = False) -> list[dict[str, Any]]:
        # A Job's pods carry its name; a RayJob's (head, workers, submitter) carry the round's labels.
        try:
            pods = await self.rt.kube.list("v1", "pods", self.ns, jobs_.selector(self.name) if multi else {"job-name": job})
        except KubeError:
            return []
        return pods

    # ------------------------------------------------------------------------------ terminal

    async def _finished(self) -> None:
        phase = self.status.phase
        self.rt.metrics.rounds.labels(phase.value).inc()
        if phase == Phase.SUCCEEDED:
            acc = ", ".join(f"{k}={v:.3f}" for k, v in self.status.accuracy.items())
            await self.event("Normal", "RoundSucceeded", "round finished" + (f"; accuracy {acc}" if acc else ""))
        else:
            await self.event("Warning", "RoundFailed", f"{self.status.reason}: {self.status.message}")
        self.rt.wake_namespace(self.ns)


def _age(iso: str) -> float:
    try:
        return (dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(iso)).total_seconds()
    except ValueError:
        return 0.0

