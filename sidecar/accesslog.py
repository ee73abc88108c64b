"""Access logs: one line per request for stages that ask for it, JSON by default or a `$context` format."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Mapping
from typing import TextIO

from meshgate.sidecar.errors import GatewayError

_VAR = re.compile(r"\$context\.([A-Za-z]+(?:\.[A-Za-z]+)*)")  # a dot after a name is text
# a value cannot start a line of its own (an upstream's gRPC message may hold a decoded newline)
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}


def access_line(fmt: str, ctx: Mapping[str, object]) -> str:
    """`json` (or empty) gives a JSON object; anything else substitutes `$context.NAME` variables."""
    if fmt.strip().lower() in ("", "json"):
        return json.dumps(ctx, separators=(",", ":"))
    return _VAR.sub(lambda m: str(ctx.get(m.group(1), "-")).translate(_CONTROLS), fmt)


class AccessLog:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def write(self, fmt: str, ctx: Mapping[str, object]) -> None:
        self.stream.write(access_line(fmt, ctx) + "\n")


def error_fields(err: GatewayError) -> dict[str, object]:
    """API Gateway's `$context.error.*` for a refused or failed request, with the full reason."""
    return {
        "error.message": err.message,
        "error.responseType": err.response_type,
        "error.reason": err.reason,
    }


def context(
    *,
    request_id: str,
    source_ip: str,
    method: str,
    path: str,
    stage: str,
    api: str,
    route: str,
    status: int,
    latency_ms: float,
    integration_latency_ms: float,
    principal: str,
    deployment: int,
) -> dict[str, object]:
    return {
        "requestId": request_id,
        "requestTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "identity.sourceIp": source_ip,
        "httpMethod": method,
        "path": path,
        "stage": stage,
        "api": api,
        "resourcePath": route,
        "status": status,
        "responseLatency": round(latency_ms, 3),
        "integrationLatency": round(integration_latency_ms, 3),
        "authorizer.principalId": principal,
        "deploymentId": deployment,
    }
