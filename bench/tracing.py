"""Throughput with tracing at sampling 1.0 and 0.01 as a ratio to tracing off (run by bench/run.py).
With an OTLP endpoint the sidecar also exports its metrics (every 10 s), as it does in production."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

RECEIVER = r"""
import sys, time
from concurrent import futures
import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
class R(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        return trace_service_pb2.ExportTraceServiceResponse()
class M(metrics_service_pb2_grpc.MetricsServiceServicer):
    def Export(self, request, context):
        return metrics_service_pb2.ExportMetricsServiceResponse()
s = grpc.server(futures.ThreadPoolExecutor(2))
trace_service_pb2_grpc.add_TraceServiceServicer_to_server(R(), s)
metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(M(), s)
s.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
s.start()
print("ready", flush=True)
s.wait_for_termination()
"""


def run(work: Path, backend_port: int, seconds: int, connections: int, bench: Any) -> dict[str, float]:
    from google.protobuf import json_format

    otlp = bench.free_port()
    script = work / "otlp_receiver.py"
    script.write_text(RECEIVER)
    recv = subprocess.Popen([sys.executable, str(script), str(otlp)], stdout=subprocess.PIPE, text=True)
    assert recv.stdout is not None and recv.stdout.readline().strip() == "ready"
    procs = []
    targets: dict[str, str] = {}
    try:
        for name, ratio, endpoint in (("off", 0.0, None), ("0.01", 0.01, otlp), ("1.0", 1.0, otlp)):
            snap = bench.bench_snapshot(backend_port)
            snap.stages[0].stage.spec.tracing_sample_ratio = ratio
            path = work / f"snapshot-trace-{name}.json"
            path.write_text(json_format.MessageToJson(snap))
            port, admin = bench.free_port(), bench.free_port()
            extra = ("--otlp-endpoint", f"127.0.0.1:{endpoint}") if endpoint else ()
            cmd = bench.sidecar_cmd(path, port, admin, *extra)
            procs.append(bench.start(cmd, work / f"sidecar-trace-{name}.log"))
            bench.wait_http(f"http://127.0.0.1:{admin}/ready")
            targets[name] = f"http://127.0.0.1:{port}/prod/hello"
        for url in targets.values():
            bench.wrk(url, 2, connections)
        rps = {name: bench.wrk(url, seconds, connections)["rps"] for name, url in targets.items()}
        return {
            **{f"rps_{k}": v for k, v in rps.items()},
            "ratio_0.01": rps["0.01"] / rps["off"],
            "ratio_1.0": rps["1.0"] / rps["off"],
        }
    finally:
        for p in procs:
            bench.stop(p)
        recv.terminate()
        recv.wait(10)


def report(res: dict[str, float]) -> None:
    print("\nTracing (GET 12B through the sidecar, OTLP/gRPC export to a local receiver)")
    print(
        f"  off {res['rps_off']:.0f} req/s   sampled 0.01 {res['rps_0.01']:.0f} ({res['ratio_0.01']:.2f}x)"
        f"   sampled 1.0 {res['rps_1.0']:.0f} ({res['ratio_1.0']:.2f}x)"
    )


if __name__ == "__main__":
    print(json.dumps({"usage": "run through bench/run.py"}))
