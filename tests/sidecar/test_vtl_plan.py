"""The VTL fast path: which templates get a plan, and that a plan renders exactly what airspeed renders."""

from __future__ import annotations

import dataclasses
import json

import pytest
from meshgate.sidecar.vtl import VtlTemplate

BODY = json.dumps(
    {
        "a": 1,
        "s": 'it\'s /x "q"',
        "f": 2.5,
        "t": True,
        "n": None,
        "o": {"k": [1, "b", None, False]},
        "items": [{"id": 1}, {"id": 2}],
        "text": "__FORMAL_REFERENCE__REPLACE_TEXT__",
    }
).encode()
PARAMS = {"path": {"id": "7"}, "querystring": {"q": "x y"}, "header": {"x-h": "hv"}}
CONTEXT = {
    "requestId": "r1",
    "stage": "prod",
    "sourceIp": "10.0.0.1",
    "authorizer": {"principalId": "u", "n": 3},
}
STAGE = {"env": "prod-eu"}

STRAIGHT = [
    "{\"a\": $input.json('$.a'), \"o\": $input.json('$.o'), \"all\": $input.json('$')}",
    "$input.json(\"$.items[1].id\") $input.json('$.missing') $input.json('$.s')",
    "$input.path('$.a') $input.path('$.s') $input.path('$.f') $input.path('$.t') $input.path('$.n')",
    "$input.path('$.o') $input.path('$.items') $input.path('$.o.k[3]') $input.path('$.text')",
    "${input.json('$.a')}x ${input.path('$.s')}y",
    "$input.body",
    "$input.params('id') $input.params('q') $input.params('X-H') $input.params('none')",
    "$context.requestId $context.stage $context.identity.sourceIp $context.authorizer.principalId",
    "$context.authorizer.n $context.authorizer $context.nope $context.authorizer.nope $context.authorizer.size",
    "$stageVariables.env $stageVariables.nope",
    "$util.escapeJavaScript($input.path('$.s')) $util.base64Encode('hi') $util.urlEncode($input.params('q'))",
    "$util.base64Decode('aGk=') $util.urlDecode('a%20b') $util.escapeJavaScript($input.json('$.o'))",
    "## a comment\nliteral #text and \\$escaped ## tail\n#* block *#end",
    "price: $5 and 100% #1",
    "$!{context.requestId} $!input.params('id')",
    "$context.authorizer.size $stageVariables.keySet",
]
NOT_STRAIGHT = [
    "#set($a = 1)$a",
    "#if($input.path('$.a'))x#end",
    "#foreach($i in $input.path('$.items'))$i.id#end",
    "$input.path('$.items').size()",
    "$input.path('$.o').k",
    "${context.nope|'default'}",
    "$foo",
    "$util.parseJson('{}')",
    "$input.params()",
    "#macro(m)x#end#m()",
    "$input.json",
]


def both(source: str) -> tuple[VtlTemplate, VtlTemplate]:
    planned = VtlTemplate.compile("application/json", source)
    return planned, dataclasses.replace(planned, plan=None)


@pytest.mark.parametrize("source", STRAIGHT)
def test_straight_line_templates_get_a_plan_with_the_engines_output(source: str) -> None:
    planned, engine = both(source)
    assert planned.plan is not None
    for body in (BODY, b"", b"not json"):
        assert planned.render(body, PARAMS, CONTEXT, STAGE) == engine.render(body, PARAMS, CONTEXT, STAGE)


@pytest.mark.parametrize("source", NOT_STRAIGHT)
def test_other_templates_run_in_the_engine(source: str) -> None:
    assert both(source)[0].plan is None


def test_a_method_named_without_a_call_prints_nothing() -> None:
    source = "[$input.json][$context.authorizer.size][$stageVariables.keySet][$input.path('$.s').length]"
    assert both(source)[1].render(BODY, PARAMS, CONTEXT, STAGE) == b"[][][][]"


def test_the_plan_reads_only_what_it_needs() -> None:
    planned, engine = both("$input.json('$.a')")
    asked: list[str] = []

    def params() -> dict[str, dict[str, str]]:
        asked.append("params")
        return PARAMS

    def context() -> dict[str, object]:
        asked.append("context")
        return CONTEXT

    assert planned.render(BODY, params, context, STAGE) == b"1" == engine.render(BODY, params, context, STAGE)
    assert asked == []
