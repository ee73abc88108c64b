"""Function integrations: the Lambda proxy contract (payload 1.0 and 2.0) against an in-cluster endpoint.

The sidecar POSTs API Gateway's proxy event to the function's URL and maps the
returned document (`statusCode`, `headers`, `multiValueHeaders`, `body`,
`isBase64Encoded`, 2.0 `cookies`) to the response as API Gateway does; a
malformed one is a 502 typed API_CONFIGURATION_ERROR (AWS: "Malformed Lambda
proxy response"). Functions written for API Gateway run behind meshgate unchanged.

Events follow AWS's documented examples key for key. Values AWS has and a mesh has not:
`accountId` "000000000000" (ACCOUNT_ID); `apiId` the Api's name (its namespace is the
region of `methodArn`); `deploymentId` the deployment number; `resourceId` six hex digits
of sha256(namespace/api + route template), stable per resource; `extendedRequestId` = `requestId`;
`domainName` the request's Host without its port (`domainPrefix` its first label). Identity keys
a mesh cannot know are null; a greedy `{proxy+}` value keeps the request's escapes (`%2B`).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from meshgate.sidecar import jsoncodec
from meshgate.sidecar.transform import media_type_matches

if TYPE_CHECKING:
    import aiohttp
    from meshgate.sidecar.context import RequestContext

ACCOUNT_ID = "000000000000"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_IDENTITY_NULLS = (
    "accessKey",
    "accountId",
    "caller",
    "cognitoAuthenticationProvider",
    "cognitoAuthenticationType",
    "cognitoIdentityId",
    "cognitoIdentityPoolId",
    "principalOrgId",
)


@dataclass(frozen=True, slots=True)
class FunctionIntegration:
    uri: str
    version: str  # "1.0" | "2.0"
    resource: str  # route template
    route_key: str  # "GET /pets/{id}"
    stage: str
    stage_variables: Mapping[str, str]
    binary_media_types: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FunctionResponse:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


class InvalidResponse(ValueError):
    pass


def _is_binary(fn: FunctionIntegration, content_type: str, body: bytes) -> bool:
    if media_type_matches(fn.binary_media_types, content_type):
        return True
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def aws_time(now: float) -> str:
    """API Gateway's requestTime: dd/MMM/yyyy:HH:mm:ss +0000 (English months, whatever the locale)."""
    t = time.gmtime(now)
    return f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"


@functools.lru_cache(maxsize=4096)
def resource_id(api: str, resource: str) -> str:
    return hashlib.sha256(f"{api} {resource}".encode()).hexdigest()[:6]


@functools.lru_cache(maxsize=4096)
def _greedy_name(resource: str) -> str:
    last = resource.rsplit("/", 1)[-1]
    return last[1:-2] if last.startswith("{") and last.endswith("+}") else ""


def api_id(req: RequestContext) -> str:
    return req.api.partition("/")[2]


def path_parameters(req: RequestContext) -> dict[str, str]:
    """The route's parameters; a greedy value as the (normalised) request wrote it, escapes kept."""
    params = dict(req.params)
    if req.raw_tail:
        name = _greedy_name(req.resource)
        if name in params:
            params[name] = req.raw_tail
    return params


def _domain(req: RequestContext) -> tuple[str, str]:
    host = req.host
    if host.startswith("["):
        host = host[: host.find("]") + 1]
    else:
        host = host.rsplit(":", 1)[0]
    host = host or api_id(req)
    return host, host.split(".", 1)[0]


def rest_request_context(req: RequestContext, now: float, user_agent: str | None) -> dict[str, Any]:
    """requestContext of a REST (1.0) event and of a REQUEST authorizer's input."""
    route = req.route
    domain, prefix = _domain(req)
    identity: dict[str, Any] = dict.fromkeys(_IDENTITY_NULLS)
    identity["sourceIp"] = req.source_ip
    identity["user"] = None
    identity["userAgent"] = user_agent
    identity["userArn"] = None
    if req.usage_key is not None:
        identity["apiKey"] = req.headers.get("x-api-key")
        identity["apiKeyId"] = req.usage_key.name
    return {
        "accountId": ACCOUNT_ID,
        "apiId": api_id(req),
        "deploymentId": str(route.deployment_id) if route is not None else "",
        "domainName": domain,
        "domainPrefix": prefix,
        "extendedRequestId": req.request_id,
        "httpMethod": req.method,
        "identity": identity,
        "path": req.path,
        "protocol": "HTTP/1.1",
        "requestId": req.request_id,
        "requestTime": aws_time(now),
        "requestTimeEpoch": int(now * 1000),
        "resourceId": resource_id(req.api, req.resource),
        "resourcePath": req.resource,
        "stage": req.stage,
    }


