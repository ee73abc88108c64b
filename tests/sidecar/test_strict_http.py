"""Strict HTTP/1.1 at the listener (RFC 9112 §3.2, RFC 9110 §10.1.1): exactly one Host, and
`Expect: 100-continue` answered by the sidecar itself: 100 before the body is read, or the final
status at once when the request is refused anyway."""

from __future__ import annotations

import asyncio
import socket

from .conftest import Backends, Gateway, bundle, http_route, mock_route, read_request, snapshot


def exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return out


def test_host_is_required_once(gateway: Gateway) -> None:
    gateway.start(snapshot(bundle([mock_route("GET", "/m", '"m"')])))
    assert exchange(gateway.port, b"GET /prod/m HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    two = b"GET /prod/m HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
    assert exchange(gateway.port, two).startswith(b"HTTP/1.1 400 ")
    ok = exchange(gateway.port, b"GET /prod/m HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200 ")
    assert exchange(gateway.port, b"GET /prod/m HTTP/1.0\r\n\r\n").startswith(
        b"HTTP/1.1 200 "
    )  # 1.0: optional


def test_expect_100_continue(gateway: Gateway, backends: Backends) -> None:
    seen: list[dict[bytes, bytes]] = []

    async def backend(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            _, headers, body = await read_request(r)
            seen.append(headers)
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
            await w.drain()

    port = backends.start(backend)
    gateway.start(snapshot(bundle([http_route("POST", "/up", f"http://127.0.0.1:{port}/up")])))
    head = b"POST /prod/up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=2) as s:
        s.sendall(head)
        assert s.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"  # before any body byte was sent
        s.sendall(b"hello")
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"hello")
    assert b"expect" not in {k.lower() for k in seen[0]}  # the sidecar met the expectation itself
    refused = exchange(gateway.port, head.replace(b"/prod/up", b"/prod/nothing"), timeout=2)
    assert refused.startswith(b"HTTP/1.1 404 ") and b"100 Continue" not in refused  # at once, no body read


def test_http10_keep_alive_is_said_back(gateway: Gateway) -> None:
    """RFC 9112 §9.3 / RFC 1945: an HTTP/1.0 client keeps the connection only if told so."""
    gateway.start(snapshot(bundle([mock_route("GET", "/m", '"m"')])))
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=2) as s:
        for _ in range(2):  # the same connection serves both
            s.sendall(b"GET /prod/m HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(65536)
            assert head.startswith(b"HTTP/1.1 200 ") and b"connection: keep-alive" in head.lower()
    plain = exchange(gateway.port, b"GET /prod/m HTTP/1.0\r\n\r\n")
    assert plain.startswith(b"HTTP/1.1 200 ") and b"keep-alive" not in plain.lower()
