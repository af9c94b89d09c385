"""Prometheus metrics of the trainer (``looptool_trainer_*``), shared by the gRPC service and the Job.

- ``looptool_trainer_step{phase}``                 last finished step (phase: sft | grpo)
- ``looptool_trainer_reward_mean`` / ``_reward_std`` rollout reward of the last GRPO step
- ``looptool_trainer_loss{phase}``                 SFT loss / GRPO policy loss of the last step
- ``looptool_trainer_kl``                          KL to the reference (k3, or verl's kl_loss)
- ``looptool_trainer_tokens_per_second{phase}``    tokens processed per second in the last step
- ``looptool_trainer_generation_share``            share of the last GRPO step spent generating
- ``looptool_trainer_step_seconds{phase}``         histogram of step durations
- ``looptool_trainer_runs_total{state}``           runs by final state: succeeded | failed | cancelled | cached | invalid
- ``looptool_trainer_runs_active``                 runs in progress
"""

from __future__ import annotations

import math
from typing import Any, TypeGuard

from looptool.shared.metrics import counter, gauge, histogram

STAGE = "trainer"

STEP = gauge(STAGE, "step", "last finished training step", ["phase"])
REWARD_MEAN = gauge(STAGE, "reward_mean", "mean rollout reward of the last GRPO step")
REWARD_STD = gauge(STAGE, "reward_std", "std of rollout rewards of the last GRPO step")
LOSS = gauge(STAGE, "loss", "training loss of the last step", ["phase"])
KL = gauge(STAGE, "kl", "KL divergence to the reference policy (last GRPO step)")
TOKENS_PER_SECOND = gauge(STAGE, "tokens_per_second", "tokens processed per second in the last step", ["phase"])
GEN_SHARE = gauge(STAGE, "generation_share", "share of the last GRPO step spent generating rollouts")
STEP_SECONDS = histogram(
    STAGE, "step_seconds", "training step duration", ["phase"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900)
)
RUNS = counter(STAGE, "runs", "training runs by final state", ["state"])
ACTIVE = gauge(STAGE, "runs_active", "training runs in progress")


def _ok(v: Any) -> TypeGuard[float]:
    return isinstance(v, (int, float)) and not math.isnan(v) and not math.isinf(v)


def record_step(phase: str, m: dict[str, float]) -> None:
    if _ok(m.get("step")):
        STEP.labels(phase).set(m["step"])
    loss = m.get("sft_loss") if phase == "sft" else m.get("loss")
    if _ok(loss):
        LOSS.labels(phase).set(loss)
    if _ok(m.get("tokens_per_second")):
        TOKENS_PER_SECOND.labels(phase).set(m["tokens_per_second"])
    if _ok(m.get("step_seconds")):
        STEP_SECONDS.labels(phase).observe(m["step_seconds"])
    if phase != "sft":
        if _ok(m.get("reward_mean")):
            REWARD_MEAN.set(m["reward_mean"])
        if _ok(m.get("reward_std")):
            REWARD_STD.set(m["reward_std"])
        if _ok(m.get("kl")):
            KL.set(m["kl"])
        if _ok(m.get("gen_share")):
            GEN_SHARE.set(m["gen_share"])
