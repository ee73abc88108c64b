"""Integration responses (API Gateway REST APIs): the response chosen by `selectionPattern` on the
integration's status code or a function's errorMessage, its status, header mapping and body template;
and the request side the non-HTTP integrations share (the request template of a mock or a non-proxy
function). Compiled per route when a snapshot is applied; used by integrations/{http,function,mock}.py.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meshgate.sidecar import jsoncodec
from meshgate.sidecar.errors import GatewayError
from meshgate.sidecar.transform import (
    MappingTemplate,
    Rendered,
    TemplateLimit,
    Transform,
    path_steps,
    select,
    template_compiler,
    walk,
)

if TYPE_CHECKING:
    from meshgate.sidecar.context import RequestContext

Headers = list[tuple[bytes, bytes]]
MAX_SELECTION = 4096  # the most of an errorMessage a selection pattern is matched against
_RESPONSE_KEY = re.compile(r"^method\.response\.header\.([A-Za-z0-9\-_.]+)$")
_HOP = frozenset({b"content-length", b"transfer-encoding", b"connection", b"keep-alive"})
_JSON = "application/json"
# a repeated group holding a repetition, `(a+)+`: backtracking grows exponentially with the subject
_NESTED_QUANTIFIER = re.compile(r"\([^)]*[*+}][^)]*\)\s*[*+{]")


def is_proxy(integ: Any) -> bool:
    """Whether an http/function integration is a proxy (`proxy` unset or true)."""
    return not integ.HasField("proxy") or bool(integ.proxy)


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A selection pattern (ValueError when it is not a regular expression the sidecar will run)."""
    if _NESTED_QUANTIFIER.search(pattern):
        raise ValueError(f"{pattern!r} repeats a group that repeats inside: it can backtrack without bound")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None


def response_parameter(key: str, value: str, variables: Mapping[str, str]) -> tuple[bytes, str, Any]:
    """One compiled responseParameters entry (ValueError when the sidecar cannot map it)."""
    m = _RESPONSE_KEY.match(key)
    if not m:
        raise ValueError(f"responseParameters: {key!r} is not method.response.header.NAME")
    name = m.group(1).lower().encode("latin-1")
    if value.startswith("integration.response.header."):
        return name, "header", value[len("integration.response.header.") :].lower().encode("latin-1")
    if value == "integration.response.body":
        return name, "body", ()
    if value.startswith("integration.response.body."):
        try:
            return name, "path", path_steps("$" + value[len("integration.response.body") :])
        except ValueError:
            raise ValueError(f"responseParameters: {value!r} is not a JSON path of the body") from None
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return name, "const", value[1:-1].encode("latin-1", "replace")
    if value in ("context.requestId", "context.stage"):
        return name, value[len("context.") :], ()
    if value.startswith("stageVariables."):
        var = value[len("stageVariables.") :]
        if var not in variables:
            raise ValueError(f"responseParameters: stage variable {var!r} is not defined")
        return name, "const", variables[var].encode("latin-1", "replace")
    raise ValueError(
        f"responseParameters: unsupported value {value!r} (integration.response.header.NAME, "
        "integration.response.body[.PATH], 'literal', context.requestId|stage, stageVariables.NAME)"
    )


@dataclass(frozen=True)
class ResponseMapping:
    """One compiled integration response."""

    pattern: re.Pattern[str] | None  # None: the default
    status: int  # 0 = the integration's
    headers: tuple[tuple[bytes, str, Any], ...]  # (name, kind, argument)
    templates: Mapping[str, MappingTemplate]

    @property
    def needs_body(self) -> bool:
        return bool(self.templates) or any(kind in ("body", "path") for _, kind, _ in self.headers)

    def template(self, accept: str) -> MappingTemplate | None:
        """API Gateway's choice: the client's Accept, else application/json, else the first."""
        t = self.templates
        if not t:
            return None
        media = accept.split(",")[-1].split(";", 1)[0].strip().lower()
        return t.get(media) or t.get(_JSON) or t[min(t)]


