"""The data stages of a round, driven through the gRPC services.

Shared by the local runner and the Kubernetes operator: both call ``run_data_stage`` for a phase and
``training_request`` / ``record_training_result`` around the training run (a local process or a
Kubernetes Job). Every stage's output location is derived from its inputs and settings, so a
restarted round reuses finished outputs and services resume unfinished ones without duplicates.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Protocol

import grpc

from looptool.shared import toolsets
from looptool.shared.compose import compose_next_round, dropped_uri
from looptool.shared.config import LoopToolConfig, SecuritySettings
from looptool.shared.conversion import dialogs_to_samples, split_of
from looptool.shared.bfcl_scores import NODES, CategoryResult, aggregate
from looptool.shared.bfcl_multiturn import is_multi_turn
from looptool.shared.evaluation import EndpointDown, EvalReport, check_categories, evaluate, noise_recovery_from_verdicts
from looptool.shared.generation import Generator
from looptool.shared.grpc_util import channel
from looptool.shared.loop.chain import HELDOUT, HELDOUT_AFTER_SFT, run_uri, sft_model_uri
from looptool.shared.logs import get_logger
from looptool.shared.loop.manifest import LoopRound, SynthesisSpec
from looptool.shared.loop.sharding import (
    Shard,
    ShardedGenerator,
    ShardingError,
    dispatch,
    first_query_key,
    merge_datasets,
    open_channel,
    plan_shards,
    shard_uri,
    split_dataset,
    sum_counts,
    user_text_key,
    weighted_metrics,
)
from looptool.shared.loop.function_split import FunctionSplit, split_functions
from looptool.shared.loop.state import STAGE_OF, Phase, RoundStatus, StageStatus
from looptool.shared.noise import LOOP_COUNTS, inject_label_noise, label_noise_state, loop_noise_summary
from looptool.shared.proto_convert import (
    dataset_to_pb,
    error_from_pb,
    progress_from_pb,
    result_from_pb,
    stage_event_from_pb,
)
from looptool.shared.records import (
    DatasetRef,
    Dialog,
    ErrorInfo,
    Progress,
    Sample,
    StageResult,
    Tool,
    content_key,
)
from looptool.shared.storage import DatasetCorrupt, StorageError, dataset_exists, open_dataset, split_uri, writer_for_uri
from looptool.shared.storage.artifacts import artifact_exists, manifest_content_hash, read_manifest
from looptool.shared.verl_format import sample_to_verl_row
from looptool.v1 import (
    expander_pb2,
    expander_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    synthesizer_pb2,
    synthesizer_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)

ProgressFn = Callable[[Progress], None]
log = get_logger("looptool.stages")
# Requests per shard of one evaluation batch (``evaluation.BATCH`` = 16): spread over up to 4 replicas.
EVAL_SHARD = 4


class GeneratorFactory(Protocol):
    """A ``Generator`` served by the inference service at ``address`` for ``model`` (the evaluate
    stage's client). The local runner and the operator's executor supply the service's own client,
    so this library never imports a service."""

    def __call__(self, address: str, *, model: str, timeout_s: float, security: SecuritySettings | None = None) -> Generator: ...


class ToolExecutorFactory(Protocol):
    """BFCL's multi-turn classes on the tool simulator service at ``address`` (a
    ``bfcl_multiturn.BfclExecutor``; supplied by the runner/operator like ``GeneratorFactory``)."""

    def __call__(self, address: str, *, security: SecuritySettings | None = None) -> Any: ...


class StageError(RuntimeError):
    """A stage failed; ``reason`` is a CamelCase Kubernetes-style reason."""

    def __init__(self, reason: str, message: str):
        self.reason, self.message = reason, message
        super().__init__(f"{reason}: {message}")


@dataclass
class StageContext:
    round: LoopRound
    config: LoopToolConfig
    addresses: dict[str, str]  # service name → host:port
    base_uri: str  # storage base, e.g. file:///abs/store or s3://bucket
    generator: GeneratorFactory  # the inference service as a Generator (evaluate)
    previous: RoundStatus | None = None
    rpc_timeout_s: float = 6 * 3600
    item_errors: list[ErrorInfo] = field(default_factory=list)
    # service name → the replicas its data stage shards over (``services.<name>.endpoints``);
    # a service not named here: its one address above
    endpoints: dict[str, list[str]] = field(default_factory=dict)
    # BFCL multi-turn categories in spec.eval.bfclCategories run on the toolsim service through this
    tool_executor: ToolExecutorFactory | None = None
    # the round folder stage outputs go to (default: this round's name). Outputs are content-keyed, so
    # rounds sharing a folder share every output of equal inputs and settings (``looptool ablate``'s variants)
    outputs_round: str = ""

    @property
    def spec(self):
        return self.round.spec

    def targets(self, service: str) -> list[str]:
        """Where ``service``'s shards run: its endpoint list, else its one address."""
        eps = [e.strip() for e in self.endpoints.get(service, []) if e.strip()]
        for e in eps:
            if e.split(":", 1)[0] not in ("dns", "ipv4", "ipv6") and not e.rpartition(":")[2].isdigit():
                raise StageError("InvalidConfig", f"services.{service}.endpoints: {e!r} is not host:port or "
                                 "dns:///name:port; fix that entry")
        if eps:
            return eps
        if service not in self.addresses:
            raise StageError("ServiceUnavailable", f"no address configured for the {service} service")
        return [self.addresses[service]]

    def shard_size(self, service: str) -> int:
        ep = getattr(self.config.services, service, None)
        return ep.shard_size if ep is not None else type(self.config.services.inference).model_fields["shard_size"].default

    def out(self, name: str) -> str:
        return run_uri(self.base_uri, self.outputs_round or self.round.name, name)

    def channel(self, service: str) -> grpc.Channel:
        if service not in self.addresses:
            raise StageError("ServiceUnavailable", f"no address configured for the {service} service")
        return channel(self.addresses[service], self.config.security)