def rest_request_parts(req: RequestContext) -> dict[str, Any]:
    """headers, multiValueHeaders and the query of a REST event (client header case; the last value
    in the single-value maps); None where the request has none."""
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for name, value in req.header_pairs():
        single[name] = value
        multi.setdefault(name, []).append(value)
    mq: dict[str, list[str]] = {}
    for k, v in parse_qsl(req.query, keep_blank_values=True):
        mq.setdefault(k, []).append(v)
    return {
        "headers": single or None,
        "multiValueHeaders": multi or None,
        "queryStringParameters": {k: v[-1] for k, v in mq.items()} or None,
        "multiValueQueryStringParameters": mq or None,
    }


def _authorizer_1(req: RequestContext) -> dict[str, Any] | None:
    values = req.auth_values
    if not values:
        return None
    claims = {k[7:]: v for k, v in values.items() if k.startswith("claims.")}
    if claims:
        return {"claims": claims, "scopes": None}
    return {**values, "integrationLatency": int(req.authorizer_s * 1000)}


def _authorizer_2(req: RequestContext) -> dict[str, Any] | None:
    values = req.auth_values
    if not values:
        return None
    claims = {k[7:]: v for k, v in values.items() if k.startswith("claims.")}
    if claims:
        return {"jwt": {"claims": claims, "scopes": None}}
    return {"lambda": {k: v for k, v in values.items() if k != "principalId"}}


def _body(fn: FunctionIntegration, req: RequestContext) -> tuple[str | None, bool]:
    raw = req.whole_body()
    if not raw:
        return None, False
    ctype = req.headers.get("content-type", "")
    if _is_binary(fn, ctype, raw):
        return base64.b64encode(raw).decode(), True
    return raw.decode("utf-8"), False


def build_event(fn: FunctionIntegration, req: RequestContext) -> dict[str, Any]:
    """API Gateway's Lambda proxy event (1.0 or 2.0) for one request."""
    if fn.version == "2.0":
        return _event_2(fn, req)
    now = time.time()
    body, binary = _body(fn, req)
    rc = rest_request_context(req, now, req.headers.get("user-agent"))
    authorizer = _authorizer_1(req)
    if authorizer is not None:
        rc["authorizer"] = authorizer
    return {
        "resource": fn.resource,
        "path": req.stage_path,
        "httpMethod": req.method,
        **rest_request_parts(req),
        "pathParameters": path_parameters(req) or None,
        "stageVariables": dict(fn.stage_variables) or None,
        "requestContext": rc,
        "body": body,
        "isBase64Encoded": binary,
    }


def _event_2(fn: FunctionIntegration, req: RequestContext) -> dict[str, Any]:
    now = time.time()
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in req.header_pairs():
        low = name.lower()
        if low == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
        else:
            headers[low] = f"{headers[low]},{value}" if low in headers else value
    domain, prefix = _domain(req)
    rc: dict[str, Any] = {
        "accountId": ACCOUNT_ID,
        "apiId": api_id(req),
        "domainName": domain,
        "domainPrefix": prefix,
        "http": {
            "method": req.method,
            "path": req.path,
            "protocol": "HTTP/1.1",
            "sourceIp": req.source_ip,
            "userAgent": headers.get("user-agent", ""),
        },
        "requestId": req.request_id,
        "routeKey": fn.route_key,
        "stage": fn.stage,
        "time": aws_time(now),
        "timeEpoch": int(now * 1000),
    }
    authorizer = _authorizer_2(req)
    if authorizer is not None:
        rc["authorizer"] = authorizer
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": fn.route_key,
        "rawPath": req.path,
        "rawQueryString": req.query,
    }
    if cookies:
        event["cookies"] = cookies
    event["headers"] = headers
    qs: dict[str, str] = {}
    for k, v in parse_qsl(req.query, keep_blank_values=True):
        qs[k] = f"{qs[k]},{v}" if k in qs else v
    if qs:
        event["queryStringParameters"] = qs
    params = path_parameters(req)
    if params:
        event["pathParameters"] = params
    if fn.stage_variables:
        event["stageVariables"] = dict(fn.stage_variables)
    event["requestContext"] = rc
    body, binary = _body(fn, req)
    if body is not None:
        event["body"] = body
    event["isBase64Encoded"] = binary
    return event


