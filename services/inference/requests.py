"""Request checks of the inference server's RPCs, against ``limits`` (``shared.config.LimitsSettings``).

Run on the protobuf message before anything is converted or tokenized: a 20 MB prompt is refused by
its byte size (microseconds) rather than after tokenizing it (seconds of CPU, a GB of memory), and
a negative ``max_tokens`` or NaN ``temperature`` is refused rather than read as "unset". Zero keeps
meaning "the default" (proto3 cannot tell unset from 0). Each check raises ``InputError`` naming the
field: ``handle_errors`` ends the RPC with INVALID_ARGUMENT and that one line.
"""

from __future__ import annotations

from typing import Any

from looptool.shared.config import LimitsSettings
from looptool.shared.errors import InputError
from looptool.shared.limits import check_float, check_int


def _size(where: str, msg: Any, limits: LimitsSettings) -> None:
    size = msg.ByteSize()
    if size > limits.prompt_bytes:
        raise InputError(where, f"{size} bytes, over limits.prompt_bytes ({limits.prompt_bytes})",
                         "shorten the messages and tools or raise limits.prompt_bytes")


def check_generate(req: Any, limits: LimitsSettings, where: str = "GenerateRequest") -> None:
    """A ``GenerateRequest``: its size, then ``params``' numbers."""
    _size(f"{where}.messages", req, limits)
    p = req.params
    check_int(f"{where}.params.max_tokens", p.max_tokens, 0, limits.max_tokens, "max_tokens")
    check_int(f"{where}.params.n", p.n, 0, limits.n, "n")
    check_float(f"{where}.params.temperature", p.temperature, 0.0, 100.0)
    check_float(f"{where}.params.top_p", p.top_p, 0.0, 1.0)


def check_batch(req: Any, limits: LimitsSettings) -> None:
    """A ``GenerateBatchRequest`` as a whole; its items are checked one by one (``check_generate``)."""
    check_int("GenerateBatchRequest.requests", len(req.requests), 0, limits.batch_requests, "batch_requests",
              f"send at most {limits.batch_requests} requests per batch, or raise limits.batch_requests")


def check_probe(req: Any, limits: LimitsSettings) -> None:
    _size("ProbeRequest", req, limits)
    check_int("ProbeRequest.k", req.k, 0, limits.n, "n")
    check_int("ProbeRequest.max_tokens", req.max_tokens, 0, limits.max_tokens, "max_tokens")
    check_float("ProbeRequest.temperature", req.temperature, 0.0, 100.0)
    check_int("ProbeRequest.round", req.round, 0)


def check_probe_spec(spec: Any, limits: LimitsSettings) -> None:
    """The merged ``ProbeSpec`` (``config_json`` may set what the request's fields leave at 0)."""
    check_int("ProbeRequest.config_json.k", spec.k, 0, limits.n, "n")
    check_int("ProbeRequest.config_json.maxTokens", spec.maxTokens, 0, limits.max_tokens, "max_tokens")


def check_judge(req: Any, limits: LimitsSettings) -> None:
    _size("JudgeRequest", req, limits)
    check_int("JudgeRequest.votes", req.votes, 0, limits.n, "n")
    check_int("JudgeRequest.round", req.round, 0)


def check_judge_spec(spec: Any, limits: LimitsSettings) -> None:
    check_int("JudgeRequest.config_json.votes", spec.votes, 1, limits.n, "n")
    check_int("JudgeRequest.config_json.candidates", spec.candidates, 0, limits.n, "n")
    check_int("JudgeRequest.config_json.models (panel size)", len(spec.models), 0, limits.n, "n")
    check_int("JudgeRequest.config_json.candidateMaxTokens", spec.candidateMaxTokens, 0, limits.max_tokens, "max_tokens")
