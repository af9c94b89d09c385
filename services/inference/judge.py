"""Judgement-Guided Label Verification (JGLV): for every probe result whose greedy answer was wrong,
decide whether the *label* or the *model* is wrong.

Decisions: ``label_wrong`` (the prediction is right, the label is wrong → the label is replaced by
the prediction's calls), ``model_wrong`` (keep the label), ``both_acceptable``, ``unclear``.

Two judges behind one small interface (``Judge.judge(list[ProbeResult]) -> list[Verdict]``):

- ``LLMJudge``: a judge model (any ``Generator``) reads the context, the tools, the reference label
  and the prediction, and answers strict JSON ``{"decision": ..., "reason": ...}``. The verdict
  parser (``parse_verdict``) is strict and total. A malformed answer is retried up to twice with a
  different seed (temperature > 0), then counted as ``unclear``. Self-consistency: ``votes`` > 1
  samples that many judgements at temperature > 0 and takes the majority (a tie is ``unclear``).
  With one vote the judge decodes greedily, as in the paper.
- ``GroundingJudge``: a rule-based *heuristic* verifier for CPU demos without a judge LLM. A call
  is *grounded* when it validates against its tool's schema and every argument value is supported by
  the conversation (see ``value_supported``). It cannot tell which of two grounded calls the user
  wanted, and it misses values that are paraphrased (dates written differently, numbers in words).

A ``label_wrong`` verdict is accepted only when the prediction parses and every call validates
against the tool schemas (``shared.schema.validate_call``); otherwise it becomes ``unclear``.

**Sampled candidates** (``JudgeSpec.candidates`` = k > 0, ``CandidateSampler``): when the greedy
answer cannot settle a result (verdict ``unclear``: both look wrong, or the prediction would be the
fix but does not parse or validate), the probed model is asked for k more answers (temperature
``candidateTemperature``, seeded per sample and round) and each distinct one is judged against the
label like the greedy answer was. The first that the judge accepts as the fix (``label_wrong``)
becomes the verdict (its reason names the candidate); otherwise the ``unclear`` verdict stands.
A small model is often right on some samples but not greedily; this lets JGLV use those answers.

``run_judge`` writes one ``JudgedSample`` per failed probe result (kind ``verdicts``), resumable like
the probe. For ``label_wrong`` the written sample already carries the corrected label
(``probe.sample.reference`` = ``verdict.corrected``; the old label is kept in
``sample.meta["label_before_judge"]``) and a lineage event (stage ``judge``, action ``relabelled``).
``unclear`` verdicts get a lineage event with action ``dropped`` or ``kept`` per
``JudgeSpec.unclearPolicy`` (the composer applies the policy).
"""

from __future__ import annotations

import json
import math
import re
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Protocol

from looptool.shared import metrics
from looptool.shared.errors import InputError
from looptool.shared.generation import GenRequest, Generator, SamplingParams
from looptool.shared.loop.manifest import JudgeSpec
from looptool.shared.records import (
    DatasetRef,
    Decision,
    ErrorInfo,
    JudgedSample,
    Message,
    ProbeOutcome,
    ProbeResult,
    Progress,
    Sample,
    StageResult,
    Tool,
    ToolCall,
    Verdict,
    canonical_json,
)
from looptool.shared.schema import ToolSchemaError, normalize_schema, validate_call
from looptool.shared.storage import dataset_exists, open_dataset, split_uri, writer_for_uri
from looptool.shared.toolcall_format import parse_tool_calls, render_tool_calls, strip_reasoning

from .backends.base import Aborted, CancelToken, raise_if_aborted

KIND = "verdicts"
JUDGE_ERROR = "judge_error"  # reason prefix of verdicts whose judge model produced nothing usable
CANDIDATE_REASON = "sampled candidate"  # reason prefix of verdicts settled by a sampled candidate
_VERDICTS = metrics.counter("inference", "judge_verdicts", "Judge verdicts by decision", ["decision"])

EventValue = Progress | ErrorInfo | StageResult


class Judge(Protocol):
    name: str

    def judge(self, results: list[ProbeResult]) -> list[Verdict]:
        """One verdict per result, in order. Never raises for a per-item problem."""
        ...


# ---------------------------------------------------------------------------------------------
# Verdict parsing


