"""The ``transformers`` backend (CPU or GPU): batched generation from a local model directory or GGUF file.

How a batch runs: concurrent requests are grouped by ``BatchingQueue``; each request's chat is
rendered with the model's own chat template (``shared.prompt.build_chat`` puts the tools into the
system prompt; no ``tools=`` argument), prompts are left-padded into one tensor and decoded by one
``model.generate`` call. A request with ``n`` completions contributes ``n`` rows.

Mixed sampling parameters share a batch. ``generate`` runs in greedy mode and one logits processor
(``_RowSampler``) picks each row's token itself: argmax for temperature 0, otherwise temperature +
top-p sampling with the row's own ``torch.Generator`` (seeded ``seed + completion index``), so a
sampled completion does not depend on which other requests shared its batch. The processor sets
every other logit to -inf, so ``generate``'s argmax takes exactly the chosen token. It also records
the token's log-probability under the unmodified model distribution (mean → perplexity for GCP).

A per-row stopping criterion ends a row on its own ``max_tokens``, on a ``stop`` string, when its
request is cancelled or its deadline passes; EOS is handled by ``generate``. A batch ends when
every row has ended. Nothing is ever downloaded: loading uses ``local_files_only=True``.
"""

from __future__ import annotations

import importlib.util
import math
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from looptool.shared import metrics
from looptool.shared.config import InferenceSettings, S3Settings
from looptool.shared.generation import GenRequest, GenResult
from looptool.shared.prompt import build_chat

from ..model_cache import CacheFull, ModelCache, ModelPin
from .base import (
    QueuedBackend,
    completion_from_text,
    BackendError,
    BatchingQueue,
    CancelToken,
    DeltaCallback,
    Job,
    error,
    log,
    request_rows,
)

_TOKENS = metrics.counter("inference", "tokens", "Tokens processed", ["backend", "kind"])


def _cache_kw() -> str:
    """transformers 5 renamed ``past_key_values`` to ``cache`` (the old name warns)."""
    import transformers

    return "cache" if int(transformers.__version__.split(".")[0]) >= 5 else "past_key_values"


def locate_model(path: str) -> tuple[str, str | None]:
    """A model path → (directory, gguf file name or None). A ``.gguf`` file, or a directory holding
    exactly one ``.gguf`` file and no ``config.json``, loads through transformers' GGUF loader."""
    p = Path(path)
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise BackendError(f"model file {p} is not a .gguf file; pass a model directory or a GGUF file")
        return str(p.parent), p.name
    if p.is_dir() and not (p / "config.json").exists():
        ggufs = sorted(x.name for x in p.glob("*.gguf"))
        if len(ggufs) == 1:
            return str(p), ggufs[0]
        if len(ggufs) > 1:
            raise BackendError(f"{p} holds several GGUF files {ggufs}; pass the file itself as the model path")
        raise BackendError(f"{p} has no config.json and no .gguf file; it is not a model directory")
    return str(p), None


def acquire_model(uri: str, s3: S3Settings | None = None, cache: ModelCache | None = None) -> ModelPin:
    """Model URI (path, GGUF file, file:// or s3:// committed model) → a local path, pinned in the
    model cache until the backend closes (``s3``: the storage settings an s3:// model is read with,
    default the environment's; ``cache``: default the default ``inference.model_cache_*``)."""
    if not uri:
        raise BackendError("no model configured: set inference.model (a local model directory or GGUF file)")
    p = Path(uri)
    if p.is_file():
        return ModelPin(p)
    from looptool.shared.storage.base import StorageError

    cache = cache or ModelCache.from_settings(InferenceSettings(), s3)
    try:
        return cache.acquire(uri)
    except CacheFull as exc:
        raise BackendError(str(exc), code="RESOURCE_EXHAUSTED") from None
    except StorageError as exc:
        raise BackendError(str(exc), code="NOT_FOUND") from None


@dataclass
class _Row:
    job: Job
    index: int  # completion index within the request
    prompt_len: int
    max_tokens: int
    temperature: float
    top_p: float
    generator: object = None  # torch.Generator for sampled rows
    tokens: list[int] = field(default_factory=list)
    logprob_sum: float = 0.0
    finish: str = ""  # stop | length | cancelled
    text: str = ""  # decoded so far (only maintained when streaming or stop strings need it)
    emitted: int = 0  # chars already streamed
    stop_at: int = -1  # char offset where a stop string begins

    @property
    def done(self) -> bool:
        return bool(self.finish)


