"""Integration `function`: API Gateway's Lambda proxy contract against an in-cluster URL
(the event and response mapping live in `sidecar/function.py`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshgate.sidecar.errors import GatewayError, internal
from meshgate.sidecar.function import FunctionError, FunctionIntegration, invoke
from meshgate.sidecar.integrations import CompileError, RouteSpec

if TYPE_CHECKING:
    from meshgate.sidecar.exchange import Exchange
    from meshgate.sidecar.runtime import Runtime

log = logging.getLogger("meshgate.sidecar.function")


@dataclass(frozen=True, slots=True)
class FunctionCall:
    kind = "function"
    needs_body = True
    upgrade = False

    function: FunctionIntegration
    timeout_s: float
    runtime: Runtime | None

    def start(self, ex: Exchange) -> None:
        ex.conn.loop.create_task(self._call(ex))

    async def _call(self, ex: Exchange) -> None:
        if self.runtime is None:
            ex.fail(
                GatewayError(500, "function integrations need the sidecar runtime", "API_CONFIGURATION_ERROR")
            )
            return
        try:
            resp = await invoke(self.runtime.session(), self.function, ex.ctx, self.timeout_s)
        except FunctionError as exc:
            kind = exc.gateway_type or ("INTEGRATION_TIMEOUT" if exc.status == 504 else "INTEGRATION_FAILURE")
            ex.fail(GatewayError(exc.status, exc.reason, kind))
            return
        except Exception:
            log.exception("function integration failed (request %s)", ex.ctx.request_id)
            ex.fail(internal())
            return
        ex.respond_full(resp.status, resp.headers, resp.body)


def compile_function(spec: RouteSpec) -> FunctionCall:
    uri = spec.uri()
    if not uri.startswith("http://"):
        raise CompileError(f"{spec.where}: function integrations take an http:// URL, got {spec.integ.uri!r}")
    version = spec.integ.payload_format_version or "1.0"
    if version not in ("1.0", "2.0"):
        raise CompileError(f"{spec.where}: payloadFormatVersion must be 1.0 or 2.0")
    route = spec.route
    fn = FunctionIntegration(
        uri,
        version,
        route.path,
        f"{route.method.upper()} {route.path}",
        spec.stage,
        dict(spec.variables),
        spec.binary_media_types,
    )
    return FunctionCall(fn, spec.timeout_s(), spec.runtime)
