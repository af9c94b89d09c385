"""The llm EDDE generator: prompts a model with the failure (tools, conversation, correct and
wrong calls, the judge's analysis) and a scenario variation, and parses its answer strictly."""

from __future__ import annotations

import json
import re

from looptool.shared.generation import GenRequest, GenResult, Generator, SamplingParams
from looptool.shared.logs import get_logger
from looptool.shared.records import Decision, Message, Sample, ToolCall
from looptool.shared.toolcall_format import strip_reasoning

from .drafts import Draft, derived_rng
from .seeds import Seed
from .structure import StructureOptions, expansion_history, siblings_of

log = get_logger("looptool.expander")


VARIATIONS = (
    "change every entity and value (names, places, products, numbers, dates) to different realistic ones",
    "a terse request from a busy professional, values given in passing",
    "a casual, chatty request with a little small talk before the actual need",
    "the request is embedded in a short story explaining why the user needs it",
    "a very polite, formal request",
    "state the details in a different order than the function's parameters",
    "a non-native speaker's slightly awkward but clear phrasing",
    "the user first describes the situation, then asks at the end",
)

LLM_SYSTEM = (
    "You write training data for a tool-calling assistant. Given an example the assistant got wrong, you "
    "write ONE new example that tests the same skill in a different situation. You answer with a single "
    "JSON object and nothing else."
)


def _context_text(sample: Sample, limit: int = 4000) -> str:
    lines = []
    for m in sample.context:
        if m.role == "system":
            continue
        if m.role == "assistant" and m.tool_calls:
            lines.append("assistant calls: " + json.dumps([c.model_dump(exclude={"id"}) for c in m.tool_calls], ensure_ascii=False))
        else:
            lines.append(f"{m.role}: {m.content}")
    text = "\n".join(lines)
    return text if len(text) <= limit else "…" + text[-limit:]


def _calls_json(calls: list[ToolCall]) -> str:
    return json.dumps([{"name": c.name, "arguments": c.arguments} for c in calls], ensure_ascii=False)


def _structure_rule(seed: Seed, structure: StructureOptions | None) -> str:
    """The rule line about which calls the new example may have (``structure.check_structure``)."""
    n = len(seed.correct)
    s = structure or StructureOptions()
    if s.change_calls:
        return ("- Call one or more of the tools listed above (at most 5 calls, all independent of each other); you may "
                "drop, add or reorder calls compared with the correct answer. Argument names must match each tool's schema.\n")
    rule = (f"- Call exactly the same function{'s' if n > 1 else ''} as the correct answer ({n} call{'s' if n > 1 else ''}, "
            "same order), with exactly the same argument names; only the values change.\n")
    if s.sibling_tools:
        sibs = {c.name: [t.name for t in siblings_of(c.name, seed.tools)] for c in seed.correct}
        listed = "; ".join(f"{k} -> {', '.join(v)}" for k, v in sibs.items() if v)
        if listed:
            rule += (f"- Exception: a call may use a similar tool instead ({listed}), with that tool's own arguments.\n")
    if any(m.role != "system" for m in expansion_history(seed, [], s)):
        rule += ("- The earlier turns of the conversation are kept: your user message replaces the conversation's last "
                 "user message, so it must make sense after the earlier turns.\n")
    return rule


def llm_prompt(seed: Seed, variation: str, structure: StructureOptions | None = None) -> str:
    """The user message of the llm generator's request."""
    tools = "\n".join(json.dumps(t.to_openai()["function"], ensure_ascii=False) for t in seed.tools)
    if seed.decision == Decision.LABEL_WRONG:
        wrong_title, wrong = "Wrong label the example had", _calls_json(seed.wrong) if seed.wrong else "(no call)"
    else:
        wrong_title = "Wrong answer the assistant gave"
        wrong = _calls_json(seed.wrong) if seed.wrong else (seed.wrong_text.strip()[:1500] or "(no answer)")
    n = len(seed.correct)
    return (
        "The assistant failed on the example below. Write one NEW example that tests the same skill.\n\n"
        f"## Tools\n{tools}\n\n"
        f"## Original conversation\n{_context_text(seed.sample)}\n\n"
        f"## Correct call{'s' if n > 1 else ''}\n{_calls_json(seed.correct)}\n\n"
        f"## {wrong_title}\n{wrong}\n\n"
        f"## Why it is wrong (the judge's error analysis)\n{(seed.analysis or seed.reason).strip() or '(no analysis given)'}\n\n"
        + (f"## The correct approach\n{seed.correct_approach.strip()}\n\n" if seed.correct_approach.strip() else "")
        + f"## Scenario variation\n{variation}\n\n"
        "## Rules\n"
        + _structure_rule(seed, structure) +
        "- Use new, realistic values (different entities, numbers, dates) that differ from the original.\n"
        "- The user message must state every argument value verbatim, so nothing has to be guessed.\n"
        "- Every value must satisfy the tool's JSON Schema (types, enums, formats, ranges).\n"
        "- Keep what made the original hard, so the new example tests the same mistake.\n\n"
        "Answer with only this JSON object, no prose and no code fences:\n"
        '{"user": "<the user\'s message>", "calls": [{"name": "<function>", "arguments": {...}}]}'
    )


