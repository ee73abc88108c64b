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
