"""Every refusal branch of control/validation.py and validation_integrations.py, one row each: a small
document -> the field path the error names. Together with tests/control/test_validation.py every
`_fail(...)` in them runs (issue 17, part 2): a branch without a row is a check nobody has seen
refuse anything."""

from __future__ import annotations

import re

import pytest
from meshgate.control.errors import InvalidConfig
from meshgate.control.resources import load_documents
from meshgate.control.validation import check_private_targets, validate
from meshgate.v1 import resources_pb2

HTTP = '{type: http, uri: "http://svc.ns.svc:8080/"}'
JWT = '{name: jwt, type: jwt, jwksUri: "https://idp.example/jwks"}'


def api(spec: str, metadata: str = "{name: pets}") -> str:
    return f"apiVersion: meshgate.io/v1\nkind: Api\nmetadata: {metadata}\nspec:\n{spec}\n"


def route(integration: str = HTTP, extra: str = "", path: str = "/pets") -> str:
    return f"  routes:\n    - {{method: GET, path: {path}, integration: {integration}{extra}}}"


def stage(spec: str) -> str:
    return f"apiVersion: meshgate.io/v1\nkind: Stage\nmetadata: {{name: prod}}\nspec: {{api: pets, {spec}}}\n"


def check(text: str) -> None:
    for res in load_documents(text):
        validate(res)


