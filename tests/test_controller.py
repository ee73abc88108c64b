"""The Kubernetes controller against the in-test API server (kubeapi.py), real etcd, a real control
service and a real sidecar process: what kubectl sends (recorded payloads in fixtures/kubectl/, or
kubectl itself when installed) ends up served by the sidecar, with Accepted/Applied conditions."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import hmac
import http.client
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aetcd
import aiohttp
import pytest
from e2e.harness import Mesh, Sidecar
from kubeapi import JSON, KubeApi
from meshgate.control.controller import MANAGED_BY, Controller, ControllerOptions
from meshgate.control.etcd_local import LocalEtcd
from meshgate.control.keystore import load_dir
from meshgate.control.kube import KubeOptions
from meshgate.control.resources import load_documents
from meshgate.control.server import ControlServer, start_control
from meshgate.control.snapshots import build_snapshot
from meshgate.control.store import Store
from meshgate.sidecar.credentials import default_state_dir
from meshgate.v1 import control_pb2

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "kubectl"
KUBECTL_UA = "kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07"
CIDRS = ("10.0.0.0/8",)
LEGACY = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {name: legacy, namespace: shop}
spec:
  routes: [{method: GET, path: /old, integration: {type: mock}}]
"""


def options(kube: KubeApi, **kw: Any) -> ControllerOptions:
    base: dict[str, Any] = {
        "kube": KubeOptions(api_url=kube.url),
        "lease_namespace": "meshgate-system",
        "lease_duration_s": 2.0,
        "renew_s": 0.2,
        "renew_deadline_s": 1.2,
        "debounce_s": 0.01,
        "max_delay_s": 0.05,
    }
    base.update(kw)
    return ControllerOptions(**base)


async def replay(kube: KubeApi, name: str) -> None:
    """Send the write requests kubectl made for fixtures/kubectl/src/NAME.yaml."""
    recorded = json.loads((FIXTURES / f"{name}.json").read_text())
    async with aiohttp.ClientSession() as session:
        for r in recorded["requests"]:
            async with session.request(
                r["method"],
                kube.url + r["path"],
                params=r["query"],
                data=json.dumps(r["body"]),
                headers={"Content-Type": r["contentType"], "User-Agent": KUBECTL_UA},
            ) as resp:
                assert resp.status < 300, await resp.text()


