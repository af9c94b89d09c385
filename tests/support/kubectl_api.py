"""What ``kubectl`` needs from an API server beyond CRUD, for the fake API (``fake_kube.py``): the
OpenAPI v3 document that tells kubectl the server validates fields (so ``kubectl apply`` sends
``fieldValidation=Strict`` instead of downloading schemas), CustomResourceDefinitions applied
through the API (their resources appear in discovery and created objects are checked against their
schema), ``meta.k8s.io/v1`` Table output (the CRD's ``additionalPrinterColumns`` for ``kubectl get``),
typed lists, and field selectors (``kubectl describe`` finds a round's Events by ``involvedObject``).

Test scaffolding: imported lazily by the fake API, both as ``support.kubectl_api`` and as a sibling
module when ``fake_kube.py`` runs as a script.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
from typing import Any

# kubectl asks /openapi/v3 whether PATCH on a kind takes `fieldValidation`; for a CRD's group (absent
# from the index) it checks the CRD exists and then asks about the core Namespace path instead.
_BUILTIN_KINDS = {
    "api/v1": [("", "v1", "namespaces", "Namespace", False), ("", "v1", "configmaps", "ConfigMap", True),
               ("", "v1", "secrets", "Secret", True)],
    "apis/apiextensions.k8s.io/v1": [("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False)],
    "apis/batch/v1": [("batch", "v1", "jobs", "Job", True)],
}


def _gv_doc(gv: str) -> dict[str, Any]:
    paths = {}
    for group, version, plural, kind, namespaced in _BUILTIN_KINDS[gv]:
        path = f"/{gv}/" + ("namespaces/{namespace}/" if namespaced else "") + plural + "/{name}"
        paths[path] = {"patch": {
            "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": kind},
            "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True}}],
            "responses": {"200": {"description": "OK"}},
        }}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.37.0"}, "paths": paths}


OPENAPI_V3_INDEX = {"paths": {gv: {"serverRelativeURL": f"/openapi/v3/{gv}?hash=fake"} for gv in _BUILTIN_KINDS}}


def openapi(path: str) -> dict[str, Any] | None:
    """The document served at ``path`` (``None`` = not served: 404)."""
    if path.rstrip("/") == "/openapi/v3":
        return OPENAPI_V3_INDEX
    gv = path.rstrip("/").removeprefix("/openapi/v3/")
    return _gv_doc(gv) if gv in _BUILTIN_KINDS else None


# ------------------------------------------------------------------------------------------------ CRDs

SHORT_NAMES = {"pods": ["po"], "configmaps": ["cm"], "events": ["ev"], "namespaces": ["ns"],
               "persistentvolumeclaims": ["pvc"], "customresourcedefinitions": ["crd", "crds"]}


def crd_resources(crd: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``("<group>/<version>/<plural>", ResourceInfo kwargs)`` for each served version of ``crd``."""
    spec = crd["spec"]
    names = spec["names"]
    out = []
    for v in spec["versions"]:
        if v.get("served", True):
            out.append((f"{spec['group']}/{v['name']}/{names['plural']}", dict(
                kind=names["kind"], namespaced=spec["scope"] == "Namespaced", singular=names.get("singular", ""),
                shortnames=set(names.get("shortNames") or ()), categories=set(names.get("categories") or ()),
                subresources=set(v.get("subresources") or {}),
                verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
            )))
    return out


@functools.lru_cache(maxsize=32)
def _validator(schema_json: str):
    import jsonschema

    from looptool.operators.crd import to_json_schema

    return jsonschema.Draft4Validator(to_json_schema(json.loads(schema_json), strict_fields=True))


def crd_version(crd: dict[str, Any], version: str) -> dict[str, Any] | None:
    return next((v for v in crd["spec"]["versions"] if v["name"] == version), None)


