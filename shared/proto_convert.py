"""Lossless conversion between shared records and ``looptool.v1`` protobuf messages.

JSON-valued fields (schemas, arguments, plans) travel as JSON text, so ints stay ints,
floats stay floats and nested structures survive exactly.
"""

from __future__ import annotations

import json
from typing import Any

from looptool.shared.generation import Completion, GenRequest, GenResult, SamplingParams
from looptool.shared.records import (
    DatasetRef,
    Decision,
    Dialog,
    ErrorInfo,
    LineageEvent,
    Message,
    Progress,
    Sample,
    StageResult,
    Tool,
    ToolCall,
    Verdict,
)
from looptool.v1 import common_pb2 as pb
from looptool.v1 import inference_pb2, synthesizer_pb2


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def tool_to_pb(t: Tool) -> pb.Tool:
    return pb.Tool(name=t.name, description=t.description, parameters_json=_dumps(t.parameters))


def tool_from_pb(m: pb.Tool) -> Tool:
    return Tool(name=m.name, description=m.description, parameters=json.loads(m.parameters_json or "{}"))


def call_to_pb(c: ToolCall) -> pb.ToolCall:
    return pb.ToolCall(name=c.name, arguments_json=_dumps(c.arguments), id=c.id)


def call_from_pb(m: pb.ToolCall) -> ToolCall:
    return ToolCall(name=m.name, arguments=json.loads(m.arguments_json or "{}"), id=m.id)


def message_to_pb(msg: Message) -> pb.Message:
    return pb.Message(
        role=msg.role,
        content=msg.content,
        tool_calls=[call_to_pb(c) for c in msg.tool_calls],
        name=msg.name,
        tool_call_id=msg.tool_call_id,
        reasoning=msg.reasoning,
    )


def message_from_pb(m: pb.Message) -> Message:
    return Message(
        role=m.role,
        content=m.content,
        tool_calls=[call_from_pb(c) for c in m.tool_calls],
        name=m.name,
        tool_call_id=m.tool_call_id,
        reasoning=m.reasoning,
    )


def lineage_to_pb(e: LineageEvent) -> pb.LineageEvent:
    return pb.LineageEvent(round=e.round, stage=e.stage, action=e.action, reason=e.reason, parent_id=e.parent_id, at=e.at)


def lineage_from_pb(m: pb.LineageEvent) -> LineageEvent:
    return LineageEvent(round=m.round, stage=m.stage, action=m.action, reason=m.reason, parent_id=m.parent_id, at=m.at)


def sample_to_pb(s: Sample) -> pb.Sample:
    return pb.Sample(
        id=s.id,
        context=[message_to_pb(m) for m in s.context],
        tools=[tool_to_pb(t) for t in s.tools],
        reference=[call_to_pb(c) for c in s.reference],
        reference_text=s.reference_text,
        lineage=[lineage_to_pb(e) for e in s.lineage],
        meta=dict(s.meta),
        source=s.source,
    )


def sample_from_pb(m: pb.Sample) -> Sample:
    return Sample(
        id=m.id,
        context=[message_from_pb(x) for x in m.context],
        tools=[tool_from_pb(t) for t in m.tools],
        reference=[call_from_pb(c) for c in m.reference],
        reference_text=m.reference_text,
        lineage=[lineage_from_pb(e) for e in m.lineage],
        meta=dict(m.meta),
        source=m.source,
    )


def dialog_to_pb(d: Dialog) -> pb.Dialog:
    return pb.Dialog(
        id=d.id,
        messages=[message_to_pb(m) for m in d.messages],
        tools=[tool_to_pb(t) for t in d.tools],
        plan_json=_dumps(d.plan),
        meta=dict(d.meta),
    )


def dialog_from_pb(m: pb.Dialog) -> Dialog:
    return Dialog(
        id=m.id,
        messages=[message_from_pb(x) for x in m.messages],
        tools=[tool_from_pb(t) for t in m.tools],
        plan=json.loads(m.plan_json or "{}"),
        meta=dict(m.meta),
    )


def verdict_to_pb(v: Verdict) -> pb.Verdict:
    return pb.Verdict(
        sample_id=v.sample_id,
        decision=v.decision.value,
        reason=v.reason,
        corrected=[call_to_pb(c) for c in v.corrected],
        votes=v.votes,
        total_votes=v.total_votes,
        raw=v.raw,
        analysis=v.analysis,
        correct_approach=v.correct_approach,
    )


def verdict_from_pb(m: pb.Verdict) -> Verdict:
    return Verdict(
        sample_id=m.sample_id,
        decision=Decision(m.decision),
        reason=m.reason,
        corrected=[call_from_pb(c) for c in m.corrected],
        votes=m.votes,
        total_votes=m.total_votes,
        raw=m.raw,
        analysis=m.analysis,
        correct_approach=m.correct_approach,
    )


def dataset_to_pb(r: DatasetRef) -> pb.DatasetRef:
    return pb.DatasetRef(uri=r.uri, content_hash=r.content_hash, record_count=r.record_count, format=r.format, kind=r.kind)


def dataset_from_pb(m: pb.DatasetRef) -> DatasetRef:
    return DatasetRef(
        uri=m.uri, content_hash=m.content_hash, record_count=m.record_count, format=m.format or "jsonl", kind=m.kind or "samples"
    )


