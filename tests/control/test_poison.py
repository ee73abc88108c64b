"""Poison isolation on real etcd: a stored value that does not decode or validate marks its own object
and is skipped; the watch and everything else keep flowing (in-process control, a real process, the
Kubernetes controller's condition)."""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from e2e.harness import Proc, meshgate, wait_port
from google.protobuf.message import DecodeError
from kubeapi import KubeApi
from meshgate.control import state as keys
from meshgate.control.controller import Controller
from meshgate.control.etcd_local import LocalEtcd, free_port
from meshgate.control.server import ControlServer, start_control
from meshgate.control.store import Store
from meshgate.v1 import control_pb2, control_pb2_grpc, resources_pb2
from tls import LocalControl, admin_credentials

from .conftest import PETS, docs, raw_etcd, wipe
from .test_stream import Sidecar, until

CATS = PETS.replace("name: pets", "name: cats").replace("api: pets", "api: cats")
GARBAGE = b"not a protobuf \xff\xff"  # 'n' is field 13 with wire type 6: no such wire type
BAD_STAGE = resources_pb2.Stage(  # decodes, but apply would refuse it (a space in a stage variable)
    metadata=resources_pb2.ObjectMeta(name="prod", namespace="default"),
    spec=resources_pb2.StageSpec(api="cats", variables={"backend": "b 1"}),
).SerializeToString()


def test_the_garbage_really_does_not_decode() -> None:
    with pytest.raises(DecodeError):
        resources_pb2.Stage.FromString(GARBAGE)


def cats_key(prefix: str) -> str:
    return keys.stage_key(prefix, "default", "cats", "prod")


def stage_names(snap: control_pb2.Snapshot) -> set[tuple[str, str]]:
    return {(b.api.metadata.name, b.stage.metadata.name) for b in snap.stages}


def variables(snap: control_pb2.Snapshot, api: str) -> dict[str, str]:
    return next(dict(b.stage.spec.variables) for b in snap.stages if b.api.metadata.name == api)


