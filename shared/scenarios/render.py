"""English for calls: user requests (in a style), clarification turns, no-tool requests, result
summaries. Every argument value is written verbatim (numbers as JSON writes them, strings as-is,
booleans as ``true``/``false``), so :mod:`.grounding` finds each value in the text."""

from __future__ import annotations

import json
import random
import re
from typing import Any, Iterable, Mapping

from looptool.shared.records import Tool, ToolCall

from .calls import tool_params
from .vocab import NO_TOOL_REQUESTS, STYLES, humanize, tokens


def render_value(value: Any) -> str:
    """A value as it appears in a request: numbers as JSON writes them, strings as-is (quoted when
    long), booleans ``true``/``false``, lists as ``a, b and c``, objects as ``key value`` pairs."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, str):
        return f'"{value}"' if (len(value.split()) > 4 or "," in value and len(value.split()) > 2) else value
    if isinstance(value, list):
        parts = [render_value(v) for v in value]
        if not parts:
            return "an empty list"
        if len(parts) == 1:
            return parts[0]
        sep = "; " if any(isinstance(v, (dict, list)) for v in value) else ", "
        return sep.join(parts[:-1]) + " and " + parts[-1]
    if isinstance(value, dict):
        if not value:
            return "nothing"
        return "(" + ", ".join(f"{humanize(k)} {render_value(v)}" for k, v in value.items()) + ")"
    return str(value)



_PREFIXES = re.compile(
    r"^(?:this (?:tool|function|api|endpoint|method|service) (?:is used to|will|can|allows (?:you|users) to|lets you|helps(?: to)?)?\s*|"
    r"(?:a |the )?(?:function|tool|api|endpoint|method|utility) (?:that|to|which|for)\s+|used to\s+|use this (?:tool |function )?to\s+|"
    r"allows (?:you|users|the user) to\s+|helps? (?:you )?(?:to )?|enables? (?:you |users )?to\s+)",
    re.I,
)
_VERBS = {
    "add", "analyze", "book", "buy", "calculate", "cancel", "change", "check", "compare", "compute", "convert", "count",
    "create", "delete", "demonstrate", "describe", "determine", "display", "download", "draw", "estimate", "evaluate",
    "explain", "extract", "fetch", "filter", "find", "generate", "get", "identify", "list", "locate", "log", "look",
    "lookup", "make", "monitor", "order", "perform", "place", "plan", "play", "post", "predict", "provide", "purchase",
    "query", "rate", "read", "record", "register", "remove", "rename", "reserve", "reset", "resolve", "retrieve", "return",
    "review", "run", "schedule", "search", "send", "set", "share", "show", "simulate", "solve", "sort", "start", "stop",
    "submit", "subtract", "summarize", "track", "transfer", "translate", "turn", "update", "upload", "validate",
    "verify", "view", "write", "multiply", "divide", "round", "open", "close", "lock", "unlock", "fill", "display",
    "compose", "authenticate", "mean", "obtain", "measure", "recommend", "suggest", "approve", "assign", "edit", "move",
    "copy", "print", "sum", "reply", "follow", "like", "block", "mute", "release", "activate", "adjust", "start",
    "notify", "invite", "pay", "request", "load", "save", "test", "apply", "design", "organize", "forecast", "detect",
}


_FUNCTION_WORDS = {"a", "an", "the", "of", "for", "with", "to", "in", "on", "by", "and", "or", "from", "at", "its", "their"}


def _base_verb(word: str) -> str | None:
    w = word.lower()
    if w in _VERBS:
        return w
    cands = []
    if w.endswith("ies"):
        cands.append(w[:-3] + "y")
    if w.endswith("es"):
        cands.append(w[:-2])
    if w.endswith("s"):
        cands.append(w[:-1])
    for c in cands:
        if c in _VERBS:
            return c
    return None


def task_phrase(tool: Tool) -> str:
    """The tool description as an imperative verb phrase ("calculate the area of a triangle").

    Falls back to ``use <tool name in words>`` when the description does not start with a verb.
    """
    desc = tool.description or ""
    if "Tool description:" in desc:
        desc = desc.split("Tool description:", 1)[1]
    desc = re.sub(r"\s+", " ", desc).strip()
    first = re.split(r"(?<=[.!?])\s", desc, maxsplit=1)[0].rstrip(".!? ")
    first = _PREFIXES.sub("", first).strip()
    words = first.split()
    if len(words) > 22:
        cut = re.split(r",|;| - | \(", first, maxsplit=1)[0]
        words = cut.split()[:22]
    if len(words) > 1 and words[0].lower() in ("function", "tool", "api", "method", "endpoint", "this") and _base_verb(words[1]):
        words = words[1:]
    if words:
        verb = _base_verb(words[0])
        if verb:
            rest = " ".join(words[1:])
            # "... of a triangle given its base and height" → "... of a triangle"
            cut = re.split(r",? (?:given|based on|using the|using its|by providing|with the given|with a given|with given|"
                           r"from the given|for the given|for a given|and returns?|and outputs?) ", rest, maxsplit=1)[0]
            if len(cut.split()) >= 2 and cut.split()[-1].lower() not in _FUNCTION_WORDS:
                rest = cut
            rest = re.sub(r"\b(?:a |an )?(?:specified|given|provided) ", "the ", rest)
            return f"{verb} {rest}".strip()
    return f"use {humanize(tool.name)}"


def _arg_phrases(call: ToolCall, style: str, rng: random.Random) -> list[str]:
    out = []
    for k, v in call.arguments.items():
        name, val = humanize(k), render_value(v)
        if style == "terse":
            out.append(f"{name} {val}")
        elif style == "verbose":
            out.append(rng.choice([f"the {name} is {val}", f"the {name} should be {val}", f"for {name} use {val}"]))
        elif style == "casual":
            out.append(rng.choice([f"{name} {val}", f"{name}: {val}"]))
        else:
            out.append(rng.choice([f"{name} {val}", f"a {name} of {val}", f"the {name} {val}"]))
    return out


def _join(parts: list[str], conj: str = "and") -> str:
    if not parts:
        return ""
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + f" {conj} " + parts[-1]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:] if s else s


def _by_name(tools: Iterable[Tool] | Mapping[str, Tool]) -> dict[str, Tool]:
    return dict(tools) if isinstance(tools, Mapping) else {t.name: t for t in tools}


def render_request(calls: list[ToolCall], tools: Iterable[Tool] | Mapping[str, Tool], rng: random.Random, style: str = "") -> str:
    """A natural user request asking for ``calls`` (parallel when several), mentioning every
    argument value verbatim. ``style``: one of :data:`STYLES` (empty = chosen by ``rng``)."""
    style = style or rng.choice(STYLES)
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; use one of {STYLES}")
    by_name = _by_name(tools)
    if not calls:
        return render_no_tool_request(list(by_name.values()), rng)
    groups: dict[str, list[ToolCall]] = {}
    for c in calls:
        groups.setdefault(c.name, []).append(c)
    sentences: list[str] = []
    for gi, (name, group) in enumerate(groups.items()):
        tool = by_name.get(name)
        task = task_phrase(tool) if tool is not None else f"use {humanize(name)}"
        arg_sets = [_join(_arg_phrases(c, style, rng)) for c in group]
        if len(group) == 1:
            args = arg_sets[0]
        else:
            args = "; ".join(f"({i + 1}) {a or 'with the defaults'}" for i, a in enumerate(arg_sets))
        sentences.append(_sentence(task, args, style, rng, first=gi == 0, multi=len(group) > 1))
    text = " ".join(sentences)
    if style == "polite":
        text += rng.choice([" Thank you!", " Thanks so much.", " I appreciate it.", ""])
    elif style == "verbose":
        text += rng.choice([" Could you take care of that for me?", " Let me know what you find.", " Thanks in advance for the help!"])
    return text.strip()


def _sentence(task: str, args: str, style: str, rng: random.Random, first: bool, multi: bool) -> str:
    with_args = (f" for each of these: {args}" if multi else f" with {args}") if args else ""
    if not first:
        lead = rng.choice(["Also, ", "In addition, ", "And ", "On top of that, "]) if style != "terse" else "Also "
        if style == "terse":
            return f"{lead}{task}{' — ' + args if args else ''}."
        if style == "verbose" and args:
            return f"{lead}I also need to {task}{' for each of these' if multi else ''}: {args}."
        return f"{lead}please {task}{with_args}."
    if style == "terse":
        return f"{_cap(task)}{': ' + args if args else ''}."
    if style == "polite":
        return rng.choice([
            f"Could you please {task}{with_args}?",
            f"Would you kindly {task}{with_args}?",
            f"Please {task}{with_args}.",
        ])
    if style == "verbose":
        opener = rng.choice([
            "Hi there! I'm working on a project and",
            "Hello! I have a quick task:",
            "Good morning. For some planning I'm doing,",
            "Hey, hoping you can help —",
        ])
        if args and not multi:
            return f"{opener} I need to {task}. To be specific, {args}."
        return f"{opener} I need to {task}{with_args}."
    return rng.choice([f"hey, can you {task}{with_args}?", f"need to {task}{with_args}", f"{task}{with_args} pls"])


def render_partial_request(call: ToolCall, tool: Tool, omit: Iterable[str], rng: random.Random, style: str = "") -> str:
    """A request for ``call`` that leaves the ``omit`` arguments out (the assistant must ask)."""
    omit = set(omit)
    partial = ToolCall(name=call.name, arguments={k: v for k, v in call.arguments.items() if k not in omit})
    return render_request([partial], [tool], rng, style)


def render_clarification_question(tool: Tool, missing: list[str]) -> str:
    """The assistant asking for the missing required parameters of ``tool``."""
    props, _ = tool_params(tool)
    asks = []
    for m in missing:
        desc = props.get(m, {}).get("description", "") if isinstance(props.get(m), dict) else ""
        desc = re.sub(r"\s+", " ", str(desc)).strip().rstrip(".")
        asks.append(f"the {humanize(m)}" + (f" ({desc[:80]})" if desc else ""))
    return f"I can {task_phrase(tool)} for you, but I need a bit more information first: what is {_join(asks)}?"


def render_clarification_answer(call: ToolCall, provided: Iterable[str], rng: random.Random) -> str:
    """The user supplying the ``provided`` arguments of ``call`` (values verbatim)."""
    parts = [f"the {humanize(k)} is {render_value(call.arguments[k])}" for k in provided if k in call.arguments]
    lead = rng.choice(["Sure — ", "Oh right, ", "Of course: ", "Sorry about that, ", ""])
    return _cap(lead + _join(parts) + ".") if lead == "" else lead + _join(parts) + "."


def render_no_tool_request(tools: Iterable[Tool], rng: random.Random) -> str:
    """A request none of ``tools`` can serve: an off-topic request sharing as few content words as
    possible with the tools' names and descriptions."""
    vocab: set[str] = set()
    for t in tools:
        vocab.update(w for w in tokens(t.name + " " + t.description) if len(w) > 3)
    scored = []
    for req in NO_TOOL_REQUESTS:
        overlap = sum(1 for w in tokens(req) if len(w) > 3 and w in vocab)
        scored.append((overlap, req))
    best = min(s for s, _ in scored)
    return rng.choice([r for s, r in scored if s == best])


def render_no_tool_answer(tools: Iterable[Tool]) -> str:
    names = [t.name for t in tools][:4]
    listed = f" (I have {', '.join(names)})" if names else ""
    return f"Sorry, none of the tools available to me can help with that{listed}, so I can't do it with a function call."


def render_result_summary(calls: list[ToolCall], results: list[str]) -> str:
    """The assistant reporting tool results back to the user (after the tool turn)."""
    parts = []
    for c, r in zip(calls, results):
        r = re.sub(r"\s+", " ", r).strip()
        parts.append(f"{c.name} returned {r[:160]}{'…' if len(r) > 160 else ''}")
    return "Done. " + "; ".join(parts) + "." if parts else "Done."


def render_followup(rng: random.Random) -> str:
    return rng.choice(["Great, thanks!", "Perfect, that's what I needed.", "Thanks, that helps.", "Awesome, thank you."])
