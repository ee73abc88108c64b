"""The sidecar's side of the config stream: connect, apply, ACK/NACK, persist, reconnect with jitter."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
from meshgate.v1 import control_pb2, control_pb2_grpc

log = logging.getLogger("meshgate.sidecar.config")

SNAPSHOT_FILE = "snapshot.pb"


def backoff_delay(attempt: int, initial: float, maximum: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(max, initial * 2**attempt)]."""
    cap = min(maximum, initial * (2 ** min(attempt, 30)))
    return (rng or random).uniform(0, cap)


def private_dir(path: Path) -> None:
    """Make `path` (the state dir: snapshot, quotas) owner-only, 0700, creating it if need be; a
    directory someone else owns, or a shared one (sticky, like /tmp), is left alone with a warning."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.stat()
    if st.st_mode & 0o777 == 0o700:
        return
    if st.st_uid != os.getuid() or st.st_mode & stat.S_ISVTX:
        log.warning(
            "state dir %s is not this user's own (mode %o): not made owner-only", path, st.st_mode & 0o7777
        )
        return
    os.chmod(path, 0o700)


def write_atomically(path: Path, data: bytes) -> None:
    private_dir(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    # owner-only: the snapshot holds secrets (the @connections id key, ApiKey hashes)
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # an older tmp file keeps its mode through O_TRUNC
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ConfigClient:
    """Keeps one StreamConfig open to control and applies what it receives."""

    def __init__(
        self,
        control_address: str,
        node: control_pb2.Node,
        apply: Callable[[control_pb2.Snapshot], None],
        *,
        state_dir: Path | None = None,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 15.0,
    ) -> None:
        self.control_address = control_address
        self.node = node
        self._apply = apply
        self.state_dir = state_dir
        if state_dir is not None:
            try:
                private_dir(state_dir)  # the persisted snapshot holds secrets: 0600 in a 0700 directory
            except OSError as exc:
                log.warning("could not make %s owner-only: %s", state_dir, exc)
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.first_applied = asyncio.Event()
        self.applied: control_pb2.Snapshot | None = None
        self.applied_from = ""
        self.connected = False
        self.last_error = ""
        self.acks = 0
        self.nacks = 0
        self._stopping = False

    @property
    def applied_version(self) -> str:
        return self.applied.version if self.applied is not None else ""

    # ------------------------------------------------------------------ persistence
    @property
    def snapshot_path(self) -> Path | None:
        return self.state_dir / SNAPSHOT_FILE if self.state_dir is not None else None

    def load_persisted(self) -> control_pb2.Snapshot | None:
        path = self.snapshot_path
        if path is None or not path.exists():
            return None
        try:
            snap = control_pb2.Snapshot.FromString(path.read_bytes())
        except Exception as exc:  # corrupt file: ignore it, control will send a fresh one
            log.warning("ignoring persisted snapshot %s: %s", path, exc)
            return None
        return snap

    def apply_local(self, snap: control_pb2.Snapshot, source: str) -> None:
        """Apply a snapshot not received from control (persisted or from a file); raises on failure."""
        self._apply(snap)
        self.applied = snap
        self.applied_from = source
        self.first_applied.set()

    def _persist(self, snap: control_pb2.Snapshot) -> None:
        path = self.snapshot_path
        if path is not None:
            try:
                write_atomically(path, snap.SerializeToString())
            except OSError as exc:
                log.warning("could not persist snapshot to %s: %s", path, exc)

    # ------------------------------------------------------------------ stream
    def stop(self) -> None:
        self._stopping = True

    async def run(self) -> None:
        attempt = 0
        while not self._stopping:
            got_snapshot = False
            try:
                got_snapshot = await self._session()
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                self.last_error = f"{exc.code().name}: {exc.details()}"
            except Exception as exc:
                log.exception("config stream failed")
                self.last_error = f"{type(exc).__name__}: {exc}"
            self.connected = False
            if self._stopping:
                break
            if got_snapshot:
                attempt = 0
            delay = backoff_delay(attempt, self.backoff_initial_s, self.backoff_max_s)
            attempt += 1
            log.info(
                "control %s unavailable (%s); retrying in %.2fs", self.control_address, self.last_error, delay
            )
            await asyncio.sleep(delay)

    async def _session(self) -> bool:
        got = False
        async with grpc.aio.insecure_channel(
            self.control_address,
            options=[
                ("grpc.keepalive_time_ms", 10000),
                ("grpc.keepalive_timeout_ms", 5000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.initial_reconnect_backoff_ms", 200),
            ],
        ) as channel:
            stub = control_pb2_grpc.ControlServiceStub(channel)
            outbox: asyncio.Queue[control_pb2.StreamRequest | None] = asyncio.Queue()
            await outbox.put(control_pb2.StreamRequest(node=self.node))

            async def requests() -> AsyncIterator[control_pb2.StreamRequest]:
                while True:
                    item = await outbox.get()
                    if item is None:
                        return
                    yield item

            call = stub.StreamConfig(requests())
            try:
                async for snap in call:
                    if not self.connected:
                        self.connected = True
                        self.last_error = ""
                        log.info("connected to control %s (%s)", self.control_address, snap.control_id)
                    got = True
                    ack = control_pb2.Ack(version=snap.version, nonce=snap.nonce)
                    try:
                        if (
                            self.applied is None
                            or snap.version != self.applied.version
                            or self.applied_from != "control"
                        ):
                            self._apply(snap)
                            self._persist(snap)
                        self.applied = snap
                        self.applied_from = "control"
                        self.first_applied.set()
                        self.acks += 1
                        log.info("applied config %s", snap.version)
                    except Exception as exc:
                        ack.error = " ".join(str(exc).split()) or type(exc).__name__
                        self.nacks += 1
                        log.warning(
                            "NACK config %s: %s (keeping %s)", snap.version, ack.error, self.applied_version
                        )
                    await outbox.put(control_pb2.StreamRequest(ack=ack))
            finally:
                await outbox.put(None)
                with contextlib.suppress(Exception):
                    call.cancel()
        if not got:
            self.last_error = self.last_error or "stream closed before the first snapshot"
        else:
            self.last_error = "stream closed by control"
        return got
