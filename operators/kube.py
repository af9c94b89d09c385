"""The few Kubernetes API calls the operator makes, as an async facade over the ``kubernetes`` client.

kopf watches and dispatches; everything the reconciler *does* (status writes, Jobs, ConfigMaps,
Events, Pod reads) goes through :class:`Kube`. It uses the official client's configuration and auth
(in-cluster service account with token refresh, or kubeconfig, or an explicit URL for tests) and its
generic request path with plain dicts — no generated model classes, which are slow and reject fields
newer than the client. Blocking HTTP runs in a small dedicated thread pool.

Everything here is idempotent from the caller's point of view: ``create_*`` returns the existing
object on 409 (deterministic names make a retried create a no-op), ``delete_*`` ignores 404.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable

from looptool.shared.loop.manifest import GROUP, PLURAL, VERSION

JSON = dict[str, Any]


class KubeError(RuntimeError):
    def __init__(self, status: int, reason: str, message: str, method: str = "", path: str = ""):
        self.status, self.reason, self.message = status, reason, message
        super().__init__(f"{method} {path}: {status} {reason}: {message}")


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    pass


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def matches(labels: dict[str, str] | None, selector: dict[str, str]) -> bool:
    """Client-side label filtering (also covers API servers or mocks that ignore ``labelSelector``)."""
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


def api_client(api_url: str = "", pool_size: int = 16):
    """A configured ``kubernetes.client.ApiClient``: explicit URL, in-cluster, or kubeconfig."""
    from kubernetes import client, config

    cfg = client.Configuration()
    if api_url:
        cfg.host = api_url.rstrip("/")
        cfg.verify_ssl = False
    else:
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException:
            config.load_kube_config(client_configuration=cfg)
    cfg.connection_pool_maxsize = pool_size
    return client.ApiClient(cfg)


class Kube:
    """Async Kubernetes calls for the operator (dicts in, dicts out)."""

    def __init__(self, api_url: str = "", workers: int = 16, field_manager: str = "looptool-operator"):
        self._client = api_client(api_url, pool_size=workers)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube")
        self.field_manager = field_manager

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        try:
            self._client.close()
        except Exception:
            pass

    # -------------------------------------------------------------------------------- transport

    def _request_sync(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None,
                      content_type: str = "application/json") -> JSON:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        q = [(k, v) for k, v in (query or {}).items() if v is not None]
        m, url, hdrs, payload, _ = self._client.param_serialize(
            method, path, query_params=q, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        resp = self._client.call_api(m, url, header_params=hdrs, body=payload, _request_timeout=(10, 60))
        raw = resp.read()
        data: Any = {}
        if raw:
            try:
                data = json.loads(raw)
            except ValueError:
                data = {"message": raw[:500].decode(errors="replace")}
        if resp.status >= 400:
            reason = data.get("reason", "") if isinstance(data, dict) else ""
            message = data.get("message", "") if isinstance(data, dict) else ""
            cls = NotFound if resp.status == 404 else Conflict if resp.status == 409 else KubeError
            raise cls(resp.status, reason or str(resp.reason), message, method, path)
        return data if isinstance(data, dict) else {}

    async def request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None,
                      content_type: str = "application/json") -> JSON:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, lambda: self._request_sync(method, path, body, query, content_type)
        )

    # -------------------------------------------------------------------------------- LoopRounds

    @staticmethod
    def _round_path(ns: str, name: str = "") -> str:
        base = f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}"
        return f"{base}/{name}" if name else base

    async def get_round(self, ns: str, name: str) -> JSON | None:
        try:
            return await self.request("GET", self._round_path(ns, name))
        except NotFound:
            return None

    async def patch_round_status(self, ns: str, name: str, status: JSON) -> JSON:
        """JSON merge patch of ``.status`` through the status subresource (only the operator writes it)."""
        return await self.request(
            "PATCH", self._round_path(ns, name) + "/status", {"status": status},
            {"fieldManager": self.field_manager}, "application/merge-patch+json",
        )

    # -------------------------------------------------------------------------------- generic objects

    @staticmethod
    def _path(api_version: str, plural: str, ns: str, name: str = "") -> str:
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        base = f"{prefix}/namespaces/{ns}/{plural}"
        return f"{base}/{name}" if name else base

    async def get(self, api_version: str, plural: str, ns: str, name: str) -> JSON | None:
        try:
            return await self.request("GET", self._path(api_version, plural, ns, name))
        except NotFound:
            return None

    async def create(self, api_version: str, plural: str, ns: str, body: JSON) -> tuple[JSON, bool]:
        """Create ``body``; on 409 return the existing object. Returns (object, created)."""
        try:
            obj = await self.request("POST", self._path(api_version, plural, ns), body, {"fieldManager": self.field_manager})
            return obj, True
        except Conflict:
            existing = await self.get(api_version, plural, ns, body["metadata"]["name"])
            if existing is None:
                raise
            return existing, False

    async def delete(self, api_version: str, plural: str, ns: str, name: str) -> bool:
        """Delete with background propagation (a Job's Pods go too). False if it was already gone."""
        try:
            await self.request(
                "DELETE", self._path(api_version, plural, ns, name),
                {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"},
            )
            return True
        except NotFound:
            return False

    async def list(self, api_version: str, plural: str, ns: str, selector: dict[str, str] | None = None) -> list[JSON]:
        query = {"labelSelector": ",".join(f"{k}={v}" for k, v in selector.items())} if selector else None
        data = await self.request("GET", self._path(api_version, plural, ns), query=query)
        items = data.get("items") or []
        return [i for i in items if matches((i.get("metadata") or {}).get("labels"), selector or {})]

    async def serves(self, api_version: str, plural: str) -> bool:
        """Whether the API serves ``plural`` in ``api_version`` (API discovery: needs no RBAC grant, unlike
        reading CustomResourceDefinitions). A group/version nobody serves is a 404."""
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        try:
            data = await self.request("GET", prefix)
        except NotFound:
            return False
        return any(r.get("name") == plural for r in data.get("resources") or [])

    # -------------------------------------------------------------------------------- events

    async def event(self, involved: JSON, type_: str, reason: str, message: str, component: str = "looptool-operator") -> None:
        """Record a core/v1 Event on ``involved`` (shown by ``kubectl describe``). Best effort."""
        meta = involved.get("metadata") or {}
        ns = meta.get("namespace") or "default"
        now = _now()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta.get('name', 'looptool')}.{uuid.uuid4().hex[:16]}", "namespace": ns},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion", f"{GROUP}/{VERSION}"),
                "kind": involved.get("kind", "LoopRound"),
                "name": meta.get("name", ""),
                "namespace": ns,
                "uid": meta.get("uid", ""),
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": component},
            "reportingComponent": component,
            "reportingInstance": component,
            "action": reason,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self.request("POST", self._path("v1", "events", ns), body)


def owner_reference(obj: JSON) -> JSON:
    meta = obj["metadata"]
    return {
        "apiVersion": obj.get("apiVersion", f"{GROUP}/{VERSION}"),
        "kind": obj.get("kind", "LoopRound"),
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def condition(obj: JSON | None, type_: str) -> JSON | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c
    return None


def first(items: Iterable[JSON]) -> JSON | None:
    for i in items:
        return i
    return None