_DECISIONS = {d.value: d for d in Decision}
_MAX_SCAN = 20000


@dataclass
class ParsedVerdict:
    decision: Decision | None = None
    reason: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.decision is not None and not self.error


def _norm_decision(value: Any) -> Decision | None:
    if not isinstance(value, str):
        return None
    key = re.sub(r"[\s\-]+", "_", value.strip().lower())
    return _DECISIONS.get(key)


def parse_verdict(text: object) -> ParsedVerdict:
    """Judge output → decision + reason. Strict and total: never raises.

    Accepted: reasoning in ``<think>`` (ignored), prose or code fences around the JSON. Required:
    a JSON object with a string ``decision`` that is one of the four decisions (case, spaces and
    hyphens ignored: ``"Label-Wrong"`` is ``label_wrong``); ``reason``, when present, must be a
    string; other keys are ignored. Several objects with a ``decision`` must agree, else error.
    """
    if not isinstance(text, str):
        return ParsedVerdict(error=f"judge output is {type(text).__name__}, not text")
    try:
        visible, _ = strip_reasoning(text)
        visible = visible[:_MAX_SCAN]
        decoder = json.JSONDecoder()
        found: list[dict[str, Any]] = []
        pos = 0
        attempts = 0
        while attempts < 200:
            i = visible.find("{", pos)
            if i < 0:
                break
            attempts += 1
            try:
                obj, end = decoder.raw_decode(visible, i)
            except (json.JSONDecodeError, RecursionError):
                pos = i + 1
                continue
            if isinstance(obj, dict) and "decision" in obj:
                found.append(obj)
            pos = end
        if not found:
            return ParsedVerdict(error="no JSON object with a 'decision' field")
        decisions = []
        for obj in found:
            d = _norm_decision(obj["decision"])
            if d is None:
                return ParsedVerdict(
                    error=f"decision {str(obj['decision'])[:60]!r} is not one of {sorted(_DECISIONS)}"
                )
            decisions.append(d)
        if len(set(decisions)) > 1:
            return ParsedVerdict(error=f"conflicting decisions {[d.value for d in decisions]}")
        reason = found[0].get("reason", "")
        if reason is None:
            reason = ""
        if not isinstance(reason, str):
            return ParsedVerdict(error=f"'reason' must be a string, got {type(reason).__name__}")
        return ParsedVerdict(decision=decisions[0], reason=reason.strip())
    except Exception as exc:  # totality
        return ParsedVerdict(error=f"unparseable judge output: {exc!r}")


# ---------------------------------------------------------------------------------------------
# Corrected labels


def corrected_calls(prediction: str, tools: list[Tool]) -> tuple[list[ToolCall] | None, str]:
    """The prediction's calls when they parse and validate against the tools; else (None, why)."""
    parsed = parse_tool_calls(prediction)
    if parsed.error is not None:
        return None, f"prediction does not parse: {parsed.error}"
    if not parsed.calls:
        return None, "prediction has no call"
    for call in parsed.calls:
        try:
            issues = validate_call(call, tools)
        except ToolSchemaError as exc:
            return None, str(exc)
        if issues:
            return None, f"prediction call {call.name!r} is invalid: {'; '.join(str(i) for i in issues[:3])}"
    return parsed.calls, ""


def _apply_label_check(result: ProbeResult, verdict: Verdict) -> Verdict:
    if verdict.decision != Decision.LABEL_WRONG:
        return verdict
    calls, why = corrected_calls(result.prediction, result.sample.tools)
    if calls is None:
        verdict.decision = Decision.UNCLEAR
        verdict.reason = f"judged label_wrong, but {why}; kept as unclear. Judge said: {verdict.reason}"
        verdict.corrected = []
    else:
        verdict.corrected = [ToolCall(name=c.name, arguments=c.arguments) for c in calls]
    return verdict


# ---------------------------------------------------------------------------------------------
# LLM judge

JUDGE_INSTRUCTION = (
    "You are a meticulous reviewer of function-calling training data. You receive a conversation, "
    "the tools the assistant may call, the reference label (what the dataset says the assistant should "
    "do next) and a model prediction that differs from the label. Decide which is correct, using only "
    "the conversation and the tool definitions: a correct answer calls the right tools with every "
    "required argument, uses values the user or a tool actually gave (never invented ones), and asks "
    "for missing required information instead of guessing."
)

