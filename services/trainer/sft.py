"""Supervised warm start: train on (prompt → reference target) with the loss on the target tokens only.

The usual cold start for RL on small models: a base model that cannot yet write ``<tool_call>``
blocks gets no GRPO signal at all (every rollout scores 0, every group is flat). A few epochs of
SFT on the reference calls put the format (and some of the task) in place; GRPO then sharpens it.
Selected per round with ``training.sftWarmStart`` (``sftEpochs``, ``sftLearningRate``,
``sftBatchSize``).

Efficiency on CPU:
- the batch schedule is computed up front from the seed: per-epoch permutations, then within
  windows of 8 batches sequences are sorted by length so a batch pads little; batch order is
  shuffled again. A resumed run replays the same schedule from its step.
- sequences are left-padded, so every target sits in the last ``T`` positions of its row: the
  model computes logits only there (``logits_to_keep``), not over the long tool-schema prompts.
- loss = mean cross-entropy over all target tokens of the batch (token-mean), gradient
  accumulation over ``microBatchSize`` sequences keeps the same normalisation.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from looptool.services.trainer.common import left_pad, position_ids
from looptool.services.trainer.data import Example
from looptool.shared.loop.manifest import TrainingSpec

_SPEC = TrainingSpec()  # the manifest's ``training`` section owns the defaults

WINDOW_BATCHES = 8


@dataclass
class SFTConfig:
    """The SFT warm-start part of a ``TrainingSpec`` (``from_spec``); the defaults are the spec's."""

    epochs: float = _SPEC.sftEpochs
    lr: float = _SPEC.sftLearningRate
    batch_size: int = _SPEC.sftBatchSize
    micro_batch_size: int = _SPEC.microBatchSize  # 0 = the whole batch in one forward/backward
    max_len: int = _SPEC.maxPromptTokens + _SPEC.maxResponseTokens  # longer examples are dropped
    warmup_ratio: float = _SPEC.warmupRatio
    schedule: str = _SPEC.lrSchedule
    weight_decay: float = _SPEC.weightDecay
    max_grad_norm: float = _SPEC.maxGradNorm
    seed: int = _SPEC.seed

    @classmethod
    def from_spec(cls, spec: TrainingSpec) -> SFTConfig:
        return cls(
            epochs=spec.sftEpochs,
            lr=spec.sftLearningRate,
            batch_size=spec.sftBatchSize,
            micro_batch_size=spec.microBatchSize,
            max_len=spec.maxPromptTokens + spec.maxResponseTokens,
            warmup_ratio=spec.warmupRatio,
            schedule=spec.lrSchedule,
            weight_decay=spec.weightDecay,
            max_grad_norm=spec.maxGradNorm,
            seed=spec.seed,
        )


def build_schedule(lengths: list[int], epochs: float, batch_size: int, seed: int) -> list[list[int]]:
    """Deterministic list of batches (example indices) covering ``epochs`` passes over the data."""
    n = len(lengths)
    if n == 0 or epochs <= 0:
        return []
    total = int(math.ceil(epochs * n))
    rng = np.random.default_rng(seed)
    batches: list[list[int]] = []
    done, epoch = 0, 0
    while done < total:
        perm = rng.permutation(n)[: min(n, total - done)].tolist()
        done += len(perm)
        epoch += 1
        window = batch_size * WINDOW_BATCHES
        for w in range(0, len(perm), window):
            chunk = sorted(perm[w : w + window], key=lambda i: lengths[i])
            group = [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
            order = rng.permutation(len(group)).tolist()
            batches.extend(group[o] for o in order)
    return batches


def _collate(examples: list[Example], pad_id: int):
    seqs = [ex.prompt_ids + ex.target_ids for ex in examples]
    ids, mask = left_pad(seqs, pad_id)
    t_max = max(len(ex.target_ids) for ex in examples)
    labels = torch.full((len(examples), t_max), -100, dtype=torch.long)
    for i, ex in enumerate(examples):
        labels[i, t_max - len(ex.target_ids) :] = torch.tensor(ex.target_ids, dtype=torch.long)
    return ids, mask, labels


def target_loss_sum(model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum of target-token cross-entropy (and the token count); logits only over the target tail."""
    t = labels.shape[1]
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False, logits_to_keep=t + 1)
    logits = out.logits[:, :-1, :].float()  # position L-t-1 .. L-2 predict the last t tokens
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum")
    return loss, int((labels != -100).sum())


class SFTTrainer:
    def __init__(self, model, tokenizer, examples: list[Example], cfg: SFTConfig, device: str = "cpu"):
        self.model, self.tokenizer, self.cfg, self.device = model, tokenizer, cfg, device
        self.examples = [ex for ex in examples if len(ex.prompt_ids) + len(ex.target_ids) <= cfg.max_len]
        self.dropped = len(examples) - len(self.examples)
        self.pad_id = tokenizer.pad_token_id
        self.schedule = build_schedule(
            [len(ex.prompt_ids) + len(ex.target_ids) for ex in self.examples], cfg.epochs, cfg.batch_size, cfg.seed
        )

    @property
    def total_steps(self) -> int:
        return len(self.schedule)

    def step(self, step: int, optimizer, scheduler) -> dict[str, float]:
        """One optimizer step on batch ``step`` of the schedule; returns metrics."""
        t0 = time.perf_counter()
        self.model.train()
        batch = [self.examples[i] for i in self.schedule[step]]
        mb = self.cfg.micro_batch_size or len(batch)
        n_target = sum(len(ex.target_ids) for ex in batch)
        n_tokens = sum(len(ex.prompt_ids) + len(ex.target_ids) for ex in batch)
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for k in range(0, len(batch), mb):
            ids, mask, labels = _collate(batch[k : k + mb], self.pad_id)
            loss_sum, _ = target_loss_sum(self.model, ids.to(self.device), mask.to(self.device), labels.to(self.device))
            (loss_sum / n_target).backward()
            total += float(loss_sum.detach())
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm))
        optimizer.step()
        scheduler.step()
        dt = time.perf_counter() - t0
        return {
            "sft_loss": total / max(1, n_target),
            "grad_norm": grad_norm,
            "lr": float(scheduler.get_last_lr()[0]),
            "tokens": float(n_tokens),
            "tokens_per_second": n_tokens / dt if dt > 0 else 0.0,
            "step_seconds": dt,
        }

    @torch.no_grad()
    def greedy_accuracy(self, score: Callable[[str, Example], float], limit: int = 64, max_new_tokens: int = 64) -> float:
        """Share of (up to ``limit``) examples whose greedy answer scores as correct."""
        from looptool.services.trainer.grpo import generate

        exs = self.examples[:limit]
        if not exs:
            return 0.0
        self.model.eval()
        ok = 0.0
        for k in range(0, len(exs), 16):
            chunk = exs[k : k + 16]
            texts, *_ = generate(self.model, self.tokenizer, [e.prompt_ids for e in chunk], 1, max_new_tokens, None)
            ok += sum(score(t, e) for t, e in zip(texts, chunk))
        return ok / len(exs)
