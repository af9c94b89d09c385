"""The ``vllm`` backend (GPU, production).

Two modes, chosen by ``inference.vllm_mode``:

- ``in_process``: a ``vllm.LLM`` engine in this process. Concurrent requests are grouped by the same
  ``BatchingQueue`` as the transformers backend and handed to one ``LLM.generate`` call (vLLM then
  schedules them with continuous batching and paged attention). Prompts are rendered with the
  model's chat template (``shared.prompt.build_chat``, no ``tools=``) and passed as token ids, so the
  context-limit check is exact. Per-token logprobs (``logprobs=0``: the chosen token only) give the
  mean logprob used for perplexity.
- ``remote``: a vLLM OpenAI-compatible server started with
  ``--enable-auto-tool-choice --tool-call-parser hermes``; served by ``OpenAICompatBackend`` with the
  vLLM flavour (see ``openai_compat``).

``vllm`` is imported lazily: it is only needed on GPU machines (``pip install looptool[gpu]``).
The mapping functions below are pure and unit-tested without vLLM. Cancellation reaches requests
that are still queued; a running ``LLM.generate`` call finishes its batch.
"""

from __future__ import annotations

import math
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from looptool.shared import metrics
from looptool.shared.config import S3Settings
from looptool.shared.generation import Completion, GenRequest, GenResult, SamplingParams
from looptool.shared.prompt import build_chat

from ..model_cache import ModelCache
from .base import (
    QueuedBackend,
    BackendError,
    BatchingQueue,
    CancelToken,
    DeltaCallback,
    Job,
    completion_from_text,
    error,
    log,
    request_rows,
)
from .hf import acquire_model, locate_model

_TOKENS = metrics.counter("inference", "tokens", "Tokens processed", ["backend", "kind"])


def sampling_kwargs(params: SamplingParams, max_tokens_cap: int | None = None) -> dict[str, Any]:
    """Our SamplingParams → keyword arguments for ``vllm.SamplingParams``."""
    max_tokens = params.max_tokens if params.max_tokens > 0 else 256
    if max_tokens_cap is not None:
        max_tokens = max(1, min(max_tokens, max_tokens_cap))
    kw: dict[str, Any] = {
        "n": max(1, int(params.n or 1)),
        "temperature": float(params.temperature),
        "top_p": float(params.top_p) if params.top_p and params.top_p <= 1.0 else 1.0,
        "max_tokens": int(max_tokens),
        "logprobs": 0,  # the chosen token's logprob only
        "skip_special_tokens": True,
    }
    if params.temperature > 0:
        kw["seed"] = int(params.seed)
    if params.stop:
        kw["stop"] = list(params.stop)
    return kw


def check_tensor_parallel(tensor_parallel_size: int, gpus: int) -> None:
    """vLLM shards the model over exactly ``tensor_parallel_size`` GPUs: more than this process sees
    cannot start, fewer leaves GPUs idle (on Kubernetes: requested and paid for). BackendError naming
    both values otherwise. No GPU at all (vLLM's CPU build) takes 1."""
    if tensor_parallel_size != max(1, gpus):
        raise BackendError(
            f"inference.tensor_parallel_size is {tensor_parallel_size} but this process sees {gpus} GPU(s); "
            f"set it to {max(1, gpus)}, or make {tensor_parallel_size} GPU(s) visible "
            "(CUDA_VISIBLE_DEVICES; on Kubernetes services.inference.resources nvidia.com/gpu)"
        )


def visible_gpus() -> int:
    import torch

    return int(torch.cuda.device_count())


def _mean_logprob(out: Any) -> float:
    n = len(getattr(out, "token_ids", None) or [])
    cum = getattr(out, "cumulative_logprob", None)
    if n and cum is not None and math.isfinite(cum):
        return float(cum) / n
    lps = getattr(out, "logprobs", None) or []
    vals = []
    for tok, step in zip(getattr(out, "token_ids", None) or [], lps):
        lp: Any = step.get(tok) if isinstance(step, dict) else None  # a vLLM Logprob, or a bare float
        if lp is not None:
            vals.append(float(getattr(lp, "logprob", lp)))
    return sum(vals) / len(vals) if vals else 0.0


def _finish_reason(reason: Any) -> str:
    if reason in ("stop", "length"):
        return reason
    if reason == "abort":
        return "cancelled"
    return "stop"


