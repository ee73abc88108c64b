"""The @connections id key and peer listing on real etcd: made once, shared by replicas, stable across
restarts; every snapshot carries the key, its node id and the sidecars serving each WebSocket Api."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from meshgate.control import state as keys
from meshgate.control.etcd_local import LocalEtcd
from meshgate.control.server import ControlServer, start_control
from meshgate.control.snapshots import build_snapshot
from meshgate.control.state import State
from meshgate.control.store import Store
from meshgate.v1 import control_pb2, control_pb2_grpc, resources_pb2
from tls import admin_credentials

from .conftest import docs, dump, wipe
from .test_stream import Sidecar, until

WS = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {name: chat}
spec:
  selector: {matchLabels: {app: chat}}
  routes:
    - method: GET
      path: /ws
      integration:
        type: websocket_api
        websocketRoutes: {$default: {type: http, uri: "http://127.0.0.1:9/default"}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {name: prod}
spec: {api: chat}
---
apiVersion: meshgate.io/v1
kind: Api
metadata: {name: plain}
spec:
  selector: {matchLabels: {app: chat}}
  routes:
    - {method: GET, path: /health, integration: {type: mock, mock: {body: ok}}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {name: prod}
spec: {api: plain}
"""


def apply(ctl: ControlServer, text: str) -> control_pb2.ApplyResponse:
    """The Apply RPC, as `meshgate apply -f` sends it."""
    with grpc.secure_channel(f"127.0.0.1:{ctl.port}", admin_credentials(ctl).channel()) as channel:
        stub = control_pb2_grpc.ControlServiceStub(channel)
        response: control_pb2.ApplyResponse = stub.Apply(
            control_pb2.ApplyRequest(resources=docs(text)), timeout=10
        )
        return response


@pytest.fixture
async def prefix(etcd: LocalEtcd) -> AsyncIterator[str]:
    p = f"/ids-{uuid.uuid4().hex[:8]}/"
    yield p
    s = Store(etcd.endpoint, p)
    await s.open()
    await wipe(s)
    await s.close()


async def test_the_key_is_made_once_under_its_state_key(store: Store, etcd: LocalEtcd) -> None:
    others = [Store(etcd.endpoint, store.prefix) for _ in range(3)]
    for s in others:
        await s.open()
    try:
        got = await asyncio.gather(store.connection_id_key(), *(s.connection_id_key() for s in others))
    finally:
        for s in others:
            await s.close()
    assert len(set(got)) == 1 and len(got[0]) == 32  # racing replicas agree on one key
    assert await store.connection_id_key() == got[0]
    stored = await dump(store)
    assert stored[keys.secret_key(store.prefix, keys.CONNECTION_ID_KEY).encode()] == got[0]
    st = await store.load_state()
    assert st.connection_id_key == got[0] and not st.apis  # not a resource


def test_snapshot_lists_the_sidecars_serving_each_websocket_api() -> None:
    st = State("/p/")
    for res in docs(WS):
        msg = getattr(res, res.WhichOneof("kind"))
        msg.metadata.namespace = msg.metadata.namespace or "default"
        st._store(msg)
    st.stages[("default", "chat", "prod")].spec.deployment = 0
    st.connection_id_key = b"k" * 32

    def node(node_id: str, app: str, advertise: str) -> control_pb2.Node:
        n = control_pb2.Node(id=node_id, namespace="default", labels={"app": app}, advertise=advertise)
        status = control_pb2.SidecarStatus(node=n)
        assert st.put(keys.sidecar_key("/p/", node_id), status.SerializeToString())
        return n

    a = node("a", "chat", "10.0.0.1:15001")
    node("b", "chat", "10.0.0.2:15001")
    node("c", "chat", "")  # no address: not listed
    node("d", "other", "10.0.0.4:15001")  # does not serve chat
    snap = build_snapshot(st, a)
    assert snap.connection_id_key == b"k" * 32
    assert [(g.api, [(p.node_id, p.advertise) for p in g.peers]) for g in snap.connection_peers] == [
        ("default/chat", [("a", "10.0.0.1:15001"), ("b", "10.0.0.2:15001")])
    ]  # the plain Api gets no listing
    moved = control_pb2.SidecarStatus(
        node=control_pb2.Node(id="b", namespace="default", labels={"app": "chat"}, advertise="10.0.0.9:1")
    )
    assert st.put(keys.sidecar_key("/p/", "b"), moved.SerializeToString())  # a new address is a change
    assert build_snapshot(st, a).version != snap.version
    assert isinstance(st.apis[("default", "chat")], resources_pb2.Api)


async def test_replicas_and_restarts_send_the_same_key(etcd: LocalEtcd, prefix: str) -> None:
    one = await start_control(etcd.endpoint, port=0, prefix=prefix, control_id="c1")
    two = await start_control(etcd.endpoint, port=0, prefix=prefix, control_id="c2", keys=one.store.keys)
    applied = await asyncio.to_thread(apply, one, WS)
    assert [r.action for r in applied.results] == ["created"] * 4
    await one.store.deploy("default", "chat", "prod")
    a = Sidecar(one, "sc-a", {"app": "chat"})
    a.node.advertise = "127.0.0.1:1001"
    b = Sidecar(two, "sc-b", {"app": "chat"})
    b.node.advertise = "127.0.0.1:1002"

    def listing(sc: Sidecar) -> list[tuple[str, str]]:
        last = sc.received[-1] if sc.received else control_pb2.Snapshot()
        return [(p.node_id, p.advertise) for g in last.connection_peers for p in g.peers]

    want = [("sc-a", "127.0.0.1:1001"), ("sc-b", "127.0.0.1:1002")]
    try:
        await until(lambda: listing(a) == want and listing(b) == want)
        key = a.received[-1].connection_id_key
        assert len(key) == 32 and b.received[-1].connection_id_key == key
        assert (a.received[-1].node_id, b.received[-1].node_id) == ("sc-a", "sc-b")
    finally:
        await a.close()
        await b.close()
        await one.stop(0)
        await two.stop(0)
    again = await start_control(etcd.endpoint, port=0, prefix=prefix, control_id="c3", keys=one.store.keys)
    c = Sidecar(again, "sc-c", {"app": "chat"})
    try:
        await until(lambda: bool(c.received))
        assert c.received[0].connection_id_key == key  # the first snapshot already has it
    finally:
        await c.close()
        await again.stop(0)
