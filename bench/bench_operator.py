"""Reconcile throughput: time for the operator to drive N LoopRounds to their training Jobs.

The operator runs exactly as ``looptool operator`` does (``looptool.operators.main.operate``: kopf,
the reconciler, the Kubernetes client) against kmock's in-memory Kubernetes API on loopback
(``FakeKubeApi``). Data stages use the TEST EXECUTOR (deterministic, writes small datasets to a
temporary local store), so the numbers measure the control plane: watch → validate → Pending →
Synthesizing (+ status writes, events) → Training Job + request ConfigMap.

    python bench/bench_operator.py [--rounds 100] [--full]

``--full`` also completes every Job and measures the time to Succeeded (probe/judge/expand/evaluate).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the fake cluster: tests/support/fake_kube.py

from looptool.operators.main import operate  # noqa: E402
from looptool.operators.settings import OperatorSettings  # noqa: E402
from support.fake_kube import FakeKubeApi, FakeKubeApiProcess, TestStageExecutor, complete_training  # noqa: E402

LR = ("looptool.io/v1alpha1", "looprounds")


def loopround(i: int) -> dict:
    return {
        "apiVersion": "looptool.io/v1alpha1",
        "kind": "LoopRound",
        "metadata": {"name": f"bench-{i:04d}"},
        "spec": {
            "baseModel": {"uri": "s3://looptool/models/base"},
            "toolset": {"bfcl": {"category": "simple_python"}},
            "training": {"backend": "verl", "gpus": 8},
            "resources": {"nodeSelector": {"nvidia.com/gpu.product": "H100"}},
        },
    }


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--full", action="store_true", help="also finish the Jobs and time the rounds to Succeeded")
    ap.add_argument("--backlog", action="store_true",
                    help="create all rounds first, then start the operator (default: create them while it runs)")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--in-process", action="store_true",
                    help="run the fake API in this process (default: a child process, so the mock does not share the GIL)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for name in ("kopf", "aiohttp.access", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)

    tmp = tempfile.TemporaryDirectory(prefix="looptool-bench-")
    api = FakeKubeApi() if args.in_process else FakeKubeApiProcess()
    api.start()
    executor = TestStageExecutor(Path(tmp.name) / "store")
    settings = OperatorSettings(namespaces=["default"], apiUrl=api.url, metricsPort=0, pollSeconds=5.0, progressSeconds=5.0)
    stop, ready = threading.Event(), threading.Event()
    op = threading.Thread(
        target=lambda: asyncio.run(operate(settings, executor, stop_flag=stop, ready_flag=ready)), name="operator", daemon=True
    )

    def start_operator() -> None:
        op.start()
        if not ready.wait(30):
            raise SystemExit("operator did not start")

    created: dict[str, float] = {}
    jobs_seen: dict[str, float] = {}
    if not args.backlog:
        start_operator()
    t0 = time.perf_counter()
    for i in range(args.rounds):
        name = f"bench-{i:04d}"
        api.create(*LR, loopround(i))
        created[name] = time.perf_counter()
    t_created = time.perf_counter()
    if args.backlog:  # all rounds exist before the operator starts: pure reconcile throughput
        t0 = time.perf_counter()
        start_operator()
        created = dict.fromkeys(created, t0)

    deadline = time.monotonic() + args.timeout
    while len(jobs_seen) < args.rounds and time.monotonic() < deadline:
        now = time.perf_counter()
        for job in api.list("batch/v1", "jobs"):
            owner = job["metadata"]["labels"]["looptool.io/round"]
            jobs_seen.setdefault(owner, now)
        time.sleep(0.01)
    t_jobs = time.perf_counter()
    if len(jobs_seen) < args.rounds:
        print(f"only {len(jobs_seen)}/{args.rounds} Jobs after {args.timeout}s", file=sys.stderr)
        return 1
    jobs = api.list("batch/v1", "jobs")
    assert len(jobs) == args.rounds, f"{len(jobs)} Jobs for {args.rounds} rounds (duplicates?)"
    latency = [jobs_seen[n] - created[n] for n in created]
    requests_to_jobs = api.requests_served if args.in_process else api.stats()["requests_served"]  # type: ignore[attr-defined]

    result = {
        "rounds": args.rounds,
        "scenario": "backlog (rounds exist, then the operator starts)" if args.backlog else "burst (rounds created while the operator runs)",
        "create_all_s": round(t_created - t0, 3) if not args.backlog else None,
        "wall_to_all_jobs_s": round(t_jobs - t0, 3),
        "per_round_ms": round((t_jobs - t0) / args.rounds * 1000, 1),
        "throughput_rounds_per_s": round(args.rounds / (t_jobs - t0), 1),
        "latency_to_job_ms": {
            "p50": round(statistics.median(latency) * 1000, 1),
            "p95": round(pct(latency, 95) * 1000, 1),
            "max": round(max(latency) * 1000, 1),
        },
        "api_requests_per_round": round(requests_to_jobs / args.rounds, 1),
        "fake_api": "in-process" if args.in_process else "child process",
        "jobs": len(jobs),
    }

    if args.full:
        t1 = time.perf_counter()
        for job in jobs:
            name = job["metadata"]["name"]
            complete_training(json.loads(api.get("v1", "configmaps", name)["data"]["request.json"]))
            api.patch("batch/v1", "jobs", name, {"status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}}, sub="status")
        done: set[str] = set()
        while len(done) < args.rounds and time.monotonic() < deadline + args.timeout:
            done = {r["metadata"]["name"] for r in api.list(*LR) if (r.get("status") or {}).get("phase") == "Succeeded"}
            time.sleep(0.05)
        t2 = time.perf_counter()
        result["jobs_done_to_all_succeeded_s"] = round(t2 - t1, 3)
        result["succeeded"] = len(done)

    stop.set()
    op.join(timeout=30)
    api.stop()
    tmp.cleanup()
    print(json.dumps(result, indent=1))
    print(
        f"{args.rounds} LoopRounds -> training Jobs in {result['wall_to_all_jobs_s']} s "
        f"({result['per_round_ms']} ms/round, {result['throughput_rounds_per_s']} rounds/s; "
        f"per-round latency p50 {result['latency_to_job_ms']['p50']} ms, p95 {result['latency_to_job_ms']['p95']} ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
