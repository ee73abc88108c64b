"""The control plane's metrics the user's way (README "Observability"): `meshgate control
--metrics-listen` serves Prometheus text and `--otlp-endpoint` pushes the same families to a real
OTLP/gRPC receiver, while sidecar processes connect, get pushes on `meshgate deploy` and ACK, and a
CLI call with a wrong token is refused."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path
from typing import Any

from meshgate.control.etcd_local import LocalEtcd, free_port
from meshgate.sidecar.credentials import default_state_dir

from .harness import NO_DRAIN, mesh, wait_until

CONFIG = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {name: pets}
spec:
  selector: {matchLabels: {app: pets}}
  routes:
    - {method: GET, path: /health, integration: {type: mock, mock: {body: '"ok"'}}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {name: prod}
spec: {api: pets}
"""

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$")


def scrape(port: int) -> dict[str, float]:
    """Prometheus text as {'name{labels}': value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200 and resp.headers["content-type"].startswith("text/plain")
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            m = _SAMPLE.match(line)
            assert m, f"not a Prometheus sample line: {line!r}"
            out[m.group(1)] = float(m.group(2))
    return out


def otlp_value(otlp: Any, name: str) -> float | None:
    metric = otlp.metrics().get(name)
    if metric is None:
        return None
    which = metric.WhichOneof("data")
    points = getattr(metric, which).data_points
    if which == "histogram":
        return float(sum(p.count for p in points))
    return float(sum(p.as_int if p.WhichOneof("value") == "as_int" else p.as_double for p in points))


def test_control_metrics_in_prometheus_and_at_the_collector(
    etcd: LocalEtcd, tmp_path: Path, otlp: Any
) -> None:
    with mesh(etcd.endpoint, tmp_path) as m:
        port = free_port()
        m.start_control(
            extra=(
                "--metrics-listen",
                f"127.0.0.1:{port}",
                "--otlp-endpoint",
                f"127.0.0.1:{otlp.port}",
                "--otlp-metrics-interval",
                "0.3",
            )
        )
        m.apply(CONFIG)
        m.cli("deploy", "pets", "--stage", "prod")
        sc1 = m.start_sidecar("sc-1", extra=NO_DRAIN)
        m.start_sidecar("sc-2", extra=NO_DRAIN)

        def settled(sidecars: int, acks: int) -> dict[str, float] | None:
            s = scrape(port)
            ok = (
                s["meshgate_control_connected_sidecars"] == sidecars
                and s["meshgate_control_acks_total"] >= acks
            )
            return s if ok else None

        first = wait_until(lambda: settled(2, 2), what="two sidecars connected and ACKed")
        assert first["meshgate_control_pushes_total"] >= 2 and first["meshgate_control_nacks_total"] == 0
        assert first["meshgate_control_config_apply_latency_seconds_count"] >= 2

        # a deploy is pushed to both sidecars and both ACK it
        m.cli("deploy", "pets", "--stage", "prod")
        after = wait_until(
            lambda: settled(2, first["meshgate_control_acks_total"] + 2), what="the deploy ACKed by both"
        )
        assert after["meshgate_control_pushes_total"] >= first["meshgate_control_pushes_total"] + 2
        assert (
            after["meshgate_control_config_apply_latency_seconds_count"]
            >= first["meshgate_control_config_apply_latency_seconds_count"] + 2
        )

        # an admin call with a token control does not know is refused, logged and counted
        ca = default_state_dir() / "ca.crt"
        refused = m.cli(
            "--control", f"127.0.0.1:{m.token_port}", "--ca-file", str(ca), "--token", "guessed", "get", "stages",
            check=False,
        )  # fmt: skip
        assert refused.returncode == 1 and "unauthenticated" in refused.stderr.lower()
        key = 'meshgate_control_refused_calls_total{method="Get",reason="unauthenticated"}'
        assert scrape(port)[key] == 1

        sc1.proc.stop()
        wait_until(lambda: settled(1, 0), what="one sidecar left")

        # the same families at the collector, with the control's resource
        otlp.wait(lambda: otlp_value(otlp, "meshgate_control_connected_sidecars") == 1)
        otlp.wait(lambda: (otlp_value(otlp, "meshgate_control_refused_calls") or 0) >= 1)
        assert (otlp_value(otlp, "meshgate_control_acks") or 0) >= 4
        assert (otlp_value(otlp, "meshgate_control_config_apply_latency") or 0) >= 4
        resource = otlp.attrs(otlp.metric_exports[-1].resource_metrics[0].resource)
        assert resource["service.name"] == "meshgate-control"
