"""Route table compilation and matching: stages, templates, methods, mappings, canaries, conflicts."""

from __future__ import annotations

import uuid

import pytest
from meshgate.sidecar.canary import bucket, cookie_value
from meshgate.sidecar.context import LazyHeaders, RequestContext
from meshgate.sidecar.integrations.http import HttpIntegration
from meshgate.sidecar.integrations.mock import MockIntegration
from meshgate.sidecar.respond import error_body, render_http_error
from meshgate.sidecar.routing import EMPTY_TABLE, CompileError, Miss, Route, compile_snapshot

from .conftest import bundle, http_route, mock_route, snapshot

ROUTES = [
    http_route("GET", "/pets", "http://${stageVariables.backend}/pets"),
    http_route("GET", "/pets/{id}", "http://${stageVariables.backend}/v2/pets/{id}?src=gw"),
    http_route("GET", "/pets/mine", "http://${stageVariables.backend}/mine"),
    http_route("ANY", "/files/{proxy+}", "http://files.svc:8080/{proxy}", timeoutMs=1500),
    http_route("POST", "/files/{proxy+}", "http://upload.svc/{proxy}"),
    mock_route("GET", "/", '"root"'),
]


class Target:
    """What a matched route sends upstream for one request (the test's view of route + context)."""

    def __init__(self, route: Route, ctx: RequestContext) -> None:
        self.route = route
        self.stage, self.canary, self.deployment_id = route.stage, route.canary, route.deployment_id
        integ = route.integration
        self.kind = integ.kind if integ is not None else ""
        self.host, self.port, self.target, self.set_headers, self.body = "", 0, b"", (), b""
        self.timeout_s = 0.0
        if isinstance(integ, HttpIntegration):
            self.host, self.port, self.timeout_s = integ.host, integ.port, integ.timeout_s
            self.target, self.set_headers = integ.request_target(ctx)
        elif isinstance(integ, MockIntegration):
            self.body = integ.body

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Target) and (self.route, self.target) == (other.route, other.target)


def resolve(
    table, path: str, method: str = "GET", query: str = "", headers=None, rid: str = "r1", host: str = ""
):  # type: ignore[no-untyped-def]
    ctx = RequestContext("10.0.0.9", rid)
    ctx.method = method
    ctx.host = host
    ctx.set_target((path + ("?" + query if query else "")).encode())
    raw = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    ctx.raw_headers, ctx.headers = raw, LazyHeaders(raw)
    found = table.resolve(ctx)
    return found if isinstance(found, Miss) else Target(found, ctx)


def test_stage_prefix_and_template_priority() -> None:
    t = compile_snapshot(snapshot(bundle(ROUTES, variables={"backend": "10.0.0.1:9000"})))
    hit = resolve(t, "/prod/pets/mine")
    assert isinstance(hit, Target) and hit.target == b"/mine"  # literal beats {id}
    hit = resolve(t, "/prod/pets/42", query="a=b")
    assert isinstance(hit, Target)
    assert (hit.host, hit.port, hit.target) == ("10.0.0.1", 9000, b"/v2/pets/42?src=gw&a=b")
    hit = resolve(t, "/prod/files/a/b%20c.txt", method="DELETE")
    assert (
        isinstance(hit, Target)
        and hit.target == b"/a/b%20c.txt"
        and hit.host == "files.svc"
        and hit.timeout_s == 1.5
    )
    hit = resolve(t, "/prod/files/x", method="POST")
    assert isinstance(hit, Target) and hit.host == "upload.svc" and hit.port == 80  # exact method beats ANY
    hit = resolve(t, "/prod")
    assert isinstance(hit, Target) and hit.kind == "mock" and hit.body == b'"root"'
    assert resolve(t, "/prod/pets/") == resolve(t, "/prod/pets")


def test_misses_are_values_with_reasons() -> None:
    t = compile_snapshot(snapshot(bundle(ROUTES, variables={"backend": "b:1"})))
    miss = resolve(t, "/qa/pets")
    assert isinstance(miss, Miss) and miss.status == 404 and "qa" in miss.reason and "prod" in miss.reason
    miss = resolve(t, "/prod/nothing")
    assert isinstance(miss, Miss) and miss.status == 404 and "/nothing" in miss.reason
    miss = resolve(t, "/prod/pets", method="PUT")
    assert isinstance(miss, Miss) and miss.status == 405 and miss.allow == "GET"
    miss = resolve(EMPTY_TABLE, "/prod/pets")
    assert isinstance(miss, Miss) and miss.status == 503


def test_undefined_stage_variable_is_a_500_miss_not_a_crash() -> None:
    t = compile_snapshot(snapshot(bundle(ROUTES, variables={})))
    miss = resolve(t, "/prod/pets")
    assert isinstance(miss, Miss) and miss.status == 500 and "'backend'" in miss.reason


