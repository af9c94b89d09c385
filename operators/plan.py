"""``LoopPlan``: N chained LoopRounds from one manifest.

A plan creates ``<plan>-r1 … <plan>-rN`` at once (deterministic names, owned by the plan, labelled
``looptool.io/plan``). Round 1 uses ``spec.template`` as is; round i > 1 gets ``round: i`` and
``previousRound: <plan>-r(i-1)``, so it waits for its predecessor and starts from its checkpoint and
dataset — the chaining the LoopRound reconciler already does. The plan's status summarises its
rounds (phase, current round, accuracy per round); deleting the plan deletes its rounds.

With ``spec.template.stopWhen.minHeldoutGain`` the plan creates round i only after round i-1
succeeded, and stops (phase Succeeded, reason ``ChainStopped``, later rounds ``NotRun``) when a round's
held-out gain over the round before it falls below the threshold (``shared/loop/chain.stop_decision``).
"""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from looptool.operators.kube import KubeError, owner_reference
from looptool.operators.reconciler import Runtime, parse_status
from looptool.shared.loop.chain import CHAIN_STOPPED, StopDecision, stop_decision
from looptool.shared.loop.manifest import API_VERSION, KIND, LoopRoundSpec
from looptool.shared.loop.state import Condition, Phase
from looptool.shared.records import utcnow

PLAN_KIND = "LoopPlan"
PLAN_PLURAL = "loopplans"
LABEL_PLAN = "looptool.io/plan"
MAX_ROUNDS = 50
NOT_RUN = "NotRun"  # a plan round's phase after the plan stopped early (spec.template.stopWhen)

log = logging.getLogger("looptool.operator.plan")


class LoopPlanSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rounds: int = Field(3, ge=1, le=MAX_ROUNDS, description="number of chained rounds to run")
    template: LoopRoundSpec = Field(
        ..., description="spec of round 1; later rounds copy it with round=i and previousRound=<plan>-r(i-1)"
    )

    @model_validator(mode="after")
    def _template(self) -> "LoopPlanSpec":
        if self.template.previousRound:
            raise ValueError("spec.template.previousRound: leave it empty; the plan chains its rounds itself")
        if self.template.round != 1:
            raise ValueError("spec.template.round: leave it at 1; the plan numbers its rounds")
        return self


class PlanRound(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    round: int
    phase: str = "Pending"
    progress: str = ""
    reason: str = ""
    accuracy: dict[str, float] = Field(default_factory=dict)
    checkpointUri: str = ""


class PlanStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")
    phase: Literal["Pending", "Running", "Succeeded", "Failed"] = "Pending"
    reason: str = ""
    message: str = ""
    observedGeneration: int = 0
    currentRound: str = ""
    completed: int = 0
    progress: str = ""
    conditions: list[Condition] = Field(default_factory=list)
    rounds: list[PlanRound] = Field(default_factory=list)

    def set_condition(self, type_: str, ok: bool, reason: str, message: str = "") -> None:
        value = "True" if ok else "False"
        for c in self.conditions:
            if c.type == type_:
                if c.status != value:
                    c.lastTransitionTime = utcnow()
                c.status, c.reason, c.message = value, reason, message
                return
        self.conditions.append(Condition(type=type_, status=value, reason=reason, message=message))


def round_name(plan: str, i: int) -> str:
    return f"{plan}-r{i}"


def child_rounds(plan_obj: dict[str, Any], spec: LoopPlanSpec) -> list[dict[str, Any]]:
    meta = plan_obj["metadata"]
    template = spec.template.model_dump(mode="json", exclude_none=True)
    out = []
    for i in range(1, spec.rounds + 1):
        child = {**template, "round": i}
        if i > 1:
            child["previousRound"] = round_name(meta["name"], i - 1)
        out.append({
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {
                "name": round_name(meta["name"], i),
                "namespace": meta["namespace"],
                "labels": {LABEL_PLAN: meta["name"], "app.kubernetes.io/managed-by": "looptool-operator"},
                "ownerReferences": [owner_reference({**plan_obj, "kind": PLAN_KIND})],
            },
            "spec": child,
        })
    return out


def validate_plan(obj: dict[str, Any]) -> LoopPlanSpec:
    name = (obj.get("metadata") or {}).get("name", "")
    if len(round_name(name, MAX_ROUNDS)) > 63:
        raise ValueError(f"metadata.name: at most {63 - len(f'-r{MAX_ROUNDS}')} characters (round names append -rN)")
    try:
        return LoopPlanSpec.model_validate(obj.get("spec") or {})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            msg = "unknown field; remove it or check its spelling" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"field 'spec.{loc}': {msg}" if loc else msg)
        raise ValueError("\n".join(lines)) from None


