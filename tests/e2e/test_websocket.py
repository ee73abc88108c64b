"""WebSocket pass-through the user's way (README "WebSocket pass-through"): a `type: websocket` route
applied with `meshgate apply -f`, deployed, served by a sidecar process fed by control from etcd, to a
real WebSocket echo server; messages cross both ways and close codes cross in both directions."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshgate.control.etcd_local import LocalEtcd, free_port
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect
from websockets.sync.server import ServerConnection, serve

from .harness import NO_DRAIN, Sidecar, http_get_json, mesh, wait_until

CONFIG = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {{name: chat}}
spec:
  selector: {{matchLabels: {{app: pets}}}}
  routes:
    - method: GET
      path: /chat
      integration:
        type: websocket
        uri: ws://127.0.0.1:{port}/ws
        idleTimeoutMs: 600000
        maxMessageBytes: 1024
    - method: GET
      path: /gone
      integration: {{type: websocket, uri: "ws://127.0.0.1:{dead}/ws"}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: prod}}
spec: {{api: chat}}
"""


class Echo:
    """A websockets echo server in a thread; `close-NNNN` makes it close with that code."""

    def __init__(self) -> None:
        self.closes: list[tuple[int, str]] = []
        self.paths: list[str] = []

        def handler(ws: ServerConnection) -> None:
            self.paths.append(ws.request.path if ws.request else "")
            try:
                for msg in ws:
                    if isinstance(msg, str) and msg.startswith("close-"):
                        ws.close(int(msg[6:]), "bye from upstream")
                        return
                    ws.send(msg)
            except ConnectionClosed:
                pass
            finally:
                if ws.close_code is not None:
                    self.closes.append((ws.close_code, ws.close_reason or ""))

        self.server = serve(handler, "127.0.0.1", 0)
        self.port = int(self.server.socket.getsockname()[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(5)


@pytest.fixture(scope="module")
def echo() -> Iterator[Echo]:
    e = Echo()
    yield e
    e.stop()


@pytest.fixture(scope="module")
def sidecar(etcd: LocalEtcd, tmp_path_factory: pytest.TempPathFactory, echo: Echo) -> Iterator[Sidecar]:
    tmp: Path = tmp_path_factory.mktemp("e2e-websocket")
    with mesh(etcd.endpoint, tmp) as m:
        m.start_control()
        m.apply(CONFIG.format(port=echo.port, dead=free_port()))
        m.cli("deploy", "chat", "--stage", "prod")
        sc = m.start_sidecar(extra=NO_DRAIN)
        # a plain GET on a WebSocket route is 426 once the route is served (404 before)
        wait_until(lambda: sc.get("/prod/chat")[0] == 426, what="the websocket route served")
        yield sc


def test_messages_cross_both_ways(sidecar: Sidecar, echo: Echo) -> None:
    with connect(f"ws://127.0.0.1:{sidecar.port}/prod/chat") as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        ws.send(b"\x00\x01bin")
        assert ws.recv(timeout=5) == b"\x00\x01bin"
        ws.send(["frag", "mented"])  # a fragmented message crosses as one
        assert ws.recv(timeout=5) == "fragmented"
        assert ws.response is not None and ws.response.headers["x-meshgate-request-id"]
    assert echo.paths[-1] == "/ws"  # the integration uri, not the client's path
    wait_until(lambda: (1000, "") in echo.closes, what="the client's normal close at the upstream")


def test_close_codes_cross_in_both_directions(sidecar: Sidecar, echo: Echo) -> None:
    url = f"ws://127.0.0.1:{sidecar.port}/prod/chat"
    with connect(url) as ws:
        ws.send("close-4001")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "bye from upstream")

    with connect(url) as ws:
        ws.send("x")
        assert ws.recv(timeout=5) == "x"
        ws.close(4002, "bye from client")
    wait_until(lambda: (4002, "bye from client") in echo.closes, what="the client's close code upstream")


def test_message_limit_from_the_yaml_closes_1009(sidecar: Sidecar) -> None:
    with connect(f"ws://127.0.0.1:{sidecar.port}/prod/chat", max_size=None) as ws:
        ws.send("a" * 1000)
        assert ws.recv(timeout=5) == "a" * 1000
        ws.send("b" * 5000)  # over maxMessageBytes: 1024
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


def test_an_unreachable_upstream_is_a_503_before_the_upgrade(sidecar: Sidecar) -> None:
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://127.0.0.1:{sidecar.port}/prod/gone", open_timeout=10)
    assert refused.value.response.status_code == 503
    status, _ = http_get_json(sidecar.port, "/prod/nothing")
    assert status == 404
