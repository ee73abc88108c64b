"""Filter: API keys (`x-api-key`), checked against the keys of the usage plans bound to the stage."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshgate.sidecar.errors import GatewayError
from meshgate.sidecar.throttle import Limit

if TYPE_CHECKING:
    from meshgate.sidecar.context import RequestContext
    from meshgate.sidecar.filters import Decision


@dataclass(frozen=True, slots=True)
class KeyInfo:
    name: str
    plan: str
    limit: Limit | None  # this replica's share of the plan's throttle
    quota: int
    period: str


_MISSING = GatewayError(403, "API key required: x-api-key header missing", gateway_type="INVALID_API_KEY")
_UNKNOWN = GatewayError(403, "API key not valid for this stage", gateway_type="INVALID_API_KEY")


@dataclass(frozen=True, slots=True)
class ApiKeyFilter:
    name = "api_key"
    needs_body = False

    keys: Mapping[str, KeyInfo]  # sha256 hex of the key -> its plan

    def request(self, ctx: RequestContext) -> Decision:
        value = ctx.headers.get("x-api-key")
        if not value:
            return _MISSING
        key = self.keys.get(hashlib.sha256(value.encode()).hexdigest())
        if key is None:
            return _UNKNOWN
        ctx.usage_key = key
        return None
