"""The four agents behind one interface, in two implementations.

``ProgrammaticAgents`` (CPU default): schema-driven Planner and User (``shared.scenarios``); the
Assistant knows the plan's calls, so its calls are correct and schema-valid; it follows the
reference's rules (ask only for missing required parameters, never invent values, fill every known
parameter, retry once after a transient tool error).

``LLMAgents``: every agent prompts a :class:`~looptool.shared.generation.Generator` (the inference
server's client, or any backend). The Planner picks need kinds and tools (JSON); the concrete
argument values come from the schema so the User can be checked for grounding; the User writes the
request (a request that does not mention every value falls back to the programmatic one, counted);
the Assistant's turn is sampled 2 times — accepted when they agree, else a 3rd sample; accepted
when two of three agree, else the first valid sample is kept and the turn is marked
``disagreement``. Unparseable samples are re-drawn up to ``max_turn_retries`` extra times; a turn
with no parseable sample is a broken turn (the dialogue is rejected, the run goes on).

The Tool agent is the tool simulator service, driven by the engine.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from looptool.shared import scenarios
from looptool.shared.generation import GenRequest, Generator, SamplingParams
from looptool.shared.records import Message, Tool, ToolCall
from looptool.shared.toolcall_format import ParsedOutput, parse_tool_calls

from .config import NEED_KINDS, SynthesisConfig
from .plan import REQUIREMENTS, Need, Plan, build_need, programmatic_plan

TRANSIENT_ERRORS = {"rate_limited", "service_unavailable", "timeout"}


@dataclass
class ToolOutcome:
    call: ToolCall
    content: str
    is_error: bool = False
    error_type: str = ""


@dataclass
class NeedState:
    need: Need
    step: int = 0  # calls of the plan already issued (sequential: index of the next one)
    clarified: bool = False
    retried: bool = False
    finished: bool = False
    last: list[ToolOutcome] = field(default_factory=list)
    outcomes: list[ToolOutcome] = field(default_factory=list)


@dataclass
class AssistantTurn:
    text: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    error: str = ""  # no usable turn (unparseable after retries, generation failure)
    disagreement: bool = False
    votes: str = ""
    raw: str = ""


class Agents(Protocol):
    name: str

    def plan(self, tools: list[Tool], rng: random.Random) -> Plan: ...

    def user_request(self, need: Need, tools: list[Tool], rng: random.Random, first: bool) -> str: ...

    def user_answer(self, need: Need, question: str, rng: random.Random) -> str: ...

    def assistant(self, messages: list[Message], tools: list[Tool], state: NeedState, rng: random.Random, date: str) -> AssistantTurn: ...


_LEADS = ["Next, ", "One more thing: ", "Also, ", "Thanks! Now ", "Great. Next, "]


def _programmatic_request(need: Need, tools: list[Tool], rng: random.Random, first: bool) -> str:
    by_name = {t.name: t for t in tools}
    if need.kind == "no_tool":
        text = scenarios.render_no_tool_request(tools, rng)
    elif need.kind == "clarification":
        call = need.calls[0]
        text = scenarios.render_partial_request(call, by_name[call.name], need.missing, rng, need.style)
    elif need.kind == "sequential":
        a = scenarios.render_request(need.calls[:1], by_name, rng, need.style)
        b = scenarios.render_request(need.calls[1:], by_name, rng, "terse")
        text = f"{a} After that, {b[:1].lower()}{b[1:]}"
    else:
        text = scenarios.render_request(need.calls, by_name, rng, need.style)
    if not first:
        lead = rng.choice(_LEADS)
        text = lead + (text[:1].lower() + text[1:] if lead.endswith(": ") or lead.endswith(", ") or lead.endswith("Now ") else text)
    return text


def _error_type(content: str) -> str:
    try:
        body = json.loads(content)
    except (json.JSONDecodeError, TypeError):
        return "error"
    err = body.get("error") if isinstance(body, dict) else None
    return str(err.get("type", "error")) if isinstance(err, dict) else "error"


class ProgrammaticAgents:
    name = "programmatic"

    def __init__(self, cfg: SynthesisConfig):
        self.cfg = cfg

    def plan(self, tools: list[Tool], rng: random.Random) -> Plan:
        return programmatic_plan(tools, self.cfg, rng)

    def user_request(self, need: Need, tools: list[Tool], rng: random.Random, first: bool) -> str:
        return _programmatic_request(need, tools, rng, first)

    def user_answer(self, need: Need, question: str, rng: random.Random) -> str:
        return scenarios.render_clarification_answer(need.calls[0], need.missing, rng)

    def assistant(self, messages: list[Message], tools: list[Tool], state: NeedState, rng: random.Random, date: str) -> AssistantTurn:
        need = state.need
        by_name = {t.name: t for t in tools}
        if need.kind == "no_tool":
            return AssistantTurn(text=scenarios.render_no_tool_answer(tools))
        if need.kind == "clarification" and not state.clarified:
            return AssistantTurn(text=scenarios.render_clarification_question(by_name[need.calls[0].name], need.missing))
        if state.last and any(o.is_error for o in state.last):
            failed = [o for o in state.last if o.is_error]
            if not state.retried and all(o.error_type in TRANSIENT_ERRORS for o in failed):
                state.retried = True
                return AssistantTurn(calls=[ToolCall(name=o.call.name, arguments=o.call.arguments) for o in failed])
            state.finished = True
            reasons = "; ".join(f"{o.call.name}: {o.content[:120]}" for o in failed)
            return AssistantTurn(text=f"Sorry, I couldn't complete that — the service returned an error ({reasons}).")
        if need.kind == "sequential" and state.step < len(need.calls):
            call = need.calls[state.step]
            state.step += 1
            return AssistantTurn(calls=[ToolCall(name=call.name, arguments=call.arguments)])
        if state.step == 0 and need.calls:
            state.step = len(need.calls)
            return AssistantTurn(calls=[ToolCall(name=c.name, arguments=c.arguments) for c in need.calls])
        done = [o for o in state.outcomes if not o.is_error]
        return AssistantTurn(text=scenarios.render_result_summary([o.call for o in done], [o.content for o in done]))


# ---------------------------------------------------------------------------------------------
# LLM agents
# ---------------------------------------------------------------------------------------------

PLANNER_PROMPT = (
    "You plan realistic conversations between a user and an assistant that can call tools. "
    "Given the tools below, write a plan as JSON: {\"needs\": [{\"kind\": K, \"tools\": [tool names]}]} with 1 to {max_needs} "
    "needs. K is one of: single (one call), parallel (several independent calls at once), sequential (two calls, one "
    "after the other), clarification (the user forgets a required detail), no_tool (no tool can help). "
    "With two or more needs, make at least one parallel or sequential. Answer with the JSON only.\n\nTools:\n{tools}"
)
USER_PROMPT = (
    "You are a user talking to an assistant. Write your next message (one or two sentences), in a {style} style. "
    "Goal: {goal}. {task}\nWrite only the message."
)


def _sig(p: ParsedOutput) -> str:
    if p.calls:
        return "|".join(sorted(c.key() for c in p.calls))
    return "<text>"


class LLMAgents:
    name = "llm"

    def __init__(self, cfg: SynthesisConfig, generator: Generator):
        self.cfg = cfg
        self.gen = generator
        self.fallback = ProgrammaticAgents(cfg)

    def _one(self, messages: list[Message], rng: random.Random, tools: list[Tool] | None = None, n: int = 1,
             temperature: float | None = None, max_tokens: int | None = None) -> tuple[list[str], str]:
        params = SamplingParams(temperature=self.cfg.temperature if temperature is None else temperature,
                                max_tokens=max_tokens or self.cfg.max_tokens, n=n, seed=rng.randrange(1 << 31))
        res = self.gen.generate([GenRequest(messages=messages, tools=list(tools or []), params=params)])[0]
        if res.error:
            return [], res.error
        return [c.text for c in res.completions], ""

    # Planner ---------------------------------------------------------------------------------
    def plan(self, tools: list[Tool], rng: random.Random) -> Plan:
        listing = "\n".join(f"- {t.name}: {t.description[:160]}" for t in tools)
        prompt = PLANNER_PROMPT.replace("{max_needs}", str(self.cfg.max_needs)).replace("{tools}", listing)
        try:
            texts, err = self._one([Message(role="user", content=prompt)], rng, max_tokens=200)
        except Exception:  # noqa: BLE001 - generator down: the programmatic planner
            texts, err = [], "generator failed"
        needs = self._parse_plan(texts[0] if texts else "", tools, rng)
        if not needs:
            plan = programmatic_plan(tools, self.cfg, rng)
            plan.source = "programmatic-fallback"
            return plan
        return Plan(needs, source="llm")

    def _parse_plan(self, text: str, tools: list[Tool], rng: random.Random) -> list[Need]:
        from looptool.services.toolsim.simulator import parse_json_result

        value = parse_json_result(text)
        items = value.get("needs") if isinstance(value, dict) else value if isinstance(value, list) else None
        if not isinstance(items, list) or not items:
            return []
        by_name = {t.name: t for t in tools}
        needs: list[Need] = []
        for item in items[: self.cfg.max_needs]:
            if not isinstance(item, dict) or item.get("kind") not in NEED_KINDS:
                return []
            names = [n for n in item.get("tools", []) if isinstance(n, str) and n in by_name]
            subset = [by_name[n] for n in names] or tools
            if item["kind"] != "no_tool" and not names:
                return []
            needs.append(build_need(item["kind"], subset, self.cfg, rng))
        return needs

    # User --------------------------------------------------------------------------------------
    def user_request(self, need: Need, tools: list[Tool], rng: random.Random, first: bool) -> str:
        by_name = {t.name: t for t in tools}
        if need.kind == "no_tool":
            task = "Ask for something unrelated to these tools: " + ", ".join(t.name for t in tools) + "."
            expected: list[ToolCall] = []
        else:
            shown = [ToolCall(name=c.name, arguments={k: v for k, v in c.arguments.items() if k not in need.missing}) for c in need.calls]
            parts = [f"{scenarios.task_phrase(by_name[c.name])} with " + json.dumps(c.arguments, ensure_ascii=False) for c in shown]
            task = "You want to: " + "; then ".join(parts) + ". Mention every value exactly as written."
            if need.missing:
                task += " Do not mention " + ", ".join(need.missing) + "."
            expected = shown
        prompt = USER_PROMPT.format(style=need.style, goal=REQUIREMENTS[need.kind], task=task)
        try:
            texts, _ = self._one([Message(role="user", content=prompt)], rng, max_tokens=120)
        except Exception:  # noqa: BLE001
            texts = []
        text = (texts[0] if texts else "").strip()
        text = parse_tool_calls(text).text if "<" in text else text
        if not text or (expected and scenarios.ungrounded_values(text, expected)) or len(text) > 1200:
            need.notes.append("user_fallback")
            return _programmatic_request(need, tools, rng, first)
        return text

    def user_answer(self, need: Need, question: str, rng: random.Random) -> str:
        # values verbatim, so the clarified call stays grounded in the dialogue
        return scenarios.render_clarification_answer(need.calls[0], need.missing, rng)

    # Assistant ----------------------------------------------------------------------------------
    def assistant(self, messages: list[Message], tools: list[Tool], state: NeedState, rng: random.Random, date: str) -> AssistantTurn:
        request = ([Message(role="system", content=f"Current date: {date}")] if date else []) + list(messages)
        valid: list[tuple[ParsedOutput, str]] = []
        problems: list[str] = []
        budget = max(1, self.cfg.votes) + self.cfg.max_turn_retries * 2
        drawn = 0
        while drawn < budget:
            want = 1 if self.cfg.votes <= 1 or valid else 2
            want = min(want, budget - drawn)
            try:
                texts, err = self._one(request, rng, tools=tools, n=want)
            except Exception as exc:  # noqa: BLE001 - generator failure is a per-item error
                return AssistantTurn(error=f"generation failed: {exc.__class__.__name__}: {exc}")
            if err:
                problems.append(err)
                drawn += want
                continue
            texts = texts[:want] or []
            drawn += max(want, len(texts)) if texts else want
            for text in texts:
                p = parse_tool_calls(text)
                if p.error is not None:
                    problems.append(str(p.error))
                elif not p.calls and not p.text.strip():
                    problems.append("empty turn")
                else:
                    valid.append((p, text))
            if self.cfg.votes <= 1 and valid:
                p, raw = valid[0]
                return AssistantTurn(text=p.text if not p.calls else "", calls=p.calls, votes="1/1", raw=raw)
            sigs = [_sig(p) for p, _ in valid]
            for s in sigs:
                if sigs.count(s) >= 2:
                    p, raw = valid[sigs.index(s)]
                    return AssistantTurn(text=p.text if not p.calls else "", calls=p.calls, votes=f"{sigs.count(s)}/{len(sigs)}", raw=raw)
            if len(valid) >= self.cfg.votes:
                break
        if not valid:
            return AssistantTurn(error=f"unparseable turn after {drawn} samples: {problems[-1] if problems else 'no output'}")
        p, raw = valid[0]
        return AssistantTurn(text=p.text if not p.calls else "", calls=p.calls, disagreement=True, votes=f"1/{len(valid)}", raw=raw)


def make_agents(cfg: SynthesisConfig, generator: Generator | None = None) -> Agents:
    if cfg.agents == "llm":
        if generator is None:
            raise ValueError("agents 'llm' need a generator (the inference server); use agents 'programmatic' on CPU")
        return LLMAgents(cfg, generator)
    return ProgrammaticAgents(cfg)
