"""Control's CA certificate in every namespace, as Istio's istio-ca-root-cert: a ConfigMap
`meshgate-ca-root` (key `ca.crt`) that injected sidecars mount (control/inject.py) to trust control.

Every replica publishes: they hold the same CA (one keys Secret), and each write is compare-then-write
(create, or replace on the resourceVersion read; a 409 means another replica got there first, so read
again), so replicas agree and a settled cluster sees no writes. A namespace watch reaches a new
namespace as it appears; the relist every `resync_s` (when the watch ends) repairs a ConfigMap someone
edited or deleted. System namespaces (kube-system, kube-public, kube-node-lease) and terminating ones
are left alone; one namespace that refuses does not hold up the others and is tried again next relist.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter

from meshgate.control.inject import CA_CONFIGMAP, CA_KEY
from meshgate.control.kube import JSON, Gone, KubeClient, KubeError

__all__ = ["CA_CONFIGMAP", "CA_KEY", "CaPublisher", "wanted"]

log = logging.getLogger("meshgate.control.ca_publisher")

EXCLUDED = frozenset({"kube-system", "kube-public", "kube-node-lease"})
MANAGED = {"app.kubernetes.io/managed-by": "meshgate-control"}
MAX_ATTEMPTS = 5
MIN_WATCH_S = 1.0  # a watch that ends sooner than this is followed by a pause, not an instant relist


def wanted(namespace: JSON, excluded: frozenset[str] = EXCLUDED) -> bool:
    """Whether a Namespace gets the CA: not a system one, not being deleted."""
    meta = namespace.get("metadata") or {}
    phase = (namespace.get("status") or {}).get("phase")
    return (
        bool(meta.get("name"))
        and meta["name"] not in excluded
        and not meta.get("deletionTimestamp")
        and (phase != "Terminating")
    )


def desired(namespace: str, ca_pem: str, current: JSON | None = None) -> JSON:
    """The ConfigMap as it should be: ours on top of what someone else added to its metadata."""
    meta = dict((current or {}).get("metadata") or {})
    meta.update(name=CA_CONFIGMAP, namespace=namespace, labels={**(meta.get("labels") or {}), **MANAGED})
    meta.pop("managedFields", None)
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {CA_KEY: ca_pem}}


def _current(cm: JSON, ca_pem: str) -> bool:
    labels = (cm.get("metadata") or {}).get("labels") or {}
    return cm.get("data") == {CA_KEY: ca_pem} and all(labels.get(k) == v for k, v in MANAGED.items())


class CaPublisher:
    """Keeps `meshgate-ca-root` current in every namespace (or in `namespace` alone)."""

    def __init__(
        self,
        kube: KubeClient,
        ca_pem: bytes,
        *,
        namespace: str = "",
        resync_s: float = 300.0,
        retry_s: float = 5.0,
        excluded: frozenset[str] = EXCLUDED,
    ) -> None:
        self.kube = kube
        self.ca_pem = ca_pem.decode()
        self.namespace = namespace  # "" = every namespace
        self.resync_s = resync_s
        self.retry_s = retry_s
        self.excluded = excluded
        self.writes: Counter[str] = Counter()  # "created" | "updated"
        self.failures: Counter[str] = Counter()  # namespace -> failed attempts since its last success
        self.syncs = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="meshgate-ca-publisher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def ensure(self, namespace: str) -> str:
        """Create or correct the ConfigMap in `namespace`: created | updated | unchanged."""
        for _ in range(MAX_ATTEMPTS):
            cm = await self.kube.get_configmap(namespace, CA_CONFIGMAP)
            try:
                if cm is None:
                    await self.kube.create_configmap(namespace, desired(namespace, self.ca_pem))
                    return "created"
                if _current(cm, self.ca_pem):
                    return "unchanged"
                await self.kube.replace_configmap(
                    namespace, CA_CONFIGMAP, desired(namespace, self.ca_pem, cm)
                )
                return "updated"
            except KubeError as exc:
                if exc.status != 409:  # another replica wrote it since we read: read again
                    raise
        raise KubeError(409, f"{namespace}/{CA_CONFIGMAP}: still conflicting after {MAX_ATTEMPTS} attempts")

    async def publish(self, namespace: str) -> None:
        """`ensure`, logged and counted; a failure is left for the next relist."""
        try:
            what = await self.ensure(namespace)
        except KubeError as exc:
            self.failures[namespace] += 1
            log.warning("cannot publish the CA into namespace %s: %s", namespace, exc)
            return
        self.failures.pop(namespace, None)
        if what != "unchanged":
            self.writes[what] += 1
            log.info("%s ConfigMap %s/%s (control's CA)", what, namespace, CA_CONFIGMAP)

    async def sync(self) -> str:
        """Publish everywhere it belongs; returns the namespace list's resourceVersion ("" when scoped)."""
        if self.namespace:
            await self.publish(self.namespace)
            self.syncs += 1
            return ""
        items, rv = await self.kube.list_namespaces()
        for ns in items:
            if wanted(ns, self.excluded):
                await self.publish(str(ns["metadata"]["name"]))
        self.syncs += 1
        return rv

    async def _watch(self, rv: str) -> None:
        """Publish into namespaces as they appear, until the server ends the watch."""
        timeout = max(1, math.ceil(self.resync_s))
        async for event in self.kube.watch_namespaces(rv, timeout_s=timeout):
            if event.type in ("ADDED", "MODIFIED") and wanted(event.object, self.excluded):
                await self.publish(str(event.object["metadata"]["name"]))

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                rv = await self.sync()
                if self.namespace:
                    await asyncio.sleep(self.resync_s)
                    continue
                await self._watch(rv)
            except Gone:
                continue  # relist at once
            except Exception as exc:  # the API server unreachable, a bad answer: try again later
                log.warning("publishing the CA: %s: %s", type(exc).__name__, exc)
                await asyncio.sleep(self.retry_s)
                continue
            if time.monotonic() - started < MIN_WATCH_S:
                await asyncio.sleep(MIN_WATCH_S)
