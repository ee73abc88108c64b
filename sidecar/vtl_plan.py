"""Straight-line VTL templates compiled to a plan of Python closures: the fast path of vtl.py.

The common API Gateway template is text with references that pick values out of the
request: `$input.json('$.a')`, `$input.path('$.b')`, `$input.params('id')`, `$input.body`,
`$context.requestId`, `$stageVariables.x`, `$util.escapeJavaScript($input.path('$.c'))`.
This module takes the tree airspeed parsed and, when every top-level element is text, a
comment or such a reference, builds closures that render the same output without the
evaluator. Anything else (#set, #if, #foreach, macros, other names) is not planned. At
render time a lookup the evaluator would treat differently (a missing map key, a method
name, a value of another type) raises Fallback and the caller renders through airspeed,
so both give the same output by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from airspeed import operators as _op
from meshgate.sidecar import jsoncodec
from meshgate.sidecar.transform import path_steps, walk

Scope = Mapping[str, Any]
Expr = Callable[[Scope], Any]
Plan = tuple[bytes | Callable[[Scope], bytes], ...]
UTIL_METHODS = frozenset({"escapeJavaScript", "urlEncode", "urlDecode", "base64Encode", "base64Decode"})


def java_string(value: Any) -> str:
    """A value as Velocity (Java) prints it: null, true/false, {k=v, ...}, [a, b]."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{java_string(k)}={java_string(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(java_string(v) for v in value) + "]"
    return str(value)


class Fallback(Exception):
    """The plan met a value it does not render exactly as the evaluator would."""


class _NotPlannable(Exception):
    pass


def plan(root: Any) -> Plan | None:
    """The plan of a parsed straight-line template (airspeed's TemplateBody), or None."""
    parts: list[bytes | Callable[[Scope], bytes]] = []
    try:
        for child in root.block.children:
            if isinstance(child, _op.Text | _op.FallthroughHashText):
                parts.append(child.text.encode())
            elif isinstance(child, _op.Comment):
                continue
            elif isinstance(child, _op.FormalReference) and child.alternate is None:
                if child.expression is None:  # `$5`: not a reference, printed as it is
                    parts.append(child.my_text().encode())
                else:
                    parts.append(_output(_expr(child.expression)))
            else:
                return None
    except _NotPlannable:
        return None
    return tuple(parts)


def render(parts: Plan, scope: Scope) -> bytes | None:
    """The output as UTF-8, or None when a value is one the plan does not render exactly."""
    try:
        return b"".join([p if p.__class__ is bytes else p(scope) for p in parts])  # type: ignore[operator]
    except Fallback:
        return None


def _output(fn: Expr) -> Callable[[Scope], bytes]:
    json_bytes = getattr(fn, "json_bytes", None)
    if json_bytes is not None:  # $input.json(...): orjson's bytes go straight out
        return json_bytes  # type: ignore[no-any-return]

    def out(scope: Scope) -> bytes:
        value = fn(scope)
        if value is None:
            return b""
        if value.__class__ is str and value == _op.REPLACE_FORMAL_TEXT:
            raise Fallback  # airspeed prints such a reference's own text
        return (value if isinstance(value, str) else java_string(value)).encode()

    return out


def _chain(expr: Any) -> list[Any]:
    """The NameOrCall parts of `$a.b(...).c`; _NotPlannable for indexes."""
    parts = [expr.part]
    sub = expr.subexpression
    while sub is not None:
        if not isinstance(sub.expression, _op.VariableExpression):
            raise _NotPlannable
        parts.append(sub.expression.part)
        sub = sub.expression.subexpression
    if any(p.index is not None for p in parts):
        raise _NotPlannable
    return parts


def _args(part: Any) -> list[Any]:
    """A call's argument expressions (the Value elements), [] for `name()`."""
    values = part.parameters.values
    return list(values.values) if isinstance(values, _op.ValueList) else []


def _constant(value: Any) -> str:
    """A string literal argument ('x', or "x" without references)."""
    expr = value.expression
    if type(expr) is _op.StringLiteral:
        return expr.value  # type: ignore[no-any-return]
    if type(expr) is _op.InterpolatedStringLiteral and all(type(c) is _op.Text for c in expr.block.children):
        return "".join(c.text for c in expr.block.children)
    raise _NotPlannable


def _expr(expr: Any) -> Expr:
    parts = _chain(expr)
    root, rest = parts[0], parts[1:]
    if root.parameters is not None:
        raise _NotPlannable
    if root.name == "input" and len(rest) == 1:
        return _input(rest[0])
    if root.name in ("context", "stageVariables") and rest and all(p.parameters is None for p in rest):
        return _walk_maps(root.name, tuple(p.name for p in rest))
    if root.name == "util" and len(rest) == 1 and rest[0].parameters is not None:
        method = rest[0].name
        args = _args(rest[0])
        if method not in UTIL_METHODS or len(args) != 1:
            raise _NotPlannable
        arg = _value(args[0])
        return lambda scope: getattr(scope["util"], method)(arg(scope))
    raise _NotPlannable


def _value(value: Any) -> Expr:
    """An argument: a string literal or a plannable reference."""
    expr = value.expression
    if isinstance(expr, _op.FormalReference) and expr.alternate is None and expr.expression:
        return _expr(expr.expression)
    const = _constant(value)
    return lambda scope: const


def _input(part: Any) -> Expr:
    if part.name == "body" and part.parameters is None:
        return lambda scope: scope["input"].body
    if part.parameters is None:
        raise _NotPlannable
    args = _args(part)
    if part.name == "params" and len(args) == 1:
        name = _constant(args[0])
        return lambda scope: scope["input"].params(name)
    if part.name not in ("json", "path") or len(args) != 1:
        raise _NotPlannable
    try:
        steps = path_steps(_constant(args[0]))
    except ValueError:
        raise _NotPlannable from None  # the evaluator reports it at render time
    if part.name == "path":
        return lambda scope: walk(scope["input"].doc(), steps)

    def json_text(scope: Scope) -> str:
        return jsoncodec.dumps(walk(scope["input"].doc(), steps))

    json_text.json_bytes = lambda scope: jsoncodec.dumps_bytes(walk(scope["input"].doc(), steps))  # type: ignore[attr-defined]
    return json_text


def _walk_maps(root: str, names: tuple[str, ...]) -> Expr:
    """`$context.a.b`: map entries only; a missing or null entry (where the evaluator would look
    for a method) falls back."""

    def get(scope: Scope) -> Any:
        cur = scope[root]
        for name in names:
            if type(cur) is not dict or name.startswith("_"):
                raise Fallback
            cur = cur.get(name)
            if cur is None:
                raise Fallback
        return cur

    return get
