"""EDDE drafts: what a generator proposes, the schema-driven (programmatic) generator, and the
checks every draft passes before it becomes a sample.

Rejection reasons (``REJECT_REASONS``):

``parse``        the generator's output is not the strict JSON asked for (llm);
``structure``    a call structure the options do not allow (default: different functions / call count /
                 argument names than the seed's correct calls; see ``structure.check_structure``);
``schema``       a reference call does not validate against its tool's JSON Schema;
``unchanged``    every argument value is the seed's own (nothing was varied);
``ungrounded``   an argument value is not stated in the user request (the label would be a guess);
``generation_error`` / ``unknown_tool`` / ``no_variation``  the generator could not draft one.

Every draft's randomness comes from ``sha256(seed, seed sample id, slot, attempt, generator)``
(:func:`derived_rng`), so drafts do not depend on the order they are made in.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, Protocol

from looptool.shared.logs import get_logger
from looptool.shared.records import Tool, ToolCall, canonical_json
from looptool.shared.scenarios.grounding import ungrounded_values
from looptool.shared.scenarios.render import render_request
from looptool.shared.scenarios.vocab import STYLES
from looptool.shared.schema import ToolSchemaError, validate_call

from .seeds import Seed, calls_key, has_values
from .structure import StructureOptions, check_structure, vary_structure

log = get_logger("looptool.expander")

REJECT_REASONS = (
    "parse",
    "structure",
    "schema",
    "unchanged",
    "ungrounded",
    "generation_error",
    "unknown_tool",
    "no_variation",
)


def derived_seed(*parts: Any) -> int:
    """A 63-bit integer from the canonical JSON of ``parts`` (stable across processes)."""
    digest = hashlib.sha256(canonical_json([str(p) for p in parts]).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def derived_rng(*parts: Any) -> random.Random:
    return random.Random(derived_seed(*parts))


@dataclass
class Draft:
    """A generator's proposal: a new user request and its reference calls (or an error code)."""

    user: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    style: str = ""
    structure: str = ""  # what changed in the call structure (structure.vary_structure's label); "" = kept
    error: str = ""  # a REJECT_REASONS code when the generator produced nothing usable
    detail: str = ""


class DraftGenerator(Protocol):
    """Both EDDE generators: one Draft per (slot, attempt) task, deterministic given ``base_seed``.

    ``drafts_many`` drafts for several seeds at once (the llm generator sends them to the model as
    one batch); ``drafts_for_all`` falls back to ``drafts`` per seed for generators without it."""

    name: str

    def drafts(self, seed: Seed, tasks: list[tuple[int, int]], base_seed: int) -> list[Draft]: ...


def drafts_for_all(gen: DraftGenerator, work: list[tuple[Seed, list[tuple[int, int]]]], base_seed: int) -> list[list[Draft]]:
    many = getattr(gen, "drafts_many", None)
    if many is not None:
        return many(work, base_seed)
    return [gen.drafts(seed, tasks, base_seed) for seed, tasks in work]



class ProgrammaticGenerator:
    """Schema-driven variation through ``looptool.shared.scenarios``: ``vary_call`` gives new values
    for the same call structure (and, when ``structure`` allows, sibling swaps and count/order
    changes: ``structure.vary_structure``), ``render_request`` a new user request in a random style
    that states every value verbatim. CPU-only, no model."""

    name = "programmatic"

    def __init__(self, variation_tries: int = 4, structure: StructureOptions | None = None):
        self.variation_tries = variation_tries
        self.structure = structure or StructureOptions()
        self.styles = list(STYLES)

    def _vary(self, seed: Seed, by_name: dict[str, Tool], rng: random.Random) -> tuple[list[ToolCall], str] | Draft:
        original = calls_key(seed.correct)
        missing = [c.name for c in seed.correct if c.name not in by_name]
        if missing:
            return Draft(error="unknown_tool", detail=f"{missing[0]} is not among the seed's tools")
        calls: list[ToolCall] = []
        label = ""
        for _ in range(self.variation_tries):
            calls, label = vary_structure(seed, self.structure, rng, self.variation_tries)
            if not has_values(seed.correct) or calls_key(calls) != original:
                return calls, label
        return calls, label  # still unchanged: the check reports it as 'unchanged'

    def drafts(self, seed: Seed, tasks: list[tuple[int, int]], base_seed: int) -> list[Draft]:
        by_name = {t.name: t for t in seed.tools}
        out: list[Draft] = []
        for slot, attempt in tasks:
            rng = derived_rng(base_seed, seed.id, slot, attempt, self.name)
            try:
                varied = self._vary(seed, by_name, rng)
                if isinstance(varied, Draft):
                    out.append(varied)
                    continue
                calls, label = varied
                style = rng.choice(self.styles)
                user = render_request(calls, seed.tools, rng, style)
                out.append(Draft(user=user, calls=calls, style=str(style), structure=label))
            except Exception as exc:  # a scenario bug must not kill the stage; it is counted
                log.warning("programmatic draft failed", extra={"seed": seed.id, "error": repr(exc)})
                out.append(Draft(error="generation_error", detail=repr(exc)[:300]))
        return out



def check_draft(seed: Seed, draft: Draft, require_grounded: bool = True,
                structure: StructureOptions | None = None) -> tuple[str, str]:
    """("", "") when the draft is usable, else (reason code, detail). ``structure``: which call
    structures are allowed (default: the seed's own)."""
    if draft.error:
        return draft.error, draft.detail
    if not draft.user.strip():
        return "parse", "empty user request"
    why = check_structure(seed, draft.calls, structure or StructureOptions())
    if why:
        return "structure", why
    for i, c in enumerate(draft.calls):
        try:
            issues = validate_call(c, seed.tools)
        except ToolSchemaError as exc:
            return "schema", str(exc)
        if issues:
            return "schema", f"call {i} ({c.name}): " + "; ".join(map(str, issues[:3]))
    if has_values(seed.correct) and calls_key(draft.calls) == calls_key(seed.correct):
        return "unchanged", "every argument value is the seed's own"
    if require_grounded:
        missing = ungrounded_values(draft.user, draft.calls, booleans=False)  # "include reviews" grounds true
        if missing:
            return "ungrounded", "not stated in the request: " + ", ".join(m[:60] for m in missing[:3])
    return "", ""
