"""Which Apis bind to a sidecar, and snapshot versions that change iff the content does."""

from __future__ import annotations

from meshgate.control.snapshots import SnapshotCache, binds, build_snapshot
from meshgate.control.state import State, wrap
from meshgate.v1 import control_pb2, resources_pb2


def api(name: str, namespaces: list[str] | None = None, **labels: str) -> resources_pb2.Api:
    return resources_pb2.Api(
        metadata=resources_pb2.ObjectMeta(name=name, namespace="default", update_time_unix_nano=10),
        spec=resources_pb2.ApiSpec(
            selector=resources_pb2.Selector(namespaces=namespaces or [], match_labels=labels)
        ),
    )


def node(ns: str = "default", **labels: str) -> control_pb2.Node:
    return control_pb2.Node(id="n", namespace=ns, labels=labels)


def state_with(*apis: resources_pb2.Api) -> State:
    st = State("/p/")
    for i, a in enumerate(apis):
        st.put(f"/p/apis/default/{a.metadata.name}", a.SerializeToString())
        stage = resources_pb2.Stage(
            metadata=resources_pb2.ObjectMeta(name="prod", namespace="default", update_time_unix_nano=20 + i),
            spec=resources_pb2.StageSpec(api=a.metadata.name, deployment=1),
        )
        st.put(f"/p/stages/default/{a.metadata.name}/prod", stage.SerializeToString())
        dep = resources_pb2.Deployment(
            id=1,
            metadata=resources_pb2.ObjectMeta(
                name=f"{a.metadata.name}-1", namespace="default", update_time_unix_nano=5
            ),
            spec=resources_pb2.DeploymentSpec(api=a.metadata.name, api_spec=a.spec),
        )
        st.put(f"/p/deployments/default/{a.metadata.name}/0000000001", dep.SerializeToString())
    st.revision = 7
    return st


def test_selector_by_labels_and_namespaces() -> None:
    assert binds(api("a", app="pets"), node(app="pets", version="v1"))
    assert not binds(api("a", app="pets"), node(app="shop"))
    assert not binds(api("a", ["team-a"]), node("team-b"))
    assert binds(api("a", ["*"]), node("team-b"))
    assert binds(api("a", ["team-b", "x"]), node("team-b"))


def test_snapshot_holds_only_bound_stages_and_a_content_version() -> None:
    st = state_with(api("pets", app="pets"), api("shop", app="shop"))
    snap = build_snapshot(st, node(app="pets"))
    assert [b.api.metadata.name for b in snap.stages] == ["pets"]
    assert snap.stages[0].deployment.id == 1 and not snap.stages[0].HasField("canary_deployment")
    assert snap.source_time_unix_nano == 20
    assert build_snapshot(st, node(app="pets", other="x")).version == snap.version
    assert build_snapshot(st, node(app="shop")).version != snap.version
    changed = state_with(api("pets", app="pets"), api("shop", app="shop"))
    stage = changed.stages[("default", "pets", "prod")]
    stage.spec.variables["v"] = "1"
    assert build_snapshot(changed, node(app="pets")).version != snap.version
    assert wrap(stage).stage == stage


def test_cache_builds_once_per_revision_and_bind_key() -> None:
    st = state_with(api("pets", app="pets"))
    cache = SnapshotCache()
    for i in range(50):
        cache.get(st, control_pb2.Node(id=f"n{i}", namespace="default", labels={"app": "pets"}))
    assert cache.builds == 1
    cache.get(st, node(app="other"))
    st.revision += 1
    cache.get(st, node(app="pets"))
    assert cache.builds == 3


def test_canary_deployment_usage_plans_and_keys() -> None:
    st = state_with(api("pets", app="pets"), api("shop", app="shop"))
    stage = st.stages[("default", "pets", "prod")]
    stage.spec.canary.deployment = 1
    assert not build_snapshot(st, node(app="pets")).stages[0].HasField("canary_deployment")  # percent 0
    stage.spec.canary.percent = 10
    snap = build_snapshot(st, node(app="pets"))
    assert snap.stages[0].canary_deployment.id == 1
    stage.spec.canary.deployment = 9  # does not exist: no canary bundle
    assert not build_snapshot(st, node(app="pets")).stages[0].HasField("canary_deployment")
    for plan, apis in (("gold", ["pets/prod"]), ("shop-plan", ["shop"])):
        p = resources_pb2.UsagePlan(
            metadata=resources_pb2.ObjectMeta(name=plan, namespace="default", update_time_unix_nano=99),
            spec=resources_pb2.UsagePlanSpec(apis=apis),
        )
        st.put(f"/p/usageplans/default/{plan}", p.SerializeToString())
        k = resources_pb2.ApiKey(
            metadata=resources_pb2.ObjectMeta(name=f"{plan}-key", namespace="default"),
            spec=resources_pb2.ApiKeySpec(usage_plan=plan, value_sha256="0" * 64),
        )
        st.put(f"/p/apikeys/default/{plan}-key", k.SerializeToString())
    snap = build_snapshot(st, node(app="pets"))
    assert [p.metadata.name for p in snap.usage_plans] == ["gold"]
    assert [k.metadata.name for k in snap.api_keys] == ["gold-key"]
    assert snap.source_time_unix_nano == 99
    assert not snap.nonce and not snap.control_id and len(snap.version) == 16
