"""Every pod the chart and the operator create satisfies the Kubernetes `restricted` Pod Security Standard.

:func:`violations` checks a pod spec against the controls of the Baseline and Restricted profiles as
https://kubernetes.io/docs/concepts/security/pod-security-standards/ defines them (restricted includes
everything from baseline), field by field: host namespaces, privileged, capabilities, hostPath volumes,
host ports, probe/lifecycle hosts, AppArmor, SELinux, /proc mount, seccomp, sysctls, HostProcess, volume
types, privilege escalation, running as non-root, runAsUser 0. The profile's Windows exemptions do not
apply (these pods run on Linux). A namespace labelled ``pod-security.kubernetes.io/enforce: restricted``
admits exactly the pods with no violation; each rule is shown to fire on a spec that breaks it.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import pytest
import yaml

from looptool.operators.jobs import training_job, work_claim
from looptool.operators.rayjobs import ray_job
from looptool.operators.settings import OperatorSettings, TrainerJobSettings, WorkVolumeSettings
from looptool.shared.loop.manifest import parse_round
from test_chart import by_kind, render

# Baseline "Capabilities": what may be added at all; Restricted narrows it to NET_BIND_SERVICE.
BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}
RESTRICTED_CAPABILITIES = {"NET_BIND_SERVICE"}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
PROFILE_TYPES = {"RuntimeDefault", "Localhost"}  # seccomp (restricted) and AppArmor (baseline)
# Restricted "Volume Types": every volume sets one of these.
VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")
HOOKS = ("livenessProbe", "readinessProbe", "startupProbe")


def _containers(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{kind}[{i}]", c) for kind in CONTAINER_LISTS for i, c in enumerate(spec.get(kind) or [])]


def violations(spec: dict[str, Any], annotations: dict[str, str] | None = None) -> list[str]:
    """``rule: field`` for each control of the restricted profile that this pod spec breaks."""
    out: list[str] = []
    psc = spec.get("securityContext") or {}
    containers = _containers(spec)
    scs = [(where, c.get("securityContext") or {}) for where, c in containers]

    def bad(rule: str, where: str) -> None:
        out.append(f"{rule}: {where}")

    # ---- Baseline
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        bad("HostProcess", "spec.securityContext.windowsOptions.hostProcess")
    for where, sc in scs:
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            bad("HostProcess", f"spec.{where}.securityContext.windowsOptions.hostProcess")
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            bad("Host Namespaces", f"spec.{field}")
    for where, sc in scs:
        if sc.get("privileged"):
            bad("Privileged Containers", f"spec.{where}.securityContext.privileged")
        add = set((sc.get("capabilities") or {}).get("add") or [])
        if add - BASELINE_CAPABILITIES:
            bad("Capabilities (baseline)", f"spec.{where}.securityContext.capabilities.add")
    for i, v in enumerate(spec.get("volumes") or []):
        if "hostPath" in v:
            bad("HostPath Volumes", f"spec.volumes[{i}].hostPath")
    for where, c in containers:
        for j, port in enumerate(c.get("ports") or []):
            if port.get("hostPort", 0) != 0:
                bad("Host Ports", f"spec.{where}.ports[{j}].hostPort")
        handlers = [(h, c.get(h) or {}) for h in HOOKS]
        handlers += [(f"lifecycle.{h}", (c.get("lifecycle") or {}).get(h) or {}) for h in ("postStart", "preStop")]
        for name, handler in handlers:
            for kind in ("httpGet", "tcpSocket"):
                if (handler.get(kind) or {}).get("host"):
                    bad("Host Probes / Lifecycle Hooks", f"spec.{where}.{name}.{kind}.host")
    for where, sc in [("spec.securityContext", psc)] + [(f"spec.{w}.securityContext", sc) for w, sc in scs]:
        apparmor = sc.get("appArmorProfile")
        if apparmor is not None and apparmor.get("type") not in PROFILE_TYPES:
            bad("AppArmor", f"{where}.appArmorProfile.type")
        selinux = sc.get("seLinuxOptions") or {}
        if selinux.get("type", "") not in SELINUX_TYPES:
            bad("SELinux", f"{where}.seLinuxOptions.type")
        for field in ("user", "role"):
            if selinux.get(field):
                bad("SELinux", f"{where}.seLinuxOptions.{field}")
    for key, value in (annotations or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            bad("AppArmor", f"metadata.annotations[{key!r}]")
    for where, sc in scs:
        if sc.get("procMount", "Default") != "Default":
            bad("/proc Mount Type", f"spec.{where}.securityContext.procMount")
    for sysctl in psc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            bad("Sysctls", f"spec.securityContext.sysctls[{sysctl.get('name')}]")

    # ---- Restricted
    for i, v in enumerate(spec.get("volumes") or []):
        if not any(v.get(t) is not None for t in VOLUME_TYPES):
            bad("Volume Types", f"spec.volumes[{i}] ({v.get('name')})")
    for where, sc in scs:
        if sc.get("allowPrivilegeEscalation") is not False:
            bad("Privilege Escalation", f"spec.{where}.securityContext.allowPrivilegeEscalation")
    # Running as Non-root: container fields may be unset only when the pod-level field is true.
    pod_non_root = psc.get("runAsNonRoot")
    if pod_non_root is False:
        bad("Running as Non-root", "spec.securityContext.runAsNonRoot")
    for where, sc in scs:
        value = sc.get("runAsNonRoot")
        if value is False or (value is None and pod_non_root is not True):
            bad("Running as Non-root", f"spec.{where}.securityContext.runAsNonRoot")
    if psc.get("runAsUser") == 0:
        bad("Running as Non-root user", "spec.securityContext.runAsUser")
    for where, sc in scs:
        if sc.get("runAsUser") == 0:
            bad("Running as Non-root user", f"spec.{where}.securityContext.runAsUser")
    # Seccomp: RuntimeDefault or Localhost, at pod level or in every container; never Unconfined.
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in PROFILE_TYPES:
        bad("Seccomp", "spec.securityContext.seccompProfile.type")
    for where, sc in scs:
        value = (sc.get("seccompProfile") or {}).get("type")
        if (value is not None and value not in PROFILE_TYPES) or (value is None and pod_seccomp not in PROFILE_TYPES):
            bad("Seccomp", f"spec.{where}.securityContext.seccompProfile.type")
    for where, sc in scs:
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            bad("Capabilities", f"spec.{where}.securityContext.capabilities.drop")
        if set(caps.get("add") or []) - RESTRICTED_CAPABILITIES:
            bad("Capabilities", f"spec.{where}.securityContext.capabilities.add")
    return out


def pod_template(obj: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]] | None:
    """(pod spec, pod annotations) of a workload object, or None for objects that make no pods."""
    kind = obj.get("kind")
    if kind == "Pod":
        return obj["spec"], (obj.get("metadata") or {}).get("annotations") or {}
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        tmpl = obj["spec"]["template"]
    elif kind == "CronJob":
        tmpl = obj["spec"]["jobTemplate"]["spec"]["template"]
    else:
        return None
    return tmpl["spec"], (tmpl.get("metadata") or {}).get("annotations") or {}


def check(objects: list[dict[str, Any]]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for obj in objects:
        pod = pod_template(obj)
        if pod is not None:
            found[f"{obj['kind']}/{obj['metadata']['name']}"] = violations(*pod)
    return found


def round_obj(name: str = "r", **spec: Any) -> dict[str, Any]:
    body = {"baseModel": {"uri": "s3://looptool/models/qwen3-8b"}, "toolset": {"bfcl": {"category": "simple_python"}},
            "training": {"backend": "verl", "gpus": 8, "queueName": "team-a"}}
    body.update(spec)
    return {"apiVersion": "looptool.io/v1alpha1", "kind": "LoopRound",
            "metadata": {"name": name, "namespace": "ml", "uid": "5f0c4e1a-0000-4000-8000-000000000001"}, "spec": body}


def chart_trainer_settings(docs: list[dict[str, Any]]) -> TrainerJobSettings:
    raw = by_kind(docs, "ConfigMap")["lt-looptool-operator"]["data"]["operator.yaml"]
    return OperatorSettings.model_validate(yaml.safe_load(raw)).trainer


@pytest.fixture(scope="module")
def chart_docs() -> list[dict[str, Any]]:
    return render()


def test_every_pod_the_chart_renders_is_restricted(chart_docs):
    found = check(chart_docs)
    # the five services, the operator and the object store (SeaweedFS)
    assert {"Deployment/lt-looptool-operator", "Deployment/lt-looptool-inference", "StatefulSet/lt-looptool-s3"} <= set(found)
    assert len(found) == 7
    assert found == {name: [] for name in found}
    # The same check on a chart whose values break the profile: every LoopTool pod is flagged.
    loose = check(render("--set", "securityContext.allowPrivilegeEscalation=true"))
    flagged = {name for name, v in loose.items() if any(x.startswith("Privilege Escalation:") for x in v)}
    assert flagged == set(found) - {"StatefulSet/lt-looptool-s3"}


def test_trainer_jobs_rendered_from_the_charts_settings_are_restricted(chart_docs):
    cfg = chart_trainer_settings(chart_docs)
    for lr in (round_obj(), round_obj("cpu", training={"backend": "cpu"})):
        job = training_job(lr, parse_round(lr).spec, {"run_id": "x", "output_prefix": "s3://b/p"}, cfg)
        assert check([job]) == {f"Job/{job['metadata']['name']}": []}
    # ... and with the operator's own defaults (no chart), persistent or not.
    for cfg in (TrainerJobSettings(), TrainerJobSettings(workVolume={"persistent": False})):
        lr = round_obj()
        job = training_job(lr, parse_round(lr).spec, {}, cfg)
        assert violations(*pod_template(job)) == []
        volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
        assert ("persistentVolumeClaim" in volumes["work"]) == cfg.workVolume.persistent
        assert (work_claim(lr, parse_round(lr).spec, cfg) is not None) == cfg.workVolume.persistent


def test_multi_node_rayjob_pods_are_restricted(chart_docs):
    """The RayJob of a multi-node round: its Ray head, its workers and KubeRay's submitter pod."""
    cfg = chart_trainer_settings(chart_docs).model_copy(update={"workVolume": WorkVolumeSettings(accessModes=["ReadWriteMany"])})
    lr = round_obj("mn", training={"backend": "verl", "gpus": 8, "nnodes": 4})
    rj = ray_job(lr, parse_round(lr).spec, {"run_id": "x", "output_prefix": "s3://b/p"}, cfg)
    cluster = rj["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"], cluster["workerGroupSpecs"][0]["template"], rj["spec"]["submitterPodTemplate"]]
    assert [violations(p["spec"], p["metadata"].get("annotations")) for p in pods] == [[], [], []]


