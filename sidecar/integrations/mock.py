"""Integration `mock`: a response answered by the sidecar. A fixed one (`mock`), or API Gateway's:
the request template's `{"statusCode": N}` selects an integration response, whose parameters and
response template (VTL or Jinja) make the answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshgate.sidecar import jsoncodec
from meshgate.sidecar.errors import GatewayError
from meshgate.sidecar.integrations import CompileError, RouteSpec
from meshgate.sidecar.transform import Transform, compile_transform
from meshgate.sidecar.transform_responses import IntegrationResponses, compile_responses, request_body

if TYPE_CHECKING:
    from meshgate.sidecar.exchange import Exchange


@dataclass(frozen=True, slots=True)
class MockIntegration:
    kind = "mock"
    needs_body = False
    upgrade = False

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def start(self, ex: Exchange) -> None:
        ex.respond_full(self.status, self.headers, self.body)


@dataclass(frozen=True, slots=True)
class TemplatedMock:
    """API Gateway's mock: the status comes from the request template, the answer from the responses."""

    kind = "mock"
    upgrade = False

    request: Transform | None
    responses: IntegrationResponses
    status: int  # without a request template
    body: bytes  # the integration response's body (API Gateway's is empty)
    headers: tuple[tuple[bytes, bytes], ...]  # mock.headers: added where the answer has none of the name

    @property
    def needs_body(self) -> bool:
        return self.request is not None and bool(self.request.request_templates)

    def start(self, ex: Exchange) -> None:
        status = self.status
        if self.request is not None and self.request.request_templates:
            out = request_body(self.request, ex.ctx)
            if isinstance(out, GatewayError):
                ex.fail(out)
                return
            found = _status_code(out)
            if found is None:
                ex.fail(
                    GatewayError(
                        500,
                        "mock integration: the request template gave no integer statusCode",
                        "API_CONFIGURATION_ERROR",
                    )
                )
                return
            status = found
        answer = self.responses.answer(ex.ctx, str(status), status, [], self.body)
        if isinstance(answer, GatewayError):
            ex.fail(answer)
            return
        code, headers, body = answer
        names = {n for n, _ in headers}
        headers.extend(h for h in self.headers if h[0] not in names)
        ex.respond_full(code, headers, body)


def _status_code(rendered: bytes) -> int | None:
    try:
        doc = jsoncodec.loads(rendered)
    except (ValueError, RecursionError):
        return None
    code = doc.get("statusCode") if isinstance(doc, dict) else None
    if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
        return None
    return code


def compile_mock(spec: RouteSpec) -> MockIntegration | TemplatedMock:
    integ = spec.integ
    mock = integ.mock
    headers = tuple(
        (k.lower().encode("latin-1"), v.encode("latin-1", "replace")) for k, v in sorted(mock.headers.items())
    )
    if integ.responses or integ.request_templates or integ.response_templates or integ.response_parameters:
        try:
            request = compile_transform(integ, spec.variables, (), spec.template_language)
            responses = compile_responses(integ, spec.variables, spec.template_language)
        except ValueError as exc:
            raise CompileError(f"{spec.where}: {exc}") from None
        assert responses is not None  # a mock maps its answer as a non-proxy integration does
        return TemplatedMock(request, responses, mock.status or 200, mock.body.encode(), headers)
    if not any(k == b"content-type" for k, _ in headers) and mock.body:
        headers = ((b"content-type", b"application/json"), *headers)
    return MockIntegration(mock.status or 200, headers, mock.body.encode())
