"""Synthesis throughput: dialogues/minute at concurrency 1 vs 2 (and 4) against the same services, and
the share of synthesized dialogues rejected by each quality filter.

Measurements through the real synthesizer service on loopback (gRPC), ratios from the same run:

1. ``programmatic`` agents (the CPU default), a BFCL toolset (``--toolset``, default
   ``bfcl:live_simple``, 60 tools). Concurrency >= 2 runs the dialogues in worker processes
   (``services.synthesizer.processes``, default the CPUs this process may use: concurrency 4 on a
   2-CPU machine is 2 processes); concurrency 1 runs them in the service's process.
   a. ``embedded`` tool simulator: each worker process simulates its own tools, so the whole
      dialogue scales with the processes (the pod's CPU-bound work).
   b. ``remote`` tool simulator: the toolsim gRPC server, started in this benchmark's process; it
      does about two thirds of the CPU work (schema checks when a session opens) in one
      GIL-bound process, which caps this ratio whatever the synthesizer does.
2. ``llm`` agents against a real inference server (transformers backend, a tiny randomly initialised
   local model built here — no download): every agent turn is a generation, so concurrency lets the
   server batch requests. A random model writes nonsense, so most of its dialogues are rejected —
   the filter shares of this run show the filters working, not a data-quality figure.

Usage: ``python bench/bench_synthesis.py [--n 300] [--concurrency 1,2,4] [--llm-n 12] [--skip-llm] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rejections(counts: dict[str, int]) -> dict[str, float]:
    processed = max(1, counts.get("processed", 0))
    out = {k.split(".", 1)[1]: v / processed for k, v in counts.items() if k.startswith("rejected.")}
    out["errors"] = counts.get("errors", 0) / processed
    return out


def run_once(client, toolset, n: int, concurrency: int, out: str, config: dict) -> dict:
    t0 = time.perf_counter()
    result, dialogs, errors = client.synthesize(toolset, n, seed=1, concurrency=concurrency, output_prefix=out, config=config)
    seconds = time.perf_counter() - t0
    assert result is not None, errors[:3]
    c = dict(result.counts)
    return {
        "concurrency": concurrency,
        "dialogues": c["processed"],
        "kept": c["kept"],
        "seconds": round(seconds, 2),
        "dialogues_per_minute": round(60 * c["processed"] / seconds, 1),
        "rejected_share": {k: round(v, 3) for k, v in _rejections(c).items()},
        "content_hash": result.outputs[0].content_hash[:16],
        "counts": c,
    }


def tiny_model(root: Path) -> Path:
    from looptool.shared.tiny_model import TinyModelSpec, build_tiny_model

    corpus = [
        "What is the weather in Paris today?",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        "Book a table for two at an Italian restaurant in Rome at 7 pm.",
        '{"needs": [{"kind": "single", "tools": ["get_weather"]}]}',
    ] * 20
    spec = TinyModelSpec(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, max_positions=2048)
    return build_tiny_model(root / "tiny", corpus, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300, help="dialogues per programmatic run")
    ap.add_argument("--concurrency", default="1,2,4", help="programmatic runs' concurrencies; the first is the baseline")
    ap.add_argument("--repeat", type=int, default=3, help="programmatic runs per concurrency (alternating); the best counts")
    ap.add_argument("--llm-n", type=int, default=12, help="dialogues per llm-agent run")
    ap.add_argument("--toolset", default="bfcl:live_simple")
    ap.add_argument("--tools", type=int, default=60, help="tools taken from the toolset")
    ap.add_argument("--skip-llm", action="store_true")
    ap.add_argument("--llm-tools-per-sample", type=int, default=3, help="tools per dialogue for the llm run (prompt length)")
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--json", default="", help="also write the results as JSON here")
    args = ap.parse_args(argv)

    from looptool.services.synthesizer import server as synth_server
    from looptool.services.synthesizer.client import SynthesizerClient
    from looptool.services.toolsim import server as toolsim_server
    from looptool.shared.grpc_util import wait_healthy
    from looptool.shared.toolsets import import_source, store_toolset
    from looptool.shared.workers import available_cpus

    concurrencies = [int(c) for c in args.concurrency.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench-synth-"))
    results: dict = {"toolset": args.toolset, "tools": args.tools, "cpus": os.cpu_count(), "available_cpus": available_cpus()}
    running = []
    try:
        tools = import_source(args.toolset, limit=args.tools).tools
        toolset = store_toolset(tools, (tmp / "toolset").as_uri())
        toolsim = toolsim_server.start(None, port=0)
        running.append(toolsim)
        inference = None
        cfg = None
        if not args.skip_llm:
            import torch

            from looptool.services.inference import server as inference_server
            from looptool.shared.config import InferenceSettings, LoopToolConfig

            torch.set_num_threads(args.torch_threads)
            model_dir = tiny_model(tmp)
            cfg = LoopToolConfig(inference=InferenceSettings(model=str(model_dir), max_batch_size=16, batch_wait_ms=5))
            inference = inference_server.start(cfg, port=0)
            running.append(inference)
            cfg.services.inference.port = inference.port
        synth = synth_server.start(cfg, port=0, toolsim_address=toolsim.address)
        running.append(synth)
        for r in running:
            wait_healthy(r.address, 120)

        with SynthesizerClient(synth.address) as client:
            for kind, extra in (("embedded", {"toolsimAddress": "embedded"}), ("remote", {})):
                config = {"agents": "programmatic", **extra}
                for conc in concurrencies:  # a running service has its worker processes started: untimed
                    run_once(client, toolset, 16, conc, (tmp / f"warm-{kind}-{conc}").as_uri(), config)
                # concurrencies alternate and each keeps its best run: load from other processes on the
                # machine slows some runs, and alternating spreads it over all of them
                prog: dict[int, dict] = {}
                for rep in range(args.repeat):
                    for conc in concurrencies:
                        r = run_once(client, toolset, args.n, conc, (tmp / f"prog-{kind}-{conc}-{rep}").as_uri(), config)
                        if conc not in prog or r["dialogues_per_minute"] > prog[conc]["dialogues_per_minute"]:
                            prog[conc] = r
                assert len({r["content_hash"] for r in prog.values()}) == 1, "concurrency changed the dataset"
                base = prog[concurrencies[0]]["dialogues_per_minute"]
                results[f"programmatic, {kind} toolsim"] = {
                    "runs": list(prog.values()),
                    **{f"ratio_c{c}_over_c{concurrencies[0]}": round(prog[c]["dialogues_per_minute"] / base, 2)
                       for c in concurrencies[1:]},
                }
            if not args.skip_llm:
                llm = {}
                config = {"agents": "llm", "votes": 3, "maxTurnRetries": 1, "maxTokens": 48, "maxNeeds": 1, "maxSteps": 3,
                          "toolsPerSample": args.llm_tools_per_sample}
                for conc in (1, 4):
                    llm[conc] = run_once(client, toolset, args.llm_n, conc, (tmp / f"llm-{conc}").as_uri(), config)
                results["llm"] = {
                    "backend": f"transformers, tiny random Llama (64 hidden, 2 layers), CPU, {args.torch_threads} torch thread(s)",
                    "tools_per_sample": args.llm_tools_per_sample,
                    "runs": [llm[1], llm[4]],
                    "ratio_c4_over_c1": round(llm[4]["dialogues_per_minute"] / llm[1]["dialogues_per_minute"], 2),
                }
    finally:
        for r in reversed(running):
            try:
                r.stop(0)
            except Exception:  # noqa: BLE001
                pass
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"CPUs: {results['cpus']} (this process may use {results['available_cpus']})")
    for kind in [k for k in results if k.startswith(("programmatic", "llm"))]:
        block = results[kind]
        best = f", best of {args.repeat}" if kind.startswith("programmatic") else ""
        print(f"== {kind} agents ({args.toolset}, {args.tools} tools{best})")
        for r in block["runs"]:
            print(f"  concurrency {r['concurrency']}: {r['dialogues']} dialogues in {r['seconds']}s = "
                  f"{r['dialogues_per_minute']} dialogues/min, kept {r['kept']}")
        for key in [k for k in block if k.startswith("ratio_")]:
            print(f"  {key.removeprefix('ratio_').replace('_over_', '/')}: {block[key]}")
        shares = block["runs"][0]["rejected_share"]
        print("  rejected share by filter: " + ", ".join(f"{k} {v:.1%}" for k, v in shares.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
