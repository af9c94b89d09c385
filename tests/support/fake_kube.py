"""A fake cluster for the operator's tests and benchmark (``bench/bench_operator.py``): test scaffolding,
not shipped in the package.

TEST EXECUTOR: :class:`TestStageExecutor` does real, minimal, deterministic data-stage work so the Kubernetes
behaviour can be tested without GPUs or the gRPC services: each stage writes a small committed JSONL
dataset to a local store (keyed by its inputs, reused when it already exists — the same idempotency
contract as ``looptool.shared.loop.stages``), reports progress, and records its outputs and counts in
``.status``. :func:`complete_training` plays the trainer Job's part: it writes
``<output_prefix>/result.json``. Hooks let a test make a stage slow or fail.

FAKE API SERVER: :class:`FakeKubeApi` (below) serves kmock's in-memory Kubernetes API on loopback.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from looptool.operators.executor import read_result_json
from looptool.shared.config import LoopToolConfig
from looptool.shared.loop.manifest import LoopRound
from looptool.shared.loop.preflight import check_round_models
from looptool.shared.loop.state import STAGE_OF, Phase, RoundStatus
from looptool.shared.records import DatasetRef, Progress
from looptool.shared.storage import LocalStore, dataset_exists, open_dataset_at
from looptool.shared.storage.datasets import DatasetWriter


class TestStageError(RuntimeError):
    """Same shape as ``stages.StageError``: a CamelCase reason and a message."""

    def __init__(self, reason: str, message: str):
        self.reason, self.message = reason, message
        super().__init__(f"{reason}: {message}")


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


class TestStageExecutor:
    """Deterministic stand-in for the gRPC data plane (see module docstring)."""

    __test__ = False  # not a pytest test class

    def __init__(self, root: str | Path, records: int = 8, stage_delay: float = 0.0, model_config: LoopToolConfig | None = None):
        self.root = Path(root)
        # Models are checked like ServiceExecutor does only against a config a test gives (its S3
        # server); the fake cluster has no object storage of its own.
        self.model_config = model_config
        self.store = LocalStore(self.root)
        self.records = records
        self.stage_delay = stage_delay  # seconds per stage (to catch a stage mid-flight)
        self.calls: Counter[str] = Counter()  # stage name -> times run_data_stage was entered
        self.fail: dict[str, tuple[str, str]] = {}  # stage -> (reason, message): raise every time
        self.gates: dict[str, threading.Event] = {}  # stage -> block until set
        self._lock = threading.Lock()

    def check_models(self, round: LoopRound) -> None:
        if self.model_config is not None:
            check_round_models(round, self.model_config, local_paths=False)

    def base(self, round: LoopRound) -> str:
        return f"runs/{round.metadata.namespace}/{round.name}"

    def _dataset(self, prefix: str, rows: list[dict[str, Any]], kind: str) -> DatasetRef:
        if not dataset_exists(self.store, prefix):  # idempotent: a re-run reuses the committed output
            w = DatasetWriter(self.store, prefix, kind=kind)
            w.write_many(rows)
            w.commit()
        return open_dataset_at(self.store, prefix).ref

    def run_data_stage(self, phase: Phase, round: LoopRound, status: RoundStatus, previous: RoundStatus | None, on_progress) -> None:
        stage = STAGE_OF[phase]
        with self._lock:
            self.calls[stage] += 1
        gate = self.gates.get(stage)
        if gate is not None:
            gate.wait(timeout=60)
        if stage in self.fail:
            raise TestStageError(*self.fail[stage])
        n = self.records
        for i in range(n):
            if self.stage_delay:
                time.sleep(self.stage_delay / n)
            on_progress(Progress(stage=stage, done=i + 1, total=n))
        st = status.stage(stage)
        spec = round.spec
        base = self.base(round)
        if phase == Phase.SYNTHESIZING:
            seed = previous.datasetUri if previous else ""
            key = _key(spec.synthesis.model_dump(), spec.toolset.model_dump(), seed)
            rows = [{"id": f"{round.name}-s{i}", "round": spec.round, "seed": seed, "call": f"tool_{i % 3}"} for i in range(n)]
            ref = self._dataset(f"{base}/synthesize-{key}", rows, "samples")
            st.outputs["train"] = ref
            st.outputs["train_parquet"] = ref
            st.counts.update({"samples": n})
        elif phase == Phase.PROBING:
            train = st_out(status, "synthesize", "train")
            key = _key(train["content_hash"], status.checkpointUri)
            rows = [{"id": f"{round.name}-s{i}", "outcome": ("mastered", "borderline", "failed")[i % 3]} for i in range(n)]
            st.outputs["probe_results"] = self._dataset(f"{base}/probe-{key}", rows, "probe_results")
            st.counts.update(Counter(r["outcome"] for r in rows))
        elif phase == Phase.VERIFYING:
            probe = st_out(status, "probe", "probe_results")
            rows = [{"id": f"{round.name}-s{i}", "verdict": ("prediction_incorrect", "label_incorrect")[i % 2]} for i in range(n) if i % 3]
            st.outputs["verdicts"] = self._dataset(f"{base}/judge-{_key(probe['content_hash'])}", rows, "verdicts")
            st.counts.update(Counter(r["verdict"] for r in rows))
        elif phase == Phase.EXPANDING:
            verdicts = st_out(status, "judge", "verdicts")
            rows = [{"id": f"{round.name}-e{i}", "from": f"{round.name}-s{i}"} for i in range(n)]
            ref = self._dataset(f"{base}/expand-{_key(verdicts['content_hash'], spec.expand.model_dump())}", rows, "samples")
            st.outputs["expansions"] = st.outputs["next"] = ref
            st.counts.update({"expanded": n})
            status.datasetUri = ref.uri
        elif phase == Phase.EVALUATING:
            # Deterministic "accuracy": a function of the round index and the checkpoint.
            h = int(hashlib.sha256(status.checkpointUri.encode()).hexdigest()[:4], 16) / 0xFFFF
            status.accuracy = {"heldout": round_(0.5 + 0.1 * min(spec.round, 4) + 0.01 * h)}
            st.metrics["accuracy_heldout"] = status.accuracy["heldout"]
            st.counts.update({"n_heldout": n})
        else:
            raise TestStageError("NotADataStage", f"{phase.value} is not a data stage")

    def training_request(self, round: LoopRound, status: RoundStatus, previous: RoundStatus | None) -> dict[str, Any]:
        data = st_out(status, "synthesize", "train_parquet")
        base_model = previous.checkpointUri if previous else (round.spec.baseModel.uri or "builtin:tiny")  # type: ignore[union-attr]
        config = round.spec.training.model_dump(mode="json")
        key = _key(data["content_hash"], base_model, config)
        return {
            "run_id": f"{round.name}-{key}",
            "dataset": data,
            "base_checkpoint_uri": base_model,
            "output_prefix": self.store.uri(f"{self.base(round)}/train-{key}"),
            "config": config,
            "round": round.spec.round,
        }

    def read_training_result(self, output_prefix: str) -> dict[str, Any] | None:
        return read_result_json(output_prefix, None)

    def record_training_result(self, status: RoundStatus, result: dict[str, Any]) -> None:
        if not result.get("checkpoint_uri"):
            raise TestStageError("TrainingFailed", "trainer finished without a checkpoint")
        st = status.stage("train")
        st.checkpointUri = status.checkpointUri = result["checkpoint_uri"]
        st.metrics.update(result.get("metrics") or {})


def st_out(status: RoundStatus, stage: str, name: str) -> dict[str, Any]:
    ref = status.stage(stage).outputs.get(name)
    if ref is None:
        raise TestStageError("MissingInput", f"stage output {stage}.{name} is missing")
    return ref.model_dump(mode="json")


def round_(x: float) -> float:
    return float(f"{x:.4f}")


def complete_training(request: dict[str, Any], metrics: dict[str, float] | None = None) -> str:
    """Do what the trainer Job does at its end: write ``<output_prefix>/result.json``. Returns the checkpoint URI."""
    from looptool.shared.storage import split_uri

    prefix = request["output_prefix"].rstrip("/")
    ckpt = f"{prefix}/checkpoint"
    store, key = split_uri(f"{prefix}/result.json")
    store.put_bytes(key, json.dumps({"checkpoint_uri": ckpt, "metrics": metrics or {"reward_mean": 0.5}}).encode())
    return ckpt


# ===================================================================================== fake API server
# A Kubernetes API for tests and the benchmark: kmock's in-memory emulator served over HTTP on
# loopback from a background thread, with the gaps that matter to an operator filled in.

RESOURCES = {
    "looptool.io/v1alpha1/looprounds": dict(kind="LoopRound", namespaced=True, subresources={"status"},
                                            verbs={"create", "delete", "get", "list", "patch", "update", "watch"}),
    "looptool.io/v1alpha1/loopplans": dict(kind="LoopPlan", namespaced=True, subresources={"status"},
                                           verbs={"create", "delete", "get", "list", "patch", "update", "watch"}),
    "batch/v1/jobs": dict(kind="Job", namespaced=True, subresources={"status"},
                          verbs={"create", "delete", "get", "list", "patch", "update", "watch"}),
    "v1/configmaps": dict(kind="ConfigMap", namespaced=True, verbs={"create", "delete", "get", "list", "patch", "watch"}),
    "v1/persistentvolumeclaims": dict(kind="PersistentVolumeClaim", namespaced=True, verbs={"create", "delete", "get", "list", "patch", "watch"}),
    "v1/events": dict(kind="Event", namespaced=True, verbs={"create", "get", "list", "watch"}),
    # create/delete/patch on pods, namespaces and secrets: for the job runner of tests/support/cluster_box.py
    "v1/pods": dict(kind="Pod", namespaced=True, subresources={"status"}, verbs={"create", "delete", "get", "list", "patch", "watch"}),
    "v1/secrets": dict(kind="Secret", namespaced=True, verbs={"create", "delete", "get", "list", "patch", "watch"}),
    "v1/namespaces": dict(kind="Namespace", namespaced=False, verbs={"create", "get", "list", "watch"}),
    "apiextensions.k8s.io/v1/customresourcedefinitions": dict(kind="CustomResourceDefinition", namespaced=False, shortnames={"crd", "crds"},
                                                              verbs={"create", "get", "list", "patch", "watch"}),
}
CRD_DIR = Path(__file__).parent / "crds"  # vendored third-party CRDs (see crds/README.md)
CRD_VERBS = {"create", "delete", "get", "list", "patch", "update", "watch"}


@functools.lru_cache(maxsize=8)
def load_crd(path: str) -> dict[str, Any]:
    import yaml

    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@functools.lru_cache(maxsize=16)
def crd_validator(path: str, version: str):
    """A JSON Schema validator of one served version of a CRD, strict about unknown fields like ``kubectl``."""
    import jsonschema

    from looptool.operators.crd import to_json_schema

    (v,) = [v for v in load_crd(path)["spec"]["versions"] if v["name"] == version]
    return jsonschema.Draft4Validator(to_json_schema(v["schema"]["openAPIV3Schema"], strict_fields=True))


def crd_errors(path: str, version: str, obj: Any) -> list[str]:
    """Schema problems of ``obj`` against the CRD at ``path`` (``[]`` = valid), one line each."""
    errors = sorted(crd_validator(path, version).iter_errors(obj), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors]


class FakeKubeApi:
    """kmock's KubernetesEmulator on ``127.0.0.1:<port>``, in its own thread and event loop.

    Fills kmock's gaps: created objects get ``uid``/``resourceVersion``/``creationTimestamp``/
    ``generation``; every write bumps ``resourceVersion`` (kopf waits for the version it patched);
    ``generation`` follows spec changes; ``/status`` patches change only ``.status`` and main-resource
    patches never touch ``.status`` (a CRD with the status subresource); LoopRounds are validated
    against the generated CRD schema like the API server would (422 Invalid); ``/version`` and
    ``v1/namespaces`` are served; label selectors are *not* applied (clients must filter, as ours do).
    ``crds``: CRD files (e.g. ``CRD_DIR / "ray.io_rayjobs.yaml"``) installed like ``kubectl apply``: their
    resources appear in API discovery, the CRD objects under ``customresourcedefinitions``, and created
    objects are validated against the CRD's schema (422 Invalid).
    """

    def __init__(self, validate_schema: bool = True, crds: Sequence[str | Path] = (), looptool_crds: bool = True):
        self.validate_schema = validate_schema
        # False: the looptool.io resources exist only once their CRDs are created through the API
        # (``kubectl apply -f charts/looptool/crds``), as on a fresh cluster.
        self.looptool_crds = looptool_crds
        self.crds = [str(c) for c in crds]
        self.crd_paths: dict[tuple[str, str, str], str] = {}  # (group, version, plural) -> CRD file
        self.url = ""
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop = None
        self._loop = None
        self.kmock = None
        self._rv = 0
        self._rv_lock = threading.Lock()
        self.error: BaseException | None = None
        self.creates: Counter[str] = Counter()  # plural -> POSTs received (incl. rejected ones)
        self.requests_served = 0

    # ---------------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> "FakeKubeApi":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> str:
        self._thread = threading.Thread(target=self._main, name="fake-kube-api", daemon=True)
        self._thread.start()
        if not self._ready.wait(30) or not self.url:
            raise RuntimeError(f"fake Kubernetes API did not start: {self.error!r}")
        return self.url

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=15)

    def _main(self) -> None:
        import asyncio

        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # surfaced by start()
            self.error = exc
            self._ready.set()

    async def _serve(self) -> None:
        import asyncio

        import kmock

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        _watch_streams_as_json()
        emulator = _make_emulator_class()(api=self)
        for key, info in RESOURCES.items():
            if self.looptool_crds or not key.startswith("looptool.io/"):
                emulator.resources[key] = kmock.ResourceInfo(**info)
        for path in self.crds:
            crd = load_crd(path)
            spec = crd["spec"]
            for v in spec["versions"]:
                if v.get("served", True):
                    emulator.resources[f"{spec['group']}/{v['name']}/{spec['names']['plural']}"] = kmock.ResourceInfo(
                        kind=spec["names"]["kind"], namespaced=spec["scope"] == "Namespaced",
                        subresources=set(v.get("subresources") or {}), verbs=CRD_VERBS,
                    )
                    self.crd_paths[spec["group"], v["name"], spec["names"]["plural"]] = path
            emulator.objects["apiextensions.k8s.io/v1/customresourcedefinitions", None, crd["metadata"]["name"]] = crd
        emulator.objects["v1/namespaces", None, "default"] = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}
        async with emulator as km, kmock.Server(km) as server:
            self.kmock = km
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def next_rv(self) -> str:
        with self._rv_lock:
            self._rv += 1
            return str(self._rv)

    # ---------------------------------------------------------------------------------- a tiny client

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        import urllib.error
        import urllib.request

        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            payload = exc.read().decode(errors="replace")
            try:
                payload = json.loads(payload).get("message", payload)
            except ValueError:
                pass
            raise FakeApiError(exc.code, str(payload)) from None
        return json.loads(raw) if raw else None

    @staticmethod
    def path(api_version: str, plural: str, ns: str | None = "default", name: str = "", sub: str = "") -> str:
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        p = f"{prefix}/namespaces/{ns}/{plural}" if ns else f"{prefix}/{plural}"
        return p + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    def create(self, api_version: str, plural: str, body: dict[str, Any], ns: str = "default") -> dict[str, Any]:
        return self.request("POST", self.path(api_version, plural, ns), body)

    def get(self, api_version: str, plural: str, name: str, ns: str = "default") -> dict[str, Any] | None:
        try:
            return self.request("GET", self.path(api_version, plural, ns, name))
        except FakeApiError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, api_version: str, plural: str, ns: str = "default") -> list[dict[str, Any]]:
        return (self.request("GET", self.path(api_version, plural, ns)) or {}).get("items") or []

    def patch(self, api_version: str, plural: str, name: str, body: dict[str, Any], ns: str = "default", sub: str = "") -> dict[str, Any]:
        return self.request("PATCH", self.path(api_version, plural, ns, name, sub), body, "application/merge-patch+json")

    def delete(self, api_version: str, plural: str, name: str, ns: str = "default") -> Any:
        return self.request("DELETE", self.path(api_version, plural, ns, name))


class FakeKubeApiProcess(FakeKubeApi):
    """The same fake API in a child process (``python tests/support/fake_kube.py``), so that the
    mock's CPU does not share the GIL with the code under test (benchmarks). HTTP client only."""

    def start(self) -> str:
        import subprocess
        import sys

        args = [sys.executable, __file__] + ([] if self.validate_schema else ["--no-schema"]) + [f"--crd={c}" for c in self.crds]
        args += [] if self.looptool_crds else ["--no-looptool-crds"]
        self._proc = subprocess.Popen(args, stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
        line = self._proc.stdout.readline().strip() if self._proc.stdout else ""
        if not line.startswith("http://"):
            raise RuntimeError(f"fake Kubernetes API process did not start: {line!r}")
        self.url = line
        return line

    def stop(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except Exception:
                proc.kill()

    def stats(self) -> dict[str, Any]:
        return self.request("GET", "/_fake/stats")


def _serve_forever(argv: list[str]) -> int:
    import signal
    import sys

    api = FakeKubeApi(validate_schema="--no-schema" not in argv, crds=[a.split("=", 1)[1] for a in argv if a.startswith("--crd=")],
                      looptool_crds="--no-looptool-crds" not in argv)
    print(api.start(), flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    api.stop()
    return 0


class FakeApiError(RuntimeError):
    def __init__(self, status: int, message: str):
        self.status, self.message = status, message
        super().__init__(f"{status}: {message}")


def _make_emulator_class():
    """Subclass kmock's emulator lazily (kmock is a test dependency)."""
    import datetime as dt
    import uuid

    import attrs
    import kmock

    try:
        from support import kubectl_api
    except ImportError:  # run as a script: tests/support/ is sys.path[0]
        import kubectl_api  # type: ignore[no-redef]

    class _ForgetfulHistory(kmock.RawHandler):
        """kmock matches every request against its reactions by iterating the *whole* request history
        (O(requests served) per request, so a long run slows to a crawl). Our API needs no history:
        keep only the request being matched. Sits between the emulator and RawHandler in the MRO;
        matching is synchronous up to the first await, so concurrent requests are safe."""

        async def _handle(self, request):  # type: ignore[override]
            self._requests[:] = [request]
            self.api.requests_served += 1
            return await super()._handle(request)

    @attrs.define(kw_only=True)
    class _Emulator(kmock.KubernetesEmulator, _ForgetfulHistory):
        api: Any = None

        async def _handle(self, request):  # type: ignore[override]
            if request.url.path == "/_fake/stats":  # for FakeKubeApi in another process
                import aiohttp.web

                return aiohttp.web.json_response({"requests_served": self.api.requests_served, "creates": dict(self.api.creates)})
            if request.url.path.startswith("/openapi/"):  # kubectl: does the server validate fields?
                import aiohttp.web

                doc = kubectl_api.openapi(request.url.path)
                if doc is None:
                    raise kmock.KubernetesError(status=404, reason="NotFound", message=f"{request.url.path} not found")
                return aiohttp.web.json_response(doc)
            if request.body and (b"NaN" in request.body or b"Infinity" in request.body):
                try:  # JSON has no NaN/Infinity: a real API server refuses the body (Python's json writes them)
                    json.loads(request.body, parse_constant=_no_constant)
                except ValueError as exc:
                    raise kmock.KubernetesError(status=400, reason="BadRequest", message=f"the body is not valid JSON: {exc}")
            res = request.resource
            action = getattr(request.action, "name", str(request.action)).upper() if request.action else ""
            if res is not None and isinstance(request.data, (dict, list)):
                is_round = res.group == "looptool.io" and res.plural == "looprounds"
                if action == "CREATE" and isinstance(request.data, dict):
                    self.api.creates[res.plural] += 1
                    meta = request.data.setdefault("metadata", {})
                    if request.namespace and not meta.get("namespace"):
                        meta["namespace"] = request.namespace
                    meta.setdefault("uid", str(uuid.uuid4()))
                    meta.setdefault("creationTimestamp", dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
                    meta["generation"] = 1
                    meta["resourceVersion"] = self.api.next_rv()
                    if is_round:
                        request.data.pop("status", None)  # status is set only through /status
                        if self.api.validate_schema:
                            from looptool.operators.crd import validation_errors

                            errors = validation_errors(request.data)
                            if errors:
                                raise _invalid(kmock, "LoopRound", res.group, meta.get("name", ""), errors)
                    crd_path = self.api.crd_paths.get((res.group, res.version, res.plural))
                    if crd_path is not None:
                        errors = crd_errors(crd_path, res.version, request.data)
                        if errors:
                            raise kmock.KubernetesError(status=422, reason="Invalid", message="; ".join(errors[:5]))
                    elif res.plural == "customresourcedefinitions":  # `kubectl apply` of a CRD: serve its resources
                        for key, info in kubectl_api.crd_resources(request.data):
                            self.resources[key] = kmock.ResourceInfo(**info)
                    elif res.group and (crd := kubectl_api.find_crd(self.objects, res.group, res.plural)) is not None:
                        errors = kubectl_api.schema_errors(crd, res.version, request.data)
                        if errors:
                            raise _invalid(kmock, crd["spec"]["names"]["kind"], res.group, meta.get("name", ""), errors[:5])
                elif action == "UPDATE" and request.name:
                    data = request.data
                    if isinstance(data, dict):
                        if request.subresource == "status":
                            for k in [k for k in data if k != "status"]:
                                data.pop(k)
                        elif is_round:
                            data.pop("status", None)
                        if is_round and request.subresource != "status" and "spec" in data:
                            cur = self.objects[res, request.namespace, request.name] if (res, request.namespace, request.name) in self.objects else None
                            gen = ((cur.get("metadata") or {}).get("generation") or 1) if cur is not None and not cur.deleted else 1
                            data.setdefault("metadata", {})["generation"] = gen + 1
                        if isinstance(data.get("metadata"), dict) or "metadata" not in data:
                            data.setdefault("metadata", {})["resourceVersion"] = self.api.next_rv()
                    else:  # JSON patch: a failed "test" op is 422, as kopf's optimistic concurrency expects
                        key = (res, request.namespace, request.name)
                        cur = self.objects[key] if key in self.objects else None
                        current = cur.raw if cur is not None and not cur.deleted else {}
                        for op in data:
                            if op.get("op") == "test" and _pointer(current, op.get("path", "")) != op.get("value"):
                                raise kmock.KubernetesError(status=422, reason="Invalid", message=f"test of {op.get('path')} failed")
                        data.append({"op": "add", "path": "/metadata/resourceVersion", "value": self.api.next_rv()})
            response = await super()._handle(request)
            if res is not None and action in ("LIST", "FETCH") and getattr(response, "body", None) and response.status == 200:
                response = self._for_kubectl(request, res, action, response)
            return response

        async def _serve_version(self, request):  # type: ignore[override]
            # kmock copies short names to subresources ("looprounds/status"): kubectl warns they are ambiguous
            # and serves the core group as "/v1"; kubectl needs "v1", singular names and the usual short names
            payload = await super()._serve_version(request)
            payload["groupVersion"] = payload["groupVersion"].lstrip("/")
            for r in payload["resources"]:
                if "/" in r["name"]:
                    r["shortNames"], r["categories"] = [], []
                    continue
                if r["singularName"] == r["name"]:
                    r["singularName"] = r["kind"].lower()
                r["shortNames"] = r["shortNames"] or kubectl_api.SHORT_NAMES.get(r["name"], [])
            return payload

        async def _serve_watch(self, request):  # type: ignore[override]
            """kmock's watch plus field selectors and, for ``sendInitialEvents=true`` (client-go's
            streaming list, used by ``kubectl delete``/``wait``), the BOOKMARK that ends the initial events."""
            yield b""
            selector = request.params.get("fieldSelector", "")
            res = request.resource
            check = self._KubernetesEmulator__check  # kmock's own namespace/name filter

            def wanted(event):
                return not selector or kubectl_api.field_selector_match(event.get("object") or {}, selector)

            async with self._lock:
                objs = [o for o in self._KubernetesEmulator__get_objs(request, strict=False) if not o.deleted]
                initial = [{"type": "ADDED", "object": o.raw} for o in objs]
            for event in initial:
                if wanted(event):
                    yield event
            if request.params.get("sendInitialEvents") == "true":
                kind = self.resources[res].kind if res in self.resources else ""
                yield {"type": "BOOKMARK", "object": {
                    "kind": kind, "apiVersion": f"{res.group}/{res.version}" if res.group else res.version,
                    "metadata": {"resourceVersion": str(self.api._rv), "annotations": {"k8s.io/initial-events-end": "true"}}}}
            async for event in self._buses[res]:
                meta = (event.get("object") or {}).get("metadata") or {}
                if check(request, res, meta.get("namespace"), meta.get("name"), strict=False) and wanted(event):
                    yield event

        def _for_kubectl(self, request, res, action, response):
            """Typed lists, field selectors and (on ``Accept: ...;as=Table``) Tables, as kubectl expects."""
            import aiohttp.web

            try:
                payload = json.loads(response.body)
            except (TypeError, ValueError):
                return response
            kind = self.resources[res].kind if res in self.resources else ""
            if action == "LIST" and isinstance(payload, dict) and "items" in payload:
                selector = request.params.get("fieldSelector", "")
                items = [o for o in payload["items"] if not selector or kubectl_api.field_selector_match(o, selector)]
                for o in items:
                    o.setdefault("kind", kind)
                    o.setdefault("apiVersion", f"{res.group}/{res.version}" if res.group else res.version)
                payload = {**payload, "items": items, "kind": f"{kind}List",
                           "apiVersion": f"{res.group}/{res.version}" if res.group else res.version}
            if "as=Table" in request.headers.get("Accept", ""):
                crd = kubectl_api.find_crd(self.objects, res.group, res.plural) if res.group else None
                items = payload["items"] if action == "LIST" else [payload]
                payload = kubectl_api.to_table(items, kind, crd, res.version)
            return aiohttp.web.json_response(payload)

    return _Emulator


def _watch_streams_as_json() -> None:
    """kmock streams watch events as application/octet-stream; client-go (``kubectl delete``/``wait``
    watch for the deletion) only decodes a watch with a JSON content type, as the API server sends.
    Patched once per process, for responses to ``?watch=true`` requests only."""
    import aiohttp.web

    if getattr(aiohttp.web.StreamResponse.prepare, "_looptool_watch_json", False):
        return
    original = aiohttp.web.StreamResponse.prepare

    async def prepare(self, request):  # type: ignore[no-untyped-def]
        if request.query.get("watch") in ("true", "1") and self.content_type == "application/octet-stream":
            self.content_type = "application/json"
        return await original(self, request)

    prepare._looptool_watch_json = True  # type: ignore[attr-defined]
    aiohttp.web.StreamResponse.prepare = prepare  # type: ignore[method-assign]


def _no_constant(name: str) -> Any:
    raise ValueError(f"invalid character {name[0]!r} looking for beginning of value ({name})")


def _invalid(kmock: Any, kind: str, group: str, name: str, errors: list[str]) -> Exception:
    """422 Invalid with the causes in ``details``: kubectl prints ``The <Kind> "<name>" is invalid: ...``."""
    causes = [{"reason": "FieldValueInvalid", "field": e.split(": ", 1)[0], "message": e.split(": ", 1)[-1]} for e in errors]
    return kmock.KubernetesError(status=422, reason="Invalid", message=f'{kind}.{group} "{name}" is invalid: ' + "; ".join(errors),
                                 details={"name": name, "group": group, "kind": kind, "causes": causes})


def _pointer(doc: Any, path: str) -> Any:
    for part in [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]:
        if isinstance(doc, dict):
            doc = doc.get(part)
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            return None
    return doc


if __name__ == "__main__":
    import sys

    sys.exit(_serve_forever(sys.argv[1:]))
