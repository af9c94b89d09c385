"""kopf wiring: which events reach which code. The logic lives in :mod:`looptool.operators.reconciler`.

* a **daemon** per LoopRound runs its :class:`RoundReconciler` (the single writer of its ``.status``);
* **create/update/resume** handlers validate and wake the daemon at once (edge-triggered hints for a
  level-triggered loop — missing one changes nothing but latency);
* a **Job event** handler wakes the owning round when its training Job (or, multi-node, its KubeRay
  RayJob) changes; on a cluster without KubeRay kopf only warns that it cannot watch RayJobs;
* a **delete** handler (kopf's finalizer) removes the round's Jobs, RayJobs, request ConfigMaps and
  work-volume claims right away instead of leaving them to the garbage collector.

``make_registry(runtime)`` builds a fresh registry, so tests and the benchmark can run several
operators (each with its own executor and API URL) in one process.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from looptool.operators import jobs as jobs_
from looptool.operators import rayjobs as rayjobs_
from looptool.operators.kube import NotFound
from looptool.operators.plan import PLAN_PLURAL, PlanReconciler
from looptool.operators.reconciler import InvalidSpec, RoundReconciler, Runtime, parse_status, validate
from looptool.shared.loop.manifest import GROUP, PLURAL, VERSION
from looptool.shared.loop.state import Phase

ROUNDS = (GROUP, VERSION, PLURAL)


def configure_kopf(settings: kopf.OperatorSettings, rt: Runtime) -> None:
    """kopf settings every deployment of this operator needs."""
    settings.persistence.finalizer = rt.settings.finalizer
    # kopf's bookkeeping in our own annotations; .status belongs to the state machine (and the CRD
    # schema would prune kopf's status fields anyway).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP, key="last-handled-configuration")
    settings.posting.level = logging.WARNING  # our Events are explicit; kopf posts only its warnings
    # Watch the configured namespaces/resources only: no RBAC for listing namespaces or CRDs needed.
    settings.scanning.disabled = True
    settings.execution.max_workers = max(4, rt.settings.apiWorkers)
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330


def make_registry(rt: Runtime) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_kopf(settings, rt)


    @kopf.on.login(registry=registry)
    def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        if rt.settings.apiUrl:
            return kopf.ConnectionInfo(server=rt.settings.apiUrl, insecure=True, default_namespace="default")
        return kopf.login_via_client(**kwargs)

    @kopf.daemon(*ROUNDS, registry=registry, id="reconcile", cancellation_timeout=5.0)
    async def _reconcile(body: kopf.Body, stopped: kopf.DaemonStopped, logger: kopf.Logger, **_: Any) -> None:
        await RoundReconciler(rt, body, logger).run(stopped)

    def _hint(body: kopf.Body, logger: kopf.Logger, what: str) -> None:
        meta = body["metadata"]
        try:
            validate({k: body[k] for k in body}, rt.settings.trainer)
        except InvalidSpec as exc:  # the daemon reports it in .status and an Event
            logger.warning("%s: invalid spec: %s", what, exc)
        rt.wake(meta.get("namespace") or "default", meta["name"])

    # Handlers that wake daemons are async: they run in kopf's event loop, where asyncio.Event.set()
    # is safe (sync handlers would run in a thread pool).
    @kopf.on.create(*ROUNDS, registry=registry, id="created")
    async def _created(body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
        _hint(body, logger, "created")

    @kopf.on.resume(*ROUNDS, registry=registry, id="resumed")
    async def _resumed(body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
        _hint(body, logger, "resumed")

    @kopf.on.update(*ROUNDS, registry=registry, id="spec-changed", field="spec")
    async def _updated(body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
        phase = parse_status(body.get("status")).phase
        if phase not in (Phase.PENDING, Phase.SUCCEEDED, Phase.FAILED):
            logger.info("spec changed during %s: finished stages keep their results; the next stages use the new spec", phase.value)
        _hint(body, logger, "updated")

    @kopf.on.delete(*ROUNDS, registry=registry, id="cleanup")
    async def _deleted(body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
        meta = body["metadata"]
        ns, name = meta.get("namespace") or "default", meta["name"]
        sel = jobs_.selector(name)
        removed = 0
        for api, plural in (("batch/v1", "jobs"), (rayjobs_.API_VERSION, rayjobs_.PLURAL), ("v1", "configmaps"),
                            ("v1", "persistentvolumeclaims")):
            try:
                items = await rt.kube.list(api, plural, ns, sel)
            except NotFound:  # RayJobs on a cluster without KubeRay
                continue
            for item in items:
                removed += await rt.kube.delete(api, plural, ns, item["metadata"]["name"])
        rt.metrics.forget(ns, name)
        logger.info("deleted %d owned objects of %s/%s", removed, ns, name)

    if rt.settings.loopPlans:
        @kopf.daemon(GROUP, VERSION, PLAN_PLURAL, registry=registry, id="plan", cancellation_timeout=5.0)
        async def _plan(body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any) -> None:
            await PlanReconciler(rt, body).run(stopped)

        @kopf.on.update(GROUP, VERSION, PLAN_PLURAL, registry=registry, id="plan-changed", field="spec")
        async def _plan_changed(body: kopf.Body, **_: Any) -> None:
            rt.wake(body["metadata"].get("namespace") or "default", f"plan/{body['metadata']['name']}")

    @kopf.on.event("batch", "v1", "jobs", registry=registry, id="job-changed",
                   labels={jobs_.LABEL_MANAGED_BY: jobs_.MANAGED_BY})
    @kopf.on.event(rayjobs_.GROUP, "v1", rayjobs_.PLURAL, registry=registry, id="rayjob-changed",
                   labels={jobs_.LABEL_MANAGED_BY: jobs_.MANAGED_BY})
    async def _job_event(body: kopf.Body, **_: Any) -> None:
        meta = body.get("metadata") or {}
        owner = (meta.get("labels") or {}).get(jobs_.LABEL_ROUND)
        if owner:
            rt.wake(meta.get("namespace") or "default", owner)

    return registry
