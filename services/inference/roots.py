"""Which models a request may make the inference server load.

A request names a model by URI (``GenerateRequest.model``, ``ProbeRequest.model_uri``,
``JudgeSpec.model``). Without a limit a client could make the server open any path it can read
(``/etc``, another tenant's mounted volume) as a model. Allowed: the configured model itself, local
paths under ``inference.model_roots`` or under the local store's root, and ``s3://`` URIs in the
configured bucket (the only one the server's credentials are meant for). Remote backends (an
OpenAI-compatible endpoint, remote vLLM) load nothing locally: their model is a name, not checked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from looptool.shared.config import InferenceSettings, StorageSettings
from .backends.base import BackendError


def _real(path: str | Path) -> Path:
    # realpath: a symlink or `..` must not lead out of a root
    return Path(os.path.realpath(Path(path).expanduser()))


@dataclass(frozen=True)
class ModelRoots:
    configured: frozenset[str]  # the settings' own model URIs: always allowed
    local: tuple[Path, ...]
    bucket: str  # "" = no s3:// model URIs
    remote: bool = False  # the backend loads nothing locally

    @classmethod
    def from_settings(cls, inference: InferenceSettings, storage: StorageSettings) -> "ModelRoots":
        local = [_real(r[len("file://"):] if r.startswith("file://") else r) for r in inference.model_roots]
        if storage.backend == "local":
            local.append(_real(storage.root))
        remote = inference.backend == "openai" or (inference.backend == "vllm" and inference.vllm_mode == "remote")
        return cls(frozenset({inference.model} - {""}), tuple(local), storage.s3.bucket, remote)

    def check(self, uri: str) -> None:
        """Raise PERMISSION_DENIED (one line naming the URI and the fix) unless ``uri`` may be loaded."""
        if not uri or uri in self.configured or self.remote:
            return
        parsed = urlparse(uri)
        if parsed.scheme == "s3":
            if self.bucket and parsed.netloc == self.bucket:
                return
            raise BackendError(
                f"model {uri}: only s3:// URIs in the configured bucket (s3://{self.bucket}/...) may be loaded", "PERMISSION_DENIED"
            )
        if parsed.scheme not in ("", "file"):
            raise BackendError(f"model {uri}: unsupported scheme {parsed.scheme!r}; use a path, file:// or s3:// URI", "INVALID_ARGUMENT")
        path = _real(unquote(parsed.path) if parsed.scheme == "file" else uri)
        if any(path == root or path.is_relative_to(root) for root in self.local):
            return
        roots = ", ".join(str(r) for r in self.local) or "none"
        raise BackendError(
            f"model {uri}: outside the allowed model roots ({roots}); add its directory to inference.model_roots on the server",
            "PERMISSION_DENIED",
        )
