"""Traces from the real listener into a real OTLP/gRPC receiver (the collector's TraceService, `otlp`):
span tree, attributes, traceparent honoured from the client and propagated to the integration."""

from __future__ import annotations

import asyncio
import http.client
import time
from typing import Any

import pytest
from meshgate.sidecar.otlp_metrics import otlp_target
from meshgate.sidecar.routing import compile_snapshot
from meshgate.sidecar.runtime import Runtime
from meshgate.sidecar.telemetry import Telemetry

from .conftest import Backends, Gateway, bundle, http_route, read_request, snapshot

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def test_span_tree_and_propagation(gateway: Gateway, backends: Backends, otlp: Any) -> None:
    seen: list[dict[bytes, bytes]] = []

    async def backend(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            _, headers, _ = await read_request(r)
            seen.append(headers)
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await w.drain()

    rec, port = otlp, otlp.port
    route = http_route("GET", "/pets/{id}", f"http://127.0.0.1:{backends.start(backend)}/pets/{{id}}")
    b = bundle([route])
    b["deployment"]["spec"]["apiSpec"]["resourcePolicy"] = {"allowCidrs": ["127.0.0.0/8"]}  # a phase to trace
    snap = snapshot(b)
    snap.stages[0].stage.spec.tracing_sample_ratio = 0.0  # only sampled parents are traced
    gateway.start(snap)
    runtime = Runtime()
    gateway.on_stop.append(runtime.close)
    gateway.holder.table = compile_snapshot(snap, runtime)
    telemetry = Telemetry(f"127.0.0.1:{port}", "sc-test")
    gateway.http.telemetry = telemetry

    def get(headers: dict[str, str]) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
        conn.request("GET", "/prod/pets/7", headers=headers)
        status = conn.getresponse().status
        conn.close()
        return status

    assert get({"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "baggage": "tenant=acme"}) == 200
    assert get({"traceparent": f"00-{'1' * 32}-{PARENT_ID}-00"}) == 200  # unsampled parent: no spans
    assert get({}) == 200  # no parent, ratio 0: no spans
    telemetry.flush()
    deadline = time.monotonic() + 10
    while len(rec.spans) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    telemetry.shutdown()
    by_name = {s.name: s for s in rec.spans}
    assert set(by_name) == {"GET /pets/{id}", "request phase", "integration"}, [s.name for s in rec.spans]
    server, phase, integ = by_name["GET /pets/{id}"], by_name["request phase"], by_name["integration"]
    assert {s.trace_id.hex() for s in rec.spans} == {TRACE_ID}
    assert server.parent_span_id.hex() == PARENT_ID
    assert phase.parent_span_id == server.span_id and integ.parent_span_id == server.span_id
    a = otlp.attrs(server)
    assert (
        a["http.response.status_code"] == 200
        and a["meshgate.stage"] == "prod"
        and a["meshgate.api"] == "default/pets"
    )
    assert otlp.attrs(integ)["server.address"] == "127.0.0.1"
    # the integration got the trace context, its parent being the integration span
    tp = seen[0][b"traceparent"].decode().split("-")
    assert tp[1] == TRACE_ID and tp[2] == integ.span_id.hex() and tp[3] == "01"
    assert seen[0][b"baggage"] == b"tenant=acme"
    assert b"traceparent" not in seen[2]  # untraced requests carry no trace headers


def test_stage_ratio_samples_without_a_parent(gateway: Gateway, backends: Backends, otlp: Any) -> None:
    async def backend(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            await read_request(r)
            w.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
            await w.drain()

    rec, port = otlp, otlp.port
    snap = snapshot(bundle([http_route("GET", "/x", f"http://127.0.0.1:{backends.start(backend)}/x")]))
    snap.stages[0].stage.spec.tracing_sample_ratio = 1.0
    gateway.start(snap)
    telemetry = Telemetry(f"127.0.0.1:{port}", "sc-test")
    gateway.http.telemetry = telemetry
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    conn.request("GET", "/prod/x")
    assert conn.getresponse().status == 503
    telemetry.flush()
    deadline = time.monotonic() + 10
    while not any(s.name == "GET /x" for s in rec.spans) and time.monotonic() < deadline:
        time.sleep(0.05)
    telemetry.shutdown()
    assert rec.spans, "no spans exported"
    server = next(s for s in rec.spans if s.name == "GET /x")
    assert (
        otlp.attrs(server)["http.response.status_code"] == 503 and server.status.code == 2
    )  # STATUS_CODE_ERROR


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("jaeger:4317", ("jaeger:4317", False)),
        ("http://jaeger:4317/", ("jaeger:4317", False)),
        ("https://collector.example:4317", ("collector.example:4317", True)),
    ],
)
def test_otlp_endpoint_scheme_picks_tls_for_traces_and_metrics(
    endpoint: str, expected: tuple[str, bool]
) -> None:
    assert otlp_target(endpoint) == expected
