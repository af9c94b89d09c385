"""Loaded models keyed by model URI, least recently used evicted (the server keeps two), so a Probe
can target a freshly trained checkpoint while the base model stays loaded for synthesis.

Callers ``lease`` a backend for the duration of their work; an evicted backend that is still leased
(a long Probe) is closed only when its last lease ends, so eviction never fails running work.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from typing import Iterator

from looptool.shared.config import InferenceSettings, S3Settings

from .backends import Backend, make_backend
from .backends.base import log
from .roots import ModelRoots


class ModelPool:
    def __init__(self, settings: InferenceSettings, size: int = 2, s3: S3Settings | None = None, roots: ModelRoots | None = None):
        self.settings = settings
        self.s3 = s3  # storage settings for s3:// model URIs
        self.roots = roots  # which model URIs a request may load (None = any: in-process users, benchmarks)
        self.size = max(1, size)
        self._models: collections.OrderedDict[str, Backend] = collections.OrderedDict()
        self._leases: dict[int, int] = {}  # id(backend) -> active leases
        self._retired: dict[int, Backend] = {}  # evicted while leased
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    @property
    def default_model(self) -> str:
        return self.settings.model

    def key(self, model_uri: str = "") -> str:
        return model_uri or self.settings.model

    @contextlib.contextmanager
    def lease(self, model_uri: str = "") -> Iterator[Backend]:
        backend = self.get(model_uri, _lease=True)
        try:
            yield backend
        finally:
            close = None
            with self._lock:
                n = self._leases.get(id(backend), 1) - 1
                if n <= 0:
                    self._leases.pop(id(backend), None)
                    close = self._retired.pop(id(backend), None)
                else:
                    self._leases[id(backend)] = n
            if close is not None:
                close.close()

    def get(self, model_uri: str = "", _lease: bool = False) -> Backend:
        """The backend for ``model_uri`` (empty = the configured model), loading it when needed."""
        if self.roots is not None:
            self.roots.check(model_uri)  # before the cache: a denied URI stays denied
        key = self.key(model_uri)
        with self._lock:
            hit = self._hit(key, _lease)
            if hit is not None:
                return hit
            load_lock = self._loading.setdefault(key, threading.Lock())
        with load_lock:  # one load per model; other callers of the same model wait for it
            with self._lock:
                hit = self._hit(key, _lease)
                if hit is not None:
                    return hit
            if self.settings.backend == "vllm" and self.settings.vllm_mode == "in_process":
                with self._lock:  # one engine per GPU: switching models replaces the engine
                    evicted = self._pop_oldest(len(self._models))
                self._close(evicted)
            backend = make_backend(self.settings, key, self.s3)
            with self._lock:
                self._models[key] = backend
                if _lease:
                    self._leases[id(backend)] = self._leases.get(id(backend), 0) + 1
                evicted = self._pop_oldest(len(self._models) - self.size)
                self._loading.pop(key, None)
            self._close(evicted)
            return backend

    def _hit(self, key: str, lease: bool) -> Backend | None:
        backend = self._models.get(key)
        if backend is not None:
            self._models.move_to_end(key)
            if lease:
                self._leases[id(backend)] = self._leases.get(id(backend), 0) + 1
        return backend

    def _pop_oldest(self, count: int) -> list[Backend]:
        out = []
        for _ in range(max(0, count)):
            key, old = self._models.popitem(last=False)
            log.info("model evicted", extra={"model": key})
            if self._leases.get(id(old)):
                self._retired[id(old)] = old  # closed when its last lease ends
            else:
                out.append(old)
        return out

    @staticmethod
    def _close(evicted: list[Backend]) -> None:
        for old in evicted:
            old.close()  # finishes its running batch; queued requests get UNAVAILABLE

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._models)

    def close(self) -> None:
        with self._lock:
            models = list(self._models.values()) + list(self._retired.values())
            self._models, self._retired = collections.OrderedDict(), {}
        for m in models:
            m.close()