def key_of(*parts: Any) -> str:
    """Short stable hash of a stage's inputs and settings (its output key)."""
    return content_key([p.model_dump(mode="json") if hasattr(p, "model_dump") else p for p in parts], 12)


def consume(stream: Iterable[Any], stage: str, on_progress: ProgressFn, ctx: StageContext) -> StageResult:
    """Drain a StageEvent stream: forward progress, collect per-item errors, return the result."""
    result: StageResult | None = None
    try:
        for ev in stream:
            value = stage_event_from_pb(ev) if not isinstance(ev, (Progress, ErrorInfo, StageResult)) else ev
            if isinstance(value, Progress):
                on_progress(value)
            elif isinstance(value, ErrorInfo):
                ctx.item_errors.append(value)
            else:
                result = value
    except grpc.RpcError as exc:
        code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        raise StageError(f"{stage.capitalize()}Failed", f"{stage} service: {code}: {details}") from None
    if result is None:
        raise StageError(f"{stage.capitalize()}Failed", f"{stage} service ended without a result")
    return result


def _ref(st: StageStatus, name: str) -> DatasetRef:
    ref = st.outputs.get(name)
    if ref is None:
        raise StageError("MissingInput", f"stage output {name!r} is missing; the earlier stage did not finish")
    return ref


def existing(ctx: StageContext, uri: str) -> DatasetRef | None:
    """The committed dataset at ``uri``, if a previous attempt already finished it."""
    store, key = split_uri(uri, ctx.config.storage.s3)
    if dataset_exists(store, key):
        return open_dataset(uri, ctx.config.storage.s3).ref
    return None


# ----------------------------------------------------------------------------- sharding


def _drain(stream: Iterable[Any], stage: str, report: Callable[[int], None], ctx: StageContext) -> StageResult:
    """One shard's event stream (StageEvent or SynthesisEvent): progress to ``report``, per-item
    errors to ``ctx``, the result returned. RPC errors propagate: the dispatcher classifies them."""
    result: StageResult | None = None
    for ev in stream:
        which = ev.WhichOneof("event")
        if which == "progress":
            report(progress_from_pb(ev.progress).done)
        elif which == "error":
            ctx.item_errors.append(error_from_pb(ev.error))
        elif which == "result":
            result = result_from_pb(ev.result)
    if result is None or not result.outputs:
        raise StageError(f"{stage.capitalize()}Failed", f"{stage} service ended a shard without a result")
    return result


def run_shards(
    ctx: StageContext,
    st: StageStatus,
    stage: str,
    service: str,
    shards: list[Shard],
    call: Callable[[grpc.Channel, Shard], Iterable[Any]],
    on_progress: ProgressFn,
) -> list[StageResult]:
    """``call(channel, shard)`` (the shard's server-streaming RPC) for every shard, spread over the
    service's replicas (``sharding.dispatch``); the per-shard results in shard order. Records the
    replicas, shards, retries and dead replicas in the stage's status."""
    targets = ctx.targets(service)
    channels: dict[str, grpc.Channel] = {}
    running: set[Any] = set()  # the shards' RPCs in flight (cancelled when one fails for good)
    lock = threading.Lock()

    def run(target: str, shard: Shard, report: Callable[[int], None]) -> StageResult:
        with lock:
            if target not in channels:
                channels[target] = open_channel(target, ctx.config.security)
            stream = call(channels[target], shard)
            running.add(stream)
        try:
            return _drain(stream, stage, report, ctx)
        finally:
            with lock:
                running.discard(stream)

    def abort() -> None:
        with lock:
            for stream in running:
                stream.cancel()

    try:
        rep = dispatch(stage, shards, targets, run, on_progress=on_progress, on_abort=abort)
    except ShardingError as exc:
        raise StageError(exc.reason, exc.message) from None
    finally:
        for ch in channels.values():
            ch.close()
    st.counts.update(replicas=len(targets), replicas_dead=len(rep.dead), shards=len(shards), shard_retries=rep.retries)
    log.info("shards done", extra={"stage": stage, "served": rep.served, "retries": rep.retries})
    if rep.dead:
        st.message = "dead replicas: " + "; ".join(f"{t} ({why})" for t, why in rep.dead.items())
        log.warning("stage finished without some replicas", extra={"stage": stage, "dead": rep.dead})
    return rep.results


def _merged(ctx: StageContext, st: StageStatus, results: list[StageResult], out: str, kind: str,
            key: Callable[[dict[str, Any]], Iterable[str]], meta: dict[str, Any]) -> DatasetRef:
    """The shard outputs as the stage's dataset at ``out``; counts summed, metrics weighted."""
    parts = [r.outputs[0] for r in results]
    counts = sum_counts(r.counts for r in results)
    ref, dropped = merge_datasets(parts, out, key=key, kind=kind, meta={**meta, "counts": counts}, s3=ctx.config.storage.s3)
    st.counts.update(counts)
    st.counts["merge_duplicates"] = dropped
    st.metrics.update(weighted_metrics([r.metrics for r in results], [p.record_count for p in parts]))
    return ref


