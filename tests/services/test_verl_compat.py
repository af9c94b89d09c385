"""What the verl backend generates, checked against verl itself (the version the GPU trainer lock pins).

A side environment (tests/support/verl_env.py: verl's wheel + hydra-core + omegaconf, no torch, no GPU)
composes verl's own ``ppo_trainer.yaml`` with exactly the overrides ``build_overrides`` produces,
parses our model-merger argv with verl's own parser, and reads from verl's source how its reward
manager calls the custom reward function (tests/support/verl_probe.py). Built once per verl version
(~20 s, PyPI), then cached in .looptool/verl-env/.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest

from looptool.services.trainer import verl_backend as vb
from looptool.shared.loop.manifest import ManifestError, TrainingSpec, parse_round

from support.verl_env import VerlEnv, verl_env

PATHS = dict(
    model_path="/work/cache/models/qwen3-8b",
    train_file="/work/verl/k/data/train.parquet",
    val_file="/work/verl/k/data/val.parquet",
    reward_path="/work/verl/k/looptool_reward.py",
    local_dir="/work/verl/k/checkpoints",
    experiment="round1-r1",
)

# representative specs: the paper default; custom verl.overrides and KL/length/step settings; multi-node
# multi-GPU with tensor parallelism; one epoch and a step limit
SPECS = {
    "default": TrainingSpec(backend="verl", gpus=8),
    "custom": TrainingSpec(
        backend="verl",
        gpus=8,
        klCoef=0.001,
        clipHigh=0.3,
        temperature=0.9,
        ppoEpochs=2,
        verl={
            "trainBatchSize": 64,
            "rolloutN": 8,
            "maxResponseLength": 2048,
            "gpuMemoryUtilization": 0.5,
            "overrides": ["trainer.logger=[console,wandb]", "actor_rollout_ref.rollout.top_p=0.95", "trainer.max_actor_ckpt_to_keep=3"],
        },
    ),
    "multi_gpu_tp": TrainingSpec(
        backend="verl",
        gpus=4,
        nnodes=2,
        verl={"tensorParallelSize": 4, "ppoMicroBatchSizePerGpu": 2, "logProbMicroBatchSizePerGpu": 16, "saveFreq": 5},
    ),
    "steps": TrainingSpec(backend="verl", gpus=8, epochs=1, verl={"totalTrainingSteps": 50}),
}


@pytest.fixture(scope="module")
def verl() -> VerlEnv:
    return verl_env()


def type_problems(report: dict[str, Any], expected: dict[str, Any], typed: set[str] | None = None) -> list[str]:
    """Keys whose composed value is not what we meant, or (for ``typed`` keys, default all) whose type
    differs from verl's default (a null or mandatory default accepts any type; an int where verl
    has a float is fine)."""
    problems = []
    for key, want in expected.items():
        got, default = report["values"].get(key), report["defaults"].get(key)
        if got is None or default is None:
            problems.append(f"{key}: not in verl's config")
            continue
        if got["value"] != want or type(got["value"]) is not type(want):
            problems.append(f"{key}: composed {got['value']!r} ({got['type']}), we meant {want!r}")
        dt = default["type"]
        if typed is not None and key not in typed:
            continue
        if dt not in ("NoneType", "missing") and got["type"] != dt and not (dt == "float" and got["type"] == "int"):
            problems.append(f"{key}: {got['type']} where verl's default is {dt} ({default['value']!r})")
    return problems


def compose(verl: VerlEnv, overrides: list[str], keys: list[str]) -> dict[str, Any]:
    return verl.probe("compose", {"overrides": overrides, "keys": keys})


def user_override_values(spec: TrainingSpec) -> dict[str, Any]:
    import yaml

    out = {}
    for o in spec.verl.overrides:
        k, _, v = o.partition("=")
        out[k] = yaml.safe_load(v.replace(",", ", ")) if v.startswith("[") else yaml.safe_load(v)
    return out


@pytest.mark.parametrize("name", sorted(SPECS))
def test_overrides_compose_with_verls_own_config(verl, name):
    spec = SPECS[name]
    settings = vb.verl_settings(spec, **PATHS)
    user = user_override_values(spec)
    expected = {**settings, **user}  # user overrides come last and win
    report = compose(verl, vb.build_overrides(spec, **PATHS), sorted(expected))
    assert report["struct"], "verl's config should compose in struct mode (unknown keys are errors)"
    assert "error" not in report, f"verl {verl.version} refuses our overrides: {report.get('error')}"
    # types are ours to get right; a user's override (verl writes top_p: 1 for a float) only has to land
    assert type_problems(report, expected, typed=set(settings) - set(user)) == []
    assert report["resolves"] is True


def test_settings_land_where_verl_reads_them(verl):
    spec = TrainingSpec(backend="verl", gpus=4, nnodes=2, epochs=3, verl={"tensorParallelSize": 4})
    v = compose(verl, vb.build_overrides(spec, **PATHS), [
        "trainer.total_epochs", "trainer.total_training_steps", "trainer.n_gpus_per_node", "trainer.nnodes",
        "actor_rollout_ref.rollout.tensor_model_parallel_size", "reward.custom_reward_function.path",
        "reward.custom_reward_function.name", "algorithm.adv_estimator",
    ])["values"]  # fmt: skip
    assert v["trainer.total_epochs"]["value"] == 3 and v["trainer.total_training_steps"]["value"] is None
    assert v["trainer.n_gpus_per_node"]["value"] == 4 and v["trainer.nnodes"]["value"] == 2
    assert v["actor_rollout_ref.rollout.tensor_model_parallel_size"]["value"] == 4
    assert v["reward.custom_reward_function.path"]["value"] == PATHS["reward_path"]
    assert v["reward.custom_reward_function.name"]["value"] == "compute_score"
    assert v["algorithm.adv_estimator"]["value"] == "grpo"
    entry = verl.probe("entry")
    assert entry["hydra_main"] == {"config_path": "config", "config_name": "ppo_trainer"}  # what main_ppo composes
    assert entry["reads_reward_custom_reward_function"]  # verl loads the reward from reward.custom_reward_function


def test_the_check_fails_on_a_misspelled_key_or_a_wrong_type(verl):
    good = vb.build_overrides(SPECS["default"], **PATHS)
    typo = [o.replace("trainer.total_epochs=", "trainer.total_epoch=") for o in good]
    report = compose(verl, typo, ["trainer.total_epochs"])
    assert "Could not override 'trainer.total_epoch'" in report["error"]
    report = compose(verl, [*good, "data.train_batch_size='128'"], ["data.train_batch_size"])
    assert type_problems(report, {"data.train_batch_size": 128}) == [
        "data.train_batch_size: composed '128' (str), we meant 128",
        "data.train_batch_size: str where verl's default is int (1024)",
    ]


def test_epochs_is_verls_total_epochs_and_changes_the_run():
    one = dict(o.split("=", 1) for o in vb.build_overrides(TrainingSpec(backend="verl", epochs=1), **PATHS))
    two = dict(o.split("=", 1) for o in vb.build_overrides(TrainingSpec(backend="verl"), **PATHS))
    assert one["trainer.total_epochs"] == "1" and two["trainer.total_epochs"] == "2"  # paper: 2 per iteration


def test_a_manifest_with_the_removed_total_epochs_fails_in_one_line():
    doc = {
        "apiVersion": "looptool.io/v1alpha1", "kind": "LoopRound", "metadata": {"name": "r"},
        "spec": {"baseModel": {"builtin": "tiny"}, "toolset": {"bfcl": {}}, "training": {"backend": "verl", "gpus": 8, "verl": {"totalEpochs": 3}}},
    }  # fmt: skip
    with pytest.raises(ManifestError) as ei:
        parse_round(doc)
    msg = str(ei.value)
    assert "\n" not in msg and "spec.training.verl" in msg
    assert "totalEpochs was removed: set training.epochs instead" in msg


def test_merger_argv_parses_with_verls_parser(verl, tmp_path):
    actor, target = tmp_path / "checkpoints" / "global_step_9" / "actor", tmp_path / "hf"
    argv = vb.merger_command(actor, target, python="/opt/py")
    assert argv[:3] == ["/opt/py", "-m", vb.MERGER]
    out = verl.probe("merger", {"argv": argv[3:]})
    assert out["main"], f"{vb.MERGER} has no __main__ in verl {verl.version}"
    cfg = out["config"]
    assert (cfg["operation"], cfg["backend"], cfg["local_dir"], cfg["target_dir"]) == ("merge", "fsdp", str(actor), str(target))
    assert cfg["hf_model_config_path"] == str(actor / "huggingface") and not cfg["hf_upload"]
    # and the parser is strict: a misspelled flag is refused
    bad = verl.probe("merger", {"argv": [a.replace("--local_dir", "--local-dir") for a in argv[3:]]})
    assert "unrecognized arguments: --local-dir" in bad["error"]


def _load_like_verl(path: Path):
    """verl.utils.import_utils.load_module: a file spec under a hashed name, not put in sys.modules."""
    spec = importlib.util.spec_from_file_location(f"custom_module_{hash(os.path.abspath(path))}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_reward_module_takes_the_call_verls_reward_manager_makes(verl, tmp_path):
    from looptool.services.trainer.toy import toy_rows

    call = verl.probe("reward")
    assert "error" not in call, call
    path = vb.write_reward_module(tmp_path / vb.REWARD_FILE, {"partial_credit": False})
    fn = getattr(_load_like_verl(path), vb.REWARD_FN)
    row = toy_rows(1)[0]
    known = {"data_source": row["data_source"], "ground_truth": row["reward_model"]["ground_truth"]}
    # what verl adds to extra_info, and the keyword dicts it splats in (with a reward model enabled)
    extra_info = {**row["extra_info"], **{k: None for k in call["extra_info_keys"]}}
    splat = {k: object() for keys in call["splats"].values() for k in keys}
    for keywords in call["keywords"]:
        unknown = set(keywords) - {*known, "solution_str", "extra_info"}
        assert not unknown, f"verl {verl.version} ({call['file']}) passes {sorted(unknown)} to compute_score"
        for answer, score in ((row["extra_info"]["target"], 1.0), ("no call at all", 0.0)):
            kwargs = {**known, "solution_str": answer, "extra_info": dict(extra_info)}
            result = fn(**{k: kwargs[k] for k in keywords}, **splat)
            # verl reads result["score"] and averages every key into metrics: all numbers
            assert set(call["result_keys"]) <= set(result) and result["score"] == score
            assert all(type(v) in (int, float) for v in result.values()), result


def test_checkpoints_and_caches_live_in_the_work_directory(verl, tmp_path, monkeypatch):
    """A retried Job on the same work directory (the round's PVC) resumes: verl's checkpoint dir is
    under it, resume_mode is auto, and the composed config agrees."""
    from looptool.services.trainer.runner import parse_job, prepare, load_rows
    from looptool.services.trainer.toy import commit_toy_dataset

    ref = commit_toy_dataset((tmp_path / "ds").as_uri(), 8)
    base = tmp_path / "base-model"
    base.mkdir()
    (base / "config.json").write_text("{}")
    cfg = {"backend": "verl", "gpus": 2, "verl": {"trainBatchSize": 4, "rolloutN": 2, "ppoMiniBatchSize": 2, "ppoMicroBatchSizePerGpu": 1, "tensorParallelSize": 1}}
    job = parse_job({"run_id": "v1", "round": 1, "dataset": ref.model_dump(), "base_checkpoint_uri": str(base), "output_prefix": (tmp_path / "out").as_uri(), "config": cfg})
    prep = prepare(job)
    load_rows(prep)
    workdir = tmp_path / "pvc"
    cmd, info = vb.VerlRun(prep, lambda p: None, None, workdir, python="/opt/py").plan()
    keys = ["trainer.default_local_dir", "trainer.resume_mode", "trainer.default_hdfs_dir", "trainer.del_local_ckpt_after_load",
            "trainer.max_actor_ckpt_to_keep", "data.train_files", "reward.custom_reward_function.path"]  # fmt: skip
    report = compose(verl, cmd[3:], keys)
    assert "error" not in report, report.get("error")
    v = {k: report["values"][k]["value"] for k in keys}
    assert Path(v["trainer.default_local_dir"]).is_relative_to(workdir) and v["trainer.default_local_dir"] == info["local_dir"]
    assert v["trainer.resume_mode"] == "auto"
    assert v["trainer.default_hdfs_dir"] is None and v["trainer.del_local_ckpt_after_load"] is False
    assert v["trainer.max_actor_ckpt_to_keep"] == 2
    assert all(Path(v[k]).is_relative_to(workdir) for k in ("data.train_files", "reward.custom_reward_function.path"))
    env = vb.launch_env({}, cache_dir=workdir / "cache")
    assert all(Path(env[k]).is_relative_to(workdir) for k in ("VLLM_CACHE_ROOT", "TRITON_CACHE_DIR", "HF_HOME"))
    # the same job again plans the same checkpoint directory (keyed by the run key, not the attempt)
    cmd2, _ = vb.VerlRun(prepare(job), lambda p: None, None, workdir, python="/opt/py").plan()
    assert cmd2 == cmd


# ------------------------------------------------------------------ training.epochs on the CPU backend


def test_epochs_sets_the_cpu_grpo_step_count(tmp_path, monkeypatch):
    """``training.epochs`` passes over the round's data decide the CPU GRPO steps (ceil(rows /
    promptsPerStep) each) unless ``grpoSteps`` is set, as verl's total_epochs does on GPUs."""
    from looptool.services.trainer.grpo import grpo_step_count
    from looptool.services.trainer.runner import parse_job, run_training
    from looptool.services.trainer.toy import TINY_BASE, commit_toy_dataset

    assert grpo_step_count(None, 2, 5, 2) == 6 and grpo_step_count(7, 2, 5, 2) == 7 and grpo_step_count(0, 3, 5, 2) == 0
    monkeypatch.setenv("LOOPTOOL_TRAINER__TORCH_THREADS", "1")
    ref = commit_toy_dataset((tmp_path / "ds").as_uri(), 4)
    cfg = {"sftWarmStart": False, "groupSize": 2, "promptsPerStep": 2, "maxResponseTokens": 8, "checkpointEvery": 0}

    def grpo_steps(run: str, **over: Any) -> tuple[int, int]:
        job = parse_job({"run_id": run, "dataset": ref.model_dump(), "base_checkpoint_uri": TINY_BASE,
                         "output_prefix": (tmp_path / run).as_uri(), "config": {**cfg, **over}})  # fmt: skip
        steps: list[float] = []
        result = run_training(job, workdir=tmp_path / "wd", emit=lambda p: p.metrics.get("phase") == 1.0 and steps.append(p.metrics["step"]))
        return result.counts["grpo_steps"], len(steps)

    assert grpo_steps("e1", epochs=1) == (2, 2)
    assert grpo_steps("e3", epochs=3) == (6, 6)
    assert grpo_steps("fixed", epochs=3, grpoSteps=1) == (1, 1)  # an explicit step count wins
