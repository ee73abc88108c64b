"""One normalised path (RFC 3986 §5.2.4, §6.2.2): what routes match, what authorizers see, what the
cache keys on and what is forwarded are the same path, so `..` cannot walk around a check."""

from __future__ import annotations

import asyncio
import socket

from meshgate.sidecar.context import normalize_path

from .conftest import Backends, Gateway, bundle, http_route, mock_route, read_request, snapshot


def get(port: int, target: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET %b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % target)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def recording_backend(backends: Backends, seen: list[bytes]) -> int:
    """A backend that answers 200 and records each request target it receives."""

    async def backend(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            line, _, _ = await read_request(r)
            seen.append(line.split()[1])
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await w.drain()

    return backends.start(backend)


def test_normalize_path() -> None:
    assert normalize_path("/prod/a/./b/../c") == "/prod/a/c"
    assert normalize_path("/prod/a/%2e%2E/c") == "/prod/c"
    assert normalize_path("/prod/%7Euser/%41") == "/prod/~user/A"
    assert normalize_path("/prod/a%2Fb/c") == "/prod/a%2Fb/c"  # an encoded slash stays encoded
    assert normalize_path("/prod/x/") == "/prod/x/"
    for bad in (
        "/dev/../prod/x",
        "/../x",
        "/prod/%2e%2e/%2e%2e/x",
        "/prod/x%00y",
        "/prod/x%0ay",
        "/prod/x%7F",
    ):
        assert normalize_path(bad) is None, bad


def test_dot_segments_cannot_walk_around_a_check(gateway: Gateway, backends: Backends) -> None:
    seen: list[bytes] = []
    port = recording_backend(backends, seen)
    secret = {**mock_route("GET", "/keys/secret", '"secret"'), "apiKeyRequired": True}
    routes = [
        mock_route("GET", "/open", '"open"'),
        secret,
        http_route("GET", "/files/{proxy+}", f"http://127.0.0.1:{port}/{{proxy}}"),
    ]
    gateway.start(
        snapshot(bundle(routes), bundle([mock_route("GET", "/x", '"dev"')], stage="dev", api="other"))
    )
    p = gateway.port
    assert get(p, b"/prod/open/../keys/secret").startswith(b"HTTP/1.1 403 ")  # the key check still runs
    assert get(p, b"/prod/open/%2e%2e/keys/secret").startswith(b"HTTP/1.1 403 ")
    assert get(p, b"/dev/%2e%2e/prod/open").startswith(b"HTTP/1.1 400 ")  # no walking into another stage
    assert get(p, b"/prod/open%00").startswith(b"HTTP/1.1 400 ")
    assert get(p, b"/prod/./open").endswith(b'"open"')
    assert get(p, b"/prod/files/a/./b/../c").startswith(b"HTTP/1.1 200 ")
    assert seen == [b"/a/c"]


def test_an_encoded_slash_in_a_greedy_value_is_forwarded_encoded(
    gateway: Gateway, backends: Backends
) -> None:
    """As API Gateway and Envoy's default do: `%2F` in a {proxy+} value is part of one segment, so
    `..%2f..%2f` never becomes `../../` at the backend."""
    seen: list[bytes] = []
    port = recording_backend(backends, seen)
    gateway.start(
        snapshot(bundle([http_route("GET", "/files/{proxy+}", f"http://127.0.0.1:{port}/objects/{{proxy}}")]))
    )
    for target in (b"/prod/files/a%2Fb/c", b"/prod/files/..%2f..%2fx", b"/prod/files/%7Euser/a%20b"):
        assert get(gateway.port, target).startswith(b"HTTP/1.1 200 ")
    assert seen == [b"/objects/a%2Fb/c", b"/objects/..%2F..%2Fx", b"/objects/~user/a%20b"]


def test_an_api_may_reject_encoded_slashes(gateway: Gateway, backends: Backends) -> None:
    """`escapedSlashesAction: REJECT_REQUEST` (Envoy's REJECT_REQUEST): `%2F` or `%5C` anywhere in
    the path, any case, is a 400 and nothing reaches the backend; other Apis keep them encoded."""
    seen: list[bytes] = []
    port = recording_backend(backends, seen)
    route = http_route("GET", "/files/{proxy+}", f"http://127.0.0.1:{port}/objects/{{proxy}}")
    strict = bundle([route], api_spec={"escapedSlashesAction": "REJECT_REQUEST"})
    gateway.start(snapshot(strict, bundle([route], stage="dev", api="lax")))
    for target in (b"/prod/files/a%2Fb", b"/prod/files/a%2fb", b"/prod/files/a%5cb", b"/prod/nope/%2F"):
        answer = get(gateway.port, target)
        assert answer.startswith(b"HTTP/1.1 400 "), (target, answer[:80])
    assert seen == []
    assert get(gateway.port, b"/prod/files/a/b").startswith(b"HTTP/1.1 200 ")
    assert get(gateway.port, b"/dev/files/a%2Fb").startswith(b"HTTP/1.1 200 ")
    assert seen == [b"/objects/a/b", b"/objects/a%2Fb"]
