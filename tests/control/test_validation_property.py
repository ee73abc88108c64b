"""Property (issue 17, part 2): a document control accepts compiles in the sidecar, and one the
sidecar would NACK control refuses at apply.

Variants of a few base documents, made by a seeded `random` that replaces, deletes or adds fields
(values from a pool of edge cases: statuses, origins, URIs, names with CR/LF ...). Each variant
goes through `load_documents` + `validate` as `meshgate apply` does; an accepted one is deployed
(deployments 1 and 2 of its spec) into a State, `build_snapshot` makes the sidecar's snapshot as
control sends it, and `compile_snapshot` must not raise: a raise there is a NACK of config control
let through."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest
import yaml
from meshgate.control.errors import InvalidConfig
from meshgate.control.resources import load_documents
from meshgate.control.snapshots import build_snapshot
from meshgate.control.state import State, unwrap
from meshgate.control.validation import validate
from meshgate.sidecar.routing import compile_snapshot
from meshgate.v1 import control_pb2, resources_pb2

SEED = 17
VARIANTS = 600

BASES: list[str] = [
    # REST with a JWT authorizer, a model, parameter mapping, a greedy path, a mock
    """
kind: Api
metadata: {name: pets}
spec:
  authorizers: [{name: jwt, type: jwt, jwksUri: "https://idp.example/jwks", audiences: [pets],
                 identitySources: [method.request.header.Authorization], algorithms: [RS256]}]
  models: [{name: Pet, schemaJson: '{"type": "object", "required": ["name"]}'}]
  routes:
    - method: GET
      path: /pets/{id}
      authorizer: jwt
      authorizationScopes: [pets.read]
      cacheKeyParameters: [method.request.querystring.page]
      integration:
        type: http
        uri: http://${stageVariables.backend}/pets/{id}
        timeoutMs: 2000
        requestParameters: {integration.request.header.x-id: method.request.path.id}
        responseParameters: {method.response.header.x-served-by: "'meshgate'"}
    - method: ANY
      path: /files/{proxy+}
      requestModel: Pet
      requiredParameters: [method.request.header.x-user]
      throttling: {rateLimit: 10, burstLimit: 20}
      integration: {type: http, uri: "http://files.ns.svc:8080/{proxy}"}
    - {method: GET, path: /health, integration: {type: mock, mock: {status: 204, headers: {x-a: b}}}}
""",
    # CORS and gateway responses
    """