def metric(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def poison_lines(caplog: pytest.LogCaptureFixture, key: str) -> int:
    return sum(1 for r in caplog.records if key in r.getMessage() and "poison" in r.getMessage())


def apply_rpc(ctl: Any, text: str) -> control_pb2.ApplyResponse:
    with grpc.secure_channel(f"127.0.0.1:{ctl.port}", admin_credentials(ctl).channel()) as channel:
        stub = control_pb2_grpc.ControlServiceStub(channel)
        response: control_pb2.ApplyResponse = stub.Apply(
            control_pb2.ApplyRequest(resources=docs(text)), timeout=10
        )
        return response


def get_rpc(ctl: Any, kind: str) -> list[resources_pb2.Resource]:
    with grpc.secure_channel(f"127.0.0.1:{ctl.port}", admin_credentials(ctl).channel()) as channel:
        stub = control_pb2_grpc.ControlServiceStub(channel)
        return list(stub.Get(control_pb2.GetRequest(kind=kind), timeout=10).resources)


async def put_raw(endpoint: str, key: str, value: bytes) -> None:
    async with raw_etcd(endpoint) as client:
        await client.put(key.encode(), value)


async def delete_raw(endpoint: str, key: str) -> None:
    async with raw_etcd(endpoint) as client:
        await client.delete(key.encode())


@pytest.fixture
async def control(etcd: LocalEtcd) -> AsyncIterator[ControlServer]:
    ctl = await start_control(etcd.endpoint, port=0, prefix=f"/p-{uuid.uuid4().hex[:8]}/", control_id="c1")
    yield ctl
    await wipe(ctl.store)
    await ctl.stop(0)


async def test_a_poisoned_stage_keeps_its_last_good_and_the_rest_propagates(
    control: ControlServer, etcd: LocalEtcd, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "meshgate.control")
    prefix, mirror = control.store.prefix, control.mirror
    await control.store.apply(docs(PETS) + docs(CATS))
    sc = Sidecar(control, "sc-1", {"app": "pets"})
    try:
        await until(
            lambda: sc.received and stage_names(sc.received[-1]) == {("pets", "prod"), ("cats", "prod")}
        )
        good = (await control.store.get("Stage", "default", "prod", "cats"))[0].stage.SerializeToString()
        await put_raw(etcd.endpoint, cats_key(prefix), GARBAGE)
        await until(lambda: cats_key(prefix) in mirror.state.poisoned, 5)

        # another change, through the Apply RPC, reaches the sidecar within a second or two
        t0 = time.monotonic()
        assert await asyncio.to_thread(apply_rpc, control, PETS.replace('"b:1"', '"b:2"'))
        await until(lambda: variables(sc.received[-1], "pets") == {"backend": "b:2"}, 2)
        assert time.monotonic() - t0 < 2
        # the poisoned stage: its last good version still served; marked once (log, metrics)
        assert stage_names(sc.received[-1]) == {("pets", "prod"), ("cats", "prod")}
        assert mirror.reloads == 0 and mirror.watches == 1
        assert poison_lines(caplog, cats_key(prefix)) == 1
        text = control.streamer.metrics_text() + mirror.metrics_text()
        assert metric(text, "meshgate_control_poisoned_objects") == 1
        assert metric(text, "meshgate_control_poisoned_total") == 1
        # Get does not fail on it (it lists what decodes)
        got = await asyncio.to_thread(get_rpc, control, "stages")
        assert {r.stage.spec.api for r in got} == {"pets"}

        # a good rewrite clears the mark
        await put_raw(etcd.endpoint, cats_key(prefix), good)
        await until(lambda: not mirror.state.poisoned, 5)
        assert metric(mirror.metrics_text(), "meshgate_control_poisoned_objects") == 0

        # a value that decodes but fails validation is poison too (VALIDATE_STORED); a delete clears it (and the stage goes)
        await put_raw(etcd.endpoint, cats_key(prefix), BAD_STAGE)
        await until(lambda: cats_key(prefix) in mirror.state.poisoned, 5)
        assert "spec.variables.backend" in mirror.state.poisoned[cats_key(prefix)]
        assert mirror.state.stages[("default", "cats", "prod")].spec.variables["backend"] == "b:1"
        await delete_raw(etcd.endpoint, cats_key(prefix))
        await until(lambda: stage_names(sc.received[-1]) == {("pets", "prod")}, 2)
        assert not mirror.state.poisoned and mirror.reloads == 0
        text = mirror.metrics_text()
        assert metric(text, "meshgate_control_poisoned_objects") == 0
        assert metric(text, "meshgate_control_poisoned_total") == 2
        # and a value at the wrong key (a valid Stage of another Api) is poison, not a second stage
        await put_raw(etcd.endpoint, keys.stage_key(prefix, "default", "dogs", "prod"), good)
        await until(lambda: bool(mirror.state.poisoned), 5)
        assert (
            "belongs at " + cats_key(prefix)
            in mirror.state.poisoned[keys.stage_key(prefix, "default", "dogs", "prod")]
        )
        assert ("default", "cats", "prod") not in mirror.state.stages
    finally:
        await sc.close()


WS_API = resources_pb2.Api(
    metadata=resources_pb2.ObjectMeta(name="chat", namespace="default"),
    spec=resources_pb2.ApiSpec(
        routes=[
            resources_pb2.Route(
                method="GET",
                path="/chat",
                integration=resources_pb2.Integration(
                    type="websocket_api",
                    websocket_routes={
                        "$default": resources_pb2.Integration(type="http", uri="http://c.svc/d")
                    },
                ),
            )
        ]
    ),
)


def test_stored_values_are_validated_by_default_and_websocket_apis_pass() -> None:
    assert keys.VALIDATE_STORED is True
    with pytest.raises(keys.Poison, match="fails validation: .*spec.variables.backend"):
        keys.check_stored("/p/", "/p/stages/default/cats/prod", BAD_STAGE)
    api_key = keys.api_key("/p/", "default", "chat")
    assert keys.check_stored("/p/", api_key, WS_API.SerializeToString()) == WS_API  # apply accepts it
    broken = resources_pb2.Api()
    broken.CopyFrom(WS_API)
    broken.spec.routes[0].integration.websocket_routes["$default"].type = "mock"
    with pytest.raises(keys.Poison, match=r"websocketRoutes\.\$default\.type"):
        keys.check_stored("/p/", api_key, broken.SerializeToString())


async def test_poison_present_before_control_starts(etcd: LocalEtcd) -> None:
    prefix = f"/p-{uuid.uuid4().hex[:8]}/"
    seed = Store(etcd.endpoint, prefix)
    await seed.open()
    await seed.apply(docs(PETS) + docs(CATS))
    await put_raw(etcd.endpoint, cats_key(prefix), GARBAGE)
    await put_raw(etcd.endpoint, keys.api_key(prefix, "default", "dogs"), GARBAGE)
    ctl = await asyncio.wait_for(start_control(etcd.endpoint, port=0, prefix=prefix, control_id="c1"), 10)
    sc = Sidecar(ctl, "sc-1", {"app": "pets"})
    try:
        await until(lambda: sc.received, 5)
        assert stage_names(sc.received[-1]) == {("pets", "prod")}  # no last good: the cats stage is absent
        assert set(ctl.mirror.state.poisoned) == {cats_key(prefix), keys.api_key(prefix, "default", "dogs")}
        assert metric(ctl.mirror.metrics_text(), "meshgate_control_poisoned_objects") == 2
        got = await asyncio.to_thread(get_rpc, ctl, "apis")
        assert {r.api.metadata.name for r in got} == {"pets", "cats"}
        await asyncio.to_thread(apply_rpc, ctl, PETS.replace('"b:1"', '"b:3"'))
        await until(lambda: variables(sc.received[-1], "pets") == {"backend": "b:3"}, 2)
        assert ctl.mirror.reloads == 0
    finally:
        await sc.close()
        await wipe(seed)
        await seed.close()
        await ctl.stop(0)


async def test_a_real_control_process_serves_past_poison(etcd: LocalEtcd, tmp_path: Path) -> None:
    prefix, port, metrics_port = f"/p-{uuid.uuid4().hex[:8]}/", free_port(), free_port()
    seed = Store(etcd.endpoint, prefix)
    await seed.open()
    await seed.apply(docs(PETS) + docs(CATS))
    await put_raw(etcd.endpoint, keys.api_key(prefix, "default", "dogs"), GARBAGE)  # before it starts
    args = ["--etcd", etcd.endpoint, "--listen", f"127.0.0.1:{port}", "--prefix", prefix]
    proc = Proc(
        [*meshgate("control", *args, "--metrics-listen", f"127.0.0.1:{metrics_port}")],
        tmp_path / "control.log",
    ).start()
    sc: Sidecar | None = None
    try:
        await asyncio.to_thread(wait_port, port, 20.0, proc.popen)
        await asyncio.to_thread(wait_port, metrics_port, 20.0, proc.popen)
        sc = Sidecar(LocalControl(port), "sc-1", {"app": "pets"})
        await until(lambda: sc is not None and sc.received, 10)

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
                body: bytes = resp.read()
                return body.decode()

        async def poisoned() -> float:
            return metric(await asyncio.to_thread(scrape), "meshgate_control_poisoned_objects")

        await put_raw(etcd.endpoint, cats_key(prefix), GARBAGE)  # while it runs
        async with asyncio.timeout(10):  # control has seen it
            while await poisoned() != 2:
                await asyncio.sleep(0.02)
        t0 = time.monotonic()
        await asyncio.to_thread(apply_rpc, LocalControl(port), PETS.replace('"b:1"', '"b:4"'))
        await until(lambda: sc is not None and variables(sc.received[-1], "pets") == {"backend": "b:4"}, 2)
        assert time.monotonic() - t0 < 2
        assert stage_names(sc.received[-1]) == {("pets", "prod"), ("cats", "prod")}  # last good kept
        text = await asyncio.to_thread(scrape)
        assert metric(text, "meshgate_control_poisoned_objects") == 2
        assert metric(text, "meshgate_control_poisoned_total") == 2
        # a later change reaches the sidecar: what the poisoned value could have set off (a reload, a
        # second log line) would have come before it
        await asyncio.to_thread(apply_rpc, LocalControl(port), PETS.replace('"b:1"', '"b:5"'))
        await until(lambda: sc is not None and variables(sc.received[-1], "pets") == {"backend": "b:5"}, 5)
        log = proc.output()
        assert "reloading" not in log, log
        assert sum(1 for line in log.splitlines() if cats_key(prefix) in line) == 1, log
    finally:
        if sc is not None:
            await sc.close()
        proc.stop()
        await wipe(seed)
        await seed.close()


async def test_the_controller_marks_a_poisoned_object_applied_false(etcd: LocalEtcd) -> None:
    from test_controller import options, replay, wait_condition  # the controller tests' kit

    kube = KubeApi()
    await kube.start()
    store = Store(etcd.endpoint, f"/p-{uuid.uuid4().hex[:8]}/")
    await store.open()
    ctl = Controller(store, options(kube), identity="ctl-a", cluster_cidrs=("10.0.0.0/8",))
    await ctl.start()
    key = keys.stage_key(store.prefix, "shop", "pets", "prod")
    try:
        await replay(kube, "pets")
        before = await wait_condition(kube, "Stage", "prod", "Applied", "False", reason="NoSidecars")
        good = (await store.get("Stage", "shop", "prod", "pets"))[0].stage.SerializeToString()
        await put_raw(etcd.endpoint, key, GARBAGE)
        poisoned = await wait_condition(kube, "Stage", "prod", "Applied", "False", reason="Poisoned")
        assert key in poisoned["message"] and "decode" in poisoned["message"]
        assert any(e[1] == "Poisoned" for e in _events(kube, "prod"))
        await put_raw(etcd.endpoint, key, good)
        await wait_condition(kube, "Stage", "prod", "Applied", "False", reason="NoSidecars")
        assert before["reason"] == "NoSidecars"
        # an edit of an object whose key does not decode cannot be stored: Accepted False until the
        # key is deleted, then stored at once
        api = keys.api_key(store.prefix, "shop", "pets")
        await put_raw(etcd.endpoint, api, GARBAGE)
        await replay(kube, "pets-v2")
        refused = await wait_condition(
            kube, "Api", "pets", "Accepted", "False", generation=2, reason="Poisoned"
        )
        assert api in refused["message"]
        await delete_raw(etcd.endpoint, api)
        await wait_condition(kube, "Api", "pets", "Accepted", "True", generation=2)
        assert len((await store.get("Api", "shop", "pets"))[0].api.spec.routes) == 2
    finally:
        await ctl.stop()
        await wipe(store)
        await store.close()
        await kube.stop()


def _events(kube: KubeApi, name: str) -> list[tuple[str, str, str]]:
    from test_controller import events

    return events(kube, "Stage", name)


async def test_an_apply_repairs_a_poisoned_key(store: Store) -> None:
    """`meshgate apply` of the object over its undecodable key overwrites it (it used to be INTERNAL)."""
    await store.apply(docs(PETS))
    key = keys.stage_key(store.prefix, "default", "pets", "prod")
    await put_raw(store.endpoint, key, GARBAGE)
    result = await store.apply(docs(PETS.replace('"b:1"', '"b:9"')))
    assert [r.action for r in result.results if r.kind == "Stage"] == ["created"]
    async with raw_etcd(store.endpoint) as client:
        value = await client.get(key.encode())
    assert (
        value is not None and resources_pb2.Stage.FromString(value.value).spec.variables["backend"] == "b:9"
    )
