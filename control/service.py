"""The gRPC ControlService: admin RPCs over the store, the config stream over the streamer."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

import grpc
from meshgate.control.errors import ControlError
from meshgate.control.store import Store, redacted
from meshgate.control.stream import ConfigStreamer
from meshgate.v1 import control_pb2, control_pb2_grpc

log = logging.getLogger("meshgate.control.service")
T = TypeVar("T")
Context: TypeAlias = Any  # grpc.aio.ServicerContext (grpc ships no type information)


async def _guard(context: Context, what: str, call: Callable[[], Awaitable[T]]) -> T:
    """Run one admin call; refusals become their gRPC status, surprises INTERNAL (no traceback sent)."""
    try:
        return await call()
    except ControlError as exc:
        await context.abort(exc.code, str(exc))
    except grpc.aio.AioRpcError as exc:  # etcd unreachable
        log.warning("%s: etcd error: %s", what, exc.details())
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"{what}: etcd unavailable: {exc.details()}")
    except Exception as exc:
        if isinstance(exc, grpc.aio.AbortError):
            raise
        log.exception("%s failed", what)
        await context.abort(grpc.StatusCode.INTERNAL, f"{what}: internal error ({type(exc).__name__})")
    raise AssertionError("unreachable")


class ControlServicer(control_pb2_grpc.ControlServiceServicer):  # type: ignore[misc]
    def __init__(self, store: Store, streamer: ConfigStreamer) -> None:
        self.store = store
        self.streamer = streamer

    async def StreamConfig(
        self, request_iterator: AsyncIterator[control_pb2.StreamRequest], context: Context
    ) -> AsyncIterator[control_pb2.Snapshot]:
        async for snapshot in self.streamer.stream(request_iterator, context):
            yield snapshot

    async def Apply(self, request: control_pb2.ApplyRequest, context: Context) -> control_pb2.ApplyResponse:
        return await _guard(
            context, "apply", lambda: self.store.apply(request.resources, dry_run=request.dry_run)
        )

    async def Delete(
        self, request: control_pb2.DeleteRequest, context: Context
    ) -> control_pb2.DeleteResponse:
        revision = await _guard(context, "delete", lambda: self.store.delete(request.ref))
        return control_pb2.DeleteResponse(revision=revision)

    async def Get(self, request: control_pb2.GetRequest, context: Context) -> control_pb2.GetResponse:
        resources = await _guard(
            context,
            "get",
            lambda: self.store.get(request.kind, request.namespace, request.name, request.api),
        )
        # secrets are write-only: every secret value reads back as "[redacted]"
        return control_pb2.GetResponse(resources=[redacted(r) for r in resources])

    async def Deploy(
        self, request: control_pb2.DeployRequest, context: Context
    ) -> control_pb2.DeployResponse:
        return await _guard(
            context,
            "deploy",
            lambda: self.store.deploy(
                request.namespace, request.api, request.stage, request.description, request.skip_canary
            ),
        )

    async def Rollback(
        self, request: control_pb2.RollbackRequest, context: Context
    ) -> control_pb2.RollbackResponse:
        return await _guard(
            context,
            "rollback",
            lambda: self.store.rollback(request.namespace, request.api, request.stage, request.deployment),
        )

    async def SetCanary(
        self, request: control_pb2.CanaryRequest, context: Context
    ) -> control_pb2.CanaryResponse:
        return await _guard(
            context,
            "canary set",
            lambda: self.store.set_canary(request.namespace, request.api, request.stage, request.canary),
        )

    async def PromoteCanary(
        self, request: control_pb2.CanaryRequest, context: Context
    ) -> control_pb2.CanaryResponse:
        return await _guard(
            context,
            "canary promote",
            lambda: self.store.promote_canary(request.namespace, request.api, request.stage),
        )

    async def RemoveCanary(
        self, request: control_pb2.CanaryRequest, context: Context
    ) -> control_pb2.CanaryResponse:
        return await _guard(
            context,
            "canary remove",
            lambda: self.store.remove_canary(request.namespace, request.api, request.stage),
        )

    async def FlushStageCache(
        self, request: control_pb2.FlushStageCacheRequest, context: Context
    ) -> control_pb2.CanaryResponse:
        return await _guard(
            context,
            "cache flush",
            lambda: self.store.flush_cache(request.namespace, request.api, request.stage),
        )

    async def ListSidecars(
        self, request: control_pb2.ListSidecarsRequest, context: Context
    ) -> control_pb2.ListSidecarsResponse:
        return await _guard(context, "list sidecars", self.streamer.list_sidecars)
