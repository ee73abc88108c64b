"""The config stream on real etcd and gRPC: push on change, coalescing, ACK/NACK status, replicas, selectors."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from meshgate.control.etcd_local import LocalEtcd
from meshgate.control.server import ControlServer, start_control
from meshgate.sidecar.otlp_metrics import OtlpMetricsExporter
from meshgate.v1 import control_pb2, control_pb2_grpc
from tls import admin_channel, sidecar_channel

from .conftest import PETS, docs


class Sidecar:
    """A minimal stream client that ACKs (or NACKs) every snapshot it reads."""

    def __init__(self, ctl: Any, node_id: str, labels: dict[str, str], nack: str = "") -> None:
        self.channel = sidecar_channel(ctl, node_id, "default", **labels)
        self.node = control_pb2.Node(id=node_id, namespace="default", labels=labels)
        self.received: list[control_pb2.Snapshot] = []
        self.nack = nack
        self.outbox: asyncio.Queue[control_pb2.StreamRequest] = asyncio.Queue()
        self.task = asyncio.create_task(self.run())

    async def run(self) -> None:
        async def reqs() -> AsyncIterator[control_pb2.StreamRequest]:
            yield control_pb2.StreamRequest(node=self.node)
            while True:
                yield await self.outbox.get()

        stub = control_pb2_grpc.ControlServiceStub(self.channel)
        async for snap in stub.StreamConfig(reqs()):
            self.received.append(snap)
            error = self.nack if self.nack and len(self.received) > 1 else ""
            await self.outbox.put(
                control_pb2.StreamRequest(
                    ack=control_pb2.Ack(version=snap.version, nonce=snap.nonce, error=error)
                )
            )

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.channel.close()


async def until(pred: Any, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.005)


@pytest.fixture
async def control(etcd: LocalEtcd) -> AsyncIterator[ControlServer]:
    ctl = await start_control(etcd.endpoint, port=0, prefix=f"/s-{uuid.uuid4().hex[:8]}/", control_id="c1")
    yield ctl
    await ctl.stop(0)


async def statuses(ctl: ControlServer) -> dict[str, control_pb2.SidecarStatus]:
    return {s.node.id: s for s in (await ctl.streamer.list_sidecars()).sidecars}


async def test_push_on_change_and_ack_status(control: ControlServer) -> None:
    store = control.store
    await store.apply(docs())
    sc = Sidecar(control, "sc-1", {"app": "pets"})
    other = Sidecar(control, "sc-2", {"app": "shop"})
    try:
        await until(lambda: sc.received and other.received)
        assert not [b for b in sc.received[0].stages if b.HasField("deployment")]
        t0 = time.monotonic()
        await store.deploy("default", "pets", "prod")
        await until(lambda: len(sc.received) == 2)
        assert time.monotonic() - t0 < 1.0
        snap = sc.received[-1]
        assert (
            snap.stages[0].deployment.id == 1
            and snap.control_id == "c1"
            and snap.nonce != sc.received[0].nonce
        )
        assert other.received[-1].stages == []  # not bound: selector app=pets
        # a later change that binds to sc-2 only: its push comes after any the deploy caused, so once
        # it is in, sc-2 got nothing in between (its content did not change with the deploy)
        shop = PETS.replace("name: pets", "name: shop").replace("app: pets", "app: shop")
        await store.apply(docs(shop.replace("api: pets", "api: shop")))
        await until(lambda: [b.api.metadata.name for b in other.received[-1].stages] == ["shop"])
        assert len(other.received) == 2 and len(sc.received) == 2
        assert control.streamer.pushes == 4  # the first snapshots, the deploy to sc-1, the shop to sc-2

        async def acked() -> bool:
            return (await statuses(control)).get(
                "sc-1", control_pb2.SidecarStatus()
            ).acked_version == snap.version

        async with asyncio.timeout(5):
            while not await acked():
                await asyncio.sleep(0.01)
        st = (await statuses(control))["sc-1"]
        assert (
            st.sent_version == snap.version and 0 < st.last_apply_latency_ms < 5000 and st.control_id == "c1"
        )
    finally:
        await sc.close()
        await other.close()
    async with asyncio.timeout(5):
        while await statuses(control):
            await asyncio.sleep(0.02)


async def test_bursts_are_coalesced_but_steady_changes_not_starved(control: ControlServer) -> None:
    store = control.store
    await store.apply(docs())
    sc = Sidecar(control, "sc-1", {"app": "pets"})
    try:
        await until(lambda: sc.received)
        burst = [
            docs(PETS.replace("name: pets", f"name: pets{i}").replace("api: pets", f"api: pets{i}"))
            for i in range(20)
        ]
        await asyncio.gather(*(store.apply(d) for d in burst))
        await until(lambda: len(sc.received[-1].stages) == 21)
        # a marker change after the burst: the pushes before it are all the burst caused
        await store.apply(docs(PETS.replace("body: ok", "body: marker")))

        def marker(snap: control_pb2.Snapshot) -> bool:
            return any(r.integration.mock.body == "marker" for b in snap.stages for r in b.api.spec.routes)

        await until(lambda: marker(sc.received[-1]))
        burst_pushes = next(i for i, snap in enumerate(sc.received) if marker(snap)) - 1
        assert 1 <= burst_pushes < 10, burst_pushes
        # a write every 20 ms for 0.6 s: pushes keep flowing (max delay bounds the wait)
        before = len(sc.received)
        for i in range(30):
            await store.apply(docs(PETS.replace("b:1", f"steady:{i}")))
            await asyncio.sleep(0.02)
        assert len(sc.received) - before >= 5
    finally:
        await sc.close()


async def test_nack_is_recorded_and_not_resent(control: ControlServer) -> None:
    store = control.store
    await store.apply(docs())
    sc = Sidecar(control, "sc-1", {"app": "pets"}, nack="stage prefix /prod is claimed twice")
    try:
        await until(lambda: sc.received)
        await store.deploy("default", "pets", "prod")
        await until(lambda: len(sc.received) == 2)

        async def nacked() -> control_pb2.SidecarStatus | None:
            st = (await statuses(control)).get("sc-1")
            return st if st is not None and st.nack_count else None

        async with asyncio.timeout(5):
            while (st := await nacked()) is None:
                await asyncio.sleep(0.01)
        assert st.last_nack_version == sc.received[1].version and "claimed twice" in st.last_nack_error
        assert st.acked_version == sc.received[0].version
        # a later change: its push comes after any resend of the NACKed version, and there was none
        await store.apply(docs(PETS.replace("b:1", "b:2")))
        await until(lambda: len(sc.received) >= 3)
        assert len(sc.received) == 3 and len({snap.version for snap in sc.received}) == 3
        assert sc.received[2].stages[0].stage.spec.variables["backend"] == "b:2"
    finally:
        await sc.close()


async def test_two_replicas_share_etcd_and_sidecar_status(etcd: LocalEtcd, control: ControlServer) -> None:
    second = await start_control(
        etcd.endpoint, port=0, prefix=control.store.prefix, control_id="c2", keys=control.store.keys
    )
    await control.store.apply(docs())
    a = Sidecar(control, "on-c1", {"app": "pets"})
    b = Sidecar(second, "on-c2", {"app": "pets"})
    try:
        await until(lambda: a.received and b.received)
        await second.store.deploy("default", "pets", "prod")

        def deployed(sc: Sidecar) -> bool:  # c2 may push the Api's arrival first: count snapshots, not pushes
            return any(st.deployment.id == 1 for st in sc.received[-1].stages)

        await until(lambda: deployed(a) and deployed(b))
        assert a.received[-1].version == b.received[-1].version
        async with asyncio.timeout(5):
            while set(await statuses(control)) != {"on-c1", "on-c2"}:
                await asyncio.sleep(0.02)
        seen = await statuses(second)
        assert seen["on-c1"].control_id == "c1" and seen["on-c2"].control_id == "c2"
    finally:
        await a.close()
        await b.close()
        await second.stop(0)


async def test_first_message_must_be_node(control: ControlServer) -> None:
    async with sidecar_channel(control, "sc-x") as ch:
        stub = control_pb2_grpc.ControlServiceStub(ch)

        async def reqs() -> AsyncIterator[control_pb2.StreamRequest]:
            yield control_pb2.StreamRequest(ack=control_pb2.Ack(version="x"))

        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.StreamConfig(reqs()):
                pass
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_admin_errors_map_to_grpc_status(control: ControlServer) -> None:
    async with admin_channel(control) as ch:
        stub = control_pb2_grpc.ControlServiceStub(ch)
        bad = docs(PETS.replace("path: /health", "path: health"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Apply(control_pb2.ApplyRequest(resources=bad))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "routes[0].path" in (
            err.value.details() or ""
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Deploy(control_pb2.DeployRequest(namespace="default", api="ghost", stage="prod"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_control_plane_metrics(control: ControlServer, otlp: Any) -> None:
    await control.store.apply(docs())
    sc = Sidecar(control, "sc-m", {"app": "pets"})
    try:
        await until(lambda: sc.received)
        await control.store.deploy("default", "pets", "prod")
        await until(lambda: control.streamer.acks >= 2)
        text = control.streamer.metrics_text()
        assert "meshgate_control_connected_sidecars 1" in text
        assert (
            f"meshgate_control_pushes_total {control.streamer.pushes}" in text
            and control.streamer.pushes >= 2
        )
        assert "meshgate_control_nacks_total 0" in text
        count = next(
            line
            for line in text.splitlines()
            if line.startswith("meshgate_control_config_apply_latency_seconds_count")
        )
        assert int(count.split()[-1]) >= 1
        # the same families over OTLP/gRPC (meshgate control --otlp-endpoint)
        exporter = OtlpMetricsExporter(
            f"127.0.0.1:{otlp.port}", "meshgate-control", control.control_id, control.streamer.metrics
        )
        assert await exporter.export()
        await exporter.channel.close()
        got = otlp.metrics()
        assert got["meshgate_control_connected_sidecars"].gauge.data_points[0].as_int == 1
        assert got["meshgate_control_acks"].sum.data_points[0].as_int == control.streamer.acks
        assert got["meshgate_control_nacks"].sum.data_points[0].as_int == 0
        latency = got["meshgate_control_config_apply_latency"]
        assert latency.unit == "s" and latency.histogram.data_points[0].count == int(count.split()[-1])
    finally:
        await sc.close()
