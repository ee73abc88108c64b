"""Every resource is validated before it can reach etcd; each error names the field."""

from __future__ import annotations

import pytest
from meshgate.control.errors import InvalidConfig
from meshgate.control.resources import load_documents
from meshgate.control.validation import validate

BASE = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {name: pets}
spec:
  authorizers: [{name: jwt, type: jwt, jwksUri: "https://idp.example/jwks"}]
  models: [{name: Pet, schemaJson: '{"type": "object"}'}]
  routes:
    - method: GET
      path: /pets/{id}
      authorizer: jwt
      integration:
        type: http
        uri: http://${stageVariables.backend}/pets/{id}
        requestParameters: {integration.request.header.x-id: method.request.path.id}
    - method: ANY
      path: /files/{proxy+}
      requestModel: Pet
      integration: {type: http, uri: "http://files.ns.svc:8080/{proxy}"}
    - {method: GET, path: /health, integration: {type: mock, mock: {status: 204}}}
"""
STAGE = "apiVersion: meshgate.io/v1\nkind: Stage\nmetadata: {name: prod}\nspec: {api: pets, variables: {backend: 'svc:80'}}\n"


def check(text: str) -> None:
    for res in load_documents(text):
        validate(res)


def test_valid_documents_pass() -> None:
    check(BASE)
    check(STAGE)


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("path: /health", "path: health", "spec.routes[2].path"),
        ("path: /files/{proxy+}", "path: /files/{proxy+}/x", "spec.routes[1].path"),
        ("path: /pets/{id}", "path: /pets/{id}/{id}", "spec.routes[0].path"),
        ("path: /pets/{id}", "path: /pets//{id}", "spec.routes[0].path"),
        ("method: ANY", "method: FETCH", "spec.routes[1].method"),
        ("type: mock, mock: {status: 204}", "type: lambda", "spec.routes[2].integration.type"),
        ("status: 204", "status: 700", "spec.routes[2].integration.mock.status"),
        (
            "uri: http://${stageVariables.backend}/pets/{id}",
            "uri: ftp://x/{id}",
            "spec.routes[0].integration.uri",
        ),
        (
            "uri: http://${stageVariables.backend}/pets/{id}",
            "uri: http://svc/pets/{name}",
            "spec.routes[0].integration.uri",
        ),
        (
            "method.request.path.id",
            "method.request.path.nope",
            "spec.routes[0].integration.requestParameters",
        ),
        (
            "integration.request.header.x-id",
            "integration.response.header.x",
            "spec.routes[0].integration.requestParameters",
        ),
        ("authorizer: jwt", "authorizer: cognito", "spec.routes[0].authorizer"),
        ("requestModel: Pet", "requestModel: Dog", "spec.routes[1].requestModel"),
        ('schemaJson: \'{"type": "object"}\'', "schemaJson: '{not json'", "spec.models[0].schemaJson"),
        ("name: pets", "name: Pets_API", "metadata.name"),
        ("type: jwt", "type: saml", "spec.authorizers[0].type"),
        ("name: pets}", "name: pets, namespace: Team_A}", "metadata.namespace"),
        ("status: 204}", "status: 204}, timeoutMs: 10", "spec.routes[2].integration.timeoutMs"),
        ("status: 204}", "status: 204}, timeoutMs: 400000", "spec.routes[2].integration.timeoutMs"),
        (
            "status: 204}",
            "status: 204}, connectTimeoutMs: 70000",
            "spec.routes[2].integration.connectTimeoutMs",
        ),
        ("path: /files/{proxy+}", "path: /files/{rest}", "spec.routes[1].integration.uri"),
        ("path: /pets/{id}", "path: /pets/{1d}", "spec.routes[0].path"),
        ("uri: http://${stageVariables.backend}", "uri: http:///", "spec.routes[0].integration.uri"),
        ("method.request.path.id", "context.user", "spec.routes[0].integration.requestParameters"),
        ("spec:\n", "spec:\n  endpointType: public\n", "spec.endpointType"),
        ("spec:\n", "spec:\n  basePath: /v1/{x}\n", "spec.basePath"),
        ("spec:\n", "spec:\n  escapedSlashesAction: DECODE\n", "spec.escapedSlashesAction"),
    ],
)
def test_api_errors_name_the_field(old: str, new: str, field: str) -> None:
    assert old in BASE
    with pytest.raises(InvalidConfig) as err:
        check(BASE.replace(old, new, 1))
    assert str(err.value).startswith("Api ") and field in str(err.value)


def test_duplicate_routes_are_refused() -> None:
    dup = BASE + "    - {method: GET, path: '/pets/{petId}', integration: {type: mock}}\n"
    with pytest.raises(
        InvalidConfig, match=r"spec.routes\[3\].path: GET /pets/\{petId\} duplicates spec.routes\[0\]"
    ):
        check(dup)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ("{api: ''}", "spec.api"),
        ("{api: pets, variables: {'bad-name': x}}", "spec.variables.bad-name"),
        ("{api: pets, variables: {v: 'has space'}}", "spec.variables.v"),
        ("{api: pets, canary: {percent: 120}}", "spec.canary.percent"),
        ("{api: pets, hosts: ['not a host']}", "spec.hosts[0]"),
        ("{api: pets, cache: {ttlSeconds: 4000}}", "spec.cache.ttlSeconds"),
        ("{api: pets, tracingSampleRatio: 2}", "spec.tracingSampleRatio"),
    ],
)
def test_stage_errors_name_the_field(spec: str, field: str) -> None:
    with pytest.raises(InvalidConfig) as err:
        check(f"apiVersion: meshgate.io/v1\nkind: Stage\nmetadata: {{name: prod}}\nspec: {spec}\n")
    assert f"{field}:" in str(err.value)


def test_usage_plan_and_key_rules() -> None:
    with pytest.raises(InvalidConfig, match="spec.quota.period"):
        check(
            "apiVersion: meshgate.io/v1\nkind: UsagePlan\nmetadata: {name: gold}\nspec: {apis: [pets], quota: {limit: 5, period: YEAR}}"
        )
    with pytest.raises(InvalidConfig, match="spec.valueSha256"):
        check("apiVersion: meshgate.io/v1\nkind: ApiKey\nmetadata: {name: k}\nspec: {valueSha256: abc}")


@pytest.mark.parametrize(
    ("fragment", "field"),
    [
        ('{type: mock, mock: {headers: {x-a: "a\\r\\nSet-Cookie: x=1"}}}', "mock.headers.x-a"),
        ('{type: mock, mock: {headers: {"bad name": v}}}', "mock.headers.bad name"),
        (
            "{type: http, uri: 'http://b/x', requestParameters: {integration.request.header.x-c: \"'a\\nb'\"}}",
            "requestParameters.integration.request.header.x-c",
        ),
        (
            "{type: http, uri: 'http://b/x', responseParameters: {method.response.header.x-r: \"'a\\u0000b'\"}}",
            "responseParameters.method.response.header.x-r",
        ),
    ],
)
def test_header_constants_that_would_split_a_message_are_refused(fragment: str, field: str) -> None:
    doc = f"apiVersion: meshgate.io/v1\nkind: Api\nmetadata: {{name: pets}}\nspec:\n  routes:\n    - {{method: GET, path: /x, integration: {fragment}}}\n"
    with pytest.raises(InvalidConfig, match=f"integration.{field}"):
        check(doc)
    gw = 'apiVersion: meshgate.io/v1\nkind: Api\nmetadata: {name: pets}\nspec:\n  routes: [{method: GET, path: /x, integration: {type: mock}}]\n  gatewayResponses: [{type: THROTTLED, headers: {x-g: "a\\rb"}}]\n'
    with pytest.raises(InvalidConfig, match="gatewayResponses"):
        check(gw)


WS_API = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {name: chat}
spec:
  routes:
    - method: GET
      path: /chat
      integration:
        type: websocket_api
        routeSelectionExpression: $request.body.action
        websocketRoutes:
          $connect:    {type: http, uri: "http://chat.svc:8080/connect"}
          $disconnect: {type: http, uri: "http://chat.svc:8080/disconnect"}
          $default:    {type: http, uri: "http://chat.svc:8080/default", timeoutMs: 5000}
          sendMessage: {type: http, uri: "http://${stageVariables.chat}/message"}
"""
WS = "spec.routes[0].integration"


