"""Body mapping templates: Jinja2 in an immutable sandbox, bounded in steps, time and output size.

Templates get what API Gateway's mapping templates offer, in Jinja syntax:
`input.body`, `input.json('$.a.b')`, `input.path('$.items')`, `input.params('name')`,
`context.requestId|stage|httpMethod|resourcePath|authorizer`, `stageVariables`, and
`util.escapeJavaScript|base64Encode|base64Decode|urlEncode|urlDecode|parseJson`.
Every loop iteration and call counts as a step; a template that loops too long,
runs too long or builds too much output fails with TemplateLimit (a 500 gateway
response), never hangs the sidecar. Straight-line templates (text and `{{ ... }}`
holes, the common shape) render from a plan of closures instead (template_plan.py):
same output, a fraction of the cost. Jinja2 loads with the first template a snapshot has.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment
from meshgate.sidecar import template_plan
from meshgate.sidecar.transform import (
    MAX_INPUT,
    MAX_OUTPUT,
    MAX_SECONDS,
    MAX_STEPS,
    UNPARSED,
    UTIL,
    TemplateInput,
    TemplateLimit,
    Util,
)

__all__ = ["UTIL", "BodyTemplate", "TemplateInput", "TemplateLimit", "Util"]

ROOT_NAMES = ("input", "context", "stageVariables", "util")

_FOR_LINE = re.compile(r"^(\s*)for .*:\s*$")


class _Budget:
    __slots__ = ("deadline", "steps")

    def __init__(self) -> None:
        self.steps = 0
        self.deadline = 0.0


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox plus a step/time budget checked in every loop iteration and call."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self) -> None:
        super().__init__(autoescape=False)
        self.budget = _Budget()

    def tick(self) -> None:
        b = self.budget
        b.steps += 1
        if b.steps > MAX_STEPS:
            raise TemplateLimit(f"template exceeded {MAX_STEPS} steps")
        if b.steps & 255 == 0 and time.monotonic() > b.deadline:
            raise TemplateLimit(f"template ran longer than {MAX_SECONDS:g}s")

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        __self.tick()
        return super().call(__context, __obj, *args, **kwargs)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if isinstance(right, int) and abs(right) > 64:
                raise TemplateLimit("exponent too large")
            return left**right
        size = 0
        if isinstance(left, str | list | tuple) and isinstance(right, int):
            size = len(left) * right
        elif isinstance(right, str | list | tuple) and isinstance(left, int):
            size = len(right) * left
        if size > MAX_OUTPUT:
            raise TemplateLimit(f"template would build a value of {size} items")
        return left * right

    def _compile(self, source: str, filename: str) -> Any:
        # Count every loop iteration: insert a tick() as the first statement of each loop body.
        lines = []
        for line in source.splitlines():
            lines.append(line)
            m = _FOR_LINE.match(line)
            if m:
                lines.append(f"{m.group(1)}    environment.tick()")
        return super()._compile("\n".join(lines), filename)


@dataclass(frozen=True)
class BodyTemplate:
    content_type: str
    source: str
    template: Any
    env: BoundedEnvironment
    plan: template_plan.Plan | None = None  # straight-line templates skip the sandbox (template_plan.py)
    names: frozenset[str] = frozenset(ROOT_NAMES)  # the root names the template reads
    content_type_header: bytes = b""  # content_type as the header value it sets

    @classmethod
    def compile(cls, content_type: str, source: str) -> BodyTemplate:
        env = BoundedEnvironment()
        try:
            template = env.from_string(source)
            planned = template_plan.plan(env, source)
            names = frozenset(meta.find_undeclared_variables(env.parse(source)))
        except TemplateError as exc:
            raise ValueError(f"template for {content_type}: {exc}") from None
        media = content_type.lower()
        plan = planned[0] if planned else None
        return cls(media, source, template, env, plan, names, media.encode("latin-1"))

    def render(
        self,
        body: bytes,
        params: Mapping[str, Mapping[str, str]] | Callable[[], Mapping[str, Mapping[str, str]]],
        context: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
        stage_variables: Mapping[str, str],
        doc: Any = UNPARSED,
    ) -> bytes:
        """The rendered body. `params`/`context` may be callables, called only if the template reads them;
        `doc` is the body already parsed as JSON, when the caller has it."""
        if len(body) > MAX_INPUT:
            raise TemplateLimit("body too large for a mapping template")
        inp = TemplateInput(body, params, doc)
        scope: dict[str, Any] = {"input": inp, "stageVariables": stage_variables, "util": UTIL}
        if "context" in self.names:
            scope["context"] = context() if callable(context) else context
        try:
            out = template_plan.render(self.plan, scope) if self.plan is not None else None
            if out is None:  # no plan, or a value only Jinja renders exactly: the sandbox
                return self._render_sandboxed(scope)
            if len(out) > MAX_OUTPUT:
                raise TemplateLimit(f"template output larger than {MAX_OUTPUT} bytes")
            return out
        except TemplateLimit:
            raise
        except RecursionError:
            raise TemplateLimit("template recursed too deeply") from None
        except Exception as exc:  # any template runtime error: a gateway error, not a crash
            raise TemplateLimit(f"template failed: {type(exc).__name__}: {str(exc)[:200]}") from None

    def _render_sandboxed(self, scope: Mapping[str, Any]) -> bytes:
        budget = self.env.budget
        budget.steps = 0
        budget.deadline = time.monotonic() + MAX_SECONDS
        out: list[str] = []
        size = 0
        for chunk in self.template.generate(**scope):
            size += len(chunk)
            if size > MAX_OUTPUT:
                raise TemplateLimit(f"template output larger than {MAX_OUTPUT} bytes")
            if time.monotonic() > budget.deadline:
                raise TemplateLimit(f"template ran longer than {MAX_SECONDS:g}s")
            out.append(chunk)
        return "".join(out).encode()
