"""Synthesis runs for the ``Synthesize`` RPC: which tool backend and generator a request uses,
where it writes when it names no output, and closing what it opened; the simulation is ``engine``'s.

A request's ``toolsim_address`` (else the server's, else ``services.toolsim``; ``embedded`` or
none: one in-process ``LocalToolBackend`` shared by all requests) serves tool calls; ``llm``
agents use the server's generator, else the inference server's client. Llm agents without a
generator end the run with ``FAILED_PRECONDITION``; no output and no storage with ``INVALID_ARGUMENT``.
Programmatic agents run in worker processes (the request's concurrency, capped by
``services.synthesizer.processes``), each with a backend of its own (``_worker_backend``).
"""

from __future__ import annotations

import functools
import json
import threading
from typing import Any, Iterator

from looptool.services.inference.client import InferenceClient
from looptool.services.toolsim.client import ToolSimClient
from looptool.shared.errors import ServiceError
from looptool.shared.records import DatasetRef, Tool, text_key
from looptool.shared.workers import pool_size

from .agents import make_agents
from .config import SynthesisConfig
from .engine import BackendFactory, Event, LocalToolBackend, ToolBackend, iter_synthesis


def output_key(toolset_hash: str, num: int, seed: int, cfg: SynthesisConfig, round: int) -> str:
    payload = json.dumps({"t": toolset_hash, "n": num, "s": seed, "c": cfg.model_dump(mode="json"), "r": round}, sort_keys=True)
    return text_key(payload, 16)  # json.dumps' own separators, not canonical_json: stored keys depend on them


class Synthesis:
    def __init__(self, app_cfg: Any = None, generator: Any = None, toolsim_address: str = "", storage_base: str = ""):
        self.app_cfg = app_cfg
        self.generator = generator
        self.toolsim_address = toolsim_address
        self.storage_base = storage_base
        self._embedded: LocalToolBackend | None = None
        self._lock = threading.Lock()

    @property
    def s3(self) -> Any:
        return getattr(getattr(self.app_cfg, "storage", None), "s3", None)

    def _toolsim_address(self, cfg: SynthesisConfig) -> str:
        address = cfg.toolsim_address or self.toolsim_address
        if not address and self.app_cfg is not None:
            address = self.app_cfg.services.toolsim.address
        return "" if address == "embedded" else address

    def _backend(self, cfg: SynthesisConfig) -> ToolBackend:
        address = self._toolsim_address(cfg)
        if not address:
            with self._lock:
                if self._embedded is None:
                    self._embedded = LocalToolBackend()
            return self._embedded
        return ToolSimClient(address, security=self.app_cfg.security if self.app_cfg is not None else None)

    def _worker_backend(self, cfg: SynthesisConfig) -> BackendFactory:
        """How each worker process builds its tool backend: an embedded simulator of its own, or its
        own channel to the remote one."""
        address = self._toolsim_address(cfg)
        if not address:
            return LocalToolBackend
        return functools.partial(ToolSimClient, address, security=self.app_cfg.security if self.app_cfg is not None else None)

    def _processes(self, concurrency: int) -> int:
        """Worker processes for a run: the request's concurrency capped by ``services.synthesizer.processes``;
        0 (threads in this process) when that is one, where a process would only add its start-up."""
        setting = self.app_cfg.services.synthesizer.processes if self.app_cfg is not None else None
        n = pool_size(concurrency, setting)
        return n if n >= 2 else 0

    def _generator(self, cfg: SynthesisConfig) -> Any:
        if cfg.agents != "llm":
            return None
        if self.generator is not None:
            return self.generator
        if self.app_cfg is None:
            return None
        return InferenceClient(self.app_cfg.services.inference.address, security=self.app_cfg.security)

    def run(self, tools: list[Tool], toolset: DatasetRef, cfg: SynthesisConfig, num_dialogues: int, seed: int,
            output_prefix: str, concurrency: int, round: int, cancel: threading.Event, first_index: int = 0) -> Iterator[Event]:
        """``engine.iter_synthesis``'s events until ``cancel`` is set."""
        try:
            agents = make_agents(cfg, self._generator(cfg))
        except ValueError as exc:  # e.g. llm agents without an inference server
            raise ServiceError(str(exc), "FAILED_PRECONDITION") from exc
        out = output_prefix
        if not out:
            base = self.storage_base or (self.app_cfg.storage.base_uri() if self.app_cfg is not None else "")
            if not base:
                raise ServiceError("output_prefix is empty and no storage is configured", "INVALID_ARGUMENT")
            out = f"{base.rstrip('/')}/synthesis/{output_key(toolset.content_hash, num_dialogues, seed, cfg, round)}"
            out += f"-from-{first_index}" if first_index else ""
        backend = self._backend(cfg)
        try:
            for ev in iter_synthesis(tools, num_dialogues, seed, out, cfg, agents, backend,
                                     concurrency=max(1, concurrency or 1), round=round, s3=self.s3,
                                     cancel=cancel, meta={"toolset": toolset.uri, "toolset_hash": toolset.content_hash},
                                     first_index=first_index, processes=self._processes(max(1, concurrency or 1)),
                                     backend_factory=self._worker_backend(cfg)):
                if cancel.is_set():
                    break
                yield ev
        finally:
            close = getattr(backend, "close", None)
            if callable(close) and backend is not self._embedded:
                close()
