"""Flow control in process: the time the sidecar itself stops reading a request body, because the
upstream reads slower than the client sends, is not held against the client's body timeouts."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from typing import Any

from meshgate.sidecar.http1 import Limits

from .conftest import Backends, Gateway, bundle, call, http_route, snapshot

BODY = 8 * 1024 * 1024
BIG = 48 * 1024 * 1024
# a body must go on within 0.3 s and average 4 MB/s after 0.2 s: what a client that sends as fast as
# it can always does, unless the sidecar stops reading it
TIGHT = Limits(body_idle_timeout_s=0.3, body_rate_grace_s=0.2, min_body_rate_bps=4 * 1024 * 1024)


def test_an_upstream_that_stalls_is_not_a_slow_client(gateway: Gateway, backends: Backends) -> None:
    async def stalling(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        head = await r.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await asyncio.sleep(1.0)  # the upstream's stall (the behaviour under test): longer than both limits
        n = 0
        while n < length:
            n += len(await r.read(65536))
        body = json.dumps({"bytes": n}).encode()
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
        await w.drain()

    port = backends.start(stalling)
    route = http_route("POST", "/up", f"http://127.0.0.1:{port}/up")
    gateway.start(snapshot(bundle([route])), limits=TIGHT)
    status, _, data = call(gateway.port, "/prod/up", method="POST", body=b"x" * BODY)
    assert (status, json.loads(data)) == (200, {"bytes": BODY}), data


def test_an_upstream_that_fails_while_it_holds_the_client_back_lets_go(
    gateway: Gateway, backends: Backends
) -> None:
    """The upstream's full buffer paused reading the client; then it goes away without an answer: the
    client gets its 502 and the sidecar reads (and drops) the rest of the body instead of holding the
    connection paused for good."""

    async def walks_away(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        async with asyncio.timeout(10):  # reads nothing more until the sidecar has stopped reading the client
            while gateway.pool.write_pauses == 0:
                await asyncio.sleep(0.01)
        w.transport.abort()

    port = backends.start(walks_away)
    route = http_route("POST", "/up", f"http://127.0.0.1:{port}/up")
    gateway.start(snapshot(bundle([route])), limits=Limits(max_body_bytes=BIG))
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as client:
        client.sendall(b"POST /prod/up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % BIG)
        client.sendall(b"x" * BIG)  # more than socket buffers hold: it blocks while the sidecar does not read
        got = b""
        while b"\r\n\r\n" not in got:
            got += client.recv(65536)
        assert got.startswith(b"HTTP/1.1 502"), got
        client.sendall(b"GET /prod/up HTTP/1.1\r\nHost: x\r\n\r\n")  # the connection still serves
        more = got.partition(b"\r\n\r\n")[2]
        while b"HTTP/1.1 405" not in more:
            data = client.recv(65536)
            assert data, more
            more += data


def test_a_body_sent_while_the_upstream_connects_is_held_back(gateway: Gateway, backends: Backends) -> None:
    """Until the upstream connection is up there is nowhere to send the body: the sidecar stops
    reading it after a few hundred KB instead of buffering up to the body limit, and sends it all on
    once connected."""

    async def counts(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        head = await r.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        n = 0
        while n < length:
            n += len(await r.read(65536))
        body = json.dumps({"bytes": n}).encode()
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
        await w.drain()

    port = backends.start(counts)
    gate = threading.Event()
    connect = gateway.pool.connect

    async def slow_connect(host: str, port: int, timeout_s: float) -> Any:  # a connect that takes a while
        await asyncio.to_thread(gate.wait, 10)
        return await connect(host, port, timeout_s)

    gateway.pool.connect = slow_connect  # type: ignore[method-assign]
    route = http_route("POST", "/up", f"http://127.0.0.1:{port}/up")
    gateway.start(snapshot(bundle([route])), limits=Limits(max_body_bytes=BIG))
    result: list[Any] = []

    def upload() -> None:
        result.append(call(gateway.port, "/prod/up", method="POST", body=b"x" * BIG))

    sender = threading.Thread(target=upload)
    sender.start()

    def held() -> int | None:
        async def look() -> int | None:
            for c in gateway.http.conns:
                if "upstream" in c.paused and c.queue:
                    return c.queue[0].ctx.body_received
            return None

        return gateway.lt.run(look())

    deadline = time.monotonic() + 10
    while (taken := held()) is None:
        assert sender.is_alive(), "the whole body was taken in while the upstream was not connected"
        assert time.monotonic() < deadline, "the sidecar never stopped reading the body"
        time.sleep(0.01)
    assert taken < 2 * 1024 * 1024, taken
    gate.set()
    sender.join(30)
    status, _, data = result[0]
    assert (status, json.loads(data)) == (200, {"bytes": BIG})
