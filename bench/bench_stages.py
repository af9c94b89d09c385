#!/usr/bin/env python
"""Sharded probe stage: throughput on 1 vs 2 inference replicas, and how the shards spread.

Model: the project's tiny from-scratch model (``TinyModelSpec()`` defaults, built locally, as in
``bench_inference.py``). Workload: ``--samples`` single-turn tool-calling samples, probed greedily
(``maxTokens`` = ``--max-tokens``) by ``stages.stage_probe`` in shards of ``--shard-size``.

Replicas are separate ``looptool serve inference`` processes on loopback, each with ``--threads``
torch threads (default 1, so two replicas use two cores where one uses one). Measured, in one run
on the same replicas: the stage with ``endpoints = [replica 1]`` and with ``endpoints = [replica 1,
replica 2]`` (fresh outputs each time, ``--repeat`` alternating pairs, best of each). Throughput =
samples ÷ stage wall time; ratio = 2-replica ÷ 1-replica throughput (target ≥ 1.5×; the machine is
shared, so a low figure can be load, see the per-run times). Also shown: shards per replica and
that both runs committed the same merged dataset (content hash).

Prints the numbers and PASS/FAIL against the target; exits 0. Takes a minute or two.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

RATIO_TARGET = 1.5


def make_samples(n: int):
    from looptool.shared.records import Message, Sample, Tool, ToolCall

    weather = Tool(name="get_weather", description="Current weather and forecast for a city",
                   parameters={"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                               "required": ["city"]})
    cities = ["Paris", "London", "Berlin", "Madrid", "Rome", "Vienna", "Oslo", "Lisbon", "Prague", "Dublin"]
    return [
        Sample(context=[Message(role="user", content=f"What's the weather in {cities[i % 10]} for {i % 6 + 1} days? (#{i})")],
               tools=[weather], reference=[ToolCall(name="get_weather", arguments={"city": cities[i % 10], "days": i % 6 + 1})]
               ).with_id()
        for i in range(n)
    ]


def start_replica(model_dir: Path, store: Path, workdir: Path, threads: int, batch: int) -> tuple[subprocess.Popen, str]:
    port_file = workdir / f"port-{time.monotonic_ns()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPTOOL_")}
    env.update(LOOPTOOL_INFERENCE__MODEL=str(model_dir), LOOPTOOL_STORAGE__ROOT=str(store),
               LOOPTOOL_INFERENCE__MAX_BATCH_SIZE=str(batch), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               OMP_WAIT_POLICY="PASSIVE")
    log = open(workdir / f"{port_file.name}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "looptool.cli", "serve", "inference", "--host", "127.0.0.1", "--port", "0",
                             "--metrics-port", "0", "--port-file", str(port_file)], env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"replica did not start; see {log.name}")
        time.sleep(0.2)
    return proc, f"127.0.0.1:{port_file.read_text().strip()}"


class Served(logging.Handler):
    """The stage's 'shards done' log line: shards per replica."""

    def __init__(self):
        super().__init__()
        self.served: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "shards done":
            self.served = dict(getattr(record, "served", {}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=192)
    ap.add_argument("--shard-size", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per replica")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    from bench_inference import build_model, make_prompts

    from looptool.services.inference.client import InferenceClient
    from looptool.shared.config import LoopToolConfig, StorageSettings
    from looptool.shared.grpc_util import wait_healthy
    from looptool.shared.loop.manifest import parse_round
    from looptool.shared.loop.stages import StageContext, stage_probe
    from looptool.shared.loop.state import RoundStatus
    from looptool.shared.storage import writer_for_uri

    served = Served()
    logging.getLogger("looptool.stages").addHandler(served)
    logging.getLogger("looptool.stages").setLevel(logging.INFO)
    with tempfile.TemporaryDirectory(prefix="bench-stages-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        model_dir = build_model(work, make_prompts(16))
        store = work / "store"
        w = writer_for_uri(str(store / "train"), kind="samples")
        w.write_many(make_samples(args.samples))
        train = w.commit()
        procs = []
        try:
            for _ in range(2):
                procs.append(start_replica(model_dir, store, work, args.threads, args.batch_size))
            addrs = [a for _, a in procs]
            for a in addrs:
                wait_healthy(a, 120)
            print(f"model: tiny Llama (TinyModelSpec defaults), built in {time.perf_counter() - t0:.1f}s; "
                  f"2 replicas (processes), {args.threads} torch thread(s) each")
            print(f"workload: probe {args.samples} samples, greedy, max {args.max_tokens} new tokens, "
                  f"shards of {args.shard_size}, batch size {args.batch_size}")
            cfg = LoopToolConfig(storage=StorageSettings(root=str(store)))
            cfg.services.inference.shard_size = args.shard_size
            rnd = parse_round({"apiVersion": "looptool.io/v1alpha1", "kind": "LoopRound", "metadata": {"name": "bench"},
                               "spec": {"baseModel": {"builtin": "tiny"}, "toolset": {"bfcl": {"category": "simple_python"}},
                                        "probe": {"maxTokens": args.max_tokens}}})

            def probe(targets: list[str], tag: str) -> tuple[float, str, dict[str, int]]:
                ctx = StageContext(round=rnd, config=cfg, addresses={"inference": targets[0]}, endpoints={"inference": targets},
                                   base_uri=(work / tag).as_uri(), generator=InferenceClient)
                status = RoundStatus()
                status.stage("synthesize").outputs["train"] = train
                start = time.perf_counter()
                stage_probe(ctx, status, lambda p: None)
                return time.perf_counter() - start, status.stage("probe").outputs["probe_results"].content_hash, served.served

            probe(addrs, "warmup")  # loads the model on both replicas
            runs: dict[int, list[float]] = {1: [], 2: []}
            hashes, spread = set(), {}
            for r in range(args.repeat):
                order = (1, 2) if r % 2 == 0 else (2, 1)
                for n in order:
                    secs, h, dist = probe(addrs[:n], f"run{r}-{n}")
                    runs[n].append(secs)
                    hashes.add(h)
                    if n == 2:
                        spread = dist
            best = {n: min(v) for n, v in runs.items()}
            tput = {n: args.samples / best[n] for n in best}
            ratio = tput[2] / tput[1]
            for n in (1, 2):
                print(f"{n} replica{'s' if n > 1 else ' '}: best {best[n]:6.2f}s = {tput[n]:7.1f} samples/s  "
                      f"(runs: {', '.join(f'{s:.2f}s' for s in runs[n])})")
            print(f"shards per replica (2-replica run): " + ", ".join(f"{a}: {spread.get(a, 0)}" for a in addrs)
                  + f"  of {-(-args.samples // args.shard_size)}")
            print(f"merged output identical across runs: {'yes' if len(hashes) == 1 else 'NO'} ({len(hashes)} distinct hashes)")
            print(f"2-replica speed-up: {ratio:.2f}x  (target >= {RATIO_TARGET}x)  {'PASS' if ratio >= RATIO_TARGET else 'FAIL'}")
        finally:
            for p, _ in procs:
                p.terminate()
            for p, _ in procs:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
