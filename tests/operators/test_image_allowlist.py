"""The trainer image allow-list: the Job holds the S3 credentials, so a LoopRound may only pick the
operator's default trainer image or one of ``training.allowedImages``; anything else is an
InvalidSpec condition naming ``spec.resources.trainerImage`` and the allowed images, and no Job,
ConfigMap or claim is created. Runs the operator under kopf against the fake Kubernetes API."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import pytest
from kopf.testing import KopfRunner

from looptool.operators import jobs
from looptool.operators.main import build
from looptool.operators.reconciler import InvalidSpec, validate
from looptool.operators.settings import OperatorSettings, TrainerJobSettings

from support.fake_kube import FakeKubeApi, TestStageExecutor
from support.waiting import wait_for

LR = ("looptool.io/v1alpha1", "looprounds")
DEFAULT = "registry.example.com/looptool:1.0"
ALLOWED = "registry.example.com/looptool-trainer:1.2"
EVIL = "attacker.example.com/exfiltrate:latest"


def loopround(name: str, image: str) -> dict[str, Any]:
    spec = {
        "baseModel": {"uri": "s3://looptool/models/qwen3-8b"},
        "toolset": {"bfcl": {"category": "simple_python", "limit": 20}},
        "training": {"backend": "verl", "gpus": 1},
        "resources": {"trainerImage": image} if image else {},
    }
    return {"apiVersion": "looptool.io/v1alpha1", "kind": "LoopRound", "metadata": {"name": name}, "spec": spec}


def trainer_settings() -> TrainerJobSettings:
    return TrainerJobSettings(image=DEFAULT, allowedImages=[ALLOWED])


@contextlib.contextmanager
def operator(api: FakeKubeApi, executor: TestStageExecutor) -> Iterator[KopfRunner]:
    settings = OperatorSettings(
        namespaces=["default"], apiUrl=api.url, metricsPort=0, pollSeconds=1.0, progressSeconds=0.2,
        retryBackoffSeconds=0.05, trainer=trainer_settings(),
    )
    rt, registry, kopf_settings = build(settings, executor)
    try:
        with KopfRunner(["run", "--standalone", "-n", "default"], registry=registry, settings=kopf_settings, timeout=30) as runner:
            yield runner
    finally:
        rt.close()
    assert runner.exception is None, runner.output[-3000:]


def owned(api: FakeKubeApi, round_name: str, api_version: str, plural: str) -> list[dict[str, Any]]:
    return [o for o in api.list(api_version, plural) if (o["metadata"].get("labels") or {}).get(jobs.LABEL_ROUND) == round_name]


def test_disallowed_image_is_an_invalid_spec_and_creates_nothing(tmp_path):
    with FakeKubeApi() as api, operator(api, TestStageExecutor(tmp_path / "store")):
        api.create(*LR, loopround("evil", EVIL))
        api.create(*LR, loopround("ok", ALLOWED))
        api.create(*LR, loopround("plain", ""))
        ok_job = wait_for(lambda: owned(api, "ok", "batch/v1", "jobs"), what="the allowed image's Job")[0]
        plain_job = wait_for(lambda: owned(api, "plain", "batch/v1", "jobs"), what="the default image's Job")[0]

        def evil_status() -> dict[str, Any] | None:
            st = (api.get(*LR, "evil") or {}).get("status") or {}
            return st if any(c["type"] == "SpecValid" for c in st.get("conditions", [])) else None

        st = wait_for(evil_status, what="InvalidSpec on the round with a disallowed image")
        ready = next(c for c in st["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
        assert "spec.resources.trainerImage" in ready["message"] and EVIL in ready["message"]
        assert DEFAULT in ready["message"] and ALLOWED in ready["message"]  # names what is allowed
        assert not owned(api, "evil", "batch/v1", "jobs")
        assert not owned(api, "evil", "v1", "configmaps")
        assert not owned(api, "evil", "v1", "persistentvolumeclaims")

    assert ok_job["spec"]["template"]["spec"]["containers"][0]["image"] == ALLOWED
    assert plain_job["spec"]["template"]["spec"]["containers"][0]["image"] == DEFAULT


@pytest.mark.parametrize("image, ok", [("", True), (DEFAULT, True), (ALLOWED, True), (EVIL, False), (ALLOWED + "x", False)])
def test_validate_checks_the_image_against_the_allow_list(image, ok):
    obj = {**loopround("r", image), "metadata": {"name": "r", "namespace": "default"}}
    if ok:
        validate(obj, trainer_settings())
    else:
        with pytest.raises(InvalidSpec, match=r"spec\.resources\.trainerImage"):
            validate(obj, trainer_settings())


def test_job_builder_refuses_a_disallowed_image_even_without_validation():
    # Defence in depth: a caller that skipped validate() still cannot build a Job running it.
    with pytest.raises(ValueError, match="not an allowed trainer image"):
        trainer_settings().trainer_image(EVIL)
    assert trainer_settings().trainer_image("") == DEFAULT
