"""verl backend (GPU, production): config → launch → progress → FSDP→HF merge → upload.

Nothing here imports verl: verl runs as a subprocess (``python -m verl.trainer.main_ppo`` with Hydra
overrides), exactly what the Kubernetes Job's container runs. This module

1. checks the batch arithmetic verl would assert on, before any GPU time (``check_verl_spec``);
2. writes the training data as Parquet in verl's RLHF layout (the rows already are —
   ``shared/verl_format.py``) and a small reward module that points verl's
   ``reward.custom_reward_function`` at ``looptool.shared.reward.compute_score`` (the same reward
   the CPU trainer uses; reward options are bound in that file, not passed through Hydra);
3. builds the overrides (``build_overrides``; defaults = the paper's 8B recipe: GRPO, 16 rollouts
   per prompt, batch 128, prompt/response 4096/1024, lr 1e-6, clip 0.2/0.28, no KL, no entropy
   bonus, 2 epochs, vLLM rollouts, 8 GPUs per node) and the command (``launch_command``);
4. runs it, parsing verl's console metrics lines (``step:N - critic/score/mean:… - actor/pg_loss:…``)
   into Progress events and Prometheus metrics (``parse_metrics_line``, ``map_metrics``); cancel
   sends SIGTERM to the process group (verl keeps its last checkpoint);
5. merges the last FSDP actor checkpoint into a HF model directory with verl's model merger
   (``merger_command``: ``python -m verl.model_merger merge --backend fsdp --local_dir
   <ckpt>/global_step_N/actor --target_dir <dir>``) and uploads it to ``<output_prefix>/model``.

Resume: everything a run keeps lives under the trainer work directory (``--workdir`` of the Job
entrypoint / ``trainer.workdir``; in Kubernetes the round's PersistentVolumeClaim):
``verl/<run key>/checkpoints`` is ``trainer.default_local_dir`` with ``trainer.resume_mode=auto``,
so a retried Job continues from verl's last checkpoint (``trainer.save_freq`` = ``verl.saveFreq``;
the two newest are kept, bounding the volume), the base model is cached in ``cache/models`` and
the vLLM/Triton/HF caches in ``cache/`` (``launch_env``). A run whose verl process already finished
goes straight to the merge (``verl/<run key>/verl-finished.json``).

Settings: batch/LR/length knobs come from ``training.verl`` (``VerlSpec``); ``epochs`` (passes over
the data, ``trainer.total_epochs``), ``clipLow``, ``clipHigh``, ``klCoef``, ``temperature``,
``ppoEpochs``, ``gpus`` (0 → 8) and ``nnodes`` from ``training``;
``training.verl.overrides`` are appended verbatim (last wins in Hydra). ``sftWarmStart`` is a CPU
trainer feature; the verl backend starts GRPO from the base model (an 8B instruct model already
writes ``<tool_call>`` blocks) and logs that it ignored it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from looptool.services.trainer import metrics as tm
from looptool.services.trainer.common import TrainCancelled, TrainFailed
from looptool.shared.errors import InputError
from looptool.shared.logs import get_logger
from looptool.shared.loop.manifest import TrainingSpec
from looptool.shared.records import Progress
from looptool.shared.storage.artifacts import upload_dir

log = get_logger("looptool.trainer.verl")
DEFAULT_GPUS = 8
ENTRYPOINT = "verl.trainer.main_ppo"
MERGER = "verl.model_merger"
REWARD_FILE = "looptool_reward.py"
REWARD_FN = "compute_score"
FINISHED_FILE = "verl-finished.json"


def n_gpus(spec: TrainingSpec) -> int:
    return (spec.gpus or DEFAULT_GPUS) * spec.nnodes


def check_verl_spec(spec: TrainingSpec, train_rows: int | None = None) -> None:
    """The asserts verl makes at start-up (ray_trainer._validate_config), as one-line errors first."""
    v = spec.verl
    g = n_gpus(spec)
    n = v.rolloutN
    if n < 2:
        raise InputError("config.verl.rolloutN", f"is {n}; GRPO needs at least 2 rollouts per prompt")
    if (v.trainBatchSize * n) % g:
        raise InputError(
            "config.verl.trainBatchSize",
            f"trainBatchSize × rolloutN = {v.trainBatchSize} × {n} = {v.trainBatchSize * n} is not divisible by "
            f"the {g} GPUs (gpus × nnodes)",
        )
    if v.ppoMiniBatchSize > v.trainBatchSize or v.trainBatchSize % v.ppoMiniBatchSize:
        raise InputError(
            "config.verl.ppoMiniBatchSize",
            f"{v.ppoMiniBatchSize} must divide trainBatchSize {v.trainBatchSize} (prompts per actor update)",
        )
    if (v.ppoMiniBatchSize * n) % g:
        raise InputError(
            "config.verl.ppoMiniBatchSize",
            f"ppoMiniBatchSize × rolloutN = {v.ppoMiniBatchSize * n} sequences is not divisible by the {g} GPUs",
        )
    per_gpu = v.ppoMiniBatchSize * n // g
    if per_gpu % v.ppoMicroBatchSizePerGpu:
        raise InputError(
            "config.verl.ppoMicroBatchSizePerGpu",
            f"{v.ppoMicroBatchSizePerGpu} does not divide the {per_gpu} sequences each GPU gets per mini-batch",
        )
    if (spec.gpus or DEFAULT_GPUS) % v.tensorParallelSize:
        raise InputError(
            "config.verl.tensorParallelSize", f"{v.tensorParallelSize} does not divide the {spec.gpus or DEFAULT_GPUS} GPUs per node"
        )
    if spec.clipLow >= 1:
        raise InputError("config.clipLow", f"is {spec.clipLow}; the ratio lower bound 1 - clipLow must stay above 0")
    if train_rows is not None and train_rows < v.trainBatchSize:
        raise InputError(
            "config.verl.trainBatchSize",
            f"is {v.trainBatchSize} but the dataset has only {train_rows} training rows (verl drops the last partial batch)",
            "lower trainBatchSize or add data",
        )


def _hydra_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_hydra_value(x) for x in v) + "]"
    s = str(v)
    if re.fullmatch(r"[A-Za-z0-9_./\-]+", s) and s not in ("true", "false", "null"):
        return s
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def verl_settings(
    spec: TrainingSpec,
    *,
    model_path: str,
    train_file: str,
    val_file: str,
    reward_path: str,
    local_dir: str,
    project: str = "looptool",
    experiment: str = "round",
) -> dict[str, Any]:
    """verl's config as an ordered mapping of dotted keys (see ``verl/trainer/config/ppo_trainer.yaml``)."""
    v = spec.verl
    kl = spec.klCoef > 0
    return {
        "algorithm.adv_estimator": "grpo",
        "algorithm.norm_adv_by_std_in_grpo": True,
        "algorithm.use_kl_in_reward": False,
        "data.train_files": train_file,
        "data.val_files": val_file,
        "data.prompt_key": "prompt",
        "data.train_batch_size": v.trainBatchSize,
        "data.max_prompt_length": v.maxPromptLength,
        "data.max_response_length": v.maxResponseLength,
        "data.filter_overlong_prompts": True,
        "data.truncation": "error",
        "actor_rollout_ref.model.path": model_path,
        "actor_rollout_ref.model.use_remove_padding": True,
        "actor_rollout_ref.model.enable_gradient_checkpointing": True,
        "actor_rollout_ref.actor.optim.lr": v.learningRate,
        "actor_rollout_ref.actor.ppo_mini_batch_size": v.ppoMiniBatchSize,
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": v.ppoMicroBatchSizePerGpu,
        "actor_rollout_ref.actor.ppo_epochs": spec.ppoEpochs,
        "actor_rollout_ref.actor.clip_ratio_low": spec.clipLow,
        "actor_rollout_ref.actor.clip_ratio_high": spec.clipHigh,
        "actor_rollout_ref.actor.loss_agg_mode": "token-mean",
        "actor_rollout_ref.actor.entropy_coeff": 0,
        "actor_rollout_ref.actor.use_kl_loss": kl,
        "actor_rollout_ref.actor.kl_loss_coef": spec.klCoef if kl else 0.0,
        "actor_rollout_ref.actor.kl_loss_type": "low_var_kl",
        "actor_rollout_ref.rollout.name": "vllm",
        "actor_rollout_ref.rollout.n": v.rolloutN,
        "actor_rollout_ref.rollout.temperature": spec.temperature,
        "actor_rollout_ref.rollout.tensor_model_parallel_size": v.tensorParallelSize,
        "actor_rollout_ref.rollout.gpu_memory_utilization": v.gpuMemoryUtilization,
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": v.logProbMicroBatchSizePerGpu,
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": v.logProbMicroBatchSizePerGpu,
        # verl >= 0.7 reads reward.custom_reward_function (the top-level one is a legacy alias)
        "reward.custom_reward_function.path": reward_path,
        "reward.custom_reward_function.name": REWARD_FN,
        "trainer.n_gpus_per_node": spec.gpus or DEFAULT_GPUS,
        "trainer.nnodes": spec.nnodes,
        "trainer.total_epochs": spec.epochs,
        **({"trainer.total_training_steps": v.totalTrainingSteps} if v.totalTrainingSteps else {}),
        "trainer.project_name": project,
        "trainer.experiment_name": experiment,
        "trainer.default_local_dir": local_dir,
        "trainer.save_freq": v.saveFreq,
        # the one being written never costs the last complete one; older ones would fill the volume
        "trainer.max_actor_ckpt_to_keep": 2,
        "trainer.resume_mode": "auto",
        "trainer.test_freq": -1,
        "trainer.val_before_train": False,
        "trainer.critic_warmup": 0,
        "trainer.logger": ["console"],
    }


