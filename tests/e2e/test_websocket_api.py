"""A WebSocket API configured the way users configure it: `meshgate apply -f` of the README's shape,
`meshgate deploy`, real etcd, `meshgate control` and two `meshgate sidecar` processes, a real HTTP
backend for the route integrations and a real WebSocket client; `@connections` from the other
sidecar is forwarded to the one holding the connection."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from meshgate.control.etcd_local import LocalEtcd, free_port
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from .harness import Mesh, Sidecar, mesh
from .test_cli import cli, ok

CHAT = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {{name: chat}}
spec:
  selector: {{matchLabels: {{app: chat}}}}
  routes:
    - method: GET
      path: /chat
      integration:
        type: websocket_api
        routeSelectionExpression: $request.body.action
        websocketRoutes:
          $connect:    {{type: http, uri: "http://127.0.0.1:{port}/connect"}}
          $disconnect: {{type: http, uri: "http://127.0.0.1:{port}/disconnect"}}
          $default:    {{type: http, uri: "http://127.0.0.1:{port}/default"}}
          sendMessage: {{type: http, uri: "http://127.0.0.1:{port}/message"}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: prod}}
spec: {{api: chat}}
"""


class Backend:
    """The chat service: records every call; $connect refuses a query with deny=1."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                path, _, query = self.path.partition("?")
                call = {"path": path, "query": query, "body": body, "headers": dict(self.headers.items())}
                with outer.lock:
                    outer.calls.append(call)
                status, reply = 200, b""
                if path == "/connect" and "deny=1" in query:
                    status = 403
                elif path in ("/message", "/default"):
                    reply = json.dumps({"route": path, "got": json.loads(body)}).encode()
                self.send_response(status)
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def called(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [c for c in self.calls if c["path"] == path]


@pytest.fixture
def backend() -> Iterator[Backend]:
    b = Backend()
    yield b
    b.server.shutdown()
    b.server.server_close()


def wait(what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return got


def manage(sc: Sidecar, method: str, conn_id: str, body: bytes = b"") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", sc.port, timeout=10)
    try:
        conn.request(method, f"/@connections/{conn_id}", body=body or None)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def start(m: Mesh, node_id: str) -> Sidecar:
    port = free_port()
    return m.start_sidecar(node_id, "app=chat", port=port, extra=("--advertise", f"127.0.0.1:{port}"))


def test_a_websocket_api_applied_with_the_cli(etcd: LocalEtcd, tmp_path: Path, backend: Backend) -> None:
    conf = tmp_path / "chat.yaml"
    conf.write_text(CHAT.format(port=backend.port))
    with mesh(etcd.endpoint, tmp_path) as m:
        m.start_control(extra=("--cluster-cidr", "127.0.0.0/8"))  # loopback may call @connections
        assert ok(cli(m, "apply", "-f", str(conf))) == "api/chat created\nstage/prod created\n"
        shown = yaml.safe_load(ok(cli(m, "get", "apis", "chat", "-o", "yaml")))
        routes = shown["spec"]["routes"][0]["integration"]["websocketRoutes"]
        assert sorted(routes) == ["$connect", "$default", "$disconnect", "sendMessage"]
        assert routes["sendMessage"] == {"type": "http", "uri": f"http://127.0.0.1:{backend.port}/message"}
        a, b = start(m, "sc-a"), start(m, "sc-b")
        assert "deployment 1 of chat now serves stage prod" in ok(cli(m, "deploy", "chat", "--stage", "prod"))
        url = f"ws://127.0.0.1:{a.port}/prod/chat"
        wait("the route on sc-a", lambda: a.get("/prod/chat")[0] != 404)
        with pytest.raises(InvalidStatus) as refused:
            connect(url + "?deny=1", open_timeout=10)
        assert refused.value.response.status_code == 403  # $connect's refusal
        with connect(url + "?room=blue&user=ann", open_timeout=10) as ws:
            conn_id = ws.response.headers["x-meshgate-connection-id"]
            [hello] = [c for c in backend.called("/connect") if "deny" not in c["query"]]
            assert hello["query"] == "room=blue&user=ann"  # the client's query string, as sent
            assert hello["headers"]["x-meshgate-connection-id"] == conn_id
            assert hello["headers"]["x-meshgate-route-key"] == "$connect"
            _converse(ws, backend, conn_id)
            _manage_from_the_other_sidecar(ws, a, b, conn_id)
        [bye] = wait("$disconnect", lambda: backend.called("/disconnect"))
        assert bye["headers"]["x-meshgate-connection-id"] == conn_id
        assert bye["headers"]["x-meshgate-route-key"] == "$disconnect"
        assert manage(b, "GET", conn_id)[0] == 410  # gone everywhere
        assert manage(a, "GET", conn_id)[0] == 410


def _converse(ws: Any, backend: Backend, conn_id: str) -> None:
    """A message with an action goes to that route, one without to $default; replies come back."""
    ws.send(json.dumps({"action": "sendMessage", "text": "hi"}))
    assert json.loads(ws.recv(timeout=10)) == {
        "route": "/message",
        "got": {"action": "sendMessage", "text": "hi"},
    }
    ws.send(json.dumps({"action": "shout", "text": "HI"}))
    assert json.loads(ws.recv(timeout=10)) == {"route": "/default", "got": {"action": "shout", "text": "HI"}}
    [message], [default] = backend.called("/message"), backend.called("/default")
    assert message["headers"]["x-meshgate-connection-id"] == conn_id
    assert (message["headers"]["x-meshgate-route-key"], default["headers"]["x-meshgate-route-key"]) == (
        "sendMessage",
        "$default",
    )


def _manage_from_the_other_sidecar(ws: Any, a: Sidecar, b: Sidecar, conn_id: str) -> None:
    """POST, GET and DELETE /@connections/{id} on sc-b reach the connection sc-a holds."""
    wait("sc-b to list sc-a", lambda: manage(b, "POST", conn_id, b"from sc-b")[0] == 200)
    assert ws.recv(timeout=10) == "from sc-b"
    status, body = manage(b, "GET", conn_id)
    info = json.loads(body)
    assert status == 200 and info["connectionId"] == conn_id
    assert info["identity"]["sourceIp"] == "127.0.0.1"
    assert manage(a, "GET", conn_id)[0] == 200  # and on its own sidecar
    assert manage(b, "DELETE", conn_id)[0] == 204
    with pytest.raises(ConnectionClosed):
        ws.recv(timeout=10)
