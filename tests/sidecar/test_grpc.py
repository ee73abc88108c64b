"""gRPC through the sidecar's gRPC listener with grpcio clients and servers, raw bytes (no protos):
all four call types, metadata both ways, status and trailers, deadlines, cancellation, gateway errors."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from meshgate.sidecar.grpc_server import serve_grpc
from meshgate.sidecar.routing import TableHolder, compile_snapshot
from meshgate.sidecar.runtime import Runtime

from .conftest import LoopThread, bundle, snapshot


class Upstream:
    """A raw-bytes gRPC service `test.Echo` with one method per call type."""

    def __init__(self, lt: LoopThread) -> None:
        self.cancelled = threading.Event()
        self.metadata: list[dict[str, str]] = []
        self.relay_port = 0

        async def unary(req: bytes, ctx: Any) -> bytes:
            self.metadata.append(dict(ctx.invocation_metadata()))
            if req == b"fail":
                await ctx.abort(grpc.StatusCode.NOT_FOUND, "no such pet")
            if req == b"slow":
                await asyncio.sleep(3)
            await ctx.send_initial_metadata((("x-upstream", "1"),))
            ctx.set_trailing_metadata((("x-trailer", "t"),))
            return b"echo:" + req

        async def server_stream(req: bytes, ctx: Any) -> AsyncIterator[bytes]:
            try:
                for i in range(int(req)):
                    yield b"%d" % i
                    await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise

        async def client_stream(reqs: AsyncIterator[bytes], ctx: Any) -> bytes:
            total = b""
            async for r in reqs:
                total += r
            return total

        async def bidi(reqs: AsyncIterator[bytes], ctx: Any) -> AsyncIterator[bytes]:
            async for r in reqs:
                yield r.upper()

        handler = grpc.method_handlers_generic_handler(
            "test.Echo",
            {
                "Unary": grpc.unary_unary_rpc_method_handler(unary),
                "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
                "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
                "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
            },
        )

        async def go() -> tuple[grpc.aio.Server, int]:
            server = grpc.aio.server()
            server.add_generic_rpc_handlers((handler,))
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            return server, port

        self.lt = lt
        self.server, self.port = lt.run(go())

    def stop(self) -> None:
        self.lt.run(self.server.stop(0))


@pytest.fixture
def grpc_gateway(lt: LoopThread) -> Iterator[tuple[Upstream, grpc.Channel, TableHolder]]:
    up = Upstream(lt)
    holder = TableHolder()
    route = {
        "method": "POST",
        "path": "/test.Echo/{method}",
        "integration": {"type": "grpc", "uri": f"grpc://127.0.0.1:{up.port}", "timeoutMs": 1000},
    }
    runtime = Runtime()
    holder.table = compile_snapshot(snapshot(bundle([route])), runtime)
    server, proxy, port = lt.run(serve_grpc(holder, "127.0.0.1", 0))
    up.relay_port = port  # for raw HTTP/2 clients
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield up, channel, holder
    channel.close()
    lt.run(server.stop(0))
    lt.run(proxy.channels.close())
    lt.run(runtime.close())
    up.stop()


def test_all_four_call_types(grpc_gateway: tuple[Upstream, grpc.Channel, TableHolder]) -> None:
    up, ch, _ = grpc_gateway
    unary = ch.unary_unary("/test.Echo/Unary")
    resp, call = unary.with_call(b"hi", metadata=(("x-client", "c1"),), timeout=5)
    assert resp == b"echo:hi"
    assert ("x-upstream", "1") in call.initial_metadata() and ("x-trailer", "t") in call.trailing_metadata()
    assert up.metadata[-1]["x-client"] == "c1" and up.metadata[-1]["x-meshgate-request-id"]
    assert list(ch.unary_stream("/test.Echo/ServerStream")(b"4", timeout=5)) == [b"0", b"1", b"2", b"3"]
    assert ch.stream_unary("/test.Echo/ClientStream")(iter([b"a", b"b", b"c"]), timeout=5) == b"abc"
    assert list(ch.stream_stream("/test.Echo/Bidi")(iter([b"x", b"y"]), timeout=5)) == [b"X", b"Y"]


def test_status_deadline_and_unknown_method(grpc_gateway: tuple[Upstream, grpc.Channel, TableHolder]) -> None:
    _, ch, _ = grpc_gateway
    with pytest.raises(grpc.RpcError) as err:
        ch.unary_unary("/test.Echo/Unary")(b"fail", timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and err.value.details() == "no such pet"
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        ch.unary_unary("/test.Echo/Unary")(b"slow", timeout=0.3)  # the client's deadline is propagated
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - t0 < 2
    with pytest.raises(grpc.RpcError) as err:
        ch.unary_unary("/test.Echo/Unary")(b"slow", timeout=10)  # capped by the 1 s integration timeout
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "integration timeout" in (
        err.value.details() or ""
    )
    with pytest.raises(grpc.RpcError) as err:
        ch.unary_unary("/other.Svc/Call")(b"x", timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_client_cancellation_reaches_the_upstream(
    grpc_gateway: tuple[Upstream, grpc.Channel, TableHolder],
) -> None:
    up, ch, _ = grpc_gateway
    stream = ch.unary_stream("/test.Echo/ServerStream")(b"100", timeout=10)
    assert next(stream) == b"0"
    stream.cancel()
    assert up.cancelled.wait(5)


def test_gateway_refusals_use_grpc_codes(grpc_gateway: tuple[Upstream, grpc.Channel, TableHolder]) -> None:
    up, ch, holder = grpc_gateway
    route = {
        "method": "POST",
        "path": "/test.Echo/{method}",
        "apiKeyRequired": True,
        "integration": {"type": "grpc", "uri": f"grpc://127.0.0.1:{up.port}"},
    }
    snap = snapshot(bundle([route]))
    snap.stages[0].stage.spec.throttling.rate_limit = 0.001
    snap.stages[0].stage.spec.throttling.burst_limit = 1
    holder.table = compile_snapshot(snap, Runtime())
    with pytest.raises(grpc.RpcError) as err:
        ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "API key" in (err.value.details() or "")
    route.pop("apiKeyRequired")
    snap = snapshot(bundle([route]))
    snap.stages[0].stage.spec.throttling.rate_limit = 0.001
    snap.stages[0].stage.spec.throttling.burst_limit = 1
    holder.table = compile_snapshot(snap, Runtime())
    assert ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5) == b"echo:x"
    with pytest.raises(grpc.RpcError) as err:
        ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_request_phase_reads_grpc_metadata(grpc_gateway: tuple[Upstream, grpc.Channel, TableHolder]) -> None:
    import hashlib

    from google.protobuf import json_format
    from meshgate.v1 import resources_pb2

    up, ch, holder = grpc_gateway
    key = "grpc-key-0123456789abcdef"
    route = {
        "method": "POST",
        "path": "/test.Echo/{method}",
        "apiKeyRequired": True,
        "integration": {"type": "grpc", "uri": f"grpc://127.0.0.1:{up.port}"},
    }
    snap = snapshot(bundle([route]))
    snap.usage_plans.append(
        json_format.ParseDict(
            {"metadata": {"name": "p", "namespace": "default"}, "spec": {"apis": ["pets"]}},
            resources_pb2.UsagePlan(),
        )
    )
    snap.api_keys.append(
        json_format.ParseDict(
            {
                "metadata": {"name": "k", "namespace": "default"},
                "spec": {
                    "usagePlan": "p",
                    "valueSha256": hashlib.sha256(key.encode()).hexdigest(),
                    "enabled": True,
                },
            },
            resources_pb2.ApiKey(),
        )
    )
    holder.table = compile_snapshot(snap, Runtime())
    assert ch.unary_unary("/test.Echo/Unary")(b"k", metadata=(("x-api-key", key),), timeout=5) == b"echo:k"
    with pytest.raises(grpc.RpcError) as err:
        ch.unary_unary("/test.Echo/Unary")(b"k", metadata=(("x-api-key", "wrong"),), timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_outsiders_get_the_table_message_not_the_reason(
    grpc_gateway: tuple[Upstream, grpc.Channel, TableHolder],
) -> None:
    """A caller outside the cluster networks: refusals and the gateway's own upstream failures carry
    the table's message; the upstream's own status message still passes through."""
    up, ch, holder = grpc_gateway
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    routes = [
        {
            "method": "POST",
            "path": "/test.Echo/{method}",
            "apiKeyRequired": True,
            "integration": {"type": "grpc", "uri": f"grpc://127.0.0.1:{up.port}"},
        },
        {
            "method": "POST",
            "path": "/down.Svc/{method}",
            "integration": {"type": "grpc", "uri": f"grpc://127.0.0.1:{dead}", "timeoutMs": 1000},
        },
    ]
    holder.table = compile_snapshot(snapshot(bundle(routes), cluster_cidrs=()), Runtime())
    for method, code, message in (
        ("/test.Echo/Unary", grpc.StatusCode.PERMISSION_DENIED, "Forbidden"),
        ("/down.Svc/Call", grpc.StatusCode.UNAVAILABLE, "Service unavailable"),
        ("/nowhere.Svc/Call", grpc.StatusCode.NOT_FOUND, "Not found"),
    ):
        with pytest.raises(grpc.RpcError) as err:
            ch.unary_unary(method)(b"x", timeout=5)
        assert (err.value.code(), err.value.details()) == (code, message), method
    routes[0].pop("apiKeyRequired")
    holder.table = compile_snapshot(snapshot(bundle(routes), cluster_cidrs=()), Runtime())
    with pytest.raises(grpc.RpcError) as err:
        ch.unary_unary("/test.Echo/Unary")(b"fail", timeout=5)
    assert err.value.details() == "no such pet"


def _relay_buffered(proxy: Any) -> int:
    """Bytes the relay holds for clients (queued behind their windows), on every connection."""
    return sum(st.queued for conn in proxy.conns for st in conn.conn.streams.values())


@pytest.fixture
def relay_gateway(lt: LoopThread) -> Iterator[tuple[Any, int, Any]]:
    """The relay in front of a raw-bytes upstream that streams `n` MiB, echoes big messages, and
    can be restarted on the same port: (relay, relay port, restart)."""
    from meshgate.sidecar.grpc_server import serve_grpc as serve

    sent = {"bytes": 0}

    async def flood(req: bytes, ctx: Any) -> AsyncIterator[bytes]:
        for _ in range(int(req) * 16):
            sent["bytes"] += 65_536
            yield b"z" * 65_536

    async def echo(req: bytes, ctx: Any) -> bytes:
        return req

    handler = grpc.method_handlers_generic_handler(
        "big.Svc",
        {
            "Flood": grpc.unary_stream_rpc_method_handler(flood),
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
        },
    )
    big = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    state: dict[str, Any] = {}

    async def up(port: int) -> int:
        server = grpc.aio.server(options=big)
        server.add_generic_rpc_handlers((handler,))
        bound = server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        state["server"] = server
        return bound

    port = lt.run(up(0))
    holder = TableHolder()
    route = {
        "method": "POST",
        "path": "/big.Svc/{m}",
        "integration": {"type": "grpc", "uri": f"grpc://127.0.0.1:{port}"},
    }
    holder.table = compile_snapshot(snapshot(bundle([route])), Runtime())
    server, relay, rport = lt.run(serve(holder, "127.0.0.1", 0))

    def restart() -> None:
        lt.run(state["server"].stop(0))
        lt.run(up(port))

    relay.sent = sent
    yield relay, rport, restart
    lt.run(server.stop(0))
    lt.run(relay.channels.close())
    lt.run(state["server"].stop(0))


def test_a_slow_reader_holds_the_upstream_and_the_relay_stays_bounded(
    relay_gateway: tuple[Any, int, Any], lt: LoopThread
) -> None:
    """64 MiB streamed to a client that reads slowly: the upstream is held back by the windows (it
    is never more than a few MiB ahead of the reader) and the relay never holds more than the
    upstream's stream window."""
    relay, port, _ = relay_gateway
    big = [("grpc.max_receive_message_length", -1)]
    most, ahead = 0, 0
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=big) as ch:
        received = 0
        for msg in ch.unary_stream("/big.Svc/Flood")(b"64", timeout=60):
            received += len(msg)
            if received % (4 << 20) == 0:
                time.sleep(0.05)  # a slow reader, not a synchronisation
                most = max(most, lt.run(_async(_relay_buffered, relay)))
                ahead = max(ahead, relay.sent["bytes"] - received)
    assert received == 64 << 20
    assert most <= 2 << 20, most
    assert ahead <= 12 << 20, ahead  # windows (client 4 MiB + relay 1 MiB + upstream's) and buffers


