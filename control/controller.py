"""The Kubernetes controller: meshgate.io custom resources -> the etcd store, and status back.

It lists and watches Api, Stage, UsagePlan and ApiKey objects (relisting on
`410 Gone`), turns each into the document `meshgate apply -f` takes
(`parse_document`, the same validation, `Store.apply`), and reports two
conditions on the object's `/status`:

- `Accepted`: validated and stored in etcd, or refused with the reason (the
  field path of the validation error); a refused generation writes nothing.
- `Applied`: how many of the sidecars that receive this resource have ACKed
  a snapshot holding its current content, with NACK errors. The controller
  follows etcd through the process's etcd mirror (`control/mirror.py`, the
  same load and watch the config stream uses: resources and sidecar status
  keys) and rebuilds the per-sidecar snapshots the config stream builds,
  remembering which resource content each snapshot version holds; a sidecar
  counts as applied when its ACKed version holds the resource exactly as
  etcd has it now. Re-evaluated on every etcd change, sidecar ACKs included.
  `False`/`Poisoned` while etcd holds a value for it that cannot be used
  (`State.poisoned`: the sidecars keep its last good version).

Stages are GitOps-style: a Stage object without `spec.deployment` follows
its Api: whenever the Api's spec differs from the deployment the stage
serves, the controller makes the next numbered Deployment (the same
`Store.deploy` as `meshgate deploy`, so a stage with a canary gets it on the
canary). `spec.deployment: N` pins deployment N instead.

Resources the controller writes carry the annotation
`meshgate.io/managed-by: kubernetes`; deleting the object deletes them
(`Store.delete`, as `meshgate delete`), and every relist deletes managed
resources whose object is gone (no finalizers needed: a delete made while no
controller ran is caught up on start). Resources made with the CLI are never
touched; an object naming one is refused (`Accepted` False).

When a condition changes (status or reason), the controller also records a
Kubernetes Event on the object, as controllers do for `kubectl describe`:
Warning for a refusal or a NACK, Normal for Accepted and Applied. Events are
best effort: one that cannot be written is logged and dropped.

Only the Lease holder (`leader.py`) writes to etcd, to status and Events; the
others keep their caches warm and take over when the Lease expires.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from meshgate.control import state as keys
from meshgate.control.applied import AppliedTracker, condition
from meshgate.control.coalesce import Coalescer
from meshgate.control.errors import ControlError, FailedPrecondition, InvalidConfig, NotFound
from meshgate.control.kube import (
    BY_KIND,
    JSON,
    RESOURCES,
    Gone,
    KubeClient,
    KubeError,
    KubeOptions,
    Resource,
    event,
)
from meshgate.control.leader import LeaderElector
from meshgate.control.mirror import EtcdMirror, MirrorEvent, Subscription
from meshgate.control.resources import parse_document
from meshgate.control.state import ResourceMsg, State, unwrap
from meshgate.control.store import Store
from meshgate.control.tasks import cancel_and_wait
from meshgate.v1 import control_pb2, resources_pb2

log = logging.getLogger("meshgate.control.controller")

MANAGED_BY = "meshgate.io/managed-by"
MANAGER = "kubernetes"
DROPPED_ANNOTATIONS = ("kubectl.kubernetes.io/",)  # last-applied-configuration: large and not config
MAX_BACKOFF_S = 60.0

ObjKey = tuple[str, str, str]  # kind, namespace, name


@dataclass(frozen=True)
class ControllerOptions:
    kube: KubeOptions = field(default_factory=KubeOptions)
    namespace: str = ""  # "" = every namespace
    lease_namespace: str = "meshgate-system"
    lease_name: str = "meshgate-controller"
    lease_duration_s: float = 15.0
    renew_s: float = 2.0
    renew_deadline_s: float | None = None
    resync_s: float = 300.0
    watch_timeout_s: int = 300
    debounce_s: float = 0.02
    max_delay_s: float = 0.1


@dataclass
class Outcome:
    """What the last reconcile of one object's generation did."""

    generation: int
    accepted: bool
    reason: str
    message: str
    etcd_key: str = ""
    revision: int = 0  # etcd mod revision of the stored resource: Applied waits until the watch saw it
    api: str = ""  # for Stages (and what a refused Stage waits for)


