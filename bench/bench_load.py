#!/usr/bin/env python
"""Bounded load on loopback (issue 17.8): the inference server under concurrent Generate calls, a
data stage (Probe) under concurrent requests, and a server killed (SIGKILL) in the middle of a Probe
stage, restarted, and the same request re-sent: it must resume to the same output hash as an
uninterrupted run.

Model: the tests' tiny local Llama (``tests/support/inference.py``: hidden 64, 2 layers, BPE 512;
built in a temp dir, no download). The server is a real ``looptool serve inference`` process (so it
can be killed), ``--port 0`` with a port file.

Bounds: every load phase stops at ``--requests`` requests or ``--duration`` seconds, whichever comes
first; a phase that hits the duration reports how many it completed. Reported per phase:
completed / errors, throughput (requests/s), p50 / p95 latency (s). The kill phase reports the
records the killed run had committed, the restart time and whether the resumed output's content
hash equals the uninterrupted run's (exit 1 when it does not). Takes 1-3 minutes on a laptop CPU.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # support.inference: the tiny model and sample datasets


def start_server(work: Path, model: Path, tag: str) -> tuple[subprocess.Popen, str]:
    port_file = work / f"port-{tag}"
    port_file.unlink(missing_ok=True)
    env = {**os.environ, "LOOPTOOL_INFERENCE__MODEL": str(model), "LOOPTOOL_STORAGE__ROOT": str(work / "store"),
           "LOOPTOOL_LOG__LEVEL": "WARNING"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "looptool.cli", "serve", "inference", "--port", "0", "--port-file", str(port_file)],
        env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=open(work / f"server-{tag}.log", "w"),
    )
    deadline = time.monotonic() + 120
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"inference server did not start; see {work}/server-{tag}.log")
        time.sleep(0.1)
    address = f"127.0.0.1:{port_file.read_text().strip()}"
    from looptool.shared.grpc_util import wait_healthy

    wait_healthy(address, timeout=60)
    return proc, address


def bounded(fn, n: int, concurrency: int, duration: float) -> dict:
    """Run ``fn(i)`` for i < n on ``concurrency`` threads, none started after ``duration`` s."""
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    t0 = time.monotonic()

    def one(i: int) -> None:
        if time.monotonic() - t0 > duration:
            return
        s = time.perf_counter()
        try:
            fn(i)
            with lock:
                lat.append(time.perf_counter() - s)
        except Exception as exc:  # noqa: BLE001 - counted and shown, the load goes on
            with lock:
                errors.append(f"{type(exc).__name__}: {str(exc)[:120]}")

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(n)))
    wall = time.monotonic() - t0
    lat.sort()
    return {
        "done": len(lat), "errors": len(errors), "first_error": errors[0] if errors else "", "wall": wall,
        "rps": len(lat) / wall if wall else 0.0,
        "p50": statistics.median(lat) if lat else float("nan"),
        "p95": lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else float("nan"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=96, help="Generate requests in the generate phase")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--duration", type=float, default=90.0, help="seconds after which a phase starts no more requests")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--probe-requests", type=int, default=8, help="concurrent Probe stages (16 samples each)")
    ap.add_argument("--kill-samples", type=int, default=96, help="samples of the Probe stage that is killed")
    args = ap.parse_args()

    import torch
    from support.inference import make_samples, tiny_model_dir, write_samples

    from looptool.services.inference.client import InferenceClient, drain
    from looptool.shared.generation import GenRequest, SamplingParams
    from looptool.shared.loop.manifest import ProbeSpec
    from looptool.shared.records import Message
    from looptool.shared.storage import open_dataset

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="looptool-load-"))
    model = tiny_model_dir()
    store = work / "store"
    rows = []

    proc, address = start_server(work, model, "a")
    try:
        client = InferenceClient(address, timeout_s=120)

        def generate(i: int) -> None:
            res = client.generate_one(GenRequest(messages=[Message(role="user", content=f"What is the weather in city {i}?")],
                                                 params=SamplingParams(max_tokens=args.max_tokens, temperature=0.0)))
            if res.error:
                raise RuntimeError(res.error)

        g = bounded(generate, args.requests, args.concurrency, args.duration)
        rows.append(("Generate (unary)", args.requests, args.concurrency, g))

        # an oversized prompt: refused by its byte size (limits.prompt_bytes) before tokenizing
        big = GenRequest(messages=[Message(role="user", content="x" * (20 * 2**20))], params=SamplingParams(max_tokens=4))
        t = time.perf_counter()
        try:
            client.generate_one(big)
            big_refusal = "ACCEPTED"
        except Exception as exc:  # noqa: BLE001 - the refusal is the point
            big_refusal = f"{getattr(exc, 'code', type(exc).__name__)}"
        big_ms = 1000 * (time.perf_counter() - t)

        spec = ProbeSpec(maxTokens=args.max_tokens)
        datasets = [write_samples((store / f"in-{j}").as_uri(), make_samples(16, start=16 * j)) for j in range(args.probe_requests)]

        def probe(j: int) -> None:
            result, errs, _ = drain(client.probe(datasets[j], (store / f"probe-{j}").as_uri(), spec))
            if result is None or errs:
                raise RuntimeError(f"probe {j}: {errs[:1] or 'no result'}")

        p = bounded(probe, args.probe_requests, min(args.concurrency, args.probe_requests), args.duration)
        rows.append(("Probe stage (16 samples)", args.probe_requests, min(args.concurrency, args.probe_requests), p))

        # the reference: the kill phase's stage, uninterrupted
        kill_in = write_samples((store / "kill-in").as_uri(), make_samples(args.kill_samples, start=1000))
        t = time.monotonic()
        ref, _, _ = drain(client.probe(kill_in, (store / "kill-ref").as_uri(), spec))
        ref_wall = time.monotonic() - t
        client.close()
    finally:
        proc.kill()
        proc.wait()

    # the same stage, its server SIGKILLed once some parts are committed, restarted, the request re-sent
    proc, address = start_server(work, model, "b")
    out_uri = (store / "kill-run").as_uri()
    committed_before_kill = 0
    try:
        client = InferenceClient(address, timeout_s=300)
        events = client.probe(kill_in, out_uri, spec)
        t_kill = time.monotonic()
        for _ in events:
            parts = list((store / "kill-run").rglob("part-*")) if (store / "kill-run").exists() else []
            if parts or time.monotonic() - t_kill > 0.6 * ref_wall:
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        committed_before_kill = len(list((store / "kill-run").rglob("part-*"))) if (store / "kill-run").exists() else 0
        try:
            drain(events)
        except Exception:  # noqa: BLE001 - the stream breaks with the server: expected
            pass
        client.close()
    finally:
        if proc.poll() is None:
            proc.kill()
    t = time.monotonic()
    proc, address = start_server(work, model, "c")
    restart = time.monotonic() - t
    try:
        client = InferenceClient(address, timeout_s=300)
        t = time.monotonic()
        resumed, errs, _ = drain(client.probe(kill_in, out_uri, spec))
        resume_wall = time.monotonic() - t
        client.close()
    finally:
        proc.kill()
        proc.wait()

    ref_hash = open_dataset(ref.outputs[0].uri).content_hash if ref and ref.outputs else ""
    got_hash = open_dataset(resumed.outputs[0].uri).content_hash if resumed and resumed.outputs else ""
    same = bool(ref_hash) and ref_hash == got_hash

    print(f"\nbounded load on loopback (tiny model, max_tokens {args.max_tokens}, {os.cpu_count()} CPUs visible)")
    print(f"{'phase':<26} {'requests':>8} {'conc':>5} {'done':>5} {'errors':>6} {'req/s':>7} {'p50 s':>7} {'p95 s':>7}")
    for name, n, c, r in rows:
        print(f"{name:<26} {n:>8} {c:>5} {r['done']:>5} {r['errors']:>6} {r['rps']:>7.2f} {r['p50']:>7.3f} {r['p95']:>7.3f}")
        if r["first_error"]:
            print(f"  first error: {r['first_error']}")
    print(f"\n20 MB prompt: {big_refusal} after {big_ms:.0f} ms (round trip, transfer included)")
    print(f"kill -9 during a {args.kill_samples}-sample Probe stage: {committed_before_kill} part file(s) on disk at the kill, "
          f"restart {restart:.1f}s, resumed stage {resume_wall:.1f}s (uninterrupted {ref_wall:.1f}s)")
    print(f"output hash uninterrupted {ref_hash[:16]}  resumed {got_hash[:16]}  -> {'SAME' if same else 'DIFFERENT'}"
          + (f"  errors: {errs[:1]}" if errs else ""))
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