def _compliant_pod() -> dict[str, Any]:
    lr = round_obj()
    return training_job(lr, parse_round(lr).spec, {}, TrainerJobSettings())["spec"]["template"]


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation of the pod template: set a dotted path (list indices as numbers)."""

    def mutate(tmpl: dict[str, Any]) -> None:
        node: Any = tmpl
        parts = path.split(".")
        for p in parts[:-1]:
            node = node[int(p)] if p.isdigit() else node.setdefault(p, {})
        last = parts[-1]
        if value is _DELETE:
            node.pop(last, None)
        else:
            node[int(last) if last.isdigit() else last] = value

    return mutate


_DELETE = object()
C = "spec.containers.0.securityContext"
VIOLATIONS = [
    ("HostProcess", _set("spec.securityContext.windowsOptions", {"hostProcess": True})),
    ("Host Namespaces", _set("spec.hostNetwork", True)),
    ("Host Namespaces", _set("spec.hostPID", True)),
    ("Host Namespaces", _set("spec.hostIPC", True)),
    ("Privileged Containers", _set(f"{C}.privileged", True)),
    # beyond baseline's list: breaks restricted's narrower list too; hostPath is not a restricted volume type
    ("Capabilities (baseline)+Capabilities", _set(f"{C}.capabilities.add", ["SYS_ADMIN"])),
    ("HostPath Volumes+Volume Types", _set("spec.volumes.0", {"name": "request", "hostPath": {"path": "/etc"}})),
    ("Host Ports", _set("spec.containers.0.ports.0.hostPort", 9105)),
    ("Host Probes / Lifecycle Hooks", _set("spec.containers.0.livenessProbe", {"httpGet": {"host": "10.0.0.1", "port": 80}})),
    ("AppArmor", _set(f"{C}.appArmorProfile", {"type": "Unconfined"})),
    ("AppArmor", _set("metadata.annotations", {"container.apparmor.security.beta.kubernetes.io/trainer": "unconfined"})),
    ("SELinux", _set("spec.securityContext.seLinuxOptions", {"type": "spc_t"})),
    ("SELinux", _set(f"{C}.seLinuxOptions", {"user": "system_u"})),
    ("/proc Mount Type", _set(f"{C}.procMount", "Unmasked")),
    ("Sysctls", _set("spec.securityContext.sysctls", [{"name": "kernel.msgmax", "value": "65536"}])),
    ("Volume Types", _set("spec.volumes.0", {"name": "request", "nfs": {"server": "nfs", "path": "/"}})),
    ("Privilege Escalation", _set(f"{C}.allowPrivilegeEscalation", True)),
    ("Privilege Escalation", _set(f"{C}.allowPrivilegeEscalation", _DELETE)),
    ("Running as Non-root", _set("spec.securityContext.runAsNonRoot", _DELETE)),
    ("Running as Non-root", _set(f"{C}.runAsNonRoot", False)),
    ("Running as Non-root user", _set("spec.securityContext.runAsUser", 0)),
    ("Running as Non-root user", _set(f"{C}.runAsUser", 0)),
    ("Seccomp", _set("spec.securityContext.seccompProfile", _DELETE)),
    ("Seccomp", _set(f"{C}.seccompProfile", {"type": "Unconfined"})),
    ("Capabilities", _set(f"{C}.capabilities", {"drop": ["NET_RAW"]})),
    ("Capabilities", _set(f"{C}.capabilities.add", ["CHOWN"])),
]


@pytest.mark.parametrize("rule,mutate", VIOLATIONS, ids=[f"{r}-{i}" for i, (r, _) in enumerate(VIOLATIONS)])
def test_the_checker_catches_each_violation(rule, mutate):
    tmpl = _compliant_pod()
    assert violations(tmpl["spec"], tmpl["metadata"]["annotations"]) == []
    bad = copy.deepcopy(tmpl)
    mutate(bad)
    found = violations(bad["spec"], bad["metadata"].get("annotations"))
    assert found and {f.split(":")[0] for f in found} == set(rule.split("+")), found


def test_allowed_variations_pass():
    tmpl = _compliant_pod()
    ok = copy.deepcopy(tmpl)
    for mutate in (
        _set(f"{C}.capabilities.add", ["NET_BIND_SERVICE"]),
        _set(f"{C}.seccompProfile", {"type": "Localhost", "localhostProfile": "trainer.json"}),
        _set("spec.securityContext.appArmorProfile", {"type": "RuntimeDefault"}),
        _set("spec.securityContext.seLinuxOptions", {"type": "container_t", "level": "s0:c123,c456"}),
        _set("spec.securityContext.sysctls", [{"name": "net.ipv4.tcp_keepalive_time", "value": "600"}]),
        _set("spec.volumes.0", {"name": "request", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}}),
    ):
        mutate(ok)
    assert violations(ok["spec"], ok["metadata"]["annotations"]) == []
    # Seccomp/runAsNonRoot may move from the pod to every container.
    moved = copy.deepcopy(tmpl)
    psc = moved["spec"]["securityContext"]
    seccomp, non_root = psc.pop("seccompProfile"), psc.pop("runAsNonRoot")
    moved["spec"]["containers"][0]["securityContext"].update(seccompProfile=seccomp, runAsNonRoot=non_root)
    assert violations(moved["spec"]) == []