@dataclass(frozen=True)
class IntegrationResponses:
    """The integration responses of a route and whether the integration's own headers come back."""

    patterned: tuple[ResponseMapping, ...]
    default: ResponseMapping | None
    proxy: bool  # pass the integration's headers on (meshgate's http) or only mapped ones (AWS non-proxy)
    remove_headers: frozenset[bytes]
    stage_variables: Mapping[str, str]

    def pick(self, value: str) -> ResponseMapping | None:
        subject = value[:MAX_SELECTION]
        for r in self.patterned:
            assert r.pattern is not None
            if r.pattern.fullmatch(subject):
                return r
        return self.default

    def answer(
        self, ctx: RequestContext, value: str, status: int, headers: Headers, body: bytes
    ) -> tuple[int, Headers, bytes] | GatewayError:
        """The client's status, headers and body for an integration answer (`value` selects)."""
        chosen = self.pick(value)
        if chosen is None:
            return GatewayError(
                500,
                f"no integration response matches {value[:100]!r} and none is the default",
                "API_CONFIGURATION_ERROR",
            )
        out = self.head(ctx, chosen, headers, body)
        status = chosen.status or status
        template = chosen.template(ctx.headers.get("accept", ""))
        if template is None:
            if not self.proxy and not any(n == b"content-type" for n, _ in out):
                out.append((b"content-type", b"application/json"))
            return status, out, body
        try:
            rendered = template.render(
                body, ctx.template_params, functools.partial(template_context, ctx), self.stage_variables
            )
        except TemplateLimit as exc:
            return GatewayError(500, f"response mapping template: {exc}", "API_CONFIGURATION_ERROR")
        if not any(n == b"content-type" for n, _, _ in chosen.headers):  # a mapped one wins
            out = [(n, v) for n, v in out if n != b"content-type"]
            out.append((b"content-type", template.content_type_header))
        if isinstance(rendered, Rendered):  # VTL's $context.responseOverride.status / .header
            over = rendered.overrides
            names = {n for n, _ in over.headers}
            out = [(n, v) for n, v in out if n not in names]
            out.extend(over.headers)
            status = over.status or status
            rendered = bytes(rendered)
        return status, out, rendered

    def head(self, ctx: RequestContext, chosen: ResponseMapping, headers: Headers, body: bytes) -> Headers:
        """The response headers: the integration's (proxy) or none, then the mapped ones."""
        if self.proxy:
            out = [
                (n.lower(), v)
                for n, v in headers
                if n.lower() not in self.remove_headers and n.lower() not in _HOP
            ]
        else:
            out = []
        if not chosen.headers:
            return out
        upstream = {n.lower(): v for n, v in headers}
        doc: Any = jsoncodec.UNPARSED
        for name, kind, arg in chosen.headers:
            if kind == "header":
                new = upstream.get(arg)
            elif kind == "const":
                new = arg
            elif kind == "requestId":
                new = ctx.request_id.encode()
            elif kind == "stage":
                new = ctx.stage.encode()
            elif kind == "body":
                new = body
            else:
                if doc is jsoncodec.UNPARSED:
                    try:
                        doc = jsoncodec.loads(body) if body else None
                    except (ValueError, RecursionError):
                        doc = None
                found = walk(doc, arg)
                new = None if found is None else _text(found).encode("utf-8", "replace")
            if new is None:
                continue
            out = [(n, v) for n, v in out if n != name]
            out.append((name, new))
        return out

    @property
    def needs_body(self) -> bool:
        return any(r.needs_body for r in (*self.patterned, *((self.default,) if self.default else ())))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else jsoncodec.dumps(value)


def compile_response(r: Any, language: str, variables: Mapping[str, str]) -> ResponseMapping:
    """One IntegrationResponse, or an Integration's own mapping (ValueError naming what is wrong)."""
    pattern: str = getattr(r, "selection_pattern", "")
    compiled = {}
    if r.response_templates:
        compile_one = template_compiler(language)
        compiled = {ct.lower(): compile_one(ct, src) for ct, src in r.response_templates.items()}
    return ResponseMapping(
        compile_pattern(pattern) if pattern else None,
        getattr(r, "status", 0),
        tuple(response_parameter(k, v, variables) for k, v in sorted(r.response_parameters.items())),
        compiled,
    )


def compile_responses(
    integ: Any, variables: Mapping[str, str], template_language: str = ""
) -> IntegrationResponses | None:
    """The route's integration responses; None when it has none and is a proxy (the plain path).
    A non-proxy integration without `responses` answers through its integration-level mapping."""
    proxy = integ.type != "mock" and is_proxy(integ)  # a mock answers as a non-proxy integration
    if not integ.responses and proxy:
        return None
    language = getattr(integ, "template_language", "") or template_language
    patterned: list[ResponseMapping] = []
    default: ResponseMapping | None = None
    if integ.responses:
        for i, r in enumerate(integ.responses):
            try:
                m = compile_response(r, language, variables)
            except ValueError as exc:
                raise ValueError(f"responses[{i}]: {exc}") from None
            if m.pattern is None:
                if default is not None:
                    raise ValueError(f"responses[{i}]: a second response without selectionPattern")
                default = m
            else:
                patterned.append(m)
    else:  # the integration-level mapping is the one (default) response
        default = compile_response(integ, language, variables)
    return IntegrationResponses(
        tuple(patterned),
        default,
        proxy,
        frozenset(h.lower().encode("latin-1") for h in integ.remove_response_headers),
        dict(variables),
    )


def template_context(ctx: RequestContext) -> dict[str, Any]:
    """`$context` of a mapping template: API Gateway's request context (accountId, apiId, domainName,
    identity, requestTime, resourceId, ... as a 1.0 event's requestContext has them), with meshgate's
    own keys (sourceIp, authorizer values). Built only when a template reads it."""
    from meshgate.sidecar.function import rest_request_context

    out = rest_request_context(ctx, time.time(), ctx.headers.get("user-agent"))
    out.update(ctx.template_context())
    return out


def request_body(tr: Transform | None, ctx: RequestContext) -> bytes | GatewayError:
    """The body a mock or non-proxy function integration gets: the request template's output, or
    the request's own body (passthrough), or a 415."""
    body = ctx.whole_body()
    if tr is None or not (tr.request_templates or tr.passthrough.upper() == "NEVER"):
        return body
    ctype = ctx.content_type.decode("latin-1")
    chosen = select(tr.request_templates, ctype, tr.passthrough)
    if chosen is False:
        return GatewayError(
            415, f"no mapping template for content type {ctype or 'none'!r}", "UNSUPPORTED_MEDIA_TYPE"
        )
    if chosen is None or chosen is True:
        return body
    try:
        context = functools.partial(template_context, ctx)
        return bytes(chosen.render(body, ctx.template_params, context, tr.stage_variables))
    except TemplateLimit as exc:
        return GatewayError(500, f"request mapping template: {exc}", "API_CONFIGURATION_ERROR")


def function_selection(status: int, body: bytes) -> str:
    """What a non-proxy function's answer is selected on: a failed invocation's errorMessage (a JSON
    object with one, as Lambda reports errors), else the status code."""
    if body[:1] == b"{":
        try:
            doc = jsoncodec.loads(body)
        except (ValueError, RecursionError):
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("errorMessage"), str):
            return str(doc["errorMessage"])
    return str(status)
