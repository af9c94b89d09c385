"""Security of what the chart renders: the bundled object store is SeaweedFS (restricted pod, two
identities, the trainer's scoped to runs/), an external S3 uses an existing Secret, NetworkPolicies,
TLS / token Secrets mounted where config.yaml's `security:` points, metrics bind, and the trainer
image allow-list reaching the operator's settings."""

from __future__ import annotations

import base64
import json
from typing import Any

import yaml

from looptool.operators.settings import OperatorSettings
from looptool.shared.config import LoopToolConfig

from support import REPO
from support.k8s_tools import helm

CHART = str(REPO / "charts" / "looptool")


def render(*args: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(helm("template", "lt", CHART, "--namespace", "ml", *args).stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def config(docs) -> LoopToolConfig:
    return LoopToolConfig.model_validate(yaml.safe_load(by_kind(docs, "ConfigMap")["lt-looptool-config"]["data"]["config.yaml"]))


def operator_settings(docs) -> OperatorSettings:
    return OperatorSettings.model_validate(yaml.safe_load(by_kind(docs, "ConfigMap")["lt-looptool-operator"]["data"]["operator.yaml"]))


def test_bundled_object_store_is_seaweedfs_with_a_scoped_trainer_identity():
    docs = render()
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    assert c["image"].startswith("chrislusf/seaweedfs:") and c["command"] == ["weed"] and "-s3" in c["args"]
    assert not any("minio" in json.dumps(d).lower() for d in docs)
    s3json = json.loads(base64.b64decode(by_kind(docs, "Secret")["lt-looptool-s3-config"]["data"]["s3.json"]))
    ids = {i["name"]: i for i in s3json["identities"]}
    assert ids["looptool-trainer"]["actions"] == ["Read:looptool", "List:looptool", "Write:looptool/runs/*"]
    secrets = by_kind(docs, "Secret")
    for name, identity in (("lt-looptool-s3", "looptool"), ("lt-looptool-s3-trainer", "looptool-trainer")):
        key = base64.b64decode(secrets[name]["data"]["accessKey"]).decode()
        assert ids[identity]["credentials"][0]["accessKey"] == key
    assert operator_settings(docs).trainer.s3Secret == "lt-looptool-s3-trainer"
    assert config(docs).storage.s3.endpoint == "http://lt-looptool-s3.ml.svc:8333"


def test_external_s3_uses_the_existing_secret_and_renders_no_store():
    docs = render("--set", "objectStore.bundled=false", "--set", "objectStore.endpoint=https://s3.example.com",
                  "--set", "objectStore.existingSecret=team-s3", "--set", "objectStore.trainerSecret=team-s3-trainer")
    assert not by_kind(docs, "StatefulSet") and not by_kind(docs, "Secret")
    env = {e["name"]: e for e in by_kind(docs, "Deployment")["lt-looptool-inference"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LOOPTOOL_S3_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "team-s3"
    assert operator_settings(docs).trainer.s3Secret == "team-s3-trainer"
    assert "lt-looptool-s3" not in by_kind(docs, "NetworkPolicy")


def test_network_policies_admit_only_looptool_peers():
    docs = render("--set-json", 'networkPolicy.metricsFrom=[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}]')
    pols = by_kind(docs, "NetworkPolicy")
    svc = pols["lt-looptool-services"]["spec"]
    grpc_rule, metrics_rule = svc["ingress"]
    (peer,) = grpc_rule["from"]
    comps = next(e for e in peer["podSelector"]["matchExpressions"] if e["key"] == "app.kubernetes.io/component")["values"]
    assert set(comps) == {"operator", "inference", "toolsim", "synthesizer", "expander", "trainer"}
    assert {p["port"] for p in grpc_rule["ports"]} == {50051, 50052, 50053, 50054, 50055}
    assert metrics_rule["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    assert {p["port"] for p in metrics_rule["ports"]} == {9101, 9102, 9103, 9104, 9105}
    s3 = pols["lt-looptool-s3"]["spec"]["ingress"][0]
    assert s3["ports"] == [{"port": 8333, "protocol": "TCP"}]
    assert s3["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "lt"
    # no metrics peers configured: metrics ports are closed to everyone
    assert len(by_kind(render(), "NetworkPolicy")["lt-looptool-services"]["spec"]["ingress"]) == 1
    assert not by_kind(render("--set", "networkPolicy.enabled=false"), "NetworkPolicy")


def test_tls_and_token_secrets_are_mounted_where_the_config_points():
    plain = render()
    sec = config(plain).security
    assert sec.metrics_host == "0.0.0.0" and not sec.tls_cert_file and not sec.token_file
    c = by_kind(plain, "Deployment")["lt-looptool-toolsim"]["spec"]["template"]["spec"]["containers"][0]
    assert "grpc" in c["readinessProbe"]

    docs = render("--set", "security.tls.secretName=lt-tls", "--set", "security.tls.requireClientCert=true",
                  "--set", "security.token.secretName=lt-token")
    sec = config(docs).security
    assert (sec.tls_cert_file, sec.tls_key_file, sec.tls_ca_file) == (
        "/etc/looptool/tls/tls.crt", "/etc/looptool/tls/tls.key", "/etc/looptool/tls/ca.crt")
    assert sec.require_client_cert and sec.token_file == "/etc/looptool/token/token"
    deps = by_kind(docs, "Deployment")
    for name in ("inference", "toolsim", "synthesizer", "expander", "trainer", "operator"):
        pod = deps[f"lt-looptool-{name}"]["spec"]["template"]["spec"]
        mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
        vols = {v["name"]: v for v in pod["volumes"]}
        assert mounts["tls"]["mountPath"] == "/etc/looptool/tls" and mounts["tls"]["readOnly"]
        assert vols["tls"]["secret"]["secretName"] == "lt-tls" and vols["token"]["secret"]["secretName"] == "lt-token"
        if name != "operator":  # kubelet's gRPC probe is plaintext: with TLS the probes check the port
            assert pod["containers"][0]["readinessProbe"]["tcpSocket"]["port"] > 0


def test_image_allow_list_reaches_the_operator():
    docs = render("--set", "training.allowedImages={registry.example.com/looptool-trainer:1.2}")
    trainer = operator_settings(docs).trainer
    assert trainer.allowedImages == ["registry.example.com/looptool-trainer:1.2"]
    assert trainer.image_problem("registry.example.com/looptool-trainer:1.2") == ""
    assert "spec.resources.trainerImage" in trainer.image_problem("evil.example.com/x:1")
    assert operator_settings(render()).trainer.allowedImages == []
