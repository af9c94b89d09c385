"""One training run, shared by the Kubernetes Job entry point and the gRPC service.

``run_training(job)``:

1. **Validate before any compute** (each a one-line ``InputError`` naming the field): the config
   (``TrainingSpec``), the output prefix, the dataset (exists, non-empty, every row in the verl
   layout), the base model (exists; ``builtin:tiny`` only on CPU), batch arithmetic
   (``microBatchSize`` / ``ppoMiniBatches`` divide the rollout batch; verl's
   ``train_batch_size × n`` vs GPUs, mini- and micro-batches).
2. **Idempotent**: the run key is a hash of (dataset content hash, config, base model identity).
   ``<output_prefix>/result.json`` with the same key and a committed model → return it, no work.
3. **Resume**: a committed checkpoint of the same key → continue from it (SFT or GRPO, mid-phase).
4. Train with the configured backend (``cpu``: SFT warm start + torch GRPO; ``verl``: subprocess),
   upload the final HF model directory to ``<output_prefix>/model`` (and, CPU backend with SFT and
   GRPO, the post-SFT policy to ``<output_prefix>/model_sft``), write ``result.json``.

``StageResult`` of a run: ``checkpoint_uri`` = the model artifact URI; ``metrics``: last-step
``reward_mean``/``reward_std``/``accuracy``/``loss``/``kl``, ``tokens_per_second`` (mean over
GRPO steps), ``sft_loss`` (last), ``reward_first5``/``reward_last5`` (mean of the first/last 5
steps), ``resumed_from_step``, ``seconds``, ``cached`` (1 when the run was a no-op) and the reward
curve as ``reward_step_<i>`` (i = 1 … number of GRPO steps); ``counts``: ``examples``,
``dropped_too_long``, ``sft_steps``, ``grpo_steps``. ``result.json`` holds the same plus the curves
as lists.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from looptool.services.trainer import metrics as tm
from looptool.services.trainer.common import TrainCancelled, TrainFailed
from looptool.shared.config import LoopToolConfig, TrainerSettings, load_config
from looptool.shared.errors import InputError
from looptool.shared.logs import get_logger
from looptool.shared.loop.chain import SFT_MODEL
from looptool.shared.loop.manifest import TrainingSpec
from looptool.shared.records import DatasetRef, Progress, StageResult, content_key, result_to_stage, utcnow
from looptool.shared.storage import open_dataset, split_uri
from looptool.shared.storage.artifacts import artifact_exists, upload_dir
from looptool.shared.storage.base import NotFound, ObjectStore, StorageError

log = get_logger("looptool.trainer")
RESULT = "result.json"
MODEL = "model"
KEY_VERSION = 1
Emit = Callable[[Progress], None]


# ============================================================================ the request


class TrainJob(BaseModel):
    """The TrainRequest, as JSON (``job --request FILE.json``) or from protobuf."""

    model_config = ConfigDict(extra="forbid")
    run_id: str = ""
    dataset: DatasetRef
    base_checkpoint_uri: str = Field(..., min_length=1)
    output_prefix: str = Field(..., min_length=1)
    config: TrainingSpec = Field(default_factory=TrainingSpec)
    round: int = 0

    @field_validator("output_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not (v.startswith(("file://", "s3://", "/"))):
            raise ValueError("must be file:///path, s3://bucket/prefix or an absolute path")
        return v.rstrip("/")


def _validation_error(exc: ValidationError, source: str) -> InputError:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = "unknown field; remove it or check its spelling" if err["type"] == "extra_forbidden" else err["msg"]
    more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return InputError(f"{source}{'.' if loc and source else ''}{loc}", msg + more)


def parse_job(obj: Any) -> TrainJob:
    """A JSON object → TrainJob. ``config`` may be an object or ``config_json`` text; ``dataset``
    a DatasetRef object or a URI string. Raises InputError naming the field."""
    if not isinstance(obj, dict):
        raise InputError("request", "must be a JSON object (run_id, dataset, base_checkpoint_uri, output_prefix, config)")
    data = dict(obj)
    if "config_json" in data:
        raw = data.pop("config_json")
        try:
            data["config"] = json.loads(raw) if isinstance(raw, str) and raw.strip() else (raw or {})
        except json.JSONDecodeError as exc:
            raise InputError("config_json", f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(data.get("dataset"), str):
        data["dataset"] = {"uri": data["dataset"]}
    try:
        return TrainJob.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc, "") from None


def job_from_pb(req) -> TrainJob:
    from looptool.shared.proto_convert import dataset_from_pb

    if not req.HasField("dataset") or not req.dataset.uri:
        raise InputError("dataset.uri", "is empty", "pass the committed GRPO dataset reference")
    try:
        ds = dataset_from_pb(req.dataset)
    except ValidationError as exc:
        raise _validation_error(exc, "dataset") from None
    return parse_job(
        {
            "run_id": req.run_id,
            "dataset": ds.model_dump(),
            "base_checkpoint_uri": req.base_checkpoint_uri,
            "output_prefix": req.output_prefix,
            "config_json": req.config_json or "{}",
            "round": req.round,
        }
    )


def job_to_pb(job: TrainJob):
    from looptool.shared.proto_convert import dataset_to_pb
    from looptool.v1 import trainer_pb2

    return trainer_pb2.TrainRequest(
        run_id=job.run_id,
        dataset=dataset_to_pb(job.dataset),
        base_checkpoint_uri=job.base_checkpoint_uri,
        output_prefix=job.output_prefix,
        config_json=job.config.model_dump_json(),
        round=job.round,
    )


# ============================================================================ validation


def check_spec(spec: TrainingSpec) -> None:
    """Cross-field checks of the config that pydantic's per-field bounds cannot express."""
    if spec.groupSize < 2:
        raise InputError("config.groupSize", f"is {spec.groupSize}; GRPO needs at least 2 rollouts per prompt to compare")
    if spec.backend == "cpu":
        if not spec.sftWarmStart and spec.grpoSteps == 0:
            raise InputError("config", "nothing to train: sftWarmStart is false and grpoSteps is 0")
        if spec.clipLow >= 1:
            raise InputError("config.clipLow", f"is {spec.clipLow}; the ratio lower bound 1 - clipLow must stay above 0")
        if spec.promptsPerStep % spec.ppoMiniBatches:
            raise InputError(
                "config.ppoMiniBatches",
                f"{spec.ppoMiniBatches} does not divide promptsPerStep {spec.promptsPerStep} (mini-batches hold whole groups)",
            )
        mini = spec.promptsPerStep // spec.ppoMiniBatches * spec.groupSize
        if spec.microBatchSize and (spec.microBatchSize % spec.groupSize or mini % spec.microBatchSize):
            raise InputError(
                "config.microBatchSize",
                f"{spec.microBatchSize} must be a multiple of groupSize {spec.groupSize} and divide the mini-batch of {mini} "
                f"sequences (promptsPerStep {spec.promptsPerStep} × groupSize / ppoMiniBatches {spec.ppoMiniBatches})",
            )
        if spec.microBatchSize and spec.sftBatchSize % spec.microBatchSize:
            raise InputError("config.microBatchSize", f"{spec.microBatchSize} does not divide sftBatchSize {spec.sftBatchSize}")
    else:
        from looptool.services.trainer.verl_backend import check_verl_spec

        check_verl_spec(spec)