def _split(ctx: StageContext, source: DatasetRef, out: str, service: str) -> tuple[list[Shard], list[DatasetRef]]:
    """``source`` in shards of ``services.<service>.shard_size`` records, each its own dataset under
    ``out`` (an empty source: one empty shard, so the service reports on it as before)."""
    total = len(open_dataset(source, ctx.config.storage.s3))
    shards = plan_shards(total, ctx.shard_size(service)) or [Shard(0, 0, 0)]
    try:
        refs = split_dataset(source, shards, lambda s: shard_uri(out, "in", s, key_of(source.content_hash, s.start, s.stop)),
                             ctx.config.storage.s3)
    except ShardingError as exc:
        raise StageError(exc.reason, exc.message) from None
    return shards, refs


# ----------------------------------------------------------------------------- toolset


def resolve_toolset(ctx: StageContext) -> list[Tool]:
    """The round's valid tools from spec.toolset (BFCL category, tool file, or a committed toolset)."""
    try:
        return toolsets.resolve_toolset(ctx.spec.toolset, ctx.config.storage.s3)
    except (OSError, ValueError) as exc:
        raise StageError("InvalidToolset", f"spec.toolset: {exc}") from None


# ----------------------------------------------------------------------------- synthesis


def _split_bfcl_toolset(ctx: StageContext, status: RoundStatus, tools: list[Tool]) -> list[Tool]:
    """This round's training tools; the split (with every function trained on in earlier rounds
    of the chain) goes into ``status.functionSplit`` for the evaluate stage."""
    ev = ctx.spec.eval
    train, test = split_functions([t.name for t in tools], ev.testFraction, ev.splitSeed)
    earlier = ctx.previous.functionSplit.train if ctx.previous is not None and ctx.previous.functionSplit else []
    seeded: list[str] = []
    if ctx.spec.datasets.seed:  # the user's seed samples are trained on too, with whatever tools they show
        seeded = [t.name for smp in open_dataset(ctx.spec.datasets.seed, ctx.config.storage.s3).iter(Sample) for t in smp.tools]
    trained = list(dict.fromkeys([*earlier, *train, *seeded]))
    done = set(trained)
    status.functionSplit = FunctionSplit(seed=ev.splitSeed, testFraction=ev.testFraction, allowOverlap=ev.allowOverlap,
                                         train=trained, test=[n for n in test if n not in done])
    keep = set(train)
    return [t for t in tools if t.name in keep]


def trained_functions(ctx: StageContext, status: RoundStatus) -> list[str] | None:
    """The functions BFCL evaluation leaves out: ``None`` (whole categories) for a toolset not from
    BFCL or with ``eval.allowOverlap``; else every function the chain trained on (the whole toolset
    for a round synthesized before the split was recorded)."""
    if ctx.spec.toolset.bfcl is None or ctx.spec.eval.allowOverlap:
        return None
    if status.functionSplit is not None:
        return list(status.functionSplit.train)
    return [t.name for t in resolve_toolset(ctx)]


def _samples_dataset(ctx: StageContext, name: str, samples: Iterable[Sample | Tool], kind: str = "samples") -> DatasetRef:
    uri = ctx.out(name)
    store, key = split_uri(uri, ctx.config.storage.s3)
    if dataset_exists(store, key):
        return open_dataset(uri, ctx.config.storage.s3).ref
    w = writer_for_uri(uri, ctx.config.storage.s3, kind=kind)
    w.write_many(samples)
    return w.commit()


def _verl_dataset(ctx: StageContext, name: str, samples: list[Sample]) -> DatasetRef:
    uri = ctx.out(name)
    store, key = split_uri(uri, ctx.config.storage.s3)
    if dataset_exists(store, key):
        return open_dataset(uri, ctx.config.storage.s3).ref
    w = writer_for_uri(uri, ctx.config.storage.s3, kind="verl", fmt="parquet")
    w.write_many(sample_to_verl_row(s, "train", i) for i, s in enumerate(samples))
    return w.commit()


def synthesis_config_json(spec: SynthesisSpec) -> str:
    """The synthesizer's config for a round: the spec minus what travels in the request itself
    (counts, seed) and what the runner applies afterwards (held-out split, label noise, sample kinds)."""
    return spec.model_dump_json(
        exclude={"numDialogues", "concurrency", "seed", "heldoutFraction", "labelNoise", "sampleKinds"}
        | ({"mix"} if not spec.mix else set())
    )


def stage_synthesize(ctx: StageContext, status: RoundStatus, on_progress: ProgressFn) -> None:
    st = status.stage("synthesize")
    spec = ctx.spec.synthesis
    tools = resolve_toolset(ctx)
    if ctx.spec.toolset.bfcl is not None:  # train on part of BFCL's functions, test on the rest
        tools = _split_bfcl_toolset(ctx, status, tools)
        st.counts["test_functions"] = len(status.functionSplit.test if status.functionSplit else [])
    st.counts["tools"] = len(tools)
    tool_key = key_of([t.model_dump() for t in tools])
    toolset_ref = _samples_dataset(ctx, f"toolset-{tool_key}", tools, kind="tools")
    st.outputs["toolset"] = toolset_ref

    # Fresh dialogues: the seed depends on the round so chained rounds get new data.
    seed = spec.seed * 1000 + ctx.spec.round
    # Dialogue i is a function of (seed, i); shards are index ranges, deduplicated within themselves
    # (the synthesizer's Deduper) and across shards at merge (dialogue id, first user request), so
    # the shard size, not the replica count, shapes the output.
    size = ctx.shard_size("synthesizer")
    syn_key = key_of(tool_key, spec, seed, {"shard_size": size})
    if spec.numDialogues > 0:
        out = ctx.out(f"dialogs-{syn_key}")
        done = existing(ctx, out)
        if done is not None:
            st.outputs["dialogs"] = done
        else:
            def synthesize(ch: grpc.Channel, shard: Shard) -> Iterable[Any]:
                req = synthesizer_pb2.SynthesizeRequest(
                    toolset=dataset_to_pb(toolset_ref),
                    num_dialogues=shard.size,
                    first_index=shard.start,
                    concurrency=spec.concurrency,
                    seed=seed,
                    output_prefix=shard_uri(out, "out", shard, key_of(syn_key, shard.start, shard.stop)),
                    config_json=synthesis_config_json(spec),
                    round=ctx.spec.round,
                )
                return synthesizer_pb2_grpc.DialogueSynthesizerStub(ch).Synthesize(req, timeout=ctx.rpc_timeout_s)

            shards = plan_shards(spec.numDialogues, size)
            results = run_shards(ctx, st, "synthesize", "synthesizer", shards, synthesize, on_progress)
            meta = {"stage": "synthesize", "seed": seed, "num_dialogues": spec.numDialogues, "shard_size": size,
                    "toolset": toolset_ref.uri, "round": ctx.spec.round}
            st.outputs["dialogs"] = _merged(ctx, st, results, out, "dialogs",
                                            lambda r: [r.get("id", ""), first_query_key(r)], meta)
        dialogs = list(open_dataset(_ref(st, "dialogs"), ctx.config.storage.s3).iter(Dialog))
        # at="": no wall-clock stamp, so re-runs produce byte-identical samples.
        samples = list(dialogs_to_samples(dialogs, round=ctx.spec.round, at="", include_kinds=spec.sampleKinds))
    else:
        samples = []
    st.counts["fresh_samples"] = len(samples)

    # Held-out split: fixed by the first round of a chain, reused by later rounds.
    prev_heldout = None
    if ctx.previous is not None:
        prev_heldout = ctx.previous.stages.get("synthesize", StageStatus()).outputs.get("heldout")
    if ctx.spec.datasets.heldout:
        heldout_ref = open_dataset(ctx.spec.datasets.heldout, ctx.config.storage.s3).ref
        heldout_ids = {s.id for s in open_dataset(heldout_ref, ctx.config.storage.s3).iter(Sample)}
        train = [s for s in samples if s.id not in heldout_ids]
    elif prev_heldout is not None:
        heldout_ref = prev_heldout
        heldout_ids = {s.id for s in open_dataset(heldout_ref, ctx.config.storage.s3).iter(Sample)}
        train = [s for s in samples if s.id not in heldout_ids]
    else:
        train = [s for s in samples if split_of(s.id, spec.heldoutFraction) == "train"]
        heldout = [s for s in samples if split_of(s.id, spec.heldoutFraction) == "heldout"]
        heldout_ref = _samples_dataset(ctx, f"heldout-{syn_key}", heldout)
    st.outputs["heldout"] = heldout_ref

    # Label noise (JGLV demo): corrupt a known fraction of this round's fresh training labels.
    if spec.labelNoise > 0 and train:
        train, corrupted = inject_label_noise(train, spec.labelNoise, random.Random(seed), ctx.spec.round)
        st.counts["labels_corrupted"] = len(corrupted)
    fresh_ref = _samples_dataset(ctx, f"fresh-{syn_key}", train)
    st.outputs["fresh"] = fresh_ref

    # Training set = previous round's composed dataset + fresh samples (+ user seed samples).
    parts: list[Sample] = []
    seen: set[str] = set()
    sources: list[DatasetRef] = []
    if ctx.previous is not None and ctx.previous.datasetUri:
        sources.append(open_dataset(ctx.previous.datasetUri, ctx.config.storage.s3).ref)
    if ctx.spec.datasets.seed:
        sources.append(open_dataset(ctx.spec.datasets.seed, ctx.config.storage.s3).ref)
    sources.append(fresh_ref)
    for ref in sources:
        for s in open_dataset(ref, ctx.config.storage.s3).iter(Sample):
            if s.id not in seen:
                seen.add(s.id)
                parts.append(s)
    train_key = key_of([r.content_hash for r in sources])
    st.outputs["train"] = _samples_dataset(ctx, f"train-{train_key}", parts)
    st.outputs["train_parquet"] = _verl_dataset(ctx, f"train-verl-{train_key}", parts)
    st.counts["train_samples"] = len(parts)
    st.counts["heldout_samples"] = heldout_ref.record_count
    st.done = st.total = len(parts)


# ----------------------------------------------------------------------------- training


def base_model_uri(ctx: StageContext) -> str:
    if ctx.spec.previousRound:
        if ctx.previous is None or not ctx.previous.checkpointUri:
            raise StageError(
                "PreviousRoundNotReady", f"spec.previousRound {ctx.spec.previousRound!r} has no checkpoint yet"
            )
        return ctx.previous.checkpointUri
    bm = ctx.spec.baseModel
    assert bm is not None
    if bm.builtin == "tiny":
        return "builtin:tiny"
    return bm.uri


def training_request(ctx: StageContext, status: RoundStatus) -> dict[str, Any]:
    """The JSON a trainer (local service or Kubernetes Job) runs with."""
    syn = status.stage("synthesize")
    data = _ref(syn, "train_parquet")
    # Where the Job waits (its Kueue queue) is not what it trains: it stays out of the run key.
    config = ctx.spec.training.model_dump(mode="json", exclude={"queueName"})
    bm = ctx.spec.baseModel
    if bm is not None and bm.builtin == "tiny":
        config.update(
            {k: getattr(bm, k) for k in ("tinyHiddenSize", "tinyLayers", "tinyVocabSize") if k in type(ctx.spec.training).model_fields}
        )
    base = base_model_uri(ctx)
    key = key_of(data.content_hash, base, config)
    return {
        "run_id": f"{ctx.outputs_round or ctx.round.name}-{key}",
        "dataset": data.model_dump(mode="json"),
        "base_checkpoint_uri": base,
        "output_prefix": ctx.out(f"train-{key}"),
        "config": config,
        "round": ctx.spec.round,
    }