JUDGE_TASK = (
    "Answer with ONLY one JSON object, no other text:\n"
    '{"decision": "label_wrong" | "model_wrong" | "both_acceptable" | "unclear", "reason": "<one or two sentences>"}\n'
    "- label_wrong: the prediction is correct and the reference label is wrong.\n"
    "- model_wrong: the reference label is correct and the prediction is wrong.\n"
    "- both_acceptable: both are correct answers.\n"
    "- unclear: both are wrong, or you cannot tell."
)


def _render_context(context: list[Message]) -> str:
    lines = []
    for m in context:
        if m.role == "assistant":
            lines.append(f"[assistant]\n{render_tool_calls(m.tool_calls, m.content)}")
        elif m.role == "tool":
            lines.append(f"[tool result{(' ' + m.name) if m.name else ''}]\n{m.content}")
        else:
            lines.append(f"[{m.role}]\n{m.content}")
    return "\n\n".join(lines)


def judge_messages(result: ProbeResult) -> list[Message]:
    s = result.sample
    tools = "\n".join(json.dumps(t.to_openai()["function"], ensure_ascii=False) for t in s.tools) or "(none)"
    label = render_tool_calls(s.reference) if s.reference else f"(no call; answer in text) {s.reference_text}".strip()
    body = (
        f"## Conversation\n{_render_context(s.context)}\n\n"
        f"## Tools\n{tools}\n\n"
        f"## Reference label\n{label}\n\n"
        f"## Model prediction\n{result.prediction.strip() or '(empty)'}\n\n"
        f"## Task\n{JUDGE_TASK}"
    )
    return [Message(role="system", content=JUDGE_INSTRUCTION), Message(role="user", content=body)]


class LLMJudge:
    name = "llm"

    def __init__(
        self,
        gen: Generator,
        votes: int = JudgeSpec.model_fields["votes"].default,
        temperature: float = 0.7,
        max_tokens: int = 256,
        retries: int = 2,
        seed: int = 0,
    ):
        self.gen, self.votes = gen, max(1, votes)
        self.temperature = temperature if temperature > 0 else 0.7
        self.max_tokens, self.retries, self.seed = max_tokens, max(0, retries), seed

    def judge(self, results: list[ProbeResult]) -> list[Verdict]:
        if not results:
            return []
        msgs = [judge_messages(r) for r in results]
        greedy = self.votes == 1
        first = [
            GenRequest(
                m,
                [],
                SamplingParams(
                    temperature=0.0 if greedy else self.temperature,
                    max_tokens=self.max_tokens,
                    n=self.votes,
                    seed=self.seed,
                ),
                request_id=f"judge:{r.sample.id}",
            )
            for m, r in zip(msgs, results)
        ]
        outs = self.gen.generate(first)
        raise_if_aborted(outs)  # the caller went away / deadline: stop, write nothing for this chunk
        # votes[i][v] = (parsed, raw) ; None while pending a retry
        votes: list[list[tuple[ParsedVerdict, str]]] = []
        gen_errors: list[str] = []
        for out in outs:
            vs = []
            texts = [c.text for c in out.completions] if not out.error else []
            gen_errors.append(out.error)
            for v in range(self.votes):
                raw = texts[v] if v < len(texts) else ""
                parsed = parse_verdict(raw) if v < len(texts) else ParsedVerdict(error=f"{JUDGE_ERROR}: {out.error or 'no output'}")
                vs.append((parsed, raw))
            votes.append(vs)
        for attempt in range(1, self.retries + 1):
            todo = [(i, v) for i, vs in enumerate(votes) for v, (p, _) in enumerate(vs) if not p.ok]
            if not todo:
                break
            reqs = [
                GenRequest(
                    msgs[i],
                    [],
                    SamplingParams(
                        temperature=self.temperature,
                        max_tokens=self.max_tokens,
                        n=1,
                        seed=self.seed + 1000 * attempt + v + 1,
                    ),
                    request_id=f"judge-retry{attempt}:{results[i].sample.id}:{v}",
                )
                for i, v in todo
            ]
            retry_outs = self.gen.generate(reqs)
            raise_if_aborted(retry_outs)
            for (i, v), out in zip(todo, retry_outs):
                if out.error or not out.completions:
                    votes[i][v] = (ParsedVerdict(error=f"{JUDGE_ERROR}: {out.error or 'no output'}"), "")
                    gen_errors[i] = gen_errors[i] or out.error
                else:
                    raw = out.completions[0].text
                    votes[i][v] = (parse_verdict(raw), raw)
        return [_apply_label_check(r, self._tally(r, vs)) for r, vs in zip(results, votes)]

    def _tally(self, result: ProbeResult, vs: list[tuple[ParsedVerdict, str]]) -> Verdict:
        raw = json.dumps([x[1][:2000] for x in vs], ensure_ascii=False)
        valid = [p for p, _ in vs if p.ok]
        sid = result.sample.id
        if not valid:
            errs = sorted({p.error for p, _ in vs})
            prefix = JUDGE_ERROR if all(e.startswith(JUDGE_ERROR) for e in errs) else "unparseable"
            return Verdict(
                sample_id=sid,
                decision=Decision.UNCLEAR,
                reason=f"{prefix}: no valid verdict after {1 + self.retries} attempts per vote ({'; '.join(errs)[:300]})",
                votes=0,
                total_votes=self.votes,
                raw=raw,
            )
        tally = Counter(p.decision for p in valid)
        ranked = tally.most_common()
        if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
            return Verdict(
                sample_id=sid,
                decision=Decision.UNCLEAR,
                reason="tie between " + ", ".join(f"{d.value}×{n}" for d, n in ranked),
                votes=ranked[0][1],
                total_votes=self.votes,
                raw=raw,
            )
        winner, n = ranked[0]
        reason = next(p.reason for p in valid if p.decision == winner)
        return Verdict(sample_id=sid, decision=winner, reason=reason, votes=n, total_votes=self.votes, raw=raw)


