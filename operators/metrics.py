"""Operator metrics (``looptool_operator_*``), exported on ``--metrics-port`` through shared.metrics."""

from __future__ import annotations

from looptool.shared.loop.state import ORDER, Phase
from looptool.shared.metrics import counter, gauge, histogram

STAGE_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800, 86400)
PHASES = [p.value for p in ORDER] + [Phase.FAILED.value]


class OperatorMetrics:
    def __init__(self) -> None:
        self.reconciles = counter("operator", "reconciles", "Reconcile steps by result", ["result"])
        self.reconcile_seconds = histogram("operator", "reconcile_seconds", "Duration of one reconcile step (data stages excluded)")
        self.round_phase = gauge(
            "operator", "round_phase", "1 for the round's current phase, 0 for the others", ["namespace", "round", "phase"]
        )
        self.round_number = gauge("operator", "round_index", "spec.round of each LoopRound", ["namespace", "round"])
        self.round_accuracy = gauge("operator", "round_accuracy", "Accuracy measured by the round's evaluation", ["namespace", "round", "metric"])
        self.stage_progress = gauge(
            "operator", "stage_progress_ratio", "done/total of the running stage", ["namespace", "round", "stage"]
        )
        self.stage_seconds = histogram("operator", "stage_duration_seconds", "Wall time of finished stages", ["stage"], buckets=STAGE_BUCKETS)
        self.stage_failures = counter("operator", "stage_failures", "Failed stage attempts by stage and reason", ["stage", "reason"])
        self.jobs = counter("operator", "training_jobs", "Training Jobs by event (created, succeeded, failed)", ["event"])
        for event in ("created", "succeeded", "failed"):  # exported at 0 from the start: increase() then counts the first one
            self.jobs.labels(event)
        self.rounds = counter("operator", "rounds_finished", "LoopRounds reaching a terminal phase", ["phase"])
        self.invalid = counter("operator", "invalid_specs", "LoopRound specs rejected by validation")

    def set_phase(self, ns: str, name: str, phase: str, round_index: int | None = None) -> None:
        for p in PHASES:
            self.round_phase.labels(ns, name, p).set(1 if p == phase else 0)
        if round_index is not None:
            self.round_number.labels(ns, name).set(round_index)

    def set_accuracy(self, ns: str, name: str, accuracy: dict[str, float]) -> None:
        for metric, value in accuracy.items():
            self.round_accuracy.labels(ns, name, metric).set(value)

    def forget(self, ns: str, name: str, stages: list[str] = ()) -> None:  # type: ignore[assignment]
        """Drop a deleted round's series."""
        for p in PHASES:
            _remove(self.round_phase, ns, name, p)
        _remove(self.round_number, ns, name)
        for labels in list(getattr(self.round_accuracy, "_metrics", {})):
            if labels[:2] == (ns, name):
                _remove(self.round_accuracy, *labels)
        for labels in list(getattr(self.stage_progress, "_metrics", {})):
            if labels[:2] == (ns, name):
                _remove(self.stage_progress, *labels)


def _remove(metric, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass
