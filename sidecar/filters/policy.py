"""Filter: the Api's source checks (private endpoint, resource policy CIDRs) and escaped-slash choice."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshgate.sidecar.errors import GatewayError

if TYPE_CHECKING:
    from meshgate.sidecar.context import RequestContext
    from meshgate.sidecar.filters import Decision

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def in_networks(ip: str, nets: tuple[Network, ...]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in n for n in nets)


@dataclass(frozen=True, slots=True)
class PolicyFilter:
    name = "policy"
    needs_body = False

    api: str
    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()
    private: tuple[Network, ...] | None = None  # the cluster networks, for a private Api
    reject_escaped_slashes: bool = False  # escapedSlashesAction: REJECT_REQUEST

    @property
    def active(self) -> bool:
        return bool(self.allow or self.deny or self.private is not None or self.reject_escaped_slashes)

    def request(self, ctx: RequestContext) -> Decision:
        if self.reject_escaped_slashes and ("%2F" in ctx.path or "%5C" in ctx.path):  # normal: upper hex
            return GatewayError(
                400, f"{self.api} refuses an encoded / or \\ in the path (escapedSlashesAction)"
            )
        ip = ctx.source_ip
        if self.private is not None and not in_networks(ip, self.private):
            return GatewayError(403, f"private API {self.api}: source {ip} is outside the cluster networks")
        if self.deny and in_networks(ip, self.deny):
            return GatewayError(403, f"resource policy of {self.api} denies source {ip}")
        if self.allow and not in_networks(ip, self.allow):
            return GatewayError(403, f"resource policy of {self.api} does not allow source {ip}")
        return None