# ---------------------------------------------------------------------------------------------
# Grounding judge (rule-based heuristic)

_NUM_RE = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")


def normalize_text(text: str) -> str:
    """NFKC, casefold, every non-alphanumeric run → one space (so 'New-York' ~ 'new york')."""
    t = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.sub(r"[\W_]+", " ", t).split())


def numbers_in(text: str) -> list[float]:
    out = []
    for m in _NUM_RE.finditer(text):
        try:
            out.append(float(m.group(0).replace(",", "")))
        except ValueError:
            pass
    return out


@dataclass
class Evidence:
    text: str  # normalised, padded with spaces
    numbers: list[float]

    @classmethod
    def of(cls, sample: Sample) -> "Evidence":
        raw = "\n".join(m.content for m in sample.context if m.role in ("user", "tool"))
        return cls(text=f" {normalize_text(raw)} ", numbers=numbers_in(raw))

    def has_number(self, x: float) -> bool:
        return any(math.isclose(x, n, rel_tol=1e-9, abs_tol=1e-9) for n in self.numbers)

    def has_text(self, s: str) -> bool:
        n = normalize_text(s)
        return not n or f" {n} " in self.text


def _sub_schema(schema: Any, key: str | None, item: bool = False) -> dict[str, Any]:
    if not isinstance(schema, dict):
        return {}
    if item:
        sub = schema.get("items")
    else:
        sub = (schema.get("properties") or {}).get(key) if key is not None else None
    return sub if isinstance(sub, dict) else {}


def value_supported(value: Any, schema: dict[str, Any], ev: Evidence) -> bool:
    """Is a scalar argument value supported by the conversation?

    Booleans and null: always (the model decides them). A value listed in the parameter's ``enum``
    or equal to its ``default``: yes. Numbers: some number in the user/tool messages equals it
    (numerically: ``5 == 5.0``, ``1,000 == 1000``). Strings: the normalised string occurs in the
    normalised user/tool text on word boundaries; a numeric string may also match a number.
    """
    if value is None or isinstance(value, bool):
        return True
    if "enum" in schema and isinstance(schema["enum"], list) and value in schema["enum"]:
        return True
    if "default" in schema and schema["default"] == value and type(schema["default"]) is type(value):
        return True
    if isinstance(value, (int, float)):
        return ev.has_number(float(value)) or ev.has_text(str(value))
    if isinstance(value, str):
        if ev.has_text(value):
            return True
        nums = numbers_in(value)
        return bool(nums) and normalize_text(value) == normalize_text(" ".join(_NUM_RE.findall(value))) and all(
            ev.has_number(n) for n in nums
        )
    return False