kind: Api
metadata: {name: shop}
spec:
  cors:
    allowOrigins: [https://shop.example.com, "https://*.partners.example.com"]
    allowMethods: [GET, POST]
    allowHeaders: [Authorization, Content-Type]
    exposeHeaders: [X-Order-Id]
    allowCredentials: true
    maxAgeSeconds: 600
  gatewayResponses:
    - {type: UNAUTHORIZED, status: 407, headers: {WWW-Authenticate: 'Basic realm="shop"'}}
    - {type: DEFAULT_4XX, headers: {X-Docs: "https://shop.example.com/errors"},
       bodyTemplate: '{"oops": "$context.error.responseType", "id": "$context.requestId"}'}
    - {type: DEFAULT_5XX, status: 503}
  routes:
    - {method: GET, path: /items, integration: {type: http, uri: "http://127.0.0.1:9/items"}}
    - {method: POST, path: /items, integration: {type: function, uri: "http://fn.ns.svc/run",
       payloadFormatVersion: "2.0"}}
""",
    # request/token authorizers, templates, endpoint type, policy, base path
    """
kind: Api
metadata: {name: orders}
spec:
  basePath: v1
  endpointType: private
  resourcePolicy: {allowCidrs: [10.0.0.0/8], denyCidrs: [10.9.0.0/16]}
  templateLanguage: vtl
  authorizers:
    - {name: req, type: request, uri: "http://auth.ns.svc/check", resultTtlSeconds: 60,
       identitySources: [method.request.header.x-key, context.sourceIp]}
    - {name: tok, type: token, uri: "http://auth.ns.svc/token", identitySources: [method.request.header.Authorization]}
  routes:
    - method: POST
      path: /orders
      authorizer: req
      integration:
        type: http
        uri: http://orders.ns.svc/orders
        requestTemplates: {application/json: '{"id": "$input.path(''$.id'')"}'}
    - {method: GET, path: "/orders/{id}", authorizer: tok,
       integration: {type: http, uri: "http://orders.ns.svc/orders/{id}", httpMethod: POST}}
""",
    # WebSocket pass-through and a WebSocket API
    """
kind: Api
metadata: {name: chat}
spec:
  routes:
    - {method: GET, path: /raw, integration: {type: websocket, uri: "ws://chat.ns.svc/raw", maxMessageBytes: 65536}}
    - method: GET
      path: /ws
      integration:
        type: websocket_api
        routeSelectionExpression: $request.body.action
        maxMessageBytes: 131072
        websocketRoutes:
          $connect: {type: http, uri: "http://10.0.0.7/connect"}
          $default: {type: http, uri: "http://10.0.0.7/default", timeoutMs: 1000}
          send: {type: http, uri: "http://10.0.0.7/send"}
""",
]

STAGE = """
kind: Stage
metadata: {name: prod}
spec:
  api: API
  deployment: 1
  variables: {backend: "svc.ns.svc:80", color: blue}
  throttling: {rateLimit: 100, burstLimit: 200}
  cache: {enabled: true, ttlSeconds: 300, methods: [GET], invalidation: require_authorization}
  canary: {deployment: 2, percent: 10, stickyHeader: x-user, variables: {color: green}}
  hosts: [api.example.com]
  tracingSampleRatio: 0.5
"""

POOL: list[Any] = [
    "",
    "x",
    "*",
    "GET",
    "get",
    "FETCH",
    "ANY",
    "/",
    "/a/{id}",
    "/a/{proxy+}",
    "/a/{id}/{id}",
    "a b",
    "http://svc/",
    "http://svc/{id}",
    "https://svc/",
    "ws://svc/",
    "grpc://svc:1",
    "ftp://svc/",
    "a\r\nb",
    "x\x00y",
    "https://*.example.com",
    "https://a.example.com/",
    "https://Shop.example.com",
    "http://localhost:3000",
    "DEFAULT_4XX",
    "THROTTLED",
    "NO_SUCH_TYPE",
    "EXPIRED_TOKEN",
    "$request.body.action",
    "$connect",
    "$other",
    "method.request.header.x",
    "method.request.querystring.q",
    "method.request.path.id",
    "method.request.body.x",
    "context.sourceIp",
    "'const'",
    "{{ bad",
    "$input.json('$')",
    "#if(",
    "vtl",
    "jinja",
    "1.0",
    "3.0",
    "RS256",
    "HS256",
    "10.0.0.0/8",
    "10.0.0.0/33",
    "jwt",
    "request",
    "token",
    "nobody",
    '{"type": 5}',
    "{",
    0,
    -1,
    1,
    2,
    49,
    99,
    100,
    101,
    199,
    200,
    204,
    304,
    404,
    599,
    600,
    999,
    3600,
    3601,
    60001,
    86400,
    86401,
    67108865,
    0.5,
    1.5,
    True,
    False,
    [],
    ["*"],
    ["GET", "FETCH"],
    {},
    {"x-a": "b"},
    {"bad name": "x"},
]

# fields a mutation may add where they are absent (the base documents do not use every field)
EXTRA_FIELDS: dict[str, list[Any]] = {
    "spec": ["cors", "gatewayResponses", "binaryMediaTypes", "escapedSlashesAction", "selector", "basePath"],
    "integration": ["payloadFormatVersion", "connectTimeoutMs", "templateLanguage", "httpMethod", "mock"],
}


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(rng: random.Random, doc: dict[str, Any]) -> None:
    paths = [p for p in _paths(doc) if p[0] in ("spec", "metadata") and p != ("metadata", "name")]
    if not paths:  # spec itself was replaced by a scalar
        return
    path = rng.choice(paths)
    parent: Any = doc
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    op = rng.random()
    if op < 0.15 and isinstance(parent, dict):
        del parent[last]
    elif op < 0.25 and isinstance(parent[last], dict):
        owner = "integration" if last == "integration" else ("spec" if last == "spec" else "")
        parent[last][rng.choice(EXTRA_FIELDS.get(owner, ["x"]))] = copy.deepcopy(rng.choice(POOL))
    elif op < 0.35 and isinstance(parent[last], list) and parent[last]:
        parent[last].append(copy.deepcopy(rng.choice(parent[last])))  # a duplicate entry
    else:  # mostly a value of the field's own type: most variants then reach the deeper checks
        same = [v for v in POOL if type(v) is type(parent[last])]
        parent[last] = copy.deepcopy(rng.choice(same if same and rng.random() < 0.85 else POOL))


def _accepted(docs: list[dict[str, Any]]) -> list[resources_pb2.Resource] | None:
    try:
        resources = load_documents(json.dumps(docs[0]) + "\n---\n" + json.dumps(docs[1]))
        for res in resources:
            validate(res)
    except (InvalidConfig, ValueError):
        return None
    return resources


def _snapshot(resources: list[resources_pb2.Resource]) -> control_pb2.Snapshot:
    """What control sends a sidecar in the Api's namespace after `meshgate deploy` twice."""
    api, stage = (unwrap(r) for r in resources)
    assert isinstance(api, resources_pb2.Api) and isinstance(stage, resources_pb2.Stage)
    ns, name = api.metadata.namespace or "default", api.metadata.name
    state = State(prefix="/t/")
    state.apis[(ns, name)] = api
    state.stages[(ns, name, stage.metadata.name)] = stage
    for dep_id in (1, 2):
        state.deployments[(ns, name, dep_id)] = resources_pb2.Deployment(
            kind="Deployment",
            id=dep_id,
            metadata=resources_pb2.ObjectMeta(name=f"{name}-{dep_id}", namespace=ns),
            spec=resources_pb2.DeploymentSpec(api=name, api_spec=api.spec),
        )
    node = control_pb2.Node(id="pod-1", namespace=ns, labels=dict(api.spec.selector.match_labels))
    return build_snapshot(state, node, ("10.0.0.0/8",))


def _bases() -> list[list[dict[str, Any]]]:
    out = []
    for text in BASES:
        api = {"apiVersion": "meshgate.io/v1", **yaml.safe_load(text)}
        stage = {"apiVersion": "meshgate.io/v1", **yaml.safe_load(STAGE)}
        stage["spec"]["api"] = api["metadata"]["name"]
        out.append([api, stage])
    return out


def test_the_base_documents_are_accepted_and_compile() -> None:
    for docs in _bases():
        resources = _accepted(docs)
        assert resources is not None, docs[0]["metadata"]["name"]
        snap = _snapshot(resources)
        assert len(snap.stages) == 1 and snap.stages[0].HasField("canary_deployment")
        compile_snapshot(snap)


def test_what_control_accepts_the_sidecar_compiles() -> None:
    rng = random.Random(SEED)
    bases = _bases()
    accepted = 0
    nacked: list[str] = []
    for n in range(VARIANTS):
        docs = copy.deepcopy(rng.choice(bases))
        for _ in range(rng.choice((1, 1, 2, 3))):
            _mutate(rng, docs[0] if rng.random() < 0.8 else docs[1])
        resources = _accepted(docs)
        if resources is None:
            continue  # refused at apply: whatever the sidecar would do, it never sees it
        accepted += 1
        try:
            compile_snapshot(_snapshot(resources))
        except Exception as exc:  # any raise is a NACK (sidecar/main.py keeps the old table)
            nacked.append(f"variant {n}: {type(exc).__name__}: {exc}\n{yaml.safe_dump(docs)}")
    assert not nacked, f"{len(nacked)} accepted documents the sidecar NACKs:\n" + "\n".join(nacked[:3])
    # the property says something only if both sides of the line are exercised
    assert VARIANTS // 10 < accepted < VARIANTS, accepted


@pytest.mark.parametrize("seed", [1, 2])
def test_more_seeds(seed: int) -> None:
    """Other seeds, fewer variants: a failure names the seed to rerun with."""
    rng = random.Random(seed)
    bases = _bases()
    for _ in range(150):
        docs = copy.deepcopy(rng.choice(bases))
        _mutate(rng, docs[0])
        resources = _accepted(docs)
        if resources is not None:
            compile_snapshot(_snapshot(resources))
