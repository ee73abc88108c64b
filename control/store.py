"""The etcd store: validated, atomic writes of resources; deployments, rollback and canaries.

Every write is one etcd transaction guarded by the mod revisions of the keys
it read, so concurrent writers (several control replicas, CLI users) never
lose updates and refused config never reaches etcd, not even partly.

The store is the only user of the etcd client (aetcd through its public API;
`control/etcd_client.py` makes every client, plaintext or TLS with a client
certificate): the watch of
the prefix (`watch`, read by the etcd mirror alone) and the sidecar status keys
under a lease go through it too. Keys come from `control/state.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import aetcd
from aetcd.utils import prefix_range_end
from meshgate.control import state as keys
from meshgate.control.errors import Conflict, FailedPrecondition, FieldError, InvalidConfig, NotFound
from meshgate.control.etcd_client import EtcdTLS, etcd_client, why
from meshgate.control.keystore import ControlKeys
from meshgate.control.keystore import generate as generate_keys
from meshgate.control.resources import holds_redacted, touched
from meshgate.control.snapshots import rekeyed
from meshgate.control.state import KIND_WORDS, ResourceMsg, State, parts_of, unwrap, wrap
from meshgate.control.store_stages import RETRIES, StageOperations, _decoded, _Read
from meshgate.control.validation import check_private_targets, validate
from meshgate.sidecar.redact import restore
from meshgate.v1 import control_pb2, resources_pb2


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change under the prefix, in etcd's order."""

    key: str
    value: bytes  # b"" for a delete
    deleted: bool
    mod_revision: int  # the revision of the change (of the delete, for a delete)


class Compacted(Exception):
    """The watch's start revision is compacted away: only a new range read can catch up."""

    def __init__(self, compacted_revision: int) -> None:
        super().__init__(f"revision compacted below {compacted_revision}")
        self.compacted_revision = compacted_revision


