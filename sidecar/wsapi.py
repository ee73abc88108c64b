"""WebSocket APIs (the API Gateway model): the sidecar terminates the WebSocket and calls HTTP
integrations per route key; backends talk back through the @connections management API.

A connection id is `<owner>.<random>.<mac>` (base64url): `owner` is an opaque tag of the
(Api, node id) that holds it, `mac` an HMAC-SHA256 (128 bits) of both under the key control
gives every sidecar. A sidecar forwards a management call only to the address control lists for
that owner in its snapshot, never to one read from the id; an id that does not verify, or whose
owner is not listed, is gone (410) without a connection made.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from meshgate.sidecar.metrics import Metrics
from meshgate.v1 import control_pb2

if TYPE_CHECKING:
    from meshgate.sidecar.telemetry import RequestSpan, Telemetry
    from opentelemetry.trace import SpanContext

log = logging.getLogger("meshgate.sidecar.wsapi")

_NO_HEADERS: Mapping[str, str] = {}


@dataclass(frozen=True, slots=True)
class WsRoute:
    uri: str
    timeout_s: float


@dataclass(frozen=True)
class WebSocketApi:
    selection: tuple[str, ...]  # JSON path in the message body, from $request.body.a.b
    routes: Mapping[str, WsRoute]
    max_message_bytes: int = 128 * 1024
    idle_timeout_s: float = 600.0


def compile_selection(expr: str) -> tuple[str, ...]:
    expr = expr or "$request.body.action"
    if not expr.startswith("$request.body."):
        raise ValueError(f"routeSelectionExpression must be $request.body.FIELD[.FIELD...], got {expr!r}")
    return tuple(expr[len("$request.body.") :].split("."))


# ---------------------------------------------------------------------- connection ids
_TAG_BYTES, _RANDOM_BYTES, _MAC_BYTES = 12, 12, 16
_PART = re.compile(r"[A-Za-z0-9_-]+")
_MAC_CONTEXT = b"meshgate @connections id v1\0"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(part: str, size: int) -> bytes | None:
    """The bytes of one id part, or None unless it is the canonical base64url of exactly `size` bytes."""
    if not _PART.fullmatch(part):
        return None
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (ValueError, binascii.Error):
        return None
    return raw if len(raw) == size and _b64(raw) == part else None


def owner_tag(api: str, node_id: str) -> bytes:
    """The opaque tag naming the sidecar `node_id` as the holder of a connection of `api` (ns/name)."""
    return hashlib.sha256(f"{api}\0{node_id}".encode()).digest()[:_TAG_BYTES]


def _mac(key: bytes, tag: bytes, rand: bytes) -> bytes:
    return hmac.new(key, _MAC_CONTEXT + tag + rand, hashlib.sha256).digest()[:_MAC_BYTES]


def encode_id(key: bytes, tag: bytes, rand: bytes | None = None) -> str:
    """A new connection id for the owner `tag`, MACed under `key`."""
    rand = secrets.token_bytes(_RANDOM_BYTES) if rand is None else rand
    return ".".join((_b64(tag), _b64(rand), _b64(_mac(key, tag, rand))))


def verify_id(key: bytes, conn_id: str) -> bytes | None:
    """The owner tag of a well-formed id whose MAC holds under `key`; None for anything else."""
    parts = conn_id.split(".")
    if len(parts) != 3:
        return None
    tag, rand, mac = (
        _unb64(p, n) for p, n in zip(parts, (_TAG_BYTES, _RANDOM_BYTES, _MAC_BYTES), strict=True)
    )
    if tag is None or rand is None or mac is None:
        return None
    return tag if hmac.compare_digest(mac, _mac(key, tag, rand)) else None


@dataclass(frozen=True, slots=True)
class Owner:
    """Where a connection lives, as control lists it."""

    api: str
    node_id: str
    address: str  # HOST:PORT of its sidecar's @connections API


class ConnectionIds:
    """One snapshot's view of @connections ids: this sidecar's identity, the shared key, and the
    sidecars control lists per WebSocket Api (built once per snapshot, read per call)."""

    def __init__(self, key: bytes, node_id: str, owners: Mapping[bytes, Owner]) -> None:
        # without control's key (a snapshot file, an older control) ids are good on this sidecar only
        self.key = key or secrets.token_bytes(32)
        self.node_id = node_id
        self.owners = dict(owners)

    @classmethod
    def from_snapshot(cls, snap: control_pb2.Snapshot) -> ConnectionIds:
        owners = {
            owner_tag(group.api, p.node_id): Owner(group.api, p.node_id, p.advertise)
            for group in snap.connection_peers
            for p in group.peers
            if p.node_id and p.advertise
        }
        return cls(bytes(snap.connection_id_key), snap.node_id, owners)

    def mint(self, api: str) -> str:
        return encode_id(self.key, owner_tag(api, self.node_id))

    def owner(self, conn_id: str) -> Owner | None:
        """The listed owner of a genuine id held by another sidecar; None: gone, make no call."""
        tag = verify_id(self.key, conn_id)
        found = self.owners.get(tag) if tag is not None else None
        return found if found is not None and found.node_id != self.node_id else None


NO_IDS = ConnectionIds(b"", "", {})
_OPEN = 1  # websockets.protocol.State.OPEN (an IntEnum): compared without loading the library


@dataclass
class WsApiConnection:
    conn_id: str
    api: WebSocketApi
    transport: asyncio.Transport
    source_ip: str
    stage: str
    session: Any
    identity: Mapping[str, str] = field(default_factory=dict)
    connected_at: float = field(default_factory=time.time)
    last_active: float = field(default_factory=time.time)
    registry: Registry | None = None
    api_name: str = ""  # namespace/name, for spans and metrics
    telemetry: Telemetry | None = None
    trace_ratio: float = 0.0  # each message is a root span sampled at the stage's ratio
    metrics: Metrics | None = None
    link: SpanContext | None = None  # the upgrade request's span, when it was sampled

    def __post_init__(self) -> None:
        from websockets.protocol import State  # python-websockets loads with the first connection
        from websockets.server import ServerProtocol

        self.proto = ServerProtocol(state=State.OPEN, max_size=self.api.max_message_bytes)
        self.closed = False
        self.tasks: set[asyncio.Task[None]] = set()
        self.parts: list[bytes] = []

    def info(self) -> dict[str, Any]:
        return {
            "connectionId": self.conn_id,
            "connectedAt": int(self.connected_at * 1000),
            "lastActiveAt": int(self.last_active * 1000),
            "identity": {"sourceIp": self.source_ip, **dict(self.identity)},
        }

    def data(self, data: bytes) -> None:
        from websockets.frames import Frame, Opcode

        self.last_active = time.time()
        self.proto.receive_data(data)
        for ev in self.proto.events_received():
            if not isinstance(ev, Frame):
                continue
            if ev.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
                self.parts.append(bytes(ev.data))
                if ev.fin:
                    message = b"".join(self.parts)
                    self.parts = []
                    self.spawn(self.route(message))
        self.flush()

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def flush(self) -> None:
        for chunk in self.proto.data_to_send():
            if chunk == b"":
                self.transport.close()
                return
            if not self.transport.is_closing():
                self.transport.write(chunk)

    def send(self, payload: bytes) -> bool:
        if self.proto.state != _OPEN:
            return False
        try:
            self.proto.send_text(payload) if _is_text(payload) else self.proto.send_binary(payload)
        except Exception:
            return False
        self.flush()
        return True

    def close(self, code: int = 1000, reason: str = "") -> None:
        if self.proto.state == _OPEN:
            self.proto.send_close(code, reason)
            self.flush()

    def route_key(self, message: bytes) -> str:
        try:
            doc: Any = json.loads(message)
            for part in self.api.selection:
                doc = doc.get(part) if isinstance(doc, dict) else None
        except (ValueError, RecursionError):
            doc = None
        # A message never selects $connect or $disconnect: a client would fake a new connection or
        # its own end to the backend; any $-key from the client goes to $default.
        routed = isinstance(doc, str) and not doc.startswith("$") and doc in self.api.routes
        return doc if routed else "$default"

    async def route(self, message: bytes) -> None:
        key = self.route_key(message)
        route = self.api.routes.get(key)
        if route is None:
            self.send(
                json.dumps(
                    {"message": "Forbidden", "reason": "no route for this message and no $default"}
                ).encode()
            )
            return
        status, body = await self.dispatch(route, key, message)
        if status == 0:
            self.send(
                json.dumps(
                    {
                        "message": "Internal server error",
                        "reason": body.decode(),
                        "connectionId": self.conn_id,
                    }
                ).encode()
            )
        elif body:
            self.send(body)

    async def dispatch(self, route: WsRoute, key: str, body: bytes) -> tuple[int, bytes]:
        """One message (or $disconnect) to its route's integration: counted, and traced when sampled."""
        if self.metrics is not None:
            self.metrics.ws_messages[self.api_name, self.stage, key] += 1
        tel = self.telemetry
        if tel is None or (ctx := tel.sample(_NO_HEADERS, self.trace_ratio)) is None:
            return await self.call(route, key, body)
        span = tel.begin(
            ctx,
            f"websocket.message {key}",
            {
                "meshgate.api": self.api_name,
                "meshgate.stage": self.stage,
                "meshgate.route_key": key,
                "meshgate.connection_id": self.conn_id,
                "network.protocol.name": "websocket",
                "client.address": self.source_ip,
            },
            link=self.link,
        )
        status, reply = await self.call(route, key, body, None, span)
        span.end(status or 502, reply.decode("utf-8", "replace") if status == 0 else "")
        return status, reply

    async def call(
        self,
        route: WsRoute,
        key: str,
        body: bytes,
        extra: Mapping[str, str] | None = None,
        trace: RequestSpan | None = None,
        query: str = "",
    ) -> tuple[int, bytes]:
        """POST the event to a route integration; (0, reason) when it cannot be reached. `query` (the
        upgrade request's query string, for $connect) is appended to the integration URI."""
        headers = {
            **(extra or {}),
            "x-meshgate-connection-id": self.conn_id,
            "x-meshgate-route-key": key,
            "x-meshgate-stage": self.stage,
            "x-meshgate-source-ip": self.source_ip,
            "content-type": "application/json",
        }
        if trace is not None:
            up = urlsplit(route.uri)
            trace.start_child(
                "integration", **{"server.address": up.hostname or "", "server.port": up.port or 80}
            )
            headers.update(trace.carrier())
        import aiohttp  # loaded with the first WebSocket API message, not with the sidecar

        uri = route.uri
        if query:
            uri += ("&" if "?" in uri else "?") + query
        try:
            async with self.session().post(
                uri, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=route.timeout_s)
            ) as resp:
                result = resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            result = 0, f"integration for {key} failed: {type(exc).__name__}".encode()
        if trace is not None:
            if result[0]:
                trace.child.set_attribute("http.response.status_code", result[0])
            trace.end_child("" if result[0] else result[1].decode())
        return result

    # ------------------------------------------------------------------ Tunnel (the client connection's side)
    def eof(self) -> bool | None:
        return None  # the client is gone: close

    def pause(self, paused: bool) -> None:
        """Replies are small and few: no backpressure towards the integrations."""

    def check(self, now: float) -> None:
        """No idle limit on WebSocket API connections (API Gateway's is 10 minutes; not enforced)."""

    def lost(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.registry is not None:
            self.registry.remove(self)
        route = self.api.routes.get("$disconnect")
        if route is not None:
            self.spawn(self.dispatch(route, "$disconnect", b""))


def _is_text(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class Registry:
    """This sidecar's WebSocket API connections, and the @connections management API."""

    def __init__(self, advertise: str) -> None:
        self.advertise = advertise
        self.conns: dict[str, WsApiConnection] = {}

    def new_id(self, ids: ConnectionIds, api: str) -> str:
        return ids.mint(api)

    def add(self, conn: WsApiConnection) -> None:
        conn.registry = self
        self.conns[conn.conn_id] = conn

    def remove(self, conn: WsApiConnection) -> None:
        self.conns.pop(conn.conn_id, None)

    async def manage(
        self,
        method: str,
        conn_id: str,
        body: bytes,
        session: Any,
        ids: ConnectionIds = NO_IDS,
        forwarded: bool = False,
    ) -> tuple[int, bytes]:
        """POST (send), GET (info), DELETE (disconnect) a connection held here, or forward the call to
        the sidecar control lists as its owner; a call forwarded to us is never forwarded again."""
        conn = self.conns.get(conn_id)
        if conn is None:
            owner = None if forwarded else ids.owner(conn_id)
            if owner is None:
                return 410, _gone(conn_id)
            return await _forward(owner, method, conn_id, body, session)
        if method == "GET":
            return 200, json.dumps(conn.info()).encode()
        if method == "DELETE":
            conn.close(1000, "closed through @connections")
            return 204, b""
        if method == "POST":
            return (200, b"") if conn.send(body) else (410, _gone(conn_id, "it is closing"))
        return 405, json.dumps(
            {"message": "Method not allowed", "reason": "use POST, GET or DELETE"}
        ).encode()


async def _forward(owner: Owner, method: str, conn_id: str, body: bytes, session: Any) -> tuple[int, bytes]:
    import aiohttp

    try:
        async with session().request(
            method,
            f"http://{owner.address}/@connections/{conn_id}",
            data=body,
            headers={"x-meshgate-forwarded": "1"},
            timeout=aiohttp.ClientTimeout(total=5),
            allow_redirects=False,
        ) as resp:
            return resp.status, await resp.read()
    except (aiohttp.ClientError, TimeoutError, OSError):
        return 410, _gone(conn_id, f"its sidecar {owner.node_id} is unreachable")


def _gone(conn_id: str, why: str = "") -> bytes:
    """API Gateway's GoneException: the id names no connection we can reach (or was never genuine)."""
    reason = f"connection {conn_id[:80]} is gone" + (f" ({why})" if why else "")
    return json.dumps({"message": "Gone", "reason": reason}).encode()
