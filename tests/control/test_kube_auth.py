"""Control in Kubernetes mode answers to the API server's verdicts, end to end against the in-test API
server (TokenReview and SubjectAccessReview in their real wire format): a sidecar's projected
ServiceAccount token gets a certificate for its pod's namespace, account and labels, whatever it
claims, and its stream gets that namespace's config only; a CLI user's bearer token is authorized per
call by Kubernetes RBAC. The CA the sidecar trusts is the one control published into its namespace."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from kubeapi import JSON, KubeApi
from meshgate.control.ca import NodeIdentity
from meshgate.control.controller import ControllerOptions
from meshgate.control.etcd_local import LocalEtcd
from meshgate.control.inject import CA_CONFIGMAP
from meshgate.control.kube import KubeClient, KubeOptions
from meshgate.control.server import ControlServer, start_control
from meshgate.sidecar.config_client import STREAM_CONFIG
from meshgate.sidecar.credentials import ClientCredentials
from meshgate.sidecar.errors import GrpcCode
from meshgate.sidecar.grpc_client import Channel, RpcError
from meshgate.sidecar.identity import SidecarIdentity
from meshgate.v1 import control_pb2, control_pb2_grpc

from .conftest import PETS, SHOP, docs, dump, wipe
from .test_stream import until


@dataclass
class Cluster:
    kube: KubeApi
    ctl: ControlServer

    def ca(self, namespace: str) -> bytes:
        """What an injected pod of `namespace` mounts as control's CA (the published ConfigMap)."""
        cm = self.kube.get("ConfigMap", namespace, CA_CONFIGMAP)
        assert cm is not None, f"no {CA_CONFIGMAP} in {namespace}"
        return str(cm["data"]["ca.crt"]).encode()

    def sidecar(self, token: str, namespace: str = "shop") -> SidecarIdentity:
        return SidecarIdentity(
            f"127.0.0.1:{self.ctl.port}",
            self.ca(namespace),
            token=token,
            token_address=f"127.0.0.1:{self.ctl.token_port}",
        )

    def cli(self, token: str) -> control_pb2_grpc.ControlServiceStub:
        creds = ClientCredentials(self.ca("default"), token=token)
        channel = grpc.aio.secure_channel(f"127.0.0.1:{self.ctl.token_port}", creds.channel())
        return control_pb2_grpc.ControlServiceStub(channel)


@pytest.fixture
async def cluster(etcd: LocalEtcd) -> AsyncIterator[Cluster]:
    kube = KubeApi()
    await kube.start()
    for ns in ("default", "shop", "meshgate-system"):
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    pod: JSON = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "pets-1", "namespace": "shop", "labels": {"app": "pets"}},
        "spec": {"serviceAccountName": "pets", "containers": [{"name": "app", "image": "pets:1"}]},
    }
    kube.create(pod)
    client = await KubeClient.connect(KubeOptions(api_url=kube.url))
    opts = ControllerOptions(kube=KubeOptions(api_url=kube.url), lease_duration_s=2.0, renew_s=0.2)
    ctl = await start_control(
        etcd.endpoint,
        port=0,
        prefix=f"/ka-{uuid.uuid4().hex[:8]}/",
        control_id="c1",
        kubernetes=opts,
        kube_auth=client,
    )
    try:
        await ctl.store.apply(docs(PETS))  # default/pets, also for app=pets
        await ctl.store.apply(docs(SHOP))
        await ctl.store.deploy("default", "pets", "prod")
        await ctl.store.deploy("shop", "shop-pets", "prod")
        await until(lambda: all(kube.get("ConfigMap", ns, CA_CONFIGMAP) for ns in ("default", "shop")))
        yield Cluster(kube, ctl)
    finally:
        await wipe(ctl.store)
        await ctl.stop(0)
        await client.close()
        await kube.stop()


async def first_snapshot(ident: SidecarIdentity, node: control_pb2.Node) -> control_pb2.Snapshot:
    async def hello() -> AsyncIterator[control_pb2.StreamRequest]:
        yield control_pb2.StreamRequest(node=node)

    async with Channel(ident.control_address, ident.tls_context()) as ch:  # what the sidecar uses
        call = await ch.start(STREAM_CONFIG, deadline_s=5)
        call.send(control_pb2.StreamRequest(node=node).SerializeToString())
        first = await call.recv()
        call.cancel()
    if first is None:
        raise AssertionError("the stream ended without a snapshot")
    return control_pb2.Snapshot.FromString(first)


