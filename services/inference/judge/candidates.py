"""Sampled candidates: when the greedy answer leaves a result ``unclear`` or ``both_wrong``, the probed model is asked
for more answers and each is judged like the greedy one; the first valid fix settles it."""

from __future__ import annotations

from dataclasses import dataclass

from looptool.shared.generation import GenRequest, Generator, SamplingParams
from looptool.shared.loop.manifest import JudgeSpec
from looptool.shared.records import Decision, ProbeResult, Verdict

from ..backends.base import raise_if_aborted
from ..probe import probe_messages, sample_seed
from .verdicts import CANDIDATE_REASON, JUDGE_ERROR, Judge

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
    """Re-judge ``unclear`` and ``both_wrong`` results with sampled candidates; returns (verdicts, how
    many settled).

    Each candidate is judged as if it were the prediction; the first ``label_wrong`` verdict (a
    valid fix) replaces the greedy one. Verdicts from a failing judge model are left alone.
    """
    if sampler is None or sampler.n <= 0:
        return verdicts, 0
    # both_wrong too: a sampled answer may be the right one that neither the label nor the greedy answer is
    unsettled = (Decision.UNCLEAR, Decision.BOTH_WRONG)
    todo = [i for i, v in enumerate(verdicts) if v.decision in unsettled and not v.reason.startswith(JUDGE_ERROR)]
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
        alt.reason = (f"{CANDIDATE_REASON} {j}/{n} of the probed model: {alt.reason} "
                      f"(greedy answer {verdicts[i].decision.value}: {verdicts[i].reason})")
        alt.sample_id = verdicts[i].sample_id
        out[i] = alt
    return out, len(settled)
