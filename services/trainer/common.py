"""Small pieces shared by the CPU trainers: errors, LR schedules, seeding, thread count, padding."""

from __future__ import annotations

import math
import random

import torch

from looptool.shared.workers import available_cpus


class TrainCancelled(RuntimeError):
    """Cancel was requested; the run stopped at a step boundary after saving a checkpoint."""


class TrainFailed(RuntimeError):
    """Training itself failed (not bad input); the message is one line naming the cause."""


def lr_lambda(kind: str, total_steps: int, warmup_steps: int, min_ratio: float = 0.0):
    """Multiplier for ``LambdaLR``: linear warmup, then cosine / linear decay to ``min_ratio`` or constant."""
    total = max(1, total_steps)
    warm = max(0, min(warmup_steps, total - 1))

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total - warm))
        if kind == "linear":
            return min_ratio + (1 - min_ratio) * (1 - progress)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and norm weights (1-D parameters)."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99), eps=1e-8, foreach=True)


def make_scheduler(optimizer, kind: str, total_steps: int, warmup_ratio: float, min_ratio: float = 0.1):
    warm = int(round(warmup_ratio * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(kind, total_steps, warm, min_ratio))


def seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def step_seed(seed: int, phase: str, step: int) -> int:
    """A per-step seed: a resumed run draws exactly what the uninterrupted run would have drawn."""
    base = {"sft": 1, "grpo": 2}.get(phase, 3)
    return (seed * 1_000_003 + base * 7_919 + step * 104_729) % (2**31 - 1)


def configure_threads(threads: int | None = None) -> int:
    """Torch threads = ``threads`` (the ``trainer.torch_threads`` setting) or else the CPUs this
    process may use (affinity, capped by a cgroup quota: a pod limited to 2 CPUs on a 64-core node
    must not run 64 threads)."""
    n = max(1, threads if threads is not None else available_cpus())
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists → (input_ids, attention_mask), both [B, L] long."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only (what ``generate`` uses for left-padded batches)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