async def test_a_sidecar_is_the_pod_its_service_account_token_names(cluster: Cluster) -> None:
    kube, ctl = cluster.kube, cluster.ctl
    # the published CA is control's own: a pod trusting it reaches control
    assert cluster.ca("shop") == ctl.authority.ca_pem
    ident = cluster.sidecar(kube.service_account_token("shop", "pets", "pets-1"))
    await ident.obtain(control_pb2.Node(id="pets-1", namespace="default", labels={"app": "admin"}))
    assert ident.identity == "spiffe://cluster.local/ns/shop/sa/pets"
    principal = ctl.authority.principal(ident.cert_pem)
    assert principal is not None and principal.node == NodeIdentity(
        "pets-1.shop", "shop", "pets", {"app": "pets"}
    )
    # control asked the API server in the real wire format, for the audience the injector projects
    [review] = kube.reviews_of("TokenReview")
    assert review["apiVersion"] == "authentication.k8s.io/v1" and review["spec"]["audiences"] == ["meshgate"]
    assert review["status"]["authenticated"] is True
    assert review["status"]["user"]["username"] == "system:serviceaccount:shop:pets"
    assert any(r.path == "/api/v1/namespaces/shop/pods/pets-1" for r in kube.requests)  # the labels
    # the stream is shop's, app=pets: default's pets Api (selector app=pets too) is not in it
    snap = await first_snapshot(ident, control_pb2.Node(id="pets-1.shop"))
    assert {(b.api.metadata.namespace, b.api.metadata.name) for b in snap.stages} == {("shop", "shop-pets")}
    assert snap.node_id == "pets-1.shop"
    with pytest.raises(RpcError) as forged:  # claiming default on the stream: refused
        await first_snapshot(ident, control_pb2.Node(id="pets-1.shop", namespace="default"))
    assert forged.value.code == GrpcCode.PERMISSION_DENIED

    # tokens the API server does not vouch for, for this: no certificate
    api_audience = kube.service_account_token(
        "shop", "pets", "pets-1", audiences=("https://kubernetes.default.svc",)
    )
    kube.delete("Pod", "shop", "pets-1")
    gone_pod = kube.add_token({"username": "x"}, ("meshgate",), pod=("shop", "pets-1"))
    user = kube.add_token({"username": "jane", "groups": ["system:authenticated"]}, ("meshgate",))
    bootstrap = ctl.store.keys.bootstrap_token  # vouches for claims only where no API server can be asked
    for token in ("made-up", api_audience, gone_pod, user, bootstrap):
        with pytest.raises(RpcError) as refused:
            await cluster.sidecar(token).obtain(control_pb2.Node(id="pets-1", namespace="shop"))
        assert refused.value.code == GrpcCode.UNAUTHENTICATED, token
    verdicts = [r["status"].get("authenticated", False) for r in kube.reviews_of("TokenReview")[1:]]
    # the user is not a pod's ServiceAccount; the bootstrap token is reviewed too, and is nobody's
    assert verdicts == [False, False, False, True, False]


async def test_a_cli_user_may_do_what_kubernetes_rbac_allows(cluster: Cluster) -> None:
    kube, ctl = cluster.kube, cluster.ctl
    jane = kube.add_token({"username": "jane", "uid": "u-1", "groups": ["devs", "system:authenticated"]})
    kube.grant("devs", "get list", "stages apis", namespace="default")
    stub = cluster.cli(jane)
    got = await stub.Get(control_pb2.GetRequest(kind="Stage", namespace="default", name="prod"))
    assert [r.stage.metadata.name for r in got.resources] == ["prod"]
    before = await dump(ctl.store)
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await stub.Deploy(control_pb2.DeployRequest(namespace="default", api="pets", stage="prod"))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "jane may not update stages in default" in (denied.value.details() or "")
    assert await dump(ctl.store) == before  # nothing changed in etcd
    # each decision was the API server's, asked in the real wire format
    get, deploy = kube.reviews_of("SubjectAccessReview")
    assert get["apiVersion"] == "authorization.k8s.io/v1"
    assert (get["spec"]["user"], get["spec"]["groups"]) == ("jane", ["devs", "system:authenticated"])
    assert get["spec"]["resourceAttributes"] == {
        "group": "meshgate.io",
        "resource": "stages",
        "verb": "get",
        "namespace": "default",
        "name": "prod",
    }
    assert get["status"]["allowed"] is True
    assert deploy["spec"]["resourceAttributes"]["verb"] == "update" and deploy["status"]["allowed"] is False
    # the CLI's tokens are checked for the API server's own audience
    assert [r["spec"]["audiences"] for r in kube.reviews_of("TokenReview")] == [[], []]
    # given update, the same user deploys
    kube.grant("jane", "update", "stages", namespace="default")
    assert (
        await stub.Deploy(control_pb2.DeployRequest(namespace="default", api="pets", stage="prod"))
    ).deployment

    # tokens the API server does not vouch for: UNAUTHENTICATED, no SubjectAccessReview asked
    asked = len(kube.reviews_of("SubjectAccessReview"))
    sidecar_token = kube.service_account_token("shop", "pets", "pets-1")  # meant for meshgate, not the API
    for token in ("made-up", sidecar_token):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await cluster.cli(token).Get(control_pb2.GetRequest(kind="Stage", namespace="default"))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert len(kube.reviews_of("SubjectAccessReview")) == asked
    assert await dump(ctl.store) != before  # (only jane's allowed deploy changed it)
