"""OTLP/gRPC metrics export, shared by the sidecar and `meshgate control`: the metric families
we already keep for Prometheus become cumulative OTLP points (sums, gauges, explicit-bucket
histograms) sent to a collector's MetricsService every interval.

Built from our own counters rather than through the OpenTelemetry SDK's instruments, so the
request path records exactly what it recorded before (a few dict updates) and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import grpc
from meshgate.sidecar.metrics import BUCKETS, Families, Histogram, Labels
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

log = logging.getLogger("meshgate.otlp")

CUMULATIVE = metrics_pb2.AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE


def _attributes(labels: Labels) -> list[common_pb2.KeyValue]:
    return [common_pb2.KeyValue(key=k, value=common_pb2.AnyValue(string_value=v)) for k, v in labels]


def to_otlp(families: Families, start_ns: int, now_ns: int) -> list[metrics_pb2.Metric]:
    """Cumulative OTLP metrics (start = when counting began) from metric families."""
    out: list[metrics_pb2.Metric] = []
    for fam, samples in families:
        m = metrics_pb2.Metric(name=fam.name, description=fam.help, unit=fam.unit)
        for labels, value in samples:
            attrs = _attributes(labels)
            if isinstance(value, Histogram):
                m.histogram.aggregation_temporality = CUMULATIVE
                m.histogram.data_points.append(
                    metrics_pb2.HistogramDataPoint(
                        attributes=attrs,
                        start_time_unix_nano=start_ns,
                        time_unix_nano=now_ns,
                        count=sum(value.counts),
                        sum=value.sum,
                        bucket_counts=value.counts,
                        explicit_bounds=BUCKETS,
                    )
                )
                continue
            point = metrics_pb2.NumberDataPoint(attributes=attrs, time_unix_nano=now_ns)
            if isinstance(value, int):
                point.as_int = value
            else:
                point.as_double = value
            if fam.kind == "counter":
                point.start_time_unix_nano = start_ns
                m.sum.aggregation_temporality = CUMULATIVE
                m.sum.is_monotonic = True
                m.sum.data_points.append(point)
            else:
                m.gauge.data_points.append(point)
        if m.WhichOneof("data") is not None:
            out.append(m)
    return out


def otlp_target(endpoint: str) -> tuple[str, bool]:
    """`host:port`, `http://host:port` or `https://host:port` -> (target, tls)."""
    for scheme, tls in (("https://", True), ("http://", False)):
        if endpoint.startswith(scheme):
            return endpoint[len(scheme) :].rstrip("/"), tls
    return endpoint, False


class OtlpMetricsExporter:
    """Pushes `collect()` to an OTLP/gRPC collector every `interval_s` and once more on stop."""

    def __init__(
        self,
        endpoint: str,
        service: str,
        instance: str,
        collect: Callable[[], Families],
        interval_s: float = 10.0,
        timeout_s: float = 5.0,
    ) -> None:
        target, tls = otlp_target(endpoint)
        self.channel = (
            grpc.aio.secure_channel(target, grpc.ssl_channel_credentials())
            if tls
            else grpc.aio.insecure_channel(target)
        )
        self.stub = metrics_service_pb2_grpc.MetricsServiceStub(self.channel)  # type: ignore[no-untyped-call]
        self.resource = resource_pb2.Resource(
            attributes=_attributes((("service.name", service), ("service.instance.id", instance)))
        )
        self.collect = collect
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.start_ns = time.time_ns()
        self.exports = 0
        self.failures = 0
        self.unsupported = False
        self._task: asyncio.Task[None] | None = None

    def request(self) -> metrics_service_pb2.ExportMetricsServiceRequest:
        metrics = to_otlp(self.collect(), self.start_ns, time.time_ns())
        return metrics_service_pb2.ExportMetricsServiceRequest(
            resource_metrics=[
                metrics_pb2.ResourceMetrics(
                    resource=self.resource,
                    scope_metrics=[
                        metrics_pb2.ScopeMetrics(
                            scope=common_pb2.InstrumentationScope(name="meshgate"), metrics=metrics
                        )
                    ],
                )
            ]
        )

    async def export(self, timeout_s: float | None = None) -> bool:
        try:
            await self.stub.Export(self.request(), timeout=timeout_s or self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            self.failures += 1
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                # a traces-only collector (Jaeger): say so once, not every interval
                self.unsupported = True
                log.warning(
                    "OTLP endpoint does not accept metrics (UNIMPLEMENTED); metrics export is off "
                    "(point --otlp-metrics-endpoint at a collector that does)"
                )
            else:
                # cumulative points: the next export carries everything this one would have
                log.warning("OTLP metrics export failed: %s %s", exc.code().name, exc.details() or "")
            return False
        self.exports += 1
        return True

    async def _run(self) -> None:
        while not self.unsupported:
            await asyncio.sleep(self.interval_s)
            await self.export()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            if not self.unsupported:
                await self.export(min(self.timeout_s, 2.0))  # shutting down: do not wait long
        await self.channel.close()
