"""Integration request mapping: URI templates and API Gateway-style request parameters.

Everything known when a snapshot is applied (stage variables, context.stage)
is substituted at compile time; per request only path/query/header values
and the request id are filled in.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    from meshgate.sidecar.context import RequestContext

STAGE_VAR_RE = re.compile(r"\$\{stageVariables\.([A-Za-z0-9_]+)\}")
PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\+?\}")
KEY_RE = re.compile(r"^integration\.request\.(header|querystring|path)\.([A-Za-z0-9\-_.]+)$")


class MappingError(ValueError):
    """Config that cannot be compiled into a mapping."""


@dataclass(frozen=True, slots=True)
class Source:
    """Where a mapped value comes from: path|query|header|request_id|method|const."""

    kind: str
    name: str = ""


def value_of(src: Source, ctx: RequestContext) -> str | None:
    """A mapped value for one request (authorizer values are read after the filters: late_headers)."""
    kind = src.kind
    if kind == "const":
        return src.name
    if kind == "path":
        return ctx.params.get(src.name)
    if kind == "query":
        return ctx.query_params().get(src.name)
    if kind == "header":
        return ctx.headers.get(src.name)  # type: ignore[no-any-return]
    if kind == "request_id":
        return ctx.request_id
    if kind == "authorizer":
        return None
    return ctx.method


def substitute_stage_vars(text: str, variables: Mapping[str, str]) -> tuple[str, str | None]:
    """Replace ${stageVariables.x}; returns (text, name of the first missing variable or None)."""
    missing: list[str] = []

    def repl(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in variables:
            missing.append(name)
            return ""
        return variables[name]

    out = STAGE_VAR_RE.sub(repl, text)
    return out, (missing[0] if missing else None)


def compile_source(value: str, stage: str, variables: Mapping[str, str], resource_path: str) -> Source:
    if value.startswith("'") and value.endswith("'") and len(value) >= 2:
        return Source("const", value[1:-1])
    for prefix, kind in (
        ("method.request.path.", "path"),
        ("method.request.querystring.", "query"),
        ("method.request.header.", "header"),
    ):
        if value.startswith(prefix):
            name = value[len(prefix) :]
            return Source(kind, name.lower() if kind == "header" else name)
    if value.startswith("context.authorizer."):
        return Source("authorizer", value[len("context.authorizer.") :])
    if value == "context.stage":
        return Source("const", stage)
    if value == "context.resourcePath":
        return Source("const", resource_path)
    if value == "context.requestId":
        return Source("request_id")
    if value == "context.httpMethod":
        return Source("method")
    if value.startswith("stageVariables."):
        name = value[len("stageVariables.") :]
        if name not in variables:
            raise MappingError(f"stage variable {name!r} is not defined")
        return Source("const", variables[name])
    raise MappingError(f"unsupported mapping value {value!r}")


@dataclass(frozen=True, slots=True)
class ParamMapping:
    """Compiled request_parameters: header, query and path targets."""

    headers: tuple[tuple[bytes, Source], ...] = ()
    query: tuple[tuple[str, Source], ...] = ()
    path: tuple[tuple[str, Source], ...] = ()
    late_headers: tuple[tuple[bytes, str], ...] = ()  # header <- context.authorizer.KEY, after the phase


def compile_parameters(
    params: Mapping[str, str], stage: str, variables: Mapping[str, str], resource_path: str
) -> ParamMapping:
    headers, query, path, late = [], [], [], []
    for key, value in sorted(params.items()):
        m = KEY_RE.match(key)
        if not m:
            raise MappingError(f"unsupported mapping key {key!r}")
        src = compile_source(value, stage, variables, resource_path)
        if src.kind == "authorizer":
            if m.group(1) != "header":
                raise MappingError(f"{value} can only be mapped to a header")
            late.append((m.group(2).lower().encode("latin-1"), src.name))
            continue
        if m.group(1) == "header":
            headers.append((m.group(2).lower().encode("latin-1"), src))
        elif m.group(1) == "querystring":
            query.append((m.group(2), src))
        else:
            path.append((m.group(2), src))
    return ParamMapping(tuple(headers), tuple(query), tuple(path), tuple(late))


def quote_param(value: str, greedy: bool) -> str:
    return quote(value, safe="/" if greedy else "")
