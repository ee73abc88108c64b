"""The etcd store on a real etcd: atomic validated apply, deployments, rollback, canaries, deletes."""

from __future__ import annotations

import asyncio

import pytest
from meshgate.control.errors import Conflict, FailedPrecondition, InvalidConfig, NotFound
from meshgate.control.store import Store
from meshgate.v1 import control_pb2, resources_pb2

from .conftest import PETS, docs, dump


async def test_apply_create_configure_unchanged(store: Store) -> None:
    r = await store.apply(docs())
    assert [(x.kind, x.name, x.action) for x in r.results] == [
        ("Api", "pets", "created"),
        ("Stage", "prod", "created"),
    ]
    r = await store.apply(docs())
    assert [x.action for x in r.results] == ["unchanged", "unchanged"]
    r = await store.apply(docs(PETS.replace("body: ok", "body: changed")))
    assert [x.action for x in r.results] == ["configured", "unchanged"]
    api = (await store.get("apis", "default", "pets"))[0].api
    assert (
        api.metadata.generation == 2 and api.metadata.revision > 0 and api.metadata.update_time_unix_nano > 0
    )


async def test_invalid_batch_writes_nothing(store: Store) -> None:
    await store.apply(docs())
    before = await dump(store)
    bad = (
        PETS.replace("body: ok", "body: new")
        + "---\napiVersion: meshgate.io/v1\nkind: Stage\nmetadata: {name: dev}\nspec: {api: pets, canary: {percent: 101}}\n"
    )
    with pytest.raises(InvalidConfig, match="spec.canary.percent"):
        await store.apply(docs(bad))
    assert await dump(store) == before


async def test_stage_needs_its_api(store: Store) -> None:
    stage_only = PETS.split("---")[1]
    with pytest.raises(NotFound, match="Api default/pets does not exist"):
        await store.apply(docs(stage_only))
    assert await dump(store) == {}


async def test_deploy_rollback_and_canary(store: Store) -> None:
    await store.apply(docs())
    d1 = await store.deploy("default", "pets", "prod", "first")
    d2 = await store.deploy("default", "pets", "prod")
    assert (d1.deployment, d2.deployment, d2.to_canary) == (1, 2, False)
    deps = await store.get("deployments", "default", api="pets")
    assert [d.deployment.id for d in deps] == [1, 2] and deps[0].deployment.spec.description == "first"
    assert deps[0].deployment.spec.api_spec.routes[0].path == "/health"
    stage = (await store.get("stages", "default", "prod"))[0].stage
    assert stage.spec.deployment == 2
    # re-applying the Stage document keeps the server-managed deployment pointer
    await store.apply(docs())
    assert (await store.get("stages", "default", "prod"))[0].stage.spec.deployment == 2
    assert (await store.rollback("default", "pets", "prod")).deployment == 1
    with pytest.raises(NotFound, match="no earlier deployment"):
        await store.rollback("default", "pets", "prod")
    assert (await store.rollback("default", "pets", "prod", 2)).deployment == 2
    # canary on the current base with different variables, then a deploy goes to the canary
    c = await store.set_canary(
        "default", "pets", "prod", resources_pb2.CanarySettings(percent=10, variables={"backend": "c:2"})
    )
    assert c.stage.spec.canary.deployment == 2
    d3 = await store.deploy("default", "pets", "prod")
    assert d3.to_canary
    stage = (await store.get("stages", "default", "prod"))[0].stage
    assert (stage.spec.deployment, stage.spec.canary.deployment) == (2, 3)
    p = await store.promote_canary("default", "pets", "prod")
    assert p.stage.spec.deployment == 3 and not p.stage.spec.HasField("canary")
    assert p.stage.spec.variables["backend"] == "c:2"
    with pytest.raises(FailedPrecondition):
        await store.remove_canary("default", "pets", "prod")
    with pytest.raises(NotFound, match="stage dev of Api default/pets does not exist.*--create-stage"):
        await store.deploy("default", "pets", "dev")  # a typo never creates a stage
    d4 = await store.deploy("default", "pets", "dev", create_stage=True)  # like create-deployment
    assert d4.deployment == 4 and (await store.get("stages", "default", "dev"))[0].stage.spec.deployment == 4


