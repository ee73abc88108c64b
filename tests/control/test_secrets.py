"""Secrets through a real control (in-process, real etcd): declared stage variables and API-key hashes
are "[redacted]" in Get and `meshgate get` output, a read-back document applied again keeps them,
only the sidecars serving a stage receive its variables, and etcd holds a keyed hash, never a bare
sha256 (old-style keys are re-keyed when control opens the store)."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
import yaml
from meshgate.control import state as keys
from meshgate.control.etcd_local import LocalEtcd
from meshgate.control.resources import load_documents, to_document
from meshgate.control.server import ControlServer, start_control
from meshgate.control.snapshots import build_snapshot
from meshgate.control.state import State
from meshgate.control.store import Store
from meshgate.sidecar.redact import REDACTED
from meshgate.v1 import control_pb2, control_pb2_grpc, resources_pb2
from tls import admin_channel

from .conftest import dump, raw_etcd
from .test_stream import Sidecar, until

DB_PASSWORD = "s3cr3t-db-pa55word"
API_TOKEN = "tok-0123456789-xyz"
CANARY_TOKEN = "canary-tok-987654"
KEY = "partner-key-0123456789abcdef"

CONFIG = f"""
apiVersion: meshgate.io/v1
kind: Api
metadata: {{name: pets}}
spec:
  selector: {{matchLabels: {{app: pets}}}}
  routes:
    - {{method: GET, path: /health, integration: {{type: mock, mock: {{body: ok}}}}}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: prod}}
spec:
  api: pets
  variables: {{backend: "b:1", dbPassword: {DB_PASSWORD}, pwd: {API_TOKEN}}}
  secretVariables: [dbPassword, pwd]
---
apiVersion: meshgate.io/v1
kind: Api
metadata: {{name: shop}}
spec:
  selector: {{matchLabels: {{app: shop}}}}
  routes:
    - {{method: GET, path: /health, integration: {{type: mock, mock: {{body: ok}}}}}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: prod}}
