"""Envoy 1.40 for the side-by-side benches: one listener in front of one upstream, built as a dict.

`config` writes the bootstrap (JSON, which Envoy reads as YAML), `command` starts it the same way
everywhere: one worker, errors only, no hot-restart shared memory (several Envoys run at once).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}


def _address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def config(
    port: int,
    admin: int,
    upstream: int,
    *,
    prefix: str = "/",
    rewrite: str | None = None,
    timeout: str = "29s",
    filters: tuple[dict[str, Any], ...] = (),
    http2_upstream: bool = False,
    websocket: bool = False,
) -> str:
    """A bootstrap: requests under `prefix` (rewritten to `rewrite`) go to 127.0.0.1:`upstream`."""
    route: dict[str, Any] = {"cluster": "upstream", "timeout": timeout}
    if rewrite is not None:
        route["prefix_rewrite"] = rewrite
    manager: dict[str, Any] = {
        "@type": HCM,
        "stat_prefix": "bench",
        "codec_type": "AUTO",
        "route_config": {
            "virtual_hosts": [
                {"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": prefix}, "route": route}]}
            ]
        },
        "http_filters": [*filters, ROUTER],
    }
    if websocket:
        manager["upgrade_configs"] = [{"upgrade_type": "websocket"}]
    cluster: dict[str, Any] = {
        "name": "upstream",
        "type": "STATIC",
        "load_assignment": {
            "cluster_name": "upstream",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(upstream)}}]}],
        },
    }
    if http2_upstream:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    listener = {
        "address": _address(port),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
        ],
    }
    bootstrap = {
        "static_resources": {"listeners": [listener], "clusters": [cluster]},
        "admin": {"address": _address(admin)},
    }
    return json.dumps(bootstrap, indent=1)


def jwt_and_limit(jwks: str) -> tuple[dict[str, Any], ...]:
    """The feature tax: RS256 JWTs checked against a local JWKS, then a local rate limit."""
    percent = {"numerator": 100, "denominator": "HUNDRED"}
    jwt = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {
            "bench": {
                "issuer": "https://idp.bench",
                "audiences": ["bench"],
                "local_jwks": {"inline_string": jwks},
            }
        },
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}],
    }
    limit = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "limit",
        "token_bucket": {"max_tokens": 1000000, "tokens_per_fill": 1000000, "fill_interval": "1s"},
        "filter_enabled": {"default_value": percent, "runtime_key": "limit_enabled"},
        "filter_enforced": {"default_value": percent, "runtime_key": "limit_enforced"},
    }
    return (
        {"name": "envoy.filters.http.jwt_authn", "typed_config": jwt},
        {"name": "envoy.filters.http.local_ratelimit", "typed_config": limit},
    )


def command(conf: Path) -> list[str]:
    """Envoy from the bench extra's wheel (next to this Python), one worker."""
    envoy = str(Path(sys.executable).parent / "envoy")
    return [envoy, "-c", str(conf), "--concurrency", "1", "-l", "error", "--disable-hot-restart"]
