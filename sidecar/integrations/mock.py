"""Integration `mock`: a fixed response, answered by the sidecar."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshgate.sidecar.integrations import RouteSpec

if TYPE_CHECKING:
    from meshgate.sidecar.exchange import Exchange


@dataclass(frozen=True, slots=True)
class MockIntegration:
    kind = "mock"
    needs_body = False
    upgrade = False

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def start(self, ex: Exchange) -> None:
        ex.respond_full(self.status, self.headers, self.body)


def compile_mock(spec: RouteSpec) -> MockIntegration:
    mock = spec.integ.mock
    headers = tuple(
        (k.lower().encode("latin-1"), v.encode("latin-1", "replace")) for k, v in sorted(mock.headers.items())
    )
    if not any(k == b"content-type" for k, _ in headers) and mock.body:
        headers = ((b"content-type", b"application/json"), *headers)
    return MockIntegration(mock.status or 200, headers, mock.body.encode())
