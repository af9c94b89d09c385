"""A cluster in a box: the Kubernetes path of LoopTool (``helm install``, ``kubectl apply`` of a LoopRound,
Grafana per stage) on one machine, with no real Kubernetes.

What runs, all on loopback:

- the fake Kubernetes API (``fake_kube.FakeKubeApiProcess``, no LoopTool resources until ``kubectl
  apply -f charts/looptool/crds`` creates the CRDs), with a kubeconfig for the static ``kubectl``;
- the Helm chart rendered by ``helm template`` with CPU values (:data:`CPU_VALUES`): its config and
  operator-settings ConfigMaps and its Secrets are applied with ``kubectl``; only hosts, ports and the
  S3 endpoint of the rendered config are rewritten for loopback (:func:`loopback_config`);
- SeaweedFS (``s3server.SeaweedServer``) in place of the chart's object-store StatefulSet, with the
  identities of the chart's ``s3.json`` Secret (admin + the trainer's narrower key);
- the chart's Deployments (the five services and ``looptool operator``) started as local processes
  from their pod templates: command, args, env (Secrets resolved from the API), volumes (ConfigMaps
  read from the API into a directory, emptyDirs as directories) — see :class:`PodProcess`;
- :class:`LocalKubelet`, which plays the kubelet and the Job controller: it runs every Job's pod
  template in the CPU image with podman (:class:`PodContainer`) when podman holds the Job's image built
  from this checkout (``make image`` up to date; ``runtime="auto"``, the default), else as a process
  like the Deployments (logging why); it writes Pod and Job status back (``backoffLimit``,
  ``podFailurePolicy``, ``activeDeadlineSeconds``), deletes the pods of a deleted Job, and publishes
  running trainer pods to Prometheus (``file_sd``) the way the chart's PodMonitor selects them;
- optionally Prometheus, its scrape config translated from the chart's ServiceMonitor and PodMonitor
  (:func:`prometheus_config`).

What differs from a real cluster: the Deployments, and trainer pods whose image is stale or absent,
run from this checkout's virtualenv (which plays the chart's image; any other image fails to pull
unless ``podman image exists`` finds it), without security contexts; resources, node selectors and
tolerations are never applied; podman runs with ``--network host``; container ports are mapped to
free loopback ports and the args/env/URLs naming them are rewritten; the operator gets ``--api-url``
(in a cluster it uses its ServiceAccount; there is no RBAC); Deployments and Services are not objects
in the API; SeaweedFS is not the chart's StatefulSet; retries of a failed pod back off 1 s (the Job
controller: 10 s doubling). More in docs/kubernetes.md ("A cluster in a box").

``python tests/support/cluster_box.py`` (``make cluster-demo``) runs the user's flow and prints what
kubectl prints; :mod:`tests.e2e.test_cluster_box` asserts it.
"""

from __future__ import annotations

import base64
import copy
import ctypes
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

if __name__ == "__main__":  # run as a script: make the `support` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import REPO
from support.fake_kube import FakeApiError, FakeKubeApiProcess
from support.k8s_tools import helm, tool
from support.net import free_port
from support.s3server import SeaweedServer

CHART = REPO / "charts" / "looptool"
CRDS = CHART / "crds"
RELEASE = "looptool"
VENV_BIN = Path(sys.executable).parent

# The chart's values for a CPU box: the transformers backend on CPU, no GPU requests, and the
# ServiceMonitor rendered (as when the Prometheus operator's API exists). Everything else is the
# chart's defaults.
CPU_VALUES: dict[str, Any] = {
    "config": {"inference": {"backend": "transformers", "model": "", "device": "cpu", "dtype": "float32"},
               "log": {"level": "INFO", "json": False}},
    "services": {"inference": {"resources": {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"memory": "8Gi"}}}},
    "metrics": {"serviceMonitor": {"enabled": True}},
}


def _die_with_parent() -> None:  # in the child before exec: no orphans when the box's process dies
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


# ============================================================================================ the chart


@dataclass
class Chart:
    """``helm template`` of the chart: its documents by kind and name."""

    docs: list[dict[str, Any]]

    @classmethod
    def render(cls, namespace: str, values: dict[str, Any], workdir: Path) -> "Chart":
        vf = workdir / "values.yaml"
        vf.write_text(yaml.safe_dump(values))
        out = helm("template", RELEASE, str(CHART), "-n", namespace, "-f", str(vf), "--api-versions", "monitoring.coreos.com/v1").stdout
        return cls([d for d in yaml.safe_load_all(out) if d])

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for d in self.docs:
            if d["kind"] == kind and d["metadata"]["name"] == name:
                return d
        raise KeyError(f"the rendered chart has no {kind} {name}")

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def secret(self, name: str) -> dict[str, str]:
        return {k: base64.b64decode(v).decode() for k, v in (self.get("Secret", name).get("data") or {}).items()}


def loopback_config(rendered: str, ports: dict[str, tuple[int, int]], s3_endpoint: str) -> str:
    """The chart's config.yaml with only hosts, ports and the S3 endpoint rewritten for loopback.
    ``ports``: service name -> (gRPC port, metrics port) on 127.0.0.1."""
    cfg = yaml.safe_load(rendered)
    for name, (port, metrics_port) in ports.items():
        svc = cfg["services"][name]
        svc.update(host="127.0.0.1", port=port, metrics_port=metrics_port)
        if svc.get("endpoints"):  # the headless Service's dns:/// target, now one loopback replica
            svc["endpoints"] = [f"dns:///127.0.0.1:{port}"]
    cfg["storage"]["s3"]["endpoint"] = s3_endpoint
    cfg.setdefault("security", {})["metrics_host"] = "127.0.0.1"
    return yaml.safe_dump(cfg, sort_keys=False)


# ============================================================================================ processes


class PodSetupError(RuntimeError):
    """A pod that cannot start (a missing ConfigMap, Secret or claim): the container's waiting reason."""

    def __init__(self, reason: str, message: str):
        self.reason, self.message = reason, message
        super().__init__(f"{reason}: {message}")


