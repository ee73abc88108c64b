"""Shared fixtures: a real etcd process per test session; a real OTLP/gRPC receiver on loopback."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from meshgate.control.etcd_local import LocalEtcd
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@pytest.fixture(scope="session", autouse=True)
def control_state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private $XDG_STATE_HOME for the session: the `meshgate control` processes tests start keep
    their CA, bootstrap token and CLI credential there, where the CLI and sidecars look by default
    (as on a user's machine), and nothing is written to the real home."""
    home = tmp_path_factory.mktemp("state-home")
    old = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = old


@pytest.fixture(scope="session")
def etcd() -> Iterator[LocalEtcd]:
    """A real etcd on loopback; tests isolate themselves with their own key prefix."""
    with LocalEtcd() as server:
        yield server


class OtlpReceiver(
    trace_service_pb2_grpc.TraceServiceServicer, metrics_service_pb2_grpc.MetricsServiceServicer
):  # type: ignore[misc]
    """The collector's TraceService and MetricsService: keeps every span and every metrics export."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.metric_exports: list[Any] = []  # ExportMetricsServiceRequest, in arrival order
        self.port = 0
        self.lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:
        with self.lock:
            if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
                for rs in request.resource_spans:
                    for ss in rs.scope_spans:
                        self.spans.extend(ss.spans)
                return trace_service_pb2.ExportTraceServiceResponse()
            self.metric_exports.append(request)
            return metrics_service_pb2.ExportMetricsServiceResponse()

    def wait(self, pred: Callable[[], bool], timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError("the OTLP receiver did not get what was expected in time")
            time.sleep(0.02)

    @staticmethod
    def attrs(obj: Any) -> dict[str, Any]:
        """OTLP attributes (of a span, a data point, a resource) as a plain dict."""
        out: dict[str, Any] = {}
        for kv in obj.attributes:
            which = kv.value.WhichOneof("value")
            out[kv.key] = getattr(kv.value, which) if which else None
        return out

    def metrics(self) -> dict[str, Any]:
        """The newest export of each metric, by name (cumulative: the newest has everything)."""
        out: dict[str, Any] = {}
        with self.lock:
            for req in self.metric_exports:
                for rm in req.resource_metrics:
                    for sm in rm.scope_metrics:
                        for m in sm.metrics:
                            out[m.name] = m
        return out


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(receiver, server)
    receiver.port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield receiver
    server.stop(0)
