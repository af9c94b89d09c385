"""LoopTool configuration: one typed model, loaded from YAML and ``LOOPTOOL_*`` environment variables.

Environment overrides use ``__`` between levels, e.g.
``LOOPTOOL_STORAGE__S3__ENDPOINT=http://127.0.0.1:9000`` or ``LOOPTOOL_SERVICES__INFERENCE__PORT=7001``.
Values are parsed as YAML scalars (``7001`` → int, ``true`` → bool).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

ENV_PREFIX = "LOOPTOOL_"


class ConfigError(ValueError):
    """Invalid configuration; the message names the field (or file) and the fix."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class S3Settings(Section):
    endpoint: str = Field(default_factory=lambda: os.environ.get("LOOPTOOL_S3_ENDPOINT", ""))
    access_key: str = Field(
        default_factory=lambda: os.environ.get("LOOPTOOL_S3_ACCESS_KEY", os.environ.get("AWS_ACCESS_KEY_ID", ""))
    )
    secret_key: SecretStr = Field(
        default_factory=lambda: SecretStr(
            os.environ.get("LOOPTOOL_S3_SECRET_KEY", os.environ.get("AWS_SECRET_ACCESS_KEY", ""))
        )
    )
    bucket: str = "looptool"
    secure: bool = False
    region: str = ""


class StorageSettings(Section):
    backend: Literal["local", "s3"] = "local"
    root: str = ".looptool/store"  # local backend root directory
    s3: S3Settings = Field(default_factory=S3Settings)

    def base_uri(self) -> str:
        if self.backend == "s3":
            return f"s3://{self.s3.bucket}"
        return Path(self.root).resolve().as_uri()


class ServiceEndpoint(Section):
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535)  # 0 = pick a free port (local runner)
    metrics_port: int = Field(0, ge=0, le=65535)  # 0 = no metrics endpoint
    workers: int = Field(8, ge=1)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class ServicesSettings(Section):
    inference: ServiceEndpoint = Field(default_factory=lambda: ServiceEndpoint(port=50051, metrics_port=9101))
    toolsim: ServiceEndpoint = Field(default_factory=lambda: ServiceEndpoint(port=50052, metrics_port=9102))
    synthesizer: ServiceEndpoint = Field(default_factory=lambda: ServiceEndpoint(port=50053, metrics_port=9103))
    expander: ServiceEndpoint = Field(default_factory=lambda: ServiceEndpoint(port=50054, metrics_port=9104))
    trainer: ServiceEndpoint = Field(default_factory=lambda: ServiceEndpoint(port=50055, metrics_port=9105))
    judge: ServiceEndpoint | None = None  # separate judge server; None = the inference server judges


class InferenceSettings(Section):
    backend: Literal["transformers", "vllm", "openai"] = "transformers"
    model: str = ""  # local model directory or GGUF file (transformers / in-process vllm); model name (openai)
    device: str = "cpu"
    dtype: str = "float32"
    max_batch_size: int = Field(16, ge=1)
    batch_wait_ms: float = Field(5.0, ge=0)
    max_context: int = Field(4096, ge=16)
    # vllm
    vllm_mode: Literal["in_process", "remote"] = "in_process"
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    # openai-compatible / remote vllm
    base_url: str = ""
    api_key: SecretStr = SecretStr("")
    max_retries: int = Field(4, ge=0)
    requests_per_minute: float = Field(0, ge=0)  # 0 = unlimited
    timeout_s: float = Field(120, gt=0)


class LogSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_format: bool = Field(False, alias="json")


class LoopToolConfig(Section):
    storage: StorageSettings = Field(default_factory=StorageSettings)
    services: ServicesSettings = Field(default_factory=ServicesSettings)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    judge: InferenceSettings | None = None  # a separate judge model; None = use `inference`
    log: LogSettings = Field(default_factory=LogSettings)


def _set_path(d: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        nxt = d.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"environment override {'.'.join(path)}: {part!r} is not a section")
        d = nxt
    d[path[-1]] = value


def env_overrides(environ: dict[str, str] | None = None) -> dict[str, Any]:
    environ = dict(os.environ if environ is None else environ)
    out: dict[str, Any] = {}
    sections = set(LoopToolConfig.model_fields)
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX) :].split("__")]
        if path[0] not in sections:
            continue
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_path(out, path, value)
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling"
        lines.append(f"{source}: field '{loc}': {msg}")
    return "\n".join(lines)


def load_config(path: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None) -> LoopToolConfig:
    data: dict[str, Any] = {}
    source = "config"
    if path:
        source = str(path)
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found; pass an existing YAML file") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}:{where}: malformed YAML ({getattr(exc, 'problem', exc)})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections (storage, services, ...)")
        data = loaded
    data = _merge(data, env_overrides(environ))
    try:
        return LoopToolConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None
