"""Transforms compiled per route: the request and response templates chosen by content type,
passthrough behaviour, header/query removal and response header mapping (API Gateway's
integration request/response). The templates themselves are `templates.py`."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshgate.sidecar.templates import BodyTemplate

MAX_INPUT = 10 * 1024 * 1024  # the largest body a template (request or response) is given


def media_type_matches(patterns: tuple[str, ...], content_type: str) -> bool:
    """Whether a Content-Type matches one of `binaryMediaTypes` (exact, `type/*` or `*/*`)."""
    media = content_type.split(";", 1)[0].strip().lower()
    for pattern in patterns:
        p = pattern.lower()
        if p == "*/*" or p == media or (p.endswith("/*") and media.startswith(p[:-1])):
            return True
    return False


class TemplateLimit(Exception):
    """A template exceeded its step, time or size budget, or failed."""


def select(
    templates: Mapping[str, BodyTemplate], content_type: str, behavior: str
) -> BodyTemplate | bool | None:
    """The template for a content type; None = pass the body through; False = refuse (415)."""
    t = templates.get(content_type)  # the common case: the header is exactly the media type
    if t is not None:
        return t
    media = (content_type.split(";", 1)[0].strip().lower()) or "application/json"
    t = templates.get(media)
    if t is not None:
        return t
    behavior = (behavior or "WHEN_NO_MATCH").upper()
    if behavior == "NEVER":
        return False
    if behavior == "WHEN_NO_TEMPLATES" and templates:
        return False
    return None


@dataclass(frozen=True)
class Transform:
    """Everything one route changes on the way to the integration and back, compiled per snapshot."""

    request_templates: Mapping[str, BodyTemplate]
    passthrough: str
    remove_request_headers: frozenset[bytes]
    remove_request_query: frozenset[str]
    response_headers: tuple[tuple[bytes, str, str], ...]  # (name, kind header|const, value)
    remove_response_headers: frozenset[bytes]
    response_templates: Mapping[str, BodyTemplate]
    stage_variables: Mapping[str, str]
    binary_media_types: tuple[str, ...] = ()

    def is_binary(self, content_type: str) -> bool:
        """Binary media types pass through untouched, whatever the templates say."""
        return media_type_matches(self.binary_media_types, content_type)

    @functools.cached_property
    def needs_request_body(self) -> bool:
        return bool(self.request_templates) or self.passthrough.upper() == "NEVER"

    def map_response_headers(
        self, headers: list[tuple[bytes, bytes]], request_id: str, stage: str
    ) -> list[tuple[bytes, bytes]]:
        if not (self.response_headers or self.remove_response_headers):
            return headers
        out = [(n, v) for n, v in headers if n.lower() not in self.remove_response_headers]
        upstream = {n.lower(): v for n, v in headers}
        for name, kind, value in self.response_headers:
            if kind == "header":
                got = upstream.get(value.encode("latin-1"))
                if got is None:
                    continue
                new = got
            elif kind == "requestId":
                new = request_id.encode()
            elif kind == "stage":
                new = stage.encode()
            else:
                new = value.encode("latin-1", "replace")
            out = [(n, v) for n, v in out if n.lower() != name]
            out.append((name, new))
        return out


_RESPONSE_KEY = re.compile(r"^method\.response\.header\.([A-Za-z0-9\-_.]+)$")


def compile_transform(
    integ: Any, variables: Mapping[str, str], binary_media_types: tuple[str, ...] = ()
) -> Transform | None:
    """None when the integration changes nothing beyond parameter mapping."""
    has = (
        integ.request_templates
        or integ.response_templates
        or integ.response_parameters
        or integ.remove_request_parameters
        or integ.remove_response_headers
        or (integ.passthrough_behavior or "WHEN_NO_MATCH").upper() != "WHEN_NO_MATCH"
    )
    if not has:
        return None
    behavior = (integ.passthrough_behavior or "WHEN_NO_MATCH").upper()
    if behavior not in ("WHEN_NO_MATCH", "WHEN_NO_TEMPLATES", "NEVER"):
        raise ValueError(
            f"passthroughBehavior {integ.passthrough_behavior!r} is not one of WHEN_NO_MATCH, WHEN_NO_TEMPLATES, NEVER"
        )
    if integ.request_templates or integ.response_templates:
        from meshgate.sidecar.templates import BodyTemplate  # Jinja2 loads only for templates
    req = {ct.lower(): BodyTemplate.compile(ct, src) for ct, src in integ.request_templates.items()}
    resp = {ct.lower(): BodyTemplate.compile(ct, src) for ct, src in integ.response_templates.items()}
    rm_h: set[bytes] = set()
    rm_q: set[str] = set()
    for item in integ.remove_request_parameters:
        if item.startswith("integration.request.header."):
            rm_h.add(item.rsplit(".", 1)[1].lower().encode("latin-1"))
        elif item.startswith("integration.request.querystring."):
            rm_q.add(item[len("integration.request.querystring.") :])
        else:
            raise ValueError(
                f"removeRequestParameters: {item!r} is not integration.request.header|querystring.NAME"
            )
    mapped = []
    for key, value in sorted(integ.response_parameters.items()):
        m = _RESPONSE_KEY.match(key)
        if not m:
            raise ValueError(f"responseParameters: {key!r} is not method.response.header.NAME")
        name = m.group(1).lower().encode("latin-1")
        if value.startswith("integration.response.header."):
            mapped.append((name, "header", value[len("integration.response.header.") :].lower()))
        elif value.startswith("'") and value.endswith("'"):
            mapped.append((name, "const", value[1:-1]))
        elif value == "context.requestId":
            mapped.append((name, "requestId", ""))
        elif value == "context.stage":
            mapped.append((name, "stage", ""))
        elif value.startswith("stageVariables."):
            var = value[len("stageVariables.") :]
            if var not in variables:
                raise ValueError(f"responseParameters: stage variable {var!r} is not defined")
            mapped.append((name, "const", variables[var]))
        else:
            raise ValueError(f"responseParameters: unsupported value {value!r}")
    return Transform(
        req,
        behavior,
        frozenset(rm_h),
        frozenset(rm_q),
        tuple(mapped),
        frozenset(h.lower().encode("latin-1") for h in integ.remove_response_headers),
        resp,
        dict(variables),
        tuple(binary_media_types),
    )
