"""CPU GRPO trainer in plain torch (the embedded default backend and what the tests train).

One step:
1. take ``promptsPerStep`` prompts from a seeded schedule (per-epoch permutations; a resumed run
   replays it from its step) and sample ``groupSize`` completions each with ``model.generate``
   (batched, left padding, pure sampling: ``temperature``, no top-k/top-p, ``maxResponseTokens``;
   each prompt is prefilled once and its KV cache repeated for its group);
2. score every completion with the shared reward (``looptool.shared.reward.score_response``, the
   function verl calls too);
3. group-normalised advantages ``(r - mean_group) / (std_group + 1e-6)`` (unbiased std, as verl);
4. token-level clipped policy-gradient loss against the old-policy log-probs with the asymmetric
   clip ``[1 - clipLow, 1 + clipHigh]`` (DAPO "clip-higher", paper 0.2/0.28), optional KL to a
   frozen reference model with the k3 estimator ``exp(ref - logp) - (ref - logp) - 1`` when
   ``klCoef > 0``; aggregated as token-mean over the mini-batch (verl's ``token-mean``);
5. gradient accumulation over ``microBatchSize`` sequences, ``ppoMiniBatches`` optimizer steps per
   ``ppoEpochs`` pass, grad-norm clipping, AdamW with warmup + cosine/linear decay.

Log-probs use the sampling temperature (``log_softmax(logits / T)``), as verl does, so the ratio
is taken against the distribution the rollouts were drawn from. With one update per rollout batch
(``ppoEpochs = ppoMiniBatches = 1``, the default) the old policy *is* the current one, so the old
log-probs are the detached log-probs of the same forward pass (ratio 1, no extra forward); with
more updates they come from one no-grad forward before the first update.

No wasted work: (a) shared prefix — tool-calling prompts (instruction + tool schemas) are ~20×
longer than the answers, so the training forward runs each prompt once per group and the group's
responses attend to its KV cache (``grouped_token_logprobs``; identical log-probs and gradients,
~4× cheaper forward+backward at 4 rollouts per prompt), and generation does the same;
(b) groups whose rewards are all equal have zero advantage and, without KL, zero gradient; they
are not forwarded (they still count in the token-mean denominator, so the gradient equals
verl's); a step whose every group is flat skips backward and the optimizer update (the LR
schedule still advances); (c) logits only over the response positions. Micro- and mini-batches
hold whole groups. fp32 throughout (no autocast on CPU).

Why hand-written rather than TRL's ``GRPOTrainer``: TRL is not in our dependency set (it pulls
``accelerate`` + ``datasets`` and pins transformers ranges we would have to chase); its trainer owns
the loop (HF ``Trainer`` checkpoints in a local ``output_dir``, its own dataset/reward signatures,
no step-boundary cancel), while we need checkpoints in object storage with exact resume, progress
events and Prometheus metrics from inside the step, and the same reward call and loss semantics
as the verl backend (token-mean, asymmetric clip, k3 KL) so CPU and GPU runs mean the same thing.
The algorithm is ~300 lines; owning them is cheaper than adapting a framework to all of that.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from looptool.services.trainer.common import left_pad, position_ids
from looptool.services.trainer.data import Example, eos_ids
from looptool.shared.loop.manifest import TrainingSpec
from looptool.shared.reward import RewardConfig, score_response

_SPEC = TrainingSpec()  # the manifest's ``training`` section owns the defaults


@dataclass
class GRPOConfig:
    """The GRPO part of a ``TrainingSpec`` (``from_spec``); the defaults are the spec's."""

    steps: int = 20  # the spec's grpoSteps/epochs resolve to a count per run (grpo_step_count)
    prompts_per_step: int = _SPEC.promptsPerStep
    group_size: int = _SPEC.groupSize
    lr: float = _SPEC.learningRate
    kl_coef: float = _SPEC.klCoef
    clip_low: float = _SPEC.clipLow
    clip_high: float = _SPEC.clipHigh
    temperature: float = _SPEC.temperature
    max_prompt_tokens: int = _SPEC.maxPromptTokens
    max_response_tokens: int = _SPEC.maxResponseTokens
    micro_batch_size: int = _SPEC.microBatchSize  # 0 = all sequences of a mini-batch in one forward/backward
    ppo_epochs: int = _SPEC.ppoEpochs
    ppo_mini_batches: int = _SPEC.ppoMiniBatches
    warmup_ratio: float = _SPEC.warmupRatio
    schedule: str = _SPEC.lrSchedule
    weight_decay: float = _SPEC.weightDecay
    max_grad_norm: float = _SPEC.maxGradNorm
    seed: int = _SPEC.seed
    reward_partial_credit: bool = _SPEC.rewardPartialCredit

    @classmethod
    def from_spec(cls, spec: TrainingSpec, steps: int) -> GRPOConfig:
        return cls(
            steps=steps,
            prompts_per_step=spec.promptsPerStep,
            group_size=spec.groupSize,
            lr=spec.learningRate,
            kl_coef=spec.klCoef,
            clip_low=spec.clipLow,
            clip_high=spec.clipHigh,
            temperature=spec.temperature,
            max_prompt_tokens=spec.maxPromptTokens,
            max_response_tokens=spec.maxResponseTokens,
            micro_batch_size=spec.microBatchSize,
            ppo_epochs=spec.ppoEpochs,
            ppo_mini_batches=spec.ppoMiniBatches,
            warmup_ratio=spec.warmupRatio,
            schedule=spec.lrSchedule,
            weight_decay=spec.weightDecay,
            max_grad_norm=spec.maxGradNorm,
            seed=spec.seed,
            reward_partial_credit=spec.rewardPartialCredit,
        )

    @property
    def optimizer_steps(self) -> int:
        return self.steps * self.ppo_epochs * self.ppo_mini_batches


