"""The gRPC ControlService: admin RPCs over the store, the config stream over the streamer."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

import grpc
from meshgate.control.errors import MAX_ERRORS, ControlError, errors_trailer
from meshgate.control.identity import Issuer, sidecar_principal
from meshgate.control.resources import redacted
from meshgate.control.store import Store
from meshgate.control.stream import ConfigStreamer
from meshgate.v1 import control_pb2, control_pb2_grpc

log = logging.getLogger("meshgate.control.service")
T = TypeVar("T")
Context: TypeAlias = Any  # grpc.aio.ServicerContext (grpc ships no type information)


async def _guard(context: Context, what: str, call: Callable[[], Awaitable[T]]) -> T:
    """Run one admin call; refusals become their gRPC status (every error a line of its message, and
    field by field in the `meshgate-errors-bin` trailer), surprises INTERNAL (no traceback sent)."""
    try:
        return await call()
    except ControlError as exc:
        shown = exc.errors[:MAX_ERRORS]
        more = len(exc.errors) - len(shown)
        lines = [str(e) for e in shown] + ([f"... and {more} more errors"] if more else [])
        await context.abort(exc.code, "\n".join(lines), trailing_metadata=errors_trailer(exc.errors))
    except grpc.aio.AioRpcError as exc:  # etcd unreachable
        log.warning("%s: etcd error: %s", what, exc.details())
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"{what}: etcd unavailable: {exc.details()}")
    except Exception as exc:
        if isinstance(exc, grpc.aio.AbortError):
            raise
        log.exception("%s failed", what)
        await context.abort(grpc.StatusCode.INTERNAL, f"{what}: internal error ({type(exc).__name__})")
    raise AssertionError("unreachable")


async def _bound(
    first: control_pb2.StreamRequest, rest: AsyncIterator[control_pb2.StreamRequest]
) -> AsyncIterator[control_pb2.StreamRequest]:
    yield first
    async for request in rest:
        yield request


class ControlServicer(control_pb2_grpc.ControlServiceServicer):  # type: ignore[misc]
    def __init__(self, store: Store, streamer: ConfigStreamer, issuer: Issuer) -> None:
        self.store = store
        self.streamer = streamer
        self.issuer = issuer

    async def StreamConfig(
        self, request_iterator: AsyncIterator[control_pb2.StreamRequest], context: Context
    ) -> AsyncIterator[control_pb2.Snapshot]:
        """The config stream of the sidecar its certificate names: the namespace, labels and id that
        decide what it gets come from the certificate, and a stream claiming another id is refused."""
        principal = sidecar_principal(self.issuer.authority, context)
        if principal is None or principal.node is None:
            log.warning("StreamConfig refused (%s): no sidecar certificate", context.peer())
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "the config stream needs a sidecar certificate from control"
            )
            return
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            return
        if first.WhichOneof("msg") != "node":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be a Node")
            return
        node, claimed = principal.node, first.node
        if (claimed.id and claimed.id != node.node_id) or (
            claimed.namespace and claimed.namespace != node.namespace
        ):
            log.warning(
                "StreamConfig refused: %s claimed to be %s/%s", node.node_id, claimed.namespace, claimed.id
            )
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"this certificate is for {node.namespace}/{node.node_id}"
            )
            return
        verified = control_pb2.StreamRequest()
        verified.node.CopyFrom(claimed)
        v = verified.node
        v.id, v.pod, v.namespace = node.node_id, node.node_id, node.namespace
        v.ClearField("labels")
        v.labels.update(node.labels)
        v.identity = node.spiffe_id(self.issuer.authority.trust_domain)
        async for snapshot in self.streamer.stream(_bound(verified, request_iterator), context):
            yield snapshot

    async def IssueCertificate(
        self, request: control_pb2.CertificateRequest, context: Context
    ) -> control_pb2.CertificateResponse:
        return await self.issuer.issue(request, context)

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
                request.namespace,
                request.api,
                request.stage,
                request.description,
                request.skip_canary,
                request.create_stage,
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
