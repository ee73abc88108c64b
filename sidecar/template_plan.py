"""Straight-line mapping templates compiled to a plan of Python closures: the fast path of transform.py.

Most mapping templates are text with `{{ ... }}` holes that pick values out of the
request (`input.json('$.a')`, `input.path('$.items') | length`, `context.requestId`,
`stageVariables.x`, `util.base64Encode(...)`). For those, Jinja's sandboxed runtime
costs more than the whole proxied request. This module takes the template Jinja
itself parsed and, when every node is one it knows, builds a list of closures that
compute the same output with none of the sandbox's per-access checks: the only
objects reachable are the ones the plan names, so there is nothing to guard.

Anything else (loops, conditionals, arithmetic, unknown names or filters) is not
planned and renders through the bounded sandbox. At render time, a lookup whose
result Jinja would treat specially (a missing key, a dict method name, a type the
plan does not know) raises Fallback, and the caller renders through the sandbox, so
both paths give the same output by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from jinja2 import Environment, nodes
from meshgate.sidecar import jsoncodec
from meshgate.sidecar.transform import path_steps, walk

ROOTS = frozenset({"input", "context", "stageVariables", "util"})
INPUT_METHODS = frozenset({"json", "path", "params"})
UTIL_METHODS = frozenset({"escapeJavaScript", "base64Encode", "base64Decode", "urlEncode", "urlDecode"})
FILTERS: Mapping[str, Callable[[Any], Any]] = {
    "length": len,
    "count": len,
    "lower": lambda v: str(v).lower(),
    "upper": lambda v: str(v).upper(),
    "trim": lambda v: str(v).strip(),
    "string": str,
}

Scope = Mapping[str, Any]  # root name -> object
Expr = Callable[[Scope], Any]
Plan = tuple[bytes | Callable[[Scope], bytes], ...]  # literal UTF-8 text, or a hole rendering to UTF-8


class Fallback(Exception):
    """The plan met a value it does not render exactly as Jinja would: render with Jinja instead."""


class _NotPlannable(Exception):
    pass


def plan(env: Environment, source: str) -> tuple[Plan, frozenset[str]] | None:
    """The plan of a straight-line template and the root names it reads, or None (use the sandbox)."""
    tree = env.parse(source)
    used: set[str] = set()
    parts: list[bytes | Callable[[Scope], bytes]] = []
    try:
        for stmt in tree.body:
            if not isinstance(stmt, nodes.Output):
                return None
            for node in stmt.nodes:
                if isinstance(node, nodes.TemplateData):
                    parts.append(node.data.encode())
                else:
                    parts.append(_output(node, used))
    except _NotPlannable:
        return None
    return tuple(parts), frozenset(used)


def render(parts: Plan, scope: Scope) -> bytes | None:
    """The output as UTF-8, or None when a value is one the plan does not render exactly as Jinja would."""
    try:
        return b"".join([p if p.__class__ is bytes else p(scope) for p in parts])  # type: ignore[operator]
    except Fallback:
        return None


def _yields_str(node: nodes.Node) -> bool:
    """Whether an expression always gives a str, so its output needs no conversion."""
    if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr):
        root = node.node.node
        name = root.name if isinstance(root, nodes.Name) else ""
        return (name == "input" and node.node.attr == "json") or (
            name == "util" and node.node.attr in UTIL_METHODS
        )
    return isinstance(node, nodes.Filter) and node.name in ("lower", "upper", "trim", "string")


def _output(node: nodes.Node, used: set[str]) -> Callable[[Scope], bytes]:
    """A hole: the expression's text as Jinja prints it, as UTF-8."""
    call = _input_path(node)
    if call is not None and call[0] == "json":  # orjson's bytes go straight out, never through str
        used.add("input")
        get = call[1]
        return lambda scope: jsoncodec.dumps_bytes(get(scope["input"].doc()))
    fn = _expr(node, used)
    if _yields_str(node):
        return lambda scope: fn(scope).encode()  # type: ignore[no-any-return]

    def out(scope: Scope) -> bytes:
        value = fn(scope)
        return (value if isinstance(value, str) else str(value)).encode()

    return out


