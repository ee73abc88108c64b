"""The admin port's /stats and /config_dump (every secret-bearing field redacted), OTLP metrics from
a `meshgate sidecar` process into a real OTLP/gRPC MetricsService receiver, and a traces-only
collector turning the metrics export off."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor
from meshgate.sidecar.admin import AdminState, config_dump
from meshgate.sidecar.config_client import ConfigClient
from meshgate.sidecar.metrics import Metrics
from meshgate.sidecar.otlp_metrics import OtlpMetricsExporter
from meshgate.sidecar.redact import REDACTED, SECRET_FIELDS
from meshgate.sidecar.routing import TableHolder
from meshgate.v1 import control_pb2

from .conftest import LoopThread, bundle, mock_route, snapshot
from .test_main import get, serve_file

# Secret values planted in every field SECRET_FIELDS names; none may survive /config_dump.
SECRETS = {
    "api key hash": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "stage variable": "stage-password-1",
    "canary variable": "canary-token-2",
    "literal header": "'Bearer static-token-3'",
    "integration uri password": "uri-pass-4",
    "integration uri query": "query-key-5",
    "authorizer uri password": "auth-pass-6",
    "jwks uri query": "jwks-token-7",
    "annotation": "annotation-secret-8",
    "last applied": '{"spec": {"value": "raw-api-key-9"}}',
    "websocket route literal": "'ws-secret-10'",
}


def secret_snapshot() -> control_pb2.Snapshot:
    route = mock_route("GET", "/hello", '"hi"')
    route["integration"]["requestParameters"] = {
        "integration.request.header.Authorization": SECRETS["literal header"],
        "integration.request.header.X-Id": "method.request.path.id",  # a reference: kept
    }
    http = {
        "method": "GET",
        "path": "/up",
        "integration": {
            "type": "http",
            "uri": f"http://svc:{SECRETS['integration uri password']}@10.0.0.1/x?api_key={SECRETS['integration uri query']}&page=2",
        },
    }
    ws = {
        "method": "GET",
        "path": "/chat",
        "integration": {
            "type": "websocket_api",
            "websocketRoutes": {
                "$default": {
                    "type": "http",
                    "uri": "http://10.0.0.1/ws",
                    "requestParameters": {
                        "integration.request.header.X-Api-Key": SECRETS["websocket route literal"]
                    },
                }
            },
        },
    }
    b = bundle(
        [route, http, ws],
        variables={"backend": "10.0.0.1", "dbPassword": SECRETS["stage variable"]},
        canary={"deployment": 2, "percent": 10, "variables": {"apiToken": SECRETS["canary variable"]}},
        api_spec={
            "authorizers": [
                {
                    "name": "req",
                    "type": "request",
                    "uri": f"http://auth:{SECRETS['authorizer uri password']}@10.0.0.2/a",
                },
                {
                    "name": "jwt",
                    "type": "jwt",
                    "jwksUri": f"https://idp/.well-known/jwks.json?token={SECRETS['jwks uri query']}",
                },
            ]
        },
    )
    b["api"]["metadata"]["annotations"] = {
        "example.com/api-token": SECRETS["annotation"],
        "kubectl.kubernetes.io/last-applied-configuration": SECRETS["last applied"],
        "example.com/owner": "team-pets",
    }
    snap = snapshot(b, version="v-secret")
    key = snap.api_keys.add()
    key.metadata.name = "partner"
    key.spec.usage_plan = "gold"
    key.spec.value_sha256 = SECRETS["api key hash"]
    return snap


def test_config_dump_redacts_every_secret_bearing_field() -> None:
    client = ConfigClient("127.0.0.1:1", control_pb2.Node(id="sc-1"), lambda s: None)
    snap = secret_snapshot()
    client.applied, client.applied_from = snap, "file"
    doc = config_dump(AdminState(client, TableHolder(), "sc-1"))
    assert doc is not None and doc["node"] == "sc-1" and doc["version"] == "v-secret"
    text = json.dumps(doc)
    for what, value in SECRETS.items():
        plain = value.strip("'")
        assert plain not in text and json.dumps(plain)[1:-1] not in text, f"{what} leaked"
    stage = doc["stages"][0]
    assert stage["stage"]["spec"]["variables"] == {"backend": "10.0.0.1", "dbPassword": REDACTED}
    assert stage["stage"]["spec"]["canary"]["variables"] == {"apiToken": REDACTED}
    spec = stage["deployment"]["spec"]["apiSpec"]
    params = spec["routes"][0]["integration"]["requestParameters"]
    assert params["integration.request.header.Authorization"] == REDACTED
    assert params["integration.request.header.X-Id"] == "method.request.path.id"
    uri = spec["routes"][1]["integration"]["uri"]
    assert uri.startswith("http://svc:") and "10.0.0.1/x?" in uri and "page=2" in uri
    assert spec["authorizers"][0]["uri"] == f"http://auth:{REDACTED}@10.0.0.2/a"
    annotations = stage["api"]["metadata"]["annotations"]
    assert annotations["example.com/owner"] == "team-pets"
    assert doc["apiKeys"][0]["spec"]["valueSha256"] == REDACTED
    assert client.applied.api_keys[0].spec.value_sha256 == SECRETS["api key hash"]  # a copy was redacted


# Fields whose names look secret but hold none: names of things, flags, references, response-side mappings.
NOT_SECRET = {
    ("meshgate.v1.Route", "api_key_required"),
    ("meshgate.v1.Route", "cache_key_parameters"),
    ("meshgate.v1.Route", "cache_shared"),
    ("meshgate.v1.Route", "authorization_scopes"),
    ("meshgate.v1.Route", "authorizer"),
    ("meshgate.v1.Route", "required_parameters"),
    ("meshgate.v1.Integration", "response_parameters"),
    ("meshgate.v1.IntegrationResponse", "response_parameters"),  # what the client is sent anyway
    ("meshgate.v1.Integration", "remove_request_parameters"),
    ("meshgate.v1.CanarySettings", "sticky_cookie"),
    ("meshgate.v1.Cors", "allow_credentials"),
    ("meshgate.v1.StageSpec", "secret_variables"),  # names; their values are redacted as "declared"
}
LOOKS_SECRET = re.compile(
    r"key|secret|token|passw|credential|auth|cookie|hash|sha|cert|private|variables|uri|annotations|parameters",
    re.I,
)


def _messages(desc: Descriptor, seen: set[str]) -> list[Descriptor]:
    if desc.full_name in seen:
        return []
    seen.add(desc.full_name)
    out = [desc]
    for fd in desc.fields:
        if fd.message_type is not None:
            out += _messages(fd.message_type, seen)
    return out


def test_every_field_that_looks_secret_is_classified() -> None:
    """A new proto field named like a secret (or holding URIs, variables, parameters) fails here until
    it is in SECRET_FIELDS or NOT_SECRET. Message-typed fields are checked through their own fields."""
    messages = [m for m in _messages(control_pb2.Snapshot.DESCRIPTOR, set()) if not m.GetOptions().map_entry]
    unclassified = []
    for m in messages:
        for fd in m.fields:
            key = (m.full_name, fd.name)
            scalar_or_map = fd.message_type is None or fd.message_type.GetOptions().map_entry
            if scalar_or_map and LOOKS_SECRET.search(fd.name):
                if key not in SECRET_FIELDS and key not in NOT_SECRET:
                    unclassified.append(key)
    assert not unclassified, f"classify these fields in meshgate.sidecar.redact.SECRET_FIELDS: {unclassified}"
    names = {m.full_name for m in messages}
    assert all(msg in names for msg, _ in SECRET_FIELDS)  # no stale entries


def parse_stats(text: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in text.splitlines() if line)


def test_stats_config_dump_and_otlp_metrics_from_a_sidecar(tmp_path: Path, otlp: Any) -> None:
    snap = snapshot(
        bundle([mock_route("GET", "/hello", '"hi"')], variables={"apiKey": "k-123", "region": "eu"}),
        version="v-stats",
    )
    proc, port, admin = serve_file(
        tmp_path,
        snap,
        *(
            "--node-id",
            "sc-stats",
            "--otlp-endpoint",
            f"127.0.0.1:{otlp.port}",
            "--otlp-metrics-interval",
            "0.2",
        ),
    )
    try:
        assert proc.stdout is not None and "listening" in proc.stdout.readline()
        for _ in range(3):
            assert get(port, "/prod/hello")[0] == 200
        assert get(port, "/prod/nope")[0] == 404
        status, body = get(admin, "/stats")
        stats = parse_stats(body.decode())
        assert status == 200
        assert stats["stage.default/pets.prod.requests"] == "3" and stats["stage.-.-.4xx_errors"] == "1"
        assert stats["config.version"] == "v-stats" and stats["config.source"] == "file"
        assert stats["config.nacks"] == "0" and stats["server.ready"] == "1" and stats["config.stages"] == "1"
        assert stats["server.websockets_active"] == "0" and "server.connections_active" in stats
        assert list(stats) == sorted(stats)
        as_json = json.loads(get(admin, "/stats?format=json")[1])
        assert {s["name"]: s["value"] for s in as_json["stats"]}["stage.default/pets.prod.requests"] == 3
        dump = json.loads(get(admin, "/config_dump")[1])
        assert dump["node"] == "sc-stats" and dump["version"] == "v-stats"
        assert dump["stages"][0]["stage"]["spec"]["variables"] == {"apiKey": REDACTED, "region": "eu"}

        route = {"api": "default/pets", "stage": "prod", "route": "/hello"}

        def point(name: str) -> Any:
            m = otlp.metrics().get(name)
            data = getattr(m, m.WhichOneof("data")) if m is not None else None
            pts = [p for p in data.data_points if otlp.attrs(p) == route] if data is not None else []
            return pts[0] if pts else None

        otlp.wait(lambda: (p := point("meshgate_latency")) is not None and p.count == 3)
        requests = otlp.metrics()["meshgate_requests"]
        assert requests.sum.is_monotonic and requests.sum.aggregation_temporality == 2  # CUMULATIVE
        assert point("meshgate_requests").as_int == 3
        latency = point("meshgate_latency")
        assert otlp.metrics()["meshgate_latency"].unit == "s"
        assert (
            sum(latency.bucket_counts) == 3 and len(latency.bucket_counts) == len(latency.explicit_bounds) + 1
        )
        # the same numbers Prometheus sees
        text = get(admin, "/metrics")[1].decode()
        prom_sum = float(
            re.search(
                r'meshgate_latency_seconds_sum\{api="default/pets",stage="prod",route="/hello"\} (\S+)', text
            )[1]  # type: ignore[index]
        )
        assert abs(prom_sum - latency.sum) < 1e-5 and 0 < latency.sum < 1
        resource = otlp.attrs(otlp.metric_exports[-1].resource_metrics[0].resource)
        assert resource == {"service.name": "meshgate-sidecar", "service.instance.id": "sc-stats"}
        # the collector records an export before the sidecar has read the reply and counted it
        otlp.wait(lambda: int(parse_stats(get(admin, "/stats")[1].decode())["otlp.metrics_exports"]) >= 1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_otlp_metrics_export_stops_at_a_traces_only_collector(lt: LoopThread) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(1))  # no MetricsService: UNIMPLEMENTED, like Jaeger
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()

    async def go() -> OtlpMetricsExporter:
        exporter = OtlpMetricsExporter(
            f"http://127.0.0.1:{port}", "meshgate-sidecar", "sc-1", Metrics().families, 0.05
        )
        exporter.start()
        task = exporter._task
        assert task is not None
        # the first UNIMPLEMENTED turns it off: its loop ends (no later attempt can come)
        await asyncio.wait_for(asyncio.shield(task), 10)
        await exporter.stop()
        return exporter

    try:
        exporter = lt.run(go())
    finally:
        server.stop(0)
    assert exporter.unsupported and exporter.failures == 1 and exporter.exports == 0  # said once, then off


def test_not_ready_until_the_listener_is_open() -> None:
    """A persisted snapshot is applied before the HTTP listener is bound: until it is, /ready says
    503 (a kubelet would otherwise send traffic to a port that refuses it)."""
    from meshgate.sidecar.admin import routes
    from meshgate.sidecar.http1 import HttpServer

    client = ConfigClient("127.0.0.1:1", control_pb2.Node(id="sc-1"), lambda s: None)
    client.applied = secret_snapshot()
    http = HttpServer()
    ready = routes(AdminState(client, TableHolder(), "sc-1", http=http))["/ready"]
    assert ready({})[0] == 503 and b"listener" in ready({})[2]
    http.server = object()  # type: ignore[assignment]  # serve_http bound it
    assert ready({})[0] == 200