async def test_concurrent_deploys_get_distinct_ids(store: Store) -> None:
    await store.apply(docs())
    results = await asyncio.gather(
        *(store.deploy("default", "pets", "prod") for _ in range(8)), return_exceptions=True
    )
    # each failed commit means another deploy committed between its reads and its commit, so with
    # RETRIES (8) attempts none of 8 deploys can run out: all succeed, with the ids 1..8, no gaps
    assert all(isinstance(r, control_pb2.DeployResponse) for r in results), results
    assert sorted(r.deployment for r in results) == list(range(1, 9))
    assert len({r.revision for r in results}) == 8  # each its own transaction
    stage = (await store.get("stages", "default", "prod"))[0].stage
    assert stage.spec.deployment == 8  # the last to commit is the one the stage serves
    deployments = await store.get("deployments", "default")
    assert sorted(d.deployment.id for d in deployments) == list(range(1, 9))


async def test_delete_rules(store: Store) -> None:
    await store.apply(docs())
    await store.deploy("default", "pets", "prod")
    with pytest.raises(FailedPrecondition, match="still has stages \\(prod\\)"):
        await store.delete(control_pb2.ObjectRef(kind="Api", namespace="default", name="pets"))
    with pytest.raises(FailedPrecondition, match="stage prod still serves it"):
        await store.delete(control_pb2.ObjectRef(kind="Deployment", namespace="default", name="pets-1"))
    await store.delete(control_pb2.ObjectRef(kind="Stage", namespace="default", name="prod", api="pets"))
    await store.delete(control_pb2.ObjectRef(kind="api", namespace="default", name="pets"))
    with pytest.raises(NotFound):
        await store.delete(control_pb2.ObjectRef(kind="Api", namespace="default", name="pets"))
    assert await store.get("apis") == []


async def test_dry_run_writes_nothing(store: Store) -> None:
    r = await store.apply(docs(), dry_run=True)
    assert [x.action for x in r.results] == ["created", "created"]
    assert await dump(store) == {}


async def test_get_filters(store: Store) -> None:
    await store.apply(docs())
    other = PETS.replace("name: pets", "name: shop, namespace: team-b").replace("api: pets", "api: shop")
    await store.apply(
        docs(other.replace("metadata: {name: prod}", "metadata: {name: prod, namespace: team-b}"))
    )
    await store.apply(docs(PETS.replace("metadata: {name: prod}", "metadata: {name: dev}")))
    assert sorted(r.api.metadata.name for r in await store.get("Apis")) == ["pets", "shop"]
    assert [r.api.metadata.name for r in await store.get("api", "default", "pets")] == ["pets"]
    assert [r.api.metadata.name for r in await store.get("api", "team-b")] == ["shop"]
    assert await store.get("api", "team-c") == []
    stages = await store.get("stages", "default", api="pets")
    assert sorted(r.stage.metadata.name for r in stages) == ["dev", "prod"]
    assert [(r.stage.metadata.namespace, r.stage.spec.api) for r in await store.get("stage", "team-b")] == [
        ("team-b", "shop")
    ]
    assert [r.stage.metadata.name for r in await store.get("Stage", name="dev")] == ["dev"]
    assert all(r.stage.metadata.revision > 0 for r in stages)
    with pytest.raises(InvalidConfig, match="unknown kind"):
        await store.get("widgets")


async def test_delete_api_is_guarded_against_a_racing_stage(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.apply(docs())

    async def no_stages(segment: str) -> list[tuple[str, bytes, int]]:
        return []  # the check "sees" no stage, but one exists: the txn guard must refuse

    monkeypatch.setattr(store, "_range", no_stages)
    with pytest.raises(Conflict):
        await store.delete(control_pb2.ObjectRef(kind="Api", namespace="default", name="pets"))
    monkeypatch.undo()
    assert len(await store.get("apis")) == 1
