"""VTL mapping templates through the real listener: AWS's documented examples run unchanged (request and
response templates, $input/$util/$context/$stageVariables, overrides), the language switch, and bounds."""

from __future__ import annotations

import json
from typing import Any

import pytest
from meshgate.sidecar.routing import CompileError, compile_snapshot
from meshgate.sidecar.runtime import Runtime

from .conftest import Backends, Gateway, bundle, http_route, snapshot
from .test_transform import echo, post


def start(gateway: Gateway, backend: int, api_language: str = "vtl", **integration: Any) -> None:
    route = http_route("POST", "/pets/{id}", f"http://127.0.0.1:{backend}/pets/{{id}}", **integration)
    api_spec = {"templateLanguage": api_language} if api_language else {}
    snap = snapshot(bundle([route], variables={"env": "prod-eu", "region": "eu"}, api_spec=api_spec))
    runtime = Runtime()
    gateway.start(snap, runtime=runtime)
    gateway.on_stop.append(runtime.close)


def sent(data: bytes) -> Any:
    """What the echo backend received as the request body, parsed."""
    return json.loads(json.loads(data)["body"])


# AWS, "Mapping templates for REST APIs" (models-mappings): the PetStore example.
PETSTORE = """#set($inputRoot = $input.path('$'))
[
#foreach($elem in $inputRoot)
  {
    "description" : "Item $elem.id is a $elem.type.",
    "askingPrice" : $elem.price
  }#if($foreach.hasNext),#end

#end
]"""


def test_aws_petstore_request_template(gateway: Gateway, backends: Backends) -> None:
    start(gateway, backends.start(echo), requestTemplates={"application/json": PETSTORE})
    pets = [{"id": 1, "type": "dog", "price": 249.99}, {"id": 2, "type": "cat", "price": 124.99}]
    status, _, data = post(gateway.port, "/prod/pets/1", json.dumps(pets).encode())
    assert status == 200 and sent(data) == [
        {"description": "Item 1 is a dog.", "askingPrice": 249.99},
        {"description": "Item 2 is a cat.", "askingPrice": 124.99},
    ]


# AWS's "Method Request passthrough" template (the console's generated one), shortened to what meshgate knows.
PASSTHROUGH = """#set($allParams = $input.params())
{
"body-json" : $input.json('$'),
"params" : {
#foreach($type in $allParams.keySet())
    #set($params = $allParams.get($type))
"$type" : {
    #foreach($paramName in $params.keySet())
    "$paramName" : "$util.escapeJavaScript($params.get($paramName))"
        #if($foreach.hasNext),#end
    #end
}
    #if($foreach.hasNext),#end
#end
},
"stage-variables" : {
#foreach($key in $stageVariables.keySet())
"$key" : "$util.escapeJavaScript($stageVariables.get($key))"
    #if($foreach.hasNext),#end
#end
},
"context" : {
    "http-method" : "$context.httpMethod",
    "stage" : "$context.stage",
    "source-ip" : "$context.identity.sourceIp",
    "request-id" : "$context.requestId",
    "resource-path" : "$context.resourcePath"
    }
}"""


def test_aws_passthrough_template(gateway: Gateway, backends: Backends) -> None:
    start(gateway, backends.start(echo), requestTemplates={"application/json": PASSTHROUGH})
    status, headers, data = post(
        gateway.port, "/prod/pets/7?q=a%22b", b'{"name": "rex"}', headers={"X-T": "t"}
    )
    got = sent(data)
    assert status == 200 and got["body-json"] == {"name": "rex"}
    assert got["params"]["path"] == {"id": "7"} and got["params"]["querystring"] == {"q": 'a"b'}
    assert got["params"]["header"]["x-t"] == "t"
    assert got["stage-variables"] == {"env": "prod-eu", "region": "eu"}
    assert got["context"] == {
        "http-method": "POST",
        "stage": "prod",
        "source-ip": "127.0.0.1",
        "request-id": headers["x-meshgate-request-id"],
        "resource-path": "/pets/{id}",
    }