_FENCE = re.compile(r"^```(?:json)?\s*\n(.*)\n```$", re.DOTALL)


def parse_llm_draft(text: str) -> Draft:
    """Strict: the whole answer (after removing ``<think>`` reasoning and one optional enclosing
    ```json fence) must be one JSON object with exactly ``user`` (non-empty string) and ``calls``
    (non-empty list of ``{"name": str, "arguments": object}``). Anything else is a ``parse`` error."""
    visible, _ = strip_reasoning(text if isinstance(text, str) else "")
    body = visible.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        obj = json.loads(body)
    except (json.JSONDecodeError, RecursionError) as exc:
        return Draft(error="parse", detail=f"not a JSON object: {exc}")
    if not isinstance(obj, dict):
        return Draft(error="parse", detail="answer is not a JSON object")
    if set(obj) != {"user", "calls"}:
        return Draft(error="parse", detail=f"keys must be exactly ['calls', 'user'], got {sorted(obj)}")
    user, calls = obj["user"], obj["calls"]
    if not isinstance(user, str) or not user.strip():
        return Draft(error="parse", detail="'user' must be a non-empty string")
    if not isinstance(calls, list) or not calls:
        return Draft(error="parse", detail="'calls' must be a non-empty list")
    out: list[ToolCall] = []
    for i, c in enumerate(calls):
        if not isinstance(c, dict) or set(c) - {"name", "arguments"} or not isinstance(c.get("name"), str):
            return Draft(error="parse", detail=f"calls[{i}] must be {{'name': str, 'arguments': object}}")
        args = c.get("arguments", {})
        if not isinstance(args, dict):
            return Draft(error="parse", detail=f"calls[{i}].arguments must be an object")
        out.append(ToolCall(name=c["name"].strip(), arguments=args))
    return Draft(user=user.strip(), calls=out)


class LLMGenerator:
    """Prompts a ``Generator`` (the inference client, or any backend) with the tools, the context, the
    correct and the wrong call, the judge's analysis and a scenario variation; parses strictly."""

    name = "llm"

    def __init__(self, generator: Generator, temperature: float = 0.8, max_tokens: int = 512,
                 structure: StructureOptions | None = None):
        self.generator, self.temperature, self.max_tokens = generator, temperature, max_tokens
        self.structure = structure or StructureOptions()

    def drafts(self, seed: Seed, tasks: list[tuple[int, int]], base_seed: int) -> list[Draft]:
        return self.drafts_many([(seed, tasks)], base_seed)[0]

    def drafts_many(self, work: list[tuple[Seed, list[tuple[int, int]]]], base_seed: int) -> list[list[Draft]]:
        """One ``generate`` call for every task of every seed (the backend batches them)."""
        requests, styles = [], []
        for seed, tasks in work:
            for slot, attempt in tasks:
                rng = derived_rng(base_seed, seed.id, slot, attempt, self.name)
                variation = rng.choice(VARIATIONS)
                styles.append(variation)
                requests.append(
                    GenRequest(
                        messages=[Message(role="system", content=LLM_SYSTEM), Message(role="user", content=llm_prompt(seed, variation, self.structure))],
                        tools=[],
                        params=SamplingParams(
                            temperature=self.temperature, max_tokens=self.max_tokens, seed=rng.getrandbits(31)
                        ),
                        request_id=f"edde-{seed.id}-{slot}-{attempt}",
                    )
                )
        try:
            results = self.generator.generate(requests) if requests else []
        except Exception as exc:  # the backend is down: every draft of this batch failed
            log.warning("llm generator failed", extra={"error": repr(exc)})
            results = [GenResult(error=f"generator failed: {exc!r}"[:300]) for _ in requests]
        flat: list[Draft] = []
        for i in range(len(requests)):
            res = results[i] if i < len(results) else None
            if res is None or res.error or not res.completions:
                flat.append(Draft(error="generation_error", detail=(res.error if res else "no result") or "no completion"))
                continue
            d = parse_llm_draft(res.completions[0].text)
            d.style = styles[i]
            flat.append(d)
        out, pos = [], 0
        for _seed, tasks in work:
            out.append(flat[pos : pos + len(tasks)])
            pos += len(tasks)
        return out
