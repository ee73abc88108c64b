"""Per-sidecar snapshots: which Apis bind to a node, and the versioned bundle it receives.

A sidecar gets only the Apis whose selector matches its namespace and pod
labels, so config size does not grow with the mesh. Sidecars with the same
namespace and labels share one build per etcd revision. Every snapshot carries
the @connections id key, and for each bound WebSocket Api the sidecars serving
it (node id and advertise address): the only places @connections calls for its
connections are forwarded to. A stage's variables, secret or not, go only to the sidecars its Api
binds (nothing else of an unbound stage is in the snapshot). The API-key hash key rides along so a
sidecar can check presented keys against the keyed hashes (`value_hmac`) control stores; keys still
stored the old way (a bare sha256) go out keyed too. Neither the key nor that re-keying is in the
version, which is a function of etcd content only (the controller computes the same versions).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from meshgate.control.state import State
from meshgate.control.validation_common import HEX64_RE
from meshgate.sidecar.filters.api_key import api_key_mac
from meshgate.v1 import control_pb2, resources_pb2

BindKey = tuple[str, frozenset[tuple[str, str]]]


def bind_key(node: control_pb2.Node) -> BindKey:
    return (node.namespace or "default", frozenset(node.labels.items()))


def binds(api: resources_pb2.Api, node: control_pb2.Node) -> bool:
    """An Api binds to a sidecar when its selector matches the node's namespace and labels. With no
    `namespaces` only the Api's own namespace's sidecars match (as an Istio workloadSelector): a pod
    elsewhere that copies the labels gets nothing, stage secrets included; "*" opens it to all."""
    sel = api.spec.selector
    namespaces = list(sel.namespaces) or [api.metadata.namespace or "default"]
    if "*" not in namespaces and (node.namespace or "default") not in namespaces:
        return False
    return all(node.labels.get(k) == v for k, v in sel.match_labels.items())


def _websocket(spec: resources_pb2.ApiSpec) -> bool:
    return any(r.integration.type == "websocket_api" for r in spec.routes)


def connection_peers(state: State, apis: set[tuple[str, str]]) -> list[control_pb2.ConnectionPeers]:
    """For each of these (WebSocket) Apis, the live sidecars serving it that told control their address."""
    out = []
    for ns, name in sorted(apis):
        api = state.apis[(ns, name)]
        peers = [
            control_pb2.Peer(node_id=node_id, advertise=node.advertise)
            for node_id, node in sorted(state.sidecars.items())
            if node.advertise and binds(api, node)
        ]
        out.append(control_pb2.ConnectionPeers(api=f"{ns}/{name}", peers=peers))
    return out


def rekeyed(spec: resources_pb2.ApiKeySpec, hash_key: bytes) -> resources_pb2.ApiKeySpec | None:
    """An ApiKey spec stored the old way (only `value_sha256`) with its keyed hash instead, or None
    when it is already keyed (or not a sha256 at all)."""
    if spec.value_hmac or not HEX64_RE.match(spec.value_sha256):
        return None
    out = resources_pb2.ApiKeySpec()
    out.CopyFrom(spec)
    out.value_hmac = api_key_mac(hash_key, bytes.fromhex(spec.value_sha256)).hex()
    out.ClearField("value_sha256")
    return out


def build_snapshot(
    state: State,
    node: control_pb2.Node,
    cluster_cidrs: tuple[str, ...] = (),
    api_key_hash_key: bytes = b"",
) -> control_pb2.Snapshot:
    """The complete config for one sidecar; version changes iff the content changes.

    Each stage carries how many live sidecars serve it (`replicas`), so limits
    meant for the whole stage can be divided among them; each WebSocket Api the
    sidecars serving it (`connection_peers`).
    """
    snap = control_pb2.Snapshot(cluster_cidrs=cluster_cidrs, connection_id_key=state.connection_id_key)
    newest = 0
    bound: set[tuple[str, str]] = set()
    replicas: dict[tuple[str, str], int] = {}
    websocket: set[tuple[str, str]] = set()  # bound Apis with a websocket_api route (spec or deployed)
    for (ns, name), api in sorted(state.apis.items()):
        if binds(api, node):
            bound.add((ns, name))
            if _websocket(api.spec):
                websocket.add((ns, name))
    for (ns, api_name, _stage), stage in sorted(state.stages.items()):
        if (ns, api_name) not in bound:
            continue
        api = state.apis[(ns, api_name)]
        bundle = snap.stages.add()
        bundle.replicas = max(
            1, replicas.setdefault((ns, api_name), sum(1 for n in state.sidecars.values() if binds(api, n)))
        )
        bundle.api.CopyFrom(api)
        bundle.stage.CopyFrom(stage)
        newest = max(newest, api.metadata.update_time_unix_nano, stage.metadata.update_time_unix_nano)
        dep = state.deployments.get((ns, api_name, stage.spec.deployment)) if stage.spec.deployment else None
        if dep is not None:
            bundle.deployment.CopyFrom(dep)
            newest = max(newest, dep.metadata.update_time_unix_nano)
            if _websocket(dep.spec.api_spec):
                websocket.add((ns, api_name))
        c = stage.spec.canary
        canary = (
            state.deployments.get((ns, api_name, c.deployment)) if c.percent > 0 and c.deployment else None
        )
        if canary is not None:
            bundle.canary_deployment.CopyFrom(canary)
            newest = max(newest, canary.metadata.update_time_unix_nano)
            if _websocket(canary.spec.api_spec):
                websocket.add((ns, api_name))
    snap.connection_peers.extend(connection_peers(state, websocket))
    plans: set[tuple[str, str]] = set()
    for (ns, name), plan in sorted(state.usage_plans.items()):
        if any((ns, ref.split("/")[0]) in bound for ref in plan.spec.apis):
            snap.usage_plans.add().CopyFrom(plan)
            plans.add((ns, name))
            newest = max(newest, plan.metadata.update_time_unix_nano)
    for (ns, _name), key in sorted(state.api_keys.items()):
        if (ns, key.spec.usage_plan) in plans:
            snap.api_keys.add().CopyFrom(key)
            newest = max(newest, key.metadata.update_time_unix_nano)
    snap.version = hashlib.sha256(snap.SerializeToString(deterministic=True)).hexdigest()[:16]
    snap.source_time_unix_nano = newest
    if api_key_hash_key:
        snap.api_key_hash_key = api_key_hash_key
        for key in snap.api_keys:
            spec = rekeyed(key.spec, api_key_hash_key)
            if spec is not None:
                key.spec.CopyFrom(spec)
    return snap


class SnapshotCache:
    """Memoizes build_snapshot per (state revision, bind key)."""

    def __init__(
        self, cluster_cidrs: tuple[str, ...] = (), max_entries: int = 1024, api_key_hash_key: bytes = b""
    ) -> None:
        self.cluster_cidrs = tuple(cluster_cidrs)
        self.api_key_hash_key = api_key_hash_key
        self._entries: OrderedDict[tuple[int, BindKey], control_pb2.Snapshot] = OrderedDict()
        self._max = max_entries
        self.builds = 0

    def get(self, state: State, node: control_pb2.Node) -> control_pb2.Snapshot:
        key = (state.revision, bind_key(node))
        snap = self._entries.get(key)
        if snap is None:
            snap = build_snapshot(state, node, self.cluster_cidrs, self.api_key_hash_key)
            self.builds += 1
            self._entries[key] = snap
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return snap