def grpo_step_count(grpo_steps: int | None, epochs: int, n_examples: int, prompts_per_step: int) -> int:
    """GRPO steps of a run: ``grpoSteps`` when set, else ``epochs`` passes over the examples (each pass
    ``ceil(n / promptsPerStep)`` steps, so every example is drawn at least once per pass, see
    ``GRPOTrainer.prompt_indices``); verl's ``trainer.total_epochs`` counts passes the same way."""
    if grpo_steps is not None:
        return grpo_steps
    return epochs * math.ceil(n_examples / prompts_per_step)


@dataclass
class Rollout:
    prompt_idx: list[int]
    input_ids: torch.Tensor  # [P, Lp] left-padded prompts, once each
    prompt_mask: torch.Tensor  # [P, Lp]
    resp_ids: torch.Tensor  # [N, R]
    resp_mask: torch.Tensor  # [N, R] 1 = a generated token up to and including the first eos
    texts: list[str]
    rewards: torch.Tensor  # [N]
    correct: torch.Tensor  # [N]
    format_ok: torch.Tensor  # [N]
    advantages: torch.Tensor  # [N]
    gen_seconds: float = 0.0
    reward_seconds: float = 0.0
    reasons: list[str] = field(default_factory=list)


def _cache_kw(model) -> str:
    """Name of the KV-cache argument: ``cache`` (transformers ≥ 5.2x) or ``past_key_values``."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _out_cache(out):
    return out.get("cache") if out.get("cache") is not None else out.get("past_key_values")


def prefill(model, ids: torch.Tensor, mask: torch.Tensor, repeats: int, logits_to_keep: int = 1):
    """Run the (left-padded) prompts once and return (output, KV cache repeated ``repeats`` times
    along the batch, prompt-major): the shared-prefix trick — a group's ``G`` rollouts attend to one
    prompt computation instead of ``G`` copies. Differentiable when grad is enabled."""
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=True, logits_to_keep=logits_to_keep)
    cache = _out_cache(out)
    if repeats > 1:
        cache.batch_repeat_interleave(repeats)
    return out, cache


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[list[int]],
    n: int,
    max_new_tokens: int,
    temperature: float | None,
    eos: list[int] | None = None,
):
    """Batched generation with left padding. ``temperature=None`` is greedy (``n`` must be 1).

    With ``n > 1`` the prompts are prefilled once and the KV cache is repeated ``n`` times before
    ``model.generate`` continues from it (same samples as ``num_return_sequences=n``, without the
    ``n``-fold prompt prefill). Returns (texts, resp_ids [B*n, R], resp_mask [B*n, R], prompt_ids
    [B, Lp], prompt_mask [B, Lp]); rows are prompt-major: the ``n`` completions of prompt ``i`` are
    rows ``i*n … i*n+n-1``.
    """
    from transformers import GenerationConfig

    eos = eos or eos_ids(tokenizer, model)
    pad = tokenizer.pad_token_id
    ids, mask = left_pad(prompts, pad)
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    sampling = temperature is not None
    # Every knob set explicitly: a model's own generation_config (top_k=20, repetition_penalty …)
    # must not leak in, or the samples would not come from the policy whose log-probs we train.
    gcfg = GenerationConfig(
        do_sample=sampling,
        temperature=float(temperature) if temperature is not None else 1.0,
        top_k=0,
        top_p=1.0,
        repetition_penalty=1.0,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        num_return_sequences=1,
        eos_token_id=eos,
        pad_token_id=pad,
        use_cache=True,
    )
    was_training = model.training
    model.eval()
    try:
        ids_n, mask_n = ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
        kwargs = {}
        if n > 1 and ids.shape[1] > 1:
            _, cache = prefill(model, ids[:, :-1], mask[:, :-1], n)
            kwargs[_cache_kw(model)] = cache
        out = model.generate(input_ids=ids_n, attention_mask=mask_n, generation_config=gcfg, **kwargs)
    finally:
        if was_training:
            model.train()
    resp = out[:, ids.shape[1] :]
    is_eos = torch.isin(resp, torch.tensor(eos, device=resp.device))
    keep = (is_eos.long().cumsum(1) - is_eos.long()) == 0  # nothing before this position was eos
    width = int(keep.sum(1).max()) if keep.numel() else 0
    width = max(1, width)
    resp, keep, is_eos = resp[:, :width], keep[:, :width], is_eos[:, :width]
    texts = []
    for row, k, e in zip(resp, keep, is_eos):
        toks = row[k & ~e].tolist()
        texts.append(tokenizer.decode(toks, skip_special_tokens=True))
    return texts, resp, keep.long(), ids, mask


def _finish(logits: torch.Tensor, resp_ids: torch.Tensor, temperature: float, with_entropy: bool):
    logp_all = torch.log_softmax(logits.float() / temperature, -1)
    logp = logp_all.gather(-1, resp_ids.unsqueeze(-1)).squeeze(-1)
    ent = None
    if with_entropy:
        with torch.no_grad():
            ent = -(logp_all.exp() * logp_all).sum(-1)
    return logp, ent


def token_logprobs(model, prompt_ids, prompt_mask, resp_ids, resp_mask, temperature: float, with_entropy: bool = False):
    """Per-token log-probs of the response under ``model`` at ``temperature``; one row per
    sequence (``prompt_ids`` has as many rows as ``resp_ids``), logits over the response positions
    only. Returns (logp [N, R], entropy [N, R] or None)."""
    ids = torch.cat([prompt_ids, resp_ids], 1)
    mask = torch.cat([prompt_mask, resp_mask], 1)
    r = resp_ids.shape[1]
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False, logits_to_keep=r + 1)
    return _finish(out.logits[:, :-1, :], resp_ids, temperature, with_entropy)


def grouped_token_logprobs(model, prompt_ids, prompt_mask, resp_ids, resp_mask, group: int, temperature: float, with_entropy: bool = False):
    """As ``token_logprobs``, but ``prompt_ids`` holds each prompt once ([B, Lp]) and ``resp_ids``
    its ``group`` responses ([B*group, R], prompt-major). The prompt is computed once and its KV
    cache shared by the group — same values, same gradients, ~``group``× less prompt compute
    (prompts with tool schemas are ~20× longer than the answers)."""
    if group == 1:
        return token_logprobs(model, prompt_ids, prompt_mask, resp_ids, resp_mask, temperature, with_entropy)
    out, cache = prefill(model, prompt_ids, prompt_mask, group)
    first = out.logits[:, -1:, :].repeat_interleave(group, 0)  # predicts response token 0
    full_mask = torch.cat([prompt_mask.repeat_interleave(group, 0), resp_mask], 1)
    lp = prompt_ids.shape[1]
    if resp_ids.shape[1] > 1:
        pos = position_ids(full_mask)[:, lp:-1]
        out2 = model(
            input_ids=resp_ids[:, :-1],
            attention_mask=full_mask[:, :-1],
            position_ids=pos,
            use_cache=True,
            **{_cache_kw(model): cache},
        )
        logits = torch.cat([first, out2.logits], 1)
    else:
        logits = first
    return _finish(logits, resp_ids, temperature, with_entropy)


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    g = rewards.view(-1, group_size)
    mean = g.mean(1, keepdim=True)
    std = g.std(1, keepdim=True, unbiased=True) if group_size > 1 else torch.zeros_like(mean)
    return ((g - mean) / (std + eps)).view(-1)


def policy_loss(logp, old_logp, adv, mask, clip_low: float, clip_high: float, denom: float, ref_logp=None, kl_coef: float = 0.0):
    """Token-level clipped surrogate (+ k3 KL); sum over tokens / ``denom`` (token-mean of the
    mini-batch). Returns (loss, stats)."""
    ratio = torch.exp(logp - old_logp)
    a = adv.unsqueeze(-1)
    pg1 = -a * ratio
    pg2 = -a * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    pg = torch.maximum(pg1, pg2)
    loss_tok = pg
    kl = None
    if ref_logp is not None:
        d = ref_logp - logp
        kl = torch.exp(d) - d - 1.0
        loss_tok = pg + kl_coef * kl
    m = mask.float()
    loss = (loss_tok * m).sum() / denom
    with torch.no_grad():
        stats = {
            "pg_sum": float((pg * m).sum()),
            "clipped": float(((pg2 > pg1).float() * m).sum()),
            "kl_sum": float((kl * m).sum()) if kl is not None else 0.0,
        }
    return loss, stats


class GRPOTrainer:
    def __init__(self, model, tokenizer, examples: list[Example], cfg: GRPOConfig, ref_model=None, device: str = "cpu"):
        self.model, self.tokenizer, self.cfg, self.device = model, tokenizer, cfg, device
        self.ref_model = ref_model
        self.examples = [ex for ex in examples if len(ex.prompt_ids) <= cfg.max_prompt_tokens]
        self.dropped = len(examples) - len(self.examples)
        self.eos = eos_ids(tokenizer, model)
        self.reward_cfg = RewardConfig(partial_credit=cfg.reward_partial_credit)

    # ------------------------------------------------------------------ schedule
    def prompt_indices(self, step: int) -> list[int]:
        """Examples for ``step``: consecutive slices of concatenated per-epoch permutations."""
        n, p = len(self.examples), self.cfg.prompts_per_step
        start = step * p
        out: list[int] = []
        epoch = start // n
        perm = np.random.default_rng([self.cfg.seed, epoch]).permutation(n)
        pos = start % n
        while len(out) < p:
            if pos >= n:
                epoch += 1
                perm = np.random.default_rng([self.cfg.seed, epoch]).permutation(n)
                pos = 0
            out.append(int(perm[pos]))
            pos += 1
        return out

    # ------------------------------------------------------------------ rollout
    def rollout(self, step: int, seed: int) -> Rollout:
        cfg = self.cfg
        idx = self.prompt_indices(step)
        exs = [self.examples[i] for i in idx]
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        texts, resp, resp_mask, p_ids, p_mask = generate(
            self.model, self.tokenizer, [e.prompt_ids for e in exs], cfg.group_size, cfg.max_response_tokens, cfg.temperature, self.eos
        )
        t1 = time.perf_counter()
        rewards, correct, fmt, reasons = [], [], [], []
        for k, text in enumerate(texts):
            ex = exs[k // cfg.group_size]
            res = score_response(text, ex.reference, ex.tools, self.reward_cfg)
            rewards.append(res.score)
            correct.append(float(res.correct))
            fmt.append(float(res.format_ok))
            reasons.append(res.reason)
        t2 = time.perf_counter()
        r = torch.tensor(rewards, dtype=torch.float32)
        return Rollout(
            prompt_idx=idx,
            input_ids=p_ids,
            prompt_mask=p_mask,
            resp_ids=resp,
            resp_mask=resp_mask,
            texts=texts,
            rewards=r,
            correct=torch.tensor(correct),
            format_ok=torch.tensor(fmt),
            advantages=group_advantages(r, cfg.group_size),
            gen_seconds=t1 - t0,
            reward_seconds=t2 - t1,
            reasons=reasons,
        )

    # ------------------------------------------------------------------ update
    def _forward_groups(self, model, groups: list[int], per_chunk: int, ro: Rollout, with_entropy=False, grad=False):
        """Log-probs for whole groups, ``per_chunk`` groups per forward (prompt computed once per group)."""
        g = self.cfg.group_size
        for k in range(0, len(groups), per_chunk):
            gs = torch.tensor(groups[k : k + per_chunk], dtype=torch.long)
            rows = (gs[:, None] * g + torch.arange(g)[None, :]).reshape(-1)
            with torch.set_grad_enabled(grad):
                logp, ent = grouped_token_logprobs(
                    model,
                    ro.input_ids[gs],
                    ro.prompt_mask[gs],
                    ro.resp_ids[rows],
                    ro.resp_mask[rows],
                    g,
                    self.cfg.temperature,
                    with_entropy,
                )
            yield rows, logp, ent

    def step(self, step: int, optimizer, scheduler, seed: int) -> dict[str, Any]:
        cfg = self.cfg
        g = cfg.group_size
        t_start = time.perf_counter()
        ro = self.rollout(step, seed)
        n = ro.resp_ids.shape[0]
        n_groups = n // g
        per_chunk = max(1, (cfg.micro_batch_size or n) // g)
        use_kl = self.ref_model is not None and cfg.kl_coef > 0
        # a group whose rewards are all equal has zero advantage: without KL it adds no gradient
        active = (ro.advantages.view(n_groups, g).abs().sum(1) > 0) if not use_kl else torch.ones(n_groups, dtype=torch.bool)
        resp_mask = ro.resp_mask
        n_tokens_resp = int(resp_mask.sum())
        n_tokens = n_tokens_resp + int((ro.prompt_mask.sum(1) * g).sum())

        t_train0 = time.perf_counter()
        ref_logp = old_logp = None
        ref_seconds = 0.0
        act_groups = torch.nonzero(active).view(-1).tolist()
        multi_update = cfg.ppo_epochs * cfg.ppo_mini_batches > 1
        if act_groups and use_kl:
            t = time.perf_counter()
            ref_logp = torch.zeros_like(resp_mask, dtype=torch.float32)
            for rows, lp, _ in self._forward_groups(self.ref_model, act_groups, per_chunk, ro):
                ref_logp[rows] = lp
            ref_seconds = time.perf_counter() - t
        if act_groups and multi_update:
            old_logp = torch.zeros_like(resp_mask, dtype=torch.float32)
            for rows, lp, _ in self._forward_groups(self.model, act_groups, per_chunk, ro):
                old_logp[rows] = lp

        pg_sum = clipped = kl_sum = 0.0
        fwd_s = bwd_s = opt_s = 0.0
        ent_sum, ent_tok = 0.0, 0
        grad_norms: list[float] = []
        updates = 0
        rng = np.random.default_rng([cfg.seed, step, 7])
        self.model.train()
        for epoch in range(cfg.ppo_epochs):
            order = rng.permutation(n_groups).tolist() if cfg.ppo_mini_batches > 1 else list(range(n_groups))
            size = math.ceil(n_groups / cfg.ppo_mini_batches)
            for m in range(cfg.ppo_mini_batches):
                mb_groups = order[m * size : (m + 1) * size]
                mb_rows = [gi * g + j for gi in mb_groups for j in range(g)]
                denom = max(1.0, float(resp_mask[mb_rows].sum()))  # token-mean over the whole mini-batch
                groups = [gi for gi in mb_groups if active[gi]]
                if not groups:  # every group flat: no gradient; keep the LR schedule in step
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", UserWarning)
                        scheduler.step()
                    continue
                optimizer.zero_grad(set_to_none=True)
                t_fwd = time.perf_counter()
                for rows, logp, ent in self._forward_groups(self.model, groups, per_chunk, ro, with_entropy=(epoch == 0), grad=True):
                    old = old_logp[rows] if old_logp is not None else logp.detach()
                    loss, st = policy_loss(
                        logp,
                        old,
                        ro.advantages[rows],
                        resp_mask[rows],
                        cfg.clip_low,
                        cfg.clip_high,
                        denom,
                        ref_logp[rows] if ref_logp is not None else None,
                        cfg.kl_coef,
                    )
                    t_b = time.perf_counter()
                    fwd_s += t_b - t_fwd
                    loss.backward()
                    t_fwd = time.perf_counter()
                    bwd_s += t_fwd - t_b
                    if epoch == 0:
                        pg_sum += st["pg_sum"]
                        clipped += st["clipped"]
                        kl_sum += st["kl_sum"]
                        if ent is not None:
                            ent_sum += float((ent * resp_mask[rows]).sum())
                            ent_tok += int(resp_mask[rows].sum())
                t_o = time.perf_counter()
                grad_norms.append(float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)))
                optimizer.step()
                scheduler.step()
                opt_s += time.perf_counter() - t_o
                updates += 1
        t_end = time.perf_counter()

        groups_r = ro.rewards.view(-1, g)
        flat = float((groups_r.max(1).values == groups_r.min(1).values).float().mean())
        step_s = t_end - t_start
        train_s = t_end - t_train0
        return {
            "step": float(step + 1),
            "reward_mean": float(ro.rewards.mean()),
            "reward_std": float(ro.rewards.std(unbiased=False)),
            "accuracy": float(ro.correct.mean()),
            "format_ok": float(ro.format_ok.mean()),
            "flat_group_share": flat,
            # pg loss per response token (the objective's value; 0 when every group is flat)
            "loss": pg_sum / max(1, n_tokens_resp),
            "kl": kl_sum / max(1, n_tokens_resp) if use_kl else 0.0,
            "clip_frac": clipped / max(1, n_tokens_resp),
            "entropy": ent_sum / ent_tok if ent_tok else float("nan"),
            "grad_norm": float(np.mean(grad_norms)) if grad_norms else 0.0,
            "updates": float(updates),
            "lr": float(scheduler.get_last_lr()[0]),
            "response_length": n_tokens_resp / max(1, n),
            "tokens": float(n_tokens),
            "tokens_per_second": n_tokens / step_s if step_s > 0 else 0.0,
            "gen_tokens_per_second": n_tokens_resp / ro.gen_seconds if ro.gen_seconds > 0 else 0.0,
            "gen_seconds": ro.gen_seconds,
            "reward_seconds": ro.reward_seconds,
            "ref_seconds": ref_seconds,
            "train_seconds": train_s,  # ref/old log-probs + forward + backward + optimizer
            "forward_seconds": fwd_s,
            "backward_seconds": bwd_s,
            "optimizer_seconds": opt_s,
            "step_seconds": step_s,
            "gen_share": ro.gen_seconds / step_s if step_s > 0 else 0.0,
            "train_share": train_s / step_s if step_s > 0 else 0.0,
            "backward_share": bwd_s / step_s if step_s > 0 else 0.0,
        }