def test_host_mapping_and_base_path() -> None:
    t = compile_snapshot(
        snapshot(
            bundle(ROUTES, variables={"backend": "b:1"}, hosts=["api.example.com"]),
            bundle(ROUTES, stage="dev", api="other", variables={"backend": "d:2"}, base_path="v1"),
        )
    )
    hit = resolve(t, "/pets", host="API.example.com:8080")
    assert isinstance(hit, Target) and hit.stage == "prod"
    hit = resolve(t, "/v1/dev/pets")
    assert isinstance(hit, Target) and hit.stage == "dev" and hit.host == "d"


def test_request_parameter_mapping() -> None:
    route = http_route(
        "GET",
        "/pets/{id}",
        "http://b:1/pets/{id}",
        requestParameters={
            "integration.request.header.x-pet": "method.request.path.id",
            "integration.request.header.x-stage": "context.stage",
            "integration.request.header.x-user": "method.request.header.X-User",
            "integration.request.header.x-rid": "context.requestId",
            "integration.request.header.x-color": "stageVariables.color",
            "integration.request.querystring.q": "method.request.querystring.search",
            "integration.request.querystring.fixed": "'yes'",
            "integration.request.path.id": "method.request.querystring.override",
        },
    )
    t = compile_snapshot(snapshot(bundle([route], variables={"color": "blue"})))
    hit = resolve(t, "/prod/pets/7", query="search=cat&override=9", headers={"x-user": "ann"}, rid="R-1")
    assert isinstance(hit, Target)
    assert dict(hit.set_headers) == {
        b"x-pet": b"7",
        b"x-stage": b"prod",
        b"x-user": b"ann",
        b"x-rid": b"R-1",
        b"x-color": b"blue",
    }
    assert hit.target == b"/pets/9?search=cat&override=9&fixed=yes&q=cat"


def test_conflicting_stage_prefix_cannot_compile() -> None:
    snap = snapshot(bundle(ROUTES, variables={}), bundle(ROUTES, api="other", variables={}))
    with pytest.raises(CompileError, match="/prod is claimed by both default/pets and default/other"):
        compile_snapshot(snap)
    with pytest.raises(CompileError, match="unsupported mapping"):
        compile_snapshot(
            snapshot(
                bundle(
                    [
                        http_route(
                            "GET",
                            "/x",
                            "http://b/x",
                            requestParameters={"integration.request.header.a": "bogus"},
                        )
                    ]
                )
            )
        )
    with pytest.raises(CompileError, match="only http://"):
        compile_snapshot(snapshot(bundle([http_route("GET", "/x", "https://b/x")])))


def test_canary_share_and_variable_overlay() -> None:
    canary = {"deployment": 2, "percent": 20, "variables": {"backend": "canary:2"}}
    t = compile_snapshot(snapshot(bundle(ROUTES, variables={"backend": "base:1"}, canary=canary)))
    hosts = []
    for _ in range(4000):
        hit = resolve(t, "/prod/pets", rid=uuid.uuid4().hex)
        assert isinstance(hit, Target)
        hosts.append((hit.host, hit.canary, hit.deployment_id))
    share = sum(1 for h in hosts if h[1]) / len(hosts)
    assert 0.17 <= share <= 0.23
    assert {h for h in hosts if h[1]} == {("canary", True, 2)}
    assert {h for h in hosts if not h[1]} == {("base", False, 1)}


def test_sticky_canary_by_header_and_cookie() -> None:
    canary = {"deployment": 2, "percent": 50, "stickyHeader": "X-User", "stickyCookie": "sid"}
    t = compile_snapshot(snapshot(bundle(ROUTES, variables={"backend": "b:1"}, canary=canary)))
    for user in ("a", "b", "c", "d"):
        sides = {
            resolve(t, "/prod/pets", headers={"x-user": user}, rid=uuid.uuid4().hex).canary for _ in range(20)
        }  # type: ignore[union-attr]
        assert len(sides) == 1
        expected = bucket(user) < 5000
        assert sides == {expected}
    sides = {
        resolve(t, "/prod/pets", headers={"cookie": "a=1; sid=zz"}, rid=uuid.uuid4().hex).canary  # type: ignore[union-attr]
        for _ in range(20)
    }
    assert sides == {bucket("zz") < 5000}
    assert cookie_value("a=1; sid=zz; b=2", "sid") == "zz" and cookie_value("a=1", "sid") is None


def test_error_rendering() -> None:
    body = error_body(504, "integration timeout after 1s", "rid-1")
    assert (
        body
        == b'{"message": "Endpoint request timed out", "reason": "integration timeout after 1s", "requestId": "rid-1"}'
    )
    raw = render_http_error(405, "nope", "rid-2", close=True, extra_headers=((b"allow", b"GET"),))
    assert raw.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
    assert (
        b"allow: GET\r\n" in raw
        and b"connection: close\r\n" in raw
        and b"x-meshgate-request-id: rid-2" in raw
    )
