"""Error bodies tell outsiders nothing about the inside: API Gateway's message and the request id for
callers outside the cluster networks; the reason (upstream address, exception, stage list) for
callers inside them, for stages that opt in (`errorDetail`), and always in the access log."""

from __future__ import annotations

import io
import json
import socket
from typing import Any

from meshgate.sidecar.accesslog import AccessLog
from meshgate.sidecar.metrics import Metrics
from meshgate.sidecar.routing import compile_snapshot

from .conftest import Gateway, bundle, call, http_route, mock_route, snapshot


def _dead_port() -> int:
    """A loopback port nothing listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def _snap(port: int, *, cidrs: tuple[str, ...] = (), **stage: Any) -> Any:
    routes = [
        http_route("GET", "/down", f"http://127.0.0.1:{port}/down"),
        mock_route("GET", "/ok", '"ok"'),
        {
            "method": "GET",
            "path": "/guarded",
            "authorizer": "reqdown",
            "integration": {"type": "mock", "mock": {"body": '"no"'}},
        },
    ]
    authorizers = [
        {
            "name": "reqdown",
            "type": "request",
            "uri": f"http://127.0.0.1:{port}/auth",
            "identitySources": ["method.request.header.X-Token"],
        }
    ]
    main = bundle(routes, api_spec={"authorizers": authorizers})
    main["stage"]["spec"].update(stage)
    private = bundle([mock_route("GET", "/x", '"x"')], stage="secretstage", api="internal")
    snap = snapshot(main, private, cluster_cidrs=cidrs)
    return snap


def test_outsiders_get_the_message_and_request_id_only(gateway: Gateway) -> None:
    port = _dead_port()
    gateway.start(_snap(port))  # loopback is not in the (empty) cluster networks: an outsider
    for path, headers, want in (
        ("/prod/down", {}, 503),
        ("/prod/guarded", {"X-Token": "t"}, 500),
        ("/nostage/x", {}, 404),
    ):
        status, resp_headers, body = call(gateway.port, path, headers=headers)
        assert status == want, body
        doc = json.loads(body)
        assert set(doc) == {"message", "requestId"}, doc
        assert doc["requestId"] == resp_headers["x-meshgate-request-id"]
        text = body.decode()
        for secret in (str(port), "127.0.0.1", "secretstage", "reqdown", "Error", "refused"):
            assert secret not in text, (path, text)


def test_insiders_and_opted_in_stages_keep_the_reason(gateway: Gateway) -> None:
    port = _dead_port()
    gateway.start(_snap(port, cidrs=("127.0.0.0/8",)))
    status, _, body = call(gateway.port, "/prod/down")
    assert status == 503 and f"127.0.0.1:{port}" in json.loads(body)["reason"]
    status, _, body = call(gateway.port, "/nostage/x")
    assert status == 404 and "secretstage" in json.loads(body)["reason"]

    gateway.holder.table = compile_snapshot(_snap(port, cidrs=("10.0.0.0/8",), errorDetail=True))
    status, _, body = call(gateway.port, "/prod/down")
    assert status == 503 and f"127.0.0.1:{port}" in json.loads(body)["reason"]


def test_gateway_response_templates_get_no_reason_for_outsiders(gateway: Gateway) -> None:
    port = _dead_port()
    snap = _snap(port)
    spec = snap.stages[0].deployment.spec.api_spec
    spec.gateway_responses.add(type="INTEGRATION_FAILURE", status=503)  # the default body template
    gateway.start(snap)
    status, _, body = call(gateway.port, "/prod/down")
    assert status == 503
    doc = json.loads(body)
    assert doc["reason"] == "" and str(port) not in body.decode()


def test_the_access_log_keeps_what_the_client_was_not_told(gateway: Gateway) -> None:
    port = _dead_port()
    out = io.StringIO()
    gateway.http.access_log = AccessLog(out)
    gateway.http.metrics = Metrics()
    gateway.start(_snap(port, accessLogFormat="json"))
    status, headers, _ = call(gateway.port, "/prod/down")
    assert status == 503
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    (line,) = [x for x in lines if x["requestId"] == headers["x-meshgate-request-id"]]
    assert line["status"] == 503 and f"127.0.0.1:{port}" in line["error.reason"]
    assert (
        line["error.message"] == "Service unavailable" and line["error.responseType"] == "INTEGRATION_FAILURE"
    )
    assert call(gateway.port, "/prod/ok")[0] == 200
    ok = json.loads(out.getvalue().splitlines()[-1])
    assert "error.reason" not in ok
