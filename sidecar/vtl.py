"""VTL body mapping templates (API Gateway's Velocity dialect) on airspeed-ext, bounded like the Jinja sandbox.

Templates written for API Gateway run unchanged: `$input.body|json()|path()|params()`,
`$util.*`, `$context.*` (with `requestOverride` / `responseOverride`), `$stageVariables`,
`#set`, `#if/#elseif/#else`, `#foreach` (`$foreach.hasNext`), `#macro`. The `input` and
`util` objects are the ones Jinja templates get (transform.py). airspeed evaluates any
Python attribute; here a name reaches only the helper objects' own API and a table of
Java-style methods on strings, lists and maps, never an underscore name. Every call,
loop iteration and macro counts as a step; `#foreach` stops at 1,000 items (as on AWS);
values, output, time and nesting are bounded: a runaway template is a TemplateLimit (500).
Straight-line templates render from a plan instead (vtl_plan.py). airspeed loads with the
first VTL template a snapshot has.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from airspeed import operators as _op
from meshgate.sidecar import vtl_plan
from meshgate.sidecar.transform import (
    MAX_INPUT,
    MAX_OUTPUT,
    MAX_SECONDS,
    MAX_STEPS,
    UNPARSED,
    Context,
    Overrides,
    Params,
    Rendered,
    TemplateInput,
    TemplateLimit,
    Util,
)
from meshgate.sidecar.vtl_plan import java_string

MAX_TEMPLATE = 300 * 1024  # API Gateway's mapping template size limit
MAX_FOREACH = 1000  # API Gateway's #foreach limit
MAX_DEPTH = 32  # nested macro calls, #define'd blocks and #evaluate
MAX_INT_BITS = 4096
_REGEX_SUBJECT = 16 * 1024  # regex methods (replaceAll, matches, split) on at most this much text
_NESTED_QUANTIFIER = re.compile(r"\([^)]*[*+}][^)]*\)\s*[*+{]")
_UNBOUNDED = re.compile(r"(?<!\\)[*+]|\{\d+,\}")


class VtlUtil(Util):
    """`$util`: as Jinja's, but escapeJavaScript escapes `'` and `/` too (Java's escapeJavaScript)."""

    @staticmethod
    def escapeJavaScript(s: Any) -> str:
        return Util.escapeJavaScript(s).replace("'", "\\'").replace("/", "\\/")


VTL_UTIL = VtlUtil()
_ATTRS: Mapping[type, frozenset[str]] = {
    TemplateInput: frozenset({"body", "json", "path", "params"}),
    VtlUtil: frozenset(
        {"escapeJavaScript", "parseJson", "urlEncode", "urlDecode", "base64Encode", "base64Decode"}
    ),
}


class _Budget:
    __slots__ = ("deadline", "depth", "steps")

    def __init__(self) -> None:
        self.steps = 0
        self.depth = 0
        self.deadline = 0.0


_BUDGET = _Budget()  # renders are synchronous on the sidecar's loop: one at a time


def _tick() -> None:
    b = _BUDGET
    b.steps += 1
    if b.steps > MAX_STEPS:
        raise TemplateLimit(f"template exceeded {MAX_STEPS} steps")
    if b.steps & 63 == 0 and time.monotonic() > b.deadline:
        raise TemplateLimit(f"template ran longer than {MAX_SECONDS:g}s")


def _sized(value: Any) -> Any:
    """The value, unless it is larger than any template may build."""
    if isinstance(value, str | list | dict | tuple | range) and len(value) > MAX_OUTPUT:
        raise TemplateLimit(f"template built a value of {len(value)} items")
    if type(value) is int and value.bit_length() > MAX_INT_BITS:
        raise TemplateLimit("template built too large a number")
    return value


# ---------------------------------------------------------------- methods on values (Java names)
def _regex(pattern: Any, subject: str) -> str:
    p = str(pattern)
    if len(subject) > _REGEX_SUBJECT or len(p) > 256:
        raise TemplateLimit("regular expression on too long a string")
    if _NESTED_QUANTIFIER.search(p) or len(_UNBOUNDED.findall(p)) > 1:
        raise TemplateLimit("regular expression too complex for a mapping template")
    return p


def _replace(s: str, old: Any, new: Any) -> str:
    old, new = str(old), str(new)
    count = s.count(old) if old else len(s) + 1
    if len(s) + count * (len(new) - len(old)) > MAX_OUTPUT:
        raise TemplateLimit("replace would build too large a string")
    return s.replace(old, new)


def _split(s: str, pattern: Any) -> list[str]:
    parts = re.split(_regex(pattern, s), s)
    while parts and parts[-1] == "":  # Java's split drops trailing empty strings
        parts.pop()
    return parts


def _substring(s: str, start: int, end: int | None = None) -> str:
    return s[start:end]


def _list_add(lst: list[Any], value: Any) -> bool:
    if len(lst) >= MAX_OUTPUT:
        raise TemplateLimit("list too long")
    lst.append(value)
    return True


def _put(d: dict[Any, Any], key: Any, value: Any) -> Any:
    old = d.get(key)
    d[key] = value
    _sized(d)
    return old


_STR: Mapping[str, Callable[..., Any]] = {
    "length": len,
    "isEmpty": lambda s: not s,
    "contains": lambda s, v: str(v) in s,
    "startsWith": lambda s, v: s.startswith(str(v)),
    "endsWith": lambda s, v: s.endswith(str(v)),
    "indexOf": lambda s, v: s.find(str(v)),
    "lastIndexOf": lambda s, v: s.rfind(str(v)),
    "substring": _substring,
    "charAt": lambda s, i: s[i],
    "toLowerCase": str.lower,
    "toUpperCase": str.upper,
    "trim": str.strip,
    "equals": lambda s, v: s == v,
    "equalsIgnoreCase": lambda s, v: isinstance(v, str) and s.lower() == v.lower(),
    "toString": java_string,
    "replace": _replace,
    "replaceAll": lambda s, p, r: _sized(re.sub(_regex(p, s), str(r).replace("$", "\\"), s)),
    "matches": lambda s, p: re.fullmatch(_regex(p, s), s) is not None,
    "split": _split,
    "concat": lambda s, v: _sized(s + str(v)),
}
_LIST: Mapping[str, Callable[..., Any]] = {
    "size": len,
    "isEmpty": lambda v: not v,
    "get": lambda v, i: v[i],
    "contains": lambda v, x: x in v,
    "add": _list_add,
    "toString": java_string,
}
_MAP: Mapping[str, Callable[..., Any]] = {
    "get": lambda d, k: d.get(k),
    "containsKey": lambda d, k: k in d,
    "keySet": lambda d: list(d),
    "values": lambda d: list(d.values()),
    "size": len,
    "isEmpty": lambda d: not d,
    "put": _put,
    "toString": java_string,
}
_NUMBER: Mapping[str, Callable[..., Any]] = {"toString": java_string}
_METHODS: Mapping[type, Mapping[str, Callable[..., Any]]] = {
    str: _STR,
    list: _LIST,
    range: _LIST,
    dict: _MAP,
    int: _NUMBER,
    float: _NUMBER,
    bool: _NUMBER,
}


def lookup(obj: Any, name: str) -> Any:
    """`$obj.name`: a map's entry, a helper object's attribute, or a Java-style method (bound)."""
    if name.startswith("_"):
        return None
    if isinstance(obj, _op.LocalNamespace):
        try:
            return obj[name]
        except KeyError:
            return None
    if isinstance(obj, dict):
        value = obj.get(name)
        if value is not None:
            return value
    else:
        allowed = _ATTRS.get(type(obj))
        if allowed is not None:
            return getattr(obj, name) if name in allowed else None
    method = _METHODS.get(type(obj), {}).get(name)
    if method is None:
        return None
    return lambda *args: method(obj, *args)


# ---------------------------------------------------------------- airspeed, bounded
def _name_or_call(self: Any, current: Any, loader: Any, top: Any) -> Any:
    """NameOrCall.calculate with lookup() in place of getattr, and a step per name."""
    _tick()
    result = lookup(current, self.name)
    if result is None:
        return None
    if self.parameters is None and callable(result) and not isinstance(result, _op._FunctionDefinition):
        return None  # a method named without a call: nothing, as a missing property
    if isinstance(result, _op._FunctionDefinition):  # a #define'd block used as $name
        params = (self.parameters and self.parameters.calculate(top, loader)) or []
        stream = _op.StoppableStream()
        result.execute_function(stream, top, params, loader)
        return _sized(stream.getvalue())
    if self.parameters is not None:
        return _sized(result(*self.parameters.calculate(top, loader)))
    if self.index is not None:
        index = self.index.calculate(top, loader)
        if isinstance(result, list) and not isinstance(index, int):
            raise ValueError(f"expected integer for array index, got {index!r}")
        try:
            return result[index]
        except (LookupError, TypeError):
            return None
    return result


def _foreach(self: Any, stream: Any, namespace: Any, loader: Any) -> None:
    """#foreach with API Gateway's 1,000-item limit and a step per iteration."""
    items = self.value.calculate(namespace, loader)
    if items is None:
        return
    if isinstance(items, Mapping):
        items = list(items)
    try:
        length = len(items)
    except TypeError:
        raise ValueError(
            f"${self.loop_var_name} in #foreach: {java_string(items)[:80]} is not a list"
        ) from None
    if length > MAX_FOREACH:
        raise TemplateLimit(f"#foreach over {length} items (at most {MAX_FOREACH})")
    for count, item in enumerate(items, 1):
        _tick()
        local = _op.LocalNamespace(namespace)
        local["velocityCount"] = count
        local["velocityHasNext"] = count < length
        local["foreach"] = {
            "count": count,
            "index": count - 1,
            "hasNext": count < length,
            "first": count == 1,
            "last": count == length,
        }
        local[self.loop_var_name] = item
        self.block.evaluate(stream, local, loader)


def _nested(run: Callable[..., Any]) -> Callable[..., Any]:
    """A macro call, #define'd block or #evaluate: one step and one level of nesting."""

    def bounded(*args: Any) -> Any:
        _tick()
        b = _BUDGET
        if b.depth >= MAX_DEPTH:
            raise TemplateLimit(f"macros nested deeper than {MAX_DEPTH}")
        b.depth += 1
        try:
            return run(*args)
        finally:
            b.depth -= 1

    return bounded


def _interpolated(self: Any, namespace: Any, loader: Any) -> str:
    out = _Output()
    self.block.evaluate(out, namespace, loader)
    return out.getvalue()  # type: ignore[no-any-return]


def _mul(a: Any, b: Any) -> Any:
    seq, n = (a, b) if isinstance(a, str | list) else (b, a)
    if isinstance(seq, str | list) and isinstance(n, int) and len(seq) * n > MAX_OUTPUT:
        raise TemplateLimit("template would build too large a value")
    return _sized(a * b)


def _add(a: Any, b: Any) -> Any:
    if isinstance(a, str) and not isinstance(b, str):
        b = java_string(b)
    elif isinstance(b, str) and not isinstance(a, str):
        a = java_string(a)
    return _sized(a + b)


def _mod(a: Any, b: Any) -> Any:
    if not (isinstance(a, int | float) and isinstance(b, int | float)):
        return None  # never Python's % formatting
    return a % b


class _Output(_op.StoppableStream):  # type: ignore[misc]
    """The render's stream: bounded in size, and in time at each write."""

    def __init__(self) -> None:
        super().__init__()
        self.size = 0

    def write(self, s: str) -> None:
        if self.stop:
            return
        self.size += len(s)
        if self.size > MAX_OUTPUT:
            raise TemplateLimit(f"template output larger than {MAX_OUTPUT} bytes")
        if time.monotonic() > _BUDGET.deadline:
            raise TemplateLimit(f"template ran longer than {MAX_SECONDS:g}s")
        super().write(s)


def _install() -> None:
    """Bound airspeed's evaluator (once, when this module loads; meshgate is its only user here)."""
    _op.NameOrCall.calculate = _name_or_call
    _op.ForeachDirective.evaluate_raw = _foreach
    _op.InterpolatedStringLiteral.calculate = _interpolated
    _op._FunctionDefinition.execute_function = _nested(_op._FunctionDefinition.execute_function)
    _op.EvaluateDirective.evaluate_raw = _nested(_op.EvaluateDirective.evaluate_raw)
    _op.value_to_string = java_string
    ops = _op.BinaryOperator.OPERATORS
    ops["*"], ops["+"], ops["%"] = _mul, _add, _mod
    _op.NullLoader.load_text = _no_loader  # #include / #parse: there are no template files


def _no_loader(self: Any, name: str) -> str:
    raise TemplateLimit(f"#include/#parse of {name!r}: templates cannot load files")


_install()


# ---------------------------------------------------------------- templates
def template_scope(
    inp: TemplateInput, context: Mapping[str, Any], stage_variables: Mapping[str, str]
) -> dict[str, Any]:
    """The root names of a VTL render: the request's own copies, so nothing a template sets outlives it."""
    ctx = dict(context)
    ctx.setdefault("identity", {"sourceIp": ctx.get("sourceIp", "")})
    ctx["requestOverride"] = {"header": {}, "querystring": {}, "path": {}}
    ctx["responseOverride"] = {"status": None, "header": {}}
    return {"input": inp, "util": VTL_UTIL, "context": ctx, "stageVariables": dict(stage_variables)}


def overrides(context: Mapping[str, Any]) -> Overrides | None:
    """What the template set in `$context.requestOverride` / `responseOverride` (None: nothing)."""
    req, resp = context.get("requestOverride"), context.get("responseOverride")
    if not isinstance(req, dict) or not isinstance(resp, dict):
        raise TemplateLimit("$context.requestOverride/responseOverride replaced by the template")
    headers = {**_strings(req.get("header")), **_strings(resp.get("header"))}
    status = resp.get("status")
    if status is None and not headers:
        return None
    if status is not None:
        try:
            status = int(status)
        except (TypeError, ValueError):
            raise TemplateLimit(f"$context.responseOverride.status {status!r} is not a number") from None
        if not 100 <= status <= 599:
            raise TemplateLimit(f"$context.responseOverride.status {status} is not between 100 and 599")
    return Overrides(
        status,
        tuple((k.lower().encode("latin-1", "replace"), v.encode()) for k, v in headers.items()),
    )


def _strings(m: Any) -> dict[str, str]:
    return {str(k): java_string(v) for k, v in m.items()} if isinstance(m, dict) else {}


@dataclass(frozen=True)
class VtlTemplate:
    """One compiled VTL template (the interface of transform.MappingTemplate)."""

    content_type: str
    source: str
    template: Any  # airspeed.Template, parsed
    plan: vtl_plan.Plan | None = None
    content_type_header: bytes = b""
    reads_context: bool = True

    @classmethod
    def compile(cls, content_type: str, source: str) -> VtlTemplate:
        if len(source.encode()) > MAX_TEMPLATE:
            raise ValueError(f"template for {content_type}: larger than {MAX_TEMPLATE // 1024} KB")
        template = _op.Template(source)
        try:
            template.ensure_compiled()
        except _op.TemplateSyntaxError as exc:
            raise ValueError(f"template for {content_type}: VTL: {exc}") from None
        except RecursionError:
            raise ValueError(f"template for {content_type}: VTL: nested too deeply") from None
        plan = vtl_plan.plan(template.root_element)
        media = content_type.lower()
        return cls(
            media,
            source,
            template,
            plan,
            media.encode("latin-1"),
            "context" in source or "#evaluate" in source,
        )

    def render(
        self,
        body: bytes,
        params: Params,
        context: Context,
        stage_variables: Mapping[str, str],
        doc: Any = UNPARSED,
    ) -> bytes:
        """The rendered body (a Rendered when it set overrides); `params`/`context` may be callables."""
        if len(body) > MAX_INPUT:
            raise TemplateLimit("body too large for a mapping template")
        base = (context() if callable(context) else context) if self.reads_context else {}
        scope = template_scope(TemplateInput(body, params, doc), base, stage_variables)
        try:
            if self.plan is not None:
                out = vtl_plan.render(self.plan, scope)
                if out is not None:
                    if len(out) > MAX_OUTPUT:
                        raise TemplateLimit(f"template output larger than {MAX_OUTPUT} bytes")
                    return out
            text = self._merge(scope)
        except Exception as exc:  # any template runtime error: a gateway error, not a crash
            raise _reason(exc) from None
        found = overrides(scope["context"])
        if found is None:
            return text
        rendered = Rendered(text)
        rendered.overrides = found
        return rendered

    def _merge(self, scope: dict[str, Any]) -> bytes:
        b = _BUDGET
        b.steps = 0
        b.depth = 0
        b.deadline = time.monotonic() + MAX_SECONDS
        out = _Output()
        self.template.root_element.evaluate(out, scope, _op.NullLoader())
        return out.getvalue().encode()  # type: ignore[no-any-return]


def _reason(exc: BaseException) -> TemplateLimit:
    """The TemplateLimit to report: the limit itself when airspeed wrapped it, else what failed."""
    seen: BaseException | None = exc
    for _ in range(64):
        if seen is None:
            break
        if isinstance(seen, TemplateLimit):
            return seen
        if isinstance(seen, RecursionError):
            return TemplateLimit("template recursed too deeply")
        if not isinstance(seen, _op.TemplateExecutionError):
            break
        seen = seen.__cause__
    cause = seen if seen is not None else exc
    return TemplateLimit(f"template failed: {type(cause).__name__}: {str(cause)[:200]}")