def schema_errors(crd: dict[str, Any], version: str, obj: Any) -> list[str]:
    """Problems of ``obj`` against the CRD version's OpenAPI schema, as the API server words them
    (``<field>: Invalid value: ...``); unknown fields are errors (kubectl's ``fieldValidation=Strict``)."""
    v = crd_version(crd, version)
    if v is None or "schema" not in v:
        return []
    body = {k: val for k, val in obj.items() if k not in ("apiVersion", "kind", "metadata", "status")}
    schema = dict(v["schema"]["openAPIV3Schema"])
    props = {k: s for k, s in (schema.get("properties") or {}).items() if k not in ("apiVersion", "kind", "metadata", "status")}
    schema = {**schema, "properties": props}
    errors = sorted(_validator(json.dumps(schema, sort_keys=True)).iter_errors(body), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: Invalid value: {e.message}" for e in errors]


def find_crd(objects: Any, group: str, plural: str) -> dict[str, Any] | None:
    """The stored CRD object serving ``group``/``plural`` (from the emulator's objects)."""
    for (resource, _ns, _name), obj in list(objects.items()):
        if getattr(resource, "plural", "") != "customresourcedefinitions" or obj.deleted:
            continue
        raw = obj.raw
        spec = raw.get("spec") or {}
        if spec.get("group") == group and (spec.get("names") or {}).get("plural") == plural:
            return raw
    return None


# ------------------------------------------------------------------------------------------------ reads


def field_selector_match(obj: dict[str, Any], selector: str) -> bool:
    """``a.b=v,c!=w`` (the API server supports few fields per kind; here any dotted path)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        m = re.match(r"^([\w.]+)\s*(==|!=|=)\s*(.*)$", term)
        if not m:
            continue
        path, op, want = m.groups()
        value: Any = obj
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        have = "" if value is None else str(value)
        if (have == want) != (op != "!="):
            return False
    return True


def _jsonpath(obj: Any, path: str) -> Any:
    """The simple JSONPaths of printer columns: ``.a.b``, ``.a[0].b``."""
    value = obj
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        if part.startswith("["):
            i = int(part[1:-1])
            value = value[i] if isinstance(value, list) and i < len(value) else None
        else:
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            return None
    return value


def human_age(timestamp: str, now: dt.datetime | None = None) -> str:
    """kubectl's ``HumanDuration`` of the time since ``timestamp`` (``45s``, ``3m12s``, ``2h5m``, ``4d``)."""
    try:
        t = dt.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    except (TypeError, ValueError):
        return "<unknown>"
    s = int(((now or dt.datetime.now(dt.timezone.utc)) - t).total_seconds())
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = m // 60
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    return f"{h // 24}d"


def _default_columns(kind: str) -> list[dict[str, Any]]:
    cols = [{"name": "Name", "type": "string", "jsonPath": ".metadata.name"}]
    if kind == "Job":
        cols += [{"name": "Status", "type": "string", "jsonPath": "@jobstatus"},
                 {"name": "Completions", "type": "string", "jsonPath": "@completions"}]
    elif kind == "Pod":
        cols += [{"name": "Status", "type": "string", "jsonPath": ".status.phase"}]
    elif kind == "Event":
        cols = [{"name": "Type", "type": "string", "jsonPath": ".type"}, {"name": "Reason", "type": "string", "jsonPath": ".reason"},
                {"name": "Object", "type": "string", "jsonPath": "@involved"}, {"name": "Message", "type": "string", "jsonPath": ".message"}]
    return cols + [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]


def _cell(obj: dict[str, Any], col: dict[str, Any]) -> Any:
    path = col["jsonPath"]
    if path == "@jobstatus":
        conds = {c.get("type"): c.get("status") for c in (obj.get("status") or {}).get("conditions") or []}
        return "Complete" if conds.get("Complete") == "True" else "Failed" if conds.get("Failed") == "True" else "Running"
    if path == "@completions":
        return f"{(obj.get('status') or {}).get('succeeded', 0)}/{(obj.get('spec') or {}).get('completions', 1)}"
    if path == "@involved":
        inv = obj.get("involvedObject") or {}
        return f"{str(inv.get('kind', '')).lower()}/{inv.get('name', '')}"
    value = _jsonpath(obj, path)
    if col.get("type") == "date" and value is not None:
        return human_age(str(value))
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return value


def to_table(items: list[dict[str, Any]], kind: str, crd: dict[str, Any] | None, version: str) -> dict[str, Any]:
    """A ``meta.k8s.io/v1`` Table of ``items``: a CRD's printer columns (Name first), else defaults."""
    cols: list[dict[str, Any]]
    v = crd_version(crd, version) if crd else None
    if v is not None:
        printer = v.get("additionalPrinterColumns")
        cols = [{"name": "Name", "type": "string", "jsonPath": ".metadata.name"}] + (
            list(printer) if printer else [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}])
    else:
        cols = _default_columns(kind)
    definitions = [{"name": c["name"], "type": "string" if c.get("type") == "date" else c.get("type", "string"),
                    "format": "name" if c["name"] == "Name" else c.get("format", ""),
                    "description": c.get("description", ""), "priority": int(c.get("priority", 0))} for c in cols]
    rows = [{"cells": [_cell(o, c) for c in cols],
             "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata") or {}}}
            for o in items]
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": ""}, "columnDefinitions": definitions, "rows": rows}
