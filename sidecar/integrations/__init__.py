"""Integrations: one module per type, each compiling its own frozen config from a route.

`compile_integration` picks the module by `integration.type`; an integration's
`start(exchange)` calls the backend and answers through the exchange (which
writes through `respond`). `upgrade` marks the WebSocket kinds, reached only
by an `Upgrade: websocket` request.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from meshgate.sidecar.errors import GatewayError
from meshgate.v1 import resources_pb2

if TYPE_CHECKING:
    from meshgate.sidecar.exchange import Exchange
    from meshgate.sidecar.runtime import Runtime


class CompileError(Exception):
    """A snapshot this sidecar cannot serve (the reason is sent back as a NACK)."""


class RouteError(Exception):
    """A route that compiles but cannot be called (an undefined stage variable, a bad host): it
    answers 500 with this reason, and the rest of the snapshot serves."""


class Integration(Protocol):
    @property
    def kind(self) -> str: ...

    @property
    def needs_body(self) -> bool: ...  # the whole request body before the call

    @property
    def upgrade(self) -> bool: ...  # a WebSocket route

    def start(self, ex: Exchange) -> None: ...


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """What an integration compiler gets: the route, where it is served, the stage's variables."""

    route: resources_pb2.Route
    stage: str
    api: str
    variables: Mapping[str, str]
    binary_media_types: tuple[str, ...]
    runtime: Runtime | None = None
    template_language: str = ""  # the Api's (jinja | vtl); the integration's own wins

    @property
    def integ(self) -> resources_pb2.Integration:
        return self.route.integration

    @property
    def where(self) -> str:
        return f"route {self.route.method} {self.route.path} of {self.api} (stage {self.stage!r})"

    def timeout_s(self) -> float:
        return (self.integ.timeout_ms or 29000) / 1000

    def connect_timeout_s(self) -> float:
        return (self.integ.connect_timeout_ms or 1000) / 1000

    def uri(self) -> str:
        """The integration URI with stage variables substituted (RouteError when one is undefined)."""
        from meshgate.sidecar.mapping import substitute_stage_vars

        uri, missing = substitute_stage_vars(self.integ.uri, self.variables)
        if missing is not None:
            raise RouteError(f"integration uri references undefined stage variable {missing!r}")
        return uri


_MODULES = {  # integration type -> its module and compiler, imported when a snapshot first uses it
    "mock": ("mock", "compile_mock"),
    "http": ("http", "compile_http"),
    "function": ("function", "compile_function"),
    "grpc": ("grpc", "compile_grpc"),
    "websocket": ("websocket", "compile_websocket"),
    "websocket_api": ("websocket_api", "compile_websocket_api"),
}


def compile_integration(spec: RouteSpec) -> Integration:
    kind = spec.integ.type
    if kind not in _MODULES:
        raise CompileError(f"{spec.where}: unsupported integration type {kind!r}")
    module, compiler = _MODULES[kind]
    compile_one: Callable[[RouteSpec], Integration] = getattr(
        importlib.import_module(f"meshgate.sidecar.integrations.{module}"), compiler
    )
    return compile_one(spec)


def protocol_mismatch(integ: Integration) -> GatewayError:
    """The refusal of a request whose protocol is not its route's: a plain request on a WebSocket
    route (426, as API Gateway's WebSocket APIs answer), an Upgrade on any other route (400)."""
    if integ.upgrade:
        what = "WebSocket API" if integ.kind == "websocket_api" else "WebSocket"
        return GatewayError(
            426,
            f"this route is a {what}: send an Upgrade: websocket request",
            headers=((b"upgrade", b"websocket"),),
        )
    return GatewayError(400, "WebSocket upgrade on a route that is not a WebSocket route", close=True)


def client_key(ex: Exchange) -> bytes:
    """The upgrade request's Sec-WebSocket-Key (both WebSocket integrations answer with it)."""
    return next((v for n, v in ex.ctx.raw_headers if n.lower() == b"sec-websocket-key"), b"")
