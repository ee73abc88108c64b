"""The straight-line template plan renders exactly what the Jinja sandbox renders, falls back to it for
what it does not know, and the JSON codec keeps the standard library's verdicts."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from meshgate.sidecar import jsoncodec
from meshgate.sidecar.templates import UTIL, BodyTemplate, TemplateInput, TemplateLimit
from meshgate.sidecar.validation import BodyModel, Invalid, Valid

BODY = json.dumps(
    {
        "customer": "ann",
        "items": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 1}],
        "meta": {"items": "shadowed by dict.items", "n": None, "flag": True, "ratio": 0.5},
        "big": 2**70,
    }
).encode()
PARAMS = {"path": {"id": "7"}, "querystring": {"lang": "en"}, "header": {"x-trace": "t1"}}
CONTEXT = {"requestId": "r-1", "stage": "prod", "authorizer": {"sub": "u1"}}
VARIABLES = {"env": "prod-eu"}

PLANNED = [
    "{\"customer\": {{ input.json('$.customer') }}, \"n\": {{ input.path('$.items') | length }}}",
    "{{ input.json('$.items[1]') }} {{ input.json('$.items') }} {{ input.json('$') }}",
    "{{ input.path('$.items')[0].sku }} {{ input.path('$.items')[-1]['qty'] }}",
    "{{ input.params('id') }}/{{ input.params('lang') }}/{{ input.params('x-trace') }}/{{ input.params('nope') }}",
    "{{ context.requestId }} {{ context['stage'] }} {{ context.authorizer.sub }} {{ stageVariables.env }}",
    "{{ util.base64Encode(input.path('$.customer')) }} {{ util.escapeJavaScript('a\"b') }}",
    "{{ input.path('$.meta.n') }} {{ input.path('$.meta.flag') }} {{ input.path('$.meta.ratio') }}",
    "{{ input.path('$.customer') | upper }} {{ 'X' | lower }} {{ input.path('$.big') }}",
    "{{ input.json('$.big') }} {{ input.body | length }}",
    "{{ context.authorizer }} {{ input.path('$.items')[0] }}",
    "no holes at all\n",
    "ünïcødé → {{ input.json('$.nope') }} {{ input.json('$.customer') }} {{ input.path('$.customer') }}",
]
FALLING_BACK = [
    "{{ stageVariables.missing }}!",  # Undefined renders empty
    "{{ context.items }}",  # a dict method name: Jinja finds the method
    "{{ input.path('$.meta').items }}",
    "{{ input.path('$.items')[5] }}",  # out of range: Undefined
    "{{ input.path('$.customer')[0] }}",  # indexing a string
    "{{ input.path('$.meta.n') | length }}",  # len(None): Jinja's error, through the sandbox
]
NOT_PLANNED = [
    "{% for i in input.path('$.items') %}{{ i.sku }}{% endfor %}",
    "{% if context.stage == 'prod' %}p{% endif %}",
    "{{ 1 + 2 }}",
    "{{ input }}",
    "{{ input.path('$.customer') | replace('a', 'b') }}",
    "{{ unknown }}",
    "{{ input.path(context.stage) }}",
]


def sandboxed(t: BodyTemplate, body: bytes = BODY) -> bytes | str:
    scope: dict[str, Any] = {
        "input": TemplateInput(body, PARAMS),
        "context": CONTEXT,
        "stageVariables": VARIABLES,
        "util": UTIL,
    }
    try:
        out = t._render_sandboxed(scope)
    except TemplateLimit as exc:
        return f"error: TemplateLimit: {exc}"
    except Exception as exc:  # render() turns this into TemplateLimit carrying the type and message
        return f"error: TemplateLimit: template failed: {type(exc).__name__}: {str(exc)[:200]}"
    return re.sub(rb" at 0x[0-9a-f]+", b"", out)  # a method's repr carries its object's address


def rendered(t: BodyTemplate, doc: Any = None) -> bytes | str:
    try:
        if doc is None:
            out = t.render(BODY, lambda: PARAMS, lambda: CONTEXT, VARIABLES)
        else:
            out = t.render(BODY, PARAMS, CONTEXT, VARIABLES, doc)
    except TemplateLimit as exc:  # the type and message, so two different failures do not compare equal
        return f"error: TemplateLimit: {exc}"
    return re.sub(rb" at 0x[0-9a-f]+", b"", out)


@pytest.mark.parametrize("source", PLANNED + FALLING_BACK)
def test_plan_renders_what_the_sandbox_renders(source: str) -> None:
    t = BodyTemplate.compile("application/json", source)
    assert t.plan is not None, "expected the fast path"
    expected = sandboxed(t)
    assert rendered(t) == expected
    assert rendered(t, jsoncodec.loads(BODY)) == expected  # with the document validation already parsed


def test_plan_output_is_the_sandboxs_utf8_for_non_ascii_values() -> None:
    body = json.dumps({"customer": "Zoë → 東京", "items": [{"sku": "ü"}]}, ensure_ascii=False).encode()
    t = BodyTemplate.compile("application/json", PLANNED[-1] + " {{ input.json('$.items') }}")
    assert t.plan is not None
    out = t.render(body, {}, {}, {})
    assert out == sandboxed(t, body) and "Zoë → 東京".encode() in out


@pytest.mark.parametrize("source", NOT_PLANNED)
def test_other_templates_go_through_the_sandbox(source: str) -> None:
    t = BodyTemplate.compile("application/json", source)
    assert t.plan is None
    assert rendered(t) == sandboxed(t)


def test_plan_output_is_bounded() -> None:
    body = json.dumps({"s": "x" * 300_000}).encode()
    t = BodyTemplate.compile("application/json", "{{ input.json('$.s') }}" * 4)
    assert t.plan is not None
    with pytest.raises(TemplateLimit, match="output larger"):
        t.render(body, {}, {}, {})


def test_lazy_arguments_are_not_built_when_unread() -> None:
    def boom() -> Any:
        raise AssertionError("built although the template does not read it")

    t = BodyTemplate.compile("application/json", "{{ input.json('$.customer') }}")
    assert t.render(BODY, boom, boom, {}) == b'"ann"'


def test_codec_keeps_the_standard_library_verdicts() -> None:
    assert jsoncodec.loads(b'{"n": 1180591620717411303424}') == {"n": 2**70}  # beyond orjson's 64 bits
    assert jsoncodec.dumps({"n": 2**70, "s": "é"}) == '{"n":1180591620717411303424,"s":"é"}'
    assert jsoncodec.dumps(float("nan")) == "null"
    with pytest.raises(ValueError):
        jsoncodec.loads(b"{bad")


def test_validation_hands_over_the_parsed_document() -> None:
    model = BodyModel.compile("M", "application/json", '{"type": "object", "required": ["a"]}')
    ok = model.parse("application/json", b'{"a": 1180591620717411303424}')
    assert isinstance(ok, Valid) and ok.doc == {"a": 2**70}
    bad = model.parse("application/json", b'{"b": 1}')
    assert isinstance(bad, Invalid) and bad.status == 400 and bad.errors[0]["path"] == "/"
    utf = model.parse("application/json", b'{"a": "\xff"}')
    assert isinstance(utf, Invalid) and "UTF-8" in utf.reason
    nested = model.parse("application/json", b"[" * 5000 + b"]" * 5000)
    assert isinstance(nested, Invalid) and "nested" in nested.reason