API_CASES = [
    # metadata
    (api(route(), "{name: ''}"), "metadata.name"),
    (api(route(), "{name: pets, labels: {'-bad': x}}"), "metadata.labels"),
    (api(route(), "{name: pets, labels: {team: '-x'}}"), "metadata.labels.team"),
    # path templates
    (api(route(path="/pets/a^b")), "spec.routes[0].path"),
    # integrations
    (api("  routes:\n    - {method: GET, path: /pets}"), "spec.routes[0].integration"),
    (api(route('{type: websocket, uri: "http://chat.ns.svc/"}')), "spec.routes[0].integration.uri"),
    (api(route('{type: websocket, uri: "ws://"}')), "spec.routes[0].integration.uri"),
    (
        api(route('{type: websocket, uri: "ws://chat.ns.svc/", maxMessageBytes: 67108865}')),
        "spec.routes[0].integration.maxMessageBytes",
    ),
    (api(route('{type: grpc, uri: "grpc://greeter.ns.svc"}')), "spec.routes[0].integration.uri"),
    (
        api(route('{type: grpc, uri: "grpc://greeter.ns.svc:50051", grpcMethod: "pkg.Greeter/Hello"}')),
        "spec.routes[0].integration.grpcMethod",
    ),
    (
        api(route('{type: http, uri: "http://svc/", payloadFormatVersion: "3.0"}')),
        "spec.routes[0].integration.payloadFormatVersion",
    ),
    # integration responses and proxy: false (issue 16)
    (api(route("{type: mock, proxy: false}")), "spec.routes[0].integration.proxy"),
    (
        api(route('{type: grpc, uri: "grpc://g.ns.svc:50051", responses: [{status: 200}]}')),
        "spec.routes[0].integration.responses",
    ),
    (
        api(route('{type: function, uri: "http://fn.ns.svc/", responses: [{status: 200}]}')),
        "spec.routes[0].integration.responses",
    ),
    (
        api(route(HTTP[:-1] + ", responseTemplates: {text/plain: x}, responses: [{status: 200}]}")),
        "spec.routes[0].integration.responseTemplates",
    ),
    (
        api(route(HTTP[:-1] + ", responses: [{status: 700}]}")),
        "spec.routes[0].integration.responses[0].status",
    ),
    (
        api(route(HTTP[:-1] + ", responses: [{status: 200}, {status: 201}]}")),
        "spec.routes[0].integration.responses[1].selectionPattern",
    ),
    (
        api(route(HTTP[:-1] + ", responses: [{selectionPattern: '4(', status: 400}]}")),
        "spec.routes[0].integration.responses[0].selectionPattern",
    ),
    (
        api(route(HTTP[:-1] + ", responses: [{selectionPattern: '(a+)+', status: 400}]}")),
        "spec.routes[0].integration.responses[0].selectionPattern",
    ),
    (
        api(route(HTTP[:-1] + ", responses: [{responseTemplates: {application/json: '{{ x'}}]}")),
        "spec.routes[0].integration.responses[0]",
    ),
    (
        api(route("{type: mock, requestTemplates: {application/json: '{% if %}'}}")),
        "spec.routes[0].integration.requestTemplates",
    ),
    (
        api(route('{type: http, uri: "http://svc/", timeoutMs: 10}')),
        "spec.routes[0].integration.timeoutMs",
    ),
    (
        api(route('{type: http, uri: "http://svc/", connectTimeoutMs: 60001}')),
        "spec.routes[0].integration.connectTimeoutMs",
    ),
    (
        api(route('{type: http, uri: "http://svc/", httpMethod: FETCH}')),
        "spec.routes[0].integration.httpMethod",
    ),
    (api(route('{type: http, uri: "http://bad_host/"}')), "spec.routes[0].integration.uri"),
    (api(route('{type: http, uri: "http://svc:0/"}')), "spec.routes[0].integration.uri"),
    (api(route('{type: http, uri: "http:///x"}')), "spec.routes[0].integration.uri"),
    (api(route('{type: http, uri: "http://svc/{id}"}')), "spec.routes[0].integration.uri"),
    (
        api(route('{type: http, uri: "http://svc/", responseParameters: {bad: "\'x\'"}}')),
        "spec.routes[0].integration",
    ),
    (
        api(route('{type: http, uri: "http://svc/", requestParameters: {bad: "\'x\'"}}')),
        "spec.routes[0].integration.requestParameters",
    ),
    (
        api(
            route(
                '{type: http, uri: "http://svc/", '
                "requestParameters: {integration.request.header.x-id: method.request.path.id}}"
            )
        ),
        "spec.routes[0].integration.requestParameters.integration.request.header.x-id",
    ),
    (api("  templateLanguage: mustache\n" + route()), "spec.templateLanguage"),
    (
        api(route('{type: http, uri: "http://svc/", templateLanguage: mustache}')),
        "spec.routes[0].integration.templateLanguage",
    ),
    # authorizers
    (api("  authorizers: [{name: '', type: jwt}]\n" + route()), "spec.authorizers[0].name"),
    (api(f"  authorizers: [{JWT}, {JWT}]\n" + route()), "spec.authorizers[1].name"),
    (api("  authorizers: [{name: a, type: oauth}]\n" + route()), "spec.authorizers[0].type"),
    (
        api(
            "  authorizers: [{name: a, type: token, uri: 'http://auth/', resultTtlSeconds: 3601}]\n" + route()
        ),
        "spec.authorizers[0].resultTtlSeconds",
    ),
    (
        api(
            "  authorizers: [{name: a, type: request, uri: 'http://auth/', identitySources: [cookie.x]}]\n"
            + route()
        ),
        "spec.authorizers[0].identitySources[0]",
    ),
    (api("  authorizers: [{name: a, type: jwt}]\n" + route()), "spec.authorizers[0].jwksUri"),
    (
        api(
            "  authorizers: [{name: a, type: jwt, jwksUri: 'https://idp/jwks', algorithms: [HS256]}]\n"
            + route()
        ),
        "spec.authorizers[0].algorithms",
    ),
    (
        api(
            "  authorizers: [{name: a, type: jwt, jwksUri: 'https://idp/jwks', "
            "identitySources: [method.request.querystring.token]}]\n" + route()
        ),
        "spec.authorizers[0].identitySources[0]",
    ),
    (api("  authorizers: [{name: a, type: request}]\n" + route()), "spec.authorizers[0].uri"),
    (
        api(
            "  authorizers: [{name: a, type: token, uri: 'http://auth/', identitySources: "
            "[method.request.header.a, method.request.header.b]}]\n" + route()
        ),
        "spec.authorizers[0].identitySources",
    ),
    # models
    (api("  models: [{name: '', schemaJson: '{}'}]\n" + route()), "spec.models[0].name"),
    (api("  models: [{name: Pet, schemaJson: '{'}]\n" + route()), "spec.models[0].schemaJson"),
    (api("  models: [{name: Pet, schemaJson: '0.5'}]\n" + route()), "spec.models[0].schemaJson"),
    (api("  models: [{name: Pet, schemaJson: 'true'}]\n" + route()), "spec.models[0].schemaJson"),
    (api("  models: [{name: Pet, schemaJson: '{\"type\": 5}'}]\n" + route()), "spec.models[0].schemaJson"),
    # routes
    (api(route(extra=", authorizer: nobody")), "spec.routes[0].authorizer"),
    (api(route(extra=", requestModel: Nothing")), "spec.routes[0].requestModel"),
    (api(route(extra=", throttling: {rateLimit: -1}")), "spec.routes[0].throttling.rateLimit"),
    (api(route(extra=", ports: [0]")), "spec.routes[0].ports[0]"),
    (api(route(extra=", ports: [70000]")), "spec.routes[0].ports[0]"),
    (api(route(extra=", ports: [8080, 8080]")), "spec.routes[0].ports"),
    (api(route(extra=", authorizationScopes: [pets.read]")), "spec.routes[0].authorizationScopes"),
    (
        api(
            "  authorizers: [{name: t, type: token, uri: 'http://auth/'}]\n"
            + route(extra=", authorizer: t, authorizationScopes: [pets.read]")
        ),
        "spec.routes[0].authorizationScopes",
    ),
    (
        api(route(extra=", requiredParameters: [method.request.body.x]")),
        "spec.routes[0].requiredParameters[0]",
    ),
    (
        api(route(extra=", cacheKeyParameters: [method.request.path.id]")),
        "spec.routes[0].cacheKeyParameters[0]",
    ),
    (
        api(
            "  routes:\n    - {method: POST, path: /ws, integration: {type: websocket_api, "
            'websocketRoutes: {$default: {type: http, uri: "http://chat/"}}}}'
        ),
        "spec.routes[0].method",
    ),
    # Api-wide fields
    (api("  endpointType: public\n" + route()), "spec.endpointType"),
    (api("  escapedSlashesAction: DECODE\n" + route()), "spec.escapedSlashesAction"),
    (api("  basePath: 'v1/{x}'\n" + route()), "spec.basePath"),
    (api("  selector: {namespaces: [Bad_NS]}\n" + route()), "spec.selector.namespaces"),
    (api("  selector: {matchLabels: {app: '-x'}}\n" + route()), "spec.selector.matchLabels.app"),
    (api("  resourcePolicy: {allowCidrs: [10.0.0.0/33]}\n" + route()), "spec.resourcePolicy"),
    # gateway responses: a type the sidecar raises, a final status, headers it can write
    (api("  gatewayResponses: [{type: NO_SUCH_TYPE}]\n" + route()), "spec.gatewayResponses[0].type"),
    (api("  gatewayResponses: [{type: EXPIRED_TOKEN}]\n" + route()), "spec.gatewayResponses[0].type"),
    (
        api("  gatewayResponses: [{type: THROTTLED}, {type: THROTTLED, status: 503}]\n" + route()),
        "spec.gatewayResponses[1].type",
    ),
    (
        api("  gatewayResponses: [{type: DEFAULT_4XX, status: 999}]\n" + route()),
        "spec.gatewayResponses[0].status",
    ),
    (
        api("  gatewayResponses: [{type: DEFAULT_4XX, status: 600}]\n" + route()),
        "spec.gatewayResponses[0].status",
    ),
    (
        api("  gatewayResponses: [{type: DEFAULT_4XX, status: 100}]\n" + route()),
        "spec.gatewayResponses[0].status",
    ),
    (
        api("  gatewayResponses: [{type: DEFAULT_4XX, status: 199}]\n" + route()),
        "spec.gatewayResponses[0].status",
    ),
    (
        api("  gatewayResponses: [{type: DEFAULT_4XX, headers: {'bad name': x}}]\n" + route()),
        "spec.gatewayResponses[0].headers.bad name",
    ),
    (
        api('  gatewayResponses: [{type: DEFAULT_4XX, headers: {x-a: "a\\r\\nb"}}]\n' + route()),
        "spec.gatewayResponses[0].headers.x-a",
    ),
    # CORS: what a browser's Origin can equal; methods and names the filter can write
    (api("  cors: {allowOrigins: ['https://shop.example.com/']}\n" + route()), "spec.cors.allowOrigins[0]"),
    (api("  cors: {allowOrigins: [shop.example.com]}\n" + route()), "spec.cors.allowOrigins[0]"),
    (api("  cors: {allowOrigins: ['https://Shop.example.com']}\n" + route()), "spec.cors.allowOrigins[0]"),
    (
        api("  cors: {allowOrigins: ['https://a.example', 'https://shop.example.com:99999x']}\n" + route()),
        "spec.cors.allowOrigins[1]",
    ),
    (api("  cors: {allowOrigins: ['http://*.example.com']}\n" + route()), "spec.cors.allowOrigins[0]"),
    (api("  cors: {allowOrigins: ['https://*example.com']}\n" + route()), "spec.cors.allowOrigins[0]"),
    (api("  cors: {allowOrigins: ['https://a.*.example.com']}\n" + route()), "spec.cors.allowOrigins[0]"),
    (api("  cors: {allowOrigins: ['*'], allowCredentials: true}\n" + route()), "spec.cors.allowOrigins[0]"),
    (
        api("  cors: {allowOrigins: ['*'], allowMethods: [GET, FETCH]}\n" + route()),
        "spec.cors.allowMethods[1]",
    ),
    (api("  cors: {allowOrigins: ['*'], allowMethods: [ANY]}\n" + route()), "spec.cors.allowMethods[0]"),
    (api("  cors: {allowOrigins: ['*'], allowMethods: [get]}\n" + route()), "spec.cors.allowMethods[0]"),
    (api("  cors: {allowOrigins: ['*'], allowHeaders: ['x y']}\n" + route()), "spec.cors.allowHeaders[0]"),
    (api("  cors: {allowOrigins: ['*'], allowHeaders: ['']}\n" + route()), "spec.cors.allowHeaders[0]"),
    (
        api("  cors: {allowOrigins: ['*'], exposeHeaders: [ok, 'x:y']}\n" + route()),
        "spec.cors.exposeHeaders[1]",
    ),
    (api("  cors: {allowOrigins: ['*'], maxAgeSeconds: 86401}\n" + route()), "spec.cors.maxAgeSeconds"),
]

