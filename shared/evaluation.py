"""Evaluation: held-out synthesized samples (shared reward) and BFCL AST categories (our checker,
which agrees with bfcl-eval's official one; see tests/test_bfcl_agreement.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable, Iterable

from looptool.shared.generation import Completion, Generator, GenRequest, GenResult, SamplingParams
from looptool.shared.records import DatasetRef, Message, Progress, Sample, Tool, ToolCall

BATCH = 16


@dataclass
class EvalReport:
    accuracy: dict[str, float] = field(default_factory=dict)  # category → accuracy in [0, 1]
    counts: dict[str, int] = field(default_factory=dict)  # category → entries evaluated
    failures: dict[str, list[dict]] = field(default_factory=dict)  # a few failed examples per category

    def to_json(self) -> dict:
        return {"accuracy": self.accuracy, "counts": self.counts, "failures": self.failures}


class GrpcGenerator:
    """``Generator`` over the inference server's GenerateBatch RPC, pinned to one model URI."""

    def __init__(self, address: str, model: str = "", timeout_s: float = 3600.0):
        self.address, self.model, self.timeout_s = address, model, timeout_s

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        import grpc

        from looptool.shared.grpc_util import channel
        from looptool.shared.proto_convert import call_from_pb, message_to_pb, tool_to_pb
        from looptool.v1 import common_pb2, inference_pb2, inference_pb2_grpc

        batch = inference_pb2.GenerateBatchRequest(
            requests=[
                inference_pb2.GenerateRequest(
                    messages=[message_to_pb(m) for m in r.messages],
                    tools=[tool_to_pb(t) for t in r.tools],
                    params=common_pb2.SamplingParams(
                        temperature=r.params.temperature,
                        top_p=r.params.top_p,
                        max_tokens=r.params.max_tokens,
                        n=r.params.n,
                        seed=r.params.seed,
                        stop=r.params.stop,
                    ),
                    request_id=r.request_id,
                    model=self.model,
                )
                for r in requests
            ]
        )
        out: list[GenResult] = [GenResult(error="no response") for _ in requests]
        with channel(self.address) as ch:
            stub = inference_pb2_grpc.InferenceServiceStub(ch)
            try:
                for item in stub.GenerateBatch(batch, timeout=self.timeout_s):
                    if item.HasField("error") and item.error.message:
                        out[item.index] = GenResult(error=item.error.message)
                        continue
                    resp = item.response
                    out[item.index] = GenResult(
                        completions=[
                            Completion(
                                text=c.text,
                                tool_calls=[call_from_pb(x) for x in c.tool_calls],
                                parse_error=c.parse_error,
                                finish_reason=c.finish_reason,
                                mean_logprob=c.mean_logprob,
                            )
                            for c in resp.completions
                        ],
                        prompt_tokens=resp.usage.prompt_tokens,
                        completion_tokens=resp.usage.completion_tokens,
                    )
            except grpc.RpcError as exc:
                raise RuntimeError(f"inference server {self.address}: {exc.code().name}: {exc.details()}") from None
        return out


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
    from looptool.shared.noise import noise_recovery
    from looptool.shared.records import Decision, JudgedSample
    from looptool.shared.storage import open_dataset

    corrupted: set[str] = set()
    clean: dict[str, list[ToolCall]] = {}
    for s in open_dataset(fresh, s3).iter(Sample):
        if "clean_reference" in s.meta:
            corrupted.add(s.id)
            clean[s.id] = [ToolCall.model_validate(c) for c in json.loads(s.meta["clean_reference"])]
    relabelled: dict[str, list[ToolCall]] = {}
    for j in open_dataset(verdicts, s3).iter(JudgedSample):
        if j.verdict.decision == Decision.LABEL_WRONG:
            relabelled[j.probe.sample.id] = j.verdict.corrected
    return noise_recovery(corrupted, clean, relabelled)
