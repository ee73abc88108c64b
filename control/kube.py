"""A small typed Kubernetes API client for the controller and the webhook, on kubernetes_asyncio.

kubernetes_asyncio owns configuration (in-cluster service account with token
refresh, kubeconfig with its auth plugins, TLS) and request building; this
module owns what meshgate needs from it, as plain JSON dicts: list and
watch of the meshgate.io custom resources (newline-delimited watch events,
`410 Gone` as an exception so the caller relists), merge-patches of the
`/status` subresource, Secrets (the controller reads ApiKey material, the
webhook creates and replaces its TLS Secret), Namespaces (list and watch) and
ConfigMaps (control publishes its CA), coordination.k8s.io/v1 Leases,
and admissionregistration.k8s.io/v1 MutatingWebhookConfigurations (the
webhook's caBundle), with optimistic concurrency on `resourceVersion` (409 as
a KubeError). Responses are read raw (`_preload_content=False`) so no
generated model classes are involved.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from meshgate.control.crds import GROUP, VERSION

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
REQUEST_TIMEOUT_S = 30.0

JSON = dict[str, Any]
Items = list[JSON]  # `list` is a KubeClient method: inside the class it names that


@dataclass(frozen=True)
class Resource:
    """One kind of meshgate.io custom resource."""

    kind: str
    plural: str


RESOURCES = (
    Resource("Api", "apis"),
    Resource("Stage", "stages"),
    Resource("UsagePlan", "usageplans"),
    Resource("ApiKey", "apikeys"),
)
BY_KIND = {r.kind: r for r in RESOURCES}


class KubeError(Exception):
    """A non-2xx answer of the API server (status code and the Status message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class Gone(KubeError):
    """The watch's resourceVersion is too old (410): list again."""


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED | MODIFIED | DELETED | BOOKMARK
    object: JSON


@dataclass(frozen=True)
class KubeOptions:
    """Where the API server is: an explicit URL (tests, `kubectl proxy`), a kubeconfig, or in-cluster."""

    api_url: str = ""
    kubeconfig: str = ""


def in_cluster_namespace(default: str = "meshgate-system") -> str:
    """The namespace of this pod (from its service account), or `default` outside a cluster."""
    try:
        return (SERVICE_ACCOUNT_DIR / "namespace").read_text().strip() or default
    except OSError:
        return default


async def load_configuration(options: KubeOptions) -> k8s.Configuration:
    conf = k8s.Configuration()
    if options.api_url:
        conf.host = options.api_url.rstrip("/")
    elif options.kubeconfig or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        await k8s_config.load_kube_config(config_file=options.kubeconfig or None, client_configuration=conf)
    else:
        k8s_config.load_incluster_config(client_configuration=conf)  # type: ignore[no-untyped-call]
    return conf


async def _read_json(resp: aiohttp.ClientResponse) -> JSON:
    """The body of a raw response as JSON; KubeError (Gone for 410) for a non-2xx answer."""
    try:
        body = await resp.read()
    finally:
        resp.release()
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        data = {"message": body.decode(errors="replace")[:200]}
    if not 200 <= resp.status <= 299:
        message = str(data.get("message", resp.reason)) if isinstance(data, dict) else str(resp.reason)
        raise (Gone if resp.status == 410 else KubeError)(resp.status, message)
    if not isinstance(data, dict):
        raise KubeError(resp.status, "expected a JSON object")
    return data


async def _read_json_or_none(resp: Any) -> JSON | None:
    """The object of a GET, None when it does not exist (404)."""
    try:
        return await _read_json(resp)
    except KubeError as exc:
        if exc.status == 404:
            return None
        raise


async def _watch_events(resp: Any) -> AsyncIterator[WatchEvent]:
    """The events of a raw watch response (newline-delimited JSON); an ERROR event raises (Gone for 410)."""
    if resp.status != 200:
        await _read_json(resp)  # raises
    try:
        while True:
            line = await resp.content.readline()
            if not line:
                return
            if not line.strip():
                continue
            event = json.loads(line)
            obj = event.get("object") if isinstance(event, dict) else None
            if not isinstance(obj, dict) or "type" not in event:
                raise KubeError(resp.status, f"not a watch event: {line[:100]!r}")
            kind = str(event["type"])
            if kind == "ERROR":
                code = int(obj.get("code") or 500)
                raise (Gone if code == 410 else KubeError)(code, str(obj.get("message", "")))
            yield WatchEvent(kind, obj)
    finally:
        resp.release()


class KubeClient:
    """meshgate's view of the Kubernetes API (the controller's and the webhook's)."""

    def __init__(self, configuration: k8s.Configuration, user_agent: str = "meshgate-controller") -> None:
        self._api = k8s.ApiClient(configuration)
        self._api.user_agent = user_agent
        # The generated methods are annotated with model types; called with _preload_content=False
        # they return the raw aiohttp response instead, which is what this module reads.
        self._custom: Any = k8s.CustomObjectsApi(self._api)
        self._core: Any = k8s.CoreV1Api(self._api)
        self._coordination: Any = k8s.CoordinationV1Api(self._api)
        self._admission: Any = k8s.AdmissionregistrationV1Api(self._api)
        self._authn: Any = k8s.AuthenticationV1Api(self._api)
        self._authz: Any = k8s.AuthorizationV1Api(self._api)

    @classmethod
    async def connect(cls, options: KubeOptions, user_agent: str = "meshgate-controller") -> KubeClient:
        return cls(await load_configuration(options), user_agent)

    async def close(self) -> None:
        await self._api.close()

    # ------------------------------------------------------------------ custom resources

    async def list(self, res: Resource, namespace: str = "") -> tuple[list[JSON], str]:
        """Every object of a kind (in one namespace, or all with ""), and the list's resourceVersion."""
        if namespace:
            resp = await self._custom.list_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                res.plural,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT_S,
            )
        else:
            resp = await self._custom.list_cluster_custom_object(
                GROUP, VERSION, res.plural, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S
            )
        data = await _read_json(resp)
        items = [i for i in data.get("items") or [] if isinstance(i, dict)]
        for item in items:  # list items carry no kind/apiVersion
            item.setdefault("apiVersion", f"{GROUP}/{VERSION}")
            item.setdefault("kind", res.kind)
        return items, str((data.get("metadata") or {}).get("resourceVersion", ""))

    async def watch(
        self, res: Resource, namespace: str, resource_version: str, timeout_s: int = 300
    ) -> AsyncIterator[WatchEvent]:
        """Events after `resource_version` until the server ends the watch; Gone when it is too old."""
        kwargs: dict[str, Any] = {
            "watch": True,
            "resource_version": resource_version,
            "allow_watch_bookmarks": True,
            "timeout_seconds": timeout_s,
            "_preload_content": False,
            "_request_timeout": aiohttp.ClientTimeout(sock_connect=10, sock_read=timeout_s + 30),
        }
        if namespace:
            resp = await self._custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, res.plural, **kwargs
            )
        else:
            resp = await self._custom.list_cluster_custom_object(GROUP, VERSION, res.plural, **kwargs)
        async for event in _watch_events(resp):
            yield event

    async def patch_status(self, res: Resource, namespace: str, name: str, status: JSON) -> JSON:
        """Merge-patch the /status subresource (custom resources take no strategic merge patch)."""
        resp = await self._custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            res.plural,
            name,
            {"status": status},
            _content_type="application/merge-patch+json",
            _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT_S,
        )
        return await _read_json(resp)

    # ------------------------------------------------------------------ core / coordination

    async def create_event(self, namespace: str, body: JSON) -> JSON:
        """POST a core/v1 Event (what `kubectl describe` and `kubectl get events` show)."""
        resp = await self._core.create_namespaced_event(
            namespace, body, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S
        )
        return await _read_json(resp)

    async def get_pod(self, namespace: str, name: str) -> JSON | None:
        resp = await self._core.read_namespaced_pod(
            name, namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S
        )
        return await _read_json_or_none(resp)

    # ------------------------------------------------------------------ authentication / authorization

    async def review_token(self, token: str, audiences: tuple[str, ...]) -> JSON:
        """POST a TokenReview: the API server says whose token it is (status.user) or that it is not."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [*audiences]},
        }
        resp = await self._authn.create_token_review(
            body, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S
        )
        return await _read_json(resp)

    async def review_access(self, user: JSON, attributes: JSON) -> JSON:
        """POST a SubjectAccessReview for `user` (a TokenReview's status.user) doing `attributes`."""
        spec: JSON = {
            "user": user.get("username", ""),
            "uid": user.get("uid", ""),
            "groups": [str(g) for g in user.get("groups") or []],
            "extra": dict(user.get("extra") or {}),
            "resourceAttributes": attributes,
        }
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}
        resp = await self._authz.create_subject_access_review(
            body, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S
        )
        return await _read_json(resp)

    async def list_namespaces(self) -> tuple[Items, str]:
        """Every Namespace, and the list's resourceVersion (to watch from)."""
        resp = await self._core.list_namespace(_preload_content=False, _request_timeout=REQUEST_TIMEOUT_S)
        data = await _read_json(resp)
        items = [i for i in data.get("items") or [] if isinstance(i, dict)]
        return items, str((data.get("metadata") or {}).get("resourceVersion", ""))

    async def watch_namespaces(
        self, resource_version: str, timeout_s: int = 300
    ) -> AsyncIterator[WatchEvent]:
        """Namespace events after `resource_version` until the server ends the watch; Gone when too old."""
        resp = await self._core.list_namespace(
            watch=True,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout_s,
            _preload_content=False,
            _request_timeout=aiohttp.ClientTimeout(sock_connect=10, sock_read=timeout_s + 30),
        )
        async for event in _watch_events(resp):
            yield event

    async def get_configmap(self, namespace: str, name: str) -> JSON | None:
        resp = await self._core.read_namespaced_config_map(
            name, namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S
        )
        return await _read_json_or_none(resp)

    async def create_configmap(self, namespace: str, body: JSON) -> JSON:
        """POST a ConfigMap; 409 AlreadyExists (KubeError) when one of that name exists."""
        resp = await self._core.create_namespaced_config_map(
            namespace, body, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S
        )
        return await _read_json(resp)

    async def replace_configmap(self, namespace: str, name: str, body: JSON) -> JSON:
        """PUT a ConfigMap; 409 Conflict (KubeError) when its resourceVersion moved on, 404 when it is gone."""
        resp = await self._core.replace_namespaced_config_map(
            name, namespace, body, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S
        )
        return await _read_json(resp)

    async def get_secret(self, namespace: str, name: str) -> JSON | None:
        resp = await self._core.read_namespaced_secret(
            name, namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S
        )
        return await _read_json_or_none(resp)

    async def create_secret(self, namespace: str, body: JSON) -> JSON:
        """POST a Secret; 409 AlreadyExists (KubeError) when one of that name exists."""
        resp = await self._core.create_namespaced_secret(
            namespace, body, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S
        )
        return await _read_json(resp)

    async def replace_secret(self, namespace: str, name: str, body: JSON) -> JSON:
        """PUT a Secret; 409 Conflict (KubeError) when its resourceVersion moved on, 404 when it is gone."""
        resp = await self._core.replace_namespaced_secret(
            name, namespace, body, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S
        )
        return await _read_json(resp)

    async def get_lease(self, namespace: str, name: str, timeout_s: float) -> JSON | None:
        resp = await self._coordination.read_namespaced_lease(
            name, namespace, _preload_content=False, _request_timeout=timeout_s
        )
        return await _read_json_or_none(resp)

    async def create_lease(self, namespace: str, body: JSON, timeout_s: float) -> JSON:
        resp = await self._coordination.create_namespaced_lease(
            namespace, body, _preload_content=False, _request_timeout=timeout_s
        )
        return await _read_json(resp)

    async def replace_lease(self, namespace: str, name: str, body: JSON, timeout_s: float) -> JSON:
        """PUT the Lease; 409 (KubeError) when its resourceVersion moved on."""
        resp = await self._coordination.replace_namespaced_lease(
            name, namespace, body, _preload_content=False, _request_timeout=timeout_s
        )
        return await _read_json(resp)

    # ------------------------------------------------------------------ admissionregistration

    async def get_mutating_webhook_configuration(self, name: str) -> JSON | None:
        resp = await self._admission.read_mutating_webhook_configuration(
            name, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S
        )
        return await _read_json_or_none(resp)

    async def replace_mutating_webhook_configuration(self, name: str, body: JSON) -> JSON:
        """PUT the configuration; 409 Conflict (KubeError) when its resourceVersion moved on."""
        resp = await self._admission.replace_mutating_webhook_configuration(
            name, body, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S
        )
        return await _read_json(resp)


def event(kind: str, obj: JSON, type_: str, reason: str, message: str, instance: str) -> JSON:
    """A core/v1 Event about `obj` (`kind`), named as client-go's recorder names them, reported by
    the meshgate controller replica `instance`."""
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    ns, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{name}.{time.time_ns():x}", "namespace": ns},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion", ""),
            "kind": kind,
            "namespace": ns,
            "name": name,
            "uid": meta.get("uid", ""),
            "resourceVersion": meta.get("resourceVersion", ""),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": "meshgate-controller"},
        "reportingComponent": "meshgate.io/controller",
        "reportingInstance": instance,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