def unsupported_values(value: Any, schema: dict[str, Any], ev: Evidence, path: str) -> list[str]:
    if isinstance(value, dict):
        out = []
        for k, v in value.items():
            out += unsupported_values(v, _sub_schema(schema, k), ev, f"{path}.{k}")
        return out
    if isinstance(value, list):
        out = []
        for i, v in enumerate(value):
            out += unsupported_values(v, _sub_schema(schema, None, item=True), ev, f"{path}[{i}]")
        return out
    return [] if value_supported(value, schema, ev) else [f"{path}={json.dumps(value, ensure_ascii=False)[:60]}"]


def call_grounding(call: ToolCall, tools: list[Tool], ev: Evidence) -> list[str]:
    """Problems that make ``call`` ungrounded (empty list = grounded)."""
    try:
        issues = validate_call(call, tools)
    except ToolSchemaError as exc:
        return [f"{call.name}: tool schema invalid ({exc.problem})"]
    if issues:
        return [f"{call.name}: {i}" for i in issues[:3]]
    tool = next(t for t in tools if t.name == call.name)
    schema = normalize_schema(tool.parameters) if isinstance(tool.parameters, dict) else {}
    bad = unsupported_values(call.arguments, schema, ev, call.name)
    return [f"{b} not found in the conversation" for b in bad]


def calls_grounding(calls: list[ToolCall] | None, tools: list[Tool], ev: Evidence, parse_error: str = "") -> list[str]:
    if calls is None:
        return [f"unparseable ({parse_error})"]
    if not calls:
        return ["no call"]
    out: list[str] = []
    for c in calls:
        out += call_grounding(c, tools, ev)
    return out


class GroundingJudge:
    """Heuristic verifier (no model): compares which side's calls are grounded in the conversation.

    - prediction grounded, label not → ``label_wrong`` (corrected = the prediction's calls);
    - label grounded, prediction not (or unparseable, or no call) → ``model_wrong``;
    - both grounded → ``both_acceptable``, except when the prediction makes fewer calls than the
      label with a subset of its function names (it missed calls) → ``model_wrong``;
    - neither → ``unclear``.
    A text-only side (no call) counts as not grounded: this heuristic cannot judge free text.
    """

    name = "grounding"

    def judge(self, results: list[ProbeResult]) -> list[Verdict]:
        return [self.judge_one(r) for r in results]

    def judge_one(self, result: ProbeResult) -> Verdict:
        s = result.sample
        ev = Evidence.of(s)
        parsed = parse_tool_calls(result.prediction)
        pred_calls = parsed.calls if parsed.error is None else None
        pred_bad = calls_grounding(pred_calls, s.tools, ev, str(parsed.error) if parsed.error else "")
        label_bad = calls_grounding(list(s.reference), s.tools, ev)
        pred_ok, label_ok = not pred_bad, not label_bad

        def why(side: str, bad: list[str]) -> str:
            return f"{side}: " + ("grounded" if not bad else "; ".join(bad[:4]))

        reason = f"{why('prediction', pred_bad)} | {why('label', label_bad)}"
        if pred_ok and not label_ok:
            decision = Decision.LABEL_WRONG
        elif label_ok and not pred_ok:
            decision = Decision.MODEL_WRONG
        elif pred_ok and label_ok:
            pn, ln = Counter(c.name for c in pred_calls or []), Counter(c.name for c in s.reference)
            if sum(pn.values()) < sum(ln.values()) and not (pn - ln):
                decision = Decision.MODEL_WRONG
                reason += " | prediction misses calls the label makes"
            else:
                decision = Decision.BOTH_ACCEPTABLE
        else:
            decision = Decision.UNCLEAR
        verdict = Verdict(sample_id=s.id, decision=decision, reason=reason, raw="")
        return _apply_label_check(result, verdict)


# ---------------------------------------------------------------------------------------------
# Sampled candidates from the probed model