def stage_train(ctx: StageContext, status: RoundStatus, on_progress: ProgressFn) -> None:
    """Train through the trainer service (the local runner's path; the operator runs a Job instead)."""
    st = status.stage("train")
    req = training_request(ctx, status)
    pb_req = trainer_pb2.TrainRequest(
        run_id=req["run_id"],
        dataset=dataset_to_pb(DatasetRef.model_validate(req["dataset"])),
        base_checkpoint_uri=req["base_checkpoint_uri"],
        output_prefix=req["output_prefix"],
        config_json=json.dumps(req["config"]),
        round=req["round"],
    )
    with ctx.channel("trainer") as ch:
        stub = trainer_pb2_grpc.TrainerStub(ch)
        result = consume(stub.Train(pb_req, timeout=ctx.rpc_timeout_s), "train", on_progress, ctx)
    record_training_result(status, result)


def record_training_result(status: RoundStatus, result: StageResult) -> None:
    st = status.stage("train")
    if not result.checkpoint_uri:
        raise StageError("TrainingFailed", "trainer finished without a checkpoint")
    st.checkpointUri = status.checkpointUri = result.checkpoint_uri
    # Status is JSON, which has no NaN/Infinity (the Kubernetes API refuses the whole status patch, and
    # the round would stay in Training): a metric that is not a number (entropy of no tokens) is left out.
    st.metrics.update({k: v for k, v in result.metrics.items() if math.isfinite(v)})
    st.counts.update(result.counts)


# ----------------------------------------------------------------------------- probe / judge / expand


def stage_probe(ctx: StageContext, status: RoundStatus, on_progress: ProgressFn) -> None:
    st = status.stage("probe")
    train = _ref(status.stage("synthesize"), "train")
    spec = ctx.spec.probe
    key = key_of(train.content_hash, status.checkpointUri, spec, {"shard_size": ctx.shard_size("inference")})
    out = ctx.out(f"probe-{key}")
    done = existing(ctx, out)
    if done is not None:
        st.outputs["probe_results"] = done
        return
    shards, inputs = _split(ctx, train, out, "inference")

    def probe(ch: grpc.Channel, shard: Shard) -> Iterable[Any]:
        part = inputs[shard.index]
        req = inference_pb2.ProbeRequest(
            dataset=dataset_to_pb(part),
            output_prefix=shard_uri(out, "out", shard, key_of(part.content_hash)),
            k=spec.k,
            temperature=spec.temperature,
            max_tokens=spec.maxTokens,
            config_json=spec.model_dump_json(),
            round=ctx.spec.round,
            model_uri=status.checkpointUri,
        )
        return inference_pb2_grpc.InferenceServiceStub(ch).Probe(req, timeout=ctx.rpc_timeout_s)

    results = run_shards(ctx, st, "probe", "inference", shards, probe, on_progress)
    meta = {"stage": "probe", "round": ctx.spec.round, "source": train.uri, "shards": len(shards)}
    st.outputs["probe_results"] = _merged(ctx, st, results, out, "probe_results",
                                          lambda r: [r.get("sample", {}).get("id", "")], meta)


def stage_judge(ctx: StageContext, status: RoundStatus, on_progress: ProgressFn) -> None:
    st = status.stage("judge")
    probe = _ref(status.stage("probe"), "probe_results")
    spec = ctx.spec.judge
    if not spec.enabled:  # ablation (paper: "without JGLV"): the phase passes, no verdicts; composition keeps labels
        st.outputs.pop("verdicts", None)
        st.message = "skipped: judge.enabled is false (no label verification)"
        return
    service = "judge" if ("judge" in ctx.addresses or ctx.endpoints.get("judge")) else "inference"
    key = key_of(probe.content_hash, spec, {"shard_size": ctx.shard_size(service)})
    out = ctx.out(f"judge-{key}")
    done = existing(ctx, out)
    if done is not None:
        st.outputs["verdicts"] = done
        return
    shards, inputs = _split(ctx, probe, out, service)

    def judge(ch: grpc.Channel, shard: Shard) -> Iterable[Any]:
        part = inputs[shard.index]
        req = inference_pb2.JudgeRequest(
            probe_results=dataset_to_pb(part),
            output_prefix=shard_uri(out, "out", shard, key_of(part.content_hash)),
            votes=spec.votes,
            config_json=spec.model_dump_json(),
            round=ctx.spec.round,
            policy_model=status.checkpointUri,  # the probed checkpoint draws the sampled candidates
        )
        return inference_pb2_grpc.InferenceServiceStub(ch).Judge(req, timeout=ctx.rpc_timeout_s)

    results = run_shards(ctx, st, "judge", service, shards, judge, on_progress)
    meta = {"stage": "judge", "round": ctx.spec.round, "source": probe.uri, "shards": len(shards)}
    st.outputs["verdicts"] = _merged(ctx, st, results, out, "verdicts",
                                     lambda r: [r.get("probe", {}).get("sample", {}).get("id", "")], meta)


