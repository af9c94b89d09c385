"""The LoopRound CRD: generated from the models, structural, complete, and what the examples are checked against."""

from __future__ import annotations

import re
from typing import Any, Iterator

import jsonschema
import pytest
import yaml

from looptool.operators import crd
from looptool.operators.reconciler import InvalidSpec, validate
from looptool.shared.loop.manifest import LoopRoundSpec
from looptool.shared.loop.state import Phase, RoundStatus

from support import REPO

EXAMPLES = sorted(p for p in (REPO / "examples").glob("*.yaml"))
INVALID = sorted((REPO / "examples" / "invalid").glob("*.yaml"))

TYPES = {"object", "array", "string", "integer", "number", "boolean"}
# JSONSchemaProps fields the API server forbids in structural schemas (or that k8s does not know).
FORBIDDEN = {"$ref", "$schema", "$defs", "definitions", "dependencies", "additionalItems", "patternProperties",
             "id", "const", "anyOf", "oneOf", "allOf", "not", "title", "examples", "prefixItems"}


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for k, v in (node.get("properties") or {}).items():
        yield from walk(v, f"{path}.{k}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def test_chart_crds_are_generated_from_the_models():
    for path, text in crd.outputs().items():
        assert path.exists(), "run: python -m looptool.operators.crd --write"
        assert path.read_text() == text, (
            f"{path.name} is stale (the models changed); run: python -m looptool.operators.crd --write"
        )


@pytest.mark.parametrize("build", [crd.build_crd, crd.build_plan_crd], ids=["looprounds", "loopplans"])
def test_crd_schema_is_structural(build):
    """The rules the API server enforces on openAPIV3Schema (apiextensions.k8s.io/v1 structural schemas)."""
    schema = build()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    problems = []
    for path, node in walk(schema):
        where = path or "<root>"
        if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields") and not node.get("x-kubernetes-int-or-string"):
            problems.append(f"{where}: no type")
        elif "type" in node and node["type"] not in TYPES:
            problems.append(f"{where}: type {node['type']!r}")
        if FORBIDDEN & set(node):
            problems.append(f"{where}: forbidden keys {sorted(FORBIDDEN & set(node))}")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{where}: properties and additionalProperties together")
        if node.get("additionalProperties") is True or node.get("additionalProperties") is False:
            problems.append(f"{where}: boolean additionalProperties (use x-kubernetes-preserve-unknown-fields)")
        for k in ("exclusiveMinimum", "exclusiveMaximum"):
            if k in node and not isinstance(node[k], bool):
                problems.append(f"{where}: {k} must be a boolean in OpenAPI v3.0")
        if "items" in node and not isinstance(node["items"], dict):
            problems.append(f"{where}: items must be one schema")
        if "default" in node:
            if node["default"] is None:
                problems.append(f"{where}: null default")
            else:  # defaults must validate against their own schema
                errs = list(jsonschema.Draft4Validator(crd.to_json_schema(node)).iter_errors(node["default"]))
                if errs:
                    problems.append(f"{where}: default {node['default']!r} invalid: {errs[0].message}")
        if "enum" in node and node.get("type") == "string" and not all(isinstance(v, str) for v in node["enum"]):
            problems.append(f"{where}: non-string enum values")
        if path.startswith(".metadata.") or (path == ".metadata" and set(node) - {"type"}):
            problems.append(f"{where}: only metadata.name/generateName may be constrained")
    assert not problems, "\n".join(problems)


def test_crds_are_valid_kubernetes_objects():
    import kubernetes_validate

    kubernetes_validate.validate(crd.build_crd(), "1.37.0", strict=True)
    kubernetes_validate.validate(crd.build_plan_crd(), "1.37.0", strict=True)


def test_crd_has_status_subresource_printer_columns_and_full_spec():
    version = crd.build_crd()["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    cols = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert {"Phase", "Progress", "Accuracy", "Age"} <= set(cols)
    assert cols["Age"]["type"] == "date" and cols["Age"]["jsonPath"] == ".metadata.creationTimestamp"
    schema = version["schema"]["openAPIV3Schema"]
    # every printer column points at a field that exists in the schema
    for c in cols.values():
        node: dict[str, Any] = schema
        for part in c["jsonPath"].lstrip(".").split("."):
            if part in ("metadata",):
                break
            node = (node.get("properties") or {}).get(part) or node.get("additionalProperties") or {}
            assert node, f"printer column {c['name']}: {c['jsonPath']} not in the schema"
    spec = schema["properties"]["spec"]
    assert spec["required"] == ["toolset"]
    assert set(spec["properties"]) == set(LoopRoundSpec.model_fields)  # every model field is in the CRD
    training = spec["properties"]["training"]["properties"]
    assert training["backend"]["enum"] == ["cpu", "verl"] and training["backend"]["default"] == "cpu"
    assert training["gpus"]["minimum"] == 0
    assert spec["properties"]["resources"]["properties"]["tolerations"]["items"]["x-kubernetes-preserve-unknown-fields"] is True
    status = schema["properties"]["status"]["properties"]
    assert set(status) == set(RoundStatus.model_fields)
    assert status["phase"]["enum"] == [p.value for p in Phase]
    cond = status["conditions"]["items"]
    assert set(cond["required"]) == {"type", "status", "reason"} and "lastTransitionTime" in cond["properties"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid_looprounds(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        if doc["kind"] == "LoopPlan":
            from looptool.operators.plan import validate_plan

            plan_schema = crd.to_json_schema(crd.build_plan_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
            assert list(jsonschema.Draft4Validator(plan_schema).iter_errors(doc)) == []
            validate_plan(doc)
            continue
        assert crd.validation_errors(doc) == [], f"{path.name}: {doc['metadata']['name']}"
        if path.name.startswith("loopround-"):  # cluster examples: the operator's semantic checks too
            validate({**doc, "metadata": {**doc["metadata"], "namespace": "default"}})


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_examples_are_rejected(path):
    text = path.read_text()
    m = re.match(r"# expect: (schema|semantic): (.+)", text)
    assert m, f"{path.name}: first line must be '# expect: schema|semantic: <text in the error>'"
    layer, needle = m.group(1), m.group(2).strip()
    doc = yaml.safe_load(text)
    errors = crd.validation_errors(doc)
    if layer == "schema":  # the API server refuses it at `kubectl apply`
        assert errors, f"{path.name}: the CRD schema accepted it"
        assert any(needle.strip("'") in e for e in errors), errors
    else:  # passes the API server; the operator reports it as InvalidSpec
        assert errors == [], errors
        with pytest.raises(InvalidSpec) as exc:
            validate({**doc, "metadata": {**doc["metadata"], "namespace": "default"}})
        assert needle in str(exc.value)
