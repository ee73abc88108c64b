"""Sidecar test kit: a background event loop running the real listener, snapshots from dicts, raw backends."""

from __future__ import annotations

import asyncio
import http.client
import socket
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from google.protobuf import json_format
from meshgate.sidecar.http1 import HttpServer, Limits, serve_http
from meshgate.sidecar.routing import TableHolder, compile_snapshot
from meshgate.sidecar.runtime import Runtime
from meshgate.sidecar.upstream import UpstreamPool
from meshgate.v1 import control_pb2

T = TypeVar("T")
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class LoopThread:
    """An asyncio loop in a thread, so tests can use blocking clients against real servers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def bundle(
    routes: list[dict[str, Any]],
    *,
    stage: str = "prod",
    api: str = "pets",
    variables: dict[str, str] | None = None,
    deployment: int = 1,
    canary: dict[str, Any] | None = None,
    canary_routes: list[dict[str, Any]] | None = None,
    hosts: list[str] | None = None,
    base_path: str = "",
    api_spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One StageBundle as a JSON-style dict; `api_spec` adds ApiSpec fields (cors, authorizers, ...)."""
    spec = {"routes": routes, "basePath": base_path, **(api_spec or {})}
    b: dict[str, Any] = {
        "api": {"metadata": {"name": api, "namespace": "default"}, "spec": spec},
        "stage": {
            "metadata": {"name": stage, "namespace": "default"},
            "spec": {
                "api": api,
                "deployment": deployment,
                "variables": variables or {},
                "hosts": hosts or [],
            },
        },
        "deployment": {"id": deployment, "spec": {"api": api, "apiSpec": spec}},
    }
    if canary is not None:
        b["stage"]["spec"]["canary"] = canary
        b["canaryDeployment"] = {
            "id": canary.get("deployment", deployment + 1),
            "spec": {"api": api, "apiSpec": {"routes": canary_routes or routes}},
        }
    return b


# The tests' client calls from loopback: a caller inside the cluster networks (it sees error
# reasons, reaches private Apis) unless a test clears `cluster_cidrs` to play an outsider.
INSIDE = ("127.0.0.0/8",)


def snapshot(
    *bundles: dict[str, Any], version: str = "v1", cluster_cidrs: tuple[str, ...] = INSIDE
) -> control_pb2.Snapshot:
    doc = {"version": version, "stages": list(bundles), "clusterCidrs": list(cluster_cidrs)}
    return json_format.ParseDict(doc, control_pb2.Snapshot())


def http_route(method: str, path: str, uri: str, **integration: Any) -> dict[str, Any]:
    return {"method": method, "path": path, "integration": {"type": "http", "uri": uri, **integration}}


def mock_route(method: str, path: str, body: str, status: int = 200, **headers: str) -> dict[str, Any]:
    return {
        "method": method,
        "path": path,
        "integration": {"type": "mock", "mock": {"status": status, "body": body, "headers": headers}},
    }


def call(
    port: int,
    path: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: (status, lowercase headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data


class Gateway:
    def __init__(self, lt: LoopThread) -> None:
        self.lt = lt
        self.holder = TableHolder()
        self.pool = UpstreamPool()
        self.http = HttpServer(sweep_interval_s=0.05)
        self.port = 0
        self.on_stop: list[Callable[[], Awaitable[None]]] = []

    def start(
        self, snap: control_pb2.Snapshot, limits: Limits = Limits(), runtime: Runtime | None = None
    ) -> Gateway:
        self.holder.table = compile_snapshot(snap, runtime)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.lt.run(
            serve_http(self.holder, "", 0, limits=limits, sock=sock, pool=self.pool, http_server=self.http)
        )
        return self

    def stop(self) -> None:
        self.lt.run(self.http.drain(0.5))
        self.pool.close()
        for close in self.on_stop:
            self.lt.run(close())


class Backends:
    """Raw asyncio backends on loopback; counts accepted connections."""

    def __init__(self, lt: LoopThread) -> None:
        self.lt = lt
        self.servers: list[asyncio.Server] = []
        self.accepted = 0

    def start(self, handler: Handler) -> int:
        async def wrapped(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.accepted += 1
            try:
                await handler(r, w)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                w.close()

        async def go() -> asyncio.Server:
            return await asyncio.start_server(wrapped, "127.0.0.1", 0)

        server = self.lt.run(go())
        self.servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        async def go() -> None:
            for s in self.servers:
                s.close()

        self.lt.run(go())


async def read_request(r: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """Read one HTTP/1.1 request (Content-Length or chunked body) from a raw backend connection."""
    head = await r.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        if b":" in line:
            k, v = line.split(b":", 1)
            headers[k.strip().lower()] = v.strip()
    body = b""
    if b"content-length" in headers:
        body = await r.readexactly(int(headers[b"content-length"]))
    elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        while True:
            size = int((await r.readuntil(b"\r\n")).strip(), 16)
            if size == 0:
                await r.readuntil(b"\r\n")
                break
            body += await r.readexactly(size)
            await r.readexactly(2)
    return lines[0], headers, body


@pytest.fixture
def lt() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.stop()


@pytest.fixture
def gateway(lt: LoopThread) -> Iterator[Gateway]:
    gw = Gateway(lt)
    yield gw
    gw.stop()


@pytest.fixture
def backends(lt: LoopThread) -> Iterator[Backends]:
    b = Backends(lt)
    yield b
    b.stop()
