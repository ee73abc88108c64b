"""Integration responses, sans I/O (sidecar/transform_responses.py): selection by whole-match pattern
with the default last, a function's errorMessage as the selection value, API Gateway's template
choice by Accept, the header mapping kinds, and what a non-proxy answer's headers are."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from meshgate.sidecar.errors import GatewayError
from meshgate.sidecar.transform_responses import compile_pattern, compile_responses, function_selection
from meshgate.v1 import resources_pb2


@dataclass
class Ctx:
    headers: dict[str, str] = field(default_factory=dict)
    request_id: str = "req-1"
    stage: str = "prod"

    def template_params(self) -> dict[str, dict[str, str]]:
        return {"path": {"id": "7"}, "querystring": {}, "header": dict(self.headers)}


def responses(**integration: Any) -> Any:
    integ = resources_pb2.Integration(type="http", uri="http://svc/", **integration)
    compiled = compile_responses(integ, {"color": "blue"})
    assert compiled is not None
    return compiled


R = resources_pb2.IntegrationResponse


def test_the_first_whole_match_wins_and_the_default_takes_the_rest() -> None:
    rs = responses(
        responses=[
            R(status=200),
            R(selection_pattern="4\\d{2}", status=400),
            R(selection_pattern="404", status=404),
        ]
    )
    assert [rs.pick(v).status for v in ("404", "403", "200", "1404")] == [400, 400, 200, 200]
    strict = responses(responses=[R(selection_pattern="2\\d{2}", status=201)])
    assert strict.pick("200") is not None and strict.pick("2000") is None  # whole match, no search
    out = strict.answer(Ctx(), "500", 500, [], b"{}")
    assert isinstance(out, GatewayError) and (out.status, out.gateway_type) == (
        500,
        "API_CONFIGURATION_ERROR",
    )


def test_a_non_proxy_answer_has_only_mapped_headers() -> None:
    rs = responses(
        proxy=False,
        responses=[
            R(
                status=202,
                response_parameters={
                    "method.response.header.X-From-Header": "integration.response.header.X-Up",
                    "method.response.header.X-Body": "integration.response.body",
                    "method.response.header.X-Path": "integration.response.body.a.b",
                    "method.response.header.X-Const": "'c'",
                    "method.response.header.X-Stage": "context.stage",
                    "method.response.header.X-Color": "stageVariables.color",
                },
            )
        ],
    )
    upstream = [(b"X-Up", b"u"), (b"X-Other", b"o"), (b"Content-Type", b"text/plain")]
    status, headers, body = rs.answer(Ctx(), "200", 200, upstream, b'{"a": {"b": 5}}')
    assert status == 202 and body == b'{"a": {"b": 5}}'
    assert dict(headers) == {
        b"x-body": b'{"a": {"b": 5}}',
        b"x-color": b"blue",
        b"x-const": b"c",
        b"x-from-header": b"u",
        b"x-path": b"5",
        b"x-stage": b"prod",
        b"content-type": b"application/json",  # non-proxy: API Gateway's default, not the backend's
    }


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [("text/html", b"<p>7</p>"), ("application/xml;q=0.9", b"<id>7</id>"), ("", b'{"id": "7"}'), ("image/png", b'{"id": "7"}')],
)  # fmt: skip
def test_the_template_is_the_accepted_one_else_json(accept: str, chosen: bytes) -> None:
    templates = {
        "application/json": '{"id": "{{ input.params(\'id\') }}"}',
        "text/html": "<p>{{ input.params('id') }}</p>",
        "application/xml": "<id>{{ input.params('id') }}</id>",
    }
    rs = responses(responses=[R(response_templates=templates)])
    _, headers, body = rs.answer(Ctx({"accept": accept} if accept else {}), "200", 200, [], b"")
    assert body == chosen
    media = {b"<p>7</p>": b"text/html", b"<id>7</id>": b"application/xml"}.get(chosen, b"application/json")
    assert dict(headers)[b"content-type"] == media


def test_a_function_is_selected_on_its_error_message() -> None:
    assert function_selection(200, b'{"errorMessage": "Not found: 7", "errorType": "E"}') == "Not found: 7"
    assert function_selection(200, b'{"result": 1}') == "200"
    assert function_selection(502, b"not json") == "502"


def test_patterns_that_can_backtrack_without_bound_are_refused() -> None:
    for pattern in ("(a+)+", "(.*a){20}", "(x*)*y"):
        with pytest.raises(ValueError, match="backtrack"):
            compile_pattern(pattern)
    assert compile_pattern("(\\n|.)+").fullmatch("line one\nline two")  # AWS's multi-line idiom
