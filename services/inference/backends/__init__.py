"""Inference backends behind one interface (``shared.generation.Generator`` + ``Backend.submit``).

``make_backend(settings, model_uri)`` picks one from ``InferenceSettings.backend``:

- ``transformers``: local model directory / GGUF file, batched (``hf.TransformersBackend``);
- ``vllm``: in-process ``vllm.LLM`` (``vllm_backend.VLLMBackend``) or, with ``vllm_mode: remote``,
  a vLLM OpenAI-compatible server (``openai_compat.OpenAICompatBackend``, vLLM flavour);
- ``openai``: any OpenAI-compatible endpoint (``openai_compat.OpenAICompatBackend``).
"""

from __future__ import annotations

from looptool.shared.config import InferenceSettings, S3Settings

from ..model_cache import ModelCache
from .base import (
    Backend,
    BackendError,
    BoundGenerator,
    CancelToken,
    error,
    split_error,
)


def make_backend(settings: InferenceSettings, model_uri: str | None = None, s3: S3Settings | None = None) -> Backend:
    """``s3``: storage settings for s3:// model URIs (the server passes ``storage.s3``). s3:// models
    are downloaded into ``settings.model_cache_dir`` (bounded, least recently used evicted)."""
    model = model_uri or settings.model
    if settings.backend == "transformers":
        from .hf import TransformersBackend

        return TransformersBackend(
            model,
            device=settings.device,
            dtype=settings.dtype,
            max_batch_size=settings.max_batch_size,
            batch_wait_ms=settings.batch_wait_ms,
            max_context=settings.max_context,
            s3=s3,
            cache=ModelCache.from_settings(settings, s3),
        )
    if settings.backend == "vllm" and settings.vllm_mode == "in_process":
        from .vllm_backend import VLLMBackend

        return VLLMBackend(
            model,
            max_context=settings.max_context,
            dtype=settings.dtype,
            tensor_parallel_size=settings.tensor_parallel_size,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            max_batch_size=max(settings.max_batch_size, 64),
            batch_wait_ms=settings.batch_wait_ms,
            s3=s3,
            cache=ModelCache.from_settings(settings, s3),
        )
    if settings.backend in ("openai", "vllm"):
        from .openai_compat import OpenAICompatBackend

        if not model:
            raise BackendError(f"inference.model is empty; name the model the {settings.backend} endpoint serves")
        return OpenAICompatBackend(
            settings.base_url,
            model,
            api_key=settings.api_key.get_secret_value(),
            max_retries=settings.max_retries,
            requests_per_minute=settings.requests_per_minute,
            timeout_s=settings.timeout_s,
            max_context=settings.max_context,
            concurrency=max(1, settings.max_batch_size),
            flavor="vllm" if settings.backend == "vllm" else "openai",
        )
    raise BackendError(f"unknown inference.backend {settings.backend!r}; use transformers, vllm or openai")


__all__ = ["Backend", "BackendError", "BoundGenerator", "CancelToken", "error", "make_backend", "split_error"]
