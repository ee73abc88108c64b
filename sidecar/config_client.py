"""The sidecar's side of the config stream: connect, apply, ACK/NACK, persist, reconnect with jitter."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import stat
import time
from collections.abc import Callable
from pathlib import Path

from meshgate.sidecar.grpc_client import Channel, RpcError
from meshgate.sidecar.identity import SidecarIdentity
from meshgate.sidecar.metrics import Histogram
from meshgate.v1 import control_pb2

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
        identity: SidecarIdentity | None = None,
    ) -> None:
        self.control_address = control_address
        # TLS to control: a certificate of control's CA (without one, a stream cannot be opened)
        self.identity = identity or SidecarIdentity(control_address, b"")
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
        # etcd change -> applied here, for changes pushed on an open stream (a stream's first snapshot
        # after connecting is startup, not propagation; a snapshot with no newer change is a resend)
        self.apply_latency = Histogram()
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
                if not self.identity.has_certificate:
                    await self.identity.obtain(self.node)
                got_snapshot = await self._streams()
            except asyncio.CancelledError:
                raise
            except RpcError as exc:
                self.last_error = str(exc)
            except OSError as exc:  # control's CA or the token file is not there (yet)
                self.last_error = f"{type(exc).__name__}: {exc}"
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

    async def _streams(self) -> bool:
        """One stream at a time, until it ends. When the certificate is due for renewal, a new one is
        obtained and a second stream opened with it; the first is closed once the second delivered a
        snapshot (make before break: control never sees this sidecar leave)."""
        current = _Stream(self)
        got = False
        try:
            while True:
                wait = max(0.0, self.identity.renew_at - time.time())
                done, _ = await asyncio.wait({current.task}, timeout=wait)
                got = got or current.got
                if done:
                    current.task.result()  # raises what ended it
                    self.last_error = (
                        "stream closed by control"
                        if current.got
                        else (self.last_error or "stream closed before the first snapshot")
                    )
                    return got
                try:
                    await self.identity.obtain(self.node)
                except Exception as exc:  # keep the stream; try again soon (the cert is still valid)
                    log.warning("certificate renewal failed: %s", exc)
                    self.identity.renew_at = time.time() + RENEW_RETRY_S
                    continue
                successor = _Stream(self)
                if await successor.delivered(SUCCESSOR_WAIT_S):
                    current.close()
                    current = successor
                else:
                    successor.close()
        finally:
            current.close()

    def handle(self, snap: control_pb2.Snapshot) -> control_pb2.Ack:
        """Apply a snapshot from control (unless already applied from control) and say how it went."""
        pushed = self.connected  # not the first snapshot since (re)connecting
        if not self.connected:
            self.connected = True
            self.last_error = ""
            log.info("connected to control %s (%s)", self.control_address, snap.control_id)
        ack = control_pb2.Ack(version=snap.version, nonce=snap.nonce)
        try:
            if self.applied is None or snap.version != self.applied.version or self.applied_from != "control":
                self._apply(snap)
                newer = (
                    self.applied is not None
                    and snap.source_time_unix_nano > self.applied.source_time_unix_nano
                )
                if pushed and newer:  # a new etcd change, not a resend (peers, a new stream)
                    self.apply_latency.observe(max(0, time.time_ns() - snap.source_time_unix_nano) / 1e9)
                self._persist(snap)
            self.applied = snap
            self.applied_from = "control"
            self.first_applied.set()
            self.acks += 1
            log.info("applied config %s", snap.version)
        except Exception as exc:
            ack.error = " ".join(str(exc).split()) or type(exc).__name__
            self.nacks += 1
            v, src = self.applied_version, self.applied_from
            kept = f"keeping config {v} ({src})" if self.applied else "no config to keep: not ready yet"
            log.warning("NACK config %s: %s (%s)", snap.version, ack.error, kept)
        return ack


RENEW_RETRY_S = 30.0
SUCCESSOR_WAIT_S = 10.0
STREAM_CONFIG = "/meshgate.v1.ControlService/StreamConfig"
KEEPALIVE_S, KEEPALIVE_TIMEOUT_S = 10.0, 5.0  # control permits a PING every 5 s (control/server.py)


class _Stream:
    """One StreamConfig call on its own TLS channel (the credentials of the moment), in a task."""

    def __init__(self, client: ConfigClient) -> None:
        self.client = client
        self.got = False
        self.first = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def delivered(self, within_s: float) -> bool:
        """Whether this stream delivered its first snapshot within `within_s` (and is still open)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.first.wait()), within_s)
        return self.first.is_set() and not self.task.done()

    def close(self) -> None:
        self.task.cancel()

    async def _run(self) -> None:
        client = self.client
        tls = client.identity.tls_context()
        channel = Channel(
            client.control_address, tls, keepalive_s=KEEPALIVE_S, keepalive_timeout_s=KEEPALIVE_TIMEOUT_S
        )
        async with channel:
            call = await channel.start(STREAM_CONFIG)
            try:
                call.send(control_pb2.StreamRequest(node=client.node).SerializeToString())
                while (message := await call.recv()) is not None:
                    snap = control_pb2.Snapshot.FromString(message)
                    self.got = True
                    ack = client.handle(snap)
                    call.send(control_pb2.StreamRequest(ack=ack).SerializeToString())
                    self.first.set()
            finally:
                call.cancel()