@dataclass
class PodProcess:
    """One container of a pod template as a local process. Volumes become directories under
    ``root`` (ConfigMaps/Secrets read from the API, claims under ``claims_root``, kept across pods);
    paths under a mount, container ports (mapped to free loopback ports) and ``0.0.0.0`` are rewritten
    in the command, args and env."""

    api: FakeKubeApiProcess
    namespace: str
    name: str
    pod_spec: dict[str, Any]
    root: Path
    claims_root: Path
    port_map: dict[int, int] = field(default_factory=dict)  # container port -> host port (filled on start)
    extra_args: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def container(self) -> dict[str, Any]:
        return self.pod_spec["containers"][0]

    def _volume_dir(self, vol: dict[str, Any]) -> Path:
        d = self.root / "volumes" / vol["name"]
        if "configMap" in vol or "secret" in vol:
            is_cm = "configMap" in vol
            ref = vol["configMap"]["name"] if is_cm else vol["secret"]["secretName"]
            obj = self.api.get("v1", "configmaps" if is_cm else "secrets", ref, self.namespace)
            if obj is None:
                raise PodSetupError("FailedMount", f'{"configmap" if is_cm else "secret"} "{ref}" not found')
            data = dict(obj.get("data") or {})
            if not is_cm:
                data = {k: base64.b64decode(v).decode() for k, v in data.items()}
                data.update(obj.get("stringData") or {})
            d.mkdir(parents=True, exist_ok=True)
            for key, text in data.items():
                (d / key).write_text(text)
            return d
        if "persistentVolumeClaim" in vol:
            claim = vol["persistentVolumeClaim"]["claimName"]
            if self.api.get("v1", "persistentvolumeclaims", claim, self.namespace) is None:
                raise PodSetupError("FailedScheduling", f'persistentvolumeclaim "{claim}" not found')
            d = self.claims_root / self.namespace / claim
        elif "emptyDir" not in vol:
            raise PodSetupError("FailedMount", f"volume {vol['name']}: only configMap, secret, emptyDir and persistentVolumeClaim run here")
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _rewrite(self, text: str, mounts: list[tuple[str, str]]) -> str:
        for mount_path, local in mounts:
            if text == mount_path or text.startswith(mount_path + "/"):
                text = local + text[len(mount_path):]
                break
        for cport, hport in self.port_map.items():
            if text == str(cport):
                return str(hport)
            text = text.replace(f":{cport}/", f":{hport}/").replace(f":{cport}", f":{hport}") if f":{cport}" in text else text
        return text.replace("0.0.0.0", "127.0.0.1")

    def _env(self, mounts: list[tuple[str, str]]) -> dict[str, str]:
        env = {"PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin", "LANG": os.environ.get("LANG", "C.UTF-8"),
               # node-level CPU settings as in the local runner (five torch processes share two cores here)
               "OMP_WAIT_POLICY": "PASSIVE", "MKL_DYNAMIC": "FALSE", "HOSTNAME": self.name}
        for e in self.container.get("env") or []:
            if "value" in e:
                env[e["name"]] = self._rewrite(str(e["value"]), mounts)
                continue
            src = e.get("valueFrom") or {}
            if "secretKeyRef" in src or "configMapKeyRef" in src:
                is_secret = "secretKeyRef" in src
                ref = src["secretKeyRef" if is_secret else "configMapKeyRef"]
                obj = self.api.get("v1", "secrets" if is_secret else "configmaps", ref["name"], self.namespace)
                if obj is None or ref["key"] not in (obj.get("data") or {}):
                    raise PodSetupError("CreateContainerConfigError", f'{"secret" if is_secret else "configmap"} "{ref["name"]}" '
                                                                      f'(key {ref["key"]}) not found')
                value = obj["data"][ref["key"]]
                env[e["name"]] = base64.b64decode(value).decode() if is_secret else value
            elif "fieldRef" in src:
                env[e["name"]] = {"metadata.name": self.name, "metadata.namespace": self.namespace}.get(src["fieldRef"]["fieldPath"], "")
        return env

    def _mounts(self) -> list[tuple[str, str, bool]]:
        """(mountPath, host directory, readOnly) of each volumeMount, the longest mount path first."""
        mounts: list[tuple[str, str, bool]] = []
        vols = {v["name"]: v for v in self.pod_spec.get("volumes") or []}
        for m in self.container.get("volumeMounts") or []:
            if m["mountPath"] == "/dev/shm":
                continue  # the host's /dev/shm (a process) or the container's own (podman)
            vol = vols.get(m["name"])
            if vol is None:
                raise PodSetupError("FailedMount", f"volumeMount {m['name']}: no such volume")
            mounts.append((m["mountPath"].rstrip("/"), str(self._volume_dir(vol)), bool(m.get("readOnly"))))
        mounts.sort(key=lambda m: -len(m[0]))  # the longest mount path wins
        return mounts

    def start(self) -> subprocess.Popen:
        for p in self.container.get("ports") or []:
            self.port_map.setdefault(int(p["containerPort"]), free_port())
        mounts = self._mounts()
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_path = self.root / f"{self.container['name']}.log"
        self.proc = self._launch(mounts)
        return self.proc

    def _launch(self, volume_mounts: list[tuple[str, str, bool]]) -> subprocess.Popen:
        c = self.container
        mounts = [(path, local) for path, local, _ in volume_mounts]
        vols = {v["name"]: v for v in self.pod_spec.get("volumes") or []}
        for vol in vols.values():  # files that name a mount path (config.yaml's model_cache_dir) see the local one
            if "configMap" in vol or "secret" in vol:
                for f in (self.root / "volumes" / vol["name"]).glob("*"):
                    text = f.read_text()
                    for mount_path, local in mounts:
                        text = re.sub(rf"(?<![\w/.-]){re.escape(mount_path)}(?=[/\s\"']|$)", local, text, flags=re.M)
                    f.write_text(text)
        argv = [self._rewrite(a, mounts) for a in (c.get("command") or []) + (c.get("args") or [])] + self.extra_args
        exe = shutil.which(argv[0], path=f"{VENV_BIN}:/usr/bin:/bin")
        if exe is None:
            raise PodSetupError("CreateContainerError", f"executable {argv[0]!r} not found")
        env = self._env(mounts)
        assert self.log_path is not None
        with open(self.log_path, "ab") as log:
            return subprocess.Popen([exe, *argv[1:]], env=env, cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)

    def container_status(self) -> dict[str, Any]:
        """What the pod's containerStatuses say of the runtime (nothing for a process)."""
        return {}

    def kill(self) -> None:
        """SIGKILL the container's main process (as an OOM kill or node failure would)."""
        if self.proc is not None:
            self.proc.kill()

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:]) if self.log_path else ""
        except OSError:
            return ""

    def stop(self, grace: float = 10.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# ============================================================================================ podman

RUNTIMES = ("auto", "podman", "process")
BOX_LABEL = "io.looptool.cluster-box"  # on every container the box runs: its kubelet's root


def image_build() -> Any:
    """images/build.py (not a package): the image reference, its build-inputs hash, podman's settings."""
    name = "looptool_image_build"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "images" / "build.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # dataclasses resolve annotations through sys.modules
        spec.loader.exec_module(mod)
    return sys.modules[name]


def podman(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """podman with `make image`'s settings (images/containers.conf: runc, ulimits; its storage)."""
    return subprocess.run(["podman", *args], env=image_build().container_env(), capture_output=True, text=True, timeout=timeout)


def image_current(image: str) -> tuple[bool, str]:
    """Whether podman holds ``image`` built from this checkout: its build-inputs label equals what
    images/build.py computes now (an image built before a source edit is stale). Else, why not."""
    if shutil.which("podman") is None:
        return False, "podman is not installed (bash images/deps.sh)"
    build = image_build()
    label = build.image_label(image, build.INPUTS_LABEL)
    if label is None:
        return False, f"podman has no image {image} (make image)"
    if not label:
        return False, f"{image} has no {build.INPUTS_LABEL} label: not built by images/build.py"
    if label != build.inputs_hash():
        return False, f"{image} is stale: built from other inputs than this checkout (make image)"
    return True, ""


@dataclass
class PodContainer(PodProcess):
    """One container of a pod template run by podman in its image: the command and args (the image's
    entrypoint when the command is empty), env (resolved as :class:`PodProcess` does), each volume's host
    directory at its mountPath, the pod's user/fsGroup and the container's capabilities,
    no-new-privileges and read-only root. ``--network host``: the loopback SeaweedFS, Prometheus and
    services are reachable, and container ports are mapped as for a process (args rewritten)."""

    image: str = ""
    box_id: str = ""
    container_id: str = ""

    @property
    def container_name(self) -> str:  # the kubelet's (dockershim) naming: k8s_<container>_<pod>_<namespace>
        return f"k8s_{self.container['name']}_{self.name}_{self.namespace}"

    def _security_args(self, mounts: list[tuple[str, str, bool]]) -> list[str]:
        pod_sc = self.pod_spec.get("securityContext") or {}
        sc = {**pod_sc, **(self.container.get("securityContext") or {})}
        args: list[str] = []
        uid, gid = sc.get("runAsUser"), sc.get("runAsGroup")
        if uid is not None:
            args += ["--user", f"{uid}:{gid}" if gid is not None else str(uid)]
        if sc.get("runAsNonRoot") and uid == 0:
            raise PodSetupError("CreateContainerConfigError", "container's runAsUser breaks non-root policy")
        fs_group = pod_sc.get("fsGroup")
        if fs_group is not None:
            # The kubelet's fsGroup: writable volumes belong to the group (setgid dirs), a supplementary group.
            args += ["--group-add", str(fs_group)]
            writable = {str(self._volume_dir(v)) for v in self.pod_spec.get("volumes") or []
                        if "emptyDir" in v or "persistentVolumeClaim" in v}
            for _, local, _ in mounts:
                if local in writable and os.stat(local).st_gid != int(fs_group):  # OnRootMismatch
                    for d, dirs, files in os.walk(local):
                        os.chown(d, -1, int(fs_group))
                        os.chmod(d, os.stat(d).st_mode | 0o2070)
                        for f in files:
                            os.chown(os.path.join(d, f), -1, int(fs_group))
                            os.chmod(os.path.join(d, f), os.stat(os.path.join(d, f)).st_mode | 0o060)
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        caps = sc.get("capabilities") or {}
        args += [f"--cap-drop={c}" for c in caps.get("drop") or []] + [f"--cap-add={c}" for c in caps.get("add") or []]
        if sc.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        return args

    def _launch(self, mounts: list[tuple[str, str, bool]]) -> subprocess.Popen:
        c = self.container
        # Paths are the container's own (volumes are mounted there): only ports and 0.0.0.0 are rewritten.
        env = self._env([])
        for node_only in ("PATH", "LANG", "HOSTNAME"):  # the image's PATH and locale; --hostname below
            env.pop(node_only)
        command = [self._rewrite(a, []) for a in c.get("command") or []]
        args = [self._rewrite(a, []) for a in c.get("args") or []] + self.extra_args
        cidfile = self.root / "container.id"
        cidfile.unlink(missing_ok=True)
        cmd = ["podman", "run", "--name", self.container_name, "--replace", "--rm", "--cidfile", str(cidfile),
               "--network", "host", "--hostname", self.name, "--stop-timeout",
               str(int(self.pod_spec.get("terminationGracePeriodSeconds", 30))), "--pull", "never",
               "--label", f"{BOX_LABEL}={self.box_id}", "--label", f"io.kubernetes.pod.name={self.name}",
               "--label", f"io.kubernetes.pod.namespace={self.namespace}", "--label", f"io.kubernetes.container.name={c['name']}",
               *self._security_args(mounts)]
        for mount_path, local, read_only in mounts:
            cmd += ["--volume", f"{local}:{mount_path}" + (":ro" if read_only else "")]
        client_env = image_build().container_env()
        for name, value in env.items():
            if name in client_env or "\n" in value:
                cmd += ["--env", f"{name}={value}"]  # a name podman itself reads: on the command line
            else:
                cmd += ["--env", name]  # the value from podman's environment: no Secret on a command line
                client_env[name] = value
        if command:
            cmd += ["--entrypoint", json.dumps(command)]
        cmd += [self.image, *args]
        assert self.log_path is not None
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(cmd, env=client_env, cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 60  # the id is written when the container is created
        while not self.container_id and time.monotonic() < deadline and proc.poll() is None:
            self.container_id = cidfile.read_text().strip() if cidfile.exists() else ""
            time.sleep(0.05)
        if not self.container_id and cidfile.exists():
            self.container_id = cidfile.read_text().strip()
        return proc

    def container_status(self) -> dict[str, Any]:
        return {"image": self.image, **({"containerID": f"podman://{self.container_id}"} if self.container_id else {})}

    def kill(self) -> None:
        podman("kill", "--signal", "KILL", self.container_name)

    def stop(self, grace: float = 10.0) -> None:
        """``podman stop`` (SIGTERM, SIGKILL after ``grace``), then the container is removed."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            podman("stop", "--time", str(int(grace)), self.container_name, timeout=grace + 60)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # the client outlived its container: not the pod's process
                proc.kill()
                proc.wait(timeout=10)
        podman("rm", "--force", "--ignore", self.container_name)



# ============================================================================================ kubelet


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _matches(labels: dict[str, str], selector: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@dataclass
class JobState:
    name: str
    namespace: str
    uid: str
    failed: int = 0
    succeeded: int = 0
    pod: PodProcess | None = None
    pod_name: str = ""
    started: float = 0.0
    next_start: float = 0.0
    done: bool = False
    pods: list[str] = field(default_factory=list)
    image_missing: str = ""  # the pod waits for this image (ErrImagePull, then ImagePullBackOff)


def failure_policy_action(job: dict[str, Any], container: str, exit_code: int) -> tuple[str, int]:
    """(action, rule index) of the first ``podFailurePolicy`` rule matching a container's exit code
    ("Count", -1 when none does), as the Job controller decides."""
    rules = ((job.get("spec") or {}).get("podFailurePolicy") or {}).get("rules") or []
    for i, rule in enumerate(rules):
        codes = rule.get("onExitCodes")
        if not codes or codes.get("containerName", container) != container:
            continue
        hit = exit_code in codes.get("values", [])
        if (codes.get("operator") == "In") == hit:
            return rule["action"], i
    return "Count", -1


class LocalKubelet(threading.Thread):
    """The kubelet and the Job controller for the Jobs in ``namespaces`` (see the module docstring)."""

    def __init__(self, api: FakeKubeApiProcess, namespaces: list[str], root: Path, pod_monitor: dict[str, Any] | None = None,
                 file_sd: Path | None = None, interval: float = 0.3, retry_delay: float = 1.0, images: tuple[str, ...] = (),
                 runtime: str = "auto", log: Callable[[str], None] = lambda s: None):
        super().__init__(name="local-kubelet", daemon=True)
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime {runtime!r}: one of {RUNTIMES}")
        self.api, self.namespaces, self.root = api, namespaces, root
        # auto: a pod whose image podman holds, built from this checkout, runs in it with podman; any
        # other as a local process. podman: only in podman (a stale image fails to pull). process: never.
        self.runtime, self.log = runtime, log
        self._fallbacks: set[str] = set()  # the images whose runtime (podman or a process) was logged
        # The images this node can run: the chart's (the local checkout plays it), plus any the local
        # podman holds. Any other image fails to pull, as on a node whose registry lacks it.
        self.images = set(images)
        self.pod_monitor, self.file_sd = pod_monitor, file_sd
        self.interval, self.retry_delay = interval, retry_delay
        self.jobs: dict[str, JobState] = {}
        self.errors: list[str] = []
        self.on_pod_started: Callable[[JobState], None] | None = None  # test hook (fault injection)
        self._halt = threading.Event()
        self._lock = threading.Lock()
        if file_sd is not None:
            file_sd.write_text("[]")

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.sync()
            except Exception as exc:  # surfaced by the box (errors), never silently lost
                self.errors.append(repr(exc))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)
        for st in self.jobs.values():
            if st.pod is not None:
                st.pod.stop(grace=5)
        if self.runtime != "process" and shutil.which("podman"):  # any container a lost client left behind
            ids = podman("ps", "--all", "--quiet", "--filter", f"label={BOX_LABEL}={self.root}").stdout.split()
            if ids:
                podman("rm", "--force", "--time", "5", *ids, timeout=120)

    # ---------------------------------------------------------------------------------------- sync

    def sync(self) -> None:
        seen: set[str] = set()
        for ns in self.namespaces:
            for job in self.api.list("batch/v1", "jobs", ns):
                uid = job["metadata"]["uid"]
                seen.add(uid)
                with self._lock:
                    st = self.jobs.setdefault(uid, JobState(job["metadata"]["name"], ns, uid))
                self._sync_job(job, st)
        for uid in [u for u in self.jobs if u not in seen]:  # the Job was deleted: its pods go too
            st = self.jobs.pop(uid)
            if st.pod is not None:
                st.pod.stop(grace=5)
            for pod in st.pods:
                try:
                    self.api.delete("v1", "pods", pod, st.namespace)
                except FakeApiError:
                    pass
        self._publish_targets()

    def _sync_job(self, job: dict[str, Any], st: JobState) -> None:
        spec = job.get("spec") or {}
        if st.done or spec.get("suspend"):
            return
        pod = st.pod
        deadline = spec.get("activeDeadlineSeconds")
        if pod is None and st.image_missing:
            if deadline and time.monotonic() - st.started > deadline:
                self._finish(job, st, "Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
            elif time.monotonic() >= st.next_start:
                self._retry_pull(job, st)
            return
        if pod is None:
            if time.monotonic() >= st.next_start:
                self._start_pod(job, st)
            return
        if deadline and time.monotonic() - st.started > deadline and pod.proc and pod.proc.poll() is None:
            pod.stop(grace=float((spec.get("template") or {}).get("spec", {}).get("terminationGracePeriodSeconds", 30)))
            self._finish(job, st, "Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
            return
        rc = pod.proc.poll() if pod.proc else None
        if rc is not None:
            self._pod_exited(job, st, rc)

    def _start_pod(self, job: dict[str, Any], st: JobState) -> None:
        tmpl = copy.deepcopy(spec_template(job))
        name = f"{st.name[:57]}-{uuid.uuid4().hex[:5]}"
        labels = {**(tmpl.get("metadata") or {}).get("labels", {}), "batch.kubernetes.io/job-name": st.name,
                  "job-name": st.name, "batch.kubernetes.io/controller-uid": st.uid, "controller-uid": st.uid}
        pod_obj = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": name, "namespace": st.namespace, "labels": labels,
                                "annotations": (tmpl.get("metadata") or {}).get("annotations", {}),
                                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": st.name, "uid": st.uid,
                                                     "controller": True, "blockOwnerDeletion": True}]},
                   "spec": tmpl["spec"], "status": {"phase": "Pending"}}
        self.api.create("v1", "pods", pod_obj, st.namespace)
        st.pods.append(name)
        st.pod_name = name
        cname = tmpl["spec"]["containers"][0]["name"]
        image = tmpl["spec"]["containers"][0].get("image") or ""
        in_podman, why = image_current(image) if self.runtime != "process" else (False, "")
        if not in_podman and self.runtime == "podman":
            st.image_missing, st.started = image, time.monotonic()
            self._pull_failed(job, st, cname, "ErrImagePull", f"rpc error: code = NotFound desc = {why}")
            return
        if not in_podman and not self.image_present(image):  # the pod waits for its image, the Job stays active (not ready)
            st.image_missing, st.started = image, time.monotonic()
            self._pull_failed(job, st, cname, "ErrImagePull",
                              f'rpc error: code = NotFound desc = failed to pull and unpack image "{image}": not found')
            return
        if image not in self._fallbacks and (in_podman or self.runtime == "auto"):
            self._fallbacks.add(image)  # one line per image, either way
            self.log(f"kubelet: pods of {image} run in podman (the image is a current build of this checkout)"
                     if in_podman else f"kubelet: pods of {image} run as local processes: {why}")
        pod_dir, claims = self.root / "pods" / st.namespace / name, self.root / "claims"
        proc = (PodContainer(self.api, st.namespace, name, tmpl["spec"], pod_dir, claims, image=image, box_id=str(self.root))
                if in_podman else PodProcess(self.api, st.namespace, name, tmpl["spec"], pod_dir, claims))
        try:
            proc.start()
        except PodSetupError as exc:  # the pod waits (as a real one would), the Job stays active
            self._pod_status(st, {"phase": "Pending", "containerStatuses": [
                {"name": cname, "ready": False, "restartCount": 0, "state": {"waiting": {"reason": exc.reason, "message": exc.message}}}]})
            self._job_status(job, st, active=1, ready=0)
            st.next_start = float("inf")
            return
        st.pod, st.started = proc, time.monotonic()
        proc.labels = labels
        self._pod_status(st, {"phase": "Running", "startTime": _now(), "containerStatuses": [
            {"name": cname, "ready": True, "restartCount": 0, "started": True, **proc.container_status(),
             "state": {"running": {"startedAt": _now()}}}]})
        self._job_status(job, st, active=1)
        if self.on_pod_started is not None:
            self.on_pod_started(st)

    def image_present(self, image: str) -> bool:
        if image in self.images:
            return True
        if shutil.which("podman") is None or not image:
            return False
        found = podman("image", "exists", image, timeout=30).returncode == 0
        if found:
            self.images.add(image)
        return found

    def _pull_failed(self, job: dict[str, Any], st: JobState, cname: str, reason: str, message: str) -> None:
        self._pod_status(st, {"phase": "Pending", "containerStatuses": [
            {"name": cname, "ready": False, "restartCount": 0, "image": st.image_missing,
             "state": {"waiting": {"reason": reason, "message": message}}}]})
        self._job_status(job, st, active=1, ready=0)
        st.next_start = time.monotonic() + self.retry_delay

    def _retry_pull(self, job: dict[str, Any], st: JobState) -> None:
        """Back off and pull again, as the kubelet does (ErrImagePull, ImagePullBackOff, ...); once
        the image is there (podman pulled it meanwhile) the waiting pod is dropped and a new one runs."""
        cname = spec_template(job)["spec"]["containers"][0]["name"]
        if image_current(st.image_missing)[0] if self.runtime == "podman" else self.image_present(st.image_missing):
            try:
                self.api.delete("v1", "pods", st.pod_name, st.namespace)
            except FakeApiError:
                pass
            st.image_missing = ""
            self._start_pod(job, st)
            return
        self._pull_failed(job, st, cname, "ImagePullBackOff", f'Back-off pulling image "{st.image_missing}"')

    def _pod_exited(self, job: dict[str, Any], st: JobState, rc: int) -> None:
        pod = st.pod
        assert pod is not None
        st.pod = None
        cname = pod.container["name"]
        exit_code = rc if rc >= 0 else 128 - rc  # killed by a signal: 128 + signal, as a container runtime reports
        runtime = pod.container_status()
        term = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error", "finishedAt": _now(),
                "message": "" if exit_code == 0 else pod.log_tail(5),
                **({"containerID": runtime["containerID"]} if "containerID" in runtime else {})}
        self._pod_status(st, {"phase": "Succeeded" if exit_code == 0 else "Failed", "containerStatuses": [
            {"name": cname, "ready": False, "restartCount": 0, **runtime, "state": {"terminated": term}}]})
        if exit_code == 0:
            st.succeeded += 1
            self._finish(job, st, "Complete", "Completed", "")
            return
        action, index = failure_policy_action(job, cname, exit_code)
        if action == "FailJob":
            self._finish(job, st, "Failed", "PodFailurePolicy",
                         f"Container {cname} for pod {st.namespace}/{st.pod_name} failed with exit code {exit_code} matching FailJob rule at index {index}")
            return
        if action != "Ignore":
            st.failed += 1
        if st.failed > int((job.get("spec") or {}).get("backoffLimit", 6)):
            self._finish(job, st, "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
            return
        st.next_start = time.monotonic() + self.retry_delay
        self._job_status(job, st, active=0)

    def _finish(self, job: dict[str, Any], st: JobState, kind: str, reason: str, message: str) -> None:
        st.done = True
        now = _now()
        conds = [{"type": "SuccessCriteriaMet" if kind == "Complete" else "FailureTarget", "status": "True", "reason": reason,
                  "message": message, "lastProbeTime": now, "lastTransitionTime": now},
                 {"type": kind, "status": "True", "reason": reason, "message": message, "lastProbeTime": now, "lastTransitionTime": now}]
        extra = {"completionTime": now} if kind == "Complete" else {}
        self._job_status(job, st, active=0, conditions=conds, **extra)

    def _pod_status(self, st: JobState, status: dict[str, Any]) -> None:
        self.api.patch("v1", "pods", st.pod_name, {"status": status}, st.namespace, sub="status")

    def _job_status(self, job: dict[str, Any], st: JobState, active: int, ready: int | None = None, **extra: Any) -> None:
        status = {"active": active, "ready": active if ready is None else ready, "failed": st.failed, "succeeded": st.succeeded,
                  "startTime": (job.get("status") or {}).get("startTime") or _now(), **extra}
        try:
            self.api.patch("batch/v1", "jobs", st.name, {"status": status}, st.namespace, sub="status")
        except FakeApiError as exc:
            if exc.status != 404:  # deleted meanwhile
                raise

    # ---------------------------------------------------------------------------------- Prometheus

    def _publish_targets(self) -> None:
        """Running pods the PodMonitor selects, as Prometheus file_sd targets with the labels service
        discovery gives (``__meta_kubernetes_pod_label_*``), so the monitor's relabelings apply."""
        if self.file_sd is None or self.pod_monitor is None:
            return
        spec = self.pod_monitor["spec"]
        port_name = spec["podMetricsEndpoints"][0]["port"]
        targets = []
        for st in list(self.jobs.values()):
            pod = st.pod
            if pod is None or not _matches(pod.labels, spec["selector"].get("matchLabels", {})):
                continue
            ports = {p.get("name"): p["containerPort"] for p in pod.container.get("ports") or []}
            if port_name not in ports or ports[port_name] not in pod.port_map:
                continue
            meta = {f"__meta_kubernetes_pod_label_{_sanitize(k)}": v for k, v in pod.labels.items()}
            meta.update(__meta_kubernetes_namespace=st.namespace, __meta_kubernetes_pod_name=st.pod_name)
            targets.append({"targets": [f"127.0.0.1:{pod.port_map[ports[port_name]]}"], "labels": meta})
        tmp = self.file_sd.with_suffix(".tmp")
        tmp.write_text(json.dumps(targets))
        tmp.replace(self.file_sd)  # atomic: Prometheus never reads half a file


def spec_template(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]


def _sanitize(label: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", label)


# ============================================================================================ Prometheus


def prometheus_config(chart: Chart, metrics_targets: dict[str, int], file_sd: Path, interval: str = "1s") -> dict[str, Any]:
    """Prometheus scrape config from the chart's ServiceMonitor and PodMonitor: the Services the
    monitor selects (``metrics_targets``: Service name -> loopback port of its ``metrics`` port) as
    static targets carrying the ``__meta_kubernetes_*`` labels Kubernetes service discovery would
    give, the monitor's path, honorLabels and relabelings; the trainer pods through ``file_sd``. The
    interval is shortened from the monitor's (30 s) for a run of minutes."""
    sm = chart.of_kind("ServiceMonitor")[0]
    ep = sm["spec"]["endpoints"][0]
    selected = [s for s in chart.of_kind("Service") if _matches(s["metadata"].get("labels") or {}, sm["spec"]["selector"]["matchLabels"])]
    static = []
    for svc in selected:
        name = svc["metadata"]["name"]
        if name not in metrics_targets or not any(p.get("name") == ep["port"] for p in svc["spec"]["ports"]):
            continue
        labels = {f"__meta_kubernetes_service_label_{_sanitize(k)}": v for k, v in svc["metadata"]["labels"].items()}
        labels.update(__meta_kubernetes_namespace=svc["metadata"]["namespace"], __meta_kubernetes_service_name=name,
                      namespace=svc["metadata"]["namespace"], service=name)
        static.append({"targets": [f"127.0.0.1:{metrics_targets[name]}"], "labels": labels})

    def relabel(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for r in rules or []:
            rr: dict[str, Any] = {"source_labels": r["sourceLabels"], "target_label": r["targetLabel"]}
            for k, pk in (("regex", "regex"), ("replacement", "replacement"), ("action", "action"), ("separator", "separator")):
                if k in r:
                    rr[pk] = r[k].lower() if k == "action" else r[k]
            out.append(rr)
        return out

    pm = chart.of_kind("PodMonitor")[0]
    pep = pm["spec"]["podMetricsEndpoints"][0]
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {"job_name": f"serviceMonitor/{sm['metadata']['namespace']}/{sm['metadata']['name']}/0", "metrics_path": ep.get("path", "/metrics"),
             "honor_labels": bool(ep.get("honorLabels")), "static_configs": static, "relabel_configs": relabel(ep.get("relabelings"))},
            {"job_name": f"podMonitor/{pm['metadata']['namespace']}/{pm['metadata']['name']}/0", "metrics_path": pep.get("path", "/metrics"),
             "honor_labels": bool(pep.get("honorLabels")), "file_sd_configs": [{"files": [str(file_sd)], "refresh_interval": "1s"}],
             "relabel_configs": relabel(pep.get("relabelings")) + [
                 {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                 {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"}]},
        ],
    }


# ============================================================================================ the box


class ClusterBox:
    """Everything above, started in order; ``kubectl(...)`` runs the static kubectl against it."""

    def __init__(self, workdir: Path | None = None, namespace: str = "looptool", extra_namespaces: tuple[str, ...] = (),
                 values: dict[str, Any] | None = None, prometheus: bool = False, log: Callable[[str], None] = lambda s: None,
                 runtime: str = "auto"):
        """``runtime``: how the kubelet runs Job pods (:class:`LocalKubelet`): ``auto`` (in podman when the
        image is built from this checkout, else a process), ``podman`` (the chart's image must be current)
        or ``process``."""
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime {runtime!r}: one of {RUNTIMES}")
        self.runtime = runtime
        self._own_dir = workdir is None  # removed on stop()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="looptool-box-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.namespace = namespace
        self.namespaces = [namespace, *extra_namespaces]
        self.values = _merge(CPU_VALUES, {"operator": {"watchNamespaces": self.namespaces}})
        self.values = _merge(self.values, values or {})
        self.want_prometheus = prometheus
        self.log = log
        self.api: FakeKubeApiProcess | None = None
        self.s3: SeaweedServer | None = None
        self.chart: Chart | None = None
        self.deployments: dict[str, PodProcess] = {}
        self.kubelet: LocalKubelet | None = None
        self.prometheus: subprocess.Popen | None = None
        self.prometheus_url = ""
        self.kubeconfig = self.workdir / "kubeconfig"
        self.config_text = ""
        self.operator_settings_text = ""

    # ------------------------------------------------------------------------------------- kubectl

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run([tool("kubectl"), "--kubeconfig", str(self.kubeconfig), *args], capture_output=True, text=True,
                              input=stdin, env={**os.environ, "HOME": str(self.workdir)})
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def _write_kubeconfig(self) -> None:
        assert self.api is not None
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "box",
            "clusters": [{"name": "box", "cluster": {"server": self.api.url}}],
            "users": [{"name": "box", "user": {}}],
            "contexts": [{"name": "box", "context": {"cluster": "box", "user": "box", "namespace": self.namespace}}],
        }))

    # ----------------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> "ClusterBox":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        t0 = time.monotonic()
        self.chart = chart = Chart.render(self.namespace, self.values, self.workdir)
        if self.runtime == "podman":  # refused now rather than as a trainer pod that never pulls
            image = yaml.safe_load(chart.get("ConfigMap", f"{RELEASE}-operator")["data"]["operator.yaml"])["trainer"]["image"]
            current, why = image_current(image)
            if not current:
                raise RuntimeError(f"runtime podman: {why}")
        creds = chart.secret(f"{RELEASE}-s3")
        self.s3 = SeaweedServer(workdir=str(self.workdir / "seaweed"), access_key=creds["accessKey"], secret_key=creds["secretKey"],
                                s3_config=chart.secret(f"{RELEASE}-s3-config")["s3.json"]).start()
        self.log(f"SeaweedFS S3 on {self.s3.endpoint} with the chart's identities ({time.monotonic() - t0:.1f}s)")
        self.api = FakeKubeApiProcess(looptool_crds=False)
        self.api.start()
        self._write_kubeconfig()
        self.log(f"fake Kubernetes API on {self.api.url}")

        # Ports: each Deployment's container ports -> loopback ports, decided before the config is written.
        deps = {d["metadata"]["name"]: d for d in chart.of_kind("Deployment")}
        for name, dep in deps.items():
            pod_spec = dep["spec"]["template"]["spec"]
            self.deployments[name] = PodProcess(self.api, self.namespace, name, pod_spec, self.workdir / "deployments" / name,
                                                self.workdir / "claims")
            for p in pod_spec["containers"][0].get("ports") or []:
                self.deployments[name].port_map[int(p["containerPort"])] = free_port()
        ports = {}
        for svc_name in ("inference", "toolsim", "synthesizer", "expander", "trainer"):
            c = deps[f"{RELEASE}-{svc_name}"]["spec"]["template"]["spec"]["containers"][0]
            named = {p["name"]: int(p["containerPort"]) for p in c["ports"]}
            pm = self.deployments[f"{RELEASE}-{svc_name}"].port_map
            ports[svc_name] = (pm[named["grpc"]], pm[named["metrics"]])
        cm = chart.get("ConfigMap", f"{RELEASE}-config")
        self.config_text = loopback_config(cm["data"]["config.yaml"], ports, f"http://{self.s3.endpoint}")
        op_cm = chart.get("ConfigMap", f"{RELEASE}-operator")
        settings = yaml.safe_load(op_cm["data"]["operator.yaml"])
        op = self.deployments[f"{RELEASE}-operator"]
        op_named = {p["name"]: int(p["containerPort"]) for p in op.container["ports"]}
        settings["metricsPort"] = op.port_map[op_named["metrics"]]
        settings["trainer"]["s3Endpoint"] = f"http://{self.s3.endpoint}"
        self.operator_settings_text = yaml.safe_dump(settings, sort_keys=False)
        op.extra_args = ["--api-url", self.api.url]  # in a cluster: the ServiceAccount's in-cluster config

        # `helm install`: the CRDs (kubectl apply, as helm does for crds/), then the chart's ConfigMaps and
        # Secrets in every watched namespace (the trainer Jobs of a namespace need them there).
        self.kubectl("apply", "-f", str(CRDS))
        for ns in self.namespaces:
            docs = []
            for d in chart.of_kind("ConfigMap") + chart.of_kind("Secret"):
                d = copy.deepcopy(d)
                d["metadata"]["namespace"] = ns
                if d["metadata"]["name"] == f"{RELEASE}-config":
                    d["data"]["config.yaml"] = self.config_text
                elif d["metadata"]["name"] == f"{RELEASE}-operator":
                    d["data"]["operator.yaml"] = self.operator_settings_text
                docs.append(d)
            self.kubectl("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump_all(docs))

        file_sd = self.workdir / "prometheus" / "trainer-pods.json"
        file_sd.parent.mkdir(parents=True, exist_ok=True)
        # The chart's trainer image runs in podman when it is built from this checkout, else this checkout
        # plays it; a round naming another allowed image waits for it (ErrImagePull / ImagePullBackOff)
        # unless the local podman has it.
        self.kubelet = LocalKubelet(self.api, self.namespaces, self.workdir / "kubelet", chart.of_kind("PodMonitor")[0], file_sd,
                                    images=(settings["trainer"]["image"],), runtime=self.runtime, log=self.log)
        self.kubelet.start()
        if self.want_prometheus:
            self._start_prometheus(file_sd)

        for name, proc in self.deployments.items():
            if not name.endswith("-operator"):
                proc.start()
        self._wait_services(ports)
        self.log(f"five services healthy ({time.monotonic() - t0:.1f}s)")
        self.start_operator()
        self.log(f"operator up ({time.monotonic() - t0:.1f}s)")

    def _wait_services(self, ports: dict[str, tuple[int, int]], timeout: float = 300.0) -> None:
        from looptool.shared.grpc_util import wait_healthy

        deadline = time.monotonic() + timeout
        for name, (port, _) in ports.items():
            proc = self.deployments[f"{RELEASE}-{name}"]
            while True:
                if proc.proc is not None and proc.proc.poll() is not None:
                    raise RuntimeError(f"the {name} service exited ({proc.proc.returncode}):\n{proc.log_tail(30)}")
                try:
                    wait_healthy(f"127.0.0.1:{port}", timeout=3)
                    break
                except TimeoutError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the {name} service is not healthy after {timeout:.0f}s:\n{proc.log_tail(30)}") from None

    @property
    def operator(self) -> PodProcess:
        return self.deployments[f"{RELEASE}-operator"]

    def start_operator(self, timeout: float = 120.0) -> None:
        op = self.operator
        op.start()
        named = {p["name"]: int(p["containerPort"]) for p in op.container["ports"]}
        url = f"http://127.0.0.1:{op.port_map[named['health']]}/healthz"
        deadline = time.monotonic() + timeout
        while True:
            if op.proc is not None and op.proc.poll() is not None:
                raise RuntimeError(f"the operator exited ({op.proc.returncode}):\n{op.log_tail(30)}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the operator's liveness endpoint {url} did not answer in {timeout:.0f}s:\n{op.log_tail(30)}")
            time.sleep(0.3)

    def kill_operator(self) -> None:
        """SIGKILL (no cleanup, as a node failure or OOM kill would)."""
        proc = self.operator.proc
        assert proc is not None
        proc.kill()
        proc.wait(timeout=10)

    def _start_prometheus(self, file_sd: Path) -> None:
        assert self.chart is not None
        prom = shutil.which("prometheus")
        if prom is None:
            raise RuntimeError("the Debian 'prometheus' package is missing; run .ci/system-deps.sh (make setup)")
        targets = {}
        for svc in self.chart.of_kind("Service"):
            dep = self.deployments.get(svc["metadata"]["name"])
            metrics = next((p for p in svc["spec"]["ports"] if p.get("name") == "metrics"), None)
            if dep is None or metrics is None:
                continue
            named = {p["name"]: int(p["containerPort"]) for p in dep.container.get("ports") or []}
            target = metrics.get("targetPort", metrics["port"])
            cport = named[target] if isinstance(target, str) else int(target)
            targets[svc["metadata"]["name"]] = dep.port_map[cport]
        cfg = prometheus_config(self.chart, targets, file_sd)
        d = file_sd.parent
        (d / "prometheus.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        port = free_port()
        self.prometheus_url = f"http://127.0.0.1:{port}"
        self.prometheus = subprocess.Popen(
            [prom, f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
             "--log.level=warn"], stdout=subprocess.DEVNULL, stderr=open(d / "prometheus.log", "wb"), preexec_fn=_die_with_parent)

    def stop(self) -> None:
        if self.kubelet is not None:
            self.kubelet.stop()
        running = [d.proc for d in self.deployments.values() if d.proc is not None and d.proc.poll() is None]
        for proc in running:  # all at once, as a namespace deletion would
            proc.send_signal(signal.SIGTERM)
        for proc in running:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self.prometheus is not None:
            self.prometheus.terminate()
            try:
                self.prometheus.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.prometheus.kill()
        if self.api is not None:
            self.api.stop()
        if self.s3 is not None:
            self.s3.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # --------------------------------------------------------------------------------------- reads

    def round(self, name: str, ns: str | None = None) -> dict[str, Any] | None:
        assert self.api is not None
        return self.api.get("looptool.io/v1alpha1", "looprounds", name, ns or self.namespace)

    def wait_round(self, name: str, ns: str | None = None, timeout: float = 600.0, phases: tuple[str, ...] = ("Succeeded", "Failed"),
                   on_poll: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            obj = self.round(name, ns) or {}
            last = obj.get("status") or {}
            if on_poll is not None:
                on_poll(last)
            if last.get("phase") in phases:
                return last
            if self.kubelet is not None and self.kubelet.errors:
                raise RuntimeError(f"the box's kubelet failed: {self.kubelet.errors[-3:]}")
            time.sleep(0.5)
        raise AssertionError(f"round {name} did not reach {phases} in {timeout:.0f}s (last status: {json.dumps(last)[:2000]})\n"
                             f"operator log:\n{self.operator.log_tail(40)}")

    def object_hashes(self, uri: str) -> dict[str, str]:
        """sha256 of every object under an ``s3://bucket/prefix`` URI, by key relative to the prefix."""
        import hashlib

        assert self.s3 is not None
        bucket, prefix = uri.removeprefix("s3://").split("/", 1)
        client = self.s3.minio()
        out = {}
        for obj in client.list_objects(bucket, prefix=prefix.rstrip("/") + "/", recursive=True):
            resp = client.get_object(bucket, obj.object_name)
            try:
                out[obj.object_name[len(prefix.rstrip("/")) + 1:]] = hashlib.sha256(resp.read()).hexdigest()
            finally:
                resp.close()
                resp.release_conn()
        return out


# ============================================================================================ the demo

DEMO_ROUND = """\
apiVersion: looptool.io/v1alpha1
kind: LoopRound
metadata:
  name: demo-cpu-r1
spec:
  round: 1
  baseModel: {builtin: tiny, tinyHiddenSize: 64, tinyLayers: 2, tinyVocabSize: 600}
  toolset: {bfcl: {category: simple_python, limit: 4}}
  synthesis: {numDialogues: 12, concurrency: 2, seed: 3, heldoutFraction: 0.25, labelNoise: 0.2}
  training: {backend: cpu, gpus: 0, sftEpochs: 1, grpoSteps: 2, groupSize: 2, promptsPerStep: 2, maxResponseTokens: 24}
  probe: {maxTokens: 24}
  judge: {backend: grounding, candidates: 2, candidateMaxTokens: 24}
  expand: {factor: 2}
  eval: {heldout: true, bfclCategories: [simple_python], bfclLimit: 4, maxTokens: 24}
"""


def demo(runtime: str = "auto") -> int:
    """``make cluster-demo``: the user's commands against the box, printing what kubectl prints."""
    t0 = time.monotonic()

    def say(line: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {line}", flush=True)

    with ClusterBox(log=say, runtime=runtime) as box:
        manifest = box.workdir / "demo-cpu-r1.yaml"
        manifest.write_text(DEMO_ROUND)

        def run(*args: str) -> None:
            print(f"$ kubectl {' '.join(args)}", flush=True)
            p = box.kubectl(*args, check=False)
            print((p.stdout + p.stderr).rstrip(), flush=True)

        run("get", "crd")
        run("apply", "-f", str(manifest))
        box.wait_round("demo-cpu-r1", phases=("Training", "Succeeded", "Failed"))
        run("get", "looprounds")
        run("get", "jobs")
        st = box.wait_round("demo-cpu-r1")
        say(f"round {st.get('phase')}")
        run("get", "looprounds", "-o", "wide")
        # where the trainer pod ran: the kubelet records the podman container (or nothing, as a process)
        run("get", "pods", "-o", "custom-columns=NAME:.metadata.name,PHASE:.status.phase,"
            "IMAGE:.status.containerStatuses[0].image,CONTAINER:.status.containerStatuses[0].containerID")
        run("describe", "loopround", "demo-cpu-r1")
        run("delete", "loopround", "demo-cpu-r1")
        run("get", "jobs,configmaps")
        say("done")
        return 0 if st.get("phase") == "Succeeded" else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the box's processes on `kill` too
    import argparse

    parser = argparse.ArgumentParser(description="make cluster-demo: a small CPU LoopRound on a cluster in a box")
    parser.add_argument("--runtime", choices=RUNTIMES, default="auto",
                        help="trainer Job pods: in podman when the image is current (auto), only in podman, or as processes")
    sys.exit(demo(parser.parse_args().runtime))
