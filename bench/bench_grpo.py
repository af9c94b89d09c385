#!/usr/bin/env python
"""Does GRPO earn its wall time on the CPU demo? From one SFT checkpoint of the demo's small model,
spend the same wall time on GRPO (demo settings, then a small grid of tuned settings) or on more SFT,
and compare greedy held-out accuracy.

Data: the CPU demo's round 1 (``examples/demo.yaml``, read, not changed) at small scale: its toolset
(ten BFCL functions), synthesis settings and seed (``seed × 1000 + round``, as the synthesize stage)
with the real programmatic synthesizer in-process (``--dialogues``, default 800 of the demo's 1,600),
samples, held-out split (``split_of``, 20%) and 10% label noise exactly as the stage makes them.
Model: ``builtin:tiny`` with the demo's sizes, built on those samples (no download).

1. **SFT checkpoint**: ``--sft-steps`` optimizer steps of the demo's SFT settings (batch 16, lr 3e-3,
   cosine over those steps). Its greedy held-out accuracy is the baseline; its *sampled* policy at
   the demo's GRPO settings gives the "why" diagnostics: mean reward, and the share of groups whose
   rewards are all equal (zero advantage: no gradient; ``flat_group_share`` of ``grpo.py``).
2. **Arms**, each from that checkpoint, each given ``--seconds`` of training wall time:
   ``demo-6``: exactly the demo's 6 GRPO steps (what ``make demo`` spends; not time-matched);
   ``grpo-demo``: GRPO with the demo's settings; ``grpo-<k>``: GRPO with each ``--grid`` setting;
   ``sft-more``: more SFT (same settings, a fresh cosine). A time-matched arm's step count is
   calibrated first (3 throw-away steps on a copy of the checkpoint) so its LR schedule spans the
   budget; ``--steps ARM=N,...`` fixes counts instead (bit-repeatable: every draw is seeded, one
   thread by default).
3. **Held-out accuracy**: ``shared.evaluation.evaluate_samples`` (what the evaluate stage runs), on the
   real inference backend (``TransformersBackend``), greedy, ``eval.maxTokens`` of the demo (48).

Prints a table (accuracy with a 95% Wilson interval, steps done/planned, wall seconds, mean rollout
reward and its std, flat-group share, reward over the last 10 steps) and a JSON line; exits 0.

Scale: the default (800 dialogues, 240 SFT steps, 35 s per arm) takes about 9 minutes on one busy
core, but its checkpoint is far weaker than the demo's (the demo's round 1 runs ~880 SFT steps on
1,600 dialogues). ``--dialogues 1600 --sft-steps 880 --seconds 60`` is the demo's scale (about 25
minutes); ``--checkpoint-cache DIR`` keeps the SFT checkpoint so later runs (other ``--grid``,
``--seconds``) skip it. Wall times are wall-clock: on a machine shared with other jobs a
time-matched arm may run slower than calibrated (it stops at 1.5× ``--seconds``, "done/planned").
"""

from __future__ import annotations

import os

# Before torch loads OpenMP (see bench_trainer.py): passive waiting on a shared machine, fixed MKL threads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MKL_DYNAMIC", "FALSE")

import argparse
import copy
import hashlib
import json
import math
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_GRID = "groupSize=8|groupSize=8,learningRate=1e-3|groupSize=8,learningRate=1e-3,rewardPartialCredit=true"
CALIBRATION_STEPS = 3  # the first is warm-up; the others time a step


@dataclass
class Data:
    train: list[Any]  # trainer Examples (tokenized once the model exists)
    heldout: list[Any]  # shared.records.Sample
    counts: dict[str, int]


@dataclass
class Arm:
    name: str
    kind: str  # "grpo" | "sft"
    spec: Any  # TrainingSpec of the arm
    steps: int = 0
    planned: int = 0  # steps the LR schedule spans (calibrated or fixed); ``steps`` < it when the time cap hit
    seconds: float = 0.0
    metrics: list[dict[str, float]] = field(default_factory=list)
    tally: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        c, n = self.tally.get("all", (0, 0))
        return c / n if n else 0.0


def demo_round() -> Any:
    from looptool.shared.loop.manifest import load_manifests

    return load_manifests(ROOT / "examples" / "demo.yaml")[0]


