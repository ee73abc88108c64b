"""The etcd mirror on a real etcd: load + watch, a compacted watch reloads and says so, one watch for all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from meshgate.control.etcd_local import LocalEtcd
from meshgate.control.mirror import Change, EtcdMirror, MirrorEvent, Reloaded
from meshgate.control.state import sidecar_key, stage_key
from meshgate.control.store import Store, WatchEvent
from meshgate.v1 import control_pb2

from .conftest import PETS, docs, raw_etcd, wipe

CATS = PETS.replace("name: pets", "name: cats").replace("api: pets", "api: cats")


class GatedStore(Store):
    """A Store whose watches wait for `gate` before they reach etcd, and are counted."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = asyncio.Event()
        self.gate.set()
        self.starts: list[int] = []  # the start revision of every watch opened

    async def watch(self, start_revision: int) -> AsyncIterator[WatchEvent]:
        self.starts.append(start_revision)
        await self.gate.wait()
        async for event in super().watch(start_revision):
            yield event


@pytest.fixture
async def gated(etcd: LocalEtcd, store: Store) -> AsyncIterator[GatedStore]:
    s = GatedStore(etcd.endpoint, store.prefix)  # the `store` fixture's prefix: emptied afterwards
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def mirror(gated: GatedStore) -> AsyncIterator[EtcdMirror]:
    m = EtcdMirror(gated, retry_s=0.01)
    yield m
    await m.stop()


async def until(pred: Callable[[], Any], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.005)


def changes(events: list[MirrorEvent]) -> list[tuple[str, bool, bool]]:
    """(key without prefix, deleted, changed) of each Change."""
    return [(e.key.split("/", 2)[2], e.deleted, e.changed) for e in events if isinstance(e, Change)]


async def test_load_then_watch_sees_puts_and_deletes(gated: GatedStore, mirror: EtcdMirror) -> None:
    applied = await gated.apply(docs())
    events: list[MirrorEvent] = []
    mirror.subscribe(events.append)
    await mirror.start()
    assert set(mirror.state.apis) == {("default", "pets")} and set(mirror.state.stages) == {
        ("default", "pets", "prod")
    }
    assert mirror.revision == mirror.state.revision >= applied.revision and events == []

    deployed = await gated.deploy("default", "pets", "prod")
    await until(lambda: mirror.revision == deployed.revision)
    assert mirror.state.deployments[("default", "pets", 1)].id == 1
    assert mirror.state.stages[("default", "pets", "prod")].spec.deployment == 1
    assert mirror.state.revision == deployed.revision  # what snapshot memoization keys on
    assert sorted(changes(events)) == [
        ("deployments/default/pets/0000000001", False, True),
        ("seq/deployments/default/pets", False, False),  # no resource: State unchanged
        ("stages/default/pets/prod", False, True),
    ]
    assert {e.revision for e in events if isinstance(e, Change)} == {deployed.revision}

    # sidecar status keys: membership is a change, a status update (an ACK) is not, but is kept
    events.clear()
    node = control_pb2.Node(id="sc-1", namespace="default", labels={"app": "pets"})
    await gated.put_status(control_pb2.SidecarStatus(node=node))
    acked = await gated.put_status(control_pb2.SidecarStatus(node=node, acked_version="v1"))
    await until(lambda: mirror.state.statuses.get("sc-1", control_pb2.SidecarStatus()).acked_version)
    assert set(mirror.state.sidecars) == {"sc-1"}
    assert await gated.forget_status("sc-1", acked)
    revision = await gated.delete(
        control_pb2.ObjectRef(kind="Stage", namespace="default", name="prod", api="pets")
    )
    await until(lambda: mirror.revision == revision)
    assert mirror.state.sidecars == {} and mirror.state.statuses == {} and mirror.state.stages == {}
    assert changes(events) == [
        ("sidecars/sc-1", False, True),
        ("sidecars/sc-1", False, False),
        ("sidecars/sc-1", True, True),
        ("stages/default/pets/prod", True, True),
    ]
    revisions = [e.revision for e in events if isinstance(e, Change)]
    assert revisions == sorted(revisions) and len(set(revisions)) == 4
    assert mirror.reloads == 0 and gated.starts == [applied.revision + 1]


