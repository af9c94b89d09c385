"""Resumable training checkpoints in object storage (local directory or S3/MinIO).

Layout under a run's ``output_prefix``::

    checkpoints/<phase>-<step:06d>/_artifact.json   committed last (shared/storage/artifacts.py)
    checkpoints/<phase>-<step:06d>/files/model/...  HF model directory (weights, config, tokenizer)
    checkpoints/<phase>-<step:06d>/files/trainer_state.pt   optimizer, LR scheduler, RNG states
    checkpoints/<phase>-<step:06d>/files/state.json         phase, step, curves so far, run key
    checkpoints/latest.json                          pointer, written after the artifact commits
    model/                                           the final HF model directory artifact
    result.json                                      the run's result (written last)

A checkpoint is visible only once its artifact manifest is committed and ``latest.json`` points
at it, so a run killed mid-upload resumes from the previous one. ``latest.json`` carries the run
key (hash of dataset, config and base model): a checkpoint from a different run at the same
prefix is never resumed. ``grpo-000000`` (the policy at the start of GRPO = the KL reference) is
kept; of the others the newest ``keep`` stay.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from looptool.shared.logs import get_logger
from looptool.shared.records import utcnow
from looptool.shared.storage.artifacts import artifact_exists, fetch_dir, upload_dir
from looptool.shared.storage.base import NotFound, ObjectStore

log = get_logger("looptool.trainer.checkpoints")
LATEST = "latest.json"
REFERENCE_TAG = "grpo-000000"


def tag_for(phase: str, step: int) -> str:
    return f"{phase}-{step:06d}"


@dataclass
class CheckpointInfo:
    tag: str
    phase: str  # "sft" | "grpo"
    step: int  # steps completed in that phase
    uri: str
    key: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class CheckpointManager:
    def __init__(self, store: ObjectStore, prefix: str, key: str, cache_root: str | Path, keep: int = 2):
        self.store, self.prefix, self.key = store, prefix.strip("/"), key
        self.cache_root = Path(cache_root)
        self.keep = max(1, keep)
        # files of the model training started from that are no part of save_pretrained (the builtin
        # model's looptool_model.json): every checkpoint carries them, so a model finished after a
        # resume is the same as one never interrupted. Bytes, not a path: the checkpoint a run
        # resumed from is pruned while it runs.
        self.model_extras: dict[str, bytes] = {}

    @property
    def root(self) -> str:
        return f"{self.prefix}/checkpoints"

    def _ckpt_prefix(self, tag: str) -> str:
        return f"{self.root}/{tag}"

    # ------------------------------------------------------------------ read
    def latest(self) -> CheckpointInfo | None:
        """The newest committed checkpoint of *this* run (same key), or None."""
        try:
            data = json.loads(self.store.get_bytes(f"{self.root}/{LATEST}"))
        except NotFound:
            return None
        except (ValueError, json.JSONDecodeError):
            log.warning("ignoring unreadable %s", self.store.uri(f"{self.root}/{LATEST}"))
            return None
        if data.get("key") != self.key:
            log.info("checkpoints at %s belong to another run (key differs); starting fresh", self.store.uri(self.root))
            return None
        info = CheckpointInfo(**{k: data[k] for k in ("tag", "phase", "step", "uri", "key")})
        if not artifact_exists(self.store, self._ckpt_prefix(info.tag)):
            log.warning("latest checkpoint %s is not committed; starting fresh", info.tag)
            return None
        return info

    def has(self, tag: str) -> bool:
        return artifact_exists(self.store, self._ckpt_prefix(tag))

    def fetch(self, tag: str) -> Path:
        """Local directory of a committed checkpoint (``model/``, ``trainer_state.pt``, ``state.json``)."""
        return fetch_dir(self.store, self._ckpt_prefix(tag), self.cache_root)

    def load_state(self, tag: str) -> tuple[Path, dict[str, Any], dict[str, Any]]:
        """(local dir, state.json, trainer_state.pt contents)."""
        d = self.fetch(tag)
        state = json.loads((d / "state.json").read_text())
        ts = torch.load(d / "trainer_state.pt", map_location="cpu", weights_only=True)
        return d, state, ts

    # ------------------------------------------------------------------ write
    def save(
        self,
        phase: str,
        step: int,
        model,
        tokenizer,
        optimizer=None,
        scheduler=None,
        state: dict[str, Any] | None = None,
    ) -> CheckpointInfo:
        tag = tag_for(phase, step)
        tmp = Path(tempfile.mkdtemp(prefix=".ckpt-", dir=self.cache_root if self.cache_root.exists() else None))
        try:
            model.save_pretrained(tmp / "model", safe_serialization=True)
            tokenizer.save_pretrained(tmp / "model")
            write_extras(tmp / "model", self.model_extras)
            torch.save(
                {
                    "optimizer": optimizer.state_dict() if optimizer is not None else None,
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "torch_rng": torch.get_rng_state(),
                    "python_rng": list(random.getstate()[1]),
                    "python_rng_pos": random.getstate()[2] if random.getstate()[2] is not None else -1,
                },
                tmp / "trainer_state.pt",
            )
            full_state = {**(state or {}), "phase": phase, "step": step, "key": self.key, "saved_at": utcnow()}
            (tmp / "state.json").write_text(json.dumps(full_state, indent=1))
            uri = upload_dir(self.store, self._ckpt_prefix(tag), tmp, meta={"phase": phase, "step": step, "key": self.key})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        info = CheckpointInfo(tag=tag, phase=phase, step=step, uri=uri, key=self.key)
        self.store.put_bytes(f"{self.root}/{LATEST}", json.dumps({**info.to_dict(), "saved_at": utcnow()}).encode())
        self._prune(tag)
        log.info("checkpoint saved", extra={"tag": tag, "uri": uri})
        return info

    def _prune(self, current: str) -> None:
        tags = sorted({k[len(self.root) + 1 :].split("/", 1)[0] for k in self.store.list(self.root + "/") if "/" in k[len(self.root) + 1 :]})
        order = {"sft": 0, "grpo": 1}
        tags = sorted(tags, key=lambda t: (order.get(t.split("-")[0], 2), t))
        protected = {current, REFERENCE_TAG}
        removable = [t for t in tags if t not in protected]
        for t in removable[: max(0, len(removable) - (self.keep - 1))]:
            self.store.delete_prefix(self._ckpt_prefix(t) + "/")

    def clear(self) -> None:
        self.store.delete_prefix(self.root + "/")


MODEL_EXTRAS = ("looptool_model.json",)


def read_extras(model_dir: Path) -> dict[str, bytes]:
    return {n: (model_dir / n).read_bytes() for n in MODEL_EXTRAS if (model_dir / n).is_file()}


def write_extras(model_dir: Path, extras: dict[str, bytes]) -> None:
    for name, data in extras.items():
        (model_dir / name).write_bytes(data)


def restore_rng(ts: dict[str, Any]) -> None:
    if ts.get("torch_rng") is not None:
        torch.set_rng_state(ts["torch_rng"])
    if ts.get("python_rng"):
        pos = ts.get("python_rng_pos", -1)
        random.setstate((3, tuple(ts["python_rng"]), None if pos == -1 else pos))
