"""LoopTool configuration: one typed model, loaded from YAML and ``LOOPTOOL_*`` environment variables.

Environment overrides use ``__`` between levels, e.g.
``LOOPTOOL_STORAGE__S3__ENDPOINT=http://127.0.0.1:9000`` or ``LOOPTOOL_SERVICES__INFERENCE__PORT=7001``.
Values are parsed as YAML scalars (``7001`` → int, ``true`` → bool).
Precedence per field: environment, then YAML, then defaults; setting one field of a section keeps
that section's other defaults (``LOOPTOOL_SERVICES__TOOLSIM__HOST`` keeps toolsim's ports).

This module is the one place that reads settings from the environment (a test greps the tree for
other reads): besides the ``LOOPTOOL_<SECTION>__<FIELD>`` overrides, only the S3 credentials' flat
names below, which the chart and the operator's Jobs set from a Secret.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationError

ENV_PREFIX = "LOOPTOOL_"


class ConfigError(ValueError):
    """Invalid configuration; the message names the field (or file) and the fix."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _first_env(*names: str) -> str:
    """The value of the first of ``names`` that is set ("" if none)."""
    for name in names:
        if name in os.environ:
            return os.environ[name]
    return ""


class S3Settings(Section):
    # Defaults from the flat variables (below YAML and LOOPTOOL_STORAGE__S3__* in precedence), then
    # the AWS SDK's names.
    endpoint: str = Field(default_factory=lambda: _first_env("LOOPTOOL_S3_ENDPOINT"))
    access_key: str = Field(default_factory=lambda: _first_env("LOOPTOOL_S3_ACCESS_KEY", "AWS_ACCESS_KEY_ID"))
    secret_key: SecretStr = Field(
        default_factory=lambda: SecretStr(_first_env("LOOPTOOL_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY"))
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
    # Worker processes for a request's CPU-bound work (programmatic synthesis, expansion drafts, the
    # grounding judge), at most the request's concurrency where it has one. None = the CPUs this
    # process may use (affinity, capped by a cgroup quota); 0 = none, in-process threads as before.
    processes: int | None = Field(None, ge=0)
    # The replicas a data stage spreads its shards over: `host:port` each, or one balanced target
    # (`dns:///name:port`, e.g. a headless Service) served with round_robin. Empty = `address` only.
    endpoints: list[str] = Field(default_factory=list)
    # Records (synthesis: dialogues) per shard. Fixed, never derived from the replica count, so one
    # replica and N replicas cut the same shards and commit the same merged dataset.
    shard_size: int = Field(128, ge=1)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


# The five gRPC services, in start order: one list for the local runner, the operator's executor,
# `looptool serve` and the dashboard (the chart's templates are checked against it in tests).
SERVICE_NAMES = ("inference", "toolsim", "synthesizer", "expander", "trainer")


class ServicesSettings(Section):
    inference: ServiceEndpoint = Field(default_factory=lambda: ServiceEndpoint(port=50051, metrics_port=9101))
    toolsim: ServiceEndpoint = Field(default_factory=lambda: ServiceEndpoint(port=50052, metrics_port=9102))
    synthesizer: ServiceEndpoint = Field(default_factory=lambda: ServiceEndpoint(port=50053, metrics_port=9103))
    expander: ServiceEndpoint = Field(default_factory=lambda: ServiceEndpoint(port=50054, metrics_port=9104))
    trainer: ServiceEndpoint = Field(default_factory=lambda: ServiceEndpoint(port=50055, metrics_port=9105))
    judge: ServiceEndpoint | None = None  # separate judge server; None = the inference server judges


_BYTE_UNITS = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
               "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}  # fmt: skip


def _byte_count(value: Any) -> Any:
    """A byte count as an int or a Kubernetes quantity ("80Gi", "500M"), written as the chart's
    emptyDir sizeLimit is; anything else is left for pydantic to reject."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?|k)?\s*", value)
        if m:
            return int(float(m.group(1)) * _BYTE_UNITS[m.group(2) or ""])
    return value


ByteCount = Annotated[int, BeforeValidator(_byte_count), Field(ge=1)]


def _default_model_cache() -> str:
    """The user's cache directory (XDG), not the working directory: a server started from another
    directory finds (and bounds) the same cache."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except RuntimeError:  # no home directory (an arbitrary container uid)
            base = "/var/tmp"
    return str(Path(base, "looptool", "models"))


class InferenceSettings(Section):
    backend: Literal["transformers", "vllm", "openai"] = "transformers"
    model: str = ""  # local model directory or GGUF file (transformers / in-process vllm); model name (openai)
    device: str = "cpu"
    dtype: str = "float32"
    max_batch_size: int = Field(16, ge=1)
    batch_wait_ms: float = Field(5.0, ge=0)
    max_context: int = Field(4096, ge=16)
    # Where s3:// checkpoints are downloaded (transformers / in-process vllm), and the bound on that
    # cache: the least recently used checkpoints that no loaded model uses are deleted to stay under
    # it (services/inference/model_cache.py). An int or a quantity ("80Gi").
    model_cache_dir: str = Field(default_factory=_default_model_cache)
    model_cache_max_bytes: ByteCount = 100 * 2**30
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
    # Local directories a request may name a model in (GenerateRequest.model, ProbeRequest.model_uri,
    # JudgeSpec.model), besides this section's own `model` and the storage (the local store's root,
    # or s3:// URIs in storage.s3.bucket). Anything else is PERMISSION_DENIED: a client must not make
    # the server read an arbitrary path.
    model_roots: list[str] = Field(default_factory=list)


class SecuritySettings(Section):
    """Transport security of every gRPC server and client channel (shared/grpc_util.py), and where
    /metrics listens. Files, not values: the chart mounts them from Secrets."""

    tls_cert_file: str = ""  # PEM server certificate (chain); set with tls_key_file to serve TLS
    tls_key_file: str = ""
    # PEM CA bundle: clients verify the server against it; with require_client_cert, the server
    # verifies client certificates against it (mutual TLS, clients present tls_cert/key_file).
    tls_ca_file: str = ""
    require_client_cert: bool = False
    tls_server_name: str = ""  # override the name clients check in the server certificate
    token_file: str = ""  # bearer token every RPC must carry (health checks excepted); empty = none
    metrics_host: str = "127.0.0.1"  # /metrics bind address; 0.0.0.0 where Prometheus scrapes


class LogSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_format: bool = Field(False, alias="json")


class TrainerSettings(Section):
    # What a training run keeps across a restart: the base-model and checkpoint caches, builtin
    # model builds, verl's local checkpoints. In Kubernetes the round's PersistentVolumeClaim is
    # mounted here (the Job passes --workdir, which wins over this).
    workdir: str = ".looptool/trainer"
    # Torch threads of the CPU trainer (LOOPTOOL_TRAINER__TORCH_THREADS); unset = the CPUs this
    # process may use (affinity, capped by a cgroup CPU quota).
    torch_threads: int | None = Field(None, ge=1)
    # The interpreter that runs verl (LOOPTOOL_TRAINER__VERL_PYTHON), e.g. a separate virtualenv;
    # empty = the trainer's own.
    verl_python: str = ""


class LimitsSettings(Section):
    """Caps on what users and clients send, checked before any parsing or work: a request or file
    over one is bad input (one line naming the field and this setting), not a long job or an OOM."""

    manifest_bytes: int = Field(4 * 2**20, ge=1024)  # a LoopRound YAML file (`looptool run`)
    config_bytes: int = Field(2**20, ge=1024)  # a config file (-c); this section's own value does not apply to it
    toolset_bytes: int = Field(16 * 2**20, ge=1024)  # one toolset file (`tools import`, spec.toolset.file)
    prompt_bytes: int = Field(2**20, ge=1024)  # one generation request (messages + tools), checked before tokenizing
    max_tokens: int = Field(32768, ge=1)  # new tokens per completion (requests, probe/eval maxTokens)
    n: int = Field(64, ge=1)  # completions per request; also probe k, judge votes and candidates
    batch_requests: int = Field(4096, ge=1)  # requests in one GenerateBatch
    dialogues: int = Field(10_000_000, ge=1)  # synthesizer num_dialogues (spec.synthesis.numDialogues)
    concurrency: int = Field(1024, ge=1)  # synthesizer concurrency
    expand_factor: int = Field(1024, ge=1)  # expander factor (spec.expand.factor)


class LoopToolConfig(Section):
    storage: StorageSettings = Field(default_factory=StorageSettings)
    services: ServicesSettings = Field(default_factory=ServicesSettings)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    judge: InferenceSettings | None = None  # a separate judge model; None = use `inference`
    trainer: TrainerSettings = Field(default_factory=TrainerSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    log: LogSettings = Field(default_factory=LogSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)


def _set_path(d: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        nxt = d.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"environment override {'.'.join(path)}: {part!r} is not a section")
        d = nxt
    d[path[-1]] = value


def _env_items(environ: dict[str, str] | None) -> list[tuple[str, list[str], str]]:
    """(variable, field path, raw value) for every ``LOOPTOOL_<SECTION>__...`` variable."""
    environ = dict(os.environ if environ is None else environ)
    sections = set(LoopToolConfig.model_fields)
    out = []
    for key, raw in sorted(environ.items()):
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX) :].split("__")]
        if path[0] not in sections or any(not p for p in path):
            continue
        out.append((key, path, raw))
    return out


