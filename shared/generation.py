"""The generation interface every model-facing part codes against.

Backends (transformers, vLLM, OpenAI-compatible) implement it in-process; the inference
server's gRPC client implements it over the network. Agents (synthesizer, tool simulator,
expander, judge) take a ``Generator`` and do not care which one they got.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from looptool.shared.records import Message, Tool, ToolCall


@dataclass
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    max_tokens: int = 256
    n: int = 1
    seed: int = 0
    stop: list[str] = field(default_factory=list)


@dataclass
class GenRequest:
    """Messages (+ tools, rendered into the system prompt by ``shared.prompt.build_chat``)."""

    messages: list[Message]
    tools: list[Tool] = field(default_factory=list)
    params: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = ""


@dataclass
class Completion:
    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    parse_error: str = ""
    finish_reason: str = "stop"  # stop | length | cancelled
    mean_logprob: float = 0.0  # mean token log-probability (perplexity = exp(-mean_logprob))


@dataclass
class GenResult:
    completions: list[Completion] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str = ""  # per-item error (e.g. prompt over the context limit); the batch goes on


@runtime_checkable
class Generator(Protocol):
    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        """One result per request, in order. Never raises for a per-item problem: sets ``error``."""
        ...