def build_overrides(spec: TrainingSpec, **paths: Any) -> list[str]:
    """``key=value`` Hydra overrides for ``main_ppo`` (user overrides from ``verl.overrides`` last)."""
    out = [f"{k}={_hydra_value(v)}" for k, v in verl_settings(spec, **paths).items()]
    return out + list(spec.verl.overrides)


def launch_command(overrides: list[str], python: str | None = None) -> list[str]:
    return [python or sys.executable, "-m", ENTRYPOINT, *overrides]


def merger_command(actor_dir: str | os.PathLike[str], target_dir: str | os.PathLike[str], python: str | None = None) -> list[str]:
    return [
        python or sys.executable,
        "-m",
        MERGER,
        "merge",
        "--backend",
        "fsdp",
        "--local_dir",
        str(actor_dir),
        "--target_dir",
        str(target_dir),
    ]


def launch_env(base: dict[str, str] | None = None, cache_dir: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """verl's environment; with ``cache_dir`` (the work directory's ``cache/``) the compile and hub
    caches live on the persistent volume too, so a retried Job neither refills the container's
    writable layer nor recompiles."""
    env = dict(os.environ if base is None else base)
    if cache_dir is not None:
        c = Path(cache_dir)
        env.setdefault("VLLM_CACHE_ROOT", str(c / "vllm"))
        env.setdefault("TRITON_CACHE_DIR", str(c / "triton"))
        env.setdefault("HF_HOME", str(c / "huggingface"))
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("HYDRA_FULL_ERROR", "1")
    env.setdefault("RAY_DEDUP_LOGS", "0")
    env.setdefault("TOKENIZERS_PARALLELISM", "true")
    env.setdefault("VLLM_LOGGING_LEVEL", "WARN")
    return env


# ------------------------------------------------------------------------------------ log parsing

_STEP_RE = re.compile(r"(?:^|[\s)\]])step:(\d+) - (.*)$")
_TOTAL_RE = re.compile(r"Total training steps:\s*(\d+)")
_WRAPPED_RE = re.compile(r"^(?:np\.|numpy\.)?[A-Za-z_][A-Za-z0-9_]*\(\s*([^,()]+)")


def _number(text: str) -> float | None:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    m = _WRAPPED_RE.match(text)  # np.float64(0.5), tensor(0.5, device='cuda:0')
    if m:
        try:
            return float(m.group(1))
        except ValueError:
            return None
    return None


def parse_metrics_line(line: str) -> tuple[int, dict[str, float]] | None:
    """verl's console logger line (``concat_dict_to_str``) → (step, {metric: value}); None otherwise.
    Tolerates Ray's ``(TaskRunner pid=…)`` prefix and numpy/tensor reprs of values."""
    m = _STEP_RE.search(line.rstrip("\r\n"))
    if not m:
        return None
    out: dict[str, float] = {}
    for part in m.group(2).split(" - "):
        key, sep, val = part.partition(":")
        if not sep or not key.strip():
            continue
        num = _number(val)
        if num is not None:
            out[key.strip()] = num
    return int(m.group(1)), out


def parse_total_steps(line: str) -> int | None:
    m = _TOTAL_RE.search(line)
    return int(m.group(1)) if m else None


def map_metrics(raw: dict[str, float], gpus: int) -> dict[str, float]:
    """verl metric names → ours (what Progress.metrics and Prometheus carry)."""

    def first(*keys: str) -> float | None:
        for k in keys:
            if k in raw:
                return raw[k]
        return None

    out: dict[str, float] = {}
    pairs = {
        "reward_mean": first("critic/score/mean", "critic/rewards/mean"),
        "reward_max": first("critic/score/max"),
        "reward_min": first("critic/score/min"),
        "loss": first("actor/pg_loss"),
        "kl": first("actor/kl_loss", "actor/ppo_kl"),
        "entropy": first("actor/entropy", "actor/entropy_loss"),
        "grad_norm": first("actor/grad_norm"),
        "clip_frac": first("actor/pg_clipfrac"),
        "lr": first("actor/lr"),
        "response_length": first("response_length/mean"),
        "step_seconds": first("timing_s/step"),
        "gen_seconds": first("timing_s/gen"),
        "epoch": first("training/epoch"),
    }
    out.update({k: v for k, v in pairs.items() if v is not None and not math.isnan(v)})
    tput = first("perf/throughput")
    if tput is not None:
        out["throughput_per_gpu"] = tput
        out["tokens_per_second"] = tput * gpus
    if "gen_seconds" in out and out.get("step_seconds"):
        out["gen_share"] = out["gen_seconds"] / out["step_seconds"]
    return out


def latest_actor_dir(local_dir: str | os.PathLike[str]) -> Path:
    """``<default_local_dir>/global_step_<N>/actor`` of verl's last saved checkpoint."""
    root = Path(local_dir)
    marker = root / "latest_checkpointed_iteration.txt"
    if marker.is_file():
        step = int(marker.read_text().strip())
    else:
        steps = [int(p.name.split("_")[-1]) for p in root.glob("global_step_*") if p.name.split("_")[-1].isdigit()]
        if not steps:
            raise TrainFailed(f"verl finished but wrote no checkpoint under {root}; check trainer.save_freq")
        step = max(steps)
    actor = root / f"global_step_{step}" / "actor"
    if not actor.is_dir():
        raise TrainFailed(f"verl checkpoint {actor} is missing")
    return actor


# ------------------------------------------------------------------------------------ files


def write_reward_module(path: str | os.PathLike[str], options: dict[str, Any]) -> Path:
    """The file verl's ``custom_reward_function.path`` loads: a thin shim over the shared reward."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(
        '"""Generated by LoopTool for verl\'s custom_reward_function: the shared tool-call reward."""\n'
        "from looptool.shared.reward import compute_score as _compute_score\n\n"
        f"REWARD_OPTIONS = {dict(sorted(options.items()))!r}\n\n\n"
        "# verl's reward managers add reward_router_address/reward_model_tokenizer when a reward model\n"
        "# is enabled; this rule reward does not use them. Other keywords are reward options.\n"
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None,\n"
        "                  reward_router_address=None, reward_model_tokenizer=None, **kwargs):\n"
        "    return _compute_score(data_source, solution_str, ground_truth, extra_info, **{**REWARD_OPTIONS, **kwargs})\n"
    )
    return p