def progress_to_pb(p: Progress) -> pb.Progress:
    return pb.Progress(stage=p.stage, done=p.done, total=p.total, message=p.message, metrics=dict(p.metrics))


def progress_from_pb(m: pb.Progress) -> Progress:
    return Progress(stage=m.stage, done=m.done, total=m.total, message=m.message, metrics=dict(m.metrics))


def error_to_pb(e: ErrorInfo) -> pb.Error:
    return pb.Error(code=e.code, message=e.message, field=e.field, item_id=e.item_id)


def error_from_pb(m: pb.Error) -> ErrorInfo:
    return ErrorInfo(code=m.code, message=m.message, field=m.field, item_id=m.item_id)


def result_to_pb(r: StageResult) -> pb.StageResult:
    return pb.StageResult(
        outputs=[dataset_to_pb(o) for o in r.outputs],
        counts=dict(r.counts),
        metrics=dict(r.metrics),
        checkpoint_uri=r.checkpoint_uri,
    )


def result_from_pb(m: pb.StageResult) -> StageResult:
    return StageResult(
        outputs=[dataset_from_pb(o) for o in m.outputs],
        counts=dict(m.counts),
        metrics=dict(m.metrics),
        checkpoint_uri=m.checkpoint_uri,
    )


StageEventValue = Progress | ErrorInfo | StageResult


def stage_event_to_pb(ev: StageEventValue) -> pb.StageEvent:
    if isinstance(ev, Progress):
        return pb.StageEvent(progress=progress_to_pb(ev))
    if isinstance(ev, ErrorInfo):
        return pb.StageEvent(error=error_to_pb(ev))
    return pb.StageEvent(result=result_to_pb(ev))


def synthesis_event_to_pb(ev: Dialog | StageEventValue) -> synthesizer_pb2.SynthesisEvent:
    if isinstance(ev, Dialog):
        return synthesizer_pb2.SynthesisEvent(dialog=dialog_to_pb(ev))
    if isinstance(ev, Progress):
        return synthesizer_pb2.SynthesisEvent(progress=progress_to_pb(ev))
    if isinstance(ev, ErrorInfo):
        return synthesizer_pb2.SynthesisEvent(error=error_to_pb(ev))
    if isinstance(ev, StageResult):
        return synthesizer_pb2.SynthesisEvent(result=result_to_pb(ev))
    raise TypeError(type(ev))


def stage_event_from_pb(m: pb.StageEvent) -> StageEventValue:
    which = m.WhichOneof("event")
    if which == "progress":
        return progress_from_pb(m.progress)
    if which == "error":
        return error_from_pb(m.error)
    if which == "result":
        return result_from_pb(m.result)
    raise ValueError("empty StageEvent")


# -- generation (InferenceService.Generate*) ----------------------------------------------------


def gen_request_to_pb(req: GenRequest, model: str = "") -> inference_pb2.GenerateRequest:
    p = req.params
    return inference_pb2.GenerateRequest(
        messages=[message_to_pb(m) for m in req.messages],
        tools=[tool_to_pb(t) for t in req.tools],
        params=pb.SamplingParams(
            temperature=p.temperature, top_p=p.top_p, max_tokens=p.max_tokens, n=p.n, seed=p.seed, stop=list(p.stop)
        ),
        request_id=req.request_id,
        model=model,
    )


def gen_request_from_pb(req: inference_pb2.GenerateRequest) -> GenRequest:
    """Unset (zero) sampling fields take the defaults; raises ValueError on bad JSON in tools/arguments."""
    p = req.params
    params = SamplingParams(
        temperature=max(0.0, p.temperature),
        top_p=p.top_p if p.top_p > 0 else 1.0,
        max_tokens=p.max_tokens if p.max_tokens > 0 else 256,
        n=p.n if p.n > 0 else 1,
        seed=p.seed,
        stop=list(p.stop),
    )
    return GenRequest(
        messages=[message_from_pb(m) for m in req.messages],
        tools=[tool_from_pb(t) for t in req.tools],
        params=params,
        request_id=req.request_id,
    )


def completion_to_pb(c: Completion) -> inference_pb2.Completion:
    return inference_pb2.Completion(
        text=c.text,
        tool_calls=[call_to_pb(tc) for tc in c.tool_calls],
        parse_error=c.parse_error,
        finish_reason=c.finish_reason,
        mean_logprob=c.mean_logprob,
    )


def completion_from_pb(c: inference_pb2.Completion) -> Completion:
    return Completion(
        text=c.text,
        tool_calls=[call_from_pb(tc) for tc in c.tool_calls],
        parse_error=c.parse_error,
        finish_reason=c.finish_reason,
        mean_logprob=c.mean_logprob,
    )


def usage_to_pb(res: GenResult) -> inference_pb2.Usage:
    return inference_pb2.Usage(prompt_tokens=res.prompt_tokens, completion_tokens=res.completion_tokens)


def gen_result_to_pb(res: GenResult, model: str) -> inference_pb2.GenerateResponse:
    return inference_pb2.GenerateResponse(
        completions=[completion_to_pb(c) for c in res.completions], usage=usage_to_pb(res), model=model
    )


def gen_result_from_pb(resp: inference_pb2.GenerateResponse) -> GenResult:
    return GenResult(
        completions=[completion_from_pb(c) for c in resp.completions],
        prompt_tokens=resp.usage.prompt_tokens,
        completion_tokens=resp.usage.completion_tokens,
    )