def stage_expand(ctx: StageContext, status: RoundStatus, on_progress: ProgressFn) -> None:
    st = status.stage("expand")
    # no verdicts when judge.enabled is false; then (and with expand.factor 0) EDDE has nothing to expand
    verdicts = _ref(status.stage("judge"), "verdicts") if ctx.spec.judge.enabled else None
    probe = _ref(status.stage("probe"), "probe_results")
    train = _ref(status.stage("synthesize"), "train")
    spec = ctx.spec.expand
    skip = verdicts is None or spec.factor == 0
    key = "" if skip else key_of(verdicts.content_hash if verdicts else "", train.content_hash, spec,
                                 {"shard_size": ctx.shard_size("expander")})
    out = ctx.out(f"expand-{key}")
    done = None if skip else existing(ctx, out)
    if verdicts is None or spec.factor == 0:
        st.outputs.pop("expansions", None)
        st.message = "EDDE skipped: " + ("judge.enabled is false" if verdicts is None else "expand.factor is 0")
    elif done is not None:
        st.outputs["expansions"] = done
    else:
        # Verdicts are sharded, the corpus (the dedup base) is not; a new sample two shards both
        # wrote (same id or same user request) is kept once, from the earlier shard, at merge.
        shards, inputs = _split(ctx, verdicts, out, "expander")

        def expand(ch: grpc.Channel, shard: Shard) -> Iterable[Any]:
            part = inputs[shard.index]
            req = expander_pb2.ExpandRequest(
                verdicts=dataset_to_pb(part),
                corpus=dataset_to_pb(train),
                output_prefix=shard_uri(out, "out", shard, key_of(part.content_hash)),
                factor=spec.factor,
                seed=spec.seed * 1000 + ctx.spec.round,
                # The mastered filter probes the checkpoint trained this round.
                config_json=json.dumps({**spec.model_dump(mode="json"), "probeModel": status.checkpointUri}),
                round=ctx.spec.round,
            )
            return expander_pb2_grpc.ExpanderStub(ch).Expand(req, timeout=ctx.rpc_timeout_s)

        results = run_shards(ctx, st, "expand", "expander", shards, expand, on_progress)
        meta = {"stage": "expand", "round": ctx.spec.round, "factor": spec.factor, "source": verdicts.uri,
                "shards": len(shards)}
        st.outputs["expansions"] = _merged(ctx, st, results, out, "samples",
                                           lambda r: [r.get("id", ""), user_text_key(r)], meta)
    expansions = st.outputs.get("expansions")
    fresh = status.stage("synthesize").outputs.get("fresh")  # Eq. 5's fresh seed samples (compose.freshSeedFraction)
    ppl = ctx.spec.probe.highPerplexity
    next_key = key_of(
        probe.content_hash, *(r.content_hash if r is not None else "-" for r in (verdicts, expansions, fresh)),
        ctx.spec.compose, ctx.spec.judge.unclearPolicy, ppl if ppl.percentile is not None else "",
    )
    next_ref = existing(ctx, ctx.out(f"next-{next_key}"))
    if next_ref is None:
        next_ref, counts = compose_next_round(
            probe,
            verdicts,
            expansions,
            fresh,
            ctx.out(f"next-{next_key}"),
            ctx.spec.compose,
            ctx.spec.round,
            ctx.spec.judge.unclearPolicy,
            s3=ctx.config.storage.s3,
            high_perplexity=ppl,
        )
        st.counts.update({f"next_{k}": int(v) for k, v in counts.items()})
    st.outputs["next"] = next_ref
    status.datasetUri = next_ref.uri


# ----------------------------------------------------------------------------- evaluate


def stage_evaluate(ctx: StageContext, status: RoundStatus, on_progress: ProgressFn) -> None:
    """Score the round's checkpoint (held-out samples, BFCL categories, the post-SFT policy). The
    inference part is content-keyed like the other stages' outputs: its result is kept as a
    one-record dataset ``evaluate-<key>``, so a round whose checkpoint, held-out data and eval
    settings equal an earlier one's (a rerun, or ``looptool ablate``'s variants sharing round 1)
    asks no model again. What is read from this round's other outputs (label-noise recovery, the
    loop's noise tally, the overlap line) is derived afresh every time: it is no inference, and
    variants that share round 1's checkpoint differ there."""
    st = status.stage("evaluate")
    spec = ctx.spec.eval
    heldout = status.stage("synthesize").outputs.get("heldout") if spec.heldout else None
    targets = ctx.targets("inference")
    try:  # the spec's errors first, so a stored result never hides them
        check_categories(spec.bfclCategories, ctx.tool_executor is not None)
    except ValueError as exc:
        raise StageError("InvalidSpec", f"spec.eval.bfclCategories: {exc}") from None
    key = _evaluate_key(ctx, status, heldout)
    out = ctx.out(f"evaluate-{key}")
    cached = _cached_evaluation(ctx, out, key)
    if cached is not None:
        report, after_sft = cached
        # Reused: no replica was asked, so none died this run (a dead-replica message belongs to the run that had it)
        st.counts.update(replicas=len(targets), replicas_dead=0)
        log.info("evaluation reused", extra={"stage": "evaluate", "uri": out})
    else:
        report, after_sft = _run_evaluation(ctx, status, st, targets, heldout, on_progress)
        _store_evaluation(ctx, out, key, report, after_sft)
    status.accuracy = {k: round(v, 4) for k, v in report.accuracy.items()}
    if spec.bfclCategories:
        _record_overlap(ctx, status, st)
    _evaluate_tail(ctx, status, st, report)
    if after_sft is not None:  # beside accuracy_heldout (after GRPO): GRPO's share of the round's gain
        st.metrics[f"accuracy_{HELDOUT_AFTER_SFT}"] = after_sft
        status.accuracy[HELDOUT_AFTER_SFT] = round(after_sft, 4)


