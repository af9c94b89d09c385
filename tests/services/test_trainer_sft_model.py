"""The trainer commits the post-SFT policy beside the final model (``<output_prefix>/model_sft``) when
a run does SFT then GRPO, so the evaluate stage can score both (GRPO's share of a round's gain)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from looptool.services.trainer.toy import TINY_BASE, commit_toy_dataset

CFG = {"sftEpochs": 20, "sftBatchSize": 4, "sftLearningRate": 0.01, "groupSize": 4, "promptsPerStep": 4,
       "learningRate": 0.01, "lrSchedule": "constant", "warmupRatio": 0.0, "maxResponseTokens": 24, "checkpointEvery": 0,
       "rewardPartialCredit": True}  # SFT long enough that GRPO gets rewards that differ (a gradient)


def _weights(artifact: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(artifact.rglob("*.safetensors"))}


def _run(tmp_path: Path, ref, out: str, **config):
    from looptool.services.trainer.runner import parse_job, run_training

    job = parse_job({"run_id": out, "round": 1, "dataset": ref.model_dump(), "base_checkpoint_uri": TINY_BASE,
                     "output_prefix": (tmp_path / out).as_uri(), "config": {**CFG, **config}})
    return run_training(job, workdir=tmp_path / "wd")


def test_post_sft_model_is_committed_and_is_the_policy_grpo_started_from(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOPTOOL_TRAINER__TORCH_THREADS", "1")
    ref = commit_toy_dataset((tmp_path / "ds").as_uri(), 4)
    both = _run(tmp_path, ref, "both", grpoSteps=4)
    sft_dir, final_dir = tmp_path / "both" / "model_sft", tmp_path / "both" / "model"
    assert both.counts["sft_model"] == 1 and _weights(sft_dir)
    assert _weights(sft_dir) != _weights(final_dir)  # GRPO moved the policy
    # the same SFT alone ends where the SFT + GRPO run's GRPO started
    sft_only = _run(tmp_path, ref, "sft", grpoSteps=0)
    assert _weights(tmp_path / "sft" / "model") == _weights(sft_dir)
    assert not (tmp_path / "sft" / "model_sft").exists() and "sft_model" not in sft_only.counts  # its final model is it
    grpo_only = _run(tmp_path, ref, "grpo", grpoSteps=1, sftWarmStart=False)
    assert not (tmp_path / "grpo" / "model_sft").exists() and "sft_model" not in grpo_only.counts