@dataclass
class Prepared:
    job: TrainJob
    store: ObjectStore
    prefix: str
    key: str
    base_identity: str
    dataset: Any = None  # shared.storage.Dataset
    examples: list = field(default_factory=list)
    rows: int = 0


def run_key(job: TrainJob, dataset_hash: str, base_identity: str) -> str:
    cfg = job.config.model_dump(mode="json")
    cfg.pop("checkpointEvery", None)  # operational, does not change the trained model
    payload = {"v": KEY_VERSION, "dataset": dataset_hash, "config": cfg, "base": base_identity, "base_uri": job.base_checkpoint_uri}
    return content_key(payload)


def prepare(job: TrainJob, s3=None) -> Prepared:
    """Checks that need no training data beyond the dataset manifest; computes the run key."""
    from looptool.services.trainer.modeling import check_base

    check_spec(job.config)
    try:
        store, prefix = split_uri(job.output_prefix, s3)
    except StorageError as exc:
        raise InputError("output_prefix", str(exc).splitlines()[0]) from None
    try:
        ds = open_dataset(job.dataset, s3)
    except NotFound:
        raise InputError("dataset.uri", f"no committed dataset at {job.dataset.uri}", "check the URI or run the stage that writes it") from None
    except StorageError as exc:
        raise InputError("dataset", str(exc).splitlines()[0]) from None
    if len(ds) == 0:
        raise InputError("dataset", f"{job.dataset.uri} is empty (0 rows)", "commit a dataset with at least one GRPO row")
    base_identity = check_base(job.base_checkpoint_uri, job.config, s3)
    key = run_key(job, ds.manifest["content_hash"], base_identity)
    return Prepared(job=job, store=store, prefix=prefix, key=key, base_identity=base_identity, dataset=ds, rows=len(ds))


