"""The entrance of every inbound connection: which protocol it speaks, and where it was going.

The injected init container redirects every port the app declares to the sidecar's listener
(`control/iptables.py`); the kernel keeps the address the client dialled (SO_ORIGINAL_DST). Each
accepted connection is handed, once, to the protocol its first bytes show: the HTTP/2 connection
preface goes to the HTTP/2 relay (gRPC), an HTTP/1 request line to the HTTP/1.1 listener, and on a
redirected connection anything else (or nothing within the detection window, as with server-first
protocols such as MySQL or SMTP) is passed through as opaque TCP to the address the client dialled.
Ports declared opaque (`--opaque-ports`, from the pod's `meshgate.io/opaque-ports`) are passed
through at once, without waiting for a byte. A connection made to the sidecar's own port keeps
today's behaviour: HTTP/1.1, or HTTP/2 with prior knowledge.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("meshgate.sidecar.inbound")

PREFACE = (
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # h2wire's (not imported: HTTP/2 loads with its first connection)
)
SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST has the same number
_METHODS = (b"GET ", b"POST ", b"PUT ", b"DELETE ", b"HEAD ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE ")
H2, HTTP1, OTHER = "h2", "http1", "opaque"


def classify(head: bytes) -> str | None:
    """What the first bytes of a connection are: H2, HTTP1, OTHER, or None (too few bytes yet)."""
    if PREFACE.startswith(head[: len(PREFACE)]):
        return H2 if len(head) >= len(PREFACE) else None
    for method in _METHODS:
        if head.startswith(method):
            return HTTP1
        if method.startswith(head):
            return None
    return OTHER


def original_dst(transport: asyncio.BaseTransport) -> tuple[str, int] | None:
    """Where a redirected connection was going; None when it was made to us directly."""
    sock = transport.get_extra_info("socket")
    local = transport.get_extra_info("sockname")
    if sock is None or not local:
        return None
    try:
        if sock.family == socket.AF_INET6:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
            port = struct.unpack_from("!H", raw, 2)[0]
            dst = (socket.inet_ntop(socket.AF_INET6, raw[8:24]), port)
        else:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            dst = (socket.inet_ntoa(raw[4:8]), struct.unpack_from("!H", raw, 2)[0])
    except OSError:  # no NAT entry: not redirected
        return None
    return None if (dst[0], dst[1]) == (local[0], local[1]) else dst


@dataclass
class Entrance:
    """How inbound connections are told apart, built once at start."""

    http: Callable[[], asyncio.Protocol]
    h2: Callable[[], asyncio.Protocol]
    http_ports: frozenset[int] = frozenset()  # HTTP only: never passed through
    opaque_ports: frozenset[int] = frozenset()
    detect_s: float = 0.3
    idle_s: float = 15.0  # a connection that never says which protocol it speaks is closed
    counts: dict[str, int] = field(default_factory=lambda: {H2: 0, HTTP1: 0, OTHER: 0})

    def factory(self) -> Sniffer:
        return Sniffer(self)


class Sniffer(asyncio.Protocol):
    """A connection until its protocol is known; then it hands the transport over."""

    __slots__ = ("buf", "entrance", "orig", "timer", "transport")

    def __init__(self, entrance: Entrance) -> None:
        self.entrance = entrance
        self.buf = b""
        self.orig: tuple[str, int] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport
        loop = asyncio.get_running_loop()
        orig = original_dst(transport)
        self.orig = orig
        if orig is not None and orig[1] in self.entrance.opaque_ports:
            self._opaque()
        elif orig is not None and orig[1] not in self.entrance.http_ports:
            # a server-first protocol never speaks first: through when the window ends
            self.timer = loop.call_later(self.entrance.detect_s, self._opaque)
        else:  # our own port, or an HTTP port: HTTP/1.1 or HTTP/2, nothing else
            self.timer = loop.call_later(self.entrance.idle_s, transport.close)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        kind = classify(self.buf)
        if kind is None:
            return
        if kind == OTHER and self.orig is not None and self.orig[1] not in self.entrance.http_ports:
            self._opaque()
            return
        self._cancel()
        self.entrance.counts[HTTP1 if kind == OTHER else kind] += 1
        proto = (self.entrance.h2 if kind == H2 else self.entrance.http)()
        if self.orig is not None:  # routes may be bound to the app port the client dialled
            proto.inbound_port = self.orig[1]  # type: ignore[attr-defined]
        self._hand(proto)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()

    def _cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _hand(self, proto: asyncio.Protocol) -> None:
        transport = self.transport
        assert transport is not None
        transport.set_protocol(proto)
        proto.connection_made(transport)
        if self.buf:
            proto.data_received(self.buf)

    def _opaque(self) -> None:
        self._cancel()
        assert self.orig is not None and self.transport is not None
        self.entrance.counts[OTHER] += 1
        pipe = TcpPipe(self.orig)
        self._hand(pipe)


class TcpPipe(asyncio.Protocol):
    """Opaque TCP to the address the client dialled, both ways, each side paused while the other
    cannot take more (a slow reader holds the writer)."""

    def __init__(self, dst: tuple[str, int]) -> None:
        self.dst = dst
        self.down: asyncio.Transport | None = None
        self.up: _PipeEnd | None = None
        self.early: list[bytes] = []  # what the client sent before the upstream connection was up

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.down = transport  # type: ignore[assignment]
        transport.pause_reading()  # type: ignore[attr-defined]
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(10):
                _, self.up = await loop.create_connection(lambda: _PipeEnd(self), *self.dst)
        except (OSError, TimeoutError) as exc:
            log.info("opaque TCP to %s:%d failed: %s", *self.dst, exc)
            if self.down is not None:
                self.down.close()
            return
        assert self.up.transport is not None and self.down is not None
        for data in self.early:
            self.up.transport.write(data)
        self.early.clear()
        if not self.down.is_closing():
            self.down.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.up is None or self.up.transport is None:
            self.early.append(data)
        else:
            self.up.transport.write(data)

    def eof_received(self) -> bool:
        if self.up is not None and self.up.transport is not None and self.up.transport.can_write_eof():
            self.up.transport.write_eof()
            return True  # half-close: the answer may still come
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.up is not None and self.up.transport is not None:
            self.up.transport.close()

    def pause_writing(self) -> None:  # the client reads slowly: stop reading the app
        if self.up is not None and self.up.transport is not None:
            self.up.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.up is not None and self.up.transport is not None:
            self.up.transport.resume_reading()


class _PipeEnd(asyncio.Protocol):
    """The app's end of a TcpPipe."""

    def __init__(self, pipe: TcpPipe) -> None:
        self.pipe = pipe
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.pipe.down is not None:
            self.pipe.down.write(data)

    def eof_received(self) -> bool:
        down = self.pipe.down
        if down is not None and down.can_write_eof():
            down.write_eof()
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.pipe.down is not None:
            self.pipe.down.close()

    def pause_writing(self) -> None:  # the app reads slowly: stop reading the client
        if self.pipe.down is not None:
            self.pipe.down.pause_reading()

    def resume_writing(self) -> None:
        if self.pipe.down is not None:
            self.pipe.down.resume_reading()