def build_data(tmp: Path, rnd: Any, dialogues: int) -> Data:
    """Round 1's samples as the synthesize stage makes them, ``dialogues`` of them."""
    from looptool.services.synthesizer.agents import make_agents
    from looptool.services.synthesizer.config import parse_config
    from looptool.services.synthesizer.engine import LocalToolBackend, run_synthesis
    from looptool.services.trainer.data import load_examples
    from looptool.shared.conversion import dialogs_to_samples, split_of
    from looptool.shared.loop.stages import synthesis_config_json
    from looptool.shared.noise import inject_label_noise
    from looptool.shared.toolsets import resolve_toolset
    from looptool.shared.verl_format import sample_to_verl_row

    spec, syn = rnd.spec, rnd.spec.synthesis
    tools = resolve_toolset(spec.toolset)  # testFraction 0 in the demo: every function is trained on
    cfg = parse_config(synthesis_config_json(syn))
    seed = syn.seed * 1000 + spec.round
    result, dialogs, errors = run_synthesis(tools, dialogues, seed, (tmp / "dialogs").as_uri(), cfg, make_agents(cfg), LocalToolBackend())
    if result is None or not dialogs:
        raise SystemExit(f"synthesis failed: {errors[:3]}")
    samples = list(dialogs_to_samples(dialogs, round=spec.round, at="", include_kinds=syn.sampleKinds))
    train = [s for s in samples if split_of(s.id, syn.heldoutFraction) == "train"]
    heldout = [s for s in samples if split_of(s.id, syn.heldoutFraction) == "heldout"]
    corrupted: list[str] = []
    if syn.labelNoise > 0:
        train, corrupted = inject_label_noise(train, syn.labelNoise, random.Random(seed), spec.round)
    examples = load_examples(sample_to_verl_row(s, "train", i) for i, s in enumerate(train))
    counts = {"dialogues": len(dialogs), "train": len(examples), "heldout": len(heldout), "labels_corrupted": len(corrupted)}
    return Data(examples, heldout, counts)


def heldout_tally(model: Any, tok: Any, d: Path, heldout: list[Any], max_tokens: int) -> dict[str, tuple[int, int]]:
    """The evaluate stage's held-out scoring of ``model``, served by the real inference backend."""
    from looptool.services.inference.backends.hf import TransformersBackend
    from looptool.services.trainer.modeling import save_model
    from looptool.shared.evaluation import evaluate_samples

    save_model(model, tok, d)
    backend = TransformersBackend(str(d), max_batch_size=16)
    try:
        tally, _ = evaluate_samples(backend, heldout, max_tokens)
    finally:
        backend.close()
    return tally


def sft_for_steps(model: Any, tok: Any, examples: list[Any], cfg: Any, n: int) -> Any:
    """An SFTTrainer whose schedule is exactly ``n`` full batches (epochs as a fraction of the data)."""
    from looptool.services.trainer.sft import SFTTrainer

    cfg.epochs = (n * cfg.batch_size - 0.5) / len(examples)
    sft = SFTTrainer(model, tok, examples, cfg)
    sft.schedule = sft.schedule[:n]
    return sft


