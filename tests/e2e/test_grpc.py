"""The gRPC proxy the user's way (README "gRPC"): `type: grpc` routes applied with `meshgate apply -f`,
deployed, served by `meshgate sidecar --grpc-listen` fed by control from etcd, to a grpcio raw-bytes
server; unary and streaming calls, metadata and the upstream's status pass through, and the request
phase refuses with the error table's gRPC code."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from meshgate.control.etcd_local import LocalEtcd, free_port

from .harness import NO_DRAIN, mesh, wait_until

CONFIG = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {{name: orders}}
spec:
  selector: {{matchLabels: {{app: pets}}}}
  routes:
    - method: POST
      path: /test.Echo/{{method}}
      integration: {{type: grpc, uri: "grpc://127.0.0.1:{port}", timeoutMs: 5000}}
    - method: POST
      path: /test.Locked/{{method}}
      apiKeyRequired: true
      integration: {{type: grpc, uri: "grpc://127.0.0.1:{port}", timeoutMs: 5000}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: prod}}
spec: {{api: orders}}
"""


class Upstream:
    """A raw-bytes gRPC service (no protos): test.Echo and test.Locked, one method per call type."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, Any]] = []

        def unary(req: bytes, ctx: grpc.ServicerContext) -> bytes:
            self.metadata.append(dict(ctx.invocation_metadata()))
            if req == b"fail":
                ctx.abort(grpc.StatusCode.NOT_FOUND, "no such order")
            ctx.send_initial_metadata((("x-upstream", "1"),))
            ctx.set_trailing_metadata((("x-trailer", "t"),))
            return b"echo:" + req

        def server_stream(req: bytes, ctx: grpc.ServicerContext) -> Iterator[bytes]:
            for i in range(int(req)):
                yield b"%d" % i

        def client_stream(reqs: Iterator[bytes], ctx: grpc.ServicerContext) -> bytes:
            return b"".join(reqs)

        def bidi(reqs: Iterator[bytes], ctx: grpc.ServicerContext) -> Iterator[bytes]:
            for r in reqs:
                yield r.upper()

        methods = {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        }
        self.server = grpc.server(futures.ThreadPoolExecutor(8))
        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler("test.Echo", methods),
                grpc.method_handlers_generic_handler("test.Locked", methods),
            )
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    yield up
    up.server.stop(0)


@pytest.fixture(scope="module")
def channel(
    etcd: LocalEtcd, tmp_path_factory: pytest.TempPathFactory, upstream: Upstream
) -> Iterator[grpc.Channel]:
    with mesh(etcd.endpoint, tmp_path_factory.mktemp("e2e-grpc")) as m:
        m.start_control()
        m.apply(CONFIG.format(port=upstream.port))
        m.cli("deploy", "orders", "--stage", "prod")
        grpc_port = free_port()
        m.start_sidecar(extra=(*NO_DRAIN, "--grpc-listen", f"127.0.0.1:{grpc_port}"))
        ch = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        unary = ch.unary_unary("/test.Echo/Unary")

        def served() -> bool:
            try:
                return bool(unary(b"ping", timeout=2) == b"echo:ping")
            except grpc.RpcError:
                return False  # NOT_FOUND/UNIMPLEMENTED until the snapshot with the route lands

        wait_until(served, timeout=20, what="the gRPC route served")
        yield ch
        ch.close()


def test_unary_with_metadata_both_ways(channel: grpc.Channel, upstream: Upstream) -> None:
    resp, call = channel.unary_unary("/test.Echo/Unary").with_call(
        b"hi", metadata=(("x-client", "c1"),), timeout=5
    )
    assert resp == b"echo:hi"
    assert ("x-upstream", "1") in call.initial_metadata()
    assert ("x-trailer", "t") in call.trailing_metadata()
    seen = upstream.metadata[-1]
    assert seen["x-client"] == "c1" and seen["x-meshgate-request-id"]


def test_streaming_calls(channel: grpc.Channel) -> None:
    assert list(channel.unary_stream("/test.Echo/ServerStream")(b"4", timeout=5)) == [b"0", b"1", b"2", b"3"]
    assert channel.stream_unary("/test.Echo/ClientStream")(iter([b"a", b"b", b"c"]), timeout=5) == b"abc"
    assert list(channel.stream_stream("/test.Echo/Bidi")(iter([b"x", b"y"]), timeout=5)) == [b"X", b"Y"]


def test_upstream_status_passes_through(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as err:
        channel.unary_unary("/test.Echo/Unary")(b"fail", timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and err.value.details() == "no such order"


def test_refusals_carry_the_error_tables_codes(channel: grpc.Channel, upstream: Upstream) -> None:
    before = len(upstream.metadata)
    with pytest.raises(grpc.RpcError) as err:  # apiKeyRequired and no x-api-key: 403
        channel.unary_unary("/test.Locked/Unary")(b"hi", timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as err:  # no route: 404
        channel.unary_unary("/test.Nowhere/Unary")(b"hi", timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(upstream.metadata) == before  # a refused call never reaches the integration
