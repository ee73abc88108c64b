"""Control's CA in every namespace (Istio's istio-ca-root-cert): the ConfigMap meshgate-ca-root, against
the in-test API server. New namespaces get it from the watch, edits and deletions are repaired on the
relist, system and terminating namespaces are left alone, replicas agree, a failing namespace does not
hold up the others."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from kubeapi import JSON, KubeApi, Request
from meshgate.control.ca import generate_ca
from meshgate.control.ca_publisher import CA_CONFIGMAP, CA_KEY, CaPublisher
from meshgate.control.kube import KubeClient, KubeError, KubeOptions

from .test_stream import until


@pytest.fixture
async def kube() -> AsyncIterator[KubeApi]:
    api = KubeApi()
    await api.start()
    yield api
    await api.stop()


@pytest.fixture
async def client(kube: KubeApi) -> AsyncIterator[KubeClient]:
    c = await KubeClient.connect(KubeOptions(api_url=kube.url))
    yield c
    await c.close()


def namespace(kube: KubeApi, name: str, **extra: Any) -> None:
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}, **extra})


def ca_of(kube: KubeApi, ns: str) -> str | None:
    cm = kube.get("ConfigMap", ns, CA_CONFIGMAP)
    return None if cm is None else str((cm.get("data") or {}).get(CA_KEY))


def writes(kube: KubeApi) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in kube.requests if r.method in ("POST", "PUT", "PATCH", "DELETE")]


CA = generate_ca()[0]


async def test_every_namespace_gets_the_ca_and_keeps_it(kube: KubeApi, client: KubeClient) -> None:
    for name in ("default", "shop", "kube-system", "kube-public", "kube-node-lease"):
        namespace(kube, name)
    namespace(kube, "leaving", status={"phase": "Terminating"})
    pub = CaPublisher(client, CA, resync_s=60)
    pub.start()
    try:
        await until(lambda: ca_of(kube, "default") and ca_of(kube, "shop"))
        assert ca_of(kube, "shop") == CA.decode()
        cm = kube.get("ConfigMap", "shop", CA_CONFIGMAP)
        assert (
            cm is not None and cm["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "meshgate-control"
        )
        for skipped in ("kube-system", "kube-public", "kube-node-lease", "leaving"):
            assert kube.get("ConfigMap", skipped, CA_CONFIGMAP) is None, skipped
        # a new namespace gets it from the watch (the next relist is a minute away)
        namespace(kube, "late")
        await until(lambda: ca_of(kube, "late"), timeout=2)
    finally:
        await pub.stop()
    # while running: an edit is put back (a user's own labels kept), a deletion recreated, on the relist
    pub = CaPublisher(client, CA, resync_s=1)
    pub.start()
    try:
        await until(lambda: pub.syncs >= 1)
        edited = kube.get("ConfigMap", "shop", CA_CONFIGMAP)
        assert edited is not None
        edited["data"] = {CA_KEY: "not a CA"}
        edited["metadata"]["labels"]["team"] = "shop"
        async with (
            aiohttp.ClientSession() as session,
            session.put(f"{kube.url}/api/v1/namespaces/shop/configmaps/{CA_CONFIGMAP}", json=edited) as resp,
        ):
            assert resp.status == 200
        kube.delete("ConfigMap", "default", CA_CONFIGMAP)
        await until(lambda: ca_of(kube, "shop") == CA.decode() and ca_of(kube, "default"), timeout=5)
        repaired = kube.get("ConfigMap", "shop", CA_CONFIGMAP)
        assert repaired is not None and repaired["metadata"]["labels"]["team"] == "shop"
        namespace(kube, "later")  # and the watch after a relist still works
        await until(lambda: ca_of(kube, "later"), timeout=3)
    finally:
        await pub.stop()


async def test_two_replicas_agree_and_a_settled_cluster_sees_no_writes(
    kube: KubeApi, client: KubeClient
) -> None:
    for name in ("a", "b", "c"):
        namespace(kube, name)
    one, two = CaPublisher(client, CA), CaPublisher(client, CA)
    await asyncio.gather(one.sync(), two.sync())  # racing creates: the loser reads the winner's
    assert [ca_of(kube, n) for n in "abc"] == [CA.decode()] * 3
    posts = {p for m, p in writes(kube) if m == "POST"}
    assert posts == {f"/api/v1/namespaces/{n}/configmaps" for n in "abc"}
    before = writes(kube)
    await one.sync()
    await two.sync()
    assert writes(kube) == before  # compare, then write: nothing to write
    assert not [m for m, _ in before if m != "POST"]  # and no replica overwrote the other


async def test_one_namespace_refusing_does_not_hold_up_the_others(kube: KubeApi, client: KubeClient) -> None:
    for name in ("a", "bad", "c"):
        namespace(kube, name)

    async def refuse(r: Request) -> None:
        if r.method == "POST" and r.path.startswith("/api/v1/namespaces/bad/"):
            raise web.HTTPForbidden(text='{"kind":"Status","code":403,"message":"forbidden"}')

    kube.on_request.append(refuse)
    pub = CaPublisher(client, CA)
    await pub.sync()
    assert ca_of(kube, "a") and ca_of(kube, "c") and ca_of(kube, "bad") is None
    assert pub.failures["bad"] == 1
    kube.on_request.remove(refuse)
    await pub.sync()  # the next relist tries again
    assert ca_of(kube, "bad") == CA.decode() and "bad" not in pub.failures


async def test_a_single_namespace_control_publishes_there_only(kube: KubeApi, client: KubeClient) -> None:
    for name in ("shop", "other"):
        namespace(kube, name)
    pub = CaPublisher(client, CA, namespace="shop")
    await pub.sync()
    assert ca_of(kube, "shop") == CA.decode() and ca_of(kube, "other") is None
    assert not [r for r in kube.requests if r.path == "/api/v1/namespaces"]  # no namespace list needed


async def test_configmap_calls_answer_as_the_api_server_does(kube: KubeApi, client: KubeClient) -> None:
    assert await client.get_configmap("shop", "x") is None
    body: JSON = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"k": "v"}}
    created = await client.create_configmap("shop", body)
    with pytest.raises(KubeError) as exists:
        await client.create_configmap("shop", body)
    assert exists.value.status == 409
    stale = {**created, "data": {"k": "w"}}
    await client.replace_configmap("shop", "x", stale)
    with pytest.raises(KubeError) as conflict:
        await client.replace_configmap("shop", "x", stale)  # its resourceVersion moved on
    assert conflict.value.status == 409
    namespace(kube, "shop")
    items, rv = await client.list_namespaces()
    assert [i["metadata"]["name"] for i in items] == ["shop"] and rv
