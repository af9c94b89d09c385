#!/usr/bin/env python
"""CPU trainer throughput: GRPO steps/minute, tokens/s, where a step's time goes; and what one CPU-demo
round of training costs.

Model: the CPU demo's size — ``builtin:tiny`` defaults (Llama architecture, hidden 128, 4 layers,
4 heads, BPE vocabulary 2048 trained on the data), built locally (no download). Data: the toy
tool-calling task with the project's full system prompt (instruction + ``# Tools`` block with 4
tools, ≈85 prompt tokens with the tiny BPE, ≈22-token ``<tool_call>`` answers), ``services/trainer/toy.py``.

1. **GRPO steps** (fixed config: 4 prompts × 4 rollouts, temperature 1, ≤48 new tokens, lr 1e-4,
   partial-credit reward so that groups carry signal and backward runs):
   after a short SFT (so rollouts look like real answers and stop at EOS), ``--steps`` timed GRPO
   steps. Printed: steps/minute, tokens/s (prompt + response tokens through the step / step time),
   generated tokens/s, and the share of step time in generation, reward, forward, backward and the
   optimizer.
2. **Demo round** (``--round``; default on): ``run_training`` exactly as the loop calls it —
   ``builtin:tiny``, ``--samples`` samples, SFT ``--sft-epochs`` epochs (batch 16) then
   ``--grpo-steps`` GRPO steps — timing the tiny-model build, SFT and GRPO separately.

Threads: all cores of this process, or ``--threads N`` (sets ``LOOPTOOL_TRAINER__TORCH_THREADS``). On a
shared, busy machine one thread is much faster than two (OpenMP threads wait on each other when a
core is taken by someone else); numbers are wall-clock. Prints a table and a JSON line; exits 0.
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. On a machine shared with
# other busy processes, spinning threads wait on a descheduled peer at every parallel region (we
# measured 2 threads 4–15× slower than 1); passive waiting removes that cliff.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# MKL may otherwise use fewer threads than asked when the machine is busy, which changes the
# summation order: the same training would not give bit-identical weights run to run.
os.environ.setdefault("MKL_DYNAMIC", "FALSE")

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("weather", "time", "convert", "flights")


def bench_steps(tmp: Path, steps: int, sft_steps: int) -> dict:
    import torch

    from looptool.services.trainer.common import configure_threads, make_optimizer, make_scheduler, step_seed
    from looptool.services.trainer.data import corpus_texts, eos_ids, load_examples, tokenize_examples
    from looptool.services.trainer.grpo import GRPOConfig, GRPOTrainer
    from looptool.services.trainer.modeling import load_model, quiet_transformers
    from looptool.services.trainer.sft import SFTConfig, SFTTrainer
    from looptool.services.trainer.toy import toy_rows
    from looptool.shared.tiny_model import TinyModelSpec, build_tiny_model

    quiet_transformers()
    threads = configure_threads()
    exs = load_examples(toy_rows(64, seed=1, kinds=KINDS, realistic=True))
    d = build_tiny_model(tmp / "m", corpus_texts(exs), TinyModelSpec(seed=0))
    model, tok = load_model(d)
    tokenize_examples(exs, tok, eos_ids(tok, model)[0])
    sft = SFTTrainer(model, tok, exs, SFTConfig(epochs=sft_steps * 16 / len(exs), lr=3e-3, batch_size=16, warmup_ratio=0.1))
    opt = make_optimizer(model, 3e-3, 0.0)
    sched = make_scheduler(opt, "cosine", sft.total_steps, 0.1)
    t = time.perf_counter()
    sft_m = [sft.step(s, opt, sched) for s in range(sft.total_steps)]
    sft_s = time.perf_counter() - t
    # partial credit: well-formed wrong calls score 0.1–0.3, so groups are rarely flat and the
    # backward pass is part of what is measured
    cfg = GRPOConfig(
        steps=steps + 1, prompts_per_step=4, group_size=4, lr=1e-4, max_response_tokens=48, warmup_ratio=0.0, reward_partial_credit=True
    )
    g = GRPOTrainer(model, tok, exs, cfg)
    opt = make_optimizer(model, cfg.lr, 0.0)
    sched = make_scheduler(opt, "constant", cfg.optimizer_steps, 0.0)
    g.step(0, opt, sched, step_seed(0, "grpo", 0))  # warm-up (allocator, first-call overheads)
    ms = [g.step(s, opt, sched, step_seed(0, "grpo", s)) for s in range(1, steps + 1)]
    total = sum(m["step_seconds"] for m in ms)
    tot = lambda k: sum(m[k] for m in ms)  # noqa: E731
    return {
        "threads": threads,
        "prompt_tokens": statistics.mean(len(e.prompt_ids) for e in exs),
        "sft_steps": sft.total_steps,
        "sft_seconds_per_step": sft_s / max(1, sft.total_steps),
        "sft_tokens_per_second": statistics.mean(m["tokens_per_second"] for m in sft_m[1:]) if len(sft_m) > 1 else 0.0,
        "grpo_steps": steps,
        "steps_per_minute": 60 * steps / total,
        "seconds_per_step": total / steps,
        "tokens_per_second": tot("tokens") / total,
        "gen_tokens_per_second": tot("response_length") * 16 / tot("gen_seconds"),
        "response_length": tot("response_length") / steps,
        "reward_mean": tot("reward_mean") / steps,
        "share_generation": tot("gen_seconds") / total,
        "share_reward": tot("reward_seconds") / total,
        "share_forward": tot("forward_seconds") / total,
        "share_backward": tot("backward_seconds") / total,
        "share_optimizer": tot("optimizer_seconds") / total,
        "flat_group_share": tot("flat_group_share") / steps,
    }


def bench_round(tmp: Path, samples: int, sft_epochs: float, grpo_steps: int) -> dict:
    from looptool.services.trainer.runner import parse_job, run_training
    from looptool.services.trainer.toy import commit_toy_dataset

    ref = commit_toy_dataset((tmp / "ds").as_uri(), samples, seed=2, kinds=KINDS, realistic=True)
    cfg = {"sftEpochs": sft_epochs, "sftBatchSize": 16, "grpoSteps": grpo_steps, "groupSize": 4, "promptsPerStep": 4, "maxResponseTokens": 48}
    job = parse_job({"dataset": ref.model_dump(), "base_checkpoint_uri": "builtin:tiny", "output_prefix": (tmp / "out").as_uri(), "config": cfg})
    marks: dict[str, float] = {}
    t0 = time.perf_counter()

    def emit(p) -> None:
        now = time.perf_counter() - t0
        if p.message.startswith("sft step 1/"):
            marks.setdefault("sft_first", now - p.metrics.get("step_seconds", 0.0))
        if p.message.startswith("sft step"):
            marks["sft_end"] = now
        if p.message.startswith("grpo step"):
            marks.setdefault("grpo_first", now - p.metrics.get("step_seconds", 0.0))
            marks["grpo_end"] = now

    result = run_training(job, workdir=tmp / "wd", emit=emit)
    total = time.perf_counter() - t0
    return {
        "samples": samples,
        "sft_epochs": sft_epochs,
        "sft_steps": result.counts.get("sft_steps", 0),
        "grpo_steps": grpo_steps,
        "setup_seconds": marks.get("sft_first", 0.0),  # validation + tiny-model build + tokenization
        "sft_seconds": marks.get("sft_end", 0.0) - marks.get("sft_first", 0.0),
        "grpo_seconds": marks.get("grpo_end", 0.0) - marks.get("grpo_first", 0.0),
        "finish_seconds": total - marks.get("grpo_end", total),  # final checkpoint + model upload
        "total_seconds": total,
        "reward_first5": result.metrics.get("reward_first5", 0.0),
        "reward_last5": result.metrics.get("reward_last5", 0.0),
    }


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8, help="timed GRPO steps")
    ap.add_argument("--sft-steps", type=int, default=100, help="SFT steps before the timed GRPO steps")
    ap.add_argument("--round", action=argparse.BooleanOptionalAction, default=True, help="also time a demo round")
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--sft-epochs", type=float, default=3.0)
    ap.add_argument("--grpo-steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    args = ap.parse_args(argv)
    if args.threads:
        os.environ["LOOPTOOL_TRAINER__TORCH_THREADS"] = str(args.threads)
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as td:
        tmp = Path(td)
        s = out["grpo"] = bench_steps(tmp / "a", args.steps, args.sft_steps)
        print(f"GRPO, fixed tiny config (hidden 128 × 4 layers, vocab 2048; 4 prompts × 4 rollouts; ≈{s['prompt_tokens']:.0f}-token prompts; {s['threads']} threads)")
        print(f"  steps/minute            {s['steps_per_minute']:8.1f}   ({s['seconds_per_step']:.2f} s/step, {s['response_length']:.0f} tokens/response)")
        print(f"  tokens/s (step)         {s['tokens_per_second']:8.0f}   (prompt + response tokens / step time)")
        print(f"  generated tokens/s      {s['gen_tokens_per_second']:8.0f}")
        print(
            "  step time: generation {:.0%}, reward {:.0%}, forward {:.0%}, backward {:.0%}, optimizer {:.0%}".format(
                s["share_generation"], s["share_reward"], s["share_forward"], s["share_backward"], s["share_optimizer"]
            )
        )
        print(f"  (rollout reward {s['reward_mean']:.2f}, flat groups {s['flat_group_share']:.0%}: those skip backward)")
        print(f"  SFT: {s['sft_seconds_per_step']:.2f} s/step (16 sequences), {s['sft_tokens_per_second']:.0f} tokens/s")
        if args.round:
            r = out["round"] = bench_round(tmp / "b", args.samples, args.sft_epochs, args.grpo_steps)
            print(f"Demo round: {r['samples']} samples, SFT {r['sft_epochs']:g} epochs ({r['sft_steps']} steps) + {r['grpo_steps']} GRPO steps")
            print(
                f"  setup {r['setup_seconds']:.1f} s + SFT {r['sft_seconds']:.1f} s + GRPO {r['grpo_seconds']:.1f} s"
                f" + finish {r['finish_seconds']:.1f} s = {r['total_seconds']:.1f} s"
                f"   (reward first5 {r['reward_first5']:.2f} → last5 {r['reward_last5']:.2f})"
            )
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
