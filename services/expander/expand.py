"""Error-Driven Data Expansion (EDDE): new training samples from verified failures.

Input: the judge's verdicts (``JudgedSample`` records). A **seed** is a judged error whose correct
side contains a call:

- ``model_wrong``: the label is right → the correct calls are the sample's reference;
- ``label_wrong``: the judge's corrected label is right (``verdict.corrected``, falling back to the
  model's calls when the judge left it empty);
- ``both_acceptable`` is not an error (skipped); ``unclear`` is skipped unless ``includeUnclear``
  (then the unchallenged reference counts as correct).

A seed whose correct calls do not validate against its tools is skipped (``skipped_invalid_label``).
For each seed, ``factor`` new samples keep the failure's *structure* (the same functions, the same
number and order of calls, the same argument names) but change its *context*: new argument values,
a new request phrasing/style, and the seed's tools shuffled among extra distractor tools from the
corpus' toolset. A new sample is single-turn: the seed's system messages and the new user request
(the seed's earlier turns refer to the old values, so they are not carried over). Every draft is
checked before it is kept:

``parse``        the generator's output is not the strict JSON asked for (llm);
``structure``    different functions / call count / argument names than the seed's correct calls;
``schema``       a reference call does not validate against its tool's JSON Schema;
``unchanged``    every argument value is the seed's own (nothing was varied);
``ungrounded``   an argument value is not stated in the user request (the label would be a guess);
``generation_error`` / ``unknown_tool`` / ``no_variation``  the generator could not draft one.

A rejected draft is retried (up to ``maxAttempts`` drafts per requested sample), then counted as
rejected. Accepted drafts are deduplicated against the existing corpus and within the batch, by
normalised user text and by content id. With ``filterMastered`` each new sample is probed greedily
through a ``Generator`` (the inference client) and dropped when the current model already answers it
correctly.

Determinism: every draft's randomness comes from ``sha256(seed, seed sample id, slot, attempt)``,
seeds are processed in dataset order and the dedup state is "corpus + samples written so far", so
the same inputs and seed give byte-identical output. Seeds are processed in groups of
``flushEvery``: each attempt drafts for the whole group at once (one batched model call for the llm
generator, one batched probe for ``filterMastered``). Resume: the output is written with a resumable
writer, one part per group, each preceded by a small stats record
(``<output>/_expander/batch-*.json``: the group's seeds and counts), so a restarted run skips the
groups already done (and any seed whose children exist) and reports the same counts and bytes as
an uninterrupted run.

Counts (``StageResult.counts``): ``seeds``, ``generated`` (drafts produced) = ``invalid`` +
``duplicates`` + ``filtered_mastered`` + ``written``; ``rejected_<reason>`` per reason;
``skipped_<why>`` for judged records that are not seeds.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Protocol

from pydantic import Field

from looptool.shared.compose import label_before_judge
from looptool.shared.generation import GenRequest, GenResult, Generator, SamplingParams
from looptool.shared.logs import get_logger
from looptool.shared.loop.manifest import ExpandSpec
from looptool.shared.metrics import counter
from looptool.shared.records import (
    DatasetRef,
    Decision,
    ErrorInfo,
    JudgedSample,
    Message,
    Progress,
    Sample,
    Stage,
    StageResult,
    Tool,
    ToolCall,
    canonical_json,
)
from looptool.shared.schema import ToolSchemaError, check_tool, validate_call
from looptool.shared.storage import dataset_exists, open_dataset, split_uri, writer_for_uri
from looptool.shared.storage.base import NotFound
from looptool.shared.toolcall_format import strip_reasoning

log = get_logger("looptool.expander")

STAGE = Stage.EXPAND.value
SOURCE = "edde"
STATS_DIR = "_expander"

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

SEEDS = counter("expander", "seeds", "judged errors used as expansion seeds")
GENERATED = counter("expander", "generated", "drafts produced by the generator", ["generator"])
REJECTED = counter("expander", "rejected", "drafts rejected, by reason", ["reason"])
WRITTEN = counter("expander", "written", "new samples written")


class ExpandConfig(ExpandSpec):
    """``ExpandRequest.config_json``: the manifest's ``spec.expand`` plus service knobs.

    ``factor`` and ``seed`` in the request message are authoritative; the copies that arrive here
    with the manifest's ExpandSpec are ignored.
    """

    includeUnclear: bool = Field(False, description="treat 'unclear' verdicts as seeds (the reference as correct)")
    maxDistractors: int = Field(2, ge=0, description="extra distractor tools added per new sample (0..N)")
    maxAttempts: int = Field(3, ge=1, description="drafts tried per requested sample before it counts as rejected")
    requireGrounded: bool = Field(True, description="every argument value must be stated in the new user request")
    temperature: float = Field(0.8, ge=0, description="llm generator sampling temperature")
    maxTokens: int = Field(512, ge=16, description="llm generator completion budget")
    probeMaxTokens: int = Field(256, ge=8, description="filterMastered: greedy probe completion budget")
    flushEvery: int = Field(16, ge=1, description="seeds per durable part (resume granularity)")
    inferenceAddress: str = Field("", description="inference server host:port (default: services.inference)")
    generatorModel: str = Field("", description="llm generator: model URI on the inference server (default: its model)")
    probeModel: str = Field("", description="filterMastered: the current checkpoint's URI (default: the server's model)")


# ----------------------------------------------------------------------------- seeds


@dataclass
class Seed:
    """One judged error to expand."""

    id: str
    decision: Decision
    sample: Sample
    correct: list[ToolCall]
    wrong: list[ToolCall]
    wrong_text: str
    reason: str

    @property
    def tools(self) -> list[Tool]:
        return self.sample.tools


def seed_from_judged(j: JudgedSample, include_unclear: bool = False) -> tuple[Seed | None, str]:
    """(seed, "") or (None, why it is not a seed)."""
    sample, v = j.probe.sample, j.verdict
    sid = sample.id or v.sample_id or sample.content_id()
    if v.decision == Decision.MODEL_WRONG:
        correct, wrong = sample.reference, j.probe.predicted_calls
        wrong_text = j.probe.prediction
    elif v.decision == Decision.LABEL_WRONG:
        correct = v.corrected or j.probe.predicted_calls
        before = label_before_judge(sample)  # the judge may already have relabelled the sample
        if before is None:
            before = [] if _calls_key(sample.reference) == _calls_key(correct) else sample.reference
        wrong, wrong_text = before, ""
    elif v.decision == Decision.UNCLEAR:
        if not include_unclear:
            return None, "unclear"
        correct, wrong, wrong_text = sample.reference, j.probe.predicted_calls, j.probe.prediction
    else:
        return None, "not_error"
    if not correct:
        return None, "no_call"
    correct = [ToolCall(name=c.name, arguments=c.arguments) for c in correct]
    try:
        if any(validate_call(c, sample.tools) for c in correct):
            return None, "invalid_label"  # the "correct" side does not validate: nothing safe to vary
    except ToolSchemaError:
        return None, "invalid_tool"
    return Seed(sid, v.decision, sample, correct, list(wrong), wrong_text, v.reason), ""


# ----------------------------------------------------------------------------- helpers


def derived_seed(*parts: Any) -> int:
    """A 63-bit integer from the canonical JSON of ``parts`` (stable across processes)."""
    digest = hashlib.sha256(canonical_json([str(p) for p in parts]).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def derived_rng(*parts: Any) -> random.Random:
    return random.Random(derived_seed(*parts))


_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalize_text(text: str) -> str:
    """Lower-case, NFKC, punctuation → space, collapsed whitespace (near-duplicate key)."""
    return " ".join(_NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).split())


def user_text_key(sample: Sample) -> str:
    """Dedup key over the sample's user turns; empty when it has none."""
    text = " | ".join(normalize_text(m.content) for m in sample.context if m.role == "user")
    return hashlib.sha256(text.encode()).hexdigest()[:24] if text.strip(" |") else ""