class TransformersBackend(QueuedBackend):
    backend_name = "transformers"

    def __init__(
        self,
        model: str,
        device: str = "cpu",
        dtype: str = "float32",
        max_batch_size: int = 16,
        batch_wait_ms: float = 5.0,
        max_context: int = 4096,
        name: str | None = None,
        prefix_caching: bool = True,
        s3: S3Settings | None = None,
        cache: ModelCache | None = None,
    ):
        self.model = model
        self.model_pin = acquire_model(model, s3, cache)  # released by close(): then evictable
        try:
            self._load(model, device, dtype, max_batch_size, batch_wait_ms, max_context, name, prefix_caching)
        except BaseException:
            self.model_pin.release()
            raise

    def _load(self, model: str, device: str, dtype: str, max_batch_size: int, batch_wait_ms: float,
              max_context: int, name: str | None, prefix_caching: bool) -> None:  # fmt: skip
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = str(self.model_pin.path)
        directory, gguf = locate_model(path)
        kwargs: dict = {"local_files_only": True}
        if gguf:
            missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
            if missing:
                raise BackendError(
                    f"{path}: loading GGUF models needs the {' and '.join(missing)} package(s): "
                    "pip install 'looptool[gguf]'"
                )
            kwargs["gguf_file"] = gguf
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise BackendError(f"inference.dtype {dtype!r} is not a torch dtype (float32, bfloat16, float16)")
        try:  # local_files_only: a path that is not a local model never turns into a hub download
            self.tokenizer = AutoTokenizer.from_pretrained(directory, **kwargs)
            if not getattr(self.tokenizer, "chat_template", None):  # checked before the (slow) weights load
                raise BackendError(f"{path}: the tokenizer has no chat template; use an instruction/chat model")
            self.hf_model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch_dtype, **kwargs)
        except BackendError:
            raise
        except Exception as exc:  # OSError, ValueError, a corrupt GGUF, a missing optional package
            raise BackendError(f"cannot load model from {path}: {type(exc).__name__}: {exc}", code="NOT_FOUND") from None
        self.device = torch.device(device)
        self.hf_model.to(self.device).eval()
        self.tokenizer.padding_side = "left"
        self.eos_ids = self._eos_ids()
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.eos_ids[0]
        model_limit = int(getattr(self.hf_model.config, "max_position_embeddings", 0) or 0)
        self.max_context = min(max_context, model_limit) if model_limit else max_context
        self.backend_name = "transformers"
        self.prefix_caching = prefix_caching
        self._cache_kw = _cache_kw()
        self.static_cache = True
        self.min_prefix_tokens = 32
        self.queue = BatchingQueue(name or "transformers", self._run_batch, max_batch_size, batch_wait_ms)
        self._lock = threading.Lock()
        log.info("model loaded", extra={"model": model, "path": path, "device": device, "max_context": self.max_context})

    def _eos_ids(self) -> list[int]:
        ids: list[int] = []
        gc = getattr(self.hf_model, "generation_config", None)
        for src in (getattr(gc, "eos_token_id", None), self.tokenizer.eos_token_id):
            if src is None:
                continue
            for i in src if isinstance(src, (list, tuple)) else [src]:
                if i is not None and int(i) not in ids:
                    ids.append(int(i))
        if not ids:
            raise BackendError(f"{self.model}: neither the tokenizer nor the generation config names an EOS token")
        return ids

    # -- request preparation (caller thread) --------------------------------------------------

    def render(self, request: GenRequest) -> str:
        chat = build_chat(request.messages, request.tools)
        return self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)

    def encode(self, request: GenRequest) -> list[int]:
        text = self.render(request)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _prepare(self, request: GenRequest, cancel, deadline, on_delta) -> tuple["Future[GenResult]", Job | None]:
        """Validate and tokenize on the caller's thread; (future, job to queue or None if finished)."""
        fut: Future[GenResult] = Future()
        job = Job(request, fut, cancel=cancel, deadline=deadline, on_delta=on_delta, rows=request_rows(request))
        if job.fail_if_dead():
            return fut, None
        p = request.params
        if p.temperature < 0 or not (0 < (p.top_p or 1.0) <= 1) or p.max_tokens < 0:
            job.finish(GenResult(error=error("INVALID_ARGUMENT", "temperature must be >= 0, top_p in (0, 1], max_tokens >= 0")))
            return fut, None
        try:
            ids = self.encode(request)
        except Exception as exc:  # a template that rejects these messages is the caller's problem
            job.finish(GenResult(error=error("INVALID_ARGUMENT", f"cannot render the prompt: {type(exc).__name__}: {exc}")))
            return fut, None
        if len(ids) >= self.max_context:
            job.finish(
                GenResult(
                    prompt_tokens=len(ids),
                    error=error(
                        "INVALID_ARGUMENT",
                        f"prompt is {len(ids)} tokens; the context limit is {self.max_context} "
                        "(shorten the context or raise inference.max_context)",
                    ),
                )
            )
            return fut, None
        job.payload = ids
        return fut, job

    def info(self) -> dict:
        return {**super().info(), "queue_depth": self.queue.depth()}

    # -- batch execution (worker thread) ------------------------------------------------------

    def _make_rows(self, jobs: list[Job]) -> list[_Row]:
        import torch

        rows: list[_Row] = []
        for job in jobs:
            p = job.request.params
            ids: list[int] = job.payload  # type: ignore[assignment]
            room = self.max_context - len(ids)
            max_tokens = max(0, min(p.max_tokens if p.max_tokens > 0 else 256, room))
            for i in range(job.rows):
                g = None
                if p.temperature > 0:
                    g = torch.Generator(device=self.device)
                    g.manual_seed(int(p.seed) + i)
                rows.append(_Row(job, i, len(ids), max_tokens, float(p.temperature), float(p.top_p or 1.0), g))
        return rows

    def _run_batch(self, jobs: list[Job]) -> None:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        rows = self._make_rows(jobs)
        live = [r for r in rows if r.max_tokens > 0]
        for r in rows:
            if r.max_tokens == 0:
                r.finish = "length"
        if live:
            width = max(r.prompt_len for r in live)
            input_ids = torch.full((len(live), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(live), width), dtype=torch.long)
            for b, r in enumerate(live):
                ids = cast(list[int], r.job.payload)  # _prepare's prompt token ids
                input_ids[b, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                mask[b, width - len(ids) :] = 1
            config = GenerationConfig(
                do_sample=False,
                max_new_tokens=max(r.max_tokens for r in live),
                eos_token_id=self.eos_ids,
                pad_token_id=self.pad_id,
                num_beams=1,
            )
            sampler = _RowSampler(live, self)
            stopper = _RowStopper(live, self, width)
            with self._lock, torch.inference_mode():
                cache = self._make_cache([r.job.payload for r in live], width, config.max_new_tokens)  # type: ignore[misc]
                self.hf_model.generate(
                    input_ids=input_ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    generation_config=config,
                    logits_processor=LogitsProcessorList([sampler]),
                    stopping_criteria=StoppingCriteriaList([stopper]),
                    **({self._cache_kw: cache} if cache is not None else {}),
                )
            for r in live:
                if not r.finish:  # generate ended the row with EOS (or hit the batch's max_new_tokens)
                    r.finish = "stop" if r.tokens and r.tokens[-1] in self.eos_ids else "length"
        self._finish_jobs(jobs, rows)

    def _make_cache(self, prompts: list[list[int]], width: int, max_new: int):
        """A preallocated KV cache for the batch (no per-step ``torch.cat`` of a growing cache), with
        the prompts' shared prefix already filled in when they have one.

        Prefix caching: the system prompt and tools block are the same for every sample of a round,
        so the common prefix is run once and its keys/values are copied into every row (shifted
        right by the row's left padding); ``generate`` then prefills only the rest. Only for models
        whose cache is plain full attention (no sliding windows); anything unexpected falls back
        to ``generate``'s own cache. Greedy outputs are the same either way (tested)."""
        import torch

        if not self.static_cache:
            return None
        try:
            from transformers import StaticCache
            from transformers.cache_utils import StaticLayer

            cache = StaticCache(config=self.hf_model.config, max_cache_len=width + max_new)
            if not all(type(layer) is StaticLayer for layer in cache.layers):
                self.static_cache = False
                log.info("static KV cache disabled: the model uses sliding-window layers", extra={"model": self.model})
                return None
            n = self._common_prefix(prompts)
            if n < self.min_prefix_tokens:
                return cache
            prefix = torch.tensor([prompts[0][:n]], dtype=torch.long, device=self.device)
            out = self.hf_model(input_ids=prefix, use_cache=True, logits_to_keep=1)
            pkv: Any = getattr(out, "cache", None) if self._cache_kw == "cache" else out.past_key_values
            pads = [width - len(p) for p in prompts]
            for idx, layer in enumerate(pkv.layers):
                k, v = layer.keys, layer.values  # [1, heads, n, dim]
                kb = k.new_zeros((len(prompts), *k.shape[1:]))
                vb = v.new_zeros((len(prompts), *v.shape[1:]))
                for b, pad in enumerate(pads):
                    if pad < n:
                        kb[b, :, pad:] = k[0, :, : n - pad]
                        vb[b, :, pad:] = v[0, :, : n - pad]
                cache.layers[idx].update(kb, vb)
            return cache
        except Exception as exc:  # an optimisation must never fail a batch
            self.static_cache = False
            log.warning("static/prefix KV cache disabled", extra={"model": self.model, "error": repr(exc)})
            return None

    def _common_prefix(self, prompts: list[list[int]]) -> int:
        if not self.prefix_caching or len(prompts) < 2:
            return 0
        shortest = min(len(p) for p in prompts)
        first = prompts[0]
        n = 0
        while n < shortest - 1 and all(p[n] == first[n] for p in prompts):
            n += 1
        return n

    def decode(self, tokens: list[int]) -> str:
        if tokens and tokens[-1] in self.eos_ids:
            tokens = tokens[:-1]
        return self.tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _finish_jobs(self, jobs: list[Job], rows: list[_Row]) -> None:
        by_job: dict[int, list[_Row]] = {}
        for r in rows:
            by_job.setdefault(id(r.job), []).append(r)
        for job in jobs:
            jrows = sorted(by_job.get(id(job), []), key=lambda r: r.index)
            completions = []
            for r in jrows:
                text = self.decode(r.tokens)
                if r.stop_at >= 0:
                    text = text[: r.stop_at]
                if job.on_delta and len(text) > r.emitted:
                    job.on_delta(r.index, text[r.emitted :])
                    r.emitted = len(text)
                mean_lp = r.logprob_sum / len(r.tokens) if r.tokens else 0.0
                completions.append(completion_from_text(text, r.finish or "stop", mean_lp))
            prompt_tokens = len(job.payload) if job.payload else 0  # type: ignore[arg-type]
            completion_tokens = sum(len(r.tokens) for r in jrows)
            _TOKENS.labels(self.backend_name, "prompt").inc(prompt_tokens)
            _TOKENS.labels(self.backend_name, "completion").inc(completion_tokens)
            res = GenResult(completions=completions, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
            if job.expired and any(r.finish == "cancelled" for r in jrows):
                res.error = error("DEADLINE_EXCEEDED", "deadline passed while generating")
            elif job.cancelled:
                res.error = error("CANCELLED", "request cancelled by the caller")
            job.finish(res)


class _RowSampler:
    """Logits processor: choose each row's next token (greedy or seeded sampling) and record its
    log-probability under the model's distribution; return logits that make argmax pick it."""

    def __init__(self, rows: list[_Row], backend: TransformersBackend):
        self.rows, self.backend = rows, backend

    def __call__(self, input_ids, scores):
        import torch

        logp = torch.log_softmax(scores.float(), dim=-1)
        chosen = torch.argmax(scores, dim=-1)
        for b, r in enumerate(self.rows):
            if r.done or r.temperature <= 0:
                continue
            logits = scores[b].float() / r.temperature
            probs = torch.softmax(logits, dim=-1)
            if r.top_p < 1.0:
                sp, si = torch.sort(probs, descending=True)
                keep = torch.cumsum(sp, dim=-1) - sp < r.top_p
                keep[0] = True
                probs = torch.zeros_like(probs).scatter_(0, si[keep], sp[keep])
            chosen[b] = torch.multinomial(probs, 1, generator=r.generator)[0]
        chosen_lp = logp.gather(1, chosen[:, None])[:, 0].tolist()
        tokens = chosen.tolist()
        for b, r in enumerate(self.rows):
            if not r.done:
                r.tokens.append(tokens[b])
                r.logprob_sum += chosen_lp[b]
        out = torch.full_like(scores, -math.inf)
        out.scatter_(1, chosen[:, None], 0.0)
        return out


class _RowStopper:
    """Stopping criterion with one verdict per row: own max_tokens, stop strings, cancel, deadline.
    Also streams text deltas for rows whose caller asked for them."""

    def __init__(self, rows: list[_Row], backend: TransformersBackend, prompt_width: int):
        self.rows, self.backend, self.width = rows, backend, prompt_width
        self.max_stop = {id(r): max((len(s) for s in r.job.request.params.stop), default=0) for r in rows}

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        now = time.monotonic()
        eos = self.backend.eos_ids
        flags = []
        for r in self.rows:
            if not r.done:
                job = r.job
                last = r.tokens[-1] if r.tokens else None
                stops = job.request.params.stop
                if job.cancelled or (job.deadline is not None and now >= job.deadline):
                    r.finish = "cancelled"
                elif last is not None and last in eos:
                    r.finish = "stop"
                else:
                    if stops or job.on_delta:
                        r.text = self.backend.decode(r.tokens)
                        if stops:
                            hits = [i for i in (r.text.find(s, max(0, r.emitted - len(s))) for s in stops if s) if i >= 0]
                            if hits:
                                r.stop_at = min(hits)
                                r.finish = "stop"
                    if not r.finish and len(r.tokens) >= r.max_tokens:
                        r.finish = "length"
                    if job.on_delta and not r.finish:
                        # hold back a possible stop-string prefix and an incomplete UTF-8 character
                        safe = len(r.text) - max(0, self.max_stop[id(r)] - 1)
                        if r.text.endswith("\ufffd"):
                            safe = min(safe, len(r.text) - 1)
                        if safe > r.emitted:
                            job.on_delta(r.index, r.text[r.emitted : safe])
                            r.emitted = safe
            flags.append(r.done)
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)
