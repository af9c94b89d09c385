"""The inference server's checkpoint cache (services/inference/model_cache.py): atomic, verified and
resumable downloads, one download per checkpoint however many ask at once, a size bound kept by
evicting whole least-recently-used checkpoints, never one in use; and the same through the model pool
and the transformers backend against S3 (moto)."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from looptool.services.inference.backends import BackendError
from looptool.services.inference.model_cache import CacheFull, ModelCache
from looptool.services.inference.pool import ModelPool
from looptool.shared.config import InferenceSettings
from looptool.shared.generation import GenRequest, SamplingParams
from looptool.shared.records import Message
from looptool.shared.storage import LocalStore
from looptool.shared.storage.artifacts import upload_dir
from looptool.shared.storage.base import StorageError
from support.inference import tiny_model_dir
from support.waiting import wait_for

SIZE = 1000  # bytes per file; every checkpoint below has two files


class CountingStore(LocalStore):
    """A store (local files) that records each download, and can fail or hold one on request."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.fetched: list[str] = []
        self.fail: dict[str, int] = {}  # key -> bytes written before the download breaks
        self.hold: dict[str, threading.Event] = {}  # key -> released when set
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def get_file(self, key: str, path: str) -> None:
        with self._lock:
            self.fetched.append(key)
        if key in self.hold:
            self.entered.set()
            assert self.hold[key].wait(30)
        if key in self.fail:
            data = self.get_bytes(key)[: self.fail[key]]
            Path(path).write_bytes(data)  # half a file, as an interrupted transfer leaves it
            raise StorageError(f"{key}: connection reset")
        super().get_file(key, path)