async def _async(fn: Any, *args: Any) -> Any:
    return fn(*args)


def test_messages_larger_than_every_window(relay_gateway: tuple[Any, int, Any]) -> None:
    _, port, _ = relay_gateway
    big = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    payload = bytes(range(256)) * (24 << 12)  # 24 MiB
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=big) as ch:
        assert ch.unary_unary("/big.Svc/Echo")(payload, timeout=60) == payload


def test_hundreds_of_calls_at_once_and_an_upstream_restart(relay_gateway: tuple[Any, int, Any]) -> None:
    """More calls in flight than one upstream connection may carry; then the upstream restarts (its
    connection goes away) and the next calls reach the new one."""
    _, port, restart = relay_gateway
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        echo = ch.unary_unary("/big.Svc/Echo")
        calls = [echo.future(b"%d" % i, timeout=30) for i in range(400)]
        assert [c.result() for c in calls] == [b"%d" % i for i in range(400)]
        restart()
        deadline = time.monotonic() + 10
        while True:  # the first call may meet the old connection closing: UNAVAILABLE, as gRPC says
            try:
                assert echo(b"again", timeout=5) == b"again"
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline


def test_a_rapid_reset_flood_ends_the_connection(relay_gateway: tuple[Any, int, Any]) -> None:
    """CVE-2023-44487: streams opened and reset at once make upstream work nobody reads. Past 100
    such resets (and over half the connection's streams) the relay says GOAWAY ENHANCE_YOUR_CALM
    and closes; a client that cancels a few calls is left alone."""
    import h2.config
    import h2.connection
    import h2.events

    _, port, _ = relay_gateway
    request = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/big.Svc/Flood"),
        (b":authority", b"x"),
        (b"content-type", b"application/grpc"),
    ]

    def flood(streams: int) -> list[Any]:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            for i in range(streams):
                sid = 1 + 2 * i
                conn.send_headers(sid, request)
                conn.reset_stream(sid)
            s.sendall(conn.data_to_send())
            events: list[Any] = []
            s.settimeout(2)
            try:
                while chunk := s.recv(65536):
                    events += conn.receive_data(chunk)
                    if any(isinstance(e, h2.events.ConnectionTerminated) for e in events):
                        break
            except TimeoutError:
                pass
            return events

    ended = [e for e in flood(400) if isinstance(e, h2.events.ConnectionTerminated)]
    assert ended and ended[0].error_code == 0xB  # ENHANCE_YOUR_CALM
    assert not [e for e in flood(20) if isinstance(e, h2.events.ConnectionTerminated)]


