"""Transforms compiled per route: the request and response templates chosen by content type,
passthrough behaviour, header/query removal and response header mapping (API Gateway's
integration request/response), and what both template languages share: the limits, `input`
and `util`. The templates themselves are `templates.py` (Jinja2) and `vtl.py` (Velocity)."""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, unquote

from meshgate.sidecar import jsoncodec

MAX_INPUT = 10 * 1024 * 1024  # the largest body a template (request or response) is given
MAX_STEPS = 200_000  # loop iterations and calls per render, in either language
MAX_SECONDS = 0.25
MAX_OUTPUT = 1024 * 1024
LANGUAGES = ("jinja", "vtl")


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


_STEP = re.compile(r"\.([A-Za-z0-9_\-]+)|\['([^']*)'\]|\[(\d+)\]")


@functools.lru_cache(maxsize=1024)
def path_steps(path: str) -> tuple[str | int, ...]:
    """The steps of a JSONPath subset: $, .name, ['name'], [index]. ValueError if it is not one."""
    if not path.startswith("$"):
        raise ValueError(f"JSONPath must start with $: {path!r}")
    return tuple(name or quoted or int(index) for name, quoted, index in _STEP.findall(path[1:]))


def walk(doc: Any, steps: tuple[str | int, ...]) -> Any:
    """The value at `steps` in a parsed JSON document, None where there is none."""
    cur = doc
    for step in steps:
        if isinstance(step, str):
            cur = cur.get(step) if isinstance(cur, dict) else None
        else:
            cur = cur[step] if isinstance(cur, list) and step < len(cur) else None
        if cur is None:
            return None
    return cur


def _json_path(doc: Any, path: str) -> Any:
    try:
        steps = path_steps(path)
    except ValueError as exc:
        raise TemplateLimit(str(exc)) from None
    return walk(doc, steps)


UNPARSED = jsoncodec.UNPARSED  # `doc` not given: parse the body when a template first asks for it
Params = Mapping[str, Mapping[str, str]] | Callable[[], Mapping[str, Mapping[str, str]]]
Context = Mapping[str, Any] | Callable[[], Mapping[str, Any]]  # called only if a template reads it


class TemplateInput:
    """`input` in a template (either language): the request (or response) body and parameters.

    The body is decoded and parsed only when the template reads it, once; request
    validation hands over the document it already parsed. `params` may be a
    zero-argument callable, called only if the template asks for a parameter.
    """

    __slots__ = ("_doc", "_params", "_parsed", "_raw", "_text")

    def __init__(self, body: bytes, params: Params, doc: Any = UNPARSED) -> None:
        self._raw = body
        self._text: str | None = None
        self._params = params
        self._doc = None if doc is UNPARSED else doc
        self._parsed = doc is not UNPARSED

    @property
    def body(self) -> str:
        if self._text is None:
            self._text = self._raw.decode("utf-8", "replace")
        return self._text

    def doc(self) -> Any:
        """The body parsed as JSON (None when it is not JSON), parsed at most once."""
        if not self._parsed:
            self._parsed = True
            try:
                self._doc = jsoncodec.loads(self._raw) if self._raw else None
            except (ValueError, RecursionError):
                self._doc = None
        return self._doc

    def path(self, p: str) -> Any:
        return _json_path(self.doc(), p)

    def json(self, p: str = "$") -> str:
        return jsoncodec.dumps(self.path(p))

    def params(self, name: str | None = None) -> Any:
        if callable(self._params):
            self._params = self._params()
        if name is None:
            return {k: dict(v) for k, v in self._params.items()}
        for kind in ("path", "querystring", "header"):
            v = self._params.get(kind, {}).get(name if kind != "header" else name.lower())
            if v is not None:
                return v
        return ""


class Util:
    """`util` in a template (either language): API Gateway's $util functions."""

    @staticmethod
    def escapeJavaScript(s: Any) -> str:
        return json.dumps(str(s))[1:-1]

    @staticmethod
    def base64Encode(s: Any) -> str:
        return base64.b64encode(str(s).encode()).decode()

    @staticmethod
    def base64Decode(s: Any) -> str:
        return base64.b64decode(str(s)).decode("utf-8", "replace")

    @staticmethod
    def urlEncode(s: Any) -> str:
        return quote(str(s), safe="")

    @staticmethod
    def urlDecode(s: Any) -> str:
        return unquote(str(s))

    @staticmethod
    def parseJson(s: Any) -> Any:
        return json.loads(str(s))


UTIL = Util()


@dataclass(frozen=True)
class Overrides:
    """What a VTL template set in `$context.requestOverride` / `$context.responseOverride`."""

    status: int | None = None  # responseOverride.status
    headers: tuple[tuple[bytes, bytes], ...] = ()  # requestOverride.header / responseOverride.header


class Rendered(bytes):
    """A rendered body that also carries the overrides its template set."""

    overrides: Overrides


class MappingTemplate(Protocol):
    """A compiled body template, Jinja2 (templates.BodyTemplate) or VTL (vtl.VtlTemplate)."""

    @property
    def content_type(self) -> str: ...

    @property
    def content_type_header(self) -> bytes: ...

    def render(
        self,
        body: bytes,
        params: Params,
        context: Context,
        stage_variables: Mapping[str, str],
        doc: Any = UNPARSED,
    ) -> bytes: ...


def select(
    templates: Mapping[str, MappingTemplate], content_type: str, behavior: str
) -> MappingTemplate | bool | None:
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

    request_templates: Mapping[str, MappingTemplate]
    passthrough: str
    remove_request_headers: frozenset[bytes]
    remove_request_query: frozenset[str]
    response_headers: tuple[tuple[bytes, str, str], ...]  # (name, kind header|const, value)
    remove_response_headers: frozenset[bytes]
    response_templates: Mapping[str, MappingTemplate]
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


def template_compiler(language: str) -> Callable[[str, str], MappingTemplate]:
    """The compiler of one template language ("" = jinja), imported when a snapshot first uses it."""
    lang = (language or "jinja").lower()
    if lang == "vtl":
        from meshgate.sidecar.vtl import VtlTemplate  # airspeed loads only for VTL templates

        return VtlTemplate.compile
    if lang != "jinja":
        raise ValueError(f'templateLanguage must be "jinja" or "vtl", got {language!r}')
    from meshgate.sidecar.templates import BodyTemplate  # Jinja2 loads only for Jinja templates

    return BodyTemplate.compile


def compile_transform(
    integ: Any,
    variables: Mapping[str, str],
    binary_media_types: tuple[str, ...] = (),
    template_language: str = "",
) -> Transform | None:
    """None when the integration changes nothing beyond parameter mapping. `template_language` is
    the Api's; the integration's own `templateLanguage` wins."""
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
    req: dict[str, MappingTemplate] = {}
    resp: dict[str, MappingTemplate] = {}
    if integ.request_templates or integ.response_templates:
        compile_one = template_compiler(getattr(integ, "template_language", "") or template_language)
        req = {ct.lower(): compile_one(ct, src) for ct, src in integ.request_templates.items()}
        resp = {ct.lower(): compile_one(ct, src) for ct, src in integ.response_templates.items()}
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