def write_parquet(rows: list[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        table = pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputError("dataset", f"rows cannot be written as Parquet for verl ({str(exc).splitlines()[0]})") from None
    tmp = p.with_suffix(".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, p)
    return p


def split_rows(rows: list[dict[str, Any]], val_max: int = 256) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train rows, validation rows). Rows with another split are validation; else a slice of train."""
    train: list[dict[str, Any]] = []
    val: list[dict[str, Any]] = []
    for r in rows:
        split = str(((r.get("extra_info") or {}).get("split")) or "")
        (train if split in ("", "train") else val).append(r)
    return train, (val or train[: max(1, min(val_max, len(train)))])


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-")[:80] or "run"


class VerlRun:
    """Run verl for a prepared job (see ``runner.run_training``)."""

    def __init__(self, prep, emit, cancel: threading.Event, workdir: Path, s3=None, python: str | None = None):
        self.prep, self.emit, self.cancel, self.s3 = prep, emit, cancel, s3
        self.python = python or sys.executable  # run_training passes trainer.verl_python
        self.workdir = Path(workdir)
        self.dir = self.workdir / "verl" / prep.key[:16]
        self.spec: TrainingSpec = prep.job.config
        self.tail: deque[str] = deque(maxlen=60)
        self.reward_curve: list[float] = []
        self.last: dict[str, float] = {}
        self.total_steps = 0

    def plan(self) -> tuple[list[str], dict[str, Any]]:
        """Write data + reward module; return (command, info). No GPU needed (tests call this)."""
        from looptool.services.trainer.modeling import resolve_base

        rows = list(self.prep.dataset.iter_dicts())
        train, val = split_rows(rows)
        check_verl_spec(self.spec, len(train))
        train_file = write_parquet(train, self.dir / "data" / "train.parquet")
        val_file = write_parquet(val, self.dir / "data" / "val.parquet")
        reward = write_reward_module(self.dir / REWARD_FILE, {"partial_credit": self.spec.rewardPartialCredit})
        model_path = resolve_base(self.prep.job.base_checkpoint_uri, self.workdir / "cache" / "models", self.s3)
        job = self.prep.job
        experiment = _safe_name(f"round{job.round}-{job.run_id or self.prep.key[:12]}")
        overrides = build_overrides(
            self.spec,
            model_path=str(model_path),
            train_file=str(train_file),
            val_file=str(val_file),
            reward_path=str(reward),
            local_dir=str(self.dir / "checkpoints"),
            experiment=experiment,
        )
        info = {"train_rows": len(train), "val_rows": len(val), "local_dir": str(self.dir / "checkpoints")}
        (self.dir / "command.json").write_text(json.dumps({"command": launch_command(overrides, self.python), **info}, indent=1))
        return launch_command(overrides, self.python), info

    def _handle_line(self, line: str, logf) -> None:
        logf.write(line)
        self.tail.append(line.rstrip())
        total = parse_total_steps(line)
        if total:
            self.total_steps = total
        parsed = parse_metrics_line(line)
        if parsed is None:
            return
        step, raw = parsed
        m = map_metrics(raw, n_gpus(self.spec))
        m["step"] = float(step)
        self.last = m
        if "reward_mean" in m:
            self.reward_curve.append(round(m["reward_mean"], 5))
        tm.record_step("grpo", m)
        msg = f"verl step {step}/{self.total_steps or '?'}"
        if "reward_mean" in m:
            msg += f" reward {m['reward_mean']:.3f}"
        self.emit(Progress(stage="train", done=step, total=self.total_steps, message=msg, metrics=m))

    def _run(self, cmd: list[str], log_name: str, parse: bool) -> int:
        env = launch_env(cache_dir=self.workdir / "cache")
        logf = open(self.dir / log_name, "a", encoding="utf-8")
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env, start_new_session=True
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for ln in proc.stdout:
                lines.put(ln)
            lines.put(None)

        threading.Thread(target=pump, daemon=True, name="verl-log").start()
        try:
            while True:
                if self.cancel.is_set():
                    self._terminate(proc)
                    raise TrainCancelled(f"cancelled; verl checkpoints kept in {self.dir / 'checkpoints'}")
                try:
                    ln = lines.get(timeout=0.5)
                except queue.Empty:
                    continue
                if ln is None:
                    break
                if parse:
                    self._handle_line(ln, logf)
                else:
                    logf.write(ln)
                    self.tail.append(ln.rstrip())
            return proc.wait()
        finally:
            logf.close()
            if proc.poll() is None:
                self._terminate(proc)

    @staticmethod
    def _terminate(proc: subprocess.Popen, grace: float = 60.0) -> None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

    def _reason(self, what: str, rc: int) -> str:
        err = [l for l in self.tail if re.search(r"(Error|Exception|error:)", l)]
        last = (err or list(self.tail) or ["(no output)"])[-1].strip()
        return f"{what} exited with code {rc}: {last[:300]}"

    def run(self) -> dict[str, Any]:
        if importlib.util.find_spec("verl") is None and self.python == sys.executable:
            raise InputError(
                "config.backend", "is 'verl' but verl is not installed in this environment", "use the GPU image (pip install 'looptool[gpu]') or backend cpu"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.spec.sftWarmStart:
            log.info("sftWarmStart is a CPU-trainer feature; verl starts GRPO from the base model")
        t0 = time.perf_counter()
        cmd, info = self.plan()
        finished = self.dir / FINISHED_FILE
        if finished.is_file():
            # an earlier attempt trained to the end and died in the merge or upload: skip verl's
            # start-up (Ray, vLLM, loading the last checkpoint only to find nothing left to do)
            done = json.loads(finished.read_text())
            self.reward_curve, self.last = done["reward_curve"], done["last"]
            self.emit(Progress(stage="train", message="verl finished in an earlier attempt; merging its last checkpoint"))
        else:
            self.emit(Progress(stage="train", message=f"launching verl ({info['train_rows']} rows, {n_gpus(self.spec)} GPUs)"))
            log.info("launching verl", extra={"command": " ".join(cmd[:3]), "dir": str(self.dir)})
            rc = self._run(cmd, "verl.log", parse=True)
            if rc != 0:
                raise TrainFailed(self._reason("verl trainer", rc))
            tmp = finished.with_suffix(".tmp")
            tmp.write_text(json.dumps({"reward_curve": self.reward_curve, "last": self.last}))
            os.replace(tmp, finished)
        actor = latest_actor_dir(info["local_dir"])
        target = self.dir / "hf_model"
        self.emit(Progress(stage="train", message=f"merging {actor} into a HF model"))
        rc = self._run(merger_command(actor, target, self.python), "merge.log", parse=False)
        if rc != 0:
            raise TrainFailed(self._reason("verl model merger", rc))
        if not (target / "config.json").is_file():
            raise TrainFailed(f"verl model merger wrote no config.json into {target}")
        prep = self.prep
        meta = {"run_id": prep.job.run_id, "round": prep.job.round, "key": prep.key, "base": prep.job.base_checkpoint_uri, "verl_checkpoint": str(actor)}
        uri = upload_dir(prep.store, f"{prep.prefix}/model", target, meta=meta)
        m = self.last
        metrics: dict[str, float] = {k: m[k] for k in ("reward_mean", "loss", "kl", "entropy", "response_length", "tokens_per_second") if k in m}
        if self.reward_curve:
            k = min(5, len(self.reward_curve))
            metrics["reward_first5"] = sum(self.reward_curve[:k]) / k
            metrics["reward_last5"] = sum(self.reward_curve[-k:]) / k
        metrics["seconds"] = time.perf_counter() - t0
        return {
            "checkpoint_uri": uri,
            "metrics": metrics,
            "counts": {"examples": info["train_rows"], "grpo_steps": int(m.get("step", 0))},
            "reward_curve": self.reward_curve,
            "sft_loss_curve": [],
            "resumed_from": None,
        }