def _meta(obj: JSON) -> JSON:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _objkey(kind: str, obj: JSON) -> ObjKey:
    meta = _meta(obj)
    return (kind, str(meta.get("namespace") or "default"), str(meta.get("name") or ""))


def _relevant(obj: JSON) -> tuple[Any, ...]:
    """What a change must touch to need a reconcile (status-only updates do not)."""
    meta = _meta(obj)
    return (
        meta.get("generation"),
        meta.get("labels"),
        {k: v for k, v in (meta.get("annotations") or {}).items() if not k.startswith(DROPPED_ANNOTATIONS)},
        meta.get("deletionTimestamp"),
        obj.get("spec"),
    )


def is_managed(msg: ResourceMsg) -> bool:
    return msg.metadata.annotations.get(MANAGED_BY) == MANAGER


class Refused(Exception):
    """An object that cannot be stored as it is: Accepted False with a reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Controller:
    """Reconciles meshgate.io objects into one etcd prefix while this replica holds the Lease."""

    def __init__(
        self,
        store: Store,
        options: ControllerOptions,
        *,
        identity: str,
        cluster_cidrs: tuple[str, ...] = (),
        kube: KubeClient | None = None,
        mirror: EtcdMirror | None = None,
    ) -> None:
        self.store = store
        self.options = options
        self.identity = identity
        self.cluster_cidrs = tuple(cluster_cidrs)
        self.kube = kube
        self.elector: LeaderElector | None = None
        # Kubernetes side
        self.cache: dict[str, dict[tuple[str, str], JSON]] = {r.kind: {} for r in RESOURCES}
        self.synced = {r.kind: asyncio.Event() for r in RESOURCES}
        self.relists = dict.fromkeys(BY_KIND, 0)
        self.outcomes: dict[ObjKey, Outcome] = {}
        self._written: dict[ObjKey, JSON] = {}
        self._queue: asyncio.Queue[ObjKey] = asyncio.Queue()
        self._queued: set[ObjKey] = set()
        self._failures: dict[ObjKey, int] = {}
        self._leading = asyncio.Event()
        self._status_pending: set[ObjKey] = set()
        self._status_wake = asyncio.Event()
        # etcd side: the mirror's State (resources and sidecar statuses), shared with the config stream
        self.mirror = mirror or EtcdMirror(store)
        self._own_mirror = mirror is None  # a shared mirror is stopped by whoever made it
        self._subscription: Subscription | None = None
        self.applied = AppliedTracker(store.prefix, self.cluster_cidrs)  # what each sidecar's snapshot holds
        self._changes = Coalescer(options.debounce_s, options.max_delay_s)
        self._tasks: list[asyncio.Task[None]] = []
        # counters (tests, metrics)
        self.etcd_writes = 0
        self.status_writes = 0

    @property
    def state(self) -> State:
        """Everything under the prefix, as the etcd mirror has it now."""
        return self.mirror.state

    @property
    def sidecars(self) -> dict[str, control_pb2.SidecarStatus]:
        """The status of every sidecar with a status key: node id -> SidecarStatus."""
        return self.mirror.state.statuses

    @property
    def seen_revision(self) -> int:
        """The newest etcd revision the mirror has seen."""
        return self.mirror.revision

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.kube is None:
            self.kube = await KubeClient.connect(self.options.kube, f"meshgate-controller/{self.identity}")
        await self.mirror.start()
        self._subscription = self.mirror.subscribe(self._on_etcd, "controller")
        self.applied.rebuild(self.state)
        self.elector = LeaderElector(
            self.kube,
            self.options.lease_namespace,
            self.options.lease_name,
            self.identity,
            lease_duration_s=self.options.lease_duration_s,
            renew_deadline_s=self.options.renew_deadline_s,
            retry_s=self.options.renew_s,
            on_change=self._on_leading,
        )
        self._tasks = [
            *(asyncio.create_task(self._informer(r), name=f"informer-{r.plural}") for r in RESOURCES),
            asyncio.create_task(self._etcd_flush(), name="controller-flush"),
            asyncio.create_task(self._worker(), name="controller-worker"),
            asyncio.create_task(self._status_loop(), name="controller-status"),
            asyncio.create_task(self._resync(), name="controller-resync"),
        ]
        self.elector.start()

    async def stop(self, release: bool = True) -> None:
        """Stop; `release=False` leaves the Lease to expire (what a crash does)."""
        if self.elector is not None:
            await self.elector.stop(release=release)
        await cancel_and_wait(self._tasks)
        self._tasks = []
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None
        if self._own_mirror:
            await self.mirror.stop()
        if self.kube is not None:
            await self.kube.close()

    def is_leader(self) -> bool:
        return self.elector is not None and self.elector.is_leader()

    def _on_leading(self, leading: bool) -> None:
        if not leading:
            self._leading.clear()
            return
        self._leading.set()
        self._written.clear()  # another leader may have written status since: compare with the cache
        self._enqueue_all()

    def _enqueue_all(self) -> None:
        for kind, objs in self.cache.items():
            for ns, name in list(objs):
                self.enqueue((kind, ns, name))
            if self.synced[kind].is_set():
                self.enqueue(("gc", kind, ""))

    def enqueue(self, key: ObjKey) -> None:
        if key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    # ------------------------------------------------------------------ Kubernetes: list + watch

    async def _informer(self, res: Resource) -> None:
        assert self.kube is not None
        ns = self.options.namespace
        backoff = 0.2
        while True:
            try:
                items, rv = await self.kube.list(res, ns)
                self._replace(res.kind, items)
                self.synced[res.kind].set()
                self.enqueue(("gc", res.kind, ""))
                backoff = 0.2
                quiet = 0.1
                while True:  # watch from the last resourceVersion until Gone
                    started, events = time.monotonic(), 0
                    async for event in self.kube.watch(res, ns, rv, self.options.watch_timeout_s):
                        events += 1
                        rv = str(_meta(event.object).get("resourceVersion") or rv)
                        if event.type != "BOOKMARK":
                            self._on_kube_event(res.kind, event.type, event.object)
                    if events or time.monotonic() - started > 1.0:
                        quiet = 0.1
                    else:  # a server that ends watches at once must not make this loop spin
                        await asyncio.sleep(quiet)
                        quiet = min(quiet * 2, 5.0)
            except asyncio.CancelledError:
                raise
            except Gone:
                log.info("watch of %s: resourceVersion too old; listing again", res.plural)
                self.relists[res.kind] += 1
            except Exception as exc:
                log.warning("list/watch of %s failed (%s); again in %.1fs", res.plural, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    def _replace(self, kind: str, items: list[JSON]) -> None:
        """A (re)list: the cache becomes the list; what changed or vanished meanwhile is queued."""
        old = self.cache[kind]
        new = {}
        for obj in items:
            k = _objkey(kind, obj)
            new[(k[1], k[2])] = obj
        for ident, obj in new.items():
            prev = old.get(ident)
            if prev is None or _relevant(prev) != _relevant(obj):
                self.enqueue((kind, *ident))
        for ident in old.keys() - new.keys():
            self.enqueue((kind, *ident))
        self.cache[kind] = new

    def _on_kube_event(self, kind: str, type_: str, obj: JSON) -> None:
        k = _objkey(kind, obj)
        ident = (k[1], k[2])
        prev = self.cache[kind].get(ident)
        if type_ == "DELETED":
            self.cache[kind].pop(ident, None)
            self.enqueue(k)
            return
        self.cache[kind][ident] = obj
        if prev is None or _relevant(prev) != _relevant(obj):
            self.enqueue(k)

    async def _resync(self) -> None:
        """Re-reconcile everything now and then (Secrets are read, not watched)."""
        while True:
            await asyncio.sleep(self.options.resync_s)
            if self.is_leader():
                self._enqueue_all()

    # ------------------------------------------------------------------ the work queue

    async def _worker(self) -> None:
        while True:
            key = await self._queue.get()
            await self._leading.wait()
            self._queued.discard(key)
            if not self.is_leader():
                self.enqueue(key)  # picked up again when (if) this replica leads
                await asyncio.sleep(0.05)
                continue
            try:
                if key[0] == "gc":
                    await self._gc(key[1])
                else:
                    await self._reconcile(key)
                self._failures.pop(key, None)
            except asyncio.CancelledError:
                raise
            except _NotLeader:
                self.enqueue(key)  # lost the Lease mid-way: whoever leads next reconciles it
            except Exception as exc:
                n = self._failures.get(key, 0) + 1
                self._failures[key] = n
                delay = min(MAX_BACKOFF_S, 0.2 * 2 ** (n - 1))
                log.warning("reconcile %s %s/%s failed (%s); again in %.1fs", *key, exc, delay)
                asyncio.get_running_loop().call_later(delay, self.enqueue, key)

    def _may_write(self) -> None:
        if not self.is_leader():
            raise _NotLeader()

    async def _reconcile(self, key: ObjKey) -> None:
        kind, ns, name = key
        obj = self.cache[kind].get((ns, name))
        if obj is None or _meta(obj).get("deletionTimestamp"):
            self.outcomes.pop(key, None)
            self._written.pop(key, None)
            await self._remove(kind, ns, name)
            return
        generation = int(_meta(obj).get("generation") or 1)
        try:
            outcome = await self._apply(kind, obj, generation)
        except _Retry as exc:  # a Secret that may appear later: report now, look again with backoff
            self.outcomes[key] = Outcome(generation, False, exc.reason, exc.message, etcd_key=exc.etcd_key)
            self._mark_status(key)
            raise
        except Refused as exc:
            outcome = Outcome(generation, False, exc.reason, exc.message, api=self._stage_api(obj))
        self.outcomes[key] = outcome
        self._mark_status(key)
        if kind == "Api" and outcome.accepted:
            for (sns, sname), stage in list(self.cache["Stage"].items()):
                if sns == ns and self._stage_api(stage) == name:
                    self.enqueue(("Stage", sns, sname))
            for (pns, pname), _plan in list(self.cache["UsagePlan"].items()):
                out = self.outcomes.get(("UsagePlan", pns, pname))
                if pns == ns and (out is None or not out.accepted):
                    self.enqueue(("UsagePlan", pns, pname))

    @staticmethod
    def _stage_api(obj: JSON) -> str:
        spec = obj.get("spec")
        return str(spec.get("api") or "") if isinstance(spec, dict) else ""

    # ------------------------------------------------------------------ apply one object

    async def _document(self, kind: str, obj: JSON) -> JSON:
        """The object as the document `meshgate apply -f` takes, marked as managed by the controller."""
        meta = _meta(obj)
        annotations = {
            str(k): str(v)
            for k, v in (meta.get("annotations") or {}).items()
            if not str(k).startswith(DROPPED_ANNOTATIONS)
        }
        annotations[MANAGED_BY] = MANAGER
        doc_meta: JSON = {"name": meta.get("name"), "namespace": meta.get("namespace") or "default"}
        if meta.get("labels"):
            doc_meta["labels"] = meta["labels"]
        doc_meta["annotations"] = annotations
        spec = copy.deepcopy(obj.get("spec"))
        if kind == "ApiKey" and isinstance(spec, dict) and "valueFrom" in spec:
            spec["value"] = await self._secret_value(doc_meta["namespace"], spec)
        return {"apiVersion": obj.get("apiVersion"), "kind": kind, "metadata": doc_meta, "spec": spec}

    async def _secret_value(self, namespace: str, spec: JSON) -> str:
        value_from = spec.pop("valueFrom")
        if "value" in spec:
            raise Refused("Invalid", "spec.value and spec.valueFrom are exclusive")
        ref = value_from.get("secretKeyRef") if isinstance(value_from, dict) else None
        if not isinstance(ref, dict) or not ref.get("name") or not ref.get("key"):
            raise Refused("Invalid", "spec.valueFrom.secretKeyRef: name and key are required")
        assert self.kube is not None
        name, key = str(ref["name"]), str(ref["key"])
        secret = await self.kube.get_secret(namespace, name)
        if secret is None:
            raise _Retry(
                "SecretNotFound", f"spec.valueFrom.secretKeyRef: Secret {namespace}/{name} does not exist"
            )
        data = secret.get("data") or {}
        if key in data:
            try:
                return base64.b64decode(str(data[key]), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise Refused(
                    "Invalid",
                    f"spec.valueFrom.secretKeyRef: key {key!r} of Secret {namespace}/{name} is not UTF-8 text",
                ) from None
        if key in (secret.get("stringData") or {}):
            return str(secret["stringData"][key])
        raise Refused(
            "Invalid", f"spec.valueFrom.secretKeyRef.key: Secret {namespace}/{name} has no key {key!r}"
        )

    async def _apply(self, kind: str, obj: JSON, generation: int) -> Outcome:
        doc = await self._document(kind, obj)
        try:
            res = parse_document(doc)
        except ValueError as exc:
            raise Refused("Invalid", str(exc)) from None
        msg = unwrap(res)
        ns = msg.metadata.namespace
        key = keys.key_for(self.store.prefix, res)
        current = await self._get(key)
        poisoned = self.state.poisoned.get(key)
        if current is None and poisoned is not None:  # undecodable: neither ours nor overwritable
            raise _Retry(
                "Poisoned", f"etcd holds an unusable value at {key}: {poisoned}; delete it there", key
            )
        if current is not None and not is_managed(current):
            raise Refused(
                "NotManaged",
                f"{kind} {ns}/{msg.metadata.name} exists in etcd and was made with the meshgate CLI; "
                "delete it there (meshgate delete) to manage it with Kubernetes",
            )
        stale: list[resources_pb2.Stage] = []
        if isinstance(msg, resources_pb2.Stage):
            stale = await self._prepare_stage(msg, current)
        self._may_write()
        try:
            response = await self.store.apply([res])
        except InvalidConfig as exc:
            raise Refused("Invalid", _without_subject(exc)) from None
        except NotFound as exc:
            raise Refused("ApiNotFound" if kind == "Stage" else "NotFound", str(exc)) from None
        except FailedPrecondition as exc:
            raise Refused("FailedPrecondition", str(exc)) from None
        if any(r.action != "unchanged" for r in response.results):
            self.etcd_writes += 1
        message = "validated and stored"
        api = ""
        if isinstance(msg, resources_pb2.Stage):
            api = msg.spec.api
            message = await self._deploy_stage(msg, generation)
            for old in stale:
                self._may_write()
                with contextlib.suppress(NotFound):
                    await self.store.delete(keys.ref_of(old))
                    self.etcd_writes += 1
        stored = await self.store.resource_at(key)
        revision = stored.metadata.revision if stored is not None else 0
        return Outcome(generation, True, "Stored", message, etcd_key=key, revision=revision, api=api)

    async def _get(self, key: str) -> ResourceMsg | None:
        return await self.store.resource_at(key)

    async def _prepare_stage(
        self, stage: resources_pb2.Stage, current: ResourceMsg | None
    ) -> list[resources_pb2.Stage]:
        """Keep server-managed fields, check a pinned deployment; managed stages of the same name
        under another Api (spec.api changed) are returned to be deleted once this one is stored."""
        ns, name = stage.metadata.namespace, stage.metadata.name
        if isinstance(current, resources_pb2.Stage):
            c, old = stage.spec.canary, current.spec.canary
            if stage.spec.HasField("canary") and not c.deployment and old.deployment:
                c.deployment = old.deployment  # made by an earlier auto-deploy
        if stage.spec.deployment:
            dep = await self._get(
                keys.deployment_key(self.store.prefix, ns, stage.spec.api, stage.spec.deployment)
            )
            if dep is None:
                raise Refused(
                    "DeploymentNotFound",
                    f"spec.deployment: deployment {stage.spec.deployment} of Api {ns}/{stage.spec.api} does not exist",
                )
        stale = []
        for found in await self.store.get("Stage", ns, name=name):
            other = found.stage
            if other.spec.api != stage.spec.api and is_managed(other):
                stale.append(other)
        return stale

    async def _deploy_stage(self, stage: resources_pb2.Stage, generation: int) -> str:
        """Auto-deploy: a stage without spec.deployment serves the Api's current spec."""
        ns, name, api = stage.metadata.namespace, stage.metadata.name, stage.spec.api
        if stage.spec.deployment:
            return f"validated and stored; serving pinned deployment {stage.spec.deployment}"
        stored = await self._get(keys.stage_key(self.store.prefix, ns, api, name))
        api_msg = await self._get(keys.api_key(self.store.prefix, ns, api))
        assert isinstance(stored, resources_pb2.Stage) and isinstance(api_msg, resources_pb2.Api)
        base = stored.spec.deployment
        to_canary = bool(base) and stored.spec.canary.percent > 0
        served = stored.spec.canary.deployment if to_canary else base
        dep = await self._get(keys.deployment_key(self.store.prefix, ns, api, served)) if served else None
        if isinstance(dep, resources_pb2.Deployment) and dep.spec.api_spec == api_msg.spec:
            dep_id = served
        else:
            self._may_write()
            resp = await self.store.deploy(
                ns,
                api,
                name,
                description=f"auto-deployed by the Kubernetes controller for Stage {ns}/{name} generation {generation}",
                skip_canary=not to_canary,
            )
            self.etcd_writes += 1
            dep_id = resp.deployment
        where = (
            f"canary deployment {dep_id} ({stored.spec.canary.percent:g}%)"
            if to_canary
            else f"deployment {dep_id}"
        )
        return f"validated and stored; serving {where} (the Api's current spec)"

    # ------------------------------------------------------------------ removal and garbage collection

    async def _remove(self, kind: str, ns: str, name: str) -> None:
        if kind == "Stage":
            for found in await self.store.get("Stage", ns, name=name):
                if not is_managed(found.stage):
                    continue
                self._may_write()
                with contextlib.suppress(NotFound):
                    await self.store.delete(keys.ref_of(found.stage))
                    self.etcd_writes += 1
                api = found.stage.spec.api
                if (ns, api) not in self.cache["Api"]:
                    self.enqueue(("Api", ns, api))  # its deletion may have waited for this stage
            return
        current = await self._get(keys.named_key(self.store.prefix, kind, ns, name))
        if current is None or not is_managed(current):
            return
        self._may_write()
        try:
            await self.store.delete(keys.ref_of(current))
            self.etcd_writes += 1
        except NotFound:
            pass
        except FailedPrecondition as exc:  # an Api whose stages are not deleted yet: retried with backoff
            raise _Retry("FailedPrecondition", str(exc)) from None

    async def _gc(self, kind: str) -> None:
        """Managed resources in etcd whose object no longer exists are queued for deletion."""
        for found in await self.store.get(kind, self.options.namespace):
            msg = unwrap(found)
            if not is_managed(msg):
                continue
            ns, name = msg.metadata.namespace or "default", msg.metadata.name
            obj = self.cache[kind].get((ns, name))
            if obj is None or (isinstance(msg, resources_pb2.Stage) and self._stage_api(obj) != msg.spec.api):
                self.enqueue((kind, ns, name))

    # ------------------------------------------------------------------ etcd: what the sidecars applied

    def _on_etcd(self, event: MirrorEvent) -> None:
        """Any change (a sidecar's ACK included) or a reload: re-evaluate once the burst settles."""
        self._changes.mark()

    async def _etcd_flush(self) -> None:
        while True:
            await self._changes.settled()
            self.applied.rebuild(self.state)
            for key, out in list(self.outcomes.items()):
                self._mark_status(key)
                if out.reason == "ApiNotFound" and (key[1], out.api) in self.state.apis:
                    self.enqueue(key)  # the Api it waits for exists now (made by an object or the CLI)
                elif out.reason == "Poisoned" and out.etcd_key not in self.state.poisoned:
                    self.enqueue(key)  # the unusable value it could not replace is gone

    # ------------------------------------------------------------------ status

    def _mark_status(self, key: ObjKey) -> None:
        self._status_pending.add(key)
        self._status_wake.set()

    def desired_status(self, key: ObjKey) -> JSON | None:
        out = self.outcomes.get(key)
        if out is None:
            return None
        if out.accepted and self.seen_revision < out.revision:
            return None  # the etcd watch has not seen this write yet: Applied would judge old content
        accepted = condition(
            "Accepted", "True" if out.accepted else "False", out.reason, out.message, out.generation
        )
        applied, bound, acked = self.applied.judge(
            self.state, out.accepted, out.etcd_key, out.generation, key[0]
        )
        status: JSON = {
            "observedGeneration": out.generation,
            "conditions": [accepted, applied],
            "boundSidecars": bound,
            "ackedSidecars": acked,
        }
        stored = self.state.resource(out.etcd_key) if out.accepted else None
        if isinstance(stored, resources_pb2.Stage) and stored.spec.deployment:
            status["deployment"] = stored.spec.deployment
        return status

    async def _status_loop(self) -> None:
        while True:
            await self._status_wake.wait()
            self._status_wake.clear()
            pending, self._status_pending = self._status_pending, set()
            for key in sorted(pending):
                if not self.is_leader():
                    break
                try:
                    await self._sync_status(key)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("status of %s %s/%s: %s", *key, exc)
                    self._status_pending.add(key)
                    asyncio.get_running_loop().call_later(1.0, self._status_wake.set)

    async def _sync_status(self, key: ObjKey) -> None:
        kind, ns, name = key
        obj = self.cache[kind].get((ns, name))
        desired = self.desired_status(key)
        if obj is None or desired is None:
            return
        current = self._written.get(key)
        if current is None:
            status = obj.get("status")
            current = status if isinstance(status, dict) else {}
        old_conditions = {c.get("type"): c for c in current.get("conditions") or [] if isinstance(c, dict)}
        changed: list[JSON] = []
        for cond in desired["conditions"]:
            old = old_conditions.get(cond["type"])
            if old is not None and old.get("status") == cond["status"] and old.get("lastTransitionTime"):
                cond["lastTransitionTime"] = old["lastTransitionTime"]
            if old is None or (old.get("status"), old.get("reason")) != (cond["status"], cond["reason"]):
                changed.append(cond)
        if desired == current:
            return
        self._may_write()
        assert self.kube is not None
        try:
            await self.kube.patch_status(BY_KIND[kind], ns, name, desired)
        except KubeError as exc:
            if exc.status == 404:
                return  # deleted meanwhile
            raise
        self._written[key] = desired
        self.status_writes += 1
        for cond in changed:
            event = _event_for(cond)
            if event is not None:
                await self._record_event(kind, obj, *event)

    async def _record_event(self, kind: str, obj: JSON, type_: str, reason: str, message: str) -> None:
        """One core/v1 Event about `obj`; best effort."""
        assert self.kube is not None
        body = event(kind, obj, type_, reason, message, self.identity)
        ns, name = body["involvedObject"]["namespace"], body["involvedObject"]["name"]
        try:
            await self.kube.create_event(ns, body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("event %s on %s %s/%s not recorded: %s", reason, kind, ns, name, exc)


def _event_for(cond: JSON) -> tuple[str, str, str] | None:
    """The Event a changed condition is worth: (type, reason, message), or None."""
    status, reason = cond["status"], cond["reason"]
    if cond["type"] == "Applied" and status != "True" and reason not in ("Nacked", "Poisoned"):
        return None  # Applying, NotAccepted and the no-sidecar reasons are states, not news
    return ("Normal" if status == "True" else "Warning", reason, cond["message"])


def _without_subject(exc: InvalidConfig) -> str:
    """Every error as `spec.routes[0].path: …`, "; " between them (the object is the condition's)."""
    return "; ".join(": ".join(p for p in (e.field, e.message) if p) for e in exc.errors)


class _NotLeader(ControlError):
    """This replica lost the Lease: no more writes."""


class _Retry(Refused):
    """A refusal that may resolve by itself (a Secret created later, a poisoned key deleted): reported,
    and retried with backoff."""

    def __init__(self, reason: str, message: str, etcd_key: str = "") -> None:
        super().__init__(reason, message)
        self.etcd_key = etcd_key  # a poisoned key: retried as soon as the mirror sees it usable