def _run_evaluation(ctx: StageContext, status: RoundStatus, st: StageStatus, targets: list[str],
                    heldout: DatasetRef | None, on_progress: ProgressFn) -> tuple[EvalReport, float | None]:
    """The evaluation's model requests: the checkpoint's report and the post-SFT held-out accuracy."""
    with _evaluation_generator(ctx, targets, status.checkpointUri) as gen:
        report = _evaluate(ctx, gen, status, heldout, on_progress)
    st.counts.update(replicas=len(targets), replicas_dead=len(gen.dead))
    if gen.dead:
        st.message = "dead replicas: " + "; ".join(f"{t} ({why})" for t, why in gen.dead.items())
    after_sft = _heldout_after_sft(ctx, status, heldout, report, on_progress) if HELDOUT in report.accuracy else None
    return report, after_sft


def _model_identity(ctx: StageContext, uri: str) -> str:
    """What a model's answers depend on: a committed artifact's content hash (a trainer's checkpoint;
    its URI is keyed by the training inputs, the hash also pins the bytes of a retrained one), else
    the URI itself (``builtin:tiny``, a model outside storage)."""
    try:
        store, path = split_uri(uri, ctx.config.storage.s3)
    except StorageError:
        return uri
    if not path or not artifact_exists(store, path):
        return uri
    return "sha256:" + manifest_content_hash(read_manifest(store, path))


def _evaluate_key(ctx: StageContext, status: RoundStatus, heldout: DatasetRef | None) -> str:
    """Everything the evaluation's model requests and their scores depend on: the checkpoint, the
    held-out data, the eval settings, the BFCL functions left out, and the post-SFT model scored."""
    counts = status.stage("train").counts
    sft: str | None = None  # no post-SFT score (see _heldout_after_sft)
    if heldout is not None and counts.get("sft_steps"):
        sft = "final"  # SFT only: the final model's held-out score
        if counts.get("grpo_steps"):
            uri = sft_model_uri(status.checkpointUri)
            kept = artifact_exists(*split_uri(uri, ctx.config.storage.s3))
            sft = _model_identity(ctx, uri) if kept else "-"  # "-": this run did not keep it, no score
    trained = trained_functions(ctx, status)
    return key_of(
        _model_identity(ctx, status.checkpointUri),
        heldout.content_hash if heldout is not None else "-",
        ctx.spec.eval,
        sorted(set(trained)) if trained is not None else None,
        {"after_sft": sft},
    )


def _pairs(d: dict[str, Any]) -> list[list[Any]]:
    # pairs, not an object: dataset records are canonical JSON (sorted keys), and the status keeps
    # the report's order (categories as run)
    return [[k, v] for k, v in d.items()]


def _store_evaluation(ctx: StageContext, out: str, key: str, report: EvalReport, after_sft: float | None) -> None:
    if dataset_exists(*split_uri(out, ctx.config.storage.s3)):  # an equal evaluation finished meanwhile
        return
    record = {
        "key": key,
        "accuracy": _pairs(report.accuracy),
        "counts": _pairs(report.counts),
        "undecodable": _pairs(report.undecodable),
        "bfcl": [[c, {"correct": r.correct, "total": r.total, "undecodable": r.undecodable}] for c, r in report.bfcl.items()],
        "after_sft": after_sft,
    }
    w = writer_for_uri(out, ctx.config.storage.s3, kind="eval_result", pipeline=False,
                       meta={"stage": "evaluate", "round": ctx.spec.round})
    w.write(record)
    w.commit()


def _cached_evaluation(ctx: StageContext, out: str, key: str) -> tuple[EvalReport, float | None] | None:
    """The committed evaluation at ``out``, verified (its bytes against its manifest; a damaged one
    raises ``DatasetCorrupt`` naming it, as every stage's committed output does), or None."""
    ref = existing(ctx, out)
    if ref is None:
        return None
    records = list(open_dataset(ref, ctx.config.storage.s3).iter_dicts())
    try:
        (rec,) = records
        if rec["key"] != key:
            raise ValueError(f"holds key {rec['key']!r}, not {key!r}")
        report = EvalReport(
            accuracy={str(k): float(v) for k, v in rec["accuracy"]},
            counts={str(k): int(v) for k, v in rec["counts"]},
            undecodable={str(k): int(v) for k, v in rec["undecodable"]},
            bfcl={str(c): CategoryResult(int(r["correct"]), int(r["total"]), int(r["undecodable"])) for c, r in rec["bfcl"]},
        )
        after = rec["after_sft"]
        return report, (float(after) if after is not None else None)
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetCorrupt(ref.uri, "record", f"is not an evaluation result ({exc})") from None


def _heldout_after_sft(ctx: StageContext, status: RoundStatus, heldout: DatasetRef | None, report: EvalReport,
                       on_progress: ProgressFn) -> float | None:
    """Held-out accuracy of the round's post-SFT policy (the trainer's ``model_sft``); an SFT-only
    round's final model is that policy. None: no SFT this round, or a run that did not keep it."""
    counts = status.stage("train").counts
    if heldout is None or not counts.get("sft_steps"):
        return None
    if not counts.get("grpo_steps"):
        acc = report.accuracy.get(HELDOUT)
        return round(acc, 4) if acc is not None else None  # as status.accuracy has it
    uri = sft_model_uri(status.checkpointUri)
    store, key = split_uri(uri, ctx.config.storage.s3)
    if not artifact_exists(store, key):
        return None
    with _evaluation_generator(ctx, ctx.targets("inference"), uri) as gen:
        sft_report = evaluate(gen, heldout=heldout, bfcl_categories=[], max_tokens=ctx.spec.eval.maxTokens,
                              s3=ctx.config.storage.s3, on_progress=on_progress)
    return sft_report.accuracy.get(HELDOUT)


