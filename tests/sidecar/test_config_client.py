"""The sidecar's config client against an in-process gRPC control double: ACK, NACK, persistence, reconnect."""

from __future__ import annotations

import asyncio
import datetime
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from meshgate.control.ca import Authority, NodeIdentity, generate_ca
from meshgate.control.etcd_local import free_port_pair
from meshgate.control.identity import peer_certificate
from meshgate.sidecar.config_client import ConfigClient, backoff_delay
from meshgate.sidecar.identity import SidecarIdentity
from meshgate.v1 import control_pb2, control_pb2_grpc

CA_CERT, CA_KEY = generate_ca()
AUTHORITY = Authority(CA_CERT, CA_KEY)


class FakeControl(control_pb2_grpc.ControlServiceServicer):  # type: ignore[misc]
    """Sends the queued snapshots to each stream and records what comes back; issues certificates
    (valid for `validity`) to any caller, as control does for a good token."""

    def __init__(self, snapshots: list[control_pb2.Snapshot], validity: float = 3600.0) -> None:
        self.snapshots = snapshots
        self.validity = datetime.timedelta(seconds=validity)
        self.nodes: list[control_pb2.Node] = []
        self.acks: list[control_pb2.Ack] = []
        self.got_ack = asyncio.Event()
        self.tokens: list[str] = []
        self.open_streams = 0
        self.most_open = 0
        self.streams = 0

    async def IssueCertificate(self, request: control_pb2.CertificateRequest, context: Any) -> Any:
        self.tokens.append(dict(context.invocation_metadata()).get("authorization", ""))
        node = NodeIdentity(request.node.id, request.node.namespace or "default")
        cert = AUTHORITY.sidecar_cert(request.csr_pem, node, self.validity)
        not_after = int((datetime.datetime.now(datetime.UTC) + self.validity).timestamp())
        return control_pb2.CertificateResponse(
            certificate_pem=cert, ca_pem=CA_CERT, identity="spiffe://t", not_after_unix=not_after
        )

    async def StreamConfig(
        self, request_iterator: AsyncIterator[control_pb2.StreamRequest], context: Any
    ) -> AsyncIterator[control_pb2.Snapshot]:
        assert AUTHORITY.principal(peer_certificate(context)) is not None  # mTLS: a certificate of ours
        self.open_streams += 1
        self.streams += 1
        self.most_open = max(self.most_open, self.open_streams)
        try:
            first = await anext(aiter(request_iterator))
            self.nodes.append(first.node)
            for snap in self.snapshots:
                yield snap
                req = await anext(aiter(request_iterator))
                self.acks.append(req.ack)
                self.got_ack.set()
            await asyncio.sleep(3600)
        finally:
            self.open_streams -= 1


async def serve(fake: FakeControl, port: int) -> grpc.aio.Server:
    """The double on `port` (client certificates required) and `port + 1` (the token port)."""
    server = grpc.aio.server()
    control_pb2_grpc.add_ControlServiceServicer_to_server(fake, server)
    cert, key = AUTHORITY.server_cert(["127.0.0.1"])
    mtls = grpc.ssl_server_credentials([(key, cert)], root_certificates=CA_CERT, require_client_auth=True)
    server.add_secure_port(f"127.0.0.1:{port}", mtls)
    server.add_secure_port(f"127.0.0.1:{port + 1}", grpc.ssl_server_credentials([(key, cert)]))
    await server.start()
    return server


def identity(port: int) -> SidecarIdentity:
    return SidecarIdentity(f"127.0.0.1:{port}", CA_CERT, token="boot-token")


def snap(version: str) -> control_pb2.Snapshot:
    return control_pb2.Snapshot(version=version, nonce=f"n-{version}")


async def wait_for(pred: Any, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.01)


async def test_ack_nack_and_persisted_snapshot(tmp_path: Path) -> None:
    fake = FakeControl([snap("good"), snap("bad")])
    port = free_port_pair()  # serve() takes port + 1 too
    server = await serve(fake, port)
    applied: list[str] = []

    def apply(s: control_pb2.Snapshot) -> None:
        if s.version == "bad":
            raise ValueError("stage prefix /prod is claimed\n twice")
        applied.append(s.version)

    node = control_pb2.Node(id="n1", namespace="default", labels={"app": "pets"})
    client = ConfigClient(f"127.0.0.1:{port}", node, apply, state_dir=tmp_path, identity=identity(port))
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
    port = free_port_pair()  # serve() takes port + 1 too
    fake = FakeControl([snap("one")])
    server = await serve(fake, port)
    client = ConfigClient(
        f"127.0.0.1:{port}",
        control_pb2.Node(id="n1"),
        lambda s: None,
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
        identity=identity(port),
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


async def test_the_certificate_rotates_without_dropping_the_stream() -> None:
    """A first certificate with the token (on the token port), renewals with the certificate at
    two thirds of its life; each renewal opens a second stream before the first is closed, so
    control always has this sidecar connected."""
    port = free_port_pair()  # serve() takes port + 1 too
    fake = FakeControl([snap("one")], validity=1.5)
    server = await serve(fake, port)
    ident = identity(port)
    client = ConfigClient(f"127.0.0.1:{port}", control_pb2.Node(id="n1"), lambda s: None, identity=ident)
    task = asyncio.create_task(client.run())
    try:
        await wait_for(lambda: client.applied_version == "one")
        first_cert = ident.cert_pem
        await wait_for(lambda: ident.renewals >= 2 and fake.streams >= 3, timeout=15)
        assert ident.cert_pem != first_cert and fake.tokens[0] == "Bearer boot-token"
        assert fake.tokens[1:] == [""] * (len(fake.tokens) - 1)  # renewals: the certificate, no token
        assert fake.most_open == 2  # make before break
        await wait_for(lambda: fake.open_streams == 1)
        assert client.connected and client.acks >= 3 and client.nacks == 0
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
