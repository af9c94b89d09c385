#!/usr/bin/env python
"""Inference throughput: the batching backend vs one-prompt-at-a-time ``model.generate``, and the
gRPC path vs calling the backend in-process — same model, same 64 prompts, one run.

Model: the project's tiny from-scratch model at the size the CPU demo uses (``TinyModelSpec()``
defaults: Llama architecture, hidden 128, 4 layers, 4 heads, BPE vocabulary 2048 trained on the
prompts), built locally in a temp dir (no download). Its random weights are re-drawn with a larger
std so that greedy outputs differ between prompts and rarely hit EOS: every path decodes about
``--max-tokens`` tokens per prompt. Prompts: 64 tool-calling requests rendered with the shared
prompt format (system instruction + ``# Tools`` block with two tools + one user turn).

Measured (throughput: best of ``--repeat`` runs; the machine is noisy):

1. **sequential**: for each prompt, tokenize + ``model.generate(max_new_tokens, greedy)``, one at a
   time — what a naive server does.
2. **batched**: all 64 requests submitted concurrently to ``TransformersBackend`` (queue + worker;
   ``--batch-size`` rows per ``generate``, preallocated KV cache, the prompts' shared prefix — system
   prompt + tools block — computed once per batch). Ratio = batched tokens/s ÷ sequential tokens/s
   (target ≥ 4×). Also shown: the same queue with prefix caching off (batching alone). The greedy
   texts of all paths are compared (they must agree; left padding must not change greedy output).
3. **in-process** vs **gRPC**: the same 64 requests through ``backend.generate`` and through
   ``InferenceClient.generate`` (one ``GenerateBatch`` RPC to a loopback server that serves that same
   backend instance). Overhead = median over back-to-back pairs of gRPC time ÷ in-process time − 1
   (target ≤ 10%); pairs alternate their order so drift in machine load hits both sides.

Prints the numbers and PASS/FAIL against the targets; exits 0. Takes about a minute.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SPEEDUP_TARGET = 4.0
OVERHEAD_TARGET = 0.10
CITIES = ["Paris", "London", "Berlin", "Madrid", "Rome", "Vienna", "Oslo", "Lisbon", "Prague", "Dublin", "Athens", "Warsaw",
          "Zurich", "Brussels", "Helsinki", "Budapest"]


def make_prompts(n: int):
    from looptool.shared.generation import GenRequest, SamplingParams
    from looptool.shared.records import Message, Tool

    tools = [
        Tool(name="get_weather", description="Current weather and forecast for a city",
             parameters={"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                                                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                         "required": ["city"]}),
        Tool(name="book_flight", description="Book a flight between two cities",
             parameters={"type": "object", "properties": {"origin": {"type": "string"}, "destination": {"type": "string"},
                                                           "seats": {"type": "integer"}}, "required": ["origin", "destination"]}),
    ]
    out = []
    for i in range(n):
        a, b = CITIES[i % len(CITIES)], CITIES[(i * 7 + 3) % len(CITIES)]
        text = [f"What's the weather in {a} for the next {i % 6 + 1} days?",
                f"Book {i % 4 + 1} seats from {a} to {b}, please.",
                f"I fly from {a} to {b} tomorrow; how warm will it be in {b}?",
                f"Check the forecast for {a} in fahrenheit and book a flight to {b}."][i % 4]
        out.append(GenRequest([Message(role="user", content=text)], tools, SamplingParams(max_tokens=0)))
    return out


def build_model(workdir: Path, prompts) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    from looptool.shared.prompt import build_chat
    from looptool.shared.tiny_model import TinyModelSpec, build_tiny_model

    corpus = [m["content"] for p in prompts[:8] for m in build_chat(p.messages, p.tools)] * 4
    out = build_tiny_model(workdir / "model", corpus, TinyModelSpec())
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    model.save_pretrained(out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32, help="rows per model batch (InferenceSettings.max_batch_size)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: on a shared 2-core machine two threads fighting other "
                         "processes make forward passes up to 10x slower; 0 = torch's default)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from looptool.services.inference.backends.hf import TransformersBackend
    from looptool.services.inference.client import InferenceClient
    from looptool.services.inference.pool import ModelPool
    from looptool.services.inference.server import start
    from looptool.shared.config import InferenceSettings, LoopToolConfig, StorageSettings

    prompts = make_prompts(args.prompts)
    for p in prompts:
        p.params.max_tokens = args.max_tokens
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        t0 = time.perf_counter()
        model_dir = build_model(Path(tmp), prompts)
        settings = InferenceSettings(model=str(model_dir), max_batch_size=args.batch_size, batch_wait_ms=5, max_context=4096)
        backend = TransformersBackend(str(model_dir), max_batch_size=args.batch_size, batch_wait_ms=5, max_context=4096)
        n_params = sum(p.numel() for p in backend.hf_model.parameters())
        prompt_lens = [len(backend.encode(p)) for p in prompts]
        print(f"model: tiny Llama (TinyModelSpec defaults), {n_params / 1e6:.2f}M parameters, built in "
              f"{time.perf_counter() - t0:.1f}s; torch threads {torch.get_num_threads()}")
        print(f"workload: {len(prompts)} prompts, {min(prompt_lens)}-{max(prompt_lens)} prompt tokens, "
              f"greedy, max {args.max_tokens} new tokens; batch size {args.batch_size}")

        model, tok = backend.hf_model, backend.tokenizer

        def sequential() -> tuple[float, int, list[str]]:
            texts, tokens = [], 0
            start_t = time.perf_counter()
            for p in prompts:
                ids = tok(backend.render(p), add_special_tokens=False, return_tensors="pt")
                with torch.inference_mode():
                    out = model.generate(**ids, max_new_tokens=args.max_tokens, do_sample=False,
                                         pad_token_id=backend.pad_id, eos_token_id=backend.eos_ids)
                new = out[0, ids["input_ids"].shape[1]:].tolist()
                tokens += len(new)
                texts.append(backend.decode(new))
            return time.perf_counter() - start_t, tokens, texts

        def batched() -> tuple[float, int, list[str]]:
            start_t = time.perf_counter()
            futures = [backend.submit(p) for p in prompts]
            results = [f.result() for f in futures]
            dt = time.perf_counter() - start_t
            assert all(not r.error for r in results), [r.error for r in results if r.error][:1]
            return dt, sum(r.completion_tokens for r in results), [r.completions[0].text for r in results]

        sequential()  # warm-up (allocator, kernels)
        batched()
        seq_runs, bat_runs = [], []
        for _ in range(args.repeat):
            seq_runs.append(sequential())
            bat_runs.append(batched())
        backend.prefix_caching = False  # the same queue without shared-prefix caching: batching alone
        plain_runs = [batched() for _ in range(args.repeat)]
        backend.prefix_caching = True
        seq_t, seq_tokens, seq_texts = min(seq_runs, key=lambda r: r[0])
        plain_t, plain_tokens, plain_texts = min(plain_runs, key=lambda r: r[0])
        bat_t, bat_tokens, bat_texts = min(bat_runs, key=lambda r: r[0])
        same = sum(a == b for a, b in zip(seq_texts, bat_texts))
        seq_tps, bat_tps = seq_tokens / seq_t, bat_tokens / bat_t
        speedup = bat_tps / seq_tps
        print(f"sequential model.generate: {seq_tokens} tokens in {seq_t:.2f}s = {seq_tps:8.1f} tok/s")
        print(f"batched backend queue:     {bat_tokens} tokens in {bat_t:.2f}s = {bat_tps:8.1f} tok/s "
              f"(batches of {sorted(set(backend.queue.batch_sizes[-8:]))} rows)")
        print(f"  without prefix caching:  {plain_tokens} tokens in {plain_t:.2f}s = {plain_tokens / plain_t:8.1f} tok/s "
              f"({plain_tokens / plain_t / seq_tps:.2f}x; batching alone)")
        same += 0 if plain_texts == bat_texts else -len(prompts)
        print(f"greedy outputs identical:  {max(same, 0)}/{len(prompts)} (sequential vs batched, with and without prefix caching)")
        print(f"batching speed-up:         {speedup:.2f}x  (target >= {SPEEDUP_TARGET:.0f}x)  "
              f"{'PASS' if speedup >= SPEEDUP_TARGET and same == len(prompts) else 'FAIL'}")

        cfg = LoopToolConfig(inference=settings, storage=StorageSettings(root=str(Path(tmp) / "store")))
        pool = ModelPool(settings)
        pool._models[str(model_dir)] = backend  # noqa: SLF001 - serve the very backend measured in-process
        server = start(cfg, port=0, pool=pool)
        client = InferenceClient(server.address, timeout_s=600)
        try:
            client.generate(prompts[:4])  # warm the channel
            inproc, remote = [], []
            for i in range(max(9, 3 * args.repeat)):
                order = ("local", "rpc") if i % 2 == 0 else ("rpc", "local")  # cancel drift within a pair
                for which in order:
                    t = time.perf_counter()
                    if which == "local":
                        res_local = backend.generate(prompts)
                        inproc.append(time.perf_counter() - t)
                    else:
                        res_remote = client.generate(prompts)
                        remote.append(time.perf_counter() - t)
            assert all(not r.error for r in res_remote), [r.error for r in res_remote if r.error][:1]
            assert [r.completions[0].text for r in res_remote] == [r.completions[0].text for r in res_local]
            best_in, best_rpc = min(inproc), min(remote)
            overhead = statistics.median(r / i for r, i in zip(remote, inproc)) - 1
            print(f"in-process backend.generate: best {best_in:.3f}s   gRPC GenerateBatch: best {best_rpc:.3f}s  "
                  f"(best-vs-best {(best_rpc / best_in - 1) * 100:+.1f}%)")
            print(f"gRPC overhead:             {overhead * 100:+.1f}%  median of {len(inproc)} back-to-back pairs "
                  f"(target <= {OVERHEAD_TARGET * 100:.0f}%)  {'PASS' if overhead <= OVERHEAD_TARGET else 'FAIL'}")
        finally:
            client.close()
            server.stop(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
