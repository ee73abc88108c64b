"""Spans at a collector the user's way (README "Observability"): an Api and Stages applied with
`meshgate apply -f` and deployed, a sidecar started with `--otlp-endpoint` pointing at a real OTLP/gRPC
receiver; a request's server span with its integration child and the api/stage attributes, a client's
W3C traceparent continued (and propagated to the integration), a stage's tracingSampleRatio deciding
for requests without one."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from meshgate.control.etcd_local import LocalEtcd

from .harness import NO_DRAIN, Sidecar, mesh, wait_until

CONFIG = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {{name: pets}}
spec:
  selector: {{matchLabels: {{app: pets}}}}
  routes:
    - method: GET
      path: /pets/{{id}}
      integration: {{type: http, uri: "http://127.0.0.1:{port}/pets/{{id}}"}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: prod}}
spec: {{api: pets}}                     # tracingSampleRatio 0: only a sampled traceparent is traced
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: dev}}
spec: {{api: pets, tracingSampleRatio: 1}}
"""

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class Backend:
    """An HTTP backend that records the headers of every request."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        seen = self.headers

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append({k.lower(): v for k, v in self.headers.items()})
                body = json.dumps({"path": self.path}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def backend() -> Iterator[Backend]:
    b = Backend()
    yield b
    b.server.shutdown()


def get(sc: Sidecar, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", sc.port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("x-meshgate-request-id") or ""
    finally:
        conn.close()


def test_spans_at_the_collector(etcd: LocalEtcd, tmp_path: Path, otlp: Any, backend: Backend) -> None:
    with mesh(etcd.endpoint, tmp_path) as m:
        m.start_control()
        m.apply(CONFIG.format(port=backend.port))
        m.cli("deploy", "pets", "--stage", "prod")
        m.cli("deploy", "pets", "--stage", "dev")
        sc = m.start_sidecar(extra=(*NO_DRAIN, "--otlp-endpoint", f"127.0.0.1:{otlp.port}"))
        wait_until(lambda: get(sc, "/prod/pets/0")[0] == 200, what="the Api served")

        # 1. a client's sampled traceparent on a stage that samples nothing by itself
        status, rid = get(sc, "/prod/pets/1", {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
        assert status == 200
        otlp.wait(lambda: _server(otlp, rid) is not None)
        server = _server(otlp, rid)
        assert server.name == "GET /pets/{id}"
        assert server.trace_id.hex() == TRACE_ID and server.parent_span_id.hex() == PARENT_ID
        attrs = otlp.attrs(server)
        assert attrs["meshgate.api"] == "default/pets" and attrs["meshgate.stage"] == "prod"
        assert attrs["http.response.status_code"] == 200 and attrs["meshgate.deployment"]
        otlp.wait(lambda: _children(otlp, server, "integration"))
        (integ,) = _children(otlp, server, "integration")
        assert otlp.attrs(integ)["server.port"] == backend.port
        # the integration got the trace, with the integration span as its parent
        sent = next(h for h in backend.headers if h.get("x-meshgate-request-id") == rid)
        assert sent["traceparent"] == f"00-{TRACE_ID}-{integ.span_id.hex()}-01"

        # 2. no traceparent: the stage decides (dev samples everything, prod nothing)
        _, dev_rid = get(sc, "/dev/pets/2")
        _, prod_rid = get(sc, "/prod/pets/2")
        otlp.wait(lambda: _server(otlp, dev_rid) is not None)
        root = _server(otlp, dev_rid)
        assert not root.parent_span_id and root.trace_id.hex() != TRACE_ID
        assert otlp.attrs(root)["meshgate.stage"] == "dev"
        # an unsampled traceparent stays unsampled
        _, unsampled = get(sc, "/dev/pets/3", {"traceparent": f"00-{'1' * 32}-{PARENT_ID}-00"})
        _, last = get(sc, "/dev/pets/4")
        otlp.wait(
            lambda: _server(otlp, last) is not None
        )  # spans are exported in order: the earlier ones are in
        assert _server(otlp, prod_rid) is None and _server(otlp, unsampled) is None


def _server(otlp: Any, request_id: str) -> Any:
    with otlp.lock:
        spans = list(otlp.spans)
    return next((s for s in spans if otlp.attrs(s).get("meshgate.request_id") == request_id), None)


def _children(otlp: Any, parent: Any, name: str) -> list[Any]:
    with otlp.lock:
        spans = list(otlp.spans)
    return [s for s in spans if s.parent_span_id == parent.span_id and s.name == name]
