"""Run the operator: build the runtime (settings, API client, executor, metrics) and hand it to kopf."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from looptool.operators.executor import ServiceExecutor, StageExecutor
from looptool.operators.handlers import configure_kopf, make_registry
from looptool.operators.kube import Kube
from looptool.operators.metrics import OperatorMetrics
from looptool.operators.reconciler import Runtime
from looptool.operators.settings import OperatorSettings
from looptool.shared.config import LoopToolConfig
from looptool.shared.metrics import serve_metrics

log = logging.getLogger("looptool.operator")


def build(settings: OperatorSettings, executor: StageExecutor) -> tuple[Runtime, kopf.OperatorRegistry, kopf.OperatorSettings]:
    rt = Runtime(settings=settings, kube=Kube(settings.apiUrl, workers=settings.apiWorkers), executor=executor, metrics=OperatorMetrics())
    registry = make_registry(rt)
    kopf_settings = kopf.OperatorSettings()
    configure_kopf(kopf_settings, rt)
    return rt, registry, kopf_settings


def kopf_scope(settings: OperatorSettings) -> dict[str, Any]:
    if settings.namespaces:
        return {"namespaces": list(settings.namespaces), "clusterwide": False}
    return {"namespaces": (), "clusterwide": True}


async def operate(
    settings: OperatorSettings,
    executor: StageExecutor,
    liveness: str | None = None,
    stop_flag: Any = None,
    ready_flag: Any = None,
) -> None:
    rt, registry, kopf_settings = build(settings, executor)
    try:
        await kopf.operator(
            registry=registry,
            settings=kopf_settings,
            standalone=True,  # one replica (Deployment strategy Recreate); no peering CRDs needed
            liveness_endpoint=liveness,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
            **kopf_scope(settings),
        )
    finally:
        rt.close()  # after kopf stopped every daemon: the API client and the stage threads


def run(settings: OperatorSettings, config: LoopToolConfig, liveness: str | None = None) -> int:
    if settings.metricsPort:
        serve_metrics(settings.metricsPort, addr=config.security.metrics_host)
    scope = ", ".join(settings.namespaces) if settings.namespaces else "all namespaces"
    log.info("looptool operator watching %s; metrics on :%s", scope, settings.metricsPort or "-")
    asyncio.run(operate(settings, ServiceExecutor(config), liveness=liveness))
    return 0