class Runner:
    """Builds an arm's trainer, optimizer and schedule for ``n`` steps on a model; one call = one step."""

    def __init__(self, examples: list[Any], tok: Any):
        self.examples, self.tok = examples, tok

    def start(self, arm: Arm, model: Any, n: int) -> Callable[[int], dict[str, float]]:
        import torch

        from looptool.services.trainer.common import make_optimizer, make_scheduler, step_seed
        from looptool.services.trainer.grpo import GRPOConfig, GRPOTrainer
        from looptool.services.trainer.sft import SFTConfig

        spec = arm.spec
        if arm.kind == "grpo":
            g = GRPOTrainer(model, self.tok, self.examples, GRPOConfig.from_spec(spec, n))
            opt = make_optimizer(model, spec.learningRate, spec.weightDecay)
            sched = make_scheduler(opt, spec.lrSchedule, n, spec.warmupRatio)
            return lambda s: g.step(s, opt, sched, step_seed(spec.seed, "grpo", s))
        cfg = SFTConfig.from_spec(spec)
        # another schedule seed than the checkpoint's: a new batch order, not a replay of its first epochs
        cfg.seed = spec.seed + 1
        sft = sft_for_steps(model, self.tok, self.examples, cfg, n)
        opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
        sched = make_scheduler(opt, cfg.schedule, n, cfg.warmup_ratio)

        def step(s: int) -> dict[str, float]:
            torch.manual_seed(step_seed(cfg.seed, "sft", s))
            return sft.step(s, opt, sched)

        return step

    def calibrate(self, arm: Arm, model: Any, seconds: float) -> int:
        """Steps that fit ``seconds``: time a few steps on a throw-away copy of the model."""
        scratch = copy.deepcopy(model)
        step = self.start(arm, scratch, 1000)
        times = []
        for s in range(CALIBRATION_STEPS):
            t = time.perf_counter()
            step(s)
            times.append(time.perf_counter() - t)
        del scratch
        return max(1, int(seconds / statistics.mean(times[1:])))

    def run(self, arm: Arm, model: Any, n: int, cap_seconds: float) -> None:
        step = self.start(arm, model, n)
        t0 = time.perf_counter()
        for s in range(n):
            arm.metrics.append(step(s))
            if time.perf_counter() - t0 > cap_seconds:  # the machine got slower than calibrated
                break
        arm.planned, arm.steps, arm.seconds = n, len(arm.metrics), time.perf_counter() - t0


def sft_policy_diagnostics(model: Any, tok: Any, examples: list[Any], spec: Any, batches: int) -> dict[str, float]:
    """Rollouts of the SFT policy at the demo's GRPO settings, no update: the signal GRPO starts from."""
    from looptool.services.trainer.common import step_seed
    from looptool.services.trainer.grpo import GRPOConfig, GRPOTrainer

    g = GRPOTrainer(model, tok, examples, GRPOConfig.from_spec(spec, batches))
    rewards, flat, zero, correct = [], [], [], []
    for s in range(batches):
        ro = g.rollout(s, step_seed(spec.seed, "grpo", s))
        grp = ro.rewards.view(-1, spec.groupSize)
        rewards.extend(ro.rewards.tolist())
        correct.extend(ro.correct.tolist())
        flat.extend((grp.max(1).values == grp.min(1).values).float().tolist())
        zero.extend((grp.max(1).values == 0).float().tolist())
    return {
        "rollouts": float(len(rewards)),
        "reward_mean": statistics.mean(rewards),
        "reward_std": statistics.pstdev(rewards),
        "sampled_accuracy": statistics.mean(correct),
        "flat_group_share": statistics.mean(flat),
        "flat_all_zero_share": statistics.mean(zero),  # flat because no rollout was right
    }


def parse_grid(text: str, base: Any) -> list[tuple[str, Any]]:
    """``k=v,k=v|k=v`` → [(label, TrainingSpec)], validated as the manifest would validate them."""
    from looptool.shared.loop.manifest import TrainingSpec

    out = []
    for item in filter(None, (p.strip() for p in text.split("|"))):
        upd: dict[str, Any] = {}
        for kv in item.split(","):
            k, _, v = kv.partition("=")
            upd[k.strip()] = json.loads(v.strip())  # numbers and true/false as JSON
        out.append((item, TrainingSpec.model_validate({**base.model_dump(), **upd})))
    return out


def interval(c: int, n: int) -> tuple[float, float]:
    """95% Wilson interval of c/n."""
    if n == 0:
        return 0.0, 0.0
    z, p = 1.96, c / n
    d = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return mid - half, mid + half


