"""The sidecar's own gRPC client (sidecar/grpc_client.py) against grpcio's server, the reference peer:
unary and bidirectional calls, statuses and their messages, deadlines, TLS with ALPN, a server that
goes away or answers nothing, and answers that are not gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from meshgate.control.ca import Authority, generate_ca
from meshgate.control.etcd_local import free_port
from meshgate.sidecar.errors import GrpcCode
from meshgate.sidecar.grpc_client import MAX_MESSAGE, Channel, RpcError

CA_CERT, CA_KEY = generate_ca()


async def echo(request: bytes, context: Any) -> bytes:
    if request.startswith(b"fail:"):
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, request[5:].decode())
    if request == b"slow":
        await asyncio.sleep(5)
    if request == b"metadata":
        return repr(sorted((m.key, m.value) for m in context.invocation_metadata())).encode()
    return b"echo:" + request


async def chat(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for message in requests:
        if message == b"bye":
            return
        if message == b"last words":
            yield b"LAST"
            await context.abort(grpc.StatusCode.ABORTED, "gone")
        yield message.upper()


async def empty(request: bytes, context: Any) -> bytes:
    return b""


async def big(request: bytes, context: Any) -> bytes:
    return b"x" * int(request)


def handlers() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        "t.Svc",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Chat": grpc.stream_stream_rpc_method_handler(chat),
            "Empty": grpc.unary_unary_rpc_method_handler(empty),
            "Big": grpc.unary_unary_rpc_method_handler(big),
        },
    )


@contextlib.asynccontextmanager
async def server(tls: bool = False) -> AsyncIterator[str]:
    srv = grpc.aio.server(options=[("grpc.max_send_message_length", 2 * MAX_MESSAGE)])
    srv.add_generic_rpc_handlers((handlers(),))
    port = free_port()
    if tls:
        cert, key = Authority(CA_CERT, CA_KEY).server_cert(["127.0.0.1"])
        srv.add_secure_port(f"127.0.0.1:{port}", grpc.ssl_server_credentials([(key, cert)]))
    else:
        srv.add_insecure_port(f"127.0.0.1:{port}")
    await srv.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await srv.stop(0)


def trusting(ca: bytes = CA_CERT) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca.decode())
    ctx.set_alpn_protocols(["h2"])
    return ctx


async def test_unary_calls_their_statuses_and_metadata() -> None:
    async with server() as address, Channel(address, None) as ch:
        assert await ch.unary("/t.Svc/Echo", b"hi") == b"echo:hi"
        assert await ch.unary("/t.Svc/Echo", b"again") == b"echo:again"  # the same connection
        assert await ch.unary("/t.Svc/Empty", b"") == b""
        got = await ch.unary("/t.Svc/Echo", b"metadata", [("authorization", "Bearer t0k")])
        assert b"('authorization', 'Bearer t0k')" in got
        with pytest.raises(RpcError) as err:  # grpc-message is percent-encoded on the wire
            await ch.unary("/t.Svc/Echo", "fail:no 100% sure, ünïcode".encode())
        assert err.value.code == GrpcCode.FAILED_PRECONDITION
        assert err.value.details == "no 100% sure, ünïcode"
        with pytest.raises(RpcError) as err:
            await ch.unary("/t.Svc/Nope", b"")
        assert err.value.code == GrpcCode.UNIMPLEMENTED


async def test_concurrent_calls_share_one_connection() -> None:
    async with server() as address, Channel(address, None) as ch:
        answers = await asyncio.gather(*(ch.unary("/t.Svc/Echo", b"%d" % i) for i in range(20)))
        assert answers == [b"echo:%d" % i for i in range(20)]
        assert len(ch._conns) == 1  # the first call's connection, awaited by the other 19
    with pytest.raises(RpcError) as err:
        await ch.unary("/t.Svc/Echo", b"late")
    assert err.value.code == GrpcCode.CANCELLED  # a closed channel opens nothing


async def test_a_bidirectional_stream() -> None:
    async with server() as address, Channel(address, None) as ch:
        call = await ch.start("/t.Svc/Chat")
        for word in (b"one", b"two"):
            call.send(word)
            assert await call.recv() == word.upper()
        call.send(b"bye")
        assert await call.recv() is None  # the server ended it with OK
        assert await call.recv() is None
        call = await ch.start("/t.Svc/Chat")
        call.send(b"last words")
        await asyncio.sleep(0.2)  # the message and the status are both here before the first recv
        assert await call.recv() == b"LAST"  # what came before the status is still delivered
        with pytest.raises(RpcError) as err:
            await call.recv()
        assert err.value.code == GrpcCode.ABORTED and err.value.details == "gone"


async def test_deadlines_are_sent_and_kept() -> None:
    async with server() as address, Channel(address, None) as ch:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(RpcError) as err:
            await ch.unary("/t.Svc/Echo", b"slow", deadline_s=0.3)
        assert err.value.code == GrpcCode.DEADLINE_EXCEEDED
        assert loop.time() - t0 < 2
        assert await ch.unary("/t.Svc/Echo", b"after", deadline_s=5) == b"echo:after"


async def test_messages_larger_than_the_limit_are_refused() -> None:
    async with server() as address, Channel(address, None) as ch:
        assert len(await ch.unary("/t.Svc/Big", b"3000000")) == 3_000_000  # several windows' worth
        with pytest.raises(RpcError) as err:
            await ch.unary("/t.Svc/Big", b"%d" % (MAX_MESSAGE + 1))
        assert err.value.code == GrpcCode.RESOURCE_EXHAUSTED


async def test_tls_trusts_the_given_ca_only() -> None:
    async with server(tls=True) as address:
        async with Channel(address, trusting()) as ch:
            assert await ch.unary("/t.Svc/Echo", b"tls") == b"echo:tls"
        other_ca, _ = generate_ca()
        async with Channel(address, trusting(other_ca)) as ch:
            with pytest.raises(RpcError) as err:
                await ch.unary("/t.Svc/Echo", b"tls")
            assert err.value.code == GrpcCode.UNAVAILABLE and "certificate verify failed" in err.value.details


async def test_nobody_listening_is_unavailable() -> None:
    async with Channel(f"127.0.0.1:{free_port()}", None) as ch:
        with pytest.raises(RpcError) as err:
            await ch.unary("/t.Svc/Echo", b"x")
        assert err.value.code == GrpcCode.UNAVAILABLE


async def test_a_server_that_goes_away_ends_the_stream_unavailable() -> None:
    async with server() as address, Channel(address, None) as ch:
        call = await ch.start("/t.Svc/Chat")
        call.send(b"one")
        assert await call.recv() == b"ONE"
        closing = asyncio.ensure_future(call.recv())
        await asyncio.sleep(0.05)
    with pytest.raises(RpcError) as err:  # the server stopped (GOAWAY, then the connection closed)
        await asyncio.wait_for(closing, 5)
    assert err.value.code in (GrpcCode.UNAVAILABLE, GrpcCode.CANCELLED)


async def _raw_server(answer: bytes | None) -> tuple[asyncio.Server, str]:
    """A TCP server that reads and answers `answer` once (None: never a byte)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        if answer is not None:
            writer.write(answer)
            await writer.drain()
        await asyncio.sleep(30)

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    return srv, f"127.0.0.1:{srv.sockets[0].getsockname()[1]}"


async def test_a_silent_server_is_dropped_by_keepalive() -> None:
    srv, address = await _raw_server(None)
    async with srv, Channel(address, None, keepalive_s=0.2, keepalive_timeout_s=0.2) as ch:
        call = await ch.start("/t.Svc/Chat")
        with pytest.raises(RpcError) as err:
            await asyncio.wait_for(call.recv(), 5)
        assert err.value.code == GrpcCode.UNAVAILABLE and "keepalive" in err.value.details


async def test_a_server_that_is_not_http2_is_a_connection_error() -> None:
    srv, address = await _raw_server(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
    async with srv, Channel(address, None) as ch:
        call = await ch.start("/t.Svc/Chat")
        with pytest.raises(RpcError) as err:
            await asyncio.wait_for(call.recv(), 5)
        assert err.value.code == GrpcCode.UNAVAILABLE and "HTTP/2" in err.value.details