def parse_request_output(out: Any) -> GenResult:
    """A ``vllm.RequestOutput`` (or anything shaped like one) → GenResult."""
    outputs = sorted(getattr(out, "outputs", None) or [], key=lambda o: getattr(o, "index", 0))
    completions: list[Completion] = [
        completion_from_text(o.text or "", _finish_reason(getattr(o, "finish_reason", "stop")), _mean_logprob(o))
        for o in outputs
    ]
    return GenResult(
        completions=completions,
        prompt_tokens=len(getattr(out, "prompt_token_ids", None) or []),
        completion_tokens=sum(len(getattr(o, "token_ids", None) or []) for o in outputs),
    )


class VLLMBackend(QueuedBackend):
    backend_name = "vllm"

    def __init__(
        self,
        model: str,
        max_context: int = 4096,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        max_batch_size: int = 256,
        batch_wait_ms: float = 5.0,
        llm: Any = None,  # an already-built engine (tests, sharing)
        s3: S3Settings | None = None,
        cache: ModelCache | None = None,
    ):
        self.model = model
        self.max_context = max_context
        if llm is None:
            try:
                import vllm
            except ImportError:
                raise BackendError(
                    "inference.backend=vllm with vllm_mode=in_process needs the 'vllm' package on a GPU machine "
                    "(pip install 'looptool[gpu]'), or use vllm_mode=remote with base_url"
                ) from None
            check_tensor_parallel(tensor_parallel_size, visible_gpus())  # before any download
            self.model_pin = acquire_model(model, s3, cache)  # released by close(): then evictable
            try:
                llm = self._engine(vllm, model, tensor_parallel_size, gpu_memory_utilization, dtype)
            except BaseException:
                self.model_pin.release()
                raise
        self.llm = llm
        self.tokenizer = llm.get_tokenizer()
        self.queue = BatchingQueue("vllm", self._run_batch, max_batch_size, batch_wait_ms)

    def _engine(self, vllm: Any, model: str, tensor_parallel_size: int, gpu_memory_utilization: float, dtype: str) -> Any:
        directory, gguf = locate_model(str(self.model_pin.path))
        path = str(Path(directory) / gguf) if gguf else directory  # a GGUF model: the file itself
        kw: dict[str, Any] = {
            "model": path,
            "tensor_parallel_size": tensor_parallel_size,
            "gpu_memory_utilization": gpu_memory_utilization,
            "max_model_len": self.max_context,
            "dtype": "auto" if dtype == "float32" else dtype,
            "seed": 0,
        }
        if gguf:
            kw["tokenizer"] = directory
        llm = vllm.LLM(**kw)
        log.info("vllm engine ready", extra={"model": model, "path": path})
        return llm

    def encode(self, request: GenRequest) -> list[int]:
        chat = build_chat(request.messages, request.tools)
        text = self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _prepare(self, request: GenRequest, cancel, deadline, on_delta) -> tuple["Future[GenResult]", Job | None]:
        fut: Future[GenResult] = Future()
        job = Job(request, fut, cancel=cancel, deadline=deadline, on_delta=on_delta, rows=request_rows(request))
        if job.fail_if_dead():
            return fut, None
        try:
            ids = self.encode(request)
        except Exception as exc:
            job.finish(GenResult(error=error("INVALID_ARGUMENT", f"cannot render the prompt: {exc}")))
            return fut, None
        if len(ids) >= self.max_context:
            job.finish(GenResult(prompt_tokens=len(ids), error=error(
                "INVALID_ARGUMENT", f"prompt is {len(ids)} tokens; the context limit is {self.max_context}")))
            return fut, None
        job.payload = ids
        return fut, job

    def _run_batch(self, jobs: list[Job]) -> None:
        import vllm

        prompts = [{"prompt_token_ids": j.payload} for j in jobs]
        params = [
            vllm.SamplingParams(**sampling_kwargs(j.request.params, self.max_context - len(j.payload)))  # type: ignore[arg-type]
            for j in jobs
        ]
        outputs = self.llm.generate(prompts, sampling_params=params, use_tqdm=False)
        for job, out in zip(jobs, outputs):
            res = parse_request_output(out)
            _TOKENS.labels("vllm", "prompt").inc(res.prompt_tokens)
            _TOKENS.labels("vllm", "completion").inc(res.completion_tokens)
            if job.on_delta:
                for i, c in enumerate(res.completions):
                    job.on_delta(i, c.text)
            job.finish(res)

