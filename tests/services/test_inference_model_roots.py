"""The inference server loads models only from configured roots (``inference.model_roots``, the local
store's root, the configured bucket): a request naming anything else ends PERMISSION_DENIED with one
line, before any file is opened."""

from __future__ import annotations

import grpc
import pytest

from looptool.services.inference.backends.base import BackendError
from looptool.services.inference.roots import ModelRoots
from looptool.services.inference.server import start
from looptool.shared.config import InferenceSettings, LoopToolConfig, S3Settings, StorageSettings
from looptool.shared.grpc_util import channel
from looptool.v1 import common_pb2, inference_pb2, inference_pb2_grpc


@pytest.fixture
def layout(tmp_path):
    roots = tmp_path / "models"
    (roots / "base").mkdir(parents=True)
    secret = tmp_path / "secret"
    secret.mkdir()
    (roots / "escape").symlink_to(secret)
    store = tmp_path / "store"
    store.mkdir()
    return tmp_path, roots, secret, store


def roots_for(layout, backend: str = "transformers", storage: str = "local") -> ModelRoots:
    tmp, roots, _, store = layout
    inf = InferenceSettings(backend=backend, model=str(roots / "base"), model_roots=[str(roots)])
    st = StorageSettings(backend=storage, root=str(store), s3=S3Settings(endpoint="http://127.0.0.1:1", bucket="looptool"))
    return ModelRoots.from_settings(inf, st)


def denied(roots: ModelRoots, uri: str) -> str:
    with pytest.raises(BackendError) as err:
        roots.check(uri)
    assert err.value.code in ("PERMISSION_DENIED", "INVALID_ARGUMENT")
    assert "\n" not in str(err.value)
    return str(err.value)


def test_paths_inside_the_roots_are_allowed(layout):
    tmp, roots, _, store = layout
    r = roots_for(layout)
    for uri in ("", str(roots / "base"), str(roots / "other" / "ckpt"), f"file://{roots}/x", str(store / "runs" / "r1" / "train"),
                "s3://looptool/runs/r1/train-abc"):
        r.check(uri)


def test_paths_outside_the_roots_are_denied(layout):
    tmp, roots, secret, _ = layout
    r = roots_for(layout)
    msg = denied(r, "/etc")
    assert "outside the allowed model roots" in msg and "inference.model_roots" in msg
    denied(r, str(roots / ".." / "secret"))  # `..` out of a root
    denied(r, str(roots / "escape"))  # a symlink in a root pointing out of it
    denied(r, f"file://{secret}")
    assert "configured bucket" in denied(r, "s3://someone-elses-bucket/model")
    assert "unsupported scheme" in denied(r, "http://example.com/model")


def test_s3_storage_does_not_open_the_local_store_root(layout):
    _, _, _, store = layout
    r = roots_for(layout, storage="s3")
    denied(r, str(store / "runs"))
    r.check("s3://looptool/models/m")


def test_remote_backends_take_model_names_unchecked(layout):
    roots_for(layout, backend="openai").check("gpt-4o-mini")


def test_server_answers_permission_denied_for_a_model_outside_the_roots(layout):
    tmp, roots, secret, store = layout
    cfg = LoopToolConfig(
        inference=InferenceSettings(model=str(roots / "base"), model_roots=[str(roots)]),
        storage=StorageSettings(root=str(store)),
    )
    server = start(cfg, port=0, preload=False)
    try:
        with channel(server.address) as ch:
            stub = inference_pb2_grpc.InferenceServiceStub(ch)
            req = inference_pb2.GenerateRequest(model=str(secret), messages=[common_pb2.Message(role="user", content="hi")])
            with pytest.raises(grpc.RpcError) as err:
                stub.Generate(req, timeout=30)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert str(secret) in err.value.details() and "inference.model_roots" in err.value.details()
            # a batch reports it per item, in the item's place
            items = list(stub.GenerateBatch(inference_pb2.GenerateBatchRequest(requests=[req]), timeout=30))
            assert [i.error.code for i in items] == ["PERMISSION_DENIED"]
    finally:
        server.stop(0)
