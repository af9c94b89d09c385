"""Evaluation: held-out synthesized samples (shared reward), BFCL AST categories (our checker,
which agrees with bfcl-eval's official one; see tests/shared/test_bfcl_agreement.py) and BFCL
multi-turn categories (run on the tool simulator, scored by bfcl-eval's own checker;
shared/bfcl_multiturn.py)."""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from looptool.shared.bfcl_scores import CategoryResult
from looptool.shared.generation import Generator, GenRequest, GenResult, SamplingParams
from looptool.shared.records import DatasetRef, Message, Progress, Sample, Tool, ToolCall

if TYPE_CHECKING:
    from looptool.shared.bfcl_multiturn import BfclExecutor

BATCH = 16


@dataclass
class EvalReport:
    accuracy: dict[str, float] = field(default_factory=dict)  # category → accuracy in [0, 1]
    counts: dict[str, int] = field(default_factory=dict)  # category → entries evaluated
    failures: dict[str, list[dict]] = field(default_factory=dict)  # a few failed examples per category
    undecodable: dict[str, int] = field(default_factory=dict)  # category → answers that did not decode
    bfcl: dict[str, CategoryResult] = field(default_factory=dict)  # BFCL category → result (for bfcl_scores)

    def to_json(self) -> dict:
        return {"accuracy": self.accuracy, "counts": self.counts, "undecodable": self.undecodable, "failures": self.failures}


def _greedy(messages: list[Message], tools: list[Tool], max_tokens: int) -> GenRequest:
    return GenRequest(messages=messages, tools=tools, params=SamplingParams(temperature=0.0, max_tokens=max_tokens))


def _batched(gen: Generator, reqs: list[GenRequest], on_done: Callable[[int], None], where: str) -> list[GenResult]:
    results: list[GenResult] = []
    for i in range(0, len(reqs), BATCH):
        batch = gen.generate(reqs[i : i + BATCH])
        _check_batch(batch, where)
        results.extend(batch)
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
    results = _batched(gen, reqs, report, "held-out evaluation")
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


class EndpointDown(RuntimeError):
    """The model endpoint stopped answering: a whole batch came back with transport errors.
    Scoring those as wrong answers would report an outage as a model's accuracy."""


# Per-request error codes that mean "the endpoint is not answering", not "this prompt failed".
_DOWN_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED")


def _check_batch(results: list[GenResult], where: str) -> None:
    if results and all(r.error and r.error.split(":", 1)[0] in _DOWN_CODES for r in results):
        raise EndpointDown(f"the model endpoint stopped answering during {where}: {results[0].error[:300]}")


def undecodable(text: str) -> bool:
    """An answer with tool-call markup that does not decode to calls: BFCL's decoder fails, or a
    ``<tool_call>`` block is not a JSON call (BFCL skips such a block silently)."""
    from looptool.shared.bfcl import decode_like_bfcl

    calls = decode_like_bfcl(text)
    if calls is None:
        return True
    tail = text.split("</think>")[-1]
    return tail.count("<tool_call>") > len(calls)


@dataclass
class BfclResult:
    result: CategoryResult
    failures: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {**self.result.to_json(), "failures": self.failures}

    @classmethod
    def from_json(cls, d: dict) -> "BfclResult":
        return cls(CategoryResult(int(d["correct"]), int(d["total"]), int(d.get("undecodable", 0))), list(d.get("failures", [])))


def select_entries(category: str, limit: int = 0, exclude_functions: Iterable[str] | None = None, seed: int = 0) -> list:
    """The entries of one BFCL category to score: those using none of ``exclude_functions`` (the
    functions the model trained on), then a seeded sample of ``limit`` of them (0 = all), kept in
    BFCL's order. A sample, not the first ``limit``: the first entries of a file are not typical."""
    from looptool.shared import bfcl

    entries = bfcl.load_entries(category)
    if exclude_functions is not None:
        banned = set(exclude_functions)
        entries = [e for e in entries if not any(f["name"] in banned for f in e.functions)]
    if limit and limit < len(entries):
        keep = sorted(random.Random(f"{seed}:{category}").sample(range(len(entries)), limit))
        entries = [entries[i] for i in keep]
    return entries


def evaluate_bfcl(
    gen: Generator,
    category: str,
    limit: int,
    max_tokens: int,
    exclude_functions: Iterable[str] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    seed: int = 0,
) -> BfclResult:
    """Accuracy on one BFCL category, checked by our AST checker (which agrees with bfcl-eval's).
    ``exclude_functions``: entries using any of them are left out (train/test overlap). An
    undecodable answer is scored as the checker scores it (wrong where a call was expected) and
    counted. Raises :class:`EndpointDown` when a whole batch fails to reach the model."""
    from looptool.shared import ast_check

    entries = select_entries(category, limit, exclude_functions, seed)
    reqs = [_greedy(e.messages(), e.tools, max_tokens) for e in entries]
    report = (lambda n: on_progress(Progress(stage="evaluate", done=n, total=len(reqs), message=category))) if on_progress else (lambda n: None)
    results = _batched(gen, reqs, report, f"BFCL {category}")
    correct = bad = 0
    failures: list[dict] = []
    for e, r in zip(entries, results):
        text = r.completions[0].text if r.completions else ""
        ok, reason = ast_check.check_response(e, text)  # decoded as BFCL decodes Qwen FC output
        ok = ok and not r.error
        correct += int(ok)
        if not r.error and undecodable(text):
            bad += 1
        if not ok and len(failures) < 5:
            failures.append({"id": e.id, "prediction": text[:500], "reason": r.error or str(reason)})
    return BfclResult(CategoryResult(correct, len(entries), bad), failures)