STAGE_CASES = [
    (stage("canary: {percent: 10, variables: {'bad-name': x}}"), "spec.canary.variables.bad-name"),
    (stage("canary: {percent: 10, stickyHeader: 'x user'}"), "spec.canary.stickyHeader"),
    (stage("throttling: {rateLimit: -1}"), "spec.throttling.rateLimit"),
    (stage("cache: {invalidation: sometimes}"), "spec.cache.invalidation"),
    (stage("cache: {methods: [GET, FETCH]}"), "spec.cache.methods"),
    (stage("cache: {methods: [ANY]}"), "spec.cache.methods"),
    (stage("variables: {a: '1'}, secretVariables: [b]"), "spec.secretVariables[0]"),
    (stage("variables: {a: '1'}, secretVariables: [a, a]"), "spec.secretVariables[1]"),
    (stage("tracingSampleRatio: 1.5"), "spec.tracingSampleRatio"),
    (stage("hosts: [api.example.com, API.example.com]"), "spec.hosts[1]"),
    (stage("hosts: [bad_host]"), "spec.hosts[0]"),
]

PLAN = "apiVersion: meshgate.io/v1\nkind: UsagePlan\nmetadata: {name: gold}\nspec: "
KEY = "apiVersion: meshgate.io/v1\nkind: ApiKey\nmetadata: {name: k}\nspec: "
OTHER_CASES = [
    (PLAN + "{apis: [pets/prod/x]}", "spec.apis[0]"),
    (PLAN + "{apis: [Pets]}", "spec.apis[0]"),
    (PLAN + "{throttle: {rateLimit: -1}}", "spec.throttle.rateLimit"),
    (KEY + "{usagePlan: gold, valueHmac: ABC}", "spec.valueHmac"),
]