spec: {{api: shop, variables: {{note: visible}}}}
---
apiVersion: meshgate.io/v1
kind: UsagePlan
metadata: {{name: gold}}
spec: {{apis: [pets]}}
---
apiVersion: meshgate.io/v1
kind: ApiKey
metadata: {{name: partner}}
spec: {{usagePlan: gold, value: {KEY}}}
"""

SHA_HEX = hashlib.sha256(KEY.encode()).hexdigest()


@pytest.fixture
async def control(etcd: LocalEtcd) -> AsyncIterator[ControlServer]:
    ctl = await start_control(etcd.endpoint, port=0, prefix=f"/sec-{uuid.uuid4().hex[:8]}/", control_id="c1")
    yield ctl
    await ctl.stop(0)


@pytest.fixture
async def stub(control: ControlServer) -> AsyncIterator[control_pb2_grpc.ControlServiceStub]:
    async with admin_channel(control) as channel:
        yield control_pb2_grpc.ControlServiceStub(channel)


async def apply(stub: control_pb2_grpc.ControlServiceStub, text: str) -> list[str]:
    resp = await stub.Apply(control_pb2.ApplyRequest(resources=load_documents(text)))
    return [r.action for r in resp.results]


async def get_yaml(stub: control_pb2_grpc.ControlServiceStub, kind: str, name: str = "") -> str:
    """What `meshgate get KIND NAME -o yaml` prints."""
    resp = await stub.Get(control_pb2.GetRequest(kind=kind, namespace="default", name=name))
    return yaml.safe_dump_all([to_document(r) for r in resp.resources], sort_keys=False)


async def deploy(stub: control_pb2_grpc.ControlServiceStub, api: str) -> None:
    await stub.Deploy(control_pb2.DeployRequest(namespace="default", api=api, stage="prod"))


async def test_get_shows_secret_values_as_redacted(stub: control_pb2_grpc.ControlServiceStub) -> None:
    await apply(stub, CONFIG)
    text = await get_yaml(stub, "Stage") + await get_yaml(stub, "ApiKey")
    for secret in (DB_PASSWORD, API_TOKEN, SHA_HEX):
        assert secret not in text
    stages = {d["spec"]["api"]: d for d in yaml.safe_load_all(await get_yaml(stub, "Stage"))}
    assert stages["pets"]["spec"]["variables"] == {"backend": "b:1", "dbPassword": REDACTED, "pwd": REDACTED}
    assert stages["pets"]["spec"]["secretVariables"] == ["dbPassword", "pwd"]
    assert stages["shop"]["spec"]["variables"] == {"note": "visible"}
    key = yaml.safe_load(await get_yaml(stub, "ApiKey", "partner"))
    assert key["spec"]["valueHmac"] == REDACTED and "valueSha256" not in key["spec"]


async def test_canary_overrides_of_secret_variables_are_redacted(
    control: ControlServer, stub: control_pb2_grpc.ControlServiceStub
) -> None:
    await apply(stub, CONFIG)
    await deploy(stub, "pets")
    canary = resources_pb2.CanarySettings(percent=10, variables={"pwd": CANARY_TOKEN})
    resp = await stub.SetCanary(
        control_pb2.CanaryRequest(namespace="default", api="pets", stage="prod", canary=canary)
    )
    assert CANARY_TOKEN not in json.dumps(to_document(resources_pb2.Resource(stage=resp.stage)))
    text = await get_yaml(stub, "Stage", "prod")
    assert CANARY_TOKEN not in text and "canary" in text


async def test_applying_the_redacted_read_back_keeps_the_secrets(
    control: ControlServer, stub: control_pb2_grpc.ControlServiceStub
) -> None:
    await apply(stub, CONFIG)
    before = await dump(control.store)
    read_back = await get_yaml(stub, "Stage") + "---\n" + await get_yaml(stub, "ApiKey")
    assert await apply(stub, read_back) == ["unchanged"] * 3
    assert await dump(control.store) == before  # nothing rewritten: no literal "[redacted]" stored
    # an edit of another field keeps the stored secrets too
    edited = read_back.replace("b:1", "b:2")
    assert "configured" in await apply(stub, edited)
    raw = (await dump(control.store))[
        keys.stage_key(control.store.prefix, "default", "pets", "prod").encode()
    ]
    stage = resources_pb2.Stage.FromString(raw)
    assert dict(stage.spec.variables) == {"backend": "b:2", "dbPassword": DB_PASSWORD, "pwd": API_TOKEN}
    # the marker stands for a stored value: where there is none, the apply is refused
    fresh = read_back.replace("name: prod", "name: dev", 1)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await apply(stub, fresh)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and REDACTED in str(err.value.details())


async def test_secret_variables_must_be_declared_variables(stub: control_pb2_grpc.ControlServiceStub) -> None:
    bad = CONFIG.replace("secretVariables: [dbPassword, pwd]", "secretVariables: [dbPassword, nope]")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await apply(stub, bad)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "spec.secretVariables" in str(
        err.value.details()
    )


async def test_only_sidecars_serving_the_stage_receive_its_secrets(
    control: ControlServer, stub: control_pb2_grpc.ControlServiceStub
) -> None:
    await apply(stub, CONFIG)
    await deploy(stub, "pets")
    await deploy(stub, "shop")
    pets = Sidecar(control, "sc-pets", {"app": "pets"})
    shop = Sidecar(control, "sc-shop", {"app": "shop"})
    try:
        await until(lambda: any(s.stages and s.stages[0].deployment.id for s in pets.received))
        await until(lambda: any(s.stages and s.stages[0].deployment.id for s in shop.received))
        got = pets.received[-1].stages[0].stage.spec.variables
        assert got["dbPassword"] == DB_PASSWORD and got["pwd"] == API_TOKEN  # the real values
        for snap in shop.received:
            raw = snap.SerializeToString()
            assert DB_PASSWORD.encode() not in raw and API_TOKEN.encode() not in raw
            assert [b.api.metadata.name for b in snap.stages] == ["shop"] and not snap.api_keys
    finally:
        await pets.close()
        await shop.close()


async def test_etcd_holds_a_keyed_hash_and_the_snapshot_the_key(
    control: ControlServer, stub: control_pb2_grpc.ControlServiceStub
) -> None:
    await apply(stub, CONFIG)
    raw = (await dump(control.store))[
        keys.named_key(control.store.prefix, "ApiKey", "default", "partner").encode()
    ]
    digest = hashlib.sha256(KEY.encode()).digest()
    assert SHA_HEX.encode() not in raw and digest not in raw and KEY.encode() not in raw
    hash_key = control.store.keys.api_key_hash_key
    mac = hmac.new(hash_key, digest, "sha256").hexdigest()
    assert resources_pb2.ApiKey.FromString(raw).spec.value_hmac == mac
    await deploy(stub, "pets")
    pets = Sidecar(control, "sc-pets", {"app": "pets"})
    try:
        await until(lambda: bool(pets.received and pets.received[-1].api_keys))
        snap = pets.received[-1]
        assert snap.api_key_hash_key == hash_key and snap.api_keys[0].spec.value_hmac == mac
        assert not snap.api_keys[0].spec.value_sha256
    finally:
        await pets.close()


async def test_old_sha256_keys_are_rekeyed_when_control_opens_the_store(etcd: LocalEtcd) -> None:
    prefix = f"/sec-{uuid.uuid4().hex[:8]}/"
    old = resources_pb2.ApiKey(
        api_version="meshgate.io/v1",
        kind="ApiKey",
        metadata=resources_pb2.ObjectMeta(name="legacy", namespace="default", generation=1),
        spec=resources_pb2.ApiKeySpec(usage_plan="gold", value_sha256=SHA_HEX, enabled=True),
    )
    key = keys.named_key(prefix, "ApiKey", "default", "legacy")
    # a snapshot built from an old-style key already carries only the keyed hash
    st = State(prefix)
    st.put(
        keys.named_key(prefix, "Api", "default", "pets"), load_documents(CONFIG)[0].api.SerializeToString()
    )
    plan = load_documents(CONFIG)[4].usage_plan
    plan.metadata.namespace = "default"
    st.put(keys.named_key(prefix, "UsagePlan", "default", "gold"), plan.SerializeToString())
    st.put(key, old.SerializeToString())
    snap = build_snapshot(st, control_pb2.Node(id="n", labels={"app": "pets"}), api_key_hash_key=b"k" * 32)
    mac = hmac.new(b"k" * 32, bytes.fromhex(SHA_HEX), "sha256").hexdigest()
    assert [(k.spec.value_sha256, k.spec.value_hmac) for k in snap.api_keys] == [("", mac)]
    assert build_snapshot(st, control_pb2.Node(id="n", labels={"app": "pets"})).version == snap.version

    async with raw_etcd(etcd.endpoint) as client:
        await client.put(key.encode(), old.SerializeToString())
    store = Store(etcd.endpoint, prefix)
    await store.open()
    try:
        stored = resources_pb2.ApiKey.FromString((await dump(store))[key.encode()])
        want = hmac.new(store.keys.api_key_hash_key, bytes.fromhex(SHA_HEX), "sha256").hexdigest()
        assert (stored.spec.value_sha256, stored.spec.value_hmac) == ("", want)
        assert stored.metadata.name == "legacy" and stored.spec.enabled
    finally:
        async with raw_etcd(etcd.endpoint) as client:
            await client.delete_prefix(prefix.encode())
        await store.close()