def call_shape(calls: list[ToolCall]) -> list[tuple[str, tuple[str, ...]]]:
    """The structure EDDE keeps: function names and argument names, in call order."""
    return [(c.name, tuple(sorted(c.arguments))) for c in calls]


def _calls_key(calls: list[ToolCall]) -> list[str]:
    return sorted(c.name + canonical_json(c.arguments) for c in calls)


def _has_values(calls: list[ToolCall]) -> bool:
    return any(c.arguments for c in calls)


def _strip_bools(value: Any) -> Any:
    """Booleans and nulls need no verbatim mention ("include reviews" grounds ``true``)."""
    if isinstance(value, dict):
        return {k: _strip_bools(v) for k, v in value.items() if not isinstance(v, bool) and v is not None}
    if isinstance(value, list):
        return [_strip_bools(v) for v in value if not isinstance(v, bool) and v is not None]
    return value


def ungrounded_values(calls: list[ToolCall], user_text: str) -> list[str]:
    """Argument values (strings, numbers; not booleans) the request does not state verbatim
    (case-insensitive), via ``scenarios.ungrounded_values``."""
    from looptool.shared.scenarios import ungrounded_values as _ungrounded

    stripped = [ToolCall(name=c.name, arguments=_strip_bools(c.arguments)) for c in calls]
    return _ungrounded(user_text, stripped)


