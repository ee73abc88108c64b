"""The stage cache cannot mix callers or variants: `Vary` is honoured (RFC 9111 §4.1) and an
authorized route shares its entries across callers only when it says `cacheShared: true`."""

from __future__ import annotations

import asyncio
import json

from .conftest import Backends, Gateway, read_request
from .test_request_phase import (
    Aux,
    Idp,
    aux,  # noqa: F401  (the fixture)
    cache_snapshot,
    call,
    echo_headers,
    jwt_snapshot,
    start,
)


def test_vary_is_honoured(gateway: Gateway, backends: Backends) -> None:
    """A response that varies on X-Lang or Accept-Encoding is only served to a request with the
    same values of those headers; a matching request is a hit."""
    calls: list[bytes] = []

    async def backend(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            _, headers, _ = await read_request(r)
            lang = headers.get(b"x-lang", b"none")
            enc = headers.get(b"accept-encoding", b"identity")
            calls.append(lang)
            body = b"%b/%b" % (lang, enc)
            head = b"HTTP/1.1 200 OK\r\nVary: X-Lang,  accept-encoding\r\nContent-Length: %d\r\n\r\n"
            w.write(head % len(body) + body)
            await w.drain()

    start(gateway, cache_snapshot(backends.start(backend)))

    def get(**headers: str) -> tuple[str, bytes]:
        status, h, body = call(gateway.port, "/prod/items/1", headers=headers)
        assert status == 200
        return h["x-meshgate-cache"], body

    assert get(**{"X-Lang": "en"}) == ("miss", b"en/identity")
    assert get(**{"X-Lang": "fr"}) == ("miss", b"fr/identity")
    assert get(**{"X-Lang": "fr"}) == ("hit", b"fr/identity")
    assert get(**{"X-Lang": "fr", "Accept-Encoding": "gzip"}) == ("miss", b"fr/gzip")
    assert get(**{"X-Lang": "en"}) == ("miss", b"en/identity")
    assert get() == ("miss", b"none/identity")
    assert get() == ("hit", b"none/identity")
    assert len(calls) == 5


def test_an_authorized_route_shares_entries_only_when_it_says_so(
    gateway: Gateway,
    backends: Backends,
    aux: Aux,  # noqa: F811
) -> None:
    idp = Idp(aux)
    snap = jwt_snapshot(idp, backends.start(echo_headers))
    snap.stages[0].stage.spec.cache.enabled = True
    snap.stages[0].deployment.spec.api_spec.routes[0].cache_shared = True
    start(gateway, snap)
    alice, bob = idp.token(sub="alice"), idp.token(sub="bob")
    s1, h1, _ = call(gateway.port, "/prod/pets", headers={"Authorization": alice})
    s2, h2, b2 = call(gateway.port, "/prod/pets", headers={"Authorization": bob})
    assert (s1, s2) == (200, 200) and (h1["x-meshgate-cache"], h2["x-meshgate-cache"]) == ("miss", "hit")
    assert json.loads(b2)["x-user-sub"] == "alice"  # the route said every caller gets the same answer
    assert call(gateway.port, "/prod/pets")[0] == 401  # the authorizer still runs before the cache
