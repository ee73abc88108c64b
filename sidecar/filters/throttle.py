"""Filter: throttling and quotas. A usage plan's limit and quota (when an API key matched), else
the route's limit, else the stage's; each is this replica's share. A refusal is a 429 with Retry-After."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshgate.sidecar.errors import GatewayError
from meshgate.sidecar.throttle import Limiter, QuotaStore, TokenBucket

if TYPE_CHECKING:
    from meshgate.sidecar.context import RequestContext
    from meshgate.sidecar.filters import Decision


def _retry(wait: float) -> tuple[tuple[bytes, bytes], ...]:
    return ((b"retry-after", b"%d" % math.ceil(wait)),)


@dataclass(frozen=True, slots=True)
class ThrottleFilter:
    name = "throttle"
    needs_body = False

    bucket: TokenBucket  # the route's bucket when it has a limit, else the stage's
    scope: str  # "route GET /pets" | "stage prod"
    limiter: Limiter
    quotas: QuotaStore
    api: str
    stage: str
    replicas: int = 1

    def request(self, ctx: RequestContext) -> Decision:
        key = ctx.usage_key
        if key is None:
            wait = self.bucket.take(time.monotonic())
            if wait:
                return GatewayError(429, f"throttled by the {self.scope} limit", headers=_retry(wait))
            return None
        if key.limit is not None:
            wait = self.limiter.take(f"key/{self.api}/{self.stage}/{key.name}", key.limit)
            scope = f"usage plan {key.plan}"
        else:
            wait = self.bucket.take(time.monotonic())
            scope = self.scope
        if wait:
            return GatewayError(429, f"throttled by the {scope} limit", headers=_retry(wait))
        if key.quota:
            share = math.ceil(key.quota / max(1, self.replicas))
            wait = self.quotas.take(f"{self.api}/{key.plan}/{key.name}", share, key.period)
            if wait:
                return GatewayError(
                    429,
                    f"quota of usage plan {key.plan} exhausted for this {key.period.lower()}",
                    gateway_type="QUOTA_EXCEEDED",
                    headers=_retry(wait),
                )
        return None
