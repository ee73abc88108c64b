"""AWS's ways of writing parameter mappings, identity sources, CORS and templates -> the forms control
accepts (control/validation.py), for the AWS importer (control/openapi_aws.py): REST mappings kept,
HTTP API mappings (`overwrite:header.x: $request.header.y`) translated, and whatever the sidecar
cannot do left out with a warning naming its JSON pointer, so that an export imports whole.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

from meshgate.control import validation as v
from meshgate.control import validation_common as common
from meshgate.sidecar.transform import template_compiler

Warn = Callable[[str, str], None]
_HTTP_API_KEY = re.compile(r"^(overwrite|append|remove):(header|querystring)\.([A-Za-z0-9\-_.]+)$")
_HTTP_API_VALUE = re.compile(
    r"^\$(request\.(header|querystring|path)\.[A-Za-z0-9\-_.]+|context\.\w+|stageVariables\.\w+)$"
)
_MULTI = re.compile(r"^method\.request\.multivalue(header|querystring)\.")


def _ptr(where: str, key: str) -> str:
    return f"{where}/{key.replace('~', '~0').replace('/', '~1')}"


def _value(value: str) -> str:
    """An HTTP API mapping value in REST's terms ($request.header.x -> method.request.header.x)."""
    if value.startswith("${") and value.endswith("}") and value.count("$") == 1:
        value = "$" + value[2:-1]  # ${request.header.name} is $request.header.name
    m = _HTTP_API_VALUE.match(value)
    if m:
        inner = m.group(1)
        return "method." + inner if inner.startswith("request.") else inner
    return value if "$" in value else f"'{value}'"  # HTTP APIs write static values bare


def request_parameters(raw: Any, where: str, warn: Warn) -> tuple[dict[str, str], list[str]]:
    """(requestParameters, removeRequestParameters) for an integration's `requestParameters`."""
    params: dict[str, str] = {}
    removes: list[str] = []
    for key, value in (raw or {}).items() if isinstance(raw, dict) else ():
        key, text = str(key), str(value)
        m = _HTTP_API_KEY.match(key)
        if m:
            target = f"integration.request.{m.group(2)}.{m.group(3)}"
            if m.group(1) == "remove":
                removes.append(target)
                continue
            if m.group(1) == "append":
                warn(_ptr(where, key), "append: is mapped as overwrite: (one value)")
            key, text = target, _value(text)
        elif _MULTI.match(text):
            warn(_ptr(where, key), "a multi-value parameter is mapped as its single value")
            text = _MULTI.sub(lambda m: f"method.request.{m.group(1)}.", text)
        if not common.MAPPING_KEY_RE.match(key):
            warn(
                _ptr(where, key),
                "not a mapping meshgate makes (integration.request.header|querystring|path): left out",
            )
        elif not common.MAPPING_VALUE_RE.match(text):
            warn(_ptr(where, key), f"{text!r} is not a value meshgate maps: left out")
        else:
            params[key] = text
    return params, removes


def identity_sources(sources: list[str], where: str, warn: Warn) -> list[str]:
    """The identity sources control accepts (headers, query strings, stage variables, the source IP)."""
    kept = [s for s in sources if common.IDENTITY_SOURCE_RE.match(s)]
    for s in sources:
        if s not in kept:
            warn(f"{where}/identitySource", f"{s!r} is not an identity source meshgate reads: left out")
    return kept


def cors(x: dict[str, Any], warn: Warn) -> dict[str, Any]:
    """x-amazon-apigateway-cors (HTTP APIs) -> Api.cors, keeping what the CORS filter can serve."""
    where = "#/x-amazon-apigateway-cors"
    out: dict[str, Any] = {}
    origins = []
    for o in x.get("allowOrigins") or []:
        origin = str(o).strip().lower().rstrip("/")
        if origin == "*" or v.ORIGIN_RE.match(origin) or v.WILDCARD_ORIGIN_RE.match(origin):
            origins.append(origin)
        else:
            warn(f"{where}/allowOrigins", f"{o!r} is not an origin a browser sends: left out")
    credentials = bool(x.get("allowCredentials"))
    if credentials and "*" in origins:
        warn(
            f"{where}/allowCredentials",
            'browsers refuse credentials with origin "*": allowCredentials left out',
        )
        credentials = False
    if origins:
        out["allowOrigins"] = origins
    if credentials:
        out["allowCredentials"] = True
    methods = [str(m).upper() for m in x.get("allowMethods") or []]
    if [m for m in methods if m not in v.CORS_METHODS]:
        warn(f"{where}/allowMethods", f"only {', '.join(sorted(v.CORS_METHODS))}: the others are left out")
    if methods:
        out["allowMethods"] = [m for m in methods if m in v.CORS_METHODS]
    for name in ("allowHeaders", "exposeHeaders"):
        if x.get(name):
            out[name] = [str(h).strip() for h in x[name] if str(h).strip()]
    if x.get("maxAge") is not None:
        age = int(x["maxAge"])
        if age > v.CORS_MAX_AGE or age < 0:
            warn(
                f"{where}/maxAge", f"must be 0..{v.CORS_MAX_AGE}: {min(max(age, 0), v.CORS_MAX_AGE)} is used"
            )
        out["maxAgeSeconds"] = min(max(age, 0), v.CORS_MAX_AGE)
    return out