class PlanReconciler:
    """Single writer of one LoopPlan's status (runs in a kopf daemon, like RoundReconciler)."""

    def __init__(self, rt: Runtime, body: Any):
        self.rt, self.body = rt, body
        meta = body["metadata"]
        self.ns, self.name = meta.get("namespace") or "default", meta["name"]
        raw = body.get("status") if isinstance(body.get("status"), dict) else {}
        try:
            self.status = PlanStatus.model_validate({k: v for k, v in raw.items() if k in PlanStatus.model_fields})
        except ValidationError:
            self.status = PlanStatus()
        self._written: dict[str, Any] | None = None
        self._event_sent: set[str] = set()

    def snapshot(self) -> dict[str, Any]:
        return copy.deepcopy({k: self.body[k] for k in self.body})

    async def write(self) -> None:
        gen = (self.body.get("metadata") or {}).get("generation")
        if isinstance(gen, int):
            self.status.observedGeneration = gen
        data = self.status.model_dump(mode="json")
        if data != self._written:
            await self.rt.kube.request(
                "PATCH", f"/apis/{API_VERSION}/namespaces/{self.ns}/{PLAN_PLURAL}/{self.name}/status", {"status": data},
                {"fieldManager": self.rt.kube.field_manager}, "application/merge-patch+json",
            )
            self._written = data

    async def event(self, type_: str, reason: str, message: str) -> None:
        if reason in self._event_sent:
            return
        self._event_sent.add(reason)
        try:
            await self.rt.kube.event({**self.snapshot(), "kind": PLAN_KIND}, type_, reason, message)
        except Exception:
            pass

    async def run(self, stopped: Any = None) -> None:
        waker = self.rt.waker(self.ns, f"plan/{self.name}")
        try:
            while not (stopped is not None and bool(stopped)):
                waker.clear()
                try:
                    delay = await self.step()
                except KubeError as exc:
                    log.warning("plan %s/%s: %s; retrying", self.ns, self.name, exc)
                    delay = 5.0
                if delay is None:
                    return
                try:
                    await asyncio.wait_for(waker.wait(), timeout=delay)
                except asyncio.TimeoutError:
                    pass
        finally:
            self.rt.wakers.pop((self.ns, f"plan/{self.name}"), None)

    async def step(self) -> float | None:
        obj = self.snapshot()
        try:
            spec = validate_plan(obj)
        except ValueError as exc:
            self.status.set_condition("Ready", False, "InvalidSpec", str(exc))
            self.status.reason, self.status.message = "InvalidSpec", str(exc)
            await self.write()
            await self.event("Warning", "InvalidSpec", str(exc))
            return 3600.0
        if self.status.reason == "InvalidSpec":
            self.status.reason = self.status.message = ""
        # Desired: every child round exists (create the missing ones; never modify existing ones). With
        # spec.template.stopWhen, round i is created only once round i-1 succeeded and gained enough, so a
        # stopped chain never starts a round it would have to cancel.
        existing = {r["metadata"]["name"]: r for r in await self.rt.kube.list(API_VERSION, "looprounds", self.ns, {LABEL_PLAN: self.name})}
        statuses = [parse_status((existing.get(round_name(self.name, i)) or {}).get("status")) for i in range(1, spec.rounds + 1)]
        stop = spec.template.stopWhen
        lazy = stop.minHeldoutGain is not None
        stopped: StopDecision | None = None
        stopped_at = 0  # the round (1-based) whose gain stopped the plan
        for i, child in enumerate(child_rounds(obj, spec)):
            name = child["metadata"]["name"]
            if lazy and i > 0:
                decision = stop_decision(round_name(self.name, i), stop, statuses[i - 1], statuses[i - 2] if i > 1 else None)
                if decision.stop:
                    stopped, stopped_at = decision, i
                    break
                if statuses[i - 1].phase != Phase.SUCCEEDED:
                    break
            if name not in existing:
                created, _ = await self.rt.kube.create(API_VERSION, "looprounds", self.ns, child)
                existing[name] = created
        if not lazy:
            await self.event("Normal", "RoundsCreated", f"{spec.rounds} chained LoopRounds: {round_name(self.name, 1)} … {round_name(self.name, spec.rounds)}")

        rounds = []
        for i in range(1, spec.rounds + 1):
            r = existing.get(round_name(self.name, i)) or {}
            st = parse_status(r.get("status"))
            rounds.append(PlanRound(name=round_name(self.name, i), round=i, phase=st.phase.value, progress=st.progress,
                                    reason=st.reason, accuracy=st.accuracy, checkpointUri=st.checkpointUri))
            if stopped is not None and i > stopped_at and not r:
                rounds[-1].phase, rounds[-1].reason = NOT_RUN, CHAIN_STOPPED
        self.status.rounds = rounds
        if stopped is not None:
            self.status.completed = sum(r.phase == Phase.SUCCEEDED.value for r in rounds)
            self.status.currentRound = stopped.round
            self.status.progress = f"{self.status.completed}/{spec.rounds} rounds (stopped early)"
            self.status.phase, self.status.reason = "Succeeded", CHAIN_STOPPED
            self.status.message = f"stopped after {stopped.round}: {stopped.message}"
            self.status.set_condition("Ready", True, CHAIN_STOPPED, self.status.message)
            await self.write()
            await self.event("Normal", CHAIN_STOPPED, self.status.message)
            return None
        self.status.completed = sum(r.phase == Phase.SUCCEEDED.value for r in rounds)
        failed = next((r for r in rounds if r.phase == Phase.FAILED.value), None)
        current = next((r for r in rounds if r.phase != Phase.SUCCEEDED.value), None)
        self.status.currentRound = current.name if current else rounds[-1].name
        self.status.progress = f"{self.status.completed}/{spec.rounds} rounds"
        if failed is not None:
            self.status.phase, self.status.reason = "Failed", "RoundFailed"
            self.status.message = f"{failed.name} failed: {failed.reason}"
            self.status.set_condition("Ready", False, "RoundFailed", self.status.message)
            await self.write()
            await self.event("Warning", "PlanFailed", self.status.message)
            return None
        if self.status.completed == spec.rounds:
            self.status.phase = "Succeeded"
            acc = " → ".join(f"{r.accuracy.get('heldout', float('nan')):.3f}" for r in rounds)
            self.status.message = f"all {spec.rounds} rounds succeeded; held-out accuracy {acc}"
            self.status.set_condition("Ready", True, "Succeeded", self.status.message)
            await self.write()
            await self.event("Normal", "PlanSucceeded", self.status.message)
            return None
        self.status.phase = "Running" if any(r.phase != Phase.PENDING.value for r in rounds) else "Pending"
        self.status.set_condition("Ready", False, "InProgress", f"running {self.status.currentRound}")
        await self.write()
        return self.rt.settings.pollSeconds * 4  # child round events wake us sooner