@contextlib.contextmanager
def _evaluation_generator(ctx: StageContext, targets: list[str], model: str) -> Iterator[ShardedGenerator]:
    """Sharded requests to ``model`` over the inference replicas; their failures as StageErrors."""
    gen = ShardedGenerator(
        "evaluate", targets,
        lambda t: ctx.generator(t, model=model, timeout_s=ctx.rpc_timeout_s, security=ctx.config.security), EVAL_SHARD,
    )
    try:
        yield gen
    except ShardingError as exc:
        raise StageError(exc.reason, exc.message) from None
    except EndpointDown as exc:
        raise StageError("InferenceUnavailable", str(exc)) from None
    finally:
        gen.close()


def _evaluate(ctx: StageContext, gen: ShardedGenerator, status: RoundStatus, heldout: DatasetRef | None, on_progress: ProgressFn) -> EvalReport:
    spec = ctx.spec.eval
    executor = None
    if ctx.tool_executor is not None and any(is_multi_turn(c) for c in spec.bfclCategories):
        executor = ctx.tool_executor(ctx.targets("toolsim")[0], security=ctx.config.security)
    try:
        return evaluate(
            gen,
            heldout=heldout,
            bfcl_categories=spec.bfclCategories,
            bfcl_limit=spec.bfclLimit,
            max_tokens=spec.maxTokens,
            s3=ctx.config.storage.s3,
            on_progress=on_progress,
            bfcl_exclude_functions=trained_functions(ctx, status),
            tool_executor=executor,
        )
    finally:
        getattr(executor, "close", lambda: None)()


def _record_overlap(ctx: StageContext, status: RoundStatus, st: StageStatus) -> None:
    """What the scorecard's overlap line says (shared/loop/report.py reads these counts)."""
    trained = trained_functions(ctx, status)
    st.counts["bfcl_overlap_allowed"] = int(ctx.spec.toolset.bfcl is not None and ctx.spec.eval.allowOverlap)
    st.counts["bfcl_trained_functions_excluded"] = len(set(trained)) if trained is not None else 0


def _evaluate_tail(ctx: StageContext, status: RoundStatus, st: StageStatus, report: EvalReport) -> None:
    st.metrics.update({f"accuracy_{k}": v for k, v in report.accuracy.items()})
    st.counts.update({f"n_{k}": v for k, v in report.counts.items()})
    st.counts.update({f"undecodable_{k}": v for k, v in report.undecodable.items()})
    # BFCL's leaderboard aggregates over the categories run (groups not run: absent, never 0)
    st.metrics.update({f"bfcl_{k}": s.accuracy for k, s in aggregate(report.bfcl).items()
                       if s is not None and k in _BFCL_AGGREGATES})
    verdicts = status.stage("judge").outputs.get("verdicts")
    fresh = status.stage("synthesize").outputs.get("fresh")
    if ctx.spec.synthesis.labelNoise > 0 and verdicts is not None and fresh is not None:
        rec = noise_recovery_from_verdicts(fresh, verdicts, ctx.config.storage.s3)
        st.metrics.update({f"noise_{k}": float(v) for k, v in rec.items()})
    st.metrics.update(loop_noise_metrics(ctx, status))


_BFCL_AGGREGATES = {n.key for n in NODES}
LOOP_NOISE = "loopnoise_"  # evaluate metrics: injected noise over all rounds so far
_GONE = LOOP_NOISE + "gone_"  # ... counts of samples that left the data (carried to the next round)


def loop_noise_metrics(ctx: StageContext, status: RoundStatus) -> dict[str, float]:
    """Injected label noise over the loop so far, after this round's judge and composition.

    Tallies ``noise.label_noise_state`` over this round's composed dataset and its dropped samples,
    plus the dropped samples of earlier rounds (carried in the previous round's metrics). Empty
    when no label was ever corrupted."""
    nxt = status.stage("expand").outputs.get("next")
    if nxt is None:
        return {}
    s3 = ctx.config.storage.s3
    ds = open_dataset(nxt, s3)
    here = label_noise_state(ds.iter(Sample))
    dropped = dropped_uri(ds)
    gone = dict.fromkeys(LOOP_COUNTS, 0)
    if dropped and dataset_exists(*split_uri(dropped, s3)):
        gone = label_noise_state(open_dataset(dropped, s3).iter(Sample))
    prev = ctx.previous.stages.get("evaluate") if ctx.previous is not None else None
    before = {k: int((prev.metrics if prev else {}).get(_GONE + k, 0)) for k in LOOP_COUNTS}
    total = {k: here[k] + gone[k] + before[k] for k in LOOP_COUNTS}
    if not total["corrupted"]:
        return {}
    out = {LOOP_NOISE + k: v for k, v in loop_noise_summary(total).items()}
    out.update({_GONE + k: float(gone[k] + before[k]) for k in LOOP_COUNTS})
    return out


STAGES: dict[Phase, Callable[[StageContext, RoundStatus, ProgressFn], None]] = {
    Phase.SYNTHESIZING: stage_synthesize,
    Phase.PROBING: stage_probe,
    Phase.VERIFYING: stage_judge,
    Phase.EXPANDING: stage_expand,
    Phase.EVALUATING: stage_evaluate,
}


def run_data_stage(phase: Phase, ctx: StageContext, status: RoundStatus, on_progress: ProgressFn) -> None:
    """Run one data phase's work (everything except Training)."""
    fn = STAGES.get(phase)
    if fn is None:
        raise StageError("NotADataStage", f"phase {phase.value} is not a data stage ({STAGE_OF.get(phase)})")
    try:
        fn(ctx, status, on_progress)
    except DatasetCorrupt as exc:  # a committed input no longer matches its manifest: stop, name it
        raise StageError("DatasetCorrupt", str(exc)) from None
