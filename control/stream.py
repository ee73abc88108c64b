"""The config stream (ADS-like): follow etcd, coalesce changes, push versioned snapshots, track ACK/NACK.

The process's etcd mirror (`control/mirror.py`, one watch per control
replica, shared with the controller) keeps the in-memory `State`; after a
change burst settles (debounce, bounded by a maximum delay so steady writes
are not starved) every connected sidecar whose snapshot version changed gets
it with a fresh nonce (and the node id it is for). Per-sidecar status lives in
etcd under this replica's lease, so any replica can list every sidecar. Before
serving, the replica makes sure the @connections id key exists in etcd (the
first replica ever makes it) and that its mirror has it, so the first snapshot
a sidecar gets already carries it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from meshgate.control.coalesce import Coalescer
from meshgate.control.mirror import EtcdMirror, MirrorEvent, Reloaded, Subscription
from meshgate.control.snapshots import SnapshotCache
from meshgate.control.state import State
from meshgate.control.store import Store
from meshgate.control.tasks import cancel_and_wait
from meshgate.sidecar.metrics import Family, Histogram, Labels, Value, prometheus_text
from meshgate.v1 import control_pb2

log = logging.getLogger("meshgate.control.stream")

CONNECTED = Family(
    "meshgate_control_connected_sidecars", "Sidecars streaming from this control replica", "gauge"
)
PUSHES = Family("meshgate_control_pushes", "Snapshots pushed", "counter")
ACKS = Family("meshgate_control_acks", "Snapshots acknowledged", "counter")
NACKS = Family("meshgate_control_nacks", "Snapshots refused by a sidecar", "counter")
APPLY_LATENCY = Family(
    "meshgate_control_config_apply_latency",
    "Time from the etcd change (or the sidecar's connection, if later) to the sidecar's ACK",
    "histogram",
    "s",
)


class _Conn:
    """One connected sidecar stream."""

    def __init__(self, node: control_pb2.Node, control_id: str) -> None:
        self.node = node
        self.pending: control_pb2.Snapshot | None = None
        self.wake = asyncio.Event()
        self.closed = False
        self.sent: control_pb2.Snapshot | None = None
        self.status = control_pb2.SidecarStatus(
            node=node, control_id=control_id, connected_unix_nano=time.time_ns()
        )
        self.status_dirty = asyncio.Event()
        self.written = b""

    def offer(self, snap: control_pb2.Snapshot) -> None:
        self.pending = snap
        self.wake.set()


class ConfigStreamer:
    """Serves StreamConfig for one control replica."""

    def __init__(
        self,
        store: Store,
        control_id: str,
        *,
        debounce_s: float = 0.005,
        max_delay_s: float = 0.05,
        status_ttl_s: int = 15,
        cluster_cidrs: tuple[str, ...] = (),
        mirror: EtcdMirror | None = None,
    ) -> None:
        self.store = store
        self.control_id = control_id
        self.debounce_s = debounce_s
        self.max_delay_s = max_delay_s
        self.status_ttl_s = status_ttl_s
        self.mirror = mirror or EtcdMirror(store)
        self._own_mirror = mirror is None  # a shared mirror is stopped by whoever made it
        self._subscription: Subscription | None = None
        self.cache = SnapshotCache(cluster_cidrs, api_key_hash_key=store.keys.api_key_hash_key)
        self.pushes = 0
        self.nacks = 0
        self.acks = 0
        self.apply_latency = Histogram()  # etcd change (or connection, if later) -> ACK, seconds
        self._conns: set[_Conn] = set()
        self._changes = Coalescer(debounce_s, max_delay_s)
        self._delete_time_ns = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._lease = 0  # etcd lease id of this replica's status keys; 0 = none yet
        self._mirror_moved = asyncio.Event()  # set on every mirror event (start waits for the id key)

    @property
    def state(self) -> State:
        """Everything under the prefix, as the mirror has it now."""
        return self.mirror.state

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.mirror.start()
        self._subscription = self.mirror.subscribe(self._on_etcd, "config stream")
        await self._connection_id_key()
        self._lease = await self.store.grant_lease(self.status_ttl_s)
        self._tasks = [
            asyncio.create_task(self._flush_loop(), name="push"),
            asyncio.create_task(self._lease_loop(), name="lease"),
        ]

    async def _connection_id_key(self, timeout_s: float = 10.0) -> None:
        """Make (or find) the shared @connections id key, then wait for the mirror's watch to bring it."""
        key = await self.store.connection_id_key()
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    self._mirror_moved.clear()
                    if self.state.connection_id_key == key:
                        break
                    await self._mirror_moved.wait()
        except TimeoutError:
            log.warning("the etcd mirror has not seen the @connections id key yet; snapshots follow it")

    async def stop(self) -> None:
        for conn in list(self._conns):
            conn.closed = True
            conn.wake.set()
        await cancel_and_wait(self._tasks)
        if self._subscription is not None:
            self._subscription.close()
        if self._own_mirror:
            await self.mirror.stop()
        if self._lease:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.store.revoke_lease(self._lease), 2)

    # ------------------------------------------------------------------ etcd side

    def _on_etcd(self, event: MirrorEvent) -> None:
        """A change the mirror applied: push when the burst settles (a reload may have changed anything)."""
        self._mirror_moved.set()
        if isinstance(event, Reloaded):
            self._changes.mark()
            return
        if not event.changed:
            return  # a sidecar's status (its ACKs) or a sequence key: no snapshot depends on it
        if event.deleted:
            self._delete_time_ns = time.time_ns()
        self._changes.mark()

    async def _flush_loop(self) -> None:
        while True:
            await self._changes.settled()
            for conn in list(self._conns):
                self._push(conn)

    def _push(self, conn: _Conn, force: bool = False) -> None:
        snap = self.cache.get(self.state, conn.node)
        current = conn.pending or conn.sent
        if not force and current is not None and current.version == snap.version:
            return
        out = control_pb2.Snapshot()
        out.CopyFrom(snap)
        out.nonce = uuid.uuid4().hex[:12]
        out.control_id = self.control_id
        out.node_id = conn.node.id
        out.source_time_unix_nano = max(snap.source_time_unix_nano, self._delete_time_ns)
        conn.offer(out)

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, self.status_ttl_s / 3))
            try:
                await self.store.refresh_lease(self._lease)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("status lease refresh failed (%s); taking a new lease", exc)
                with contextlib.suppress(Exception):
                    self._lease = await self.store.grant_lease(self.status_ttl_s)
                    for conn in self._conns:
                        conn.status_dirty.set()

    async def _status_writer(self, conn: _Conn) -> None:
        while True:
            await conn.status_dirty.wait()
            conn.status_dirty.clear()
            try:
                conn.written = await self.store.put_status(conn.status, self._lease)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("could not record status of %s: %s", conn.node.id, exc)
                await asyncio.sleep(1)
                conn.status_dirty.set()

    # ------------------------------------------------------------------ gRPC side

    async def stream(
        self,
        request_iterator: AsyncIterator[control_pb2.StreamRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[control_pb2.Snapshot]:
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            return
        if first.WhichOneof("msg") != "node" or not first.node.id:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first message must be a Node with an id"
            )
            return
        conn = _Conn(first.node, self.control_id)
        self._conns.add(conn)
        conn.status_dirty.set()
        writer = asyncio.create_task(self._status_writer(conn))
        reader = asyncio.create_task(self._read_acks(request_iterator, conn))
        log.info("sidecar %s connected (namespace %s)", conn.node.id, conn.node.namespace)
        try:
            self._push(conn, force=True)
            while not conn.closed:
                await conn.wake.wait()
                conn.wake.clear()
                snap = conn.pending
                if snap is None:
                    continue
                conn.pending = None
                conn.sent = snap
                conn.status.sent_version = snap.version
                self.pushes += 1
                yield snap
                if reader.done():
                    break
        finally:
            self._conns.discard(conn)
            reader.cancel()
            writer.cancel()
            log.info("sidecar %s disconnected", conn.node.id)
            with contextlib.suppress(Exception):
                await asyncio.shield(self._forget(conn))

    async def _forget(self, conn: _Conn) -> None:
        """Delete the status key unless another replica has rewritten it since (a reconnect)."""
        if conn.written:
            await self.store.forget_status(conn.node.id, conn.written)

    async def _read_acks(
        self, request_iterator: AsyncIterator[control_pb2.StreamRequest], conn: _Conn
    ) -> None:
        try:
            async for req in request_iterator:
                if req.WhichOneof("msg") != "ack":
                    continue
                ack = req.ack
                sent = conn.sent
                if sent is None or ack.nonce != sent.nonce:
                    continue  # stale
                now = time.time_ns()
                st = conn.status
                if ack.error:
                    st.last_nack_version = ack.version
                    st.last_nack_error = ack.error
                    st.nack_count += 1
                    self.nacks += 1
                    log.warning("sidecar %s NACKed %s: %s", conn.node.id, ack.version, ack.error)
                else:
                    st.acked_version = ack.version
                    st.last_ack_unix_nano = now
                    if sent.source_time_unix_nano:
                        # from when this sidecar could first have had the change: one that connects
                        # 20 s after a write is not 20 s late; its first snapshot counts from its
                        # connection (Istio's convergence time leaves a proxy's first answer out)
                        since = max(sent.source_time_unix_nano, st.connected_unix_nano)
                        st.last_apply_latency_ms = (now - since) / 1e6
                        self.apply_latency.observe(st.last_apply_latency_ms / 1000)
                    self.acks += 1
                conn.status_dirty.set()
        except asyncio.CancelledError:
            raise
        except Exception:
            pass
        finally:
            conn.closed = True
            conn.wake.set()

    def metrics(self) -> list[tuple[Family, list[tuple[Labels, Value]]]]:
        """Control-plane metrics of this replica (Prometheus text on --metrics-listen, OTLP)."""
        return [
            (CONNECTED, [((), len(self._conns))]),
            (PUSHES, [((), self.pushes)]),
            (ACKS, [((), self.acks)]),
            (NACKS, [((), self.nacks)]),
            (APPLY_LATENCY, [((), self.apply_latency)]),
        ]

    def metrics_text(self) -> str:
        return prometheus_text(self.metrics())

    async def list_sidecars(self) -> control_pb2.ListSidecarsResponse:
        out = await self.store.list_statuses()
        out.sort(key=lambda s: s.node.id)
        return control_pb2.ListSidecarsResponse(sidecars=out)