@dataclass
class CandidateSampler:
    """Draws ``n`` sampled answers per result from the probed (policy) model."""

    gen: Generator
    n: int
    temperature: float = JudgeSpec.model_fields["candidateTemperature"].default
    max_tokens: int = JudgeSpec.model_fields["candidateMaxTokens"].default
    round: int = 0

    def sample(self, results: list[ProbeResult]) -> list[list[str]]:
        """Distinct non-empty answers per result, in sampling order, without the greedy one."""
        from .probe import probe_messages, sample_seed

        if not results or self.n <= 0:
            return [[] for _ in results]
        reqs = [
            GenRequest(
                probe_messages(r.sample),
                r.sample.tools,
                SamplingParams(
                    temperature=self.temperature,
                    max_tokens=self.max_tokens,
                    n=self.n,
                    # not the probe's seed: these are other draws than its k attempts
                    seed=(sample_seed(r.sample.id, self.round) + 7919) % (1 << 32),
                ),
                request_id=f"candidates:{r.sample.id}",
            )
            for r in results
        ]
        outs = self.gen.generate(reqs)
        raise_if_aborted(outs)
        texts: list[list[str]] = []
        for r, out in zip(results, outs):
            seen = {r.prediction.strip()}
            mine: list[str] = []
            for c in [] if out.error else out.completions:
                t = c.text.strip()
                if t and t not in seen:
                    seen.add(t)
                    mine.append(c.text)
            texts.append(mine)
        return texts


def settle_with_candidates(
    judge: Judge, results: list[ProbeResult], verdicts: list[Verdict], sampler: CandidateSampler | None
) -> tuple[list[Verdict], int]:
    """Re-judge ``unclear`` results with sampled candidates; returns (verdicts, how many settled).

    Each candidate is judged as if it were the prediction; the first ``label_wrong`` verdict (a
    valid fix) replaces the ``unclear`` one. Verdicts from a failing judge model are left alone.
    """
    if sampler is None or sampler.n <= 0:
        return verdicts, 0
    todo = [i for i, v in enumerate(verdicts) if v.decision == Decision.UNCLEAR and not v.reason.startswith(JUDGE_ERROR)]
    if not todo:
        return verdicts, 0
    candidates = sampler.sample([results[i] for i in todo])
    alts: list[ProbeResult] = []
    owners: list[tuple[int, int, int]] = []  # (result index, candidate number, candidates of that result)
    for i, texts in zip(todo, candidates):
        for j, text in enumerate(texts):
            alts.append(results[i].model_copy(update={"prediction": text, "predicted_calls": [], "parse_error": ""}))
            owners.append((i, j + 1, len(texts)))
    out = list(verdicts)
    settled: set[int] = set()
    for (i, j, n), alt in zip(owners, judge.judge(alts) if alts else []):
        if i in settled or alt.decision != Decision.LABEL_WRONG or not alt.corrected:
            continue
        settled.add(i)
        alt.reason = f"{CANDIDATE_REASON} {j}/{n} of the probed model: {alt.reason} (greedy answer unclear: {verdicts[i].reason})"
        alt.sample_id = verdicts[i].sample_id
        out[i] = alt
    return out, len(settled)


# ---------------------------------------------------------------------------------------------
# The stage


def _lineage_for(js: JudgedSample, round: int, unclear_policy: str) -> None:
    v, sample = js.verdict, js.probe.sample
    if v.decision == Decision.LABEL_WRONG and v.corrected:
        old = [c.model_dump(exclude={"id"}) for c in sample.reference]
        sample.meta["label_before_judge"] = canonical_json(old)
        sample.reference = [ToolCall(name=c.name, arguments=c.arguments) for c in v.corrected]
        sample.reference_text = ""
        sample.add_lineage(round, "judge", "relabelled", reason=f"label_wrong: {v.reason}"[:500])
    elif v.decision == Decision.UNCLEAR:
        action = "dropped" if unclear_policy == "drop" else "kept"
        sample.add_lineage(round, "judge", action, reason=f"unclear: {v.reason}"[:500])


