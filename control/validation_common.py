"""What every validator shares: a failure that names its field (`_fail`), independent checks that
report every error of a resource at once (`_checking`), and the patterns of names, paths, variables
and mappings."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar

from meshgate.control.errors import FieldError, InvalidConfig
from meshgate.sidecar.respond import InvalidHeader, check_headers
from meshgate.v1 import resources_pb2

NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_KEY_RE = re.compile(r"^([a-z0-9.-]{1,253}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "ANY"}
PARAM_RE = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)(\+?)\}$")
LITERAL_SEGMENT_RE = re.compile(r"^[A-Za-z0-9\-._~!$&'()*,;=:@%]+$")
VAR_NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")
VAR_VALUE_RE = re.compile(r"^[A-Za-z0-9\-._~:/?#&=,]*$")
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
HOST_RE = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*$"
)
STAGE_VAR_REF_RE = re.compile(r"\$\{stageVariables\.([A-Za-z0-9_]+)\}")
URI_PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
MAPPING_KEY_RE = re.compile(r"^integration\.request\.(header|querystring|path)\.([A-Za-z0-9\-_.]+)$")
MAPPING_VALUE_RE = re.compile(
    r"^(method\.request\.(path|querystring|header)\.[A-Za-z0-9\-_.]+"
    r"|context\.(stage|requestId|httpMethod|resourcePath)"
    r"|context\.authorizer\.[A-Za-z0-9_.\-]+"
    r"|stageVariables\.[A-Za-z0-9_]+"
    r"|'[^']*')$"
)
PRIVATE_DEFAULT = "cluster"
IDENTITY_SOURCE_RE = re.compile(
    r"^(method\.request\.(header|querystring)\.[A-Za-z0-9\-_.]+|stageVariables\.[A-Za-z0-9_]+|context\.(identity\.)?sourceIp)$"
)
JWT_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "PS256"})


def _fail(where: str, problem: str) -> None:
    raise InvalidConfig(FieldError(where, problem))


_FOUND: ContextVar[list[FieldError] | None] = ContextVar("meshgate_validation_found", default=None)


@contextlib.contextmanager
def _checking() -> Iterator[None]:
    """One independent check: within `validate`, its first `_fail` is recorded and ends only this
    block; called on its own (a helper used elsewhere), the error propagates as it is."""
    found = _FOUND.get()
    if found is None:
        yield
        return
    try:
        yield
    except InvalidConfig as exc:
        found.extend(exc.errors)


def _lenient_params(path: str) -> list[str]:
    """The parameter names of a path template that may be invalid (checks after its own refusal)."""
    return [m.group(1) for seg in path.split("/") if (m := PARAM_RE.match(seg))]


def path_params(path: str, where: str) -> list[str]:
    """Validate a route path template and return its parameter names (`proxy` for `{proxy+}`)."""
    if not path.startswith("/"):
        _fail(where, f'must start with "/", got {path!r}')
    if path == "/":
        return []
    segments = path.rstrip("/").split("/")[1:] if path != "/" else []
    names: list[str] = []
    for i, seg in enumerate(segments):
        if seg == "":
            _fail(where, f"empty path segment in {path!r}")
        m = PARAM_RE.match(seg)
        if m:
            name, greedy = m.group(1), m.group(2)
            if greedy and i != len(segments) - 1:
                _fail(where, f"greedy parameter {seg} must be the last segment")
            if name in names:
                _fail(where, f"duplicate path parameter {name!r}")
            names.append(name)
        elif "{" in seg or "}" in seg:
            _fail(where, f"invalid path parameter segment {seg!r} (use {{name}} or {{name+}})")
        elif not LITERAL_SEGMENT_RE.match(seg):
            _fail(where, f"invalid characters in path segment {seg!r}")
    return names


def _meta(meta: resources_pb2.ObjectMeta, where: str) -> None:
    with _checking():
        if not meta.name:
            _fail(f"{where}.name", "required")
        if not NAME_RE.match(meta.name):
            _fail(
                f"{where}.name",
                f"{meta.name!r} must be lowercase letters, digits and '-', at most 63 characters",
            )
    with _checking():
        if meta.namespace and not NAME_RE.match(meta.namespace):
            _fail(f"{where}.namespace", f"{meta.namespace!r} is not a valid namespace name")
    for k, v in meta.labels.items():
        with _checking():
            if not LABEL_KEY_RE.match(k):
                _fail(f"{where}.labels", f"invalid label key {k!r}")
            if not LABEL_VALUE_RE.match(v):
                _fail(f"{where}.labels.{k}", f"invalid label value {v!r}")


def _header_constants(headers: Mapping[str, str], where: str) -> None:
    """Header names and constant values a sidecar would write: refused here if they could split a
    message (the sidecar's own writer check, `respond.check_headers`)."""
    for name, value in headers.items():
        try:
            check_headers(((name.encode("latin-1", "replace"), value.encode("latin-1", "replace")),))
        except InvalidHeader as exc:
            _fail(f"{where}.{name}", str(exc))


def _constants(params: Mapping[str, str], prefix: str, where: str) -> None:
    """The quoted constants ('value') among mapped header parameters."""
    for key, value in params.items():
        if key.startswith(prefix) and len(value) >= 2 and value[0] == value[-1] == "'":
            try:
                check_headers(((b"x", value[1:-1].encode("latin-1", "replace")),))
            except InvalidHeader:
                _fail(f"{where}.{key}", "the constant holds CR, LF or NUL")