@pytest.mark.parametrize(("document", "field"), API_CASES + STAGE_CASES + OTHER_CASES)
def test_refusal_names_the_field(document: str, field: str) -> None:
    with pytest.raises(InvalidConfig) as info:
        check(document)
    assert f": {field}: " in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "spec",
    [
        "  gatewayResponses: [{type: DEFAULT_4XX, status: 200}, {type: DEFAULT_5XX, status: 599}]",
        "  gatewayResponses: [{type: MISSING_AUTHENTICATION_TOKEN, status: 404, headers: {X-A: b}}]",
        "  cors: {allowOrigins: ['*'], allowMethods: ['*'], allowHeaders: ['*'], maxAgeSeconds: 86400}",
        "  cors: {allowOrigins: ['https://shop.example.com', 'http://localhost:3000', 'https://*.example.com',"
        " 'http://[::1]:8080', 'chrome-extension://abcdef'], allowCredentials: true, allowMethods: [GET, PATCH]}",
    ],
)
def test_edges_of_the_new_checks_pass(spec: str) -> None:
    check(api(spec + "\n" + route()))


def test_a_private_api_refuses_a_host_that_is_not_an_in_cluster_name() -> None:
    (res,) = load_documents(
        api("  endpointType: private\n" + route('{type: http, uri: "http://example.com/"}'))
    )
    with pytest.raises(InvalidConfig, match=r"spec\.routes\[0\]\.integration\.uri: host 'example.com'"):
        check_private_targets(res.api, [{}], ("10.0.0.0/8",))


@pytest.mark.parametrize(
    ("resource", "field"),
    [
        (resources_pb2.Resource(api=resources_pb2.Api()), "metadata.name"),
        (
            resources_pb2.Resource(
                api_key=resources_pb2.ApiKey(
                    metadata=resources_pb2.ObjectMeta(name="k"),
                    spec=resources_pb2.ApiKeySpec(value_hmac="ABC"),
                )
            ),
            "spec.valueHmac",
        ),
    ],
)
def test_refusals_behind_the_yaml_loader(resource: resources_pb2.Resource, field: str) -> None:
    """Resources that reach validate() without load_documents (the controller, the admin RPC): the
    loader refuses these two itself, so only a proto shows validate's own branch."""
    with pytest.raises(InvalidConfig, match=rf": {re.escape(field)}: "):
        validate(resource)