class Store(StageOperations):
    """Resources under one etcd key prefix."""

    def __init__(
        self,
        etcd_endpoint: str,
        prefix: str = "/meshgate/",
        cluster_cidrs: Sequence[str] = (),
        keys: ControlKeys | None = None,
        tls: EtcdTLS | None = None,
    ) -> None:
        self.endpoint = etcd_endpoint
        self.keys = keys or generate_keys()  # control's own secrets (CA, API-key hash key): never in etcd
        self.cluster_cidrs = tuple(cluster_cidrs)
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.tls = tls
        self._client = etcd_client(etcd_endpoint, tls)

    async def open(self) -> None:
        """Connect and make the first read; etcd unreachable or refusing us (TLS) is a ConnectionError
        of one line."""
        await self._client.connect()
        try:
            await self._revision()
        except aetcd.ClientError as exc:
            mode = "TLS" if self.tls else "plaintext"
            raise ConnectionError(f"etcd at {self.endpoint} ({mode}): {why(exc, self.tls)}") from None
        await self.rekey_api_keys()

    async def close(self) -> None:
        await self._client.close()

    async def load_state(self) -> State:
        rng = await self._client.get_prefix(self.prefix.encode())
        st = State(self.prefix)
        for kv in rng:
            st.put(kv.key.decode(), bytes(kv.value))
        st.revision = int(rng.header.revision)
        return st

    async def watch(self, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Every change under the prefix from `start_revision` on, until the watch fails.

        Raises `Compacted` when etcd no longer has `start_revision`; the etcd
        mirror (`control/mirror.py`) is the one caller.
        """
        try:
            watch = await self._client.watch_prefix(self.prefix.encode(), start_revision=start_revision)
        except aetcd.RevisionCompactedError as exc:
            raise Compacted(exc.compacted_revision) from None
        try:
            async for event in watch:
                kv = event.kv
                deleted = event.kind != "PUT"
                yield WatchEvent(
                    kv.key.decode(), b"" if deleted else bytes(kv.value), deleted, int(kv.mod_revision)
                )
        except aetcd.RevisionCompactedError as exc:
            raise Compacted(exc.compacted_revision) from None
        finally:
            with contextlib.suppress(Exception):
                await watch.cancel()

    async def resource_at(self, key: str) -> ResourceMsg | None:
        """The resource stored at `key` (a `control/state.py` key), `metadata.revision` = its mod revision."""
        read = await self._read(key)
        msg = keys.decode(self.prefix, key, read.value) if read.value is not None else None
        if msg is not None:
            msg.metadata.revision = read.mod_revision
        return msg

    # ------------------------------------------------------------------ sidecar status keys

    async def grant_lease(self, ttl_s: int) -> int:
        """A new lease; keys written with it go away when it is revoked or not refreshed for `ttl_s`."""
        lease = await self._client.lease(ttl_s)
        return int(lease.id)

    async def refresh_lease(self, lease_id: int) -> None:
        await self._client.refresh_lease(lease_id)

    async def revoke_lease(self, lease_id: int) -> None:
        await self._client.revoke_lease(lease_id)

    async def put_status(self, status: control_pb2.SidecarStatus, lease_id: int = 0) -> bytes:
        """Write a sidecar's status key (under `lease_id`, 0 = none); returns the bytes written."""
        value: bytes = status.SerializeToString()
        await self._client.put(keys.sidecar_key(self.prefix, status.node.id).encode(), value, lease=lease_id)
        return value

    async def forget_status(self, node_id: str, written: bytes) -> bool:
        """Delete a sidecar's status key if it still holds `written` (no other replica rewrote it)."""
        key = keys.sidecar_key(self.prefix, node_id).encode()
        tx = self._client.transactions
        succeeded, _ = await self._client.transaction(
            compare=[tx.value(key) == written], success=[tx.delete(key)], failure=[]
        )
        return bool(succeeded)

    async def list_statuses(self) -> list[control_pb2.SidecarStatus]:
        """Every sidecar status key, whichever replica wrote it."""
        return [
            control_pb2.SidecarStatus.FromString(value)
            for _, value, _ in await self._range(keys.sidecars_prefix(self.prefix))
        ]

    # ------------------------------------------------------------------ control's own secrets

    async def connection_id_key(self) -> bytes:
        """The key every sidecar MACs @connections ids with: made once by whichever replica comes
        first (a create-if-absent txn), then the stored one for every replica and every restart."""
        key = keys.secret_key(self.prefix, keys.CONNECTION_ID_KEY)
        tx = self._client.transactions
        for _ in range(RETRIES):
            await self._client.transaction(
                compare=[tx.create(key.encode()) == 0],
                success=[tx.put(key.encode(), secrets.token_bytes(32))],
                failure=[],
            )
            read = await self._read(key)
            if read.value:
                return read.value
        raise Conflict("the @connections id key keeps disappearing from etcd")

    # ------------------------------------------------------------------ apply

    async def rekey_api_keys(self) -> int:
        """Rewrite every ApiKey stored the old way (a bare sha256) with its keyed hash, each in a txn
        guarded on what was read (a concurrent apply wins; the next open retries). Returns how many."""
        done = 0
        for key, value, mod in await self._range(keys.kind_prefix(self.prefix, "ApiKey", "", "")):
            try:
                msg = resources_pb2.ApiKey.FromString(value)
            except Exception:  # undecodable: the mirror marks it poisoned; nothing to re-key
                continue
            spec = rekeyed(msg.spec, self.keys.api_key_hash_key)
            if spec is None:
                continue
            msg.spec.CopyFrom(spec)
            put = [(key, msg.SerializeToString(deterministic=True))]
            if await self._commit([self._guard(_Read(key, value, mod))], put) is not None:
                done += 1
        return done

    async def apply(
        self, resources: Sequence[resources_pb2.Resource], *, dry_run: bool = False
    ) -> control_pb2.ApplyResponse:
        """Validate and store a batch in one transaction: every refusal of every resource is
        reported at once (each FieldError with the resource's index), and then nothing is written."""
        refused = _Refusals()
        seen: dict[str, int] = {}
        for i, res in enumerate(resources):
            with refused.noting(i):
                if res.WhichOneof("kind") == "deployment":
                    raise InvalidConfig("Deployment resources are made by deploy, not applied")
                msg = unwrap(res)
                if not msg.metadata.namespace:
                    msg.metadata.namespace = "default"
                key = keys.key_for(self.prefix, res)
                if key in seen:
                    what = f"{msg.DESCRIPTOR.name} {msg.metadata.namespace}/{msg.metadata.name}"
                    raise InvalidConfig(
                        FieldError("", f"appears twice in the batch (also #{seen[key] + 1})", what)
                    )
                seen[key] = i
                if not holds_redacted(msg):
                    validate(res)  # a read-back with "[redacted]" values: validated once they are restored
        refused.raise_any()
        for _ in range(RETRIES):
            result = await self._apply_once(resources, dry_run)
            if result is not None:
                return result
            await asyncio.sleep(0.01)
        raise Conflict("apply: the resources kept changing concurrently; try again")

    async def _apply_once(
        self, resources: Sequence[resources_pb2.Resource], dry_run: bool
    ) -> control_pb2.ApplyResponse | None:
        now = time.time_ns()
        guards: list[Any] = []
        puts: list[tuple[str, bytes]] = []
        results: list[control_pb2.ApplyResult] = []
        batch_apis = {
            (r.api.metadata.namespace, r.api.metadata.name)
            for r in resources
            if r.WhichOneof("kind") == "api"
        }
        checked_apis: set[tuple[str, str]] = set()
        refused = _Refusals()
        for i, res in enumerate(resources):
            with refused.noting(i):
                result, put = await self._apply_one(res, resources, batch_apis, checked_apis, guards, now)
                results.append(result)
                puts += put
        refused.raise_any()
        if dry_run or not puts:
            return control_pb2.ApplyResponse(results=results, revision=await self._revision())
        revision = await self._commit(guards, puts)
        if revision is None:
            return None
        return control_pb2.ApplyResponse(results=results, revision=revision)

    async def _apply_one(
        self,
        res: resources_pb2.Resource,
        batch: Sequence[resources_pb2.Resource],
        batch_apis: set[tuple[str, str]],
        checked_apis: set[tuple[str, str]],
        guards: list[Any],
        now: int,
    ) -> tuple[control_pb2.ApplyResult, list[tuple[str, bytes]]]:
        """One resource of `_apply_once`: its result and put (none if unchanged); adds its guards."""
        msg = unwrap(res)
        kind = msg.DESCRIPTOR.name
        ns = msg.metadata.namespace
        what = f"{kind} {ns}/{msg.metadata.name}"
        refs: list[tuple[str, str]] = []
        if isinstance(msg, resources_pb2.Stage):
            refs = [("spec.api", msg.spec.api)]
        elif isinstance(msg, resources_pb2.UsagePlan):
            refs = [(f"spec.apis[{j}]", r.split("/")[0]) for j, r in enumerate(msg.spec.apis)]
        missing: list[FieldError] = []
        for where, api in refs:
            if (ns, api) in batch_apis or (ns, api) in checked_apis:
                continue
            api_read = await self._read(keys.api_key(self.prefix, ns, api))
            if api_read.value is None:
                missing.append(FieldError(where, f"Api {ns}/{api} does not exist", what))
                continue
            guards.append(self._guard(api_read))
            checked_apis.add((ns, api))
        if missing:
            raise NotFound(*missing)
        key = keys.key_for(self.prefix, res)
        current = await self._read(key)
        guards.append(self._guard(current))
        old = _decoded(type(msg), current.value)  # poison counts as absent: an apply repairs it
        new = self._write_only(msg, old)
        await self._check_private(new, batch)
        new.api_version = "meshgate.io/v1"
        new.kind = kind
        action = "created"
        # read only, whatever the document says: the stored times (a new object's are set by `_touched`)
        new.metadata.creation_time_unix_nano = old.metadata.creation_time_unix_nano if old else 0
        new.metadata.update_time_unix_nano = old.metadata.update_time_unix_nano if old else 0
        if old is not None:
            if isinstance(new, resources_pb2.Stage) and isinstance(old, resources_pb2.Stage):
                if not new.spec.deployment:
                    new.spec.deployment = old.spec.deployment
                if not new.spec.HasField("canary") and old.spec.HasField("canary"):
                    new.spec.canary.CopyFrom(old.spec.canary)
            same = (
                old.spec == new.spec
                and dict(old.metadata.labels) == dict(new.metadata.labels)
                and dict(old.metadata.annotations) == dict(new.metadata.annotations)
            )
            if same:
                return (
                    control_pb2.ApplyResult(
                        kind=kind, namespace=ns, name=new.metadata.name, action="unchanged"
                    ),
                    [],
                )
            action = "configured"
            new.metadata.generation = old.metadata.generation + 1
        else:
            new.metadata.generation = 1
        if isinstance(new, resources_pb2.Stage):
            await self._check_variables(new, InvalidConfig)
        new.metadata.revision = 0
        touched(new.metadata, now)
        result = control_pb2.ApplyResult(kind=kind, namespace=ns, name=new.metadata.name, action=action)
        return result, [(key, new.SerializeToString(deterministic=True))]

    def _write_only(self, msg: ResourceMsg, old: ResourceMsg | None) -> Any:
        """The resource to store: "[redacted]" in a secret field keeps the stored value (a read-back
        applied again), and an ApiKey's sha256 becomes its keyed hash (`api_key_mac`)."""
        new = type(msg)()
        new.CopyFrom(msg)  # type: ignore[arg-type]
        what = f"{msg.DESCRIPTOR.name} {msg.metadata.namespace}/{msg.metadata.name}"
        if holds_redacted(msg):
            try:
                restore(new, old)
            except ValueError as exc:
                raise InvalidConfig(FieldError("", str(exc), what)) from None
            validate(wrap(new))
        if isinstance(new, resources_pb2.ApiKey):
            stored = old.spec.value_hmac if isinstance(old, resources_pb2.ApiKey) else ""
            if new.spec.value_hmac and new.spec.value_hmac != stored:
                raise InvalidConfig(
                    FieldError("spec.valueHmac", "computed by control; apply spec.value", what)
                )
            spec = rekeyed(new.spec, self.keys.api_key_hash_key)
            if spec is not None:
                new.spec.CopyFrom(spec)
        return new

    async def _check_private(self, msg: Any, batch: Sequence[resources_pb2.Resource]) -> None:
        """Private Apis may only integrate with addresses inside the cluster networks or the pod itself."""
        ns = msg.metadata.namespace or "default"
        if isinstance(msg, resources_pb2.Api):
            if msg.spec.endpoint_type == "private":
                stages: list[dict[str, str]] = [
                    dict(resources_pb2.Stage.FromString(v).spec.variables)
                    for _, v, _ in await self._range(keys.stages_prefix(self.prefix, ns, msg.metadata.name))
                ]
                check_private_targets(msg, stages or [{}], self.cluster_cidrs)
            return
        if not isinstance(msg, resources_pb2.Stage):
            return
        api = next(
            (
                r.api
                for r in batch
                if r.WhichOneof("kind") == "api"
                and r.api.metadata.name == msg.spec.api
                and (r.api.metadata.namespace or "default") == ns
            ),
            None,
        )
        if api is None:
            read = await self._read(keys.api_key(self.prefix, ns, msg.spec.api))
            api = resources_pb2.Api.FromString(read.value) if read.value else None
        if api is not None and api.spec.endpoint_type == "private":
            try:
                check_private_targets(api, [msg.spec.variables], self.cluster_cidrs)
            except InvalidConfig as exc:
                what = f"Stage {ns}/{msg.metadata.name}"
                raise InvalidConfig(*(replace(e, resource=what) for e in exc.errors)) from None

    # ------------------------------------------------------------------ get / delete

    async def get(
        self, kind: str, namespace: str = "", name: str = "", api: str = ""
    ) -> list[resources_pb2.Resource]:
        canonical = _canonical_kind(kind)
        out = []
        for key, value, mod in await self._range(keys.kind_prefix(self.prefix, canonical, namespace, api)):
            msg = keys.decode(self.prefix, key, value)
            if msg is None:
                continue
            if name and msg.metadata.name != name:
                continue
            if (
                api
                and isinstance(msg, resources_pb2.Stage | resources_pb2.Deployment)
                and msg.spec.api != api
            ):
                continue
            msg.metadata.revision = mod
            out.append(wrap(msg))
        return out

    async def delete(self, ref: control_pb2.ObjectRef) -> int:
        """Delete one resource in a guarded transaction; returns the etcd revision of the delete."""
        kind = _canonical_kind(ref.kind)
        ns = ref.namespace or "default"
        what = f"{kind} {ns}/{ref.name}"
        api = ref.api
        if kind == "Api":
            key = keys.named_key(self.prefix, kind, ns, ref.name)
            api = ref.name
        elif kind == "Stage":
            if not ref.api:
                raise InvalidConfig(f"{what}: the owning Api is required to delete a stage")
            key = keys.stage_key(self.prefix, ns, ref.api, ref.name)
        elif kind == "Deployment":
            base, _, dep = ref.name.rpartition("-")
            api = ref.api or base
            if not dep.isdigit() or not api:
                raise InvalidConfig(f"{what}: deployment name must be <api>-<id>")
            key = keys.deployment_key(self.prefix, ns, api, int(dep))
        else:
            key = keys.named_key(self.prefix, kind, ns, ref.name)
        stages_prefix = keys.stages_prefix(self.prefix, ns, api)
        tx = self._client.transactions
        for _ in range(RETRIES):
            read = await self._read(key)
            if read.value is None:
                raise NotFound(f"{what} not found")
            guards = [self._guard(read)]
            if kind == "Api":
                stages = await self._range(stages_prefix)
                if stages:
                    names = ", ".join(parts_of(self.prefix, k).name for k, _, _ in stages)
                    raise FailedPrecondition(f"{what}: still has stages ({names}); delete them first")
                # no stage may appear under this Api between the check and the delete
                guards.append(
                    tx.create(stages_prefix.encode(), prefix_range_end(stages_prefix.encode())) == 0
                )
            elif kind == "Deployment":
                dep_id = resources_pb2.Deployment.FromString(read.value).id
                for skey, value, mod in await self._range(stages_prefix):
                    st = resources_pb2.Stage.FromString(value)
                    if dep_id in (st.spec.deployment, st.spec.canary.deployment):
                        raise FailedPrecondition(f"{what}: stage {st.metadata.name} still serves it")
                    guards.append(self._guard(_Read(skey, value, mod)))
            revision = await self._commit(guards, [], [key])
            if revision is not None:
                return revision
            await asyncio.sleep(0.01)
        raise Conflict(f"delete {what}: concurrent changes; try again")

    # ------------------------------------------------------------------ deployments


class _Refusals:
    """The refusals of a batch, each noted with its resource's index, raised together: NotFound when
    every one is a missing Api (the controller waits for it), else InvalidConfig."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []
        self.all_not_found = True

    @contextlib.contextmanager
    def noting(self, index: int) -> Iterator[None]:
        try:
            yield
        except (InvalidConfig, NotFound) as exc:
            self.errors += [replace(e, index=index) for e in exc.errors]
            self.all_not_found &= isinstance(exc, NotFound)

    def raise_any(self) -> None:
        if self.errors:
            raise (NotFound if self.all_not_found else InvalidConfig)(*self.errors)


def _canonical_kind(kind: str) -> str:
    canonical = KIND_WORDS.get(kind.lower())
    if canonical is None:
        raise InvalidConfig(f"unknown kind {kind!r}: Api, Stage, Deployment, UsagePlan or ApiKey")
    return canonical
