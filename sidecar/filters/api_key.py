"""Filter: API keys (`x-api-key`), checked against the keyed hashes of the usage plans' keys."""

from __future__ import annotations

import hashlib
import hmac
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


def api_key_mac(hash_key: bytes, sha256_digest: bytes) -> bytes:
    """The one definition of a stored API key: HMAC-SHA256 under the installation's hash key
    (`Snapshot.api_key_hash_key`, never in etcd) of the raw 32-byte sha256 of the key's UTF-8 bytes.
    A client sends `ApiKeySpec.value_sha256` (the sha256 in lowercase hex; never the key); control
    stores `value_hmac`, this MAC in lowercase hex; a sidecar computes it once per request."""
    return hmac.digest(hash_key, sha256_digest, "sha256")


_MISSING = GatewayError(403, "API key required: x-api-key header missing", gateway_type="INVALID_API_KEY")
_UNKNOWN = GatewayError(403, "API key not valid for this stage", gateway_type="INVALID_API_KEY")


@dataclass(frozen=True, slots=True)
class ApiKeyFilter:
    name = "api_key"
    needs_body = False

    keys: Mapping[bytes, KeyInfo]  # api_key_mac of the key -> its plan
    hash_key: bytes  # the snapshot's api_key_hash_key

    def request(self, ctx: RequestContext) -> Decision:
        value = ctx.headers.get("x-api-key")
        if not value:
            return _MISSING
        key = self.keys.get(hmac.digest(self.hash_key, hashlib.sha256(value.encode()).digest(), "sha256"))
        if key is None:
            return _UNKNOWN
        ctx.usage_key = key
        return None
