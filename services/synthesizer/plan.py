"""Plans: the Planner's output — a short list of linked user needs over the dialogue's tools.

Each :class:`Need` is one of ``single`` (one call), ``parallel`` (2–3 calls in one turn),
``sequential`` (2 calls, the second after the first's result; a result value is threaded into
the second call when a key matches), ``clarification`` (the user omits required parameters, the
assistant must ask) or ``no_tool`` (no tool fits; the assistant says so). With two or more needs
at least one is complex (parallel or sequential), as in the reference planner.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from looptool.shared.records import Tool, ToolCall
from looptool.shared.scenarios.calls import make_call

from .config import SynthesisConfig

REQUIREMENTS = {
    "single": "ask for exactly one thing, giving every value the tool needs",
    "parallel": "ask for several independent things at once so they can be done in parallel",
    "sequential": "ask for two things where the second should happen after the first",
    "clarification": "leave out some required details, so the assistant has to ask for them",
    "no_tool": "ask for something none of the tools can do",
}


@dataclass
class Need:
    kind: str
    calls: list[ToolCall] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    style: str = "polite"
    goal: str = ""
    notes: list[str] = field(default_factory=list)  # e.g. "user_fallback"

    @property
    def tools(self) -> list[str]:
        return list(dict.fromkeys(c.name for c in self.calls))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "calls": [{"name": c.name, "arguments": c.arguments} for c in self.calls],
            "missing": list(self.missing),
            "style": self.style,
            "goal": self.goal,
            **({"notes": list(self.notes)} if self.notes else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Need":
        return cls(kind=d["kind"], calls=[ToolCall(**c) for c in d.get("calls", [])], missing=list(d.get("missing", [])),
                   style=d.get("style", "polite"), goal=d.get("goal", ""))


@dataclass
class Plan:
    needs: list[Need]
    source: str = "programmatic"

    def to_dict(self) -> dict[str, Any]:
        return {"needs": [n.to_dict() for n in self.needs], "planner": self.source}


def _weighted(rng: random.Random, mix: dict[str, float]) -> str:
    kinds = [k for k, w in mix.items() if w > 0]
    return rng.choices(kinds, weights=[mix[k] for k in kinds])[0]


def _required(tool: Tool) -> list[str]:
    props = tool.parameters.get("properties") or {}
    return [r for r in tool.parameters.get("required") or [] if r in props]


def build_need(kind: str, tools: list[Tool], cfg: SynthesisConfig, rng: random.Random) -> Need:
    style = rng.choice(cfg.styles)
    inc = cfg.include_optional
    if kind == "no_tool":
        return Need("no_tool", style=style, goal=REQUIREMENTS["no_tool"])
    if kind == "clarification":
        candidates = [t for t in tools if _required(t)]
        if candidates:
            t = rng.choice(candidates)
            call = make_call(t, rng, inc)
            req = _required(t)
            missing = sorted(rng.sample(req, rng.randint(1, min(2, len(req)))), key=req.index)
            return Need("clarification", [call], missing, style, REQUIREMENTS["clarification"])
        kind = "single"
    if kind == "parallel":
        n = rng.randint(2, 3)
        if len(tools) == 1 or rng.random() < 0.5:
            t = rng.choice(tools)
            calls = [make_call(t, rng, inc) for _ in range(n)]
        else:
            chosen = rng.sample(tools, min(n, len(tools)))
            calls = [make_call(t, rng, inc) for t in chosen]
        # identical calls in one turn are not parallel work: drop repeats
        uniq: dict[str, ToolCall] = {}
        for c in calls:
            uniq.setdefault(c.key(), c)
        calls = list(uniq.values())
        return Need("parallel" if len(calls) > 1 else "single", calls, style=style, goal=REQUIREMENTS["parallel"])
    if kind == "sequential":
        first = rng.choice(tools)
        second = rng.choice([t for t in tools if t.name != first.name] or tools)
        calls = [make_call(first, rng, inc), make_call(second, rng, inc)]
        if calls[0].key() == calls[1].key():
            return Need("single", calls[:1], style=style, goal=REQUIREMENTS["single"])
        return Need("sequential", calls, style=style, goal=REQUIREMENTS["sequential"])
    t = rng.choice(tools)
    return Need("single", [make_call(t, rng, inc)], style=style, goal=REQUIREMENTS["single"])


def programmatic_plan(tools: list[Tool], cfg: SynthesisConfig, rng: random.Random) -> Plan:
    n = rng.randint(1, cfg.max_needs)
    kinds = [_weighted(rng, cfg.mix) for _ in range(n)]
    complex_ok = [k for k in ("parallel", "sequential") if cfg.mix.get(k, 0) > 0]
    if n >= 2 and complex_ok and not any(k in ("parallel", "sequential") for k in kinds):
        kinds[rng.randrange(n)] = rng.choice(complex_ok)
    return Plan([build_need(k, tools, cfg, rng) for k in kinds])