def _text(value: object, what: str) -> bytes:
    """A header value as API Gateway sends it: strings as they are, booleans `true`/`false`, numbers."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float):
        text = str(value)
    else:
        raise InvalidResponse(f"{what} must be a string, number or boolean")
    return text.encode("latin-1", "replace")


_FIELDS_1 = frozenset({"statusCode", "headers", "multiValueHeaders", "body", "isBase64Encoded"})
_FIELDS_2 = _FIELDS_1 | {"cookies"}
_HOP = frozenset({b"content-length", b"transfer-encoding", b"connection"})


def _status(doc: dict[str, Any]) -> int:
    status = doc.get("statusCode", 200)
    if isinstance(status, str) and status.strip().isdigit():
        status = int(status)
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise InvalidResponse("statusCode must be an integer between 100 and 599")
    return status


def _headers(doc: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    """`headers` and `multiValueHeaders` merged as API Gateway merges them: both sent, a name and
    value present in both only once (from multiValueHeaders)."""
    single = doc.get("headers") or {}
    multi = doc.get("multiValueHeaders") or {}
    if not isinstance(single, dict) or not isinstance(multi, dict):
        raise InvalidResponse("headers and multiValueHeaders must be objects")
    from_multi: list[tuple[bytes, bytes]] = []
    for k, values in multi.items():
        if not isinstance(values, list):
            raise InvalidResponse(f"multiValueHeaders.{k} must be a list")
        name = k.encode("latin-1", "replace")
        from_multi.extend((name, _text(v, f"header {k}")) for v in values)
    seen = {(k.lower(), v) for k, v in from_multi}
    out: list[tuple[bytes, bytes]] = []
    for k, v in single.items():
        pair = (k.encode("latin-1", "replace"), _text(v, f"header {k}"))
        if (pair[0].lower(), pair[1]) not in seen:
            out.append(pair)
    out.extend(from_multi)
    for c in doc.get("cookies") or []:
        out.append((b"set-cookie", _text(c, "cookie")))
    return [h for h in out if h[0].lower() not in _HOP]


def _decode(fn: FunctionIntegration, doc: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> bytes:
    body_value = doc.get("body")
    if body_value is None:
        return b""
    if not isinstance(body_value, str):
        raise InvalidResponse("body must be a string")
    if doc.get("isBase64Encoded") is True:
        ctype = next((v for k, v in reversed(headers) if k.lower() == b"content-type"), b"")
        if fn.version == "2.0" or media_type_matches(fn.binary_media_types, ctype.decode("latin-1")):
            try:
                return base64.b64decode(body_value, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidResponse("body is not valid base64") from None
    return body_value.encode()


def map_response(fn: FunctionIntegration, raw: bytes) -> FunctionResponse:
    """The function's answer -> the HTTP response, or InvalidResponse."""
    try:
        doc = json.loads(raw)
    except ValueError:
        raise InvalidResponse("the function returned something that is not JSON") from None
    if fn.version == "2.0" and not (isinstance(doc, dict) and "statusCode" in doc):
        body = doc.encode() if isinstance(doc, str) else json.dumps(doc).encode()
        return FunctionResponse(200, ((b"content-type", b"application/json"),), body)
    if not isinstance(doc, dict):
        raise InvalidResponse("the function's answer is not an object")
    unknown = set(doc) - (_FIELDS_2 if fn.version == "2.0" else _FIELDS_1)
    if unknown:
        raise InvalidResponse(f"unexpected field(s) {', '.join(sorted(unknown))}")
    status = _status(doc)
    headers = _headers(doc)
    body = _decode(fn, doc, headers)
    if fn.version == "1.0" and not any(k.lower() == b"content-type" for k, _ in headers):
        headers.append((b"Content-Type", b"application/json"))  # REST's default
    return FunctionResponse(status, tuple(headers), body)


class FunctionError(Exception):
    def __init__(self, status: int, reason: str, gateway_type: str = "") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.gateway_type = gateway_type


async def invoke(
    session: aiohttp.ClientSession, fn: FunctionIntegration, req: RequestContext, timeout_s: float
) -> FunctionResponse:
    status, raw = await post(session, fn.uri, jsoncodec.dumps_bytes(build_event(fn, req)), timeout_s)
    if status != 200:
        raise FunctionError(502, f"function invocation failed: HTTP {status} from {fn.uri}")
    try:
        return map_response(fn, raw)
    except InvalidResponse as exc:
        raise FunctionError(502, f"invalid integration response: {exc}", "API_CONFIGURATION_ERROR") from None


async def post(
    session: aiohttp.ClientSession, uri: str, payload: bytes, timeout_s: float
) -> tuple[int, bytes]:
    """One invocation: the payload POSTed as JSON; the status and body (FunctionError when there is none)."""
    import aiohttp  # loaded with the first function call, not with the sidecar

    try:
        async with session.post(
            uri,
            data=payload,
            headers={"Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as resp:
            return resp.status, await resp.read()
    except TimeoutError:
        raise FunctionError(504, f"integration timeout after {timeout_s:g}s") from None
    except aiohttp.ClientConnectorError as exc:
        raise FunctionError(503, f"function unreachable ({uri}): {exc.os_error or exc}") from None
    except aiohttp.ClientError as exc:
        raise FunctionError(502, f"function invocation failed: {type(exc).__name__}") from None
