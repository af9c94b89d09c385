"""The LLM judge: a judge model reads the context, the tools, the reference label and the
prediction and answers strict JSON (decision, reason, error analysis, correct approach); retries on
malformed answers, majority over ``votes``. ``PanelJudge``: majority over several judge models."""

from __future__ import annotations

import json
from collections import Counter
from typing import Callable, ContextManager

from looptool.shared.generation import GenRequest, Generator, SamplingParams
from looptool.shared.loop.manifest import JudgeSpec
from looptool.shared.records import Decision, Message, ProbeResult, Verdict
from looptool.shared.toolcall_format import render_tool_calls

from ..backends.base import raise_if_aborted
from .verdicts import JUDGE_ERROR, Judge, ParsedVerdict, apply_label_check, parse_verdict

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
    '{"decision": "label_wrong" | "model_wrong" | "both_acceptable" | "both_wrong" | "unclear", '
    '"reason": "<one sentence>", "analysis": "<what the wrong side got wrong, and why>", '
    '"correct_approach": "<what the correct answer does: which tools, which argument values from where>"}\n'
    "- label_wrong: the prediction is correct and the reference label is wrong.\n"
    "- model_wrong: the reference label is correct and the prediction is wrong.\n"
    "- both_acceptable: both are correct answers.\n"
    "- both_wrong: both are wrong (say in correct_approach what would be right).\n"
    "- unclear: you cannot tell from the conversation and the tools."
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
        return [apply_label_check(r, self._tally(r, vs)) for r, vs in zip(results, votes)]

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
        tally = Counter(p.decision for p in valid if p.decision is not None)  # every valid vote has one
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
        first = next(p for p in valid if p.decision == winner)
        return Verdict(sample_id=sid, decision=winner, reason=first.reason, analysis=first.analysis,
                       correct_approach=first.correct_approach, votes=n, total_votes=self.votes, raw=raw)


class PanelJudge:
    """A panel of judges (``judge.models``), as the reference code votes over a list of judge models:
    each judges every result, and a decision wins with a strict majority of the panel (2 of 3, 3 of
    4); otherwise the verdict is ``unclear`` (a split panel cannot tell). The winner's reason, analysis
    and corrected label come from the first judge that voted for it. ``members`` are (name, judge)
    pairs, or factories that open a judge for the call (a model leased for one chunk at a time)."""

    name = "panel"

    def __init__(self, members: list[tuple[str, Callable[[], ContextManager[Judge]]]]):
        if not members:
            raise ValueError("a judge panel needs at least one member")
        self.members = members

    def judge(self, results: list[ProbeResult]) -> list[Verdict]:
        if not results:
            return []
        per_member: list[list[Verdict]] = []
        for _, opener in self.members:
            with opener() as judge:
                per_member.append(judge.judge(results))
        return [self._tally(r, [vs[i] for vs in per_member]) for i, r in enumerate(results)]

    def _tally(self, result: ProbeResult, verdicts: list[Verdict]) -> Verdict:
        names = [n for n, _ in self.members]
        n = len(verdicts)
        raw = json.dumps({name: v.decision.value for name, v in zip(names, verdicts)}, ensure_ascii=False)
        if all(v.reason.startswith(JUDGE_ERROR) for v in verdicts):
            out = verdicts[0].model_copy()
            out.raw, out.total_votes = raw, n
            return out
        tally = Counter(v.decision for v in verdicts if not v.reason.startswith(JUDGE_ERROR))
        winner, votes = tally.most_common(1)[0]
        if votes * 2 <= n:
            return Verdict(
                sample_id=result.sample.id, decision=Decision.UNCLEAR, votes=votes, total_votes=n, raw=raw,
                reason="no panel majority: " + ", ".join(f"{name} {v.decision.value}" for name, v in zip(names, verdicts)),
            )
        first = next(v for v in verdicts if v.decision == winner)
        agree = [name for name, v in zip(names, verdicts) if v.decision == winner]
        return first.model_copy(update={
            "votes": votes, "total_votes": n, "raw": raw,
            "reason": f"panel {votes}/{n} ({', '.join(agree)}): {first.reason}",
        })
