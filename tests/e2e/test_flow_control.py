"""Flow control through a real sidecar process, both ways: `meshgate apply -f` of an Api that proxies
`/big` and `/up` to a raw-socket backend, `meshgate deploy`, a sidecar fed by control from etcd.

- a client that stops reading a 200 MB response pauses the sidecar's reading from the upstream (the
  backend's send buffer fills and it blocks; `/stats` counts the pause), and one that then reads slowly
  gets every byte while the sidecar's RSS stays within a few MB of where it started;
- an upload of 200 MB to a backend that stops reading pauses the sidecar's reading from the client
  (the client's send blocks, `/stats` counts the upstream's write pause), and the backend that then
  reads slowly gets every byte, the sidecar's RSS bounded the same way.
"""

from __future__ import annotations

import hashlib
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from meshgate.control.etcd_local import LocalEtcd

from .harness import NO_DRAIN, Sidecar, http_get_json, mesh, wait_until

SIZE = 200 * 1024 * 1024
BLOCK = b"0123456789abcdef" * 4096  # 64 KiB
# What the sidecar may hold on top of its resting RSS while 200 MB go through it: its transports'
# 256 KiB high-water marks, a read or two in flight, the allocator's slack. Without flow control
# it holds what the slow side has not taken yet: tens to hundreds of MB.
RSS_SLACK = 40 * 1024 * 1024
# What may sit in kernel buffers and the sidecar's own when a side stops: socket buffers on loopback
# autotune to a few MB each, four of them on the path.
IN_FLIGHT = 48 * 1024 * 1024

CONFIG = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {{name: flow}}
spec:
  selector: {{matchLabels: {{app: flow}}}}
  routes:
    - method: GET
      path: /big
      integration: {{type: http, uri: "http://127.0.0.1:{port}/big", timeoutMs: 300000}}
    - method: POST
      path: /up
      integration: {{type: http, uri: "http://127.0.0.1:{port}/up", timeoutMs: 300000}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: prod}}
spec: {{api: flow}}
"""


@dataclass
class Backend:
    """A raw-socket upstream: GET /big sends SIZE bytes (non-blocking, so it sees its send buffer fill);
    POST /up reads nothing until `read_gate` is set, then reads slowly and answers the count and sha256."""

    sock: socket.socket = field(default_factory=socket.socket)
    sent: int = 0
    send_blocked: threading.Event = field(default_factory=threading.Event)
    read_gate: threading.Event = field(default_factory=threading.Event)

    def start(self) -> int:
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        threading.Thread(target=self._accept, daemon=True).start()
        return int(self.sock.getsockname()[1])

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(65536)
                if not data:
                    return
                head += data
            head, _, rest = head.partition(b"\r\n\r\n")
            if head.startswith(b"GET /big"):
                self._send_big(conn)
            else:
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                self._read_up(conn, rest, length)

    def _send_big(self, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % SIZE)
        conn.setblocking(False)
        view = memoryview(BLOCK)
        while self.sent < SIZE:
            try:
                off = self.sent % len(BLOCK)  # BLOCK repeated, whatever each send took
                self.sent += conn.send(view[off : min(len(BLOCK), off + SIZE - self.sent)])
            except BlockingIOError:
                self.send_blocked.set()  # the sidecar stopped reading: our send buffer is full
                select.select([], [conn], [], 60)

    def _read_up(self, conn: socket.socket, got: bytes, length: int) -> None:
        self.read_gate.wait(60)
        digest = hashlib.sha256(got)
        n = len(got)
        while n < length:
            data = conn.recv(min(65536, length - n))
            if not data:
                return
            digest.update(data)
            n += len(data)
            if n % (1024 * 1024) < len(data):
                time.sleep(0.003)  # a slow reader: ~1 MB per few ms, slower than the client sends
        body = json.dumps({"bytes": n, "sha256": digest.hexdigest()}).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))


class RssWatch:
    """The sidecar process's resident set (VmRSS from /proc), its peak sampled every 10 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = self.now()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, self.now())

    @property
    def growth(self) -> int:
        return self.peak - self.start


@dataclass
class Env:
    sidecar: Sidecar
    backend: Backend