def summarize(arm: Arm) -> dict[str, Any]:
    ms = arm.metrics
    out: dict[str, Any] = {
        "arm": arm.name,
        "kind": arm.kind,
        "steps": arm.steps,
        "planned_steps": arm.planned or arm.steps,
        "seconds": round(arm.seconds, 1),
        "heldout_accuracy": round(arm.accuracy, 4),
        "heldout": {k: list(v) for k, v in arm.tally.items()},
    }
    if arm.kind == "grpo" and ms:
        out.update(
            reward_mean=round(statistics.mean(m["reward_mean"] for m in ms), 4),
            reward_std=round(statistics.mean(m["reward_std"] for m in ms), 4),
            flat_group_share=round(statistics.mean(m["flat_group_share"] for m in ms), 4),
            reward_last10=round(statistics.mean(m["reward_mean"] for m in ms[-10:]), 4),
            updates=int(sum(m["updates"] for m in ms)),
            groupSize=arm.spec.groupSize,
            learningRate=arm.spec.learningRate,
            temperature=arm.spec.temperature,
            rewardPartialCredit=arm.spec.rewardPartialCredit,
        )
    elif ms:
        out["sft_loss_last10"] = round(statistics.mean(m["sft_loss"] for m in ms[-10:]), 4)
    return out


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dialogues", type=int, default=800, help="round-1 dialogues to synthesize (the demo: 1600)")
    ap.add_argument("--sft-steps", type=int, default=240, help="SFT optimizer steps to the shared checkpoint (the demo: ~880)")
    ap.add_argument("--seconds", type=float, default=35.0, help="training wall time of each time-matched arm")
    ap.add_argument("--grid", default=DEFAULT_GRID, help="tuned GRPO settings: TrainingSpec overrides k=v,k=v|k=v …")
    ap.add_argument("--steps", default="", help="fix step counts instead of calibrating: ARM=N,ARM=N (arm names as printed)")
    ap.add_argument("--diag-batches", type=int, default=16, help="rollout batches of the SFT policy for the diagnostics")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    ap.add_argument("--checkpoint-cache", type=Path, default=None, help="keep the SFT checkpoint here and reuse it (same data, steps, demo.yaml)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    import torch

    from looptool.services.trainer.common import configure_threads, make_optimizer, make_scheduler, step_seed
    from looptool.services.trainer.data import corpus_texts, eos_ids, tokenize_examples
    from looptool.services.trainer.modeling import load_model, quiet_transformers, save_model, tiny_spec
    from looptool.services.trainer.sft import SFTConfig
    from looptool.shared.tiny_model import build_tiny_model

    quiet_transformers()
    configure_threads(args.threads)
    fixed = {k: int(v) for k, _, v in (p.partition("=") for p in args.steps.split(",") if p)}
    rnd = demo_round()
    base = rnd.spec.training
    max_tokens = rnd.spec.eval.maxTokens
    out: dict[str, Any] = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-grpo-") as td:
        tmp = Path(td)
        data = build_data(tmp, rnd, args.dialogues)
        out["data"] = data.counts
        # 1. the shared SFT checkpoint (or a cached one of the same data, steps and demo manifest)
        cached = None
        if args.checkpoint_cache:
            tag = hashlib.sha256((ROOT / "examples" / "demo.yaml").read_bytes()).hexdigest()[:12]
            cached = args.checkpoint_cache / f"sft-{tag}-d{args.dialogues}-s{args.sft_steps}"
        ckpt = tmp / "sft"
        if cached is not None and (cached / "bench.json").is_file():
            shutil.copytree(cached, ckpt)
            model, tok = load_model(ckpt)
            tokenize_examples(data.train, tok, eos_ids(tok, model)[0])
            info = json.loads((cached / "bench.json").read_text())
            sft_arm = Arm("sft-checkpoint", "sft", base, steps=info["steps"], seconds=info["seconds"], metrics=[info["last"]])
            out["sft_cached"] = str(cached)
        else:
            model_dir = build_tiny_model(tmp / "base", corpus_texts(data.train), tiny_spec("builtin:tiny", base))
            model, tok = load_model(model_dir)
            tokenize_examples(data.train, tok, eos_ids(tok, model)[0])
            torch.manual_seed(base.seed)
            cfg = SFTConfig.from_spec(base)
            sft = sft_for_steps(model, tok, data.train, cfg, args.sft_steps)
            opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
            sched = make_scheduler(opt, cfg.schedule, sft.total_steps, cfg.warmup_ratio)
            t = time.perf_counter()
            for s in range(sft.total_steps):
                torch.manual_seed(step_seed(base.seed, "sft", s))
                last = sft.step(s, opt, sched)
            save_model(model, tok, ckpt)
            sft_arm = Arm("sft-checkpoint", "sft", base, steps=sft.total_steps, seconds=time.perf_counter() - t, metrics=[last])
            (ckpt / "bench.json").write_text(json.dumps({"steps": sft_arm.steps, "seconds": sft_arm.seconds, "last": last}))
            if cached is not None:
                shutil.copytree(ckpt, cached, dirs_exist_ok=True)
            del opt, sched, sft
        sft_arm.tally = heldout_tally(model, tok, tmp / "eval", data.heldout, max_tokens)
        diag = sft_policy_diagnostics(model, tok, data.train, base, args.diag_batches)
        out["sft_policy"] = {k: round(v, 4) for k, v in diag.items()}
        del model

        # 2. the arms, each from the checkpoint
        demo_settings = base.model_copy()
        arms = [Arm("demo-6", "grpo", demo_settings, steps=base.grpoSteps or 6), Arm("grpo-demo", "grpo", demo_settings)]
        for k, (_, spec) in enumerate(parse_grid(args.grid, base), 1):
            arms.append(Arm(f"grpo-{k}", "grpo", spec))
        arms.append(Arm("sft-more", "sft", base))
        runner = Runner(data.train, tok)
        for arm in arms:
            model, _ = load_model(ckpt)
            if arm.name == "demo-6":
                n = arm.steps
            else:
                n = fixed.get(arm.name) or runner.calibrate(arm, model, args.seconds)
            runner.run(arm, model, n, cap_seconds=1.5 * args.seconds if arm.name not in fixed and arm.name != "demo-6" else math.inf)
            arm.tally = heldout_tally(model, tok, tmp / "eval", data.heldout, max_tokens)
            print(f"  {arm.name:10s} {arm.steps:4d}/{n} steps {arm.seconds:6.1f} s  held-out {arm.accuracy:.1%}", file=sys.stderr, flush=True)
            del model

    results = [summarize(sft_arm)] + [summarize(a) for a in arms]
    out["arms"] = results
    out["grid"] = {f"grpo-{k}": item for k, (item, _) in enumerate(parse_grid(args.grid, base), 1)}
    out["total_seconds"] = round(time.perf_counter() - t_all, 1)

    d = out["data"]
    print(
        f"GRPO vs more SFT from one SFT checkpoint — demo round 1 data: {d['dialogues']} dialogues → {d['train']} train samples"
        f" ({d['labels_corrupted']} labels corrupted), {d['heldout']} held-out; builtin:tiny; {args.threads} thread(s)"
    )
    c, n = sft_arm.tally.get("all", (0, 0))
    print(f"SFT checkpoint: {sft_arm.steps} steps in {sft_arm.seconds:.0f} s, held-out {c}/{n}")
    p = out["sft_policy"]
    print(
        f"SFT policy sampled at the demo's GRPO settings ({int(p['rollouts'])} rollouts, T={base.temperature:g}, group {base.groupSize}):"
        f" reward {p['reward_mean']:.3f} ± {p['reward_std']:.3f}, sampled accuracy {p['sampled_accuracy']:.1%},"
        f" flat groups {p['flat_group_share']:.0%} (all-zero {p['flat_all_zero_share']:.0%})"
    )
    print(f"{'arm':15s} {'held-out':>9s} {'95% CI':>13s} {'Δ vs SFT':>9s} {'steps':>9s} {'wall s':>7s} {'reward':>7s} {'std':>6s} {'flat':>5s} {'last10':>7s}  setting")
    for r in results:
        c, n = tuple(r["heldout"].get("all", (0, 0)))
        lo, hi = interval(c, n)
        grpo = r["kind"] == "grpo" and "reward_mean" in r
        cols = f"{r['reward_mean']:7.3f} {r['reward_std']:6.3f} {r['flat_group_share']:5.0%} {r['reward_last10']:7.3f}" if grpo else " " * 29
        setting = out["grid"].get(r["arm"], "demo settings" if r["arm"] in ("demo-6", "grpo-demo") else "")
        print(
            f"{r['arm']:15s} {r['heldout_accuracy']:9.1%} {lo:6.1%}–{hi:5.1%} {r['heldout_accuracy'] - sft_arm.accuracy:+9.1%}"
            f" {str(r['steps']) + '/' + str(r['planned_steps']):>9s} {r['seconds']:7.1f} {cols}  {setting}"
        )
    print(f"total {out['total_seconds']:.0f} s")
    line = json.dumps(out)
    if args.json:
        args.json.write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
