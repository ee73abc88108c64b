"""Request filters: one module per filter, each compiled once per snapshot into a frozen object.

A filter looks at the `RequestContext` and returns a decision value: None
(go on), a `GatewayError` (refuse), an `Answer` (a complete response made here:
a CORS preflight, a cached response) or a `Pending` (an awaitable of one of
those, for the few steps that may wait on I/O). None writes to the wire; the
order they run in is `pipeline.ORDER`.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Union

from meshgate.sidecar.errors import GatewayError

if TYPE_CHECKING:
    from meshgate.sidecar.context import RequestContext

Headers = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete response made by a filter; the integration is never called."""

    status: int
    headers: Headers
    body: bytes
    cors: bool = True  # add the request's CORS headers (a preflight carries its own)


@dataclass(frozen=True, slots=True)
class Pending:
    """A decision that needs I/O first (an authorizer call, a JWKS fetch)."""

    awaitable: Awaitable[Decision]


Decision = Union[None, GatewayError, Answer, Pending]  # noqa: UP007 (a runtime alias, used in isinstance)


class Filter(Protocol):
    """What every request filter is: a name, whether it needs the whole body, and its decision."""

    @property
    def name(self) -> str: ...

    @property
    def needs_body(self) -> bool: ...  # the whole request body must be here before it runs

    def request(self, ctx: RequestContext) -> Decision: ...