async def test_a_compacted_watch_reloads_and_tells_every_subscriber(
    gated: GatedStore, mirror: EtcdMirror
) -> None:
    await gated.apply(docs())
    first: list[MirrorEvent] = []
    second: list[MirrorEvent] = []
    mirror.subscribe(first.append)
    mirror.subscribe(second.append)
    gated.gate.clear()  # the mirror loads, then its watch waits here
    await mirror.start()
    loaded = mirror.revision
    await until(lambda: gated.starts == [loaded + 1])
    # meanwhile: an Api and its stage appear, the first stage goes, and etcd compacts it all away
    await gated.apply(docs(CATS))
    await gated.delete(control_pb2.ObjectRef(kind="Stage", namespace="default", name="prod", api="pets"))
    now = (await gated.apply(docs(CATS.replace("b:1", "b:2")))).revision
    async with raw_etcd(gated.endpoint) as client:
        await client.compact(now)
    assert set(mirror.state.stages) == {("default", "pets", "prod")}  # not seen yet
    gated.gate.set()

    await until(lambda: mirror.reloads == 1)
    assert first == second == [Reloaded(now)]  # no Change: the events are gone, only a reload catches up
    assert mirror.revision == now
    assert set(mirror.state.apis) == {("default", "pets"), ("default", "cats")}
    assert set(mirror.state.stages) == {("default", "cats", "prod")}  # the deleted stage is gone
    assert mirror.state.stages[("default", "cats", "prod")].spec.variables["backend"] == "b:2"
    # and it watches again from the reload's revision
    await until(lambda: gated.starts == [loaded + 1, now + 1])
    deployed = await gated.deploy("default", "cats", "prod")
    await until(lambda: mirror.revision == deployed.revision)
    assert ("default", "cats", 1) in mirror.state.deployments
    assert first == second and isinstance(first[-1], Change) and len(first) == 4
    assert mirror.reloads == 1


async def test_two_subscribers_share_one_watch_and_see_the_same_order(
    gated: GatedStore, mirror: EtcdMirror
) -> None:
    seen: dict[str, list[tuple[str, bool, int]]] = {"a": [], "b": []}

    def recorder(name: str) -> Callable[[MirrorEvent], None]:
        def record(event: MirrorEvent) -> None:
            assert isinstance(event, Change)
            # the event is in the state already when a subscriber hears of it
            assert (mirror.state.resource(event.key) is None) == event.deleted or "seq/" in event.key
            seen[name].append((event.key, event.deleted, event.revision))

        return record

    def broken(event: MirrorEvent) -> None:
        raise RuntimeError("a subscriber bug")

    mirror.subscribe(recorder("a"), "a")
    mirror.subscribe(broken, "broken")  # logged; the others still hear everything
    sub_b = mirror.subscribe(recorder("b"), "b")
    await mirror.start()
    await mirror.start()  # idempotent: still one load, one watch
    await asyncio.gather(*(gated.apply(docs(CATS.replace("b:1", f"b:{i}"))) for i in range(5)))
    await gated.deploy("default", "cats", "prod")
    last = (await gated.apply(docs())).revision
    await until(lambda: mirror.revision == last)
    assert seen["a"] == seen["b"] and len(seen["a"]) >= 6
    assert [r for _, _, r in seen["a"]] == sorted(r for _, _, r in seen["a"])
    assert gated.starts == [gated.starts[0]] and mirror.watches == 1
    sub_b.close()
    key = stage_key(gated.prefix, "default", "pets", "prod")
    revision = await gated.delete(
        control_pb2.ObjectRef(kind="Stage", namespace="default", name="prod", api="pets")
    )
    await until(lambda: mirror.revision == revision)
    assert seen["a"][-1] == (key, True, revision) and seen["b"][-1] != seen["a"][-1]


async def test_stop_ends_the_watch_and_start_loads_again(gated: GatedStore, mirror: EtcdMirror) -> None:
    await mirror.start()
    await mirror.stop()
    assert not mirror.running
    await gated.put_status(control_pb2.SidecarStatus(node=control_pb2.Node(id="late")))
    await mirror.start()  # a fresh load: what happened while stopped is there
    assert set(mirror.state.sidecars) == {"late"} and mirror.running
    await wipe(gated)
    await until(lambda: not mirror.state.sidecars)
    assert sidecar_key(gated.prefix, "late").endswith("/sidecars/late")
