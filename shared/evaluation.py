"""Evaluation: held-out synthesized samples (shared reward) and BFCL AST categories (our checker,
which agrees with bfcl-eval's official one; see tests/shared/test_bfcl_agreement.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

from looptool.shared.generation import Generator, GenRequest, GenResult, SamplingParams
from looptool.shared.records import DatasetRef, Message, Progress, Sample, Tool, ToolCall

BATCH = 16


@dataclass
class EvalReport:
    accuracy: dict[str, float] = field(default_factory=dict)  # category → accuracy in [0, 1]
    counts: dict[str, int] = field(default_factory=dict)  # category → entries evaluated
    failures: dict[str, list[dict]] = field(default_factory=dict)  # a few failed examples per category

    def to_json(self) -> dict:
        return {"accuracy": self.accuracy, "counts": self.counts, "failures": self.failures}


def _greedy(messages: list[Message], tools: list[Tool], max_tokens: int) -> GenRequest:
    return GenRequest(messages=messages, tools=tools, params=SamplingParams(temperature=0.0, max_tokens=max_tokens))


def _batched(gen: Generator, reqs: list[GenRequest], on_done: Callable[[int], None]) -> list[GenResult]:
    results: list[GenResult] = []
    for i in range(0, len(reqs), BATCH):
        results.extend(gen.generate(reqs[i : i + BATCH]))
        on_done(len(results))
    return results


def sample_kind(sample: Sample) -> str:
    if not sample.reference:
        return "no_call"
    if len(sample.reference) > 1:
        return "parallel" if len({c.name for c in sample.reference}) == 1 else "parallel_multiple"
    return "single"


def evaluate_samples(
    gen: Generator, samples: list[Sample], max_tokens: int, on_progress: Callable[[Progress], None] | None = None
) -> tuple[dict[str, tuple[int, int]], list[dict]]:
    """Greedy-decode each sample; score with the shared reward. Returns {kind: (correct, total)}."""
    from looptool.shared.reward import score_sample

    reqs = [_greedy(s.context, s.tools, max_tokens) for s in samples]
    report = (lambda n: on_progress(Progress(stage="evaluate", done=n, total=len(reqs), message="heldout"))) if on_progress else (lambda n: None)
    results = _batched(gen, reqs, report)
    tally: dict[str, list[int]] = {}
    failures: list[dict] = []
    for s, r in zip(samples, results):
        text = r.completions[0].text if r.completions else ""
        res = score_sample(text, s)
        ok = bool(res.correct) and not r.error
        for k in ("all", sample_kind(s)):
            t = tally.setdefault(k, [0, 0])
            t[0] += int(ok)
            t[1] += 1
        if not ok and len(failures) < 5:
            failures.append({"id": s.id, "prediction": text[:500], "reason": r.error or res.reason})
    return {k: (v[0], v[1]) for k, v in tally.items()}, failures


def evaluate_bfcl(
    gen: Generator,
    category: str,
    limit: int,
    max_tokens: int,
    functions: Iterable[str] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> tuple[int, int, list[dict]]:
    """Accuracy on one BFCL category, checked by our AST checker. ``functions`` restricts the
    entries to those whose functions all belong to a toolset."""
    from looptool.shared import ast_check, bfcl

    entries = bfcl.load_entries(category)
    if functions is not None:
        allowed = set(functions)
        entries = [e for e in entries if {f["name"] for f in e.functions} <= allowed]
    if limit:
        entries = entries[:limit]
    reqs = [_greedy(e.messages(), e.tools, max_tokens) for e in entries]
    report = (lambda n: on_progress(Progress(stage="evaluate", done=n, total=len(reqs), message=category))) if on_progress else (lambda n: None)
    results = _batched(gen, reqs, report)
    correct = 0
    failures: list[dict] = []
    for e, r in zip(entries, results):
        text = r.completions[0].text if r.completions else ""
        ok, reason = ast_check.check_response(e, text)  # decoded as BFCL decodes Qwen FC output
        ok = ok and not r.error
        correct += int(ok)
        if not ok and len(failures) < 5:
            failures.append({"id": e.id, "prediction": text[:500], "reason": r.error or str(reason)})
    return correct, len(entries), failures


def evaluate(
    gen: Generator,
    heldout: DatasetRef | None = None,
    bfcl_categories: list[str] | None = None,
    bfcl_limit: int = 0,
    max_tokens: int = 128,
    s3=None,
    on_progress: Callable[[Progress], None] | None = None,
    bfcl_functions: list[str] | None = None,
) -> EvalReport:
    from looptool.shared.storage import open_dataset

    report = EvalReport()
    if heldout is not None:
        samples = list(open_dataset(heldout, s3).iter(Sample))
        tally, failures = evaluate_samples(gen, samples, max_tokens, on_progress)
        for kind, (c, n) in tally.items():
            name = "heldout" if kind == "all" else f"heldout_{kind}"
            report.accuracy[name] = c / n if n else 0.0
            report.counts[name] = n
        report.failures["heldout"] = failures
    for cat in bfcl_categories or []:
        c, n, failures = evaluate_bfcl(gen, cat, bfcl_limit, max_tokens, bfcl_functions, on_progress)
        name = f"bfcl_{cat}"
        report.accuracy[name] = c / n if n else 0.0
        report.counts[name] = n
        report.failures[name] = failures
    return report


def noise_recovery_from_verdicts(fresh: DatasetRef, verdicts: DatasetRef, s3=None) -> dict[str, float]:
    """JGLV against injected label noise: precision/recall of label corrections."""
    from looptool.shared.noise import clean_references, noise_recovery
    from looptool.shared.records import Decision, JudgedSample
    from looptool.shared.storage import open_dataset

    clean = clean_references(open_dataset(fresh, s3).iter(Sample))
    corrupted = set(clean)
    relabelled: dict[str, list[ToolCall]] = {}
    for j in open_dataset(verdicts, s3).iter(JudgedSample):
        if j.verdict.decision == Decision.LABEL_WRONG:
            relabelled[j.probe.sample.id] = j.verdict.corrected
    return noise_recovery(corrupted, clean, relabelled)
