"""GPU service pods in the rendered chart: an in-memory /dev/shm exactly when a pod requests GPUs,
``Recreate`` exactly for GPU Deployments, the inference server's checkpoint cache volume where its
config points, and rendering that fails on a tensor-parallel size that is not the GPU count."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml

from looptool.shared.config import SERVICE_NAMES, LoopToolConfig
from test_chart import K8S, by_kind, render


def deployment(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return by_kind(docs, "Deployment")[f"lt-looptool-{name}"]


def volumes(dep: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}


def mounts(dep: dict[str, Any]) -> dict[str, str]:
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return {m["mountPath"]: m["name"] for m in c["volumeMounts"]}


def requests_gpus(dep: dict[str, Any]) -> bool:
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    res = c.get("resources") or {}
    return any(k.endswith("/gpu") and int(v) > 0 for part in ("limits", "requests") for k, v in (res.get(part) or {}).items())


def config(docs: list[dict[str, Any]]) -> LoopToolConfig:
    return LoopToolConfig.model_validate(yaml.safe_load(by_kind(docs, "ConfigMap")["lt-looptool-config"]["data"]["config.yaml"]))


def check_shm_and_strategy(docs: list[dict[str, Any]], shm_size: str = "16Gi") -> list[str]:
    """The GPU Deployments among the five, after checking each one's /dev/shm and strategy."""
    gpu = []
    for name in SERVICE_NAMES:
        dep = deployment(docs, name)
        has_gpus = requests_gpus(dep)
        shm = [v for v in volumes(dep).values() if (v.get("emptyDir") or {}).get("medium") == "Memory"]
        if has_gpus:
            gpu.append(name)
            assert mounts(dep).get("/dev/shm") == "dshm", name
            assert shm == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}}], name
            assert dep["spec"]["strategy"] == {"type": "Recreate"}, name
        else:
            assert "/dev/shm" not in mounts(dep) and not shm, name
            assert dep["spec"].get("strategy", {}).get("type", "RollingUpdate") == "RollingUpdate", name
    return gpu


def test_default_chart_gpu_inference_pod():
    docs = render()
    assert check_shm_and_strategy(docs) == ["inference"]
    inference = deployment(docs, "inference")
    cfg = config(docs)
    # the cache volume is mounted exactly where the server caches checkpoints, bounded below its size limit
    assert cfg.inference.model_cache_dir == "/var/lib/looptool/models"
    assert mounts(inference)[cfg.inference.model_cache_dir] == "model-cache"
    assert volumes(inference)["model-cache"] == {"name": "model-cache", "emptyDir": {"sizeLimit": "100Gi"}}
    assert cfg.inference.model_cache_max_bytes == 80 * 2**30 < 100 * 2**30
    assert cfg.inference.tensor_parallel_size == 1
    for name in SERVICE_NAMES:
        if name != "inference":
            assert "model-cache" not in volumes(deployment(docs, name))
    for doc in docs:
        if doc["kind"] == "Deployment":
            kubernetes_validate.validate(doc, K8S, strict=True)


def test_no_gpus_no_shm_no_recreate_and_gpus_on_another_service():
    docs = render(
        "--set", "services.inference.resources.requests.nvidia\\.com/gpu=null",
        "--set", "services.inference.resources.limits.nvidia\\.com/gpu=null",
        "--set", "config.inference.backend=transformers",
        "--set", "services.trainer.resources.limits.nvidia\\.com/gpu=1",
        "--set", "services.trainer.shmSize=8Gi",
    )  # fmt: skip
    assert not requests_gpus(deployment(docs, "inference"))
    assert check_shm_and_strategy(docs, shm_size="8Gi") == ["trainer"]  # only the trainer's size was set
    assert "model-cache" in volumes(deployment(docs, "inference"))  # the cache does not depend on GPUs


