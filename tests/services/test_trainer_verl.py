"""verl backend without a GPU: config/overrides, launch and merger commands, log parsing, batch checks,
the reward shim verl loads, and the whole subprocess path against a stand-in for verl."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from looptool.services.trainer import verl_backend as vb
from looptool.shared.errors import InputError
from looptool.shared.loop.manifest import TrainingSpec

PATHS = dict(
    model_path="/models/qwen3-8b",
    train_file="/w/data/train.parquet",
    val_file="/w/data/val.parquet",
    reward_path="/w/looptool_reward.py",
    local_dir="/w/checkpoints",
    experiment="round1-r1",
)


def _overrides(spec: TrainingSpec) -> dict[str, str]:
    return dict(o.split("=", 1) for o in vb.build_overrides(spec, **PATHS))


def test_default_overrides_are_the_paper_recipe():
    o = _overrides(TrainingSpec(backend="verl", gpus=8))
    expected = {
        "algorithm.adv_estimator": "grpo",
        "algorithm.use_kl_in_reward": "false",
        "data.train_files": "/w/data/train.parquet",
        "data.val_files": "/w/data/val.parquet",
        "data.train_batch_size": "128",
        "data.max_prompt_length": "4096",
        "data.max_response_length": "1024",
        "actor_rollout_ref.model.path": "/models/qwen3-8b",
        "actor_rollout_ref.actor.optim.lr": "1e-06",
        "actor_rollout_ref.actor.clip_ratio_low": "0.2",
        "actor_rollout_ref.actor.clip_ratio_high": "0.28",
        "actor_rollout_ref.actor.use_kl_loss": "false",
        "actor_rollout_ref.actor.entropy_coeff": "0",
        "actor_rollout_ref.actor.loss_agg_mode": "token-mean",
        "actor_rollout_ref.actor.ppo_mini_batch_size": "32",
        "actor_rollout_ref.rollout.name": "vllm",
        "actor_rollout_ref.rollout.n": "16",
        "actor_rollout_ref.rollout.temperature": "1.0",
        "reward.custom_reward_function.path": "/w/looptool_reward.py",
        "reward.custom_reward_function.name": "compute_score",
        "trainer.n_gpus_per_node": "8",
        "trainer.nnodes": "1",
        "trainer.total_epochs": "2",
        "trainer.project_name": "looptool",
        "trainer.experiment_name": "round1-r1",
        "trainer.default_local_dir": "/w/checkpoints",
        "trainer.resume_mode": "auto",
        "trainer.max_actor_ckpt_to_keep": "2",
        "trainer.logger": "[console]",
    }
    for k, v in expected.items():
        assert o[k] == v, k
    assert "trainer.total_training_steps" not in o


def test_overrides_follow_the_spec_and_quote_odd_values():
    spec = TrainingSpec(
        backend="verl",
        gpus=4,
        nnodes=2,
        klCoef=0.001,
        clipHigh=0.3,
        temperature=0.9,
        verl={"trainBatchSize": 64, "rolloutN": 8, "totalTrainingSteps": 50, "overrides": ["trainer.logger=[console,wandb]"]},
    )
    o = vb.build_overrides(spec, **{**PATHS, "model_path": "/models/my model=v2"})
    d = dict(x.split("=", 1) for x in o)
    assert d["actor_rollout_ref.actor.use_kl_loss"] == "true"
    assert d["actor_rollout_ref.actor.kl_loss_coef"] == "0.001"
    assert d["actor_rollout_ref.actor.kl_loss_type"] == "low_var_kl"  # the k3 estimator
    assert d["actor_rollout_ref.actor.clip_ratio_high"] == "0.3"
    assert d["actor_rollout_ref.rollout.temperature"] == "0.9"
    assert d["trainer.n_gpus_per_node"] == "4" and d["trainer.nnodes"] == "2"
    assert d["trainer.total_training_steps"] == "50"
    assert d["actor_rollout_ref.model.path"] == "'/models/my model=v2'"
    assert o[-1] == "trainer.logger=[console,wandb]"  # user overrides last: they win


def test_launch_and_merger_commands():
    cmd = vb.launch_command(["a=1", "b=2"], python="/opt/py")
    assert cmd == ["/opt/py", "-m", "verl.trainer.main_ppo", "a=1", "b=2"]
    m = vb.merger_command("/w/checkpoints/global_step_9/actor", "/w/hf", python="/opt/py")
    assert m == [
        "/opt/py", "-m", "verl.model_merger", "merge", "--backend", "fsdp",
        "--local_dir", "/w/checkpoints/global_step_9/actor", "--target_dir", "/w/hf",
    ]  # fmt: skip
    env = vb.launch_env({})
    assert env["PYTHONUNBUFFERED"] == "1" and env["HYDRA_FULL_ERROR"] == "1"


def test_log_parser():
    line = (
        "(TaskRunner pid=2211) step:12 - global_seqlen/mean:5120.0 - actor/entropy:np.float64(0.41) - "
        "actor/pg_loss:-0.0123 - actor/kl_loss:0.0004 - actor/pg_clipfrac:0.002 - actor/grad_norm:0.31 - "
        "actor/lr:1e-06 - critic/score/mean:0.6875 - critic/score/max:1.0 - critic/score/min:0.0 - "
        "response_length/mean:87.5 - timing_s/gen:31.2 - timing_s/step:80.0 - perf/throughput:1500.0 - "
        "val-aux/x:nan - weird:tensor(0.5, device='cuda:0')\n"
    )
    step, raw = vb.parse_metrics_line(line)
    assert step == 12
    assert raw["critic/score/mean"] == 0.6875 and raw["actor/entropy"] == 0.41 and raw["weird"] == 0.5
    m = vb.map_metrics(raw, gpus=8)
    assert m["reward_mean"] == 0.6875 and m["loss"] == -0.0123 and m["kl"] == 0.0004
    assert m["tokens_per_second"] == 1500.0 * 8 and m["gen_share"] == pytest.approx(31.2 / 80.0)
    assert vb.parse_metrics_line("step:3 - critic/score/mean:0.5")[0] == 3
    assert vb.parse_metrics_line("epoch 1, step 3") is None
    assert vb.parse_metrics_line("INFO Training Progress: 10%") is None
    assert vb.parse_total_steps("(TaskRunner pid=1) Total training steps: 288") == 288
    # without kl_loss (KL off) verl still reports the PPO KL
    assert vb.map_metrics({"actor/ppo_kl": 0.01}, 8)["kl"] == 0.01


def _spec(**verl):
    return TrainingSpec(backend="verl", gpus=8, verl=verl)


def test_batch_checks_name_the_field():
    vb.check_verl_spec(_spec())  # the defaults fit 8 GPUs
    with pytest.raises(InputError, match=r"config.verl.trainBatchSize: .*not divisible by the 6 GPUs"):
        vb.check_verl_spec(TrainingSpec(backend="verl", gpus=3, nnodes=2, verl={"trainBatchSize": 1, "rolloutN": 2}))
    with pytest.raises(InputError, match=r"config.verl.ppoMiniBatchSize: 48 must divide trainBatchSize 128"):
        vb.check_verl_spec(_spec(ppoMiniBatchSize=48))
    with pytest.raises(InputError, match=r"config.verl.ppoMiniBatchSize: 256 must divide"):
        vb.check_verl_spec(_spec(ppoMiniBatchSize=256))
    with pytest.raises(InputError, match=r"config.verl.ppoMicroBatchSizePerGpu: 3 does not divide the 64 sequences"):
        vb.check_verl_spec(_spec(ppoMicroBatchSizePerGpu=3))
    with pytest.raises(InputError, match=r"config.verl.tensorParallelSize: 3 does not divide"):
        vb.check_verl_spec(_spec(tensorParallelSize=3))
    with pytest.raises(InputError, match=r"config.verl.trainBatchSize: is 128 but the dataset has only 10 training rows"):
        vb.check_verl_spec(_spec(), train_rows=10)
    with pytest.raises(Exception, match="rolloutN"):
        _spec(rolloutN=1)


def test_reward_shim_is_what_verl_loads(tmp_path):
    from looptool.services.trainer.toy import toy_rows

    path = vb.write_reward_module(tmp_path / "r.py", {"partial_credit": True})
    spec = importlib.util.spec_from_file_location("custom_module", path)  # as verl's get_custom_reward_fn
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    row = toy_rows(1)[0]
    good = mod.compute_score(row["data_source"], row["extra_info"]["target"], row["reward_model"]["ground_truth"], row["extra_info"])
    assert good["score"] == 1.0 and good["correct"] == 1.0
    wrong = row["extra_info"]["target"].replace("get_", "got_")
    partial = mod.compute_score(data_source="looptool", solution_str=wrong, ground_truth=row["reward_model"]["ground_truth"])
    assert 0 < partial["score"] < 1  # partial credit bound in the shim


# ---------------------------------------------------------------------------------- stand-in verl

FAKE = r'''
import json, os, sys, time, shutil, importlib.util
args = sys.argv[1:]
assert args[0] == "-m", args
mode = os.environ.get("FAKE_VERL_MODE", "ok")
if args[1] == "verl.trainer.main_ppo":
    o = dict(a.split("=", 1) for a in args[2:])
    json.dump(o, open(os.environ["FAKE_VERL_RECORD"], "w"))
    import pyarrow.parquet as pq
    rows = pq.read_table(o["data.train_files"]).to_pylist()
    spec = importlib.util.spec_from_file_location("custom_module", o["reward.custom_reward_function.path"])
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    fn = getattr(mod, o["reward.custom_reward_function.name"])
    scores = [fn(data_source=r["data_source"], solution_str=r["extra_info"]["target"], ground_truth=r["reward_model"]["ground_truth"],
                 extra_info={**r["extra_info"], "num_turns": None, "rollout_reward_scores": {}})["score"] for r in rows]
    with open(os.environ["FAKE_VERL_RECORD"] + ".launches", "a") as f:
        f.write("1")
    assert scores and all(s == 1.0 for s in scores), scores
    print("Total training steps: 2", flush=True)
    if mode == "hang":
        print("(TaskRunner pid=7) step:1 - critic/score/mean:np.float64(0.25) - actor/pg_loss:0.1", flush=True)
        time.sleep(300)
    if mode == "oom":
        print("Traceback (most recent call last):", flush=True)
        print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", flush=True)
        sys.exit(1)
    for step, r in ((1, 0.25), (2, 0.5)):
        print(f"(TaskRunner pid=7) step:{step} - critic/score/mean:np.float64({r}) - actor/pg_loss:-0.01 - "
              f"actor/kl_loss:0.0 - perf/throughput:1000.0 - timing_s/step:2.0 - timing_s/gen:1.5", flush=True)
    d = o["trainer.default_local_dir"]
    os.makedirs(f"{d}/global_step_2/actor", exist_ok=True)
    open(f"{d}/global_step_2/actor/model_world_size_1_rank_0.pt", "w").write("fsdp shard")
    open(f"{d}/latest_checkpointed_iteration.txt", "w").write("2")
elif args[1] == "verl.model_merger":
    if os.environ.get("FAKE_MERGE_FAIL"):
        print("RuntimeError: merge failed", flush=True)
        sys.exit(1)
    a = args[2:]
    assert a[:3] == ["merge", "--backend", "fsdp"], a
    local, target = a[a.index("--local_dir") + 1], a[a.index("--target_dir") + 1]
    assert local.endswith("global_step_2/actor") and os.path.isdir(local), local
    shutil.copytree(os.environ["FAKE_HF_MODEL"], target, dirs_exist_ok=True)
    print("Saving model to", target)
'''


@pytest.fixture
def fake_verl(tmp_path, monkeypatch):
    script = tmp_path / "fake-python"
    script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(FAKE))
    script.chmod(0o755)
    hf = tmp_path / "hf-src"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"architectures": ["Qwen3ForCausalLM"]}))
    (hf / "model.safetensors").write_bytes(b"weights")
    monkeypatch.setenv("LOOPTOOL_TRAINER__VERL_PYTHON", str(script))
    monkeypatch.setenv("FAKE_HF_MODEL", str(hf))
    monkeypatch.setenv("FAKE_VERL_RECORD", str(tmp_path / "overrides.json"))
    return tmp_path


def _verl_job(tmp_path: Path, **verl):
    from looptool.services.trainer.runner import parse_job
    from looptool.services.trainer.toy import commit_toy_dataset

    from looptool.shared.storage import open_dataset

    uri = (tmp_path / "ds").as_uri()
    ref = open_dataset(uri).ref if (tmp_path / "ds" / "_manifest.json").exists() else commit_toy_dataset(uri, 6)
    base = tmp_path / "base-model"
    base.mkdir(exist_ok=True)
    (base / "config.json").write_text("{}")
    cfg = {"backend": "verl", "gpus": 2, "verl": {"trainBatchSize": 4, "rolloutN": 2, "ppoMiniBatchSize": 2, "ppoMicroBatchSizePerGpu": 1, "tensorParallelSize": 1, **verl}}
    return parse_job({"run_id": "v1", "round": 3, "dataset": ref.model_dump(), "base_checkpoint_uri": str(base), "output_prefix": (tmp_path / "out").as_uri(), "config": cfg})


def test_verl_run_end_to_end_with_stand_in(fake_verl):
    from looptool.services.trainer.runner import run_training

    tmp = fake_verl
    events = []
    result = run_training(_verl_job(tmp), workdir=tmp / "wd", emit=events.append)
    o = json.loads((tmp / "overrides.json").read_text())
    assert o["actor_rollout_ref.model.path"] == str(tmp / "base-model")
    assert o["trainer.n_gpus_per_node"] == "2" and o["actor_rollout_ref.rollout.n"] == "2"
    assert o["trainer.experiment_name"] == "round3-v1"
    steps = [e for e in events if e.metrics.get("step")]
    assert [e.done for e in steps] == [1, 2] and all(e.total == 2 for e in steps)
    assert steps[0].metrics["reward_mean"] == 0.25 and steps[1].metrics["tokens_per_second"] == 2000.0
    assert result.checkpoint_uri == (tmp / "out" / "model").as_uri()
    assert (tmp / "out" / "model" / "files" / "config.json").exists()
    assert result.metrics["reward_step_1"] == 0.25 and result.metrics["reward_step_2"] == 0.5
    saved = json.loads((tmp / "out" / "result.json").read_text())
    assert saved["backend"] == "verl" and saved["reward_curve"] == [0.25, 0.5]
    import pyarrow.parquet as pq

    table = pq.read_table(o["data.train_files"])
    assert set(table.column_names) >= {"data_source", "prompt", "ability", "reward_model", "extra_info"}
    assert table.num_rows == 6 and isinstance(table.to_pylist()[0]["prompt"], list)
    # idempotent: the same job again does not launch verl
    os.remove(tmp / "overrides.json")
    again = run_training(_verl_job(tmp), workdir=tmp / "wd")
    assert again.metrics["cached"] == 1.0 and not (tmp / "overrides.json").exists()


def test_verl_failure_is_one_line(fake_verl, monkeypatch):
    from looptool.services.trainer.common import TrainFailed
    from looptool.services.trainer.runner import classify, run_training

    monkeypatch.setenv("FAKE_VERL_MODE", "oom")
    with pytest.raises(TrainFailed) as ei:
        run_training(_verl_job(fake_verl), workdir=fake_verl / "wd")
    state, reason = classify(ei.value)
    assert state == "failed" and "\n" not in reason
    assert reason.startswith("verl trainer exited with code 1: torch.OutOfMemoryError: CUDA out of memory")


def test_verl_cancel_terminates_the_process_group(fake_verl, monkeypatch):
    from looptool.services.trainer.common import TrainCancelled
    from looptool.services.trainer.runner import run_training

    monkeypatch.setenv("FAKE_VERL_MODE", "hang")
    cancel = threading.Event()

    def emit(p):
        if p.metrics.get("step") == 1.0:
            cancel.set()

    t0 = time.monotonic()
    with pytest.raises(TrainCancelled, match="verl checkpoints kept"):
        run_training(_verl_job(fake_verl), workdir=fake_verl / "wd", emit=emit, cancel=cancel)
    assert time.monotonic() - t0 < 60


def test_verl_too_few_rows_for_the_batch(fake_verl):
    from looptool.services.trainer.runner import run_training

    with pytest.raises(InputError, match="config.verl.trainBatchSize: is 8 but the dataset has only 6 training rows"):
        run_training(_verl_job(fake_verl, trainBatchSize=8, ppoMiniBatchSize=4), workdir=fake_verl / "wd")
    assert not (fake_verl / "overrides.json").exists()  # verl never started


def test_a_retried_job_keeps_verls_checkpoints_and_skips_a_finished_verl(fake_verl, monkeypatch):
    """Killed in the merge (or upload) after verl finished: the retry on the same work directory (the
    round's PVC) merges verl's last checkpoint without training again."""
    from looptool.services.trainer.common import TrainFailed
    from looptool.services.trainer.runner import run_training

    tmp = fake_verl
    monkeypatch.setenv("FAKE_MERGE_FAIL", "1")
    with pytest.raises(TrainFailed, match="verl model merger exited with code 1"):
        run_training(_verl_job(tmp), workdir=tmp / "wd")
    o = json.loads((tmp / "overrides.json").read_text())
    assert Path(o["trainer.default_local_dir"]).is_relative_to(tmp / "wd") and o["trainer.resume_mode"] == "auto"
    assert (tmp / "overrides.json.launches").read_text() == "1"
    monkeypatch.delenv("FAKE_MERGE_FAIL")
    events = []
    result = run_training(_verl_job(tmp), workdir=tmp / "wd", emit=events.append)
    assert (tmp / "overrides.json.launches").read_text() == "1"  # verl did not run again
    assert any("verl finished in an earlier attempt" in e.message for e in events)
    assert result.checkpoint_uri == (tmp / "out" / "model").as_uri()
    assert json.loads((tmp / "out" / "result.json").read_text())["reward_curve"] == [0.25, 0.5]
