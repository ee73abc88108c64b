"""Control answers only to who it should: an outsider (plaintext, or TLS without a client identity)
reads and changes nothing on either port; a sidecar gets a certificate only with the bootstrap token,
streams only as the node its certificate names; admin calls need an admin certificate whose role
allows them; refusals are counted."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from meshgate.control.etcd_local import LocalEtcd
from meshgate.control.server import ControlServer, start_control
from meshgate.sidecar.errors import GrpcCode
from meshgate.sidecar.grpc_client import RpcError
from meshgate.sidecar.metrics import prometheus_text
from meshgate.v1 import control_pb2, control_pb2_grpc
from tls import admin_channel, bootstrap_identity, sidecar_channel

from .conftest import PETS, SHOP, docs, dump
from .test_stream import Sidecar, until


@pytest.fixture
async def control(etcd: LocalEtcd) -> AsyncIterator[ControlServer]:
    ctl = await start_control(etcd.endpoint, port=0, prefix=f"/a-{uuid.uuid4().hex[:8]}/", control_id="c1")
    await ctl.store.apply(docs(PETS))
    await ctl.store.deploy("default", "pets", "prod")
    yield ctl
    await ctl.stop(0)


def _calls() -> list[tuple[str, Any]]:
    """One of every admin call, each of which would change or reveal something."""
    stage = {"namespace": "default", "api": "pets", "stage": "prod"}
    return [
        ("Get", control_pb2.GetRequest(kind="stages")),
        ("ListSidecars", control_pb2.ListSidecarsRequest()),
        ("Apply", control_pb2.ApplyRequest(resources=docs(PETS.replace("b:1", "evil:1")))),
        (
            "Delete",
            control_pb2.DeleteRequest(ref=control_pb2.ObjectRef(kind="Stage", name="prod", api="pets")),
        ),
        ("Deploy", control_pb2.DeployRequest(**stage)),
        ("SetCanary", control_pb2.CanaryRequest(**stage, canary={"percent": 100})),
        ("FlushStageCache", control_pb2.FlushStageCacheRequest(**stage)),
    ]


async def _all_refused(channel: grpc.aio.Channel, codes: set[grpc.StatusCode]) -> None:
    stub = control_pb2_grpc.ControlServiceStub(channel)
    for method, request in _calls():
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await getattr(stub, method)(request, timeout=5)
        assert err.value.code() in codes, (method, err.value.code(), err.value.details())

    async def node() -> AsyncIterator[control_pb2.StreamRequest]:
        yield control_pb2.StreamRequest(
            node=control_pb2.Node(id="spy", namespace="default", labels={"app": "pets"})
        )

    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.StreamConfig(node(), timeout=5):
            pass
    assert err.value.code() in codes


async def test_an_outsider_reads_and_changes_nothing(control: ControlServer) -> None:
    before = await dump(control.store)
    ca = control.authority.ca_pem
    for port in (control.port, control.token_port):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain:  # no TLS at all
            await _all_refused(plain, {grpc.StatusCode.UNAVAILABLE})
    async with grpc.aio.secure_channel(f"127.0.0.1:{control.port}", grpc.ssl_channel_credentials(ca)) as tls:
        await _all_refused(tls, {grpc.StatusCode.UNAVAILABLE})  # the handshake wants a client certificate
    token_port = f"127.0.0.1:{control.token_port}"
    async with grpc.aio.secure_channel(token_port, grpc.ssl_channel_credentials(ca)) as tls:
        await _all_refused(tls, {grpc.StatusCode.UNAUTHENTICATED})
        stub = control_pb2_grpc.ControlServiceStub(tls)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.IssueCertificate(
                control_pb2.CertificateRequest(
                    csr_pem=b"x", node=control_pb2.Node(id="spy", namespace="default")
                ),
                metadata=(("authorization", "Bearer not-the-token"),),
                timeout=5,
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await dump(control.store) == before  # nothing was written
    refused = prometheus_text(control.authorizer.metrics())
    assert 'meshgate_control_refused_calls_total{method="Deploy",reason="unauthenticated"} 1' in refused


async def test_certificates_of_the_wrong_kind_or_role_are_refused(control: ControlServer) -> None:
    before = await dump(control.store)
    async with sidecar_channel(control, "sc-1", app="pets") as sidecar:  # a sidecar is no admin
        await _all_refused(sidecar, {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})
    async with admin_channel(control, role="viewer") as viewer:
        stub = control_pb2_grpc.ControlServiceStub(viewer)
        got = await stub.Get(control_pb2.GetRequest(kind="stages"), timeout=5)
        assert [r.stage.metadata.name for r in got.resources] == ["prod"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Deploy(
                control_pb2.DeployRequest(namespace="default", api="pets", stage="prod"), timeout=5
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "may not update stages" in (err.value.details() or "")
    assert await dump(control.store) == before
    async with admin_channel(control) as admin:
        stub = control_pb2_grpc.ControlServiceStub(admin)
        assert (
            await stub.Deploy(control_pb2.DeployRequest(namespace="default", api="pets", stage="prod"))
        ).deployment


async def test_a_stream_is_the_node_its_certificate_names(control: ControlServer) -> None:
    await control.store.apply(docs(SHOP))
    await control.store.deploy("shop", "shop-pets", "prod")
    async with sidecar_channel(control, "sc-1", app="pets") as ch:  # default namespace, app=pets
        stub = control_pb2_grpc.ControlServiceStub(ch)
        for forged in (
            control_pb2.Node(id="sc-2", namespace="default"),
            control_pb2.Node(id="sc-1", namespace="shop"),
        ):

            async def claim(node: control_pb2.Node = forged) -> AsyncIterator[control_pb2.StreamRequest]:
                yield control_pb2.StreamRequest(node=node)

            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in stub.StreamConfig(claim(), timeout=5):
                    pass
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # Labels claimed beyond the certificate's change nothing: it gets its own namespace's Api only.
    sc = Sidecar(control, "sc-1", {"app": "pets"})
    try:
        await until(lambda: bool(sc.received))
        assert {(b.api.metadata.namespace, b.api.metadata.name) for b in sc.received[-1].stages} == {
            ("default", "pets")
        }
        seen = {s.node.id: s for s in (await control.streamer.list_sidecars()).sidecars}
        assert seen["sc-1"].node.identity == "spiffe://cluster.local/ns/default/sa/default"
    finally:
        await sc.close()


async def test_replicas_count_distinct_identities(control: ControlServer) -> None:
    """Many streams under one certificate are one sidecar: a stage limit is not divided by them."""
    many = [Sidecar(control, "sc-1", {"app": "pets"}) for _ in range(5)]
    try:
        await until(lambda: all(s.received for s in many))
        await control.store.deploy("default", "pets", "prod")
        await until(lambda: all(len(s.received) >= 2 for s in many))
        assert {b.replicas for s in many for b in s.received[-1].stages} == {1}
    finally:
        for s in many:
            await s.close()


async def test_a_sidecar_gets_its_certificate_with_the_bootstrap_token(control: ControlServer) -> None:
    ident = bootstrap_identity(control)
    await ident.obtain(control_pb2.Node(id="sc-9", namespace="default"))
    assert ident.identity == "spiffe://cluster.local/ns/default/sa/default"
    principal = control.authority.principal(ident.cert_pem)
    assert principal is not None and principal.kind == "sidecar" and principal.name == "sc-9"
    renewed = ident.cert_pem
    await ident.obtain(control_pb2.Node(id="someone-else", namespace="shop"))  # renewal: the same identity
    again = control.authority.principal(ident.cert_pem)
    assert ident.cert_pem != renewed and again is not None and again.node == principal.node
    wrong = bootstrap_identity(control)
    wrong.token = "guessed"
    with pytest.raises(RpcError) as refused:
        await wrong.obtain(control_pb2.Node(id="sc-9", namespace="default"))
    assert refused.value.code == GrpcCode.UNAUTHENTICATED
