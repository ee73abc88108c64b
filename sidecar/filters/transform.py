"""Filter: the route's mapping templates. Request side: the body template for the request's content
type (or a 415, or the body untouched: passthrough, binary media types). Response side: header
mapping, and the response template of the integration response's content type."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshgate.sidecar.errors import GatewayError
from meshgate.sidecar.transform import Rendered, TemplateLimit, Transform, select
from meshgate.sidecar.transform_responses import template_context

if TYPE_CHECKING:
    from meshgate.sidecar.context import RequestContext
    from meshgate.sidecar.filters import Decision

HeaderList = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class TransformFilter:
    name = "transform"

    transform: Transform
    needs_body: bool

    @classmethod
    def of(cls, transform: Transform) -> TransformFilter:
        return cls(transform, transform.needs_request_body)

    def request(self, ctx: RequestContext) -> Decision:
        if not self.needs_body:
            return None  # header and query changes only: applied by the integration request
        tr = self.transform
        ctype = ctx.content_type.decode("latin-1")
        if tr.binary_media_types and tr.is_binary(ctype):
            return None  # binary media type: the body goes through untouched
        chosen = select(tr.request_templates, ctype, tr.passthrough)
        if chosen is False:
            return GatewayError(
                415,
                f"no mapping template for content type {ctype or 'none'!r}",
                gateway_type="UNSUPPORTED_MEDIA_TYPE",
            )
        if chosen is None or chosen is True:
            return None
        try:
            out = chosen.render(
                ctx.whole_body(),
                ctx.template_params,
                functools.partial(template_context, ctx),
                tr.stage_variables,
                ctx.body_doc,
            )
        except TemplateLimit as exc:
            return GatewayError(
                500, f"request mapping template: {exc}", gateway_type="API_CONFIGURATION_ERROR"
            )
        if isinstance(out, Rendered) and out.overrides.headers:  # VTL's $context.requestOverride.header
            ctx.upstream_headers = ctx.upstream_headers + out.overrides.headers
        ctx.body_chunks = [out]
        ctx.content_length = len(out)
        ctx.chunked = False
        new_type = chosen.content_type_header
        if new_type != ctx.content_type:
            raw = ctx.raw_headers
            raw[:] = [(n, v) for n, v in raw if n.lower() != b"content-type"]
            raw.append((b"content-type", new_type))
            ctx.content_type = new_type
        return None

    # ------------------------------------------------------------------ response side
    @property
    def on_response(self) -> bool:
        """Whether it changes integration responses at all."""
        tr = self.transform
        return bool(tr.response_templates or tr.response_headers or tr.remove_response_headers)

    def response_head(self, ctx: RequestContext, headers: HeaderList) -> HeaderList:
        return self.transform.map_response_headers(headers, ctx.request_id, ctx.stage)

    def holds_response(self, is_head: bool) -> bool:
        """Whether the integration response is held until its template has run."""
        return bool(self.transform.response_templates) and not is_head

    def render_response(
        self, ctx: RequestContext, headers: HeaderList, body: bytes
    ) -> tuple[HeaderList, bytes, int | None] | GatewayError:
        """The headers, body and status (None = the integration's) the client gets."""
        tr = self.transform
        ctype = next((v for n, v in headers if n.lower() == b"content-type"), b"").decode("latin-1")
        chosen = None if tr.is_binary(ctype) else select(tr.response_templates, ctype, "WHEN_NO_MATCH")
        if chosen is None or isinstance(chosen, bool):
            return headers, body, None

        def params() -> dict[str, dict[str, str]]:
            return {"header": {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers}}

        try:
            body = chosen.render(body, params, functools.partial(template_context, ctx), tr.stage_variables)
        except TemplateLimit as exc:
            return GatewayError(
                500, f"response mapping template: {exc}", gateway_type="API_CONFIGURATION_ERROR"
            )
        out = [(n, v) for n, v in headers if n.lower() != b"content-type"]
        out.append((b"content-type", chosen.content_type_header))
        if not isinstance(body, Rendered):
            return out, body, None
        over = body.overrides  # VTL's $context.responseOverride.status / .header
        names = {n for n, _ in over.headers}
        out = [(n, v) for n, v in out if n.lower() not in names]
        out.extend(over.headers)
        return out, bytes(body), over.status
