"""The data-stage executor: the operator's one dependency on the data plane.

The reconciler decides *when* a stage runs and records the outcome in ``.status``; the executor does
the stage's work. Production uses :class:`ServiceExecutor` (``looptool.shared.loop.stages``, which calls
the gRPC services and writes to object storage). Tests and the benchmark inject
``TestStageExecutor`` from ``tests/support/fake_kube.py``.

Executors are called from worker threads (data stages block for minutes to hours on gRPC streams).
A failure is reported by raising an exception with ``reason`` and ``message`` attributes
(``stages.StageError``); anything else counts as an internal error.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Callable, Protocol

from looptool.services.inference.client import InferenceClient
from looptool.services.toolsim import bfcl_env
from looptool.shared.config import SERVICE_NAMES, LoopToolConfig
from looptool.shared.loop import stages
from looptool.shared.loop.chain import round_base_uri
from looptool.shared.loop.manifest import LoopRound
from looptool.shared.loop.preflight import check_round
from looptool.shared.loop.state import Phase, RoundStatus
from looptool.shared.records import Progress, result_to_stage
from looptool.shared.storage import NotFound, split_uri

ProgressFn = Callable[[Progress], None]


class StageExecutor(Protocol):
    def check_models(self, round: LoopRound) -> None:
        """Before the round starts: raise ``ModelNotFound`` unless the models it loads exist
        (``shared.loop.preflight.check_round_models``), ``PreflightFailed`` listing every other
        reference that is not there (``shared.loop.preflight.check_round``), ``StorageError`` if that
        cannot be checked."""

    def run_data_stage(
        self, phase: Phase, round: LoopRound, status: RoundStatus, previous: RoundStatus | None, on_progress: ProgressFn
    ) -> None:
        """Do the phase's work; record outputs in ``status.stages[STAGE_OF[phase]]``; raise on failure."""

    def training_request(self, round: LoopRound, status: RoundStatus, previous: RoundStatus | None) -> dict[str, Any]:
        """The JSON the trainer Job runs with (``run_id``, ``output_prefix``, dataset, config, ...)."""

    def record_training_result(self, status: RoundStatus, result: dict[str, Any]) -> None:
        """Record ``<output_prefix>/result.json`` (checkpoint URI, metrics) in ``status``."""

    def read_training_result(self, output_prefix: str) -> dict[str, Any] | None:
        """``<output_prefix>/result.json`` as written by the trainer Job, or None if absent."""


class ServiceExecutor:
    """Data stages through the LoopTool gRPC services (``looptool.shared.loop.stages``)."""

    def __init__(self, config: LoopToolConfig):
        self.config = config
        self._lock = threading.Lock()

    def _addresses(self) -> dict[str, str]:
        svc = self.config.services
        out = {name: getattr(svc, name).address for name in SERVICE_NAMES}
        if svc.judge is not None:
            out["judge"] = svc.judge.address
        return out

    def _endpoints(self) -> dict[str, list[str]]:
        """Each service's replicas as configured (``services.<name>.endpoints``): stages shard over them."""
        svc = self.config.services
        eps = {name: list(getattr(svc, name).endpoints) for name in SERVICE_NAMES if getattr(svc, name).endpoints}
        if svc.judge is not None and svc.judge.endpoints:
            eps["judge"] = list(svc.judge.endpoints)
        return eps

    def _ctx(self, round: LoopRound, previous: RoundStatus | None) -> stages.StageContext:
        return stages.StageContext(
            round=round,
            config=self.config,
            addresses=self._addresses(),
            endpoints=self._endpoints(),
            base_uri=round_base_uri(round, self.config),
            generator=InferenceClient,
            tool_executor=bfcl_env.connect,
            previous=previous,
        )

    def check_models(self, round: LoopRound) -> None:
        # every reference the operator can see (s3:// toolset, datasets, models; the store), at once
        check_round(round, self.config, local_paths=False)

    def run_data_stage(self, phase, round, status, previous, on_progress) -> None:
        stages.run_data_stage(phase, self._ctx(round, previous), status, on_progress)

    def training_request(self, round, status, previous) -> dict[str, Any]:
        return stages.training_request(self._ctx(round, previous), status)

    def record_training_result(self, status, result) -> None:
        stages.record_training_result(status, result_to_stage(result))

    def read_training_result(self, output_prefix: str) -> dict[str, Any] | None:
        return read_result_json(output_prefix, self.config)


def read_result_json(output_prefix: str, config: LoopToolConfig | None) -> dict[str, Any] | None:
    store, key = split_uri(output_prefix.rstrip("/") + "/result.json", config.storage.s3 if config else None)
    try:
        data = json.loads(store.get_bytes(key))
    except (NotFound, FileNotFoundError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("status", "succeeded") != "succeeded":
        return None  # not a finished run
    if "checkpointUri" in data and "checkpoint_uri" not in data:
        data["checkpoint_uri"] = data["checkpointUri"]
    return data
