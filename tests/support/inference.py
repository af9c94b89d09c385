"""Shared helpers for the inference tests: a tiny local model (built once per session, no download),
sample datasets, and a scripted Generator for logic tests."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

import pytest
import torch

from looptool.shared.generation import GenRequest, GenResult
from looptool.shared.records import Message, Sample, Tool, ToolCall

_lock = threading.Lock()
_built: dict[str, Path] = {}

WEATHER = Tool(
    name="get_weather",
    description="Current weather for a city",
    parameters={
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
            "days": {"type": "integer"},
        },
        "required": ["city"],
    },
)
FLIGHT = Tool(
    name="book_flight",
    description="Book a flight",
    parameters={
        "type": "object",
        "properties": {"origin": {"type": "string"}, "destination": {"type": "string"}, "seats": {"type": "integer"}},
        "required": ["origin", "destination"],
    },
)
CITIES = ["Paris", "London", "Berlin", "Madrid", "Rome", "Vienna", "Oslo", "Lisbon", "Prague", "Dublin"]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Two noisy CPU cores shared with other jobs: one intra-op thread is ~10x faster than two
    threads fighting for them. Restored after the module (the setting is process-wide)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def corpus() -> list[str]:
    texts = []
    for c in CITIES:
        texts.append(f"What is the weather in {c} for the next 3 days?")
        texts.append('<tool_call>\n{"name": "get_weather", "arguments": {"city": "%s", "days": 3}}\n</tool_call>' % c)
        texts.append(f"Book a flight from {c} to Rome with 2 seats")
    return texts * 3


def tiny_model_dir(hidden: int = 64, layers: int = 2) -> Path:
    """A tiny Llama model + BPE tokenizer + ChatML template, built locally once per process.

    The random init is re-drawn with a larger std so greedy outputs vary from prompt to prompt
    (a default-init model repeats one token, which would make batching tests vacuous)."""
    key = f"{hidden}x{layers}"
    with _lock:
        if key in _built and _built[key].exists():
            return _built[key]
        import torch
        from transformers import AutoModelForCausalLM

        from looptool.shared.tiny_model import TinyModelSpec, build_tiny_model

        root = Path(tempfile.mkdtemp(prefix="looptool-tiny-"))
        out = build_tiny_model(
            root / "model",
            corpus(),
            TinyModelSpec(vocab_size=512, hidden_size=hidden, intermediate_size=hidden * 2, num_layers=layers,
                          num_heads=2, max_positions=2048),
        )
        model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() == 2:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.15)
        model.save_pretrained(out)
        _built[key] = out
        return out


def make_samples(n: int, start: int = 0) -> list[Sample]:
    out = []
    for i in range(start, start + n):
        c = CITIES[i % len(CITIES)]
        out.append(
            Sample(
                context=[Message(role="user", content=f"What is the weather in {c} for the next {i % 5 + 1} days? (#{i})")],
                tools=[WEATHER],
                reference=[ToolCall(name="get_weather", arguments={"city": c, "days": i % 5 + 1})],
            ).with_id()
        )
    return out


def write_samples(uri: str, samples: list[Sample]):
    from looptool.shared.storage import writer_for_uri

    w = writer_for_uri(uri, kind="samples")
    w.write_many(samples)
    return w.commit()


class ScriptedGenerator:
    """Deterministic Generator: ``script(request, completion_index) -> str | GenResult-error str``.

    Records every request it saw. ``logprob`` sets the mean logprob of every completion.
    """

    def __init__(self, script, logprob: float = -0.01):
        self.script, self.logprob = script, logprob
        self.requests: list[GenRequest] = []

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        from looptool.services.inference.backends.base import completion_from_text

        out = []
        for r in requests:
            self.requests.append(r)
            comps = []
            err = ""
            for i in range(max(1, r.params.n)):
                text = self.script(r, i)
                if isinstance(text, Exception):
                    err = str(text)
                    break
                lp = self.logprob(r, i) if callable(self.logprob) else self.logprob
                comps.append(completion_from_text(text, "stop", lp))
            out.append(GenResult(error=err) if err else GenResult(completions=comps, prompt_tokens=10, completion_tokens=5))
        return out


def looptool_env(model_dir: Path, store: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPTOOL_")}
    env.update(
        LOOPTOOL_INFERENCE__MODEL=str(model_dir),
        LOOPTOOL_STORAGE__ROOT=str(store),
        **extra,
    )
    return env


def rmtree(p: Path) -> None:
    shutil.rmtree(p, ignore_errors=True)
