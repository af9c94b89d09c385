"""Judgement-Guided Label Verification (JGLV): for every probe result whose greedy answer was wrong,
decide whether the *label* or the *model* is wrong. One module per job: ``verdicts`` (interface,
parser, label check), ``llm`` (LLMJudge), ``grounding`` (GroundingJudge), ``candidates`` (sampled
candidates), ``stage`` (run_judge).

Decisions (the paper's four, plus "cannot tell"): ``label_wrong`` (the prediction is right, the
label is wrong → the label is replaced by the prediction's calls), ``model_wrong`` (keep the label),
``both_acceptable``, ``both_wrong`` (composition drops it by default), ``unclear`` (the judge
cannot tell, or its answer was unusable). Each verdict carries ``reason``, an error ``analysis`` and
the ``correct_approach`` (the paper's judge output; EDDE's LLM generator reads both).

Two judges behind one small interface (``Judge.judge(list[ProbeResult]) -> list[Verdict]``):

- ``LLMJudge``: a judge model (any ``Generator``) reads the context, the tools, the reference label
  and the prediction, and answers strict JSON ``{"decision": ..., "reason": ...}``. The verdict
  parser (``parse_verdict``) is strict and total. A malformed answer is retried up to twice with a
  different seed (temperature > 0), then counted as ``unclear``. Self-consistency: ``votes`` > 1
  samples that many judgements at temperature > 0 and takes the majority (a tie is ``unclear``).
  With one vote the judge decodes greedily, as in the paper.
- ``PanelJudge`` (``JudgeSpec.models``): several judge models, each greedy; a strict majority of the
  panel decides (the reference code needs 2 of 3), else ``unclear``.
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

from .candidates import CandidateSampler, settle_with_candidates
from .grounding import Evidence, GroundingJudge, numbers_in, value_supported
from .llm import LLMJudge, PanelJudge, judge_messages
from .stage import KIND, run_judge
from .verdicts import CANDIDATE_REASON, JUDGE_ERROR, Judge, ParsedVerdict, corrected_calls, parse_verdict

__all__ = [
    "CANDIDATE_REASON",
    "JUDGE_ERROR",
    "KIND",
    "CandidateSampler",
    "Evidence",
    "GroundingJudge",
    "Judge",
    "LLMJudge",
    "PanelJudge",
    "ParsedVerdict",
    "corrected_calls",
    "judge_messages",
    "numbers_in",
    "parse_verdict",
    "run_judge",
    "settle_with_candidates",
    "value_supported",
]