def templates(raw: Any, where: str, warn: Warn) -> dict[str, str]:
    """Mapping templates (VTL) by content type, without those the sidecar cannot compile."""
    compile_vtl = template_compiler("vtl")
    out = {}
    for ctype, source in (raw or {}).items() if isinstance(raw, dict) else ():
        if source is None:
            continue
        try:
            compile_vtl(str(ctype), str(source))
        except ValueError as exc:
            warn(_ptr(where, str(ctype)), f"{exc}: left out")
            continue
        out[str(ctype)] = str(source)
    return out


def _cidrs(value: Any) -> list[str] | None:
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        try:
            out.append(str(ipaddress.ip_network(str(item).strip(), strict=False)))
        except ValueError:
            return None
    return out


def _whole_api(resource: Any) -> bool:
    """Whether a policy statement's Resource is every method of the API (`execute-api:/*`, `.../*`)."""
    items = resource if isinstance(resource, list) else [resource]
    return all(
        str(r) in ("*", "execute-api:/*") or re.fullmatch(r"arn:aws:execute-api:[^/]*/\*(/\*)*", str(r))
        for r in items
    )


def resource_policy(policy: Any, warn: Warn) -> dict[str, list[str]]:
    """x-amazon-apigateway-policy -> Api.resourcePolicy: statements that allow or deny invoking the
    whole API by source IP (aws:SourceIp under IpAddress / NotIpAddress); the others are warned."""
    where = "#/x-amazon-apigateway-policy/Statement"
    allow: list[str] = []
    deny: list[str] = []
    statements = policy.get("Statement") if isinstance(policy, dict) else None
    for i, st in enumerate(
        statements if isinstance(statements, list) else [statements] if statements else []
    ):
        if not isinstance(st, dict):
            continue
        effect, cond = st.get("Effect"), st.get("Condition") or {}
        ops = {op: (c or {}).get("aws:SourceIp") for op, c in cond.items() if isinstance(c, dict)}
        if not cond and effect == "Allow" and _whole_api(st.get("Resource", "*")):
            continue  # everyone may call: meshgate's default
        if (
            set(cond) - {"IpAddress", "NotIpAddress"}
            or not all(ops.values())
            or not _whole_api(st.get("Resource", "*"))
        ):
            warn(
                f"{where}/{i}",
                "only whole-API aws:SourceIp conditions become the resource policy: not enforced",
            )
            continue
        for op, value in ops.items():
            cidrs = _cidrs(value)
            if cidrs is None:
                warn(f"{where}/{i}", f"{value!r} is not a list of CIDRs: not enforced")
                continue
            allows = (effect == "Allow") == (op == "IpAddress")  # Deny NotIpAddress X = only X may call
            (allow if allows else deny).extend(c for c in cidrs if c not in (allow if allows else deny))
    out = {}
    if allow:
        out["allowCidrs"] = allow
    if deny:
        out["denyCidrs"] = deny
    return out


_RESPONSE_VALUE = re.compile(
    r"^\$\{?(response\.header\.[A-Za-z0-9\-_.]+|response\.body(\.[^}]+)?|context\.\w+)\}?$"
)


def _response_value(value: str) -> str:
    m = _RESPONSE_VALUE.match(value)
    if not m:
        return value if "$" in value else f"'{value}'"
    inner = m.group(1)
    return "integration." + inner if inner.startswith("response.") else inner


def http_api_responses(raw: Any, where: str, warn: Warn) -> list[dict[str, Any]]:
    """An HTTP API's response parameter mapping ({status: {overwrite:header.x: $response.header.y,
    overwrite:statuscode: N}}) as integration responses of a proxy, the others passing as they are."""
    from meshgate.sidecar.transform_responses import response_parameter

    out: list[dict[str, Any]] = []
    for status, mapping in (raw or {}).items() if isinstance(raw, dict) else ():
        rw = _ptr(where, str(status))
        if not str(status).isdigit() or not isinstance(mapping, dict):
            warn(rw, "not a status code with its mappings: left out")
            continue
        r: dict[str, Any] = {"selectionPattern": str(status)}
        params: dict[str, str] = {}
        for key, value in mapping.items():
            m = re.match(r"^(overwrite|append):header\.([A-Za-z0-9\-_.]+)$", str(key))
            if str(key) == "overwrite:statuscode" and str(value).isdigit() and 100 <= int(value) <= 599:
                r["status"] = int(value)
            elif m:
                target, text = f"method.response.header.{m.group(2)}", _response_value(str(value))
                try:
                    response_parameter(target, text, {})
                except ValueError as exc:
                    warn(_ptr(rw, str(key)), f"{exc}: left out")
                    continue
                params[target] = text
            else:
                warn(_ptr(rw, str(key)), "not a mapping meshgate makes on a response: left out")
        if params:
            r["responseParameters"] = params
        out.append(r)
    return [*out, {}] if out else []  # the default: every other answer as it came
