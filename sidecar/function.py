"""Function integrations: the Lambda proxy contract (payload 1.0 and 2.0) against an in-cluster endpoint.

The sidecar POSTs the API Gateway proxy event to the function's URL and maps
the returned document (`statusCode`, `headers`, `multiValueHeaders`, `body`,
`isBase64Encoded`) to the response; anything else is a 502 `invalid
integration response`, the lesson's 502. Functions written for API Gateway
run behind meshgate unchanged.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from meshgate.sidecar.transform import media_type_matches

if TYPE_CHECKING:
    import aiohttp
    from meshgate.sidecar.context import RequestContext


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


def build_event(fn: FunctionIntegration, req: RequestContext) -> dict[str, Any]:
    """API Gateway's Lambda proxy event (1.0 or 2.0) for one request."""
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    pairs_h = req.header_pairs()
    for name, value in pairs_h:
        single[name] = value
        multi.setdefault(name, []).append(value)
    ctype = next((v for k, v in pairs_h if k.lower() == "content-type"), "")
    raw = req.whole_body()
    binary = bool(raw) and _is_binary(fn, ctype, raw)
    body: str | None = None
    if raw:
        body = base64.b64encode(raw).decode() if binary else raw.decode("utf-8")
    pairs = parse_qsl(req.query, keep_blank_values=True)
    now = time.time()
    user_agent = next((v for k, v in pairs_h if k.lower() == "user-agent"), "")
    if fn.version == "2.0":
        qs: dict[str, str] = {}
        for k, v in pairs:
            qs[k] = f"{qs[k]},{v}" if k in qs else v
        cookies = [c.strip() for k, v in pairs_h if k.lower() == "cookie" for c in v.split(";") if c.strip()]
        return {
            "version": "2.0",
            "routeKey": fn.route_key,
            "rawPath": req.path,
            "rawQueryString": req.query,
            "cookies": cookies or None,
            "headers": {k.lower(): ",".join(v) for k, v in multi.items()},
            "queryStringParameters": qs or None,
            "pathParameters": dict(req.params) or None,
            "stageVariables": dict(fn.stage_variables) or None,
            "requestContext": {
                "http": {
                    "method": req.method,
                    "path": req.path,
                    "protocol": "HTTP/1.1",
                    "sourceIp": req.source_ip,
                    "userAgent": user_agent,
                },
                "requestId": req.request_id,
                "routeKey": fn.route_key,
                "stage": fn.stage,
                "timeEpoch": int(now * 1000),
                "authorizer": dict(req.auth_values) or None,
            },
            "body": body,
            "isBase64Encoded": binary,
        }
    mq: dict[str, list[str]] = {}
    for k, v in pairs:
        mq.setdefault(k, []).append(v)
    return {
        "resource": fn.resource,
        "path": req.stage_path,
        "httpMethod": req.method,
        "headers": single or None,
        "multiValueHeaders": multi or None,
        "queryStringParameters": {k: v[-1] for k, v in mq.items()} or None,
        "multiValueQueryStringParameters": mq or None,
        "pathParameters": dict(req.params) or None,
        "stageVariables": dict(fn.stage_variables) or None,
        "requestContext": {
            "resourcePath": fn.resource,
            "httpMethod": req.method,
            "path": req.path,
            "stage": fn.stage,
            "requestId": req.request_id,
            "requestTimeEpoch": int(now * 1000),
            "identity": {"sourceIp": req.source_ip, "userAgent": user_agent},
            "authorizer": dict(req.auth_values) or None,
        },
        "body": body,
        "isBase64Encoded": binary,
    }


def _text(value: object, what: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidResponse(f"{what} must be a string")
    return str(value)


def map_response(fn: FunctionIntegration, raw: bytes) -> FunctionResponse:
    """The function's answer -> the HTTP response, or InvalidResponse."""
    try:
        doc = json.loads(raw)
    except ValueError:
        raise InvalidResponse("the function returned something that is not JSON") from None
    if fn.version == "2.0" and not (isinstance(doc, dict) and "statusCode" in doc):
        body = json.dumps(doc).encode()
        return FunctionResponse(200, ((b"content-type", b"application/json"),), body)
    if not isinstance(doc, dict):
        raise InvalidResponse("the function's answer is not an object")
    unknown = set(doc) - {"statusCode", "headers", "multiValueHeaders", "body", "isBase64Encoded", "cookies"}
    if unknown:
        raise InvalidResponse(f"unexpected field(s) {', '.join(sorted(unknown))}")
    status = doc.get("statusCode")
    if isinstance(status, str) and status.isdigit():
        status = int(status)
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise InvalidResponse("statusCode must be an integer between 100 and 599")
    headers: list[tuple[bytes, bytes]] = []
    single = doc.get("headers") or {}
    multi = doc.get("multiValueHeaders") or {}
    if not isinstance(single, dict) or not isinstance(multi, dict):
        raise InvalidResponse("headers and multiValueHeaders must be objects")
    for k, v in single.items():
        if k.lower() not in multi:
            headers.append(
                (k.encode("latin-1", "replace"), _text(v, f"header {k}").encode("latin-1", "replace"))
            )
    for k, values in multi.items():
        if not isinstance(values, list):
            raise InvalidResponse(f"multiValueHeaders.{k} must be a list")
        for v in values:
            headers.append(
                (k.encode("latin-1", "replace"), _text(v, f"header {k}").encode("latin-1", "replace"))
            )
    for c in doc.get("cookies") or []:
        headers.append((b"set-cookie", _text(c, "cookie").encode("latin-1", "replace")))
    body_value = doc.get("body")
    if body_value is None:
        body = b""
    elif not isinstance(body_value, str):
        raise InvalidResponse("body must be a string")
    elif doc.get("isBase64Encoded") is True:
        try:
            body = base64.b64decode(body_value, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidResponse("body is not valid base64") from None
    else:
        body = body_value.encode()
    hop = {b"content-length", b"transfer-encoding", b"connection"}
    return FunctionResponse(status, tuple(h for h in headers if h[0].lower() not in hop), body)


class FunctionError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


async def invoke(
    session: aiohttp.ClientSession, fn: FunctionIntegration, req: RequestContext, timeout_s: float
) -> FunctionResponse:
    import aiohttp  # loaded with the first function call, not with the sidecar

    event = build_event(fn, req)
    try:
        async with session.post(fn.uri, json=event, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            raw = await resp.read()
            if resp.status != 200:
                raise FunctionError(502, f"function invocation failed: HTTP {resp.status} from {fn.uri}")
    except TimeoutError:
        raise FunctionError(504, f"integration timeout after {timeout_s:g}s") from None
    except aiohttp.ClientConnectorError as exc:
        raise FunctionError(503, f"function unreachable ({fn.uri}): {exc.os_error or exc}") from None
    except aiohttp.ClientError as exc:
        raise FunctionError(502, f"function invocation failed: {type(exc).__name__}") from None
    try:
        return map_response(fn, raw)
    except InvalidResponse as exc:
        raise FunctionError(502, f"invalid integration response: {exc}") from None