def _h2_call(port: int, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """One raw HTTP/2 request (h2's own header checks off, as an attacker's client would be): the
    headers and trailers the answer carried."""
    import h2.config
    import h2.connection
    import h2.events

    config = h2.config.H2Configuration(
        client_side=True,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    conn.send_headers(1, headers)
    conn.send_data(1, b"\0\0\0\0\x02hi", end_stream=True)
    got: list[tuple[bytes, bytes]] = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(conn.data_to_send())
        while True:
            chunk = s.recv(65536)
            assert chunk, "closed before the answer ended"
            for e in conn.receive_data(chunk):
                if isinstance(e, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    got += e.headers
                if isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)):
                    return got
            s.sendall(conn.data_to_send())


GRPC_REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/test.Echo/Unary"),
    (b":authority", b"x"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
]


@pytest.mark.parametrize(
    "bad",
    [
        (b"x-evil", b"a\r\nx-injected: 1"),
        (b"X-Upper", b"v"),
        (b"x-nul", b"a\x00b"),
        (b":path", b"/test.Echo/../admin.Svc/Drop"),  # a path the route and the upstream would read apart
        (b":path", b"/test.Echo/Un%61ry"),
    ],
)
def test_a_malformed_grpc_request_is_refused_and_reaches_nothing(
    grpc_gateway: tuple[Upstream, grpc.Channel, TableHolder], bad: tuple[bytes, bytes]
) -> None:
    up, _, _ = grpc_gateway
    before = len(up.metadata)
    request = [h for h in GRPC_REQUEST if h[0] != bad[0]] if bad[0] == b":path" else GRPC_REQUEST
    got = dict(
        _h2_call(up.relay_port, [*request[:3], bad, *request[3:]] if bad[0] == b":path" else [*request, bad])
    )
    assert got[b"grpc-status"] == b"3"  # INVALID_ARGUMENT
    assert len(up.metadata) == before  # nothing reached the upstream


def test_an_upstream_answer_with_a_broken_header_is_not_relayed(lt: LoopThread) -> None:
    """An upstream whose response header holds CR LF: the client gets UNAVAILABLE (the table's 502),
    never the header."""
    import threading

    import h2.config
    import h2.connection
    import h2.events

    listener = socket.create_server(("127.0.0.1", 0))
    uport = listener.getsockname()[1]

    def serve_one() -> None:
        sock, _ = listener.accept()
        config = h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_outbound_headers=False
        )
        conn = h2.connection.H2Connection(config)
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        with sock:
            while data := sock.recv(65536):
                for e in conn.receive_data(data):
                    if isinstance(e, h2.events.StreamEnded):
                        conn.send_headers(
                            e.stream_id, [(b":status", b"200"), (b"x-split", b"a\r\nset-cookie: x")]
                        )
                        conn.send_headers(e.stream_id, [(b"grpc-status", b"0")], end_stream=True)
                sock.sendall(conn.data_to_send())

    threading.Thread(target=serve_one, daemon=True).start()
    holder = TableHolder()
    route = {
        "method": "POST",
        "path": "/test.Echo/{m}",
        "integration": {"type": "grpc", "uri": f"grpc://127.0.0.1:{uport}"},
    }
    holder.table = compile_snapshot(snapshot(bundle([route])), Runtime())
    server, relay, port = lt.run(serve_grpc(holder, "127.0.0.1", 0))
    try:
        got = _h2_call(port, GRPC_REQUEST)
        assert dict(got)[b"grpc-status"] == b"14"  # UNAVAILABLE
        assert all(b"\r" not in v and b"\n" not in v for _, v in got) and b"x-split" not in dict(got)
    finally:
        lt.run(server.stop(0))
        lt.run(relay.channels.close())
        listener.close()