# ----------------------------------------------------------------------------- generators


@dataclass
class Draft:
    """A generator's proposal: a new user request and its reference calls (or an error code)."""

    user: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    style: str = ""
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
    for the same call structure, ``render_request`` a new user request in a random style that states
    every value verbatim. CPU-only, no model."""

    name = "programmatic"

    def __init__(self, variation_tries: int = 4):
        from looptool.shared import scenarios  # written by the synthesis engineer

        self.scenarios = scenarios
        self.variation_tries = variation_tries
        self.styles = list(getattr(scenarios, "STYLES", None) or ["plain"])

    def _vary(self, seed: Seed, by_name: dict[str, Tool], rng: random.Random) -> list[ToolCall] | Draft:
        original = _calls_key(seed.correct)
        calls: list[ToolCall] = []
        for _ in range(self.variation_tries):
            calls = []
            for c in seed.correct:
                tool = by_name.get(c.name)
                if tool is None:
                    return Draft(error="unknown_tool", detail=f"{c.name} is not among the seed's tools")
                calls.append(self.scenarios.vary_call(c, tool, rng))
            if not _has_values(seed.correct) or _calls_key(calls) != original:
                return calls
        return calls  # still unchanged: the check reports it as 'unchanged'

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
                style = rng.choice(self.styles)
                user = self.scenarios.render_request(varied, seed.tools, rng, style)
                out.append(Draft(user=user, calls=varied, style=str(style)))
            except Exception as exc:  # a scenario bug must not kill the stage; it is counted
                log.warning("programmatic draft failed", extra={"seed": seed.id, "error": repr(exc)})
                out.append(Draft(error="generation_error", detail=repr(exc)[:300]))
        return out


#: Scenario variations handed to the llm generator (one per draft, chosen by the draft's rng).
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


def llm_prompt(seed: Seed, variation: str) -> str:
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
        f"## Why it is wrong\n{seed.reason.strip() or '(no analysis given)'}\n\n"
        f"## Scenario variation\n{variation}\n\n"
        "## Rules\n"
        f"- Call exactly the same function{'s' if n > 1 else ''} as the correct answer ({n} call{'s' if n > 1 else ''}, "
        "same order), with exactly the same argument names; only the values change.\n"
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

    def __init__(self, generator: Generator, temperature: float = 0.8, max_tokens: int = 512):
        self.generator, self.temperature, self.max_tokens = generator, temperature, max_tokens

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
                        messages=[Message(role="system", content=LLM_SYSTEM), Message(role="user", content=llm_prompt(seed, variation))],
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


# ----------------------------------------------------------------------------- checks


def check_draft(seed: Seed, draft: Draft, require_grounded: bool = True) -> tuple[str, str]:
    """("", "") when the draft is usable, else (reason code, detail)."""
    if draft.error:
        return draft.error, draft.detail
    if not draft.user.strip():
        return "parse", "empty user request"
    if call_shape(draft.calls) != call_shape(seed.correct):
        return "structure", f"expected {call_shape(seed.correct)}, got {call_shape(draft.calls)}"
    for i, c in enumerate(draft.calls):
        try:
            issues = validate_call(c, seed.tools)
        except ToolSchemaError as exc:
            return "schema", str(exc)
        if issues:
            return "schema", f"call {i} ({c.name}): " + "; ".join(map(str, issues[:3]))
    if _has_values(seed.correct) and _calls_key(draft.calls) == _calls_key(seed.correct):
        return "unchanged", "every argument value is the seed's own"
    if require_grounded:
        missing = ungrounded_values(draft.calls, draft.user)
        if missing:
            return "ungrounded", "not stated in the request: " + ", ".join(m[:60] for m in missing[:3])
    return "", ""


def is_correct_answer(text: str, sample: Sample) -> bool:
    """Default mastery rule for ``filterMastered``: the reward says the greedy answer is correct
    (``looptool.shared.reward.score_sample``, the same rule the trainer and the probe use)."""
    from looptool.shared.reward import score_sample

    return score_sample(text, sample).correct


# ----------------------------------------------------------------------------- the stage


def _tool_pool(samples: Iterable[Sample], seen: dict[str, Tool]) -> None:
    for s in samples:
        for t in s.tools:
            if t.name not in seen:
                seen[t.name] = t


def _usable(tool: Tool) -> bool:
    try:
        check_tool(tool)
        return True
    except ToolSchemaError:
        return False


@dataclass
class _State:
    counts: dict[str, int]
    texts: set[str]
    ids: set[str]


def _new_counts() -> dict[str, int]:
    base = ["seeds", "generated", "invalid", "duplicates", "filtered_mastered", "written", "probe_errors"]
    return {k: 0 for k in base} | {f"rejected_{r}": 0 for r in REJECT_REASONS}


def _merge(into: dict[str, int], other: dict[str, int]) -> None:
    for k, v in other.items():
        into[k] = into.get(k, 0) + int(v)


class Expander:
    """EDDE over one verdicts dataset. Use ``events()`` (progress/errors/result, for the servicer) or
    ``run()`` (just the StageResult)."""

    def __init__(
        self,
        config: ExpandConfig | None = None,
        generator: DraftGenerator | None = None,
        prober: Generator | None = None,
        s3: Any = None,
        is_correct: Callable[[str, Sample], bool] = is_correct_answer,
    ):
        self.config = config or ExpandConfig()
        if generator is None:
            if self.config.generator == "llm":
                raise ValueError("generator 'llm' needs a Generator: pass LLMGenerator(inference_client)")
            generator = ProgrammaticGenerator()
        self.generator = generator
        if self.config.filterMastered and prober is None:
            raise ValueError("filterMastered needs a prober (a Generator, e.g. the inference client)")
        self.prober, self.s3, self.is_correct = prober, s3, is_correct

    # -- building samples

    def _tools_for(self, seed: Seed, pool: list[Tool], rng: random.Random) -> list[Tool]:
        own = {t.name for t in seed.tools}
        candidates = [t for t in pool if t.name not in own]
        k = rng.randint(0, min(self.config.maxDistractors, len(candidates))) if candidates else 0
        tools = list(seed.tools) + rng.sample(candidates, k)
        rng.shuffle(tools)
        return tools

    def _build(self, seed: Seed, draft: Draft, tools: list[Tool], round: int) -> Sample:
        context = [m for m in seed.sample.context if m.role == "system"]
        context.append(Message(role="user", content=draft.user))
        meta = {k: seed.sample.meta[k] for k in ("date",) if k in seed.sample.meta}
        meta.update(
            {
                "edde_seed": seed.id,
                "edde_decision": seed.decision.value,
                "edde_generator": self.generator.name,
                "edde_style": draft.style[:200],
            }
        )
        s = Sample(
            context=context,
            tools=tools,
            reference=[ToolCall(name=c.name, arguments=c.arguments) for c in draft.calls],
            meta=meta,
            source=SOURCE,
        )
        s.add_lineage(round, STAGE, "expanded", reason=f"from {seed.id}: {seed.decision.value}", parent_id=seed.id)
        return s.with_id()

    def expand_seed(
        self, seed: Seed, factor: int, base_seed: int, round: int, pool: list[Tool], state: _State
    ) -> tuple[list[Sample], dict[str, int], list[str]]:
        """Up to ``factor`` new samples for one seed (``expand_group`` of one)."""
        return self.expand_group([seed], factor, base_seed, round, pool, state)[0]

    def expand_group(
        self, seeds: list[Seed], factor: int, base_seed: int, round: int, pool: list[Tool], state: _State
    ) -> list[tuple[list[Sample], dict[str, int], list[str]]]:
        """Up to ``factor`` new samples per seed, drafted as one batch per attempt; updates the dedup
        state. Per seed: its samples, its counts and the rejection details of slots left empty.

        Drafts are checked in seed order, then slot order, attempt by attempt, so the result depends
        only on the group (groups are the resume unit: ``flushEvery`` seeds)."""
        counts = [_new_counts() | {"seeds": 1} for _ in seeds]
        accepted: list[list[tuple[int, Sample]]] = [[] for _ in seeds]
        pending = [list(range(factor)) for _ in seeds]
        last_reject: list[dict[int, str]] = [{} for _ in seeds]
        for attempt in range(self.config.maxAttempts):
            work = [(i, [(slot, attempt) for slot in pending[i]]) for i in range(len(seeds)) if pending[i]]
            if not work:
                break
            drafted = drafts_for_all(self.generator, [(seeds[i], tasks) for i, tasks in work], base_seed)
            for (i, tasks), drafts in zip(work, drafted):
                seed, c, retry = seeds[i], counts[i], []
                for (slot, _a), draft in zip(tasks, drafts):
                    c["generated"] += 1
                    reason, detail = check_draft(seed, draft, self.config.requireGrounded)
                    if reason:
                        c["invalid"] += 1
                        c[f"rejected_{reason}"] = c.get(f"rejected_{reason}", 0) + 1
                        last_reject[i][slot] = f"{reason}: {detail}"
                        retry.append(slot)
                        continue
                    rng = derived_rng(base_seed, seed.id, slot, _a, "tools")
                    sample = self._build(seed, draft, self._tools_for(seed, pool, rng), round)
                    text_key = user_text_key(sample)
                    if sample.id in state.ids or (text_key and text_key in state.texts):
                        c["duplicates"] += 1
                        last_reject[i][slot] = "duplicate"
                        retry.append(slot)
                        continue
                    state.ids.add(sample.id)
                    if text_key:
                        state.texts.add(text_key)
                    accepted[i].append((slot, sample))
                pending[i] = retry
        per_seed = [[smp for _, smp in sorted(acc, key=lambda x: x[0])] for acc in accepted]
        if self.config.filterMastered:
            per_seed = self._filter_mastered(per_seed, counts, state)
        out = []
        for i, samples in enumerate(per_seed):
            counts[i]["written"] = len(samples)
            out.append((samples, counts[i], [last_reject[i][s] for s in pending[i] if s in last_reject[i]]))
        return out

    def _filter_mastered(
        self, per_seed: list[list[Sample]], counts: list[dict[str, int]], state: _State
    ) -> list[list[Sample]]:
        """Probe every new sample greedily (one batch); drop those the current model answers right."""
        assert self.prober is not None
        flat = [(i, smp) for i, samples in enumerate(per_seed) for smp in samples]
        if not flat:
            return per_seed
        reqs = [
            GenRequest(
                messages=smp.context,
                tools=smp.tools,
                params=SamplingParams(temperature=0.0, max_tokens=self.config.probeMaxTokens),
                request_id=f"edde-probe-{smp.id}",
            )
            for _, smp in flat
        ]
        try:
            results = self.prober.generate(reqs)
        except Exception as exc:  # noqa: BLE001 - cannot tell: keep them, count it
            log.warning("mastery probe failed; keeping the samples", extra={"error": repr(exc)})
            results = []
        kept: list[list[Sample]] = [[] for _ in per_seed]
        for k, (i, smp) in enumerate(flat):
            res = results[k] if k < len(results) else None
            if res is None or res.error or not res.completions:
                counts[i]["probe_errors"] += 1
                kept[i].append(smp)
            elif self.is_correct(res.completions[0].text, smp):
                counts[i]["filtered_mastered"] += 1
                # forget its dedup keys: the state stays "corpus + samples written" (resume-exact)
                state.ids.discard(smp.id)
                key = user_text_key(smp)
                if key:
                    state.texts.discard(key)
            else:
                kept[i].append(smp)
        return kept

    # -- the whole stage

    def events(
        self,
        verdicts: DatasetRef | str,
        out_uri: str,
        factor: int = 4,
        seed: int = 0,
        round: int = 0,
        corpus: DatasetRef | str | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Iterator[Progress | ErrorInfo | StageResult]:
        if factor < 0:
            raise ValueError("factor must be >= 0")
        store, prefix = split_uri(out_uri, self.s3)
        if dataset_exists(store, prefix):  # idempotent: a finished expansion is reused as is
            ds = open_dataset(out_uri, self.s3)
            counts = {k: int(v) for k, v in (ds.manifest.get("meta") or {}).get("counts", {}).items()}
            yield StageResult(outputs=[ds.ref], counts=counts or {"written": len(ds)})
            return

        skipped: dict[str, int] = {}
        seeds: list[Seed] = []
        seen_ids: set[str] = set()
        judged_samples: list[Sample] = []
        for j in open_dataset(verdicts, self.s3).iter(JudgedSample):
            judged_samples.append(j.probe.sample)
            s, why = seed_from_judged(j, self.config.includeUnclear)
            if s is None:
                skipped[f"skipped_{why}"] = skipped.get(f"skipped_{why}", 0) + 1
            elif s.id in seen_ids:
                skipped["skipped_repeated"] = skipped.get("skipped_repeated", 0) + 1
            else:
                seen_ids.add(s.id)
                seeds.append(s)

        # dedup state and tool pool: corpus + the judged samples themselves
        state = _State(counts=_new_counts(), texts=set(), ids=set())
        pool_by_name: dict[str, Tool] = {}

        def _register(samples: Iterable[Sample]) -> Iterator[Sample]:
            for s in samples:
                state.ids.add(s.id or s.content_id())
                state.ids.add(s.content_id())
                key = user_text_key(s)
                if key:
                    state.texts.add(key)
                yield s

        if corpus is not None and (corpus.uri if isinstance(corpus, DatasetRef) else corpus):
            _tool_pool(_register(open_dataset(corpus, self.s3).iter(Sample)), pool_by_name)
        _tool_pool(_register(judged_samples), pool_by_name)
        pool = [pool_by_name[n] for n in sorted(pool_by_name) if _usable(pool_by_name[n])]

        cfg_meta = self.config.model_dump(mode="json", exclude={"inferenceAddress"})
        writer = writer_for_uri(
            out_uri,
            self.s3,
            kind="samples",
            part_size=1 << 30,  # flushed by hand, one part per group of seeds
            resume=True,
            meta={"stage": STAGE, "round": round, "factor": factor, "seed": seed, "config": cfg_meta},
        )
        # Resume. Groups of ``flushEvery`` seeds are the unit of work: for each, a stats record naming
        # its seeds and counts is written *before* its part is flushed, with the part count the
        # writer must reach. A record whose part did not survive is ignored (the group is redone and
        # the record overwritten); records are read in order and the first invalid one ends the scan.
        done: set[str] = set()
        stats_prefix = f"{writer.prefix}/{STATS_DIR}/"
        batch_index = 0
        for key in sorted(store.list(stats_prefix)):
            try:
                rec = json.loads(store.get_bytes(key))
            except (NotFound, ValueError):
                break
            if int(rec.get("batch", -1)) != batch_index or int(rec.get("parts", 1 << 30)) > len(writer.parts):
                break
            done.update(rec["seeds"])
            _merge(state.counts, rec["counts"])
            batch_index += 1
        for rec in writer.existing_records():
            child = Sample.model_validate(rec)
            done.add(child.meta.get("edde_seed", ""))  # children exist: that seed is done in any case
            list(_register([child]))
        if done:
            log.info("resuming expansion", extra={"uri": out_uri, "seeds_done": len(done & seen_ids), "children": len(writer.parts)})

        total = len(seeds)
        todo = [sd for sd in seeds if sd.id not in done]
        finished = total - len(todo)
        yield Progress(stage=STAGE, done=finished, total=total, message=f"{total} seeds, {len(pool)} tools in the pool")
        group_size = self.config.flushEvery
        for g in range(0, len(todo), group_size):
            if should_stop():
                return  # finished groups are durable; a new call resumes after them
            group = todo[g : g + group_size]
            results = self.expand_group(group, factor, seed, round, pool, state)
            group_counts = _new_counts()
            n_children = 0
            for (children, c, _rejects) in results:
                writer.write_many(children)
                _merge(group_counts, c)
                n_children += len(children)
                self._observe(c)
            body = {
                "batch": batch_index,
                "parts": len(writer.parts) + (1 if n_children else 0),
                "seeds": [sd.id for sd in group],
                "counts": group_counts,
            }
            store.put_bytes(f"{stats_prefix}batch-{batch_index:06d}.json", json.dumps(body).encode())
            writer.flush()
            _merge(state.counts, group_counts)
            batch_index += 1
            for sd, (children, c, rejects) in zip(group, results):
                finished += 1
                if factor and not children and rejects:
                    yield ErrorInfo(
                        code="EXPANSION_EMPTY",
                        message=f"no sample kept after {self.config.maxAttempts} attempts per slot; last: {rejects[-1][:300]}",
                        item_id=sd.id,
                    )
                yield Progress(
                    stage=STAGE,
                    done=finished,
                    total=total,
                    message=f"{sd.id}: {len(children)} new",
                    metrics={"written": float(state.counts["written"])},
                )
        counts = dict(state.counts)
        _merge(counts, skipped)
        counts["seeds"] = total
        counts["written"] = writer.records_flushed
        writer.meta["counts"] = counts
        ref = writer.commit()
        store.delete_prefix(stats_prefix)
        g_ = counts["generated"]
        metrics = {"acceptance_rate": counts["written"] / g_ if g_ else 0.0, "per_seed": counts["written"] / total if total else 0.0}
        yield StageResult(outputs=[ref], counts=counts, metrics=metrics)

    def _observe(self, c: dict[str, int]) -> None:
        SEEDS.inc(c["seeds"])
        GENERATED.labels(self.generator.name).inc(c["generated"])
        WRITTEN.inc(c["written"])
        for r in REJECT_REASONS:
            if c.get(f"rejected_{r}"):
                REJECTED.labels(r).inc(c[f"rejected_{r}"])
        for k in ("duplicates", "filtered_mastered"):
            if c[k]:
                REJECTED.labels("duplicate" if k == "duplicates" else "mastered").inc(c[k])

    def run(self, *args: Any, **kw: Any) -> StageResult:
        result = None
        for ev in self.events(*args, **kw):
            if isinstance(ev, StageResult):
                result = ev
        if result is None:
            raise RuntimeError("expansion stopped before it finished")
        return result


def expand(
    verdicts: DatasetRef | str,
    out_uri: str,
    factor: int = 4,
    seed: int = 0,
    round: int = 0,
    corpus: DatasetRef | str | None = None,
    config: ExpandConfig | None = None,
    generator: Generator | None = None,
    prober: Generator | None = None,
    s3: Any = None,
) -> StageResult:
    """One-call EDDE. ``generator`` (a model Generator) is needed for ``config.generator == 'llm'``,
    ``prober`` for ``config.filterMastered`` (the same inference client usually serves both)."""
    config = config or ExpandConfig()
    drafter: DraftGenerator | None = None
    if config.generator == "llm":
        if generator is None:
            raise ValueError("generator 'llm' needs a Generator (e.g. the inference client)")
        drafter = LLMGenerator(generator, config.temperature, config.maxTokens)
    return Expander(config, drafter, prober, s3).run(verdicts, out_uri, factor, seed, round, corpus)
