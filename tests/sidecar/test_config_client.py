"""The sidecar's config client against an in-process gRPC control double: ACK, NACK, persistence, reconnect."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from meshgate.control.etcd_local import free_port
from meshgate.sidecar.config_client import ConfigClient, backoff_delay
from meshgate.v1 import control_pb2, control_pb2_grpc


class FakeControl(control_pb2_grpc.ControlServiceServicer):  # type: ignore[misc]
    """Sends the queued snapshots to each stream and records what comes back."""

    def __init__(self, snapshots: list[control_pb2.Snapshot]) -> None:
        self.snapshots = snapshots
        self.nodes: list[control_pb2.Node] = []
        self.acks: list[control_pb2.Ack] = []
        self.got_ack = asyncio.Event()

    async def StreamConfig(
        self, request_iterator: AsyncIterator[control_pb2.StreamRequest], context: Any
    ) -> AsyncIterator[control_pb2.Snapshot]:
        first = await anext(aiter(request_iterator))
        self.nodes.append(first.node)
        for snap in self.snapshots:
            yield snap
            req = await anext(aiter(request_iterator))
            self.acks.append(req.ack)
            self.got_ack.set()
        await asyncio.sleep(3600)


async def serve(fake: FakeControl, port: int) -> grpc.aio.Server:
    server = grpc.aio.server()
    control_pb2_grpc.add_ControlServiceServicer_to_server(fake, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server


def snap(version: str) -> control_pb2.Snapshot:
    return control_pb2.Snapshot(version=version, nonce=f"n-{version}")


async def wait_for(pred: Any, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.01)


async def test_ack_nack_and_persisted_snapshot(tmp_path: Path) -> None:
    fake = FakeControl([snap("good"), snap("bad")])
    port = free_port()
    server = await serve(fake, port)
    applied: list[str] = []

    def apply(s: control_pb2.Snapshot) -> None:
        if s.version == "bad":
            raise ValueError("stage prefix /prod is claimed\n twice")
        applied.append(s.version)

    node = control_pb2.Node(id="n1", namespace="default", labels={"app": "pets"})
    client = ConfigClient(f"127.0.0.1:{port}", node, apply, state_dir=tmp_path)
    task = asyncio.create_task(client.run())
    try:
        await wait_for(lambda: len(fake.acks) == 2)
        assert fake.nodes[0] == node
        assert fake.acks[0] == control_pb2.Ack(version="good", nonce="n-good")
        assert fake.acks[1].version == "bad" and fake.acks[1].error == "stage prefix /prod is claimed twice"
        assert applied == ["good"] and client.applied_version == "good" and client.nacks == 1
        persisted = client.load_persisted()
        assert persisted is not None and persisted.version == "good"
    finally:
        task.cancel()
        await server.stop(0)

    # A new client (a restarted sidecar) starts from the persisted snapshot.
    again = ConfigClient("127.0.0.1:1", node, lambda s: None, state_dir=tmp_path)
    restored = again.load_persisted()
    assert restored is not None
    again.apply_local(restored, "persisted")
    assert again.first_applied.is_set() and again.applied_from == "persisted"


async def test_corrupt_persisted_snapshot_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "snapshot.pb").write_bytes(b"\xff\xff not a protobuf")
    client = ConfigClient("127.0.0.1:1", control_pb2.Node(id="x"), lambda s: None, state_dir=tmp_path)
    assert client.load_persisted() is None


async def test_reconnects_after_control_restart(tmp_path: Path) -> None:
    port = free_port()
    fake = FakeControl([snap("one")])
    server = await serve(fake, port)
    client = ConfigClient(
        f"127.0.0.1:{port}",
        control_pb2.Node(id="n1"),
        lambda s: None,
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
    )
    task = asyncio.create_task(client.run())
    try:
        await wait_for(lambda: client.applied_version == "one")
        await server.stop(0)
        await wait_for(lambda: not client.connected)
        fake2 = FakeControl([snap("two")])
        server = await serve(fake2, port)
        await wait_for(lambda: client.applied_version == "two", timeout=15)
        await wait_for(lambda: bool(fake2.acks))  # the ACK travels after the apply
        assert fake2.acks[0].version == "two" and not fake2.acks[0].error
    finally:
        task.cancel()
        await server.stop(0)


@pytest.mark.parametrize("attempt", [0, 1, 5, 40])
def test_backoff_has_full_jitter_and_a_cap(attempt: int) -> None:
    rng = random.Random(attempt)
    delays = [backoff_delay(attempt, 0.2, 15.0, rng) for _ in range(500)]
    cap = min(15.0, 0.2 * 2**attempt)
    assert all(0 <= d <= cap for d in delays)
    assert max(delays) > cap * 0.8 and min(delays) < cap * 0.2  # spread over the whole range