def _env_value(raw: str) -> Any:
    # Scalars stay strings and pydantic converts them to the field's type ("7001" -> 7001,
    # "true" -> True), so a secret like "0123" or a bucket called "null" is not mangled by YAML.
    # Flow collections ("[a, b]", "{k: v}") are parsed as YAML.
    if raw.lstrip().startswith(("[", "{")):
        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError:
            return raw
    return raw


def env_overrides(environ: dict[str, str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, path, raw in _env_items(environ):
        _set_path(out, path, _env_value(raw))
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Path-wise merge of two partial configs (YAML, then environment variables that each set one path)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _without_none(annotation: Any) -> list[Any]:
    if get_origin(annotation) in (Union, UnionType):
        return [a for a in get_args(annotation) if a is not type(None)]
    return [annotation]


def _section_type(annotation: Any) -> type[BaseModel] | None:
    """The model of a ``Model`` / ``Model | None`` field."""
    for a in _without_none(annotation):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def _dict_section_type(annotation: Any) -> type[BaseModel] | None:
    """The value model of a ``dict[str, Model]`` (or ``... | None``) field."""
    for a in _without_none(annotation):
        if get_origin(a) is dict:
            args = get_args(a)
            if len(args) == 2:
                return _section_type(args[1])
    return None


def _field(model: type[BaseModel], key: str) -> Any:
    for name, f in model.model_fields.items():
        if key == name or key == f.alias:
            return f
    return None


def merge_onto(model: type[BaseModel], base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` (a partial config) onto ``base`` (the defaults, dumped by alias), guided by ``model``.

    A nested model, and each entry of a dict of models, is merged field by field, so setting one
    field (``services.toolsim.host``) keeps that object's other defaults (its ports); any other
    value (scalars, lists, plain dicts) replaces the default."""
    out = dict(base)
    for key, value in over.items():
        field = _field(model, key)
        current = out.get(key)
        if field is None or not isinstance(value, dict) or not isinstance(current, dict):
            out[key] = value
        elif (sub := _section_type(field.annotation)) is not None:
            out[key] = merge_onto(sub, current, value)
        elif (item := _dict_section_type(field.annotation)) is not None:
            merged = dict(current)
            for k, v in value.items():
                old = merged.get(k)
                merged[k] = merge_onto(item, old, v) if isinstance(old, dict) and isinstance(v, dict) else v
            out[key] = merged
        else:
            out[key] = value
    return out


def _model_at(loc: tuple[Any, ...], root: type[BaseModel]) -> type[BaseModel] | None:
    """The section class at a field path below ``root`` (for suggesting field names)."""
    model: Any = root
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        candidates = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        model = candidates[0] if candidates else None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _field_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def format_validation_error(
    exc: ValidationError,
    source: str,
    env_vars: dict[tuple[str, ...], str] | None = None,
    model: type[BaseModel] | None = None,
) -> str:
    """One line per problem: where it came from (file or environment variable), the field, the fix.

    ``model`` (default: LoopToolConfig when the error is about it) is used to suggest the intended
    name of an unknown field."""
    lines = []
    env_vars = env_vars or {}
    if model is None and exc.title == LoopToolConfig.__name__:
        model = LoopToolConfig
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        dotted = ".".join(loc)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            parent = _model_at(loc[:-1], model) if model is not None else None
            names = _field_names(parent) if parent else []
            close = difflib.get_close_matches(loc[-1], names, n=1)
            hint = f"did you mean '{close[0]}'?" if close else (f"known fields: {', '.join(names)}" if names else "")
            msg = "unknown field; remove it or check its spelling" + (f" ({hint})" if hint else "")
        elif (
            "input" in err
            and err["type"] != "missing"
            and not isinstance(err["input"], (dict, list))
            and not any(w in dotted.lower() for w in ("key", "secret", "token", "password"))  # never echo secrets
        ):
            shown = repr(err["input"])
            msg = f"{msg} (got {shown[:80]})"
        where = source
        for n in range(len(loc), 0, -1):
            if loc[:n] in env_vars:
                where = f"environment variable {env_vars[loc[:n]]}"
                break
        lines.append(f"{where}: field '{dotted}': {msg}")
    return "\n".join(lines)


def load_config(path: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None) -> LoopToolConfig:
    """Defaults, then the YAML file (if given), then ``LOOPTOOL_<SECTION>__<FIELD>`` variables.

    Raises ConfigError with one line per problem, naming the file/line or variable and the field.
    """
    data: dict[str, Any] = {}
    source = "config"
    if path:
        source = str(path)
        try:
            # bounded: a huge file (or /dev/zero) is refused before YAML sees it
            cap = LimitsSettings.model_fields["config_bytes"].default
            with open(path, "rb") as fh:
                raw = fh.read(cap + 1)
            if len(raw) > cap:
                raise ConfigError(f"{path}: over {cap} bytes; a config file is a small YAML mapping of sections")
            text = raw.decode("utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found; pass an existing YAML file") from None
        except IsADirectoryError:
            raise ConfigError(f"{path}: is a directory; pass a YAML file") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text; pass a YAML file") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read ({exc.strerror or exc}); check the path and permissions") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
            where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{path}:{where}: malformed YAML ({problem}); fix the syntax there") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections (storage, services, ...)")
        data = loaded
    env_items = _env_items(environ)
    env_vars = {tuple(p): key for key, p, _ in env_items}
    data = _merge(data, env_overrides(environ))
    # Onto the full defaults, not beside them: pydantic would otherwise build a partly given section
    # from its class defaults and drop the defaults its parent's default_factory set.
    data = merge_onto(LoopToolConfig, LoopToolConfig().model_dump(by_alias=True), data)
    try:
        return LoopToolConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, env_vars)) from None
