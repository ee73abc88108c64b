"""The store's transaction primitives (`StoreIO`: guarded reads and one-transaction commits) and its
operations on a stage (`StageOperations`): deploy (the Api snapshotted into the next deployment,
the stage or its canary pointed at it), rollback, canary set/promote/remove and the cache flush
epoch, each one etcd transaction guarded by what it read and retried on a concurrent change.
`Store` derives from both."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from google.protobuf.message import DecodeError
from meshgate.control import state as keys
from meshgate.control.errors import Conflict, FailedPrecondition, InvalidConfig, NotFound
from meshgate.control.resources import redacted, touched
from meshgate.control.state import ResourceMsg, parts_of, wrap
from meshgate.control.validation import unresolved_variables, validate
from meshgate.v1 import control_pb2, resources_pb2

RETRIES = 8


@dataclass
class _Read:
    key: str
    value: bytes | None
    mod_revision: int


def _decoded(cls: type[ResourceMsg], value: bytes | None) -> ResourceMsg | None:
    """A stored value as its message; None when absent or undecodable (poison)."""
    if value is None:
        return None
    try:
        return cls.FromString(value)
    except DecodeError:
        return None


class StoreIO:
    """What every store operation is made of: reads that remember their mod revision, guards on them
    and one-transaction commits under the prefix (`Store` opens the client)."""

    prefix: str
    _client: Any

    async def _read(self, key: str) -> _Read:
        got = await self._client.get(key.encode())
        if got is None:
            return _Read(key, None, 0)
        return _Read(key, bytes(got.value), int(got.mod_revision))

    def _guard(self, read: _Read) -> Any:
        tx = self._client.transactions
        if read.value is None:
            return tx.create(read.key.encode()) == 0
        return tx.mod(read.key.encode()) == read.mod_revision

    async def _commit(
        self, guards: list[Any], puts: list[tuple[str, bytes]], deletes: Sequence[str] = ()
    ) -> int | None:
        """One etcd transaction: all puts/deletes if every guard holds. Returns the new revision or None."""
        tx = self._client.transactions
        ops: list[Any] = [tx.put(k.encode(), v) for k, v in puts]
        ops += [tx.delete(k.encode()) for k in deletes]
        succeeded, responses = await self._client.transaction(compare=guards, success=ops, failure=[])
        if not succeeded:
            return None
        # aetcd's transaction() returns the operations' responses, not the txn header: each write's
        # header carries the revision it made (one txn is one revision), a delete of nothing the one before
        revisions = [int(getattr(r, r.WhichOneof("response")).header.revision) for r in responses]
        return max(revisions) if revisions else await self._revision()

    async def _revision(self) -> int:
        rng = await self._client.get_prefix(keys.seq_prefix(self.prefix).encode(), keys_only=True)
        return int(rng.header.revision)

    async def _range(self, key_prefix: str) -> list[tuple[str, bytes, int]]:
        rng = await self._client.get_prefix(key_prefix.encode())
        return [(kv.key.decode(), bytes(kv.value), int(kv.mod_revision)) for kv in rng]


class StageOperations(StoreIO):
    """The stage operations of `Store` (which derives from this)."""

    async def _check_variables(
        self,
        st: resources_pb2.Stage,
        refusal: type[InvalidConfig | FailedPrecondition],
        known: dict[int, resources_pb2.ApiSpec] | None = None,
    ) -> None:
        """Refuse a stage write that leaves an integration URI of what the stage serves unresolved
        (`validation.unresolved_variables`); `known` are deployment specs at hand (a new one)."""
        ns, api = st.metadata.namespace or "default", st.spec.api
        specs = dict(known or {})
        for dep in {st.spec.deployment, st.spec.canary.deployment} - {0} - specs.keys():
            read = await self._read(keys.deployment_key(self.prefix, ns, api, dep))
            served = _decoded(resources_pb2.Deployment, read.value)
            if isinstance(served, resources_pb2.Deployment):
                specs[dep] = served.spec.api_spec
        missing = unresolved_variables(st, specs)
        if missing:
            what = f"Stage {ns}/{st.metadata.name}"
            raise refusal(*(replace(e, resource=what) for e in missing))

    async def deploy(
        self,
        namespace: str,
        api: str,
        stage: str,
        description: str = "",
        skip_canary: bool = False,
        create_stage: bool = False,
    ) -> control_pb2.DeployResponse:
        """Snapshot the Api into the next deployment and point the stage (or its canary) at it. A
        stage that does not exist is made only with `create_stage`; a deploy that would leave an
        integration URI with an undefined stage variable is refused (FailedPrecondition)."""
        ns = namespace or "default"
        for _ in range(RETRIES):
            api_read = await self._read(keys.api_key(self.prefix, ns, api))
            if api_read.value is None:
                raise NotFound(f"Api {ns}/{api} does not exist")
            api_msg = resources_pb2.Api.FromString(api_read.value)
            stage_read = await self._read(keys.stage_key(self.prefix, ns, api, stage))
            seq_read = await self._read(keys.deployment_seq_key(self.prefix, ns, api))
            dep_id = int(seq_read.value.decode()) + 1 if seq_read.value else 1
            now = time.time_ns()
            dep = resources_pb2.Deployment(
                api_version="meshgate.io/v1",
                kind="Deployment",
                id=dep_id,
                metadata=resources_pb2.ObjectMeta(
                    name=f"{api}-{dep_id}",
                    namespace=ns,
                    update_time_unix_nano=now,
                    creation_time_unix_nano=now,
                    generation=1,
                ),
                spec=resources_pb2.DeploymentSpec(
                    api=api, description=description, api_spec=api_msg.spec, created_unix_nano=now
                ),
            )
            if stage_read.value is None:
                if not create_stage:
                    raise NotFound(
                        f"stage {stage} of Api {ns}/{api} does not exist: apply a Stage document "
                        "(with the variables the Api's integrations use), or deploy with --create-stage"
                    )
                st = resources_pb2.Stage(
                    api_version="meshgate.io/v1",
                    kind="Stage",
                    metadata=resources_pb2.ObjectMeta(name=stage, namespace=ns, generation=1),
                    spec=resources_pb2.StageSpec(api=api),
                )
                validate(wrap(st))
            else:
                st = resources_pb2.Stage.FromString(stage_read.value)
                st.metadata.generation += 1
            to_canary = st.spec.canary.percent > 0 and not skip_canary
            if to_canary:
                st.spec.canary.deployment = dep_id
            else:
                st.spec.deployment = dep_id
            touched(st.metadata, now)
            await self._check_variables(st, FailedPrecondition, {dep_id: api_msg.spec})
            revision = await self._commit(
                [self._guard(api_read), self._guard(stage_read), self._guard(seq_read)],
                [
                    (
                        keys.deployment_key(self.prefix, ns, api, dep_id),
                        dep.SerializeToString(deterministic=True),
                    ),
                    (keys.deployment_seq_key(self.prefix, ns, api), str(dep_id).encode()),
                    (keys.stage_key(self.prefix, ns, api, stage), st.SerializeToString(deterministic=True)),
                ],
            )
            if revision is not None:
                return control_pb2.DeployResponse(deployment=dep_id, to_canary=to_canary, revision=revision)
            await asyncio.sleep(0.01)
        raise Conflict(f"deploy {ns}/{api} to {stage}: concurrent changes; try again")

    async def _update_stage(
        self,
        namespace: str,
        api: str,
        stage: str,
        mutate: Callable[[resources_pb2.Stage, list[int]], None],
    ) -> tuple[resources_pb2.Stage, int]:
        ns = namespace or "default"
        key = keys.stage_key(self.prefix, ns, api, stage)
        for _ in range(RETRIES):
            read = await self._read(key)
            if read.value is None:
                raise NotFound(f"stage {stage} of Api {ns}/{api} does not exist")
            st = resources_pb2.Stage.FromString(read.value)
            found = await self._range(keys.deployments_prefix(self.prefix, ns, api))
            dep_ids = [parts_of(self.prefix, k).deployment for k, _, _ in found]
            mutate(st, sorted(dep_ids))
            touched(st.metadata, time.time_ns())
            st.metadata.generation += 1
            validate(wrap(st))
            await self._check_variables(st, FailedPrecondition)
            revision = await self._commit(
                [self._guard(read)], [(key, st.SerializeToString(deterministic=True))]
            )
            if revision is not None:
                return st, revision
            await asyncio.sleep(0.01)
        raise Conflict(f"stage {stage} of Api {ns}/{api}: concurrent changes; try again")

    async def rollback(
        self, namespace: str, api: str, stage: str, deployment: int = 0
    ) -> control_pb2.RollbackResponse:
        def mutate(st: resources_pb2.Stage, dep_ids: list[int]) -> None:
            if deployment:
                if deployment not in dep_ids:
                    raise NotFound(f"deployment {deployment} of Api {api} does not exist")
                st.spec.deployment = deployment
                return
            earlier = [d for d in dep_ids if d < st.spec.deployment]
            if not earlier:
                raise NotFound(
                    f"stage {stage} serves deployment {st.spec.deployment or 'none'}; no earlier deployment exists"
                )
            st.spec.deployment = earlier[-1]

        st, revision = await self._update_stage(namespace, api, stage, mutate)
        return control_pb2.RollbackResponse(deployment=st.spec.deployment, revision=revision)

    async def set_canary(
        self, namespace: str, api: str, stage: str, canary: resources_pb2.CanarySettings
    ) -> control_pb2.CanaryResponse:
        def mutate(st: resources_pb2.Stage, dep_ids: list[int]) -> None:
            if not st.spec.deployment:
                raise FailedPrecondition(f"stage {stage} is not deployed yet; deploy before setting a canary")
            c = resources_pb2.CanarySettings()
            c.CopyFrom(canary)
            if not c.deployment:
                c.deployment = st.spec.deployment
            elif c.deployment not in dep_ids:
                raise NotFound(f"deployment {c.deployment} of Api {api} does not exist")
            if not 0 < c.percent <= 100:
                raise InvalidConfig(f"canary percent must be in (0, 100], got {c.percent:g}")
            st.spec.canary.CopyFrom(c)

        st, revision = await self._update_stage(namespace, api, stage, mutate)
        return control_pb2.CanaryResponse(stage=redacted(st), revision=revision)

    async def promote_canary(self, namespace: str, api: str, stage: str) -> control_pb2.CanaryResponse:
        def mutate(st: resources_pb2.Stage, dep_ids: list[int]) -> None:
            c = st.spec.canary
            if not c.deployment and not c.percent:
                raise FailedPrecondition(f"stage {stage} has no canary to promote")
            st.spec.deployment = c.deployment or st.spec.deployment
            for k, v in c.variables.items():
                st.spec.variables[k] = v
            st.spec.ClearField("canary")

        st, revision = await self._update_stage(namespace, api, stage, mutate)
        return control_pb2.CanaryResponse(stage=redacted(st), revision=revision)

    async def flush_cache(self, namespace: str, api: str, stage: str) -> control_pb2.CanaryResponse:
        """Bump the stage's cache flush epoch: every sidecar drops the stage's cached responses."""

        def mutate(st: resources_pb2.Stage, dep_ids: list[int]) -> None:
            if not st.spec.cache.enabled:
                raise FailedPrecondition(f"stage {stage} has no cache enabled")
            st.spec.cache.flush_epoch += 1

        st, revision = await self._update_stage(namespace, api, stage, mutate)
        return control_pb2.CanaryResponse(stage=redacted(st), revision=revision)

    async def remove_canary(self, namespace: str, api: str, stage: str) -> control_pb2.CanaryResponse:
        def mutate(st: resources_pb2.Stage, dep_ids: list[int]) -> None:
            if not st.spec.HasField("canary"):
                raise FailedPrecondition(f"stage {stage} has no canary")
            st.spec.ClearField("canary")

        st, revision = await self._update_stage(namespace, api, stage, mutate)
        return control_pb2.CanaryResponse(stage=redacted(st), revision=revision)