async def delete(kube: KubeApi, plural: str, name: str, group: str = "meshgate.io/v1") -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.delete(
            f"{kube.url}/apis/{group}/namespaces/shop/{plural}/{name}", headers={"User-Agent": KUBECTL_UA}
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()


def condition(obj: JSON | None, type_: str) -> JSON:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return {}


def events(kube: KubeApi, kind: str, name: str) -> list[tuple[str, str, str]]:
    """(type, reason, message) of the Events recorded about shop/NAME, oldest first."""
    found = [
        o
        for (k, ns, _), o in kube.objects.items()
        if k.kind == "Event"
        and ns == "shop"
        and o["involvedObject"]["kind"] == kind
        and o["involvedObject"]["name"] == name
    ]
    found.sort(key=lambda o: int(o["metadata"]["resourceVersion"]))
    return [(o["type"], o["reason"], o["message"]) for o in found]


def lease_writes(kube: KubeApi, who: str) -> list[JSON]:
    """The Lease specs `who` wrote that the API server took, in the order it took them."""
    return [
        r.body["spec"]
        for r in kube.writes_by(who)
        if "/leases" in r.path and r.method in ("POST", "PUT") and r.status in (200, 201)
    ]


def micro(stamp: str) -> float:
    """A Lease MicroTime (RFC 3339, microseconds, Z) as seconds since the epoch."""
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def held_by(kube: KubeApi, identity: str) -> JSON | None:
    lease = kube.get("Lease", "meshgate-system", "meshgate-controller")
    return lease if lease is not None and lease["spec"]["holderIdentity"] == identity else None


async def wait_for(what: str, check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def wait_condition(
    kube: KubeApi, kind: str, name: str, type_: str, status: str, generation: int = 1, **match: str
) -> JSON:
    def check() -> JSON | None:
        c = condition(kube.get(kind, "shop", name), type_)
        ok = c.get("status") == status and c.get("observedGeneration") == generation
        return c if ok and all(m in c.get(k, "") for k, m in match.items()) else None

    try:
        result: JSON = await wait_for(f"{kind} {name} {type_}={status}", check)
    except AssertionError:
        raise AssertionError(f"{kind} {name}: {kube.get(kind, 'shop', name)}") from None
    return result


async def etcd_values(store: Store) -> list[bytes]:
    """Every value under the store's prefix, read with a client of its own (the Store exposes none)."""
    host, _, port = store.endpoint.rpartition(":")
    async with aetcd.Client(host=host, port=int(port)) as client:
        return [bytes(kv.value) for kv in await client.get_prefix(store.prefix.encode())]


async def wipe(store: Store) -> None:
    host, _, port = store.endpoint.rpartition(":")
    async with aetcd.Client(host=host, port=int(port)) as client:
        await client.delete_prefix(store.prefix.encode())


def http_get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


@pytest.fixture
async def kube() -> AsyncIterator[KubeApi]:
    api = KubeApi()
    await api.start()
    yield api
    await api.stop()


@dataclass
class Env:
    kube: KubeApi
    control: ControlServer
    sidecar: Sidecar

    @property
    def store(self) -> Store:
        return self.control.store

    @property
    def controller(self) -> Controller:
        assert self.control.controller is not None
        return self.control.controller

    async def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        return await asyncio.to_thread(http_get, self.sidecar.port, path, headers)

    async def serves(self, path: str, status: int, body: str = "") -> None:
        async def check() -> bool:
            got = await self.get(path)
            return got[0] == status and body in got[1]

        deadline = time.monotonic() + 10
        while not await check():
            if time.monotonic() > deadline:
                raise AssertionError(f"{path}: {await self.get(path)}, wanted {status} {body}")
            await asyncio.sleep(0.03)


@pytest.fixture
async def env(etcd: LocalEtcd, kube: KubeApi, tmp_path: Path) -> AsyncIterator[Env]:
    """Control (with the controller) in this loop, one sidecar process (app=pets) streaming from it."""
    prefix = f"/k8s-{uuid.uuid4().hex[:8]}/"
    control = await start_control(
        etcd.endpoint,
        port=0,
        prefix=prefix,
        control_id="ctl-a",
        cluster_cidrs=CIDRS,
        kubernetes=options(kube),
        keys=load_dir(default_state_dir()),  # where the sidecar process finds the CA and token
    )
    mesh = Mesh(
        etcd.endpoint, tmp_path, prefix=prefix, control_port=control.port, token_port=control.token_port
    )
    try:
        sidecar = mesh.start_sidecar("sc-1", "app=pets", wait_ready=False, namespace="shop")
        await asyncio.to_thread(sidecar.wait_ready)
        yield Env(kube, control, sidecar)
    finally:
        await asyncio.to_thread(mesh.stop_all)
        await wipe(control.store)
        await control.stop()


async def test_kubectl_apply_is_served_and_applied_then_modified_then_deleted(env: Env) -> None:
    # the config stream and the controller follow one etcd mirror: one load, one watch
    assert env.control.streamer.mirror is env.controller.mirror is env.control.mirror
    await replay(env.kube, "pets")
    stage_applied = await wait_condition(
        env.kube, "Stage", "prod", "Applied", "True", message="1/1 sidecars applied deployment 1"
    )
    assert stage_applied["reason"] == "Applied"
    assert (await wait_condition(env.kube, "Stage", "prod", "Accepted", "True"))["reason"] == "Stored"
    api_applied = await wait_condition(env.kube, "Api", "pets", "Applied", "True")
    assert api_applied["message"] == "1/1 sidecars applied generation 1"
    status = env.kube.get("Stage", "shop", "prod")["status"]  # type: ignore[index]
    assert (status["boundSidecars"], status["ackedSidecars"], status["observedGeneration"]) == (1, 1, 1)
    assert status["deployment"] == 1  # the Deployment printer column
    # etcd holds what the CLI would have written, marked as the controller's, without kubectl's annotation
    [api] = await env.store.get("Api", "shop", "pets")
    assert api.api.metadata.annotations[MANAGED_BY] == "kubernetes"
    assert "kubectl.kubernetes.io/last-applied-configuration" not in api.api.metadata.annotations
    assert dict(api.api.metadata.labels) == {"team": "pets"}
    [stage] = await env.store.get("Stage", "shop", "prod")
    assert stage.stage.spec.deployment == 1 and dict(stage.stage.spec.variables) == {"color": "blue"}
    await env.serves("/prod/pets", 200, '{"version": 1}')

    await replay(env.kube, "pets-v2")  # kubectl's merge patch: a new response and a new route
    await wait_condition(env.kube, "Api", "pets", "Accepted", "True", generation=2)
    await wait_condition(
        env.kube, "Stage", "prod", "Applied", "True", message="1/1 sidecars applied deployment 2"
    )
    await env.serves("/prod/pets", 200, '{"version": 2}')
    await env.serves("/prod/pets/7", 200, '{"pet": "one"}')
    deployments = await env.store.get("Deployment", "shop", api="pets")
    assert [d.deployment.id for d in deployments] == [1, 2]  # one deployment per Api change, no more

    # kubectl delete -f pets.yaml deletes in file order: the Api (which still has a stage) first
    await delete(env.kube, "apis", "pets")
    await delete(env.kube, "stages", "prod")
    await wait_for("etcd empty", lambda: not env.controller.state.apis and not env.controller.state.stages)
    assert await env.store.get("Api", "shop") == [] and await env.store.get("Stage", "shop") == []
    await env.serves("/prod/pets", 404)
    assert env.control.mirror.watches == 1 and env.control.mirror.reloads == 0


async def test_invalid_api_is_refused_with_the_field_path_and_nothing_is_stored(env: Env) -> None:
    await replay(env.kube, "broken")
    accepted = await wait_condition(env.kube, "Api", "broken", "Accepted", "False")
    assert accepted["reason"] == "Invalid"
    assert accepted["message"] == "spec.routes[0].path: must start with \"/\", got 'pets'"
    applied = condition(env.kube.get("Api", "shop", "broken"), "Applied")
    assert (applied["status"], applied["reason"]) == ("False", "NotAccepted")
    assert await env.store.get("Api", "shop") == []
    refusal = ("Warning", "Invalid", accepted["message"])
    await wait_for("a Warning Event", lambda: refusal in events(env.kube, "Api", "broken"))
    obj = env.kube.get("Api", "shop", "broken")
    assert obj is not None
    (event,) = [o for (k, _, _), o in env.kube.objects.items() if k.kind == "Event"]
    assert event["involvedObject"] == {
        "apiVersion": "meshgate.io/v1",
        "kind": "Api",
        "namespace": "shop",
        "name": "broken",
        "uid": obj["metadata"]["uid"],
        "resourceVersion": event["involvedObject"]["resourceVersion"],
    }
    assert event["metadata"]["name"].startswith("broken.") and event["count"] == 1
    # fixed with a merge patch (kubectl edit): accepted and stored
    async with (
        aiohttp.ClientSession() as session,
        session.patch(
            f"{env.kube.url}/apis/meshgate.io/v1/namespaces/shop/apis/broken",
            data=json.dumps(
                {"spec": {"routes": [{"method": "GET", "path": "/pets", "integration": {"type": "mock"}}]}}
            ),
            headers={"Content-Type": "application/merge-patch+json"},
        ) as resp,
    ):
        assert resp.status == 200
    await wait_condition(env.kube, "Api", "broken", "Accepted", "True", generation=2)
    assert [r.api.metadata.name for r in await env.store.get("Api", "shop")] == ["broken"]
    await wait_for("a Normal Event", lambda: len(events(env.kube, "Api", "broken")) == 2)
    assert events(env.kube, "Api", "broken")[1][:2] == ("Normal", "Stored")


@pytest.mark.parametrize("gone", ["event", "status"])
async def test_watch_410_gone_relists_and_catches_up(env: Env, gone: str) -> None:
    # the watch cache's ERROR event in a 200 stream, or 410 as the HTTP answer to the watch request
    env.kube.gone_as_status = gone == "status"
    await replay(env.kube, "pets")
    await wait_condition(env.kube, "Stage", "prod", "Applied", "True")
    await env.serves("/prod/pets", 200)
    await env.store.apply(load_documents(LEGACY))  # made with `meshgate apply`: no object, never collected
    # the watches end and cannot come back until the changes below are compacted away
    env.kube.watch_gate.clear()
    refused = len(env.kube.requests)  # the watches from here on are the ones the compaction refuses
    env.kube.close_watches()
    await wait_for("watches closed", lambda: not env.kube.watchers)
    env.kube.delete("Stage", "shop", "prod")
    env.kube.delete("Api", "shop", "pets")
    cats = {
        "selector": {"matchLabels": {"app": "pets"}},
        "routes": [
            {"method": "GET", "path": "/cats", "integration": {"type": "mock", "mock": {"body": "meow"}}}
        ],
    }
    env.kube.create(
        {
            "apiVersion": "meshgate.io/v1",
            "kind": "Api",
            "metadata": {"name": "cats", "namespace": "shop"},
            "spec": cats,
        }
    )
    env.kube.create(
        {
            "apiVersion": "meshgate.io/v1",
            "kind": "Stage",
            "metadata": {"name": "dev", "namespace": "shop"},
            "spec": {"api": "cats"},
        }
    )
    env.kube.compact()
    relists = dict(env.controller.relists)
    env.kube.watch_gate.set()
    await wait_condition(env.kube, "Stage", "dev", "Applied", "True")
    # every kind got 410 Gone and listed again
    await wait_for("relists", lambda: all(env.controller.relists[k] > relists[k] for k in relists))
    watches = [r for r in env.kube.requests[refused:] if r.query.get("watch") and r.status]
    assert {r.status for r in watches[:4]} == ({410} if gone == "status" else {200}), watches
    await env.serves("/dev/cats", 200, "meow")
    await env.serves("/prod/pets", 404)
    # the relists run per kind: an Api listed before its Stage is deleted on the retry after the Stage
    await wait_for("Api pets deleted", lambda: ("shop", "pets") not in env.controller.state.apis)
    assert [r.api.metadata.name for r in await env.store.get("Api", "shop")] == ["cats", "legacy"]
    assert [r.stage.metadata.name for r in await env.store.get("Stage", "shop")] == ["dev"]
    # an object naming a resource the CLI made is refused, and the resource is left alone
    env.kube.create(
        {
            "apiVersion": "meshgate.io/v1",
            "kind": "Api",
            "metadata": {"name": "legacy", "namespace": "shop"},
            "spec": {"routes": []},
        }
    )
    refused = await wait_condition(env.kube, "Api", "legacy", "Accepted", "False", reason="NotManaged")
    assert "made with the meshgate CLI" in refused["message"]
    env.kube.delete("Api", "shop", "legacy")
    # one worker takes the queue in order, and the watch delivers in order: once an Api created after
    # the delete is stored, the delete has been reconciled
    env.kube.create(
        {
            "apiVersion": "meshgate.io/v1",
            "kind": "Api",
            "metadata": {"name": "later", "namespace": "shop"},
            "spec": {"routes": [{"method": "GET", "path": "/later", "integration": {"type": "mock"}}]},
        }
    )
    await wait_condition(env.kube, "Api", "later", "Accepted", "True")
    assert [r.api.metadata.name for r in await env.store.get("Api", "shop")] == ["cats", "later", "legacy"]
    [legacy] = await env.store.get("Api", "shop", "legacy")
    assert len(legacy.api.spec.routes) == 1


async def merge_patch(kube: KubeApi, plural: str, name: str, patch: JSON) -> JSON:
    async with (
        aiohttp.ClientSession() as session,
        session.patch(
            f"{kube.url}/apis/meshgate.io/v1/namespaces/shop/{plural}/{name}",
            data=json.dumps(patch),
            headers={"Content-Type": "application/merge-patch+json", "User-Agent": KUBECTL_UA},
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        body: JSON = await resp.json()
        return body


async def test_an_object_being_deleted_is_removed_from_etcd_before_its_finalizers_are_done(env: Env) -> None:
    """Another controller's finalizer holds the Stage (and the Api) in the API server after `kubectl
    delete`: deletionTimestamp is set, and that alone takes them out of etcd and off the sidecar.
    When the finalizers go, so do the objects; a Stage made again under the same name is served."""
    await replay(env.kube, "pets")
    await wait_condition(env.kube, "Stage", "prod", "Applied", "True")
    await env.serves("/prod/pets", 200, '{"version": 1}')
    for plural, name in (("stages", "prod"), ("apis", "pets")):
        await merge_patch(env.kube, plural, name, {"metadata": {"finalizers": ["example.com/hold"]}})
    await delete(env.kube, "stages", "prod")
    await delete(env.kube, "apis", "pets")
    deleted = len(env.kube.requests)
    held = env.kube.get("Stage", "shop", "prod")
    assert held is not None and held["metadata"]["deletionTimestamp"]
    await wait_for("etcd empty", lambda: not env.controller.state.apis and not env.controller.state.stages)
    assert await env.store.get("Api", "shop") == [] and await env.store.get("Stage", "shop") == []
    await env.serves("/prod/pets", 404)
    assert env.kube.get("Api", "shop", "pets") is not None  # still there: only its finalizer may end it
    # no status on an object being deleted (its generation moved on: a reconcile would have written one)
    during = [r.path for r in env.kube.requests[deleted:] if "ctl-a" in r.user_agent and r.method != "GET"]
    assert not [p for p in during if "/stages/prod" in p or "/apis/pets" in p], during
    for plural, name in (("stages", "prod"), ("apis", "pets")):
        await merge_patch(env.kube, plural, name, {"metadata": {"finalizers": None}})
    assert env.kube.get("Stage", "shop", "prod") is None and env.kube.get("Api", "shop", "pets") is None
    await replay(env.kube, "pets")  # made again: served again, nothing left over from the deletion
    await wait_condition(env.kube, "Stage", "prod", "Applied", "True")
    await env.serves("/prod/pets", 200, '{"version": 1}')


async def test_the_watch_goes_on_from_a_bookmark(etcd: LocalEtcd, kube: KubeApi) -> None:
    """A bookmark moves the controller's resourceVersion on although none of its objects changed: a
    watch that ends after it starts again from the bookmark, so a compaction up to it costs no relist
    (without bookmarks it would resume from the older version, get 410 and list again)."""
    store = Store(etcd.endpoint, f"/k8s-{uuid.uuid4().hex[:8]}/")
    await store.open()
    ctl = Controller(store, options(kube), identity="ctl-a", cluster_cidrs=CIDRS)
    await ctl.start()
    try:
        await wait_for("synced", lambda: all(e.is_set() for e in ctl.synced.values()))
        await wait_for("four watches", lambda: len(kube.watchers) == 4)
        kube.create(
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "other", "namespace": "shop"}}
        )
        relists = dict(ctl.relists)
        start = len(kube.requests)
        kube.bookmark()  # every watch gets the newest resourceVersion...
        mark = str(kube.rv)
        kube.compact()  # ...which is all the history there is now
        kube.close_watches()
        again = await wait_for(
            "four new watches",
            lambda: (w := [r for r in kube.requests[start:] if r.query.get("watch")])[3:] and w,
        )
        assert [r.query["resourceVersion"] for r in again[:4]] == [mark] * 4, [r.query for r in again]
        assert all(r.query.get("allowWatchBookmarks") in ("true", "True") for r in again)
        await replay(kube, "pets")  # the new watches deliver
        await wait_condition(kube, "Api", "pets", "Accepted", "True")
        assert ctl.relists == relists
    finally:
        await ctl.stop()
        await wipe(store)
        await store.close()


async def test_api_key_from_a_secret_opens_a_keyed_route(env: Env) -> None:
    await replay(env.kube, "keyed")
    await wait_condition(env.kube, "ApiKey", "partner", "Applied", "True", message="1/1 sidecars applied")
    await wait_condition(env.kube, "UsagePlan", "partners", "Applied", "True")
    await wait_condition(env.kube, "Stage", "live", "Applied", "True")
    key = "partner-0123456789abcdef0123"
    assert (await env.get("/live/orders"))[0] == 403
    assert await env.get("/live/orders", {"x-api-key": key}) == (200, '"orders"')
    assert (await env.get("/live/orders", {"x-api-key": key[:-1] + "4"}))[0] == 403
    [stored] = await env.store.get("ApiKey", "shop", "partner")
    digest = hashlib.sha256(key.encode()).digest()
    keyed = hmac.new(env.control.store.keys.api_key_hash_key, digest, "sha256").hexdigest()
    assert stored.api_key.spec.value_hmac == keyed and not stored.api_key.spec.value_sha256
    assert not any(key.encode() in v for v in await etcd_values(env.store))  # only the hash reaches etcd


async def test_applied_follows_sidecar_acks_and_reports_nacks(etcd: LocalEtcd, kube: KubeApi) -> None:
    """No real sidecar: its status key is written by hand, as the config stream would."""
    store = Store(etcd.endpoint, f"/k8s-{uuid.uuid4().hex[:8]}/")
    await store.open()
    node = control_pb2.Node(id="fake-1", namespace="shop", labels={"app": "pets"})
    await store.put_status(control_pb2.SidecarStatus(node=node))
    ctl = Controller(store, options(kube), identity="ctl-a", cluster_cidrs=CIDRS)
    await ctl.start()
    try:
        await replay(kube, "pets")
        applying = await wait_condition(kube, "Stage", "prod", "Applied", "False", reason="Applying")
        assert applying["message"] == "0/1 sidecars applied deployment 1"
        version = build_snapshot(await store.load_state(), node, CIDRS).version
        nack = control_pb2.SidecarStatus(
            node=node, last_nack_version=version, last_nack_error="route table: boom"
        )
        await store.put_status(nack)
        nacked = await wait_condition(kube, "Stage", "prod", "Applied", "False", reason="Nacked")
        assert nacked["message"] == "0/1 sidecars applied deployment 1; NACK from fake-1: route table: boom"
        written = await store.put_status(control_pb2.SidecarStatus(node=node, acked_version=version))
        applied = await wait_condition(kube, "Stage", "prod", "Applied", "True")
        assert applied["message"] == "1/1 sidecars applied deployment 1"
        assert applied["lastTransitionTime"] >= nacked["lastTransitionTime"]
        # the sidecar goes away: nothing is bound any more
        assert await store.forget_status(node.id, written)
        gone = await wait_condition(kube, "Stage", "prod", "Applied", "False", reason="NoSidecars")
        assert gone["message"].startswith("no connected sidecar is bound")
        # Events for what changed that matters: accepted, the NACK, applied; not Applying or NoSidecars
        assert events(kube, "Stage", "prod") == [
            ("Normal", "Stored", "validated and stored; serving deployment 1 (the Api's current spec)"),
            ("Warning", "Nacked", nacked["message"]),
            ("Normal", "Applied", applied["message"]),
        ]
    finally:
        await ctl.stop()
        await wipe(store)
        await store.close()


@contextlib.asynccontextmanager
async def two_controllers(
    etcd: LocalEtcd, kube: KubeApi
) -> AsyncIterator[tuple[Store, Controller, Controller]]:
    """ctl-a leading, ctl-b following, on one store; both stopped and the store emptied afterwards."""
    store = Store(etcd.endpoint, f"/k8s-{uuid.uuid4().hex[:8]}/")
    await store.open()
    a = Controller(store, options(kube), identity="ctl-a", cluster_cidrs=CIDRS)
    b = Controller(store, options(kube), identity="ctl-b", cluster_cidrs=CIDRS)
    try:
        await a.start()
        await wait_for("ctl-a leads", a.is_leader, 5)
        await b.start()
        yield store, a, b
    finally:
        await b.stop()
        await a.stop()
        await wipe(store)
        await store.close()


async def test_one_leader_writes_and_the_other_takes_over_when_its_lease_expires(
    etcd: LocalEtcd, kube: KubeApi
) -> None:
    async with two_controllers(etcd, kube) as (store, a, b):
        await replay(kube, "pets")
        await wait_condition(kube, "Stage", "prod", "Accepted", "True")
        await wait_for("b synced", lambda: b.cache["Stage"])  # the follower watches too...
        assert not b.is_leader() and b.etcd_writes == b.status_writes == 0  # ...but never writes
        assert kube.writes_by("ctl-b") == [] and kube.writes_by("ctl-a")
        assert a.etcd_writes > 0 and a.status_writes > 0
        lease = kube.get("Lease", "meshgate-system", "meshgate-controller")
        assert lease is not None and lease["spec"]["holderIdentity"] == "ctl-a"

        await a.stop(release=False)  # a crash: the Lease is left to expire
        lease = await wait_for("ctl-b holds the Lease", lambda: held_by(kube, "ctl-b"), 10)
        await wait_for("ctl-b leads", b.is_leader, 5)
        assert lease["spec"]["leaseTransitions"] == 1
        by_a = lease_writes(kube, "ctl-a")
        assert by_a and all(spec["holderIdentity"] == "ctl-a" for spec in by_a)  # crashed: never released
        # b took it only after the 2 s since a's last renewal ran out (both stamps from the Lease writes)
        waited = micro(lease["spec"]["acquireTime"]) - max(micro(spec["renewTime"]) for spec in by_a)
        assert waited >= 2.0, waited

        await replay(kube, "pets-v2")
        await wait_condition(kube, "Api", "pets", "Accepted", "True", generation=2)
        assert b.etcd_writes > 0 and any(r.path.endswith("/status") for r in kube.writes_by("ctl-b"))
        [api] = await store.get("Api", "shop", "pets")
        assert len(api.api.spec.routes) == 2


async def test_a_graceful_stop_hands_the_lease_over_at_once(etcd: LocalEtcd, kube: KubeApi) -> None:
    async with two_controllers(etcd, kube) as (_, a, b):
        await a.stop()  # releases the Lease: empty holder
        lease = await wait_for("ctl-b holds the Lease", lambda: held_by(kube, "ctl-b"), 5)
        await wait_for("ctl-b leads", b.is_leader, 5)
        *renewals, released = lease_writes(kube, "ctl-a")
        assert released["holderIdentity"] == "" and all(s["holderIdentity"] == "ctl-a" for s in renewals)
        # b took it before a's last renewal would have run out: it did not wait for the 2 s lease
        waited = micro(lease["spec"]["acquireTime"]) - micro(renewals[-1]["renewTime"])
        assert 0 < waited < 2.0, waited


async def test_a_leader_that_loses_its_lease_stops_writing_at_once(etcd: LocalEtcd, kube: KubeApi) -> None:
    store = Store(etcd.endpoint, f"/k8s-{uuid.uuid4().hex[:8]}/")
    await store.open()
    a = Controller(store, options(kube), identity="ctl-a", cluster_cidrs=CIDRS)
    await a.start()
    try:
        await wait_for("ctl-a leads", a.is_leader, 5)
        # another candidate's write wins the Lease (it holds it for 2 s and never renews)
        lease = kube.get("Lease", "meshgate-system", "meshgate-controller")
        assert lease is not None
        lease["spec"].update(holderIdentity="intruder", renewTime=lease["spec"]["renewTime"])
        async with (
            aiohttp.ClientSession() as session,
            session.put(
                f"{kube.url}/apis/coordination.k8s.io/v1/namespaces/meshgate-system/leases/meshgate-controller",
                data=json.dumps(lease),
                headers={"Content-Type": "application/json", "User-Agent": "intruder"},
            ) as resp,
        ):
            assert resp.status == 200
        won = next(i for i, r in enumerate(kube.requests) if r.user_agent == "intruder")
        intruder = kube.requests[won].body["spec"]
        await wait_for("ctl-a steps down", lambda: not a.is_leader(), 2)

        def a_lease_requests(start: int, end: int | None = None) -> list[str]:
            return [
                r.method for r in kube.requests[start:end] if "ctl-a" in r.user_agent and "/leases" in r.path
            ]

        # at its next look at the Lease (a GET, no write over the intruder), not at the 1.2 s renew
        # deadline (six looks at 0.2 s)
        assert a_lease_requests(won + 1) in (["GET"], ["GET", "GET"]), a_lease_requests(won + 1)
        await replay(kube, "pets")
        replayed = len(kube.requests)
        # the intruder never renews: after its 2 s, ctl-a takes the Lease back and catches up
        await wait_condition(kube, "Api", "pets", "Accepted", "True")
        retaken = next(
            i
            for i, r in enumerate(kube.requests)
            if i > won and "ctl-a" in r.user_agent and r.method == "PUT" and "/leases/" in r.path
        )
        assert retaken >= replayed, "ctl-a led again before the objects were there: nothing was tested"
        # while it followed, ctl-a wrote nothing to the API server (no status, no Event) ...
        following = kube.requests[won + 1 : retaken]
        assert [r.path for r in following if "ctl-a" in r.user_agent and r.method != "GET"] == []
        spec = kube.requests[retaken].body["spec"]
        assert (
            spec["holderIdentity"] == "ctl-a" and spec["leaseTransitions"] == intruder["leaseTransitions"] + 1
        )
        assert micro(spec["acquireTime"]) - micro(intruder["renewTime"]) >= 2.0  # the intruder's 2 s ran out
        # ... and nothing to etcd: what it stored, it stored after it led again
        [api] = await store.get("Api", "shop", "pets")
        assert api.api.metadata.update_time_unix_nano / 1e9 >= micro(spec["acquireTime"])
    finally:
        await a.stop()
        await wipe(store)
        await store.close()


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (Debian's kubernetes-client) is not installed"
)
async def test_real_kubectl_apply_and_wait_for_applied(env: Env) -> None:
    home = tempfile.mkdtemp(prefix="kubectl-home-")

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        run_env = {"KUBECONFIG": os.devnull, "HOME": home, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        return subprocess.run(
            ["kubectl", "--server", env.kube.url, *args],
            capture_output=True,
            text=True,
            env=run_env,
            timeout=60,
        )

    # kubectl validates on the server (fieldValidation=Strict): the CRD schema refuses a field it does
    # not declare, naming it, and nothing is stored
    typo = Path(home) / "typo.yaml"
    typo.write_text((FIXTURES / "src" / "pets.yaml").read_text().replace("variables:", "varaibles:"))
    refused = await asyncio.to_thread(kubectl, "apply", "-f", str(typo))
    assert (
        refused.returncode == 1 and 'strict decoding error: unknown field "spec.varaibles"' in refused.stderr
    )
    assert env.kube.get("Stage", "shop", "prod") is None
    applied = await asyncio.to_thread(kubectl, "apply", "-f", str(FIXTURES / "src" / "pets.yaml"))
    assert applied.returncode == 0, applied.stderr
    assert "stage.meshgate.io/prod created" in applied.stdout
    waited = await asyncio.to_thread(
        kubectl, "wait", "-n", "shop", "--for=condition=Applied", "stage/prod", "api/pets", "--timeout=20s"
    )
    assert waited.returncode == 0, waited.stderr
    assert "stage.meshgate.io/prod condition met" in waited.stdout
    await env.serves("/prod/pets", 200, '{"version": 1}')
    shown = await asyncio.to_thread(
        kubectl, "get", "-n", "shop", "stage", "prod", "-o", "jsonpath={.status.conditions[1].message}"
    )
    assert shown.stdout == "1/1 sidecars applied deployment 1"
    shutil.rmtree(home, ignore_errors=True)


async def test_a_websocket_api_custom_resource_is_accepted_and_served(env: Env) -> None:
    """The README's WebSocket API as a custom resource: it fits the CRD's schema, the controller
    accepts it with the same validation as apply, and the sidecar routes a message by its action."""
    import jsonschema
    import yaml
    from aiohttp import web
    from test_deploy import K8S, _structural
    from websockets.sync.client import connect

    async def integration(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({"route": request.headers["x-meshgate-route-key"], "got": json.loads(body)})

    app = web.Application()
    app.router.add_post("/{name}", integration)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    api, stage = yaml.safe_load_all(f"""
apiVersion: meshgate.io/v1
kind: Api
metadata: {{name: chat, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: pets}}}}
  routes:
    - method: GET
      path: /chat
      integration:
        type: websocket_api
        routeSelectionExpression: $request.body.action
        websocketRoutes:
          $default: {{type: http, uri: "{base}/default"}}
          sendMessage: {{type: http, uri: "{base}/message", timeoutMs: 5000}}
---
{{apiVersion: meshgate.io/v1, kind: Stage, metadata: {{name: live, namespace: shop}}, spec: {{api: chat}}}}
""")
    crds = {d["spec"]["names"]["kind"]: d for d in yaml.safe_load_all((K8S / "crds.yaml").read_text())}
    schema = _structural(crds["Api"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    jsonschema.validate(api, schema)
    routes = schema["properties"]["spec"]["properties"]["routes"]["items"]["properties"]
    assert {"websocketRoutes", "routeSelectionExpression"} <= set(routes["integration"]["properties"])
    try:
        env.kube.create(api)
        env.kube.create(stage)
        accepted = await wait_condition(env.kube, "Api", "chat", "Accepted", "True")
        assert accepted["reason"] == "Stored"
        await wait_condition(env.kube, "Stage", "live", "Applied", "True")
        [stored] = await env.store.get("Api", "shop", "chat")
        integ = stored.api.spec.routes[0].integration
        assert sorted(integ.websocket_routes) == ["$default", "sendMessage"]

        def talk() -> list[str]:
            with connect(f"ws://127.0.0.1:{env.sidecar.port}/live/chat", open_timeout=5) as ws:
                ws.send(json.dumps({"action": "sendMessage", "text": "hi"}))
                first = str(ws.recv(timeout=5))
                ws.send(json.dumps({"action": "nothing"}))
                return [first, str(ws.recv(timeout=5))]

        first, second = await asyncio.to_thread(talk)
        assert json.loads(first) == {"route": "sendMessage", "got": {"action": "sendMessage", "text": "hi"}}
        assert json.loads(second) == {"route": "$default", "got": {"action": "nothing"}}
        # a websocket_api the sidecar could not serve is refused with the field path, as apply does
        bad = copy.deepcopy(api)
        bad["metadata"]["name"] = "chat-bad"
        bad["spec"]["routes"][0]["integration"]["websocketRoutes"]["$default"]["type"] = "mock"
        env.kube.create(bad)
        refused = await wait_condition(env.kube, "Api", "chat-bad", "Accepted", "False")
        assert refused["message"].startswith("spec.routes[0].integration.websocketRoutes.$default.type:")
    finally:
        await runner.cleanup()
