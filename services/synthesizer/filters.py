"""Quality filters for synthesized dialogues, each with its own rejection counter.

- ``invalid_call``: every assistant call must survive the wire format (render → strict parse gives
  the same call) and validate against its tool's JSON Schema.
- ``broken_turn``: no empty assistant turn, no garbled text (control / replacement characters, what
  a broken model emits), the dialogue ends with an assistant turn (the engine also rejects turns
  the model never produced in a parseable form).
- ``duplicate``: near-identical user queries — the first user message normalised (lowercase,
  punctuation and extra spaces removed) must differ from every kept one, and, when
  ``jaccard`` > 0, its token set must have Jaccard similarity below ``jaccard`` with every kept
  query (an inverted index keeps this cheap).
"""

from __future__ import annotations

import re
from collections import defaultdict

from looptool.shared.records import Dialog
from looptool.shared.schema import ToolSchemaError, validate_call
from looptool.shared.toolcall_format import parse_tool_calls, render_tool_calls

FILTERS = ("invalid_call", "broken_turn", "duplicate")


def check_calls(dialog: Dialog) -> str:
    """'' when every call is well-formed and schema-valid, else the first problem."""
    tools = {t.name: t for t in dialog.tools}
    for i, m in enumerate(dialog.messages):
        if m.role != "assistant" or not m.tool_calls:
            continue
        parsed = parse_tool_calls(render_tool_calls(m.tool_calls))
        if parsed.error is not None or [c.key() for c in parsed.calls] != [c.key() for c in m.tool_calls]:
            return f"message {i}: calls do not round-trip through the <tool_call> format ({parsed.error})"
        for c in m.tool_calls:
            try:
                issues = validate_call(c, tools)
            except ToolSchemaError as exc:
                return f"message {i}: {exc}"
            if issues:
                return f"message {i}: call {c.name}: {issues[0]}"
    return ""


_GARBLED = re.compile(r"[\ufffd\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def check_turns(dialog: Dialog) -> str:
    if not dialog.messages or dialog.messages[-1].role != "assistant":
        return "the dialogue does not end with an assistant turn"
    for i, m in enumerate(dialog.messages):
        if m.role == "assistant" and not m.tool_calls and not m.content.strip():
            return f"message {i}: empty assistant turn"
        if m.role in ("assistant", "user") and _GARBLED.search(m.content):
            return f"message {i}: garbled text (control or replacement characters)"
    if not any(m.role == "user" for m in dialog.messages):
        return "no user turn"
    return ""


_PUNCT = re.compile(r"[^\w\s]", re.U)


def normalise(text: str) -> str:
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def first_query(dialog: Dialog) -> str:
    return next((m.content for m in dialog.messages if m.role == "user"), "")


class Deduper:
    def __init__(self, jaccard: float = 0.9):
        self.jaccard = jaccard
        self.exact: set[str] = set()
        self.sets: list[frozenset[str]] = []
        self.index: dict[str, list[int]] = defaultdict(list)

    def seen(self, text: str) -> bool:
        norm = normalise(text)
        if norm in self.exact:
            return True
        if self.jaccard <= 0:
            return False
        toks = frozenset(norm.split())
        if not toks:
            return False
        overlap: dict[int, int] = defaultdict(int)
        for t in toks:
            for j in self.index.get(t, ()):
                overlap[j] += 1
        for j, inter in overlap.items():
            union = len(toks) + len(self.sets[j]) - inter
            if union and inter / union >= self.jaccard:
                return True
        return False

    def add(self, text: str) -> None:
        norm = normalise(text)
        self.exact.add(norm)
        if self.jaccard > 0:
            toks = frozenset(norm.split())
            j = len(self.sets)
            self.sets.append(toks)
            for t in toks:
                self.index[t].append(j)
