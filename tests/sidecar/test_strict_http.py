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


def test_a_trickled_body_is_cut_off_at_the_minimum_rate(gateway: Gateway, backends: Backends) -> None:
    """Each byte arriving within the idle timeout is not enough: below the minimum rate (after a
    grace period) the request gets 408 and the connection closes."""
    import time

    from meshgate.sidecar.http1 import Limits

    async def backend(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)  # waits for the whole body, which never comes
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    port = backends.start(backend)
    gateway.start(
        snapshot(bundle([http_route("POST", "/up", f"http://127.0.0.1:{port}/up")])),
        Limits(body_idle_timeout_s=5, min_body_rate_bps=100, body_rate_grace_s=0.5),
    )
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as s:
        s.sendall(b"POST /prod/up HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n")
        t0 = time.monotonic()
        answer = b""
        s.settimeout(0.2)
        while time.monotonic() - t0 < 4 and not answer:
            try:
                s.sendall(b"x")  # 5 bytes/s: never idle for 5 s, far below 100 bytes/s
                answer = s.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
    assert answer.startswith(b"HTTP/1.1 408 ") and b"slower than 100 bytes/s" in answer
    assert time.monotonic() - t0 < 3