def load_rows(prep: Prepared) -> None:
    from looptool.services.trainer.data import load_examples

    prep.examples = load_examples(prep.dataset.iter_dicts())


def cached_result(prep: Prepared) -> dict[str, Any] | None:
    """A finished result of this exact run (same key, model committed), else None."""
    try:
        data = json.loads(prep.store.get_bytes(f"{prep.prefix}/{RESULT}"))
    except (NotFound, json.JSONDecodeError, ValueError):
        return None
    if data.get("key") != prep.key or data.get("status") != "succeeded":
        return None
    if not artifact_exists(prep.store, f"{prep.prefix}/{MODEL}"):
        return None
    return data


# ============================================================================ CPU backend


class CpuRun:
    """SFT warm start (optional) then GRPO, with checkpoints, resume and cancel at step boundaries."""

    def __init__(self, prep: Prepared, emit: Emit, cancel: threading.Event, workdir: Path, s3=None, threads: int | None = None):
        self.prep, self.emit, self.cancel, self.workdir, self.s3 = prep, emit, cancel, workdir, s3
        self.threads = threads  # trainer.torch_threads; None = the CPUs this process may use
        self.spec = prep.job.config
        self.state: dict[str, Any] = {"reward_curve": [], "sft_loss_curve": [], "last_grpo": {}, "last_sft": {}, "tps": []}
        self.resumed_from: dict[str, Any] | None = None

    def _progress(self, done: int, total: int, message: str, metrics: dict[str, float]) -> None:
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and v == v}
        self.emit(Progress(stage="train", done=done, total=total, message=message, metrics=clean))

    def _base_dir(self, examples) -> Path:
        from looptool.services.trainer.data import corpus_texts
        from looptool.services.trainer.modeling import is_builtin, resolve_base, tiny_spec
        from looptool.shared.tiny_model import build_tiny_model

        uri = self.prep.job.base_checkpoint_uri
        if is_builtin(uri):
            spec = tiny_spec(uri, self.spec)
            out = self.workdir / f"base-{self.prep.key[:16]}"
            if not (out / "config.json").is_file():
                self._progress(0, 0, f"building builtin:tiny (hidden {spec.hidden_size}, {spec.num_layers} layers, vocab {spec.vocab_size})", {})
                build_tiny_model(out, corpus_texts(examples), spec)
            return out
        return resolve_base(uri, self.workdir / "cache" / "models", self.s3)

    def run(self) -> dict[str, Any]:
        import torch

        from looptool.services.trainer.checkpoints import REFERENCE_TAG, CheckpointManager, read_extras, restore_rng, write_extras
        from looptool.services.trainer.common import configure_threads, make_optimizer, make_scheduler, seed_all, step_seed
        from looptool.services.trainer.data import eos_ids, tokenize_examples
        from looptool.services.trainer.grpo import GRPOConfig, GRPOTrainer, grpo_step_count
        from looptool.services.trainer.modeling import load_model, quiet_transformers, save_model
        from looptool.services.trainer.sft import SFTConfig, SFTTrainer

        quiet_transformers()
        prev_threads = torch.get_num_threads()
        configure_threads(self.threads)
        try:
            spec, prep = self.spec, self.prep
            seed_all(spec.seed)
            ckpt = CheckpointManager(prep.store, prep.prefix, prep.key, self.workdir / "cache" / "ckpt")
            (self.workdir / "cache" / "ckpt").mkdir(parents=True, exist_ok=True)
            latest = ckpt.latest()
            ts: dict[str, Any] = {}
            if latest is not None:
                d, saved, ts = ckpt.load_state(latest.tag)
                model_dir = d / "model"
                self.state.update({k: saved.get(k, v) for k, v in self.state.items()})
                self.resumed_from = {"tag": latest.tag, "phase": latest.phase, "step": latest.step}
                restore_rng(ts)
                log.info("resuming from checkpoint", extra={"tag": latest.tag, "phase": latest.phase, "step": latest.step})
                self._progress(0, 0, f"resumed from checkpoint {latest.tag} (phase {latest.phase}, step {latest.step})", {"resumed_from_step": float(latest.step)})
            else:
                model_dir = self._base_dir(prep.examples)
            ckpt.model_extras = read_extras(model_dir)
            model, tok = load_model(model_dir)
            eos = eos_ids(tok, model)
            tokenize_examples(prep.examples, tok, eos[0])
            n_sft_prompt_ok = [e for e in prep.examples if len(e.prompt_ids) <= spec.maxPromptTokens]
            if not n_sft_prompt_ok:
                longest = min(len(e.prompt_ids) for e in prep.examples)
                raise InputError(
                    "config.maxPromptTokens", f"is {spec.maxPromptTokens} but every prompt is longer (shortest: {longest} tokens)"
                )

            sft_cfg = SFTConfig.from_spec(spec)
            grpo_total = grpo_step_count(spec.grpoSteps, spec.epochs, len(n_sft_prompt_ok), spec.promptsPerStep)
            grpo_cfg = GRPOConfig.from_spec(spec, grpo_total)
            sft = SFTTrainer(model, tok, prep.examples, sft_cfg) if spec.sftWarmStart else None
            sft_total = sft.total_steps if sft else 0
            total = sft_total + grpo_total
            self.counts = {
                "examples": len(prep.examples),
                "dropped_too_long": len(prep.examples) - len(n_sft_prompt_ok),
                "sft_steps": sft_total,
                "grpo_steps": grpo_total,
            }
            every = spec.checkpointEvery
            t_run = time.perf_counter()

            # ---------------------------------------------------------------- SFT
            if sft is not None and (latest is None or latest.phase == "sft"):
                start = latest.step if latest is not None else 0
                opt = make_optimizer(model, spec.sftLearningRate, spec.weightDecay)
                sched = make_scheduler(opt, spec.lrSchedule, sft_total, spec.warmupRatio)
                if latest is not None and ts.get("optimizer"):
                    opt.load_state_dict(ts["optimizer"])
                    sched.load_state_dict(ts["scheduler"])
                self.state["sft_loss_curve"] = self.state["sft_loss_curve"][:start]
                for s in range(start, sft_total):
                    if self.cancel.is_set():
                        ckpt.save("sft", s, model, tok, opt, sched, self.state)
                        raise TrainCancelled(f"cancelled during SFT at step {s}/{sft_total}; checkpoint kept")
                    torch.manual_seed(step_seed(spec.seed, "sft", s))
                    m = sft.step(s, opt, sched)
                    m["step"] = float(s + 1)
                    self.state["sft_loss_curve"].append(round(m["sft_loss"], 5))
                    self.state["last_sft"] = m
                    tm.record_step("sft", m)
                    self._progress(s + 1, total, f"sft step {s + 1}/{sft_total} loss {m['sft_loss']:.4f}", {**m, "phase": 0.0})
                    if every and (s + 1) % every == 0 and s + 1 < sft_total:
                        ckpt.save("sft", s + 1, model, tok, opt, sched, self.state)
                del opt, sched

            # ---------------------------------------------------------------- GRPO
            if grpo_total > 0:
                resuming_grpo = latest is not None and latest.phase == "grpo"
                start = latest.step if latest is not None and resuming_grpo else 0
                if not resuming_grpo:
                    if sft is not None:  # before the SFT-done marker: a resumed GRPO run has it already
                        self._upload_sft_model(model, tok, ckpt)
                    # the GRPO starting policy: SFT-done marker, resume point and KL reference
                    ckpt.save("grpo", 0, model, tok, None, None, self.state)
                ref_model = None
                if spec.klCoef > 0:
                    if resuming_grpo and start > 0:
                        ref_model, _ = load_model(ckpt.fetch(REFERENCE_TAG) / "model")
                    else:
                        ref_model = copy.deepcopy(model)
                    ref_model.eval().requires_grad_(False)
                trainer = GRPOTrainer(model, tok, prep.examples, grpo_cfg, ref_model=ref_model)
                # each round restarts the optimizer from the previous checkpoint (paper); resume restores it
                opt = make_optimizer(model, spec.learningRate, spec.weightDecay)
                sched = make_scheduler(opt, spec.lrSchedule, grpo_cfg.optimizer_steps, spec.warmupRatio)
                if resuming_grpo and start > 0 and ts.get("optimizer"):
                    opt.load_state_dict(ts["optimizer"])
                    sched.load_state_dict(ts["scheduler"])
                self.state["reward_curve"] = self.state["reward_curve"][:start]
                self.state["tps"] = self.state["tps"][:start]
                for s in range(start, grpo_total):
                    if self.cancel.is_set():
                        ckpt.save("grpo", s, model, tok, opt, sched, self.state)
                        raise TrainCancelled(f"cancelled during GRPO at step {s}/{grpo_total}; checkpoint kept")
                    m = trainer.step(s, opt, sched, step_seed(spec.seed, "grpo", s))
                    self.state["reward_curve"].append(round(m["reward_mean"], 5))
                    self.state["tps"].append(round(m["tokens_per_second"], 2))
                    self.state["last_grpo"] = m
                    tm.record_step("grpo", m)
                    self._progress(
                        sft_total + s + 1,
                        total,
                        f"grpo step {s + 1}/{grpo_total} reward {m['reward_mean']:.3f}±{m['reward_std']:.3f} loss {m['loss']:.4f}",
                        {**m, "phase": 1.0},
                    )
                    if every and (s + 1) % every == 0 and s + 1 < grpo_total:
                        ckpt.save("grpo", s + 1, model, tok, opt, sched, self.state)
                del opt, sched

            # ---------------------------------------------------------------- final model
            if self.cancel.is_set():
                raise TrainCancelled("cancelled after the last step; checkpoint kept")
            ckpt.save("grpo" if grpo_total else "sft", grpo_total or sft_total, model, tok, None, None, self.state)
            final = self.workdir / f"final-{prep.key[:16]}"
            shutil.rmtree(final, ignore_errors=True)
            meta = {"run_id": prep.job.run_id, "round": prep.job.round, "key": prep.key, "base": prep.job.base_checkpoint_uri}
            save_model(model, tok, final, meta=meta)
            write_extras(final, ckpt.model_extras)
            model_uri = upload_dir(prep.store, f"{prep.prefix}/{MODEL}", final, meta=meta)
            shutil.rmtree(final, ignore_errors=True)
            return self._outcome(model_uri, time.perf_counter() - t_run)
        finally:
            torch.set_num_threads(prev_threads)

    def _upload_sft_model(self, model, tok, ckpt) -> None:
        """Commit the post-SFT policy at ``<output_prefix>/model_sft`` (``chain.SFT_MODEL``): the
        evaluate stage scores it next to the final model, so a report shows what GRPO added."""
        from looptool.services.trainer.checkpoints import write_extras
        from looptool.services.trainer.modeling import save_model

        prep = self.prep
        out = self.workdir / f"final-sft-{prep.key[:16]}"  # "final-": a killed run's leftover is cleaned up
        shutil.rmtree(out, ignore_errors=True)
        meta = {"run_id": prep.job.run_id, "round": prep.job.round, "key": prep.key, "phase": "sft"}
        save_model(model, tok, out, meta=meta)
        write_extras(out, ckpt.model_extras)
        upload_dir(prep.store, f"{prep.prefix}/{SFT_MODEL}", out, meta=meta)
        shutil.rmtree(out, ignore_errors=True)
        self.counts["sft_model"] = 1

    def _outcome(self, model_uri: str, seconds: float) -> dict[str, Any]:
        g, s = self.state["last_grpo"], self.state["last_sft"]
        curve = self.state["reward_curve"]
        metrics: dict[str, float] = {}
        for k in ("reward_mean", "reward_std", "accuracy", "format_ok", "loss", "kl", "entropy", "response_length"):
            if k in g:
                metrics[k] = float(g[k])
        if s:
            metrics["sft_loss"] = float(s["sft_loss"])
        if self.state["tps"]:
            metrics["tokens_per_second"] = sum(self.state["tps"]) / len(self.state["tps"])
        if curve:
            n = min(5, len(curve))
            metrics["reward_first5"] = sum(curve[:n]) / n
            metrics["reward_last5"] = sum(curve[-n:]) / n
        metrics["resumed_from_step"] = float(self.resumed_from["step"]) if self.resumed_from else 0.0
        metrics["seconds"] = seconds
        return {
            "checkpoint_uri": model_uri,
            "metrics": metrics,
            "counts": self.counts,
            "reward_curve": curve,
            "sft_loss_curve": self.state["sft_loss_curve"],
            "resumed_from": self.resumed_from,
        }