@pytest.fixture(scope="module")
def env(etcd: LocalEtcd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    backend = Backend()
    port = backend.start()
    with mesh(etcd.endpoint, tmp_path_factory.mktemp("flow")) as m:
        m.start_control()
        m.apply(CONFIG.format(port=port))
        m.cli("deploy", "flow", "--stage", "prod")
        extra = ("--max-body-bytes", str(SIZE + 1), *NO_DRAIN)
        yield Env(m.start_sidecar("sc-flow", labels="app=flow", extra=extra), backend)
    backend.sock.close()


def stats(sc: Sidecar) -> dict[str, int]:
    _, doc = http_get_json(sc.admin_port, "/stats?format=json")
    return {s["name"]: s["value"] for s in doc["stats"] if isinstance(s["value"], int)}


def pid(sc: Sidecar) -> int:
    assert sc.proc.popen is not None
    return sc.proc.popen.pid


def test_a_client_that_does_not_read_pauses_the_upstream(env: Env) -> None:
    sc, backend = env.sidecar, env.backend
    before = stats(sc)
    with RssWatch(pid(sc)) as rss, socket.create_connection(("127.0.0.1", sc.port)) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        client.sendall(b"GET /prod/big HTTP/1.1\r\nHost: x\r\n\r\n")
        # reading nothing: the sidecar's write buffer to us fills, it stops reading the backend, and
        # the backend's own send buffer fills in turn
        wait_until(
            lambda: stats(sc)["upstream.read_pauses"] > before["upstream.read_pauses"],
            timeout=30,
            what="the sidecar pausing its upstream read",
        )
        assert backend.send_blocked.wait(30), "the backend never blocked: the sidecar kept reading"
        assert backend.sent < IN_FLIGHT, f"{backend.sent} bytes left the backend while the client read none"
        # now a slow reader: 64 KiB at a time, a pause every MB
        got = b""
        while b"\r\n\r\n" not in got:
            got += client.recv(65536)
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"content-length: %d" % SIZE in head.lower(), head
        n, digest, expected = len(body), hashlib.sha256(body), hashlib.sha256()
        while n < SIZE:
            data = client.recv(65536)
            assert data, f"the response ended after {n} of {SIZE} bytes"
            digest.update(data)
            n += len(data)
            if n % (1024 * 1024) < len(data):
                time.sleep(0.003)
    for _ in range(SIZE // len(BLOCK)):
        expected.update(BLOCK)
    assert n == SIZE and digest.hexdigest() == expected.hexdigest()
    assert rss.growth < RSS_SLACK, f"the sidecar grew by {rss.growth >> 20} MB streaming 200 MB"
    after = stats(sc)
    pauses = after["upstream.read_pauses"] - before["upstream.read_pauses"]
    resumes = after["upstream.read_resumes"] - before["upstream.read_resumes"]
    assert pauses >= 1 and resumes == pauses, (pauses, resumes)  # every pause was lifted again


def test_an_upstream_that_does_not_read_pauses_the_client(env: Env) -> None:
    sc, backend = env.sidecar, env.backend
    before = stats(sc)
    expected = hashlib.sha256()
    with RssWatch(pid(sc)) as rss, socket.create_connection(("127.0.0.1", sc.port)) as client:
        client.sendall(
            b"POST /prod/up HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n\r\n" % SIZE
        )
        client.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 30
        # the backend reads nothing yet: send until our send buffer is full and the sidecar says it
        # paused reading us because the backend's buffer is full
        while True:
            try:
                n = client.send(memoryview(BLOCK)[: min(len(BLOCK), SIZE - sent)])
                sent += n
                expected.update(BLOCK[:n])
                assert sent < SIZE, "the whole body went out while the backend read none of it"
                continue
            except BlockingIOError:
                pass
            if stats(sc)["upstream.write_pauses"] > before["upstream.write_pauses"]:
                break
            assert time.monotonic() < deadline, f"no upstream write pause after sending {sent} bytes"
            select.select([], [client], [], 0.05)
        assert sent < IN_FLIGHT, f"{sent} bytes went in while the backend read none"
        backend.read_gate.set()
        client.setblocking(True)
        while sent < SIZE:
            chunk = BLOCK[: min(len(BLOCK), SIZE - sent)]
            client.sendall(chunk)
            expected.update(chunk)
            sent += len(chunk)
        got = b""
        while b"\r\n\r\n" not in got or not got.endswith(b"}"):
            data = client.recv(65536)
            assert data, got
            got += data
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), got
    assert json.loads(body) == {"bytes": SIZE, "sha256": expected.hexdigest()}
    assert rss.growth < RSS_SLACK, f"the sidecar grew by {rss.growth >> 20} MB passing 200 MB on"
    after = stats(sc)
    pauses = after["upstream.write_pauses"] - before["upstream.write_pauses"]
    resumes = after["upstream.write_resumes"] - before["upstream.write_resumes"]
    assert pauses >= 1 and resumes == pauses, (pauses, resumes)