def test_the_readmes_websocket_api_is_valid() -> None:
    check(WS_API)
    check(WS_API.replace("$request.body.action", "$request.body.meta.route-key"))  # nested fields
    check(WS_API.replace("        routeSelectionExpression: $request.body.action\n", ""))  # the default
    check(WS_API.replace("method: GET", "method: ANY"))
    only_default = WS_API.split("        websocketRoutes:")[0] + (
        '        websocketRoutes: {$default: {type: http, uri: "http://10.0.0.7/d"}}\n'
    )
    check(only_default)


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("$request.body.action", "$request.header.x-action", f"{WS}.routeSelectionExpression"),
        ("$request.body.action", "${request.body.action}", f"{WS}.routeSelectionExpression"),
        ("$request.body.action", "$request.body.", f"{WS}.routeSelectionExpression"),
        ("$request.body.action", "$request.body.items[0]", f"{WS}.routeSelectionExpression"),
        ("$request.body.action", "$request.body.a..b", f"{WS}.routeSelectionExpression"),
        (
            '$connect:    {type: http, uri: "http://chat.svc:8080/connect"}',
            "$connect: {}",
            f"{WS}.websocketRoutes.$connect.type",
        ),
        ("$connect:    {type: http", "$connect:    {type: mock", f"{WS}.websocketRoutes.$connect.type"),
        ("$connect:    {type: http", "$connect:    {type: function", f"{WS}.websocketRoutes.$connect.type"),
        (
            'uri: "http://chat.svc:8080/connect"',
            'uri: "ws://chat.svc:8080/connect"',
            f"{WS}.websocketRoutes.$connect.uri",
        ),
        (
            'uri: "http://chat.svc:8080/connect"',
            'uri: "http:///connect"',
            f"{WS}.websocketRoutes.$connect.uri",
        ),
        (
            'uri: "http://chat.svc:8080/connect"',
            'uri: "http://chat.svc:99999/c"',
            f"{WS}.websocketRoutes.$connect.uri",
        ),
        ('uri: "http://chat.svc:8080/connect"', 'uri: ""', f"{WS}.websocketRoutes.$connect.uri"),
        # a path parameter is never substituted into a WebSocket route's uri
        (
            'uri: "http://chat.svc:8080/connect"',
            'uri: "http://chat.svc/{id}"',
            f"{WS}.websocketRoutes.$connect.uri",
        ),
        ("timeoutMs: 5000", "timeoutMs: 10", f"{WS}.websocketRoutes.$default.timeoutMs"),
        ("timeoutMs: 5000", "timeoutMs: 400000", f"{WS}.websocketRoutes.$default.timeoutMs"),
        # fields the sidecar would silently ignore on a WebSocket route
        ("timeoutMs: 5000", "httpMethod: PUT", f"{WS}.websocketRoutes.$default.httpMethod"),
        (
            "timeoutMs: 5000",
            "requestTemplates: {application/json: '{}'}",
            f"{WS}.websocketRoutes.$default.requestTemplates",
        ),
        (
            "timeoutMs: 5000",
            "requestParameters: {integration.request.header.x: \"'y'\"}",
            f"{WS}.websocketRoutes.$default.requestParameters",
        ),
        ("timeoutMs: 5000", "mock: {status: 200}", f"{WS}.websocketRoutes.$default.mock"),
        (
            "timeoutMs: 5000",
            "websocketRoutes: {$default: {type: http, uri: 'http://x/'}}",
            f"{WS}.websocketRoutes.$default.websocketRoutes",
        ),
        ("type: websocket_api", "type: websocket_api\n        uri: http://chat.svc/", f"{WS}.uri"),
        ("type: websocket_api", "type: websocket_api\n        timeoutMs: 1000", f"{WS}.timeoutMs"),
        (
            "type: websocket_api",
            "type: websocket_api\n        maxMessageBytes: 70000000",
            f"{WS}.maxMessageBytes",
        ),
        # route keys: the three reserved ones, or a key without control characters
        ("$disconnect:", "$disconnected:", f"{WS}.websocketRoutes"),
        ("sendMessage:", '"send\\nMessage":', f"{WS}.websocketRoutes"),
        ("sendMessage:", f"{'k' * 129}:", f"{WS}.websocketRoutes"),
        ("method: GET", "method: POST", "spec.routes[0].method"),
    ],
)
def test_websocket_api_errors_name_the_field(old: str, new: str, field: str) -> None:
    assert old in WS_API
    with pytest.raises(InvalidConfig) as err:
        check(WS_API.replace(old, new, 1))
    assert f"{field}:" in str(err.value), str(err.value)