class ResultStore:
    """Finished categories of one evaluation, one JSON file each under ``directory``, written
    atomically as each finishes; a rerun with the same settings (``fingerprint``) reuses them, so
    an interrupted evaluation resumes where it stopped."""

    def __init__(self, directory: str | Path, fingerprint: dict):
        self.dir = Path(directory)
        self.fingerprint = fingerprint

    def _path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def get(self, name: str) -> BfclResult | None:
        try:
            d = json.loads(self._path(name).read_text())
        except (OSError, ValueError):
            return None  # absent or unreadable: evaluated again
        if not isinstance(d, dict) or d.get("fingerprint") != self.fingerprint:
            return None
        try:
            return BfclResult.from_json(d)
        except (KeyError, TypeError, ValueError):
            return None

    def put(self, name: str, res: BfclResult) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self._path(name)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"fingerprint": self.fingerprint, **res.to_json()}, indent=1))
        os.replace(tmp, path)


def check_categories(bfcl_categories: list[str] | None, has_tool_executor: bool) -> list[str]:
    """The resolved BFCL category names; ValueError for an unknown one, or for a multi-turn category
    without a tool executor (checked before any work, and before a stored result is reused)."""
    from looptool.shared import bfcl, bfcl_multiturn

    cats = [bfcl_multiturn.resolve_category(c) if bfcl_multiturn.is_multi_turn(c) else bfcl.resolve_category(c)
            for c in bfcl_categories or []]
    multi = [c for c in cats if bfcl_multiturn.is_multi_turn(c)]
    if multi and not has_tool_executor:
        raise ValueError(f"BFCL multi-turn categories {multi} need a tool executor (BFCL's classes on the tool "
                         "simulator): pass tool_executor, e.g. services.toolsim.bfcl_env.ToolSimBfclExecutor()")
    return cats


def evaluate(
    gen: Generator,
    heldout: DatasetRef | None = None,
    bfcl_categories: list[str] | None = None,
    bfcl_limit: int = 0,
    max_tokens: int = 128,
    s3=None,
    on_progress: Callable[[Progress], None] | None = None,
    bfcl_exclude_functions: Iterable[str] | None = None,
    store: ResultStore | None = None,
    on_category: Callable[[str, BfclResult, bool], None] | None = None,
    tool_executor: "BfclExecutor | None" = None,
) -> EvalReport:
    """Held-out samples and BFCL categories. ``bfcl_exclude_functions``: functions the model
    trained on (their entries are left out). ``store``: finished categories are kept there and
    reused; ``on_category(name, result, reused)`` is told as each category is done. Multi-turn
    categories (``multi_turn_*``) run against ``tool_executor``: BFCL's classes on the tool
    simulator (``services.toolsim.bfcl_env.ToolSimBfclExecutor``; shared/bfcl_multiturn.py)."""
    from looptool.shared import bfcl_multiturn
    from looptool.shared.storage import open_dataset

    cats = check_categories(bfcl_categories, tool_executor is not None)
    exclude = sorted(set(bfcl_exclude_functions)) if bfcl_exclude_functions is not None else None
    report = EvalReport()
    if heldout is not None:
        samples = list(open_dataset(heldout, s3).iter(Sample))
        tally, failures = evaluate_samples(gen, samples, max_tokens, on_progress)
        for kind, (c, n) in tally.items():
            name = "heldout" if kind == "all" else f"heldout_{kind}"
            report.accuracy[name] = c / n if n else 0.0
            report.counts[name] = n
        report.failures["heldout"] = failures
    for cat in dict.fromkeys(cats):
        name = f"bfcl_{cat}"
        res = store.get(name) if store is not None else None
        reused = res is not None
        if res is None and bfcl_multiturn.is_multi_turn(cat):
            assert tool_executor is not None
            res = bfcl_multiturn.evaluate_multi_turn(gen, cat, tool_executor, bfcl_limit, max_tokens, exclude, on_progress)
            if store is not None:
                store.put(name, res)
        elif res is None:
            res = evaluate_bfcl(gen, cat, bfcl_limit, max_tokens, exclude, on_progress)
            if store is not None:
                store.put(name, res)
        if on_category is not None:
            on_category(name, res, reused)
        report.bfcl[cat] = res.result
        report.counts[name] = res.result.total
        if res.result.total:  # no entry scored: not run (N/A), never 0.0
            report.accuracy[name] = res.result.accuracy
        report.undecodable[name] = res.result.undecodable
        report.failures[name] = res.failures
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