# $input and $util as AWS's "Variables for data transformations" page documents them.
HELPERS = """#set($name = $input.path('$.pet.name'))
{
  "petName": $input.json('$.pet.name'),
  "tags": $input.json('$.pet.tags'),
  "firstTag": "$input.path('$.pet.tags[0]')",
  "tagCount": $input.path('$.pet.tags').size(),
  "id": "$input.params('id')",
  "lang": "$input.params().querystring.lang",
  "b64": "$util.base64Encode($name)",
  "unb64": "$util.base64Decode('cmV4')",
  "url": "$util.urlEncode('a b&c')",
  "unurl": "$util.urlDecode('a%20b')",
  "parsed": "$util.parseJson($input.path('$.inner')).k",
  "escaped": "$util.escapeJavaScript($input.path('$.note'))",
  "kind": "#if($name == 'rex')dog#elseif($name == 'tom')cat#{else}other#end",
  "env": "$stageVariables.env",
  "missing": "$context.nothing.here"
}"""


def test_input_util_and_directives(gateway: Gateway, backends: Backends) -> None:
    start(gateway, backends.start(echo), requestTemplates={"application/json": HELPERS})
    body = {"pet": {"name": "rex", "tags": ["good", "dog"]}, "inner": '{"k": "v"}', "note": 'say "hi"'}
    status, _, data = post(gateway.port, "/prod/pets/7?lang=en", json.dumps(body).encode())
    assert status == 200 and sent(data) == {
        "petName": "rex",
        "tags": ["good", "dog"],
        "firstTag": "good",
        "tagCount": 2,
        "id": "7",
        "lang": "en",
        "b64": "cmV4",
        "unb64": "rex",
        "url": "a%20b%26c",
        "unurl": "a b",
        "parsed": "v",
        "escaped": 'say "hi"',
        "kind": "dog",
        "env": "prod-eu",
        "missing": "",
    }


# AWS, "Override your API's request and response parameters and status codes", examples 1 and 2.
STATUS_OVERRIDE = """#set($inputRoot = $input.path('$'))
$input.json("$")
#if($inputRoot.toString().contains("error"))
#set($context.responseOverride.status = 400)
#set($context.responseOverride.header.X-Error = "$input.path('$.line')")
#end"""
HEADER_OVERRIDE = """#set($header1Override = "foo")
#set($header3Value = "$input.params('header1')$input.params('header2')")
$input.json("$")
#set($context.requestOverride.header.header3 = $header3Value)
#set($context.requestOverride.header.header1 = $header1Override)"""


def test_response_override_sets_status_and_headers(gateway: Gateway, backends: Backends) -> None:
    start(gateway, backends.start(echo), responseTemplates={"application/json": STATUS_OVERRIDE})
    status, headers, data = post(gateway.port, "/prod/pets/1", b'{"errors": ["out of range"]}')
    assert status == 400 and headers["x-error"] == "POST /pets/1 HTTP/1.1"
    assert json.loads(data)["body"] == '{"errors": ["out of range"]}'
    status, headers, _ = post(gateway.port, "/prod/pets/1", b'{"fine": true}')
    assert status == 200 and "x-error" not in headers


def test_request_override_sets_integration_headers(gateway: Gateway, backends: Backends) -> None:
    start(gateway, backends.start(echo), requestTemplates={"application/json": HEADER_OVERRIDE})
    status, _, data = post(gateway.port, "/prod/pets/1", b"{}", headers={"header1": "h1", "header2": "h2"})
    seen = json.loads(data)["headers"]
    assert status == 200 and seen["header1"] == "foo" and seen["header3"] == "h1h2"


