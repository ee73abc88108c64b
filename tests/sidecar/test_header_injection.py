"""Header validity where headers are written (RFC 9110 §5.5): no input splits a message.

Hostile values reach a header through a parameter mapping (upstream) or a function's response
(downstream); the sidecar refuses them at its writers: 400 before anything goes upstream, 502 for
an integration response, and the client never sees an injected header.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from .conftest import Backends, Gateway, LoopThread, bundle, http_route, read_request, snapshot
from .test_function import Function, start


@pytest.fixture
def fn(lt: LoopThread) -> Iterator[Function]:
    f = Function(lt)
    yield f
    f.stop()


def raw_get(port: int, target: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % target.encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_a_mapped_value_with_cr_lf_is_400_and_nothing_reaches_the_backend(
    gateway: Gateway, backends: Backends
) -> None:
    seen: list[bytes] = []

    async def backend(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            line, _, _ = await read_request(r)
            seen.append(line)
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await w.drain()

    port = backends.start(backend)
    route = http_route(
        "GET",
        "/search",
        f"http://127.0.0.1:{port}/search",
        requestParameters={"integration.request.header.x-q": "method.request.querystring.q"},
    )
    gateway.start(snapshot(bundle([route])))
    smuggled = "a%0d%0aContent-Length:%200%0d%0a%0d%0aGET%20/admin%20HTTP/1.1%0d%0aHost:%20b"
    answer = raw_get(gateway.port, f"/prod/search?q={smuggled}")
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert seen == []  # not even the first request went out
    for bad in ("a%00b", "a%0ab", "a%0db"):
        assert raw_get(gateway.port, f"/prod/search?q={bad}").startswith(b"HTTP/1.1 400 ")
    assert raw_get(gateway.port, "/prod/search?q=fine%20value").startswith(b"HTTP/1.1 200 ")
    assert seen == [b"GET /search?q=fine%20value HTTP/1.1"]


def test_a_function_response_header_with_cr_lf_is_502_and_never_written(
    gateway: Gateway, fn: Function
) -> None:
    start(gateway, fn.port)
    fn.behaviour = {"statusCode": 200, "headers": {"x-a": "a\r\nSet-Cookie: pwned=1"}, "body": "hi"}
    answer = raw_get(gateway.port, "/prod/pets/1")
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert answer.startswith(b"HTTP/1.1 502 ") and b"set-cookie" not in head, answer[:300]
    assert b"invalid integration response" in answer
    fn.behaviour = {"statusCode": 200, "multiValueHeaders": {"x-b": ["ok", "b\nx-evil: 1"]}, "body": "hi"}
    assert raw_get(gateway.port, "/prod/pets/1").startswith(b"HTTP/1.1 502 ")
    fn.behaviour = {"statusCode": 200, "headers": {"bad name": "v"}, "body": "hi"}
    assert raw_get(gateway.port, "/prod/pets/1").startswith(b"HTTP/1.1 502 ")
    fn.behaviour = {"statusCode": 200, "headers": {"x-fine": "v"}, "body": "hi"}
    answer = raw_get(gateway.port, "/prod/pets/1")
    assert answer.startswith(b"HTTP/1.1 200 ") and b"x-fine: v" in answer
