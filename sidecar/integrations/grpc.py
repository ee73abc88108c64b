"""Integration `grpc`: a gRPC method. Served by the gRPC listener (`grpc_server.py`, `grpc_relay.py`)
as a frame relay; on the HTTP listener a route with a descriptor set is transcoded REST -> gRPC
(`transcode.py`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshgate.sidecar.errors import HTTP_FOR_GRPC, GatewayError, GrpcCode, internal
from meshgate.sidecar.grpc_client import RpcError
from meshgate.sidecar.integrations import CompileError, RouteSpec
from meshgate.sidecar.transcode import TranscodeError, Transcoder, channel

if TYPE_CHECKING:
    from meshgate.sidecar.exchange import Exchange

log = logging.getLogger("meshgate.sidecar.grpc")


@dataclass(frozen=True, slots=True)
class GrpcIntegration:
    kind = "grpc"
    upgrade = False

    host: str
    port: int
    timeout_s: float
    connect_timeout_s: float
    transcoder: Transcoder | None = None

    @property
    def needs_body(self) -> bool:
        return self.transcoder is not None

    def start(self, ex: Exchange) -> None:
        if self.transcoder is None:
            ex.fail(GatewayError(400, "this route is a gRPC method: call it on the sidecar's gRPC listener"))
            return
        ex.conn.loop.create_task(self._transcoded(ex, self.transcoder))

    async def _transcoded(self, ex: Exchange, tc: Transcoder) -> None:
        ctx = ex.ctx
        try:
            payload = tc.request(ctx.whole_body(), ctx.params, ctx.query_params())
        except TranscodeError as exc:
            ex.fail(GatewayError(400, str(exc), "BAD_REQUEST_BODY"))
            return
        metadata = [("x-meshgate-request-id", ctx.request_id)]
        for name, value in (*ctx.raw_headers, *ctx.upstream_headers):
            low = name.lower()
            if low == b"authorization" or low.startswith(b"x-"):
                metadata.append((low.decode("latin-1"), value.decode("latin-1")))
        ch = channel(self.host, self.port, self.connect_timeout_s)
        try:
            data = await ch.unary(tc.method_path, payload, metadata, deadline_s=self.timeout_s)
        except RpcError as exc:
            ex.fail(self._refusal(exc))
            return
        except Exception:
            log.exception("transcoded call failed (request %s)", ctx.request_id)
            ex.fail(internal())
            return
        try:
            body = tc.response(data)
        except Exception as exc:
            name = tc.response_cls.DESCRIPTOR.full_name
            ex.fail(GatewayError(502, f"invalid upstream response: cannot decode {name}: {exc}"))
            return
        ex.respond_full(200, ((b"content-type", b"application/json"),), body)

    def _refusal(self, exc: RpcError) -> GatewayError:
        code = exc.code
        reason = f"gRPC {code.name}: {exc.details}".strip()
        if code == GrpcCode.DEADLINE_EXCEEDED:
            reason = f"integration timeout after {self.timeout_s:g}s"
        elif code == GrpcCode.UNAVAILABLE:
            reason = f"upstream gRPC service unavailable ({self.host}:{self.port}): {exc.details}"
        return GatewayError(HTTP_FOR_GRPC.get(code, 500), reason)


def compile_grpc(spec: RouteSpec) -> GrpcIntegration:
    uri = spec.uri()
    target = uri.split("://", 1)[1] if "://" in uri else uri
    host, _, port_s = target.rstrip("/").rpartition(":")
    if not host or not port_s.isdigit():
        raise CompileError(f"{spec.where}: grpc integrations take grpc://HOST:PORT, got {spec.integ.uri!r}")
    integ = spec.integ
    transcoder = None
    if integ.grpc_method:
        try:
            transcoder = Transcoder.compile(integ.grpc_method, integ.descriptor_set, integ.body)
        except TranscodeError as exc:
            raise CompileError(f"{spec.where}: {exc}") from None
    return GrpcIntegration(
        host.strip("[]"), int(port_s), spec.timeout_s(), spec.connect_timeout_s(), transcoder
    )
