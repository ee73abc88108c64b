"""Every README feature with a CRD field through the Kubernetes path once: the YAML a user keeps in
git, real `kubectl apply -f` (validated on the server against the CRDs' own schema: no
`--validate=false`; where kubectl is not installed, the requests it makes) and
`kubectl wait --for=condition=Applied` against the in-test API server
(tests/kubeapi.py), the controller in a control service writing etcd, a sidecar process (namespace
`shop`, `app=pets`) streaming from it, and a real client asserting the feature's behaviour. One case
per feature, each on its own Api and Stage (REST->gRPC transcoding with test_transcoding.py's own Api
and service); the feature's own test_<feature>.py covers it in depth through `meshgate apply`."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import jwt
import pytest
import yaml
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from kubeapi import KINDS, KubeApi
from meshgate.control.controller import ControllerOptions
from meshgate.control.etcd_local import LocalEtcd, free_port
from meshgate.control.keystore import load_dir
from meshgate.control.kube import KubeOptions
from meshgate.control.server import ControlServer, start_control
from meshgate.sidecar.credentials import default_state_dir

from .harness import NO_DRAIN, AioServer, Mesh, Sidecar, http_get_json, http_request, wait_until
from .test_grpc import CONFIG as GRPC_CONFIG
from .test_grpc import upstream  # noqa: F401 (a fixture)
from .test_transcoding import CONFIG, DS, pets_service  # noqa: F401 (a fixture)

# without kubectl (or with MESHGATE_TEST_NO_KUBECTL=1): the requests `kubectl apply` makes, sent by the test
KUBECTL = None if os.environ.get("MESHGATE_TEST_NO_KUBECTL") else shutil.which("kubectl")
T = TypeVar("T")
ISSUER = "https://idp.example.com"
DEAD = free_port()  # nothing listens here


class Loop:
    """An event loop in a thread: the API server and the control service live there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass
class Side:
    """The test's own servers: an echo backend, a token authorizer, a function, a JWKS, a WebSocket echo."""

    key: rsa.RSAPrivateKey
    port: int = 0
    served: list[int] = field(default_factory=lambda: [0])

    def app(self) -> web.Application:
        async def echo(request: web.Request) -> web.Response:
            self.served[0] += 1
            body = await request.text()
            return web.json_response(
                {"headers": dict(request.headers), "body": body, "served": self.served[0], "text": "hi"}
            )

        async def token(request: web.Request) -> web.Response:
            event = await request.json()
            effect = "Allow" if event["authorizationToken"] == "letmein" else "Deny"
            statement = {"Action": "execute-api:Invoke", "Effect": effect, "Resource": event["methodArn"]}
            return web.json_response({"principalId": "ann", "policyDocument": {"Statement": [statement]}})

        async def invoke(request: web.Request) -> web.Response:
            event = await request.json()
            return web.json_response(
                {"statusCode": 201, "body": json.dumps({"got": event["pathParameters"]})}
            )

        async def jwks(request: web.Request) -> web.Response:
            pub: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
            return web.json_response({"keys": [{**pub, "kid": "k1", "use": "sig", "alg": "RS256"}]})

        async def route(request: web.Request) -> web.Response:  # a WebSocket API route's integration
            got = json.loads(await request.read())
            return web.json_response({"route": request.headers["x-meshgate-route-key"], "got": got})

        async def ws(request: web.Request) -> web.WebSocketResponse:
            sock = web.WebSocketResponse()
            await sock.prepare(request)
            async for msg in sock:
                await sock.send_str("echo:" + msg.data)
            return sock

        app = web.Application()
        app.router.add_route("*", "/echo/{tail:.*}", echo)
        app.router.add_post("/token", token)
        app.router.add_post("/invoke", invoke)
        app.router.add_get("/jwks", jwks)
        app.router.add_get("/ws", ws)
        app.router.add_post("/route/{name}", route)
        return app

    def jwt(self) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": "orders", "sub": "user-1", "iat": now, "exp": now + 600}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "k1"})


