"""The in-process vLLM backend refuses a tensor-parallel size other than the GPUs it sees, at start and
before any model download, with one line naming both (the chart refuses the same at render time:
tests/deploy/test_gpu_pods.py)."""

from __future__ import annotations

import sys
import types

import pytest

from looptool.services.inference.backends import BackendError, make_backend
from looptool.services.inference.backends import vllm_backend
from looptool.services.inference.backends.vllm_backend import check_tensor_parallel
from looptool.shared.config import InferenceSettings


@pytest.mark.parametrize(("tp", "gpus"), [(2, 1), (1, 4), (8, 2), (2, 0)])
def test_a_mismatch_names_both_values(tp, gpus):
    with pytest.raises(BackendError) as err:
        check_tensor_parallel(tp, gpus)
    line = str(err.value)
    assert "\n" not in line and err.value.code == "FAILED_PRECONDITION"
    assert f"inference.tensor_parallel_size is {tp} but this process sees {gpus} GPU(s); set it to {max(1, gpus)}" in line


@pytest.mark.parametrize(("tp", "gpus"), [(1, 1), (4, 4), (1, 0)])
def test_equal_sizes_pass(tp, gpus):
    check_tensor_parallel(tp, gpus)


def test_the_backend_checks_before_fetching_the_model(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))  # installed (no engine is built here)
    monkeypatch.setattr(vllm_backend, "visible_gpus", lambda: 2)
    remote = "s3://nowhere/models/m"  # never read: the check comes first
    settings = InferenceSettings(backend="vllm", model=remote, tensor_parallel_size=4, model_cache_dir=str(tmp_path / "c"))
    with pytest.raises(BackendError, match="tensor_parallel_size is 4 but this process sees 2 GPU"):
        make_backend(settings)
    assert not (tmp_path / "c").exists()
    # equal: past the check, on to the model (here: none configured)
    with pytest.raises(BackendError, match="no model configured"):
        make_backend(settings.model_copy(update={"tensor_parallel_size": 2, "model": ""}))
