"""request_parameters and URI template compilation."""

import pytest
from meshgate.sidecar.context import LazyHeaders, RequestContext
from meshgate.sidecar.mapping import (
    MappingError,
    compile_parameters,
    quote_param,
    substitute_stage_vars,
    value_of,
)


def test_stage_vars_substituted_and_missing_reported() -> None:
    assert substitute_stage_vars("http://${stageVariables.b}/x", {"b": "svc:80"}) == ("http://svc:80/x", None)
    assert substitute_stage_vars("http://${stageVariables.b}/x", {})[1] == "b"


def test_parameters_compile_and_evaluate() -> None:
    plan = compile_parameters(
        {
            "integration.request.header.X-Id": "method.request.path.id",
            "integration.request.header.X-Const": "'hello'",
            "integration.request.querystring.q": "method.request.querystring.search",
            "integration.request.header.X-Rid": "context.requestId",
        },
        "prod",
        {},
        "/pets/{id}",
    )
    ctx = RequestContext("10.0.0.1", "rid-9")
    ctx.set_target(b"/pets/7?search=cat")
    ctx.params = {"id": "7"}
    got = {name: value_of(src, ctx) for name, src in plan.headers}
    assert got == {b"x-id": "7", b"x-const": "hello", b"x-rid": "rid-9"}
    assert [(n, value_of(s, ctx)) for n, s in plan.query] == [("q", "cat")]
    assert isinstance(ctx.headers, LazyHeaders)


def test_bad_mapping_key_or_value_refused() -> None:
    with pytest.raises(MappingError):
        compile_parameters({"integration.response.header.X": "'a'"}, "prod", {}, "/")
    with pytest.raises(MappingError):
        compile_parameters({"integration.request.header.X": "bogus.thing"}, "prod", {}, "/")


def test_quote_param() -> None:
    assert quote_param("a b/c", greedy=False) == "a%20b%2Fc"
    assert quote_param("a b/c", greedy=True) == "a%20b/c"
