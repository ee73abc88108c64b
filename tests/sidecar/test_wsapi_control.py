"""@connections through a real control process: the WebSocket Api and its Stage applied and deployed
over its RPCs, etcd, the snapshot stream to two sidecars (key, peer listing, node id), a genuine id
forwarded to its owner, crafted ids refused with 410 and no connection."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from e2e.harness import wait_port
from meshgate.control.etcd_local import LocalEtcd, free_port
from meshgate.control.resources import load_documents
from meshgate.sidecar.config_client import ConfigClient
from meshgate.sidecar.credentials import cli_credentials, default_state_dir
from meshgate.sidecar.identity import SidecarIdentity
from meshgate.sidecar.routing import compile_snapshot
from meshgate.sidecar.runtime import Runtime
from meshgate.sidecar.wsapi import Registry, encode_id, owner_tag
from meshgate.v1 import control_pb2, control_pb2_grpc
from websockets.sync.client import connect

from .conftest import Gateway, LoopThread, snapshot
from .test_wsapi import Backend, manage, recorder

CHAT = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {{name: chat, namespace: default}}
spec:
  selector: {{matchLabels: {{app: chat}}}}
  routes:
    - method: GET
      path: /chat
      integration:
        type: websocket_api
        routeSelectionExpression: $request.body.action
        websocketRoutes:
          $connect: {{type: http, uri: "http://127.0.0.1:{port}/connect"}}
          $default: {{type: http, uri: "http://127.0.0.1:{port}/default"}}
"""
STAGE = """
apiVersion: meshgate.io/v1
kind: Stage
metadata: {name: prod}
spec: {api: chat}
"""


@pytest.fixture
def control(etcd: LocalEtcd, tmp_path: Any) -> Iterator[tuple[int, str]]:
    port, prefix = free_port(), f"/wsc-{uuid.uuid4().hex[:8]}/"
    args = ["control", "--etcd", etcd.endpoint, "--listen", f"127.0.0.1:{port}", "--prefix", prefix]
    with open(tmp_path / "control.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "meshgate.control.cli", *args, "--cluster-cidr", "127.0.0.0/8"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_port(port, 20.0, proc)
            yield port, prefix
        finally:
            proc.terminate()
            proc.wait(10)


class ControlledSidecar:
    """The real listener and registry, configured by a ConfigClient streaming from control."""

    def __init__(self, lt: LoopThread, control_port: int, node_id: str) -> None:
        self.lt = lt
        self.gw = Gateway(lt).start(snapshot())
        runtime = Runtime()
        self.gw.on_stop.append(runtime.close)
        self.gw.http.registry = Registry(f"127.0.0.1:{self.gw.port}")
        self.gw.http.session = runtime.session
        node = control_pb2.Node(
            id=node_id, namespace="default", labels={"app": "chat"}, advertise=f"127.0.0.1:{self.gw.port}"
        )

        def apply(snap: control_pb2.Snapshot) -> None:
            self.gw.holder.table = compile_snapshot(snap, runtime)

        local = default_state_dir()  # the control process's CA and bootstrap token
        ident = SidecarIdentity.from_files(
            f"127.0.0.1:{control_port}", local / "ca.crt", local / "bootstrap-token"
        )
        self.client = ConfigClient(f"127.0.0.1:{control_port}", node, apply, identity=ident)

        async def go() -> asyncio.Task[None]:
            return asyncio.create_task(self.client.run())

        self.task = lt.run(go())

    def peers(self) -> list[tuple[str, str]]:
        snap = self.client.applied
        return [(p.node_id, p.advertise) for g in snap.connection_peers for p in g.peers] if snap else []

    def stop(self) -> None:
        self.client.stop()
        self.lt.loop.call_soon_threadsafe(self.task.cancel)
        self.gw.stop()


def test_connections_through_control(lt: LoopThread, control: tuple[int, str]) -> None:
    control_port, _ = control
    backend = Backend(lt)
    rec, rec_port = recorder(lt)
    channel = grpc.secure_channel(f"127.0.0.1:{control_port}", cli_credentials().channel())
    stub = control_pb2_grpc.ControlServiceStub(channel)
    text = CHAT.format(port=backend.port) + "---" + STAGE
    applied = stub.Apply(control_pb2.ApplyRequest(resources=load_documents(text)), timeout=10)
    assert [r.action for r in applied.results] == ["created", "created"]
    stub.Deploy(control_pb2.DeployRequest(namespace="default", api="chat", stage="prod"), timeout=10)
    a = ControlledSidecar(lt, control_port, "sc-a")
    b = ControlledSidecar(lt, control_port, "sc-b")
    try:
        want = sorted([("sc-a", f"127.0.0.1:{a.gw.port}"), ("sc-b", f"127.0.0.1:{b.gw.port}")])
        deadline = time.monotonic() + 20
        while not (a.peers() == want == b.peers()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert a.peers() == want == b.peers()
        assert a.client.applied is not None and b.client.applied is not None
        key = a.client.applied.connection_id_key
        assert len(key) == 32 and b.client.applied.connection_id_key == key
        assert (a.client.applied.node_id, b.client.applied.node_id) == ("sc-a", "sc-b")
        with connect(f"ws://127.0.0.1:{a.gw.port}/prod/chat", additional_headers={"x-token": "ok"}) as ws:
            conn_id = ws.response.headers["x-meshgate-connection-id"]
            assert manage(b.gw.port, "POST", conn_id, b"via sc-b") == (200, b"")  # forwarded to sc-a
            assert ws.recv(timeout=5) == "via sc-b"
            assert manage(b.gw.port, "GET", conn_id)[0] == 200
            head, _, mac = conn_id.rpartition(".")
            for crafted in (
                f"{head}.{'A' * len(mac)}",  # wrong MAC
                encode_id(b"guessed" * 5, owner_tag("default/chat", "sc-a")),
                encode_id(key, owner_tag("default/chat", "sc-gone")),  # not a listed sidecar
                base64.urlsafe_b64encode(f"127.0.0.1:{rec_port}".encode()).decode(),  # the old address form
            ):
                assert manage(b.gw.port, "POST", crafted, b"x")[0] == 410
        assert rec.accepted == 0
    finally:
        a.stop()
        b.stop()
        rec.stop()
        backend.stop()