def test_language_per_api_and_per_integration(gateway: Gateway, backends: Backends) -> None:
    port = backends.start(echo)
    vtl = {"application/json": '{"id": "$input.params(\'id\')"}'}
    jinja = {"application/json": '{"id": "{{ input.params(\'id\') }}"}'}
    start(gateway, port, requestTemplates=vtl)  # the Api says vtl
    assert sent(post(gateway.port, "/prod/pets/3", b"{}")[2]) == {"id": "3"}
    start(gateway, port, api_language="", requestTemplates=jinja)  # the default stays Jinja
    assert sent(post(gateway.port, "/prod/pets/4", b"{}")[2]) == {"id": "4"}
    start(
        gateway, port, api_language="", requestTemplates=vtl, templateLanguage="vtl"
    )  # the integration says
    assert sent(post(gateway.port, "/prod/pets/5", b"{}")[2]) == {"id": "5"}
    start(gateway, port, api_language="vtl", requestTemplates=jinja, templateLanguage="jinja")  # and wins
    assert sent(post(gateway.port, "/prod/pets/6", b"{}")[2]) == {"id": "6"}


@pytest.mark.parametrize(
    ("template", "why"),
    [
        (
            "#foreach($i in [1..1000])#foreach($j in [1..1000])#foreach($k in [1..1000])#end#end#end",
            "steps|ran longer than",
        ),
        ("#foreach($i in [1..1001])x#end", "at most 1000"),
        ("#set($s = 'yyyyyyyyyyyyyyyy')#foreach($i in [1..100])#set($s = \"$s$s\")#end$s", "larger than"),
        (
            "#foreach($i in [1..1000])#foreach($j in [1..1000])yyyyyyyyyyyyyyyyyyyy#end#end",
            "output larger|ran longer than",
        ),
        ("#macro(f $n)#f($n)#end#f(1)", "nested deeper"),
        ("#set($s = '#evaluate($s)')#evaluate($s)", "nested deeper"),
        ("#set($x = 'x' * 1000000000)", "too large a value"),
        ("#set($x = 7)#foreach($i in [1..100])#set($x = $x * $x)#end$x", "too large a number"),
        ("$input.body.replace('a', $input.body)", "too large a string"),
        ("$input.body.replaceAll('(a+)+b', 'x')", "too complex"),
        ("#include('/etc/passwd')", "cannot load files"),
        ("#set($context.responseOverride.status = 'x')", "not a number"),
        ("$util.parseJson('{')", "JSONDecodeError"),
    ],
)
def test_runaway_templates_are_a_500(gateway: Gateway, backends: Backends, template: str, why: str) -> None:
    port = backends.start(echo)
    start(gateway, port, requestTemplates={"application/json": template})
    status, _, data = post(gateway.port, "/prod/pets/1", b"a" * 2000)
    # a busy machine may hit the time bound before the step or size bound: either one stops it
    assert status == 500 and any(w in json.loads(data)["reason"] for w in why.split("|")), data
    start(gateway, port)
    assert post(gateway.port, "/prod/pets/1", b"{}")[0] == 200  # the sidecar is unaffected


def test_python_attributes_are_out_of_reach(gateway: Gateway, backends: Backends) -> None:
    escapes = (
        "$input.__class__|$input._raw|$input.body.__class__.__mro__|$util.parseJson('{}').get.__globals__"
    )
    start(
        gateway, backends.start(echo), requestTemplates={"application/json": escapes + "|$input.body.format"}
    )
    status, _, data = post(gateway.port, "/prod/pets/1", b"{}")
    assert status == 200 and json.loads(data)["body"] == "||||"


def test_templates_that_cannot_compile() -> None:
    for source in ("#if($a", "#foreach($x in $y)no end", "x" * (300 * 1024 + 1)):
        route = http_route("POST", "/x", "http://b/x", requestTemplates={"application/json": source})
        with pytest.raises(CompileError, match="template for application/json"):
            compile_snapshot(snapshot(bundle([route], api_spec={"templateLanguage": "vtl"})), Runtime())
    route = http_route(
        "POST", "/x", "http://b/x", requestTemplates={"a/b": "$x"}, templateLanguage="velocity"
    )
    with pytest.raises(CompileError, match="templateLanguage"):
        compile_snapshot(snapshot(bundle([route])), Runtime())
