"""Integration `function`: API Gateway's Lambda proxy contract against an in-cluster URL (the event
and response mapping live in `sidecar/function.py`), or with `proxy: false` its Lambda custom
integration: the request body (after its request template) is the payload, the result is the
response body, and the integration response is selected on a failed invocation's errorMessage."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshgate.sidecar.errors import GatewayError, internal
from meshgate.sidecar.function import FunctionError, FunctionIntegration, invoke, post
from meshgate.sidecar.integrations import CompileError, RouteSpec
from meshgate.sidecar.transform import Transform, compile_transform
from meshgate.sidecar.transform_responses import (
    IntegrationResponses,
    compile_responses,
    function_selection,
    is_proxy,
    request_body,
)

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
    responses: IntegrationResponses | None = None  # set: a non-proxy (custom) integration
    request: Transform | None = None  # its request template

    def start(self, ex: Exchange) -> None:
        ex.conn.loop.create_task(self._call(ex))

    async def _call(self, ex: Exchange) -> None:
        if self.runtime is None:
            ex.fail(
                GatewayError(500, "function integrations need the sidecar runtime", "API_CONFIGURATION_ERROR")
            )
            return
        if self.responses is not None:
            await self._custom(ex, self.responses)
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

    async def _custom(self, ex: Exchange, responses: IntegrationResponses) -> None:
        """The Lambda custom integration: payload in, result out, the response picked on errorMessage."""
        assert self.runtime is not None
        payload = request_body(self.request, ex.ctx)
        if isinstance(payload, GatewayError):
            ex.fail(payload)
            return
        try:
            status, raw = await post(self.runtime.session(), self.function.uri, payload, self.timeout_s)
        except FunctionError as exc:
            ex.fail(GatewayError(exc.status, exc.reason, "INTEGRATION_TIMEOUT" if exc.status == 504 else ""))
            return
        except Exception:
            log.exception("function integration failed (request %s)", ex.ctx.request_id)
            ex.fail(internal())
            return
        code = 200 if 200 <= status < 300 else status  # Lambda's invoke answers 200, failed or not
        answer = responses.answer(ex.ctx, function_selection(status, raw), code, [], raw)
        if isinstance(answer, GatewayError):
            ex.fail(answer)
            return
        ex.respond_full(*answer)


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
    if is_proxy(spec.integ):
        return FunctionCall(fn, spec.timeout_s(), spec.runtime)
    try:
        request = compile_transform(
            spec.integ, spec.variables, spec.binary_media_types, spec.template_language
        )
        responses = compile_responses(spec.integ, spec.variables, spec.template_language)
    except ValueError as exc:
        raise CompileError(f"{spec.where}: {exc}") from None
    assert responses is not None  # not a proxy: always some
    return FunctionCall(fn, spec.timeout_s(), spec.runtime, responses, request)