@dataclass
class Env:
    kube: KubeApi
    sidecar: Sidecar
    side: Side
    home: str
    tmp: Path
    grpc_port: int

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        run_env = {
            "KUBECONFIG": os.devnull,
            "HOME": self.home,
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        }
        out = subprocess.run(
            ["kubectl", "--server", self.kube.url, "-n", "shop", *args],
            capture_output=True,
            text=True,
            env=run_env,
            timeout=60,
        )
        if check and out.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {out.stderr}")
        return out

    def get(self, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
        return http_request(self.sidecar.port, "GET", path, headers)


@pytest.fixture(scope="module")
def env(etcd: LocalEtcd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("kubectl")
    loop = Loop()
    kube = KubeApi.__new__(KubeApi)
    loop.run(_init(kube))
    prefix = f"/kubectl-{uuid.uuid4().hex[:8]}/"
    options = ControllerOptions(
        kube=KubeOptions(api_url=kube.url),
        lease_namespace="meshgate-system",
        lease_duration_s=2.0,
        renew_s=0.2,
        debounce_s=0.01,
        max_delay_s=0.05,
    )
    control: ControlServer = loop.run(
        start_control(
            etcd.endpoint,
            port=0,
            prefix=prefix,
            control_id="ctl-kubectl",
            cluster_cidrs=("10.0.0.0/8",),  # the test's client on loopback is an outsider
            kubernetes=options,
            keys=load_dir(default_state_dir()),  # where the sidecar process finds the CA and token
        )
    )
    side = Side(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    mesh = Mesh(etcd.endpoint, tmp, prefix=prefix, control_port=control.port, token_port=control.token_port)
    home = tempfile.mkdtemp(prefix="kubectl-home-")
    try:
        with AioServer(side.app()) as srv:
            side.port = srv.port
            grpc_port = free_port()
            extra = (*NO_DRAIN, "--grpc-listen", f"127.0.0.1:{grpc_port}")
            sidecar = mesh.start_sidecar("sc-kubectl", "app=pets", namespace="shop", extra=extra)
            yield Env(kube, sidecar, side, home, tmp, grpc_port)
    finally:
        mesh.stop_all()
        loop.run(control.stop())
        loop.run(kube.stop())
        loop.stop()
        shutil.rmtree(home, ignore_errors=True)


async def _init(kube: KubeApi) -> None:
    KubeApi.__init__(kube)  # in the loop that serves it
    await kube.start()


def api(name: str, routes: str, spec: str = "", stage: str = "") -> str:
    """An Api `name` and its Stage `name` (namespace shop) as a user writes them; `routes` and `spec`
    are YAML lines at the spec's indentation, `stage` extra Stage spec fields (flow style)."""
    return f"""
apiVersion: meshgate.io/v1
kind: Api
metadata: {{name: {name}}}
spec:
  selector: {{matchLabels: {{app: pets}}}}
{spec}
  routes:
{routes}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: {name}}}
spec: {{api: {name}{", " + stage if stage else ""}}}
"""


def echo(env: Env, path: str = "x") -> str:
    return f"http://127.0.0.1:{env.side.port}/echo/{path}"


def statuses(env: Env, n: int, path: str, **headers: str) -> list[int]:
    return [env.get(path, **headers)[0] for _ in range(n)]


# ------------------------------------------------------------------ one case per feature


def cors(env: Env) -> str:
    return api(
        "cors",
        f'    - {{method: GET, path: /items, integration: {{type: http, uri: "{echo(env)}"}}}}',
        "  cors: {allowOrigins: [https://shop.example.com], allowHeaders: [Content-Type], maxAgeSeconds: 600}",
    )


def check_cors(env: Env) -> None:
    code, h, _ = http_request(
        env.sidecar.port,
        "OPTIONS",
        "/cors/items",
        {"Origin": "https://shop.example.com", "Access-Control-Request-Method": "GET"},
    )
    assert code in (200, 204) and h["access-control-allow-origin"] == "https://shop.example.com", (code, h)
    assert h["access-control-max-age"] == "600"
    _, h, _ = env.get("/cors/items", Origin="https://evil.example.com")
    assert "access-control-allow-origin" not in h


def gateway_responses(env: Env) -> str:
    return api(
        "responses",
        "    - {method: GET, path: /ok, integration: {type: mock}}",
        "  gatewayResponses:\n"
        "    - type: DEFAULT_4XX\n"
        "      headers: {X-Docs: https://shop.example.com/errors}\n"
        '      bodyTemplate: \'{"oops": "$context.error.responseType"}\'',
    )


def check_gateway_responses(env: Env) -> None:
    code, h, body = env.get("/responses/nothing-here")
    assert code == 404 and h["x-docs"] == "https://shop.example.com/errors", (code, h)
    assert json.loads(body) == {"oops": "RESOURCE_NOT_FOUND"}


def validation(env: Env) -> str:
    return api(
        "validation",
        "    - method: GET\n"
        "      path: /pets\n"
        "      requiredParameters: [method.request.querystring.region]\n"
        "      integration: {type: mock}",
    )


def check_validation(env: Env) -> None:
    assert env.get("/validation/pets")[0] == 400
    assert env.get("/validation/pets?region=eu")[0] == 200


def mapping(env: Env) -> str:
    return api(
        "mapping",
        "    - method: GET\n"
        "      path: /pets/{id}\n"
        "      integration:\n"
        "        type: http\n"
        f'        uri: "{echo(env, "pets/{id}")}"\n'
        "        requestParameters:\n"
        "          integration.request.header.x-pet-id: method.request.path.id\n"
        "          integration.request.header.x-origin: \"'crd'\"",
    )


def check_mapping(env: Env) -> None:
    code, _, body = env.get("/mapping/pets/7")
    seen = {k.lower(): v for k, v in json.loads(body)["headers"].items()}
    assert code == 200 and (seen["x-pet-id"], seen["x-origin"]) == ("7", "crd"), seen


def vtl(env: Env) -> str:
    return api(
        "vtl",
        "    - method: GET\n"
        "      path: /shout\n"
        "      integration:\n"
        "        type: http\n"
        f'        uri: "{echo(env)}"\n'
        "        responseTemplates:\n"
        "          application/json: '{\"up\": \"$input.path(''$.text'').toUpperCase()\"}'",
        "  templateLanguage: vtl",
    )


def check_vtl(env: Env) -> None:
    code, _, body = env.get("/vtl/shout")
    assert (code, json.loads(body)) == (200, {"up": "HI"}), body


def functions(env: Env) -> str:
    return api(
        "functions",
        f'    - {{method: GET, path: "/orders/{{id}}", integration: {{type: function, uri: '
        f'"http://127.0.0.1:{env.side.port}/invoke"}}}}',
    )


def check_functions(env: Env) -> None:
    code, _, body = env.get("/functions/orders/9")
    assert (code, json.loads(body)) == (201, {"got": {"id": "9"}}), body


def jwt_authorizer(env: Env) -> str:
    return api(
        "jwt",
        "    - {method: GET, path: /orders, authorizer: idp, integration: {type: mock}}",
        "  authorizers:\n"
        f"    - {{name: idp, type: jwt, issuer: {ISSUER}, audiences: [orders], "
        f"jwksUri: http://127.0.0.1:{env.side.port}/jwks}}",
    )


def check_jwt_authorizer(env: Env) -> None:
    assert env.get("/jwt/orders")[0] == 401
    assert env.get("/jwt/orders", Authorization="Bearer " + env.side.jwt())[0] == 200


def token_authorizer(env: Env) -> str:
    return api(
        "tokens",
        "    - {method: GET, path: /reports, authorizer: tok, integration: {type: mock}}",
        "  authorizers:\n"
        f'    - {{name: tok, type: token, uri: "http://127.0.0.1:{env.side.port}/token", '
        "identitySources: [method.request.header.X-Token], resultTtlSeconds: 0}",
    )


def check_token_authorizer(env: Env) -> None:
    assert env.get("/tokens/reports")[0] == 401
    assert env.get("/tokens/reports", **{"X-Token": "nope"})[0] == 403
    assert env.get("/tokens/reports", **{"X-Token": "letmein"})[0] == 200


def throttling(env: Env) -> str:
    return api(
        "throttled",
        "    - {method: GET, path: /x, integration: {type: mock}}",
        stage="throttling: {rateLimit: 0.001, burstLimit: 2}",
    )


def check_throttling(env: Env) -> None:
    assert statuses(env, 3, "/throttled/x") == [200, 200, 429]


def api_keys_and_quotas(env: Env) -> str:
    key = base64.b64encode(b"partner-0123456789abcdef").decode()
    return (
        api("metered", "    - {method: GET, path: /x, apiKeyRequired: true, integration: {type: mock}}")
        + f"""---
apiVersion: v1
kind: Secret
metadata: {{name: partner-key}}
data: {{key: {key}}}
---
apiVersion: meshgate.io/v1
kind: UsagePlan
metadata: {{name: metered}}
spec: {{apis: [metered/metered], quota: {{limit: 2, period: DAY}}}}
---
apiVersion: meshgate.io/v1
kind: ApiKey
metadata: {{name: partner}}
spec: {{usagePlan: metered, valueFrom: {{secretKeyRef: {{name: partner-key, key: key}}}}}}
"""
    )


def check_api_keys_and_quotas(env: Env) -> None:
    assert env.get("/metered/x")[0] == 403
    key = "partner-0123456789abcdef"
    assert statuses(env, 3, "/metered/x", **{"x-api-key": key}) == [200, 200, 429]


def cache(env: Env) -> str:
    return api(
        "cached",
        f'    - {{method: GET, path: /pets, integration: {{type: http, uri: "{echo(env)}"}}}}',
        stage="cache: {enabled: true, ttlSeconds: 300}",
    )


def check_cache(env: Env) -> None:
    _, h1, b1 = env.get("/cached/pets")
    _, h2, b2 = env.get("/cached/pets")
    assert (h1["x-meshgate-cache"], h2["x-meshgate-cache"]) == ("miss", "hit")
    assert json.loads(b1)["served"] == json.loads(b2)["served"]


def policies(env: Env) -> str:
    return api(
        "walled",
        "    - {method: GET, path: /x, integration: {type: mock}}",
        "  resourcePolicy: {allowCidrs: [127.0.0.0/8], denyCidrs: [127.0.0.1/32]}",
    )


def check_policies(env: Env) -> None:
    assert env.get("/walled/x")[0] == 403


def routing(env: Env) -> str:
    return api(
        "routed",
        "    - {method: GET, path: /x, integration: {type: mock, mock: {body: '\"based\"'}}}",
        "  basePath: shop",
        stage="hosts: [pets.example.com]",
    )


def check_routing(env: Env) -> None:
    assert env.get("/shop/routed/x")[0] == 200
    assert env.get("/routed/x")[0] == 404  # the basePath is part of the way in
    assert env.get("/x", Host="pets.example.com")[:3:2] == (200, b'"based"')


def error_detail(env: Env) -> str:
    dead = f'    - {{method: GET, path: /down, integration: {{type: http, uri: "http://127.0.0.1:{DEAD}/down"}}}}'
    return api("quiet", dead) + "---\n" + api("detailed", dead, stage="errorDetail: true")


def check_error_detail(env: Env) -> None:
    code, _, body = env.get("/quiet/down")
    assert code == 503 and "reason" not in json.loads(body), body  # an outsider sees no reason...
    code, _, body = env.get("/detailed/down")
    assert code == 503 and f"upstream connect refused (127.0.0.1:{DEAD})" in json.loads(body)["reason"]


def secrets(env: Env) -> str:
    return api(
        "secretive",
        "    - {method: GET, path: /x, integration: {type: mock}}",
        stage="variables: {db_pass: hunter2, region: eu}, secretVariables: [db_pass]",
    )


def check_secrets(env: Env) -> None:
    _, dump = http_get_json(env.sidecar.admin_port, "/config_dump")
    text = json.dumps(dump)
    assert "hunter2" not in text and '"region": "eu"' in text and '"db_pass": "[redacted]"' in text


def access_log(env: Env) -> str:
    return api(
        "logged", "    - {method: GET, path: /x, integration: {type: mock}}", stage="accessLogFormat: json"
    )


def check_access_log(env: Env) -> None:
    _, h, _ = env.get("/logged/x")
    rid = h["x-meshgate-request-id"]

    def logged() -> Any:
        lines = [
            ln for ln in env.sidecar.proc.output().splitlines() if rid in ln and ln.lstrip().startswith("{")
        ]
        return lines and json.loads(lines[0])

    line = wait_until(logged, timeout=10, what="the JSON access log line")
    assert line["requestId"] == rid and line["stage"] == "logged" and line["status"] == 200, line


def websocket(env: Env) -> str:
    return api(
        "sockets",
        f'    - {{method: GET, path: /chat, integration: {{type: websocket, uri: "ws://127.0.0.1:{env.side.port}/ws"}}}}',
    )


def check_websocket(env: Env) -> None:
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{env.sidecar.port}/sockets/chat", open_timeout=5) as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "echo:hello"


def websocket_api(env: Env) -> str:
    base = f"http://127.0.0.1:{env.side.port}/route"
    return api(
        "wsapi",
        "    - method: GET\n"
        "      path: /chat\n"
        "      integration:\n"
        "        type: websocket_api\n"
        "        routeSelectionExpression: $request.body.action\n"
        "        websocketRoutes:\n"
        f'          $default: {{type: http, uri: "{base}/default"}}\n'
        f'          sendMessage: {{type: http, uri: "{base}/message", timeoutMs: 5000}}',
    )


def check_websocket_api(env: Env) -> None:
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{env.sidecar.port}/wsapi/chat", open_timeout=5) as ws:
        ws.send(json.dumps({"action": "sendMessage", "text": "hi"}))
        assert json.loads(ws.recv(timeout=5)) == {
            "route": "sendMessage",
            "got": {"action": "sendMessage", "text": "hi"},
        }
        ws.send(json.dumps({"action": "other"}))
        assert json.loads(ws.recv(timeout=5))["route"] == "$default"


CASES: dict[str, tuple[Callable[[Env], str], Callable[[Env], None]]] = {
    "cors": (cors, check_cors),
    "gateway_responses": (gateway_responses, check_gateway_responses),
    "validation": (validation, check_validation),
    "mapping": (mapping, check_mapping),
    "vtl": (vtl, check_vtl),
    "functions": (functions, check_functions),
    "jwt": (jwt_authorizer, check_jwt_authorizer),
    "authorizers": (token_authorizer, check_token_authorizer),
    "throttling": (throttling, check_throttling),
    "api_keys_and_quotas": (api_keys_and_quotas, check_api_keys_and_quotas),
    "cache": (cache, check_cache),
    "policies": (policies, check_policies),
    "routing": (routing, check_routing),
    "error_detail": (error_detail, check_error_detail),
    "secrets": (secrets, check_secrets),
    "access_log": (access_log, check_access_log),
    "websocket": (websocket, check_websocket),
    "websocket_api": (websocket_api, check_websocket_api),
}


def kubectl_apply(env: Env, feature: str, text: str) -> None:
    """`kubectl apply -f` of a user's file, then `kubectl wait` until every meshgate.io object in it is
    Applied (on the sidecar). Without kubectl, the same: what it sends for a new object (a POST with
    fieldValidation=Strict and its last-applied annotation) and a wait on the same condition."""
    path = env.tmp / f"{feature}.yaml"
    path.write_text(text)
    docs = [d for d in yaml.safe_load_all(text) if d]
    ours = [d for d in docs if d["apiVersion"] == "meshgate.io/v1"]
    if KUBECTL is None:
        for doc in docs:
            _post_as_kubectl(env, doc)
        wait_until(lambda: all(_applied(env, d) for d in ours), timeout=20, what=f"{feature} Applied")
        return
    applied = env.kubectl("apply", "-f", str(path))
    assert "created" in applied.stdout, applied.stdout
    names = [f"{d['kind'].lower()}/{d['metadata']['name']}" for d in ours]
    env.kubectl("wait", "--for=condition=Applied", *names, "--timeout=20s")


def _post_as_kubectl(env: Env, doc: dict[str, Any]) -> None:
    kind = next(k for k in KINDS if k.kind == doc["kind"] and k.api_version == doc["apiVersion"])
    body = json.loads(json.dumps(doc))
    meta = body.setdefault("metadata", {})
    meta["namespace"] = "shop"
    last = json.dumps({**doc, "metadata": {**doc["metadata"], "namespace": "shop"}})
    meta.setdefault("annotations", {})["kubectl.kubernetes.io/last-applied-configuration"] = last + "\n"
    prefix = f"/apis/{kind.api_version}" if kind.group else "/api/v1"
    query = "fieldManager=kubectl-client-side-apply&fieldValidation=Strict"
    req = urllib.request.Request(
        f"{env.kube.url}{prefix}/namespaces/shop/{kind.plural}?{query}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "kubectl/v1.32.4 (linux/amd64)"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 201, resp.read()


def _applied(env: Env, doc: dict[str, Any]) -> bool:
    obj = env.kube.get(doc["kind"], "shop", doc["metadata"]["name"])
    if obj is None:
        return False
    generation = obj["metadata"].get("generation")
    return any(
        c["type"] == "Applied" and c["status"] == "True" and c.get("observedGeneration") == generation
        for c in (obj.get("status") or {}).get("conditions") or []
    )


@pytest.mark.parametrize("feature", list(CASES))
def test_kubectl_apply_serves_the_feature(env: Env, feature: str) -> None:
    config, check = CASES[feature]
    kubectl_apply(env, feature, config(env))
    check(env)


def test_kubectl_apply_serves_rest_to_grpc_transcoding(env: Env, request: pytest.FixtureRequest) -> None:
    """test_transcoding.py's own Api and gRPC service (the descriptor set base64 in the YAML: the CRD's
    `format: byte`)."""
    port = request.getfixturevalue("pets_service")
    kubectl_apply(env, "transcoding", CONFIG.format(port=port, ds=base64.b64encode(DS).decode()))
    code, _, body = http_request(env.sidecar.port, "GET", "/prod/v1/pets/7?view=full", {"Authorization": "t"})
    assert (code, json.loads(body)) == (200, {"id": "7", "name": "full:t", "age": 3}), body
    assert env.get("/prod/v1/pets/404")[0] == 404


def test_kubectl_apply_serves_the_grpc_proxy(env: Env, request: pytest.FixtureRequest) -> None:
    """test_grpc.py's own Api (its Stage renamed: this sidecar has a `prod` already) and service, on the
    sidecar's gRPC listener."""
    import grpc

    port = request.getfixturevalue("upstream").port
    config = GRPC_CONFIG.format(port=port).replace("metadata: {name: prod}", "metadata: {name: rpc}")
    kubectl_apply(env, "grpc", config)
    stage = (("x-meshgate-stage", "rpc"),)  # the transcoding case's stage serves gRPC too
    with grpc.insecure_channel(f"127.0.0.1:{env.grpc_port}") as channel:
        assert channel.unary_unary("/test.Echo/Unary")(b"hi", timeout=5, metadata=stage) == b"echo:hi"
        with pytest.raises(grpc.RpcError) as err:  # apiKeyRequired and no x-api-key
            channel.unary_unary("/test.Locked/Unary")(b"hi", timeout=5, metadata=stage)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