def test_a_websocket_api_needs_a_route_and_says_what_a_route_key_is() -> None:
    empty = WS_API.split("        websocketRoutes:")[0]
    with pytest.raises(InvalidConfig, match=r"spec\.routes\[0\]\.integration\.websocketRoutes: at least one"):
        check(empty)
    with pytest.raises(InvalidConfig) as err:
        check(WS_API.replace("$disconnect:", "$disconnected:", 1))
    assert str(err.value) == (
        "Api default/chat: spec.routes[0].integration.websocketRoutes: route key '$disconnected': "
        "keys starting with $ are $connect, $disconnect or $default"
    )
    with pytest.raises(InvalidConfig) as err:
        check(WS_API.replace("$connect:    {type: http", "$connect:    {type: mock", 1))
    assert 'websocketRoutes.$connect.type: must be "http"' in str(err.value)
    with pytest.raises(InvalidConfig) as err:
        check(WS_API.replace("timeoutMs: 5000", "httpMethod: PUT", 1))
    assert str(err.value).endswith(
        "websocketRoutes.$default.httpMethod: not used by a WebSocket API route (it takes type, uri, timeoutMs)"
    )


def test_a_private_websocket_api_calls_only_in_cluster_services() -> None:
    from meshgate.control.state import unwrap
    from meshgate.control.validation import check_private_targets

    text = WS_API.replace("spec:\n", "spec:\n  endpointType: private\n", 1)
    api = unwrap(load_documents(text)[0])
    check_private_targets(api, [{"chat": "10.1.2.3:80"}], ("10.0.0.0/8",))
    with pytest.raises(InvalidConfig) as err:
        check_private_targets(api, [{"chat": "203.0.113.5"}], ("10.0.0.0/8",))
    assert str(err.value).startswith(
        "Api chat is private: spec.routes[0].integration.websocketRoutes.sendMessage.uri: 203.0.113.5 is outside"
    )


def test_an_api_wide_template_language_does_not_trip_a_websocket_api() -> None:
    check(WS_API.replace("spec:\n", "spec:\n  templateLanguage: vtl\n", 1))
    with pytest.raises(InvalidConfig, match=r"websocketRoutes\.\$default\.templateLanguage: not used"):
        check(WS_API.replace("timeoutMs: 5000", "templateLanguage: vtl", 1))