def test_shm_size_and_tensor_parallel_over_several_gpus(tmp_path):
    values = tmp_path / "v.yaml"
    values.write_text(yaml.safe_dump({
        "config": {"inference": {"tensor_parallel_size": 4}},
        "services": {"inference": {"shmSize": "32Gi", "resources": {"limits": {"nvidia.com/gpu": 4}, "requests": {"nvidia.com/gpu": 4}}}},
    }))  # fmt: skip
    docs = render("-f", str(values))
    assert check_shm_and_strategy(docs, shm_size="32Gi") == ["inference"]
    assert config(docs).inference.tensor_parallel_size == 4


def test_a_users_own_dev_shm_mount_is_kept():
    docs = render(
        "--set", "services.inference.volumes[0].name=myshm",
        "--set", "services.inference.volumes[0].emptyDir.medium=Memory",
        "--set", "services.inference.volumeMounts[0].name=myshm",
        "--set", "services.inference.volumeMounts[0].mountPath=/dev/shm",
    )  # fmt: skip
    inference = deployment(docs, "inference")
    assert mounts(inference)["/dev/shm"] == "myshm" and "dshm" not in volumes(inference)
    assert inference["spec"]["strategy"] == {"type": "Recreate"}


def test_cache_on_an_existing_claim_at_the_configured_dir():
    docs = render("--set", "services.inference.modelCache.existingClaim=model-cache-pvc",
                  "--set", "config.inference.model_cache_dir=/cache/models",
                  "--set", "config.inference.model_cache_max_bytes=500Gi")  # a claim's size is not checked
    inference = deployment(docs, "inference")
    assert config(docs).inference.model_cache_dir == "/cache/models"
    assert mounts(inference)["/cache/models"] == "model-cache"
    assert volumes(inference)["model-cache"] == {"name": "model-cache", "persistentVolumeClaim": {"claimName": "model-cache-pvc"}}


@pytest.mark.parametrize(
    ("args", "tp", "gpus"),
    [
        (["--set", "config.inference.tensor_parallel_size=2"], 2, 1),
        (["--set", "services.inference.resources.limits.nvidia\\.com/gpu=4",
          "--set", "services.inference.resources.requests.nvidia\\.com/gpu=4"], 1, 4),
        (["--set", "config.overrides.inference.tensor_parallel_size=8"], 8, 1),  # what config.yaml will hold
        (["--set", "services.inference.resources.requests.nvidia\\.com/gpu=null",
          "--set", "services.inference.resources.limits.nvidia\\.com/gpu=null",
          "--set", "config.inference.tensor_parallel_size=2"], 2, 0),
    ],
)  # fmt: skip
def test_tensor_parallel_size_other_than_the_gpus_fails_rendering(args, tp, gpus):
    proc = render(*args, check=False)
    assert proc.returncode != 0
    (line,) = [ln for ln in proc.stderr.splitlines() if "tensor_parallel_size" in ln]
    assert f"config.inference.tensor_parallel_size is {tp} " in line and f"requests {gpus} GPU(s)" in line, line


def test_tensor_parallel_is_not_checked_where_vllm_does_not_run_in_the_pod():
    for backend in (["--set", "config.inference.vllm_mode=remote"], ["--set", "config.inference.backend=openai"]):
        docs = render(*backend, "--set", "config.inference.tensor_parallel_size=2")
        assert config(docs).inference.tensor_parallel_size == 2


def test_cache_bound_over_the_volume_limit_or_bad_values_fail():
    proc = render("--set", "config.inference.model_cache_max_bytes=101Gi", check=False)
    assert proc.returncode != 0
    assert "config.inference.model_cache_max_bytes (101Gi) is over services.inference.modelCache.sizeLimit (100Gi)" in proc.stderr
    assert render("--set", "config.inference.model_cache_max_bytes=100Gi")  # equal is within the limit
    assert render("--set", f"config.inference.model_cache_max_bytes={50 * 2**30}")  # an int works as well
    for bad in ("config.inference.model_cache_dir=models", "services.inference.modelCache.sizeLimit=big",
                "services.inference.shmSize=lots", "config.inference.tensor_parallel_size=0",
                "services.inference.modelCache.size=1Gi"):  # fmt: skip
        proc = render("--set", bad, check=False)
        assert proc.returncode != 0, bad