def run_judge(
    judge: Judge,
    probe_results: DatasetRef,
    out_uri: str,
    spec: JudgeSpec,
    round: int,
    *,
    batch_size: int = 8,
    s3=None,
    cancel: CancelToken | None = None,
    candidates: CandidateSampler | None = None,
) -> Iterator[EventValue]:
    """Judge every failed probe result; ``candidates`` re-judges ``unclear`` ones with sampled answers."""
    t0 = time.monotonic()
    decisions = [d.value for d in Decision]
    store, key = split_uri(out_uri, s3)

    def recount(records: Iterable[dict[str, Any]]) -> tuple[set[str], dict[str, int]]:
        """(sample ids, counts per decision and settled_by_candidate) of already written verdicts."""
        ids: set[str] = set()
        tally = {**dict.fromkeys(decisions, 0), "settled_by_candidate": 0}
        for r in records:
            ids.add(r["probe"]["sample"]["id"])
            tally[r["verdict"]["decision"]] += 1
            tally["settled_by_candidate"] += str(r["verdict"].get("reason", "")).startswith(CANDIDATE_REASON)
        return ids, tally

    if dataset_exists(store, key):
        ds = open_dataset(out_uri, s3)
        _, counts = recount(ds.iter_dicts())
        yield Progress(stage="judge", done=len(ds), total=len(ds), message="already judged")
        yield StageResult(outputs=[ds.ref], counts={**counts, "judged": len(ds), "errors": 0, "resumed": len(ds)})
        return
    src = open_dataset(probe_results, s3)
    if src.manifest.get("kind") not in ("probe_results", None):
        raise InputError("probe_results", f"{probe_results.uri} holds {src.manifest.get('kind')!r} records, not probe_results",
                         "pass the Probe stage's output")
    writer = writer_for_uri(out_uri, s3, kind=KIND, resume=True, part_size=1 << 30,
                            meta={"stage": "judge", "round": round, "judge": judge.name, "source": probe_results.uri})
    seen, counts = recount(writer.existing_records())
    counts.update(errors=0, resumed=len(seen), not_failed=0)
    total_failed = 0
    for r in src.iter_dicts():  # a cheap first pass for the progress total
        total_failed += r.get("outcome") == ProbeOutcome.FAILED.value
    done = len(seen)
    if not total_failed:
        yield Progress(stage="judge", done=0, total=0, message="no failed probe results; nothing to judge")
    chunk: list[ProbeResult] = []

    def judge_chunk() -> Iterator[EventValue]:
        """Judge, write and flush the whole chunk, then report: a chunk is written whole or not at all."""
        nonlocal done
        if cancel is not None and cancel.cancelled:
            raise Aborted("CANCELLED", "judge stage cancelled")
        verdicts, settled = settle_with_candidates(judge, chunk, judge.judge(chunk), candidates)
        counts["settled_by_candidate"] += settled
        if cancel is not None and cancel.cancelled:
            raise Aborted("CANCELLED", "judge stage cancelled")
        errors: list[ErrorInfo] = []
        for pr, v in zip(chunk, verdicts):
            js = JudgedSample(probe=pr.model_copy(deep=True), verdict=v)
            _lineage_for(js, round, spec.unclearPolicy)
            writer.write(js)
            counts[v.decision.value] += 1
            _VERDICTS.labels(v.decision.value).inc()
            if v.reason.startswith(JUDGE_ERROR):
                counts["errors"] += 1
                errors.append(ErrorInfo(code="JUDGE_ERROR", message=v.reason[:500], item_id=v.sample_id))
        writer.flush()
        done += len(chunk)
        chunk.clear()
        yield from errors
        yield Progress(
            stage="judge", done=done, total=total_failed,
            message=", ".join(f"{d} {counts[d]}" for d in decisions),
            metrics={d: float(counts[d]) for d in decisions},
        )

    try:
        for r in src.iter(ProbeResult):
            if r.outcome != ProbeOutcome.FAILED:
                counts["not_failed"] += 1
                continue
            sid = r.sample.id or r.sample.content_id()
            r.sample.id = sid
            if sid in seen:
                continue
            seen.add(sid)
            chunk.append(r)
            if len(chunk) >= max(1, batch_size):
                yield from judge_chunk()
        if chunk:
            yield from judge_chunk()
        if cancel is not None and cancel.cancelled:
            return
        ref = writer.commit()
    except Aborted:
        return  # earlier chunks are flushed; a resumed run redoes this one
    finally:
        if writer._committed is None:  # noqa: SLF001 - keep finished work for a resumed run
            try:
                writer.flush()
            except Exception:  # pragma: no cover
                pass
    judged = sum(counts[d] for d in decisions)
    yield StageResult(
        outputs=[ref],
        counts={**counts, "judged": judged},
        metrics={
            "label_wrong_rate": counts["label_wrong"] / judged if judged else 0.0,
            "seconds": time.monotonic() - t0,
        },
    )