def publish(store: CountingStore, tmp: Path, name: str, size: int = SIZE) -> dict[str, bytes]:
    """A committed two-file checkpoint at ``name``; returns its files."""
    files = {"config.json": name.encode().ljust(size, b" "), "model.safetensors": hashlib.sha256(name.encode()).digest() * (size // 32) + b"x" * (size % 32)}
    src = tmp / "src" / name
    src.mkdir(parents=True)
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    upload_dir(store, name, src, meta={"name": name})
    return files


def contents(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def cached(cache: ModelCache) -> dict[Path, bool]:
    """Entry directory -> partial, for every checkpoint on disk."""
    return {e.path: e.partial for e in cache.entries()}


@pytest.fixture
def remote(tmp_path):
    return CountingStore(tmp_path / "remote")


def test_a_checkpoint_is_downloaded_once_verified_and_placed_atomically(tmp_path, remote):
    files = publish(remote, tmp_path, "round-1")
    cache = ModelCache(tmp_path / "cache", 10 * SIZE)
    with cache.acquire_artifact(remote, "round-1") as pin:
        assert contents(pin.path) == files and pin.path.parent == cache.root
        assert not list((cache.root / ".partial").iterdir())  # renamed into place, nothing left over
    n = len(remote.fetched)
    with ModelCache(tmp_path / "cache", 10 * SIZE).acquire_artifact(remote, "round-1") as again:  # a restarted server
        assert again.path == pin.path and len(remote.fetched) == n == 2

    publish(remote, tmp_path, "corrupt")
    (remote.root / "corrupt" / "files" / "model.safetensors").write_bytes(b"tampered")
    with pytest.raises(StorageError, match="corrupt/files/model.safetensors: checksum mismatch"):
        cache.acquire_artifact(remote, "corrupt")
    assert [e.partial for e in cache.entries() if e.path.name != pin.path.name] == [True]  # never a complete entry


def test_least_recently_used_checkpoints_are_evicted_whole_and_the_bound_holds(tmp_path, remote):
    for name in "abcdef":
        publish(remote, tmp_path, name)
    bound = 3 * 2 * SIZE  # three checkpoints
    paths = {}

    def use(name: str) -> None:
        with ModelCache(tmp_path / "cache", bound).acquire_artifact(remote, name) as pin:  # a new instance each time
            paths[name] = pin.path
        assert ModelCache(tmp_path / "cache", bound).total_bytes() <= bound

    for name in "abc":
        use(name)
    use("a")  # a is now the most recently used; b the least
    use("d")
    assert set(cached(ModelCache(tmp_path / "cache", bound))) == {paths["a"], paths["c"], paths["d"]}
    use("e")  # evicts c
    assert set(cached(ModelCache(tmp_path / "cache", bound))) == {paths["a"], paths["d"], paths["e"]}
    assert not paths["b"].exists() and not paths["c"].exists()
    assert not list((tmp_path / "cache" / ".trash").iterdir())
    fetched = len(remote.fetched)
    use("b")  # evicted before: downloaded again (evicting a)
    assert len(remote.fetched) == fetched + 2 and not paths["a"].exists()


def test_a_checkpoint_in_use_is_never_evicted(tmp_path, remote):
    for name in "abcde":
        publish(remote, tmp_path, name)
    cache = ModelCache(tmp_path / "cache", 3 * 2 * SIZE)
    a = cache.acquire_artifact(remote, "a")  # loaded, and the least recently used from here on
    with cache.acquire_artifact(remote, "b") as b:
        pass
    with cache.acquire_artifact(remote, "c") as c:
        pass
    d = cache.acquire_artifact(remote, "d")  # room for d: b goes, not a
    assert a.path.is_dir() and contents(a.path)["config.json"].startswith(b"a")
    assert set(cached(cache)) == {a.path, c.path, d.path} and not b.path.exists()

    c = cache.acquire_artifact(remote, "c")
    fetched = len(remote.fetched)
    with pytest.raises(CacheFull, match=r"needs 2000 bytes but the checkpoints in use .* inference\.model_cache_max_bytes \(6000\)"):
        cache.acquire_artifact(remote, "e")  # a, c, d all in use
    assert len(remote.fetched) == fetched and all(p.path.is_dir() for p in (a, c, d))
    a.release()
    with cache.acquire_artifact(remote, "e") as e:
        assert not a.path.exists() and e.path.is_dir() and c.path.is_dir() and d.path.is_dir()

    publish(remote, tmp_path, "big", size=4 * SIZE)
    with pytest.raises(CacheFull, match="the checkpoint is 8000 bytes, over inference.model_cache_max_bytes"):
        cache.acquire_artifact(remote, "big")  # refused before any download
    assert len(remote.fetched) == fetched + 2


def test_an_interrupted_download_resumes_keeping_the_files_already_there(tmp_path, remote):
    files = publish(remote, tmp_path, "round-2")
    cache = ModelCache(tmp_path / "cache", 10 * SIZE)
    remote.fail = {"round-2/files/model.safetensors": SIZE // 3}
    with pytest.raises(StorageError, match="connection reset"):
        cache.acquire_artifact(remote, "round-2")
    (entry,) = cache.entries()
    assert entry.partial and entry.size == 2 * SIZE  # reserved at its full size
    assert not (cache.root / entry.digest).exists()  # nothing half-downloaded looks complete
    assert remote.fetched == ["round-2/files/config.json", "round-2/files/model.safetensors"]
    (entry.path / "model.safetensors.part.tmp").write_bytes(b"junk")  # a download tool's leftover

    remote.fail = {}
    with cache.acquire_artifact(remote, "round-2") as pin:
        assert contents(pin.path) == files  # the truncated file was fetched again, the leftover dropped
    assert remote.fetched[2:] == ["round-2/files/model.safetensors"]  # config.json was kept
    assert [e.partial for e in cache.entries()] == [False]


def test_a_stale_partial_download_is_evicted_like_a_checkpoint(tmp_path, remote):
    for name in "abc":
        publish(remote, tmp_path, name)
    cache = ModelCache(tmp_path / "cache", 2 * 2 * SIZE)
    remote.fail = {"a/files/model.safetensors": 10}
    with pytest.raises(StorageError):
        cache.acquire_artifact(remote, "a")
    remote.fail = {}
    cache.acquire_artifact(remote, "b").release()
    with cache.acquire_artifact(remote, "c") as c:  # the abandoned partial of a is the oldest
        assert [e.path.name for e in cache.entries() if e.partial] == []
        assert len(cache.entries()) == 2 and c.path.is_dir()


def _flock_waiters(path: Path) -> int:
    """Processes/threads blocked on a flock of ``path`` (Linux /proc/locks: '-> FLOCK ...' lines)."""
    ino = os.stat(path).st_ino
    n = 0
    for line in Path("/proc/locks").read_text().splitlines():
        parts = line.split()
        if "->" in parts and "FLOCK" in parts and parts[-3].rsplit(":", 1)[-1] == str(ino):
            n += 1
    return n


def test_concurrent_requests_for_one_checkpoint_download_it_once(tmp_path, remote):
    files = publish(remote, tmp_path, "round-3")
    root = tmp_path / "cache"
    caches = [ModelCache(root, 10 * SIZE), ModelCache(root, 10 * SIZE)]  # e.g. the inference and judge pools
    gate = threading.Event()
    remote.hold = {"round-3/files/config.json": gate}
    results: list = [None] * 8

    def fetch(i: int) -> None:
        try:
            results[i] = caches[i % 2].acquire_artifact(remote, "round-3")
        except BaseException as exc:  # surfaced below
            results[i] = exc

    first = threading.Thread(target=fetch, args=(0,))
    first.start()
    assert remote.entered.wait(30)  # the first request is downloading
    others = [threading.Thread(target=fetch, args=(i,)) for i in range(1, 8)]
    for t in others:
        t.start()
    (lock,) = [p for p in (root / ".locks").iterdir() if p.name.endswith(".fetch")]
    wait_for(lambda: _flock_waiters(lock) == 7, what="the other 7 requests waiting for the download")
    gate.set()
    for t in [first, *others]:
        t.join(30)
    assert all(not isinstance(r, BaseException) for r in results), results
    assert len({r.path for r in results}) == 1 and contents(results[0].path) == files
    assert sorted(remote.fetched) == ["round-3/files/config.json", "round-3/files/model.safetensors"]  # once each
    for r in results:
        r.release()


def test_local_models_are_used_in_place(tmp_path):
    d = tmp_path / "local-model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"w" * SIZE)
    cache = ModelCache(tmp_path / "cache", 1)  # no room at all: nothing is copied for local models
    with cache.acquire(str(d)) as pin:
        assert pin.path == d
    store = LocalStore(tmp_path / "store")
    upload_dir(store, "models/m", d)
    with cache.acquire((tmp_path / "store" / "models" / "m").as_uri()) as pin:
        assert pin.path == tmp_path / "store" / "models" / "m" / "files"
    assert not cache.entries()


# --------------------------------------------------------------------------- through the pool, from S3


def _ask(backend) -> None:
    (res,) = backend.generate([GenRequest([Message(role="user", content="weather in Oslo?")], [], SamplingParams(max_tokens=2))])
    assert not res.error, res.error


def test_the_pool_pins_loaded_checkpoints_and_the_cache_evicts_the_others(tmp_path, moto_s3):
    s3 = moto_s3.settings("ckpts")
    store = moto_s3.store("ckpts")
    model = tiny_model_dir()
    size = sum(p.stat().st_size for p in model.rglob("*") if p.is_file())
    uris = {}
    for name in ("r1", "r2", "r3"):
        upload_dir(store, f"models/{name}", model, meta={"round": name})  # three rounds' checkpoints
        uris[name] = f"s3://ckpts/models/{name}"
    settings = InferenceSettings(model=uris["r1"], model_cache_dir=str(tmp_path / "cache"), model_cache_max_bytes=2 * size + size // 2)
    cache = ModelCache.from_settings(settings, s3)
    pool = ModelPool(settings, size=1, s3=s3)
    try:
        _ask(pool.get(""))
        r1 = {e.path for e in cache.entries()}
        _ask(pool.get(uris["r2"]))  # r1 was loaded while r2 loaded: both fit
        assert len(cache.entries()) == 2 and r1 <= {e.path for e in cache.entries()}
        with pool.lease(uris["r3"]) as b3:  # r1 is no longer loaded: evicted for r3
            _ask(b3)
            assert not any(p.exists() for p in r1) and len(cache.entries()) == 2
            assert cache.total_bytes() <= settings.model_cache_max_bytes
        assert len([p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]) == 2

        small = settings.model_copy(update={"model_cache_max_bytes": size + size // 2})  # one checkpoint only
        tight = ModelPool(small, size=1, s3=s3)
        try:
            loaded = tight.get(uris["r3"])  # cached already
            with pytest.raises(BackendError) as err:
                tight.get(uris["r1"])  # r3 is loaded and cannot go while r1 loads
            assert err.value.code == "RESOURCE_EXHAUSTED"
            assert "inference.model_cache_max_bytes" in str(err.value)
            _ask(loaded)  # still served
        finally:
            tight.close()
    finally:
        pool.close()


def test_the_judge_shares_the_inference_cache_unless_it_names_its_own(tmp_path):
    from looptool.services.inference.server import judge_settings
    from looptool.shared.config import load_config

    cfg = load_config(environ={"LOOPTOOL_INFERENCE__MODEL_CACHE_DIR": "/var/lib/looptool/models",
                               "LOOPTOOL_INFERENCE__MODEL_CACHE_MAX_BYTES": "80Gi", "LOOPTOOL_JUDGE__MODEL": "/m"})  # fmt: skip
    judge = judge_settings(cfg)
    assert (judge.model, judge.model_cache_dir, judge.model_cache_max_bytes) == ("/m", "/var/lib/looptool/models", 80 * 2**30)
    cfg = load_config(environ={"LOOPTOOL_JUDGE__MODEL": "/m", "LOOPTOOL_JUDGE__MODEL_CACHE_DIR": str(tmp_path)})
    assert judge_settings(cfg).model_cache_dir == str(tmp_path)