# ============================================================================ entry


# Temporaries a killed run leaves in the work directory: checkpoint saves (checkpoints.py),
# downloads (artifacts.fetch_dir), builtin:tiny builds, the final model before upload.
_LEFTOVERS = {".": (".tiny-", "final-"), "cache/ckpt": (".ckpt-", ".fetch-"), "cache/models": (".fetch-",)}


@contextmanager
def claim_workdir(wd: Path, key: str, emit: Emit) -> Iterator[bool]:
    """Hold the work directory for one run; yields whether it had to wait for another run.

    One run per run key at a time: a retried Job's pod that starts while its predecessor is still
    saving its SIGTERM checkpoint waits for it, then resumes from that checkpoint. The first run in
    an otherwise idle directory removes what killed runs left half-written, which on a persistent
    volume would otherwise pile up retry after retry until the volume is full."""
    import fcntl

    locks = wd / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / "workdir.lock", "a+") as shared, open(locks / f"run-{key[:16]}.lock", "a+") as own:
        waited = False
        try:
            fcntl.flock(own, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            waited = True
            emit(Progress(stage="train", message=f"waiting for another run of this job using {wd} to stop"))
            fcntl.flock(own, fcntl.LOCK_EX)
        try:
            fcntl.flock(shared, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # other runs are active here: their temporaries are live
        else:
            for sub, prefixes in _LEFTOVERS.items():
                d = wd / sub
                for p in d.iterdir() if d.is_dir() else ():
                    if p.name.startswith(prefixes):
                        log.info("removing %s left by an interrupted run", p)
                        if p.is_dir() and not p.is_symlink():
                            shutil.rmtree(p)
                        else:
                            p.unlink()
        fcntl.flock(shared, fcntl.LOCK_SH)  # released when the file closes (or the process dies)
        yield waited


def default_workdir(cfg: LoopToolConfig | None = None) -> Path:
    """``trainer.workdir`` of ``cfg`` (default: the environment's config, ``LOOPTOOL_TRAINER__WORKDIR``)."""
    return Path((cfg or load_config()).trainer.workdir).resolve()


def run_training(
    job: TrainJob,
    *,
    s3=None,
    workdir: str | os.PathLike[str] | None = None,
    emit: Emit | None = None,
    cancel: threading.Event | None = None,
    settings: TrainerSettings | None = None,
) -> StageResult:
    """Validate, (skip if done,) train, upload, write result.json. Raises InputError (bad input),
    TrainCancelled, TrainFailed or another exception (a bug / infrastructure failure).
    ``settings``: the config's ``trainer`` section (default: the environment's config)."""
    emit = emit or (lambda p: None)
    cancel = cancel or threading.Event()
    started = utcnow()
    prep = prepare(job, s3)
    cached = cached_result(prep)
    if cached is not None:
        emit(Progress(stage="train", done=1, total=1, message=f"already trained: {cached['checkpoint_uri']} (no-op)"))
        return result_to_stage(cached, cached=True)
    load_rows(prep)
    settings = settings or load_config().trainer
    wd = Path(workdir) if workdir else Path(settings.workdir).resolve()
    wd.mkdir(parents=True, exist_ok=True)
    with claim_workdir(wd, prep.key, emit) as waited:
        cached = cached_result(prep) if waited else None  # the run we waited for may have finished
        if cached is not None:
            emit(Progress(stage="train", done=1, total=1, message=f"already trained: {cached['checkpoint_uri']} (no-op)"))
            return result_to_stage(cached, cached=True)
        if job.config.backend == "verl":
            from looptool.services.trainer.verl_backend import VerlRun

            outcome = VerlRun(prep, emit, cancel, wd, s3, python=settings.verl_python or None).run()
        else:
            outcome = CpuRun(prep, emit, cancel, wd, s3, threads=settings.torch_threads).run()
        result = {
            "version": 1,
            "status": "succeeded",
            "run_id": job.run_id,
            "round": job.round,
            "key": prep.key,
            "backend": job.config.backend,
            "dataset": prep.dataset.ref.model_dump(),
            "base_checkpoint_uri": job.base_checkpoint_uri,
            "config": job.config.model_dump(mode="json"),
            "started_at": started,
            "finished_at": utcnow(),
            **outcome,
        }
        prep.store.put_bytes(f"{prep.prefix}/{RESULT}", json.dumps(result, indent=1).encode())
    emit(Progress(stage="train", done=1, total=1, message=f"model committed at {outcome['checkpoint_uri']}"))
    return result_to_stage(result, cached=False)


def execute(job: TrainJob, **kw: Any) -> StageResult:
    """``run_training`` with the run-level metrics (runs by final state, runs in progress)."""
    tm.ACTIVE.inc()
    try:
        result = run_training(job, **kw)
    except BaseException as exc:
        tm.RUNS.labels(classify(exc)[0]).inc()
        raise
    finally:
        tm.ACTIVE.dec()
    tm.RUNS.labels("cached" if result.metrics.get("cached") else "succeeded").inc()
    return result


def classify(exc: BaseException) -> tuple[str, str]:
    """(state, one-line reason) for an exception ending a run."""
    from looptool.shared.errors import UserError

    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, TrainCancelled):
        return "cancelled", first
    if isinstance(exc, UserError):
        return "invalid", first
    if isinstance(exc, TrainFailed):
        return "failed", first
    return "failed", f"training failed: {type(exc).__name__}: {first}"