def _input_path(node: nodes.Node) -> tuple[str, Callable[[Any], Any]] | None:
    """For `input.json('<JSONPath>')` / `input.path('<JSONPath>')`: the method and the lookup into the
    parsed body (a `$.name` lookup without walk's loop); None for any other expression."""
    if not (
        isinstance(node, nodes.Call)
        and isinstance(node.node, nodes.Getattr)
        and isinstance(node.node.node, nodes.Name)
        and node.node.node.name == "input"
        and node.node.attr in ("json", "path")
        and len(node.args) == 1
        and isinstance(node.args[0], nodes.Const)
        and isinstance(node.args[0].value, str)
        and not (node.kwargs or node.dyn_args or node.dyn_kwargs)
    ):
        return None
    try:
        steps = path_steps(node.args[0].value)
    except ValueError:
        raise _NotPlannable from None  # the sandbox reports it at render time
    if len(steps) == 1 and isinstance(steps[0], str):
        key = steps[0]
        return node.node.attr, lambda doc: doc.get(key) if isinstance(doc, dict) else None
    return node.node.attr, lambda doc: walk(doc, steps)


def _expr(node: nodes.Node, used: set[str]) -> Expr:
    if isinstance(node, nodes.Const):
        value = node.value
        return lambda scope: value
    if isinstance(node, nodes.Name) and node.ctx == "load" and node.name in ROOTS:
        name = node.name
        if name in ("util", "input"):
            raise _NotPlannable  # planned only as call targets and input.body
        used.add(name)
        return lambda scope: scope[name]
    if isinstance(node, nodes.Getattr) and node.ctx == "load":
        if isinstance(node.node, nodes.Name) and node.node.name == "input":
            if node.attr != "body":
                raise _NotPlannable
            used.add("input")
            return lambda scope: scope["input"].body
        return _item(_expr(node.node, used), node.attr)
    if isinstance(node, nodes.Getitem) and node.ctx == "load":
        arg = node.arg
        if isinstance(arg, nodes.Const):
            return _item(_expr(node.node, used), arg.value)
        if isinstance(arg, nodes.Neg) and isinstance(arg.node, nodes.Const) and type(arg.node.value) is int:
            return _item(_expr(node.node, used), -arg.node.value)  # items[-1]
        raise _NotPlannable
    if isinstance(node, nodes.Call):
        return _call(node, used)
    if isinstance(node, nodes.Filter) and node.node is not None:
        fn = FILTERS.get(node.name)
        if fn is None or node.args or node.kwargs or node.dyn_args or node.dyn_kwargs:
            raise _NotPlannable
        return _filter(fn, _expr(node.node, used))
    raise _NotPlannable


def _item(obj_fn: Expr, key: Any) -> Expr:
    """`a.b` / `a['b']` / `a[0]` on JSON values and the context mappings; anything else falls back.

    `input` itself is never indexed (Jinja would find its methods): the plan reads only `input.body`.
    """
    dict_attr = isinstance(key, str) and hasattr(dict, key)

    def get(scope: Scope) -> Any:
        obj = obj_fn(scope)
        if type(obj) is dict:
            if dict_attr or key not in obj:
                raise Fallback
            return obj[key]
        if type(obj) is list and type(key) is int and -len(obj) <= key < len(obj):
            return obj[key]
        raise Fallback

    return get


def _call(node: nodes.Call, used: set[str]) -> Expr:
    target = node.node
    if (
        node.kwargs
        or node.dyn_args
        or node.dyn_kwargs
        or not isinstance(target, nodes.Getattr)
        or not isinstance(target.node, nodes.Name)
    ):
        raise _NotPlannable
    root, method = target.node.name, target.attr
    if root == "input" and method in INPUT_METHODS and all(isinstance(a, nodes.Const) for a in node.args):
        used.add("input")
        call = _input_path(node)
        if call is not None:
            get = call[1]
            if method == "json":
                return lambda scope: jsoncodec.dumps(get(scope["input"].doc()))
            return lambda scope: get(scope["input"].doc())
        consts = tuple(a.value for a in node.args)  # type: ignore[attr-defined]
        return lambda scope: getattr(scope["input"], method)(*consts)
    if root == "util" and method in UTIL_METHODS and len(node.args) == 1:
        used.add("util")
        arg = _expr(node.args[0], used)
        return lambda scope: getattr(scope["util"], method)(arg(scope))
    raise _NotPlannable


def _filter(fn: Callable[[Any], Any], arg: Expr) -> Expr:
    def apply(scope: Scope) -> Any:
        try:
            return fn(arg(scope))
        except TypeError:
            raise Fallback from None

    return apply
