"""Which sidecars applied a resource, for its `Applied` condition: the snapshot each known sidecar
should have now (built as the config stream builds it), the content of every resource each snapshot
version holds, and from that and the sidecars' ACKs and NACKs the condition of an object."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

from meshgate.control import state as keys
from meshgate.control.kube import JSON
from meshgate.control.snapshots import bind_key, build_snapshot
from meshgate.control.state import State
from meshgate.v1 import control_pb2, resources_pb2

MEMO_VERSIONS = 4096  # snapshot versions remembered (a sidecar's ACK names one)


class AppliedTracker:
    """Kept current by `rebuild` on every etcd change; `judge` gives one object's condition."""

    def __init__(self, prefix: str, cluster_cidrs: tuple[str, ...]) -> None:
        self.prefix = prefix
        self.cluster_cidrs = cluster_cidrs
        self._contents: OrderedDict[str, dict[str, str]] = OrderedDict()  # version -> {etcd key: digest}
        self._expected: dict[str, str] = {}  # node id -> version of its current snapshot
        self._digests: dict[str, str] = {}  # etcd key -> digest of its current content in snapshots

    def rebuild(self, state: State) -> None:
        """The snapshot every known sidecar should have now, and which resource content each holds."""
        built: dict[Any, str] = {}
        expected: dict[str, str] = {}
        digests: dict[str, str] = {}
        p = self.prefix
        for node_id, status in state.statuses.items():
            bk = bind_key(status.node)
            version = built.get(bk)
            if version is None:
                snap = build_snapshot(state, status.node, self.cluster_cidrs)
                version = snap.version
                built[bk] = version
                contents: dict[str, str] = {}
                for bundle in snap.stages:
                    ns, api = bundle.api.metadata.namespace or "default", bundle.api.metadata.name
                    contents[keys.api_key(p, ns, api)] = digest(bundle.api)
                    plain = control_pb2.StageBundle()
                    plain.CopyFrom(bundle)
                    plain.replicas = 0  # membership changes do not make a stage un-applied
                    contents[keys.stage_key(p, ns, api, bundle.stage.metadata.name)] = digest(plain)
                for plan in snap.usage_plans:
                    contents[
                        keys.usage_plan_key(p, plan.metadata.namespace or "default", plan.metadata.name)
                    ] = digest(plan)
                for k in snap.api_keys:
                    contents[keys.apikey_key(p, k.metadata.namespace or "default", k.metadata.name)] = digest(
                        k
                    )
                self._contents[version] = contents
                digests.update(contents)
            self._contents.move_to_end(version)
            expected[node_id] = version
        while len(self._contents) > MEMO_VERSIONS:
            self._contents.popitem(last=False)
        self._expected = expected
        self._digests = digests

    def judge(
        self, state: State, accepted: bool, key: str, generation: int, kind: str
    ) -> tuple[JSON, int, int]:
        """The Applied condition of an object (its etcd `key`, the `generation` judged), and (bound,
        acked) sidecar counts."""
        if not accepted:
            return (
                condition(
                    "Applied",
                    "False",
                    "NotAccepted",
                    "this generation was not accepted; sidecars keep the last accepted configuration",
                    generation,
                ),
                0,
                0,
            )
        poisoned = state.poisoned.get(key)
        if poisoned is not None:
            kept = state.resource(key) is not None
            served = "sidecars keep its last good version" if kept else "no sidecar receives it"
            message = f"etcd holds an unusable value at {key}: {poisoned}; {served}"
            return condition("Applied", "False", "Poisoned", message, generation), 0, 0
        digest = self._digests.get(key)
        bound = [
            n for n in sorted(state.statuses) if key in self._contents.get(self._expected.get(n, ""), {})
        ]
        what = _what(state, key)
        if not bound:
            if kind == "Api" and not _stages_of(state, self.prefix, key):
                reason, message = (
                    "NoStages",
                    "no Stage serves this Api yet; sidecars receive an Api through its stages",
                )
            else:
                reason, message = (
                    "NoSidecars",
                    "no connected sidecar is bound to this resource (see the Api's spec.selector)",
                )
            return condition("Applied", "False", reason, message, generation), 0, 0
        acked, nacks = [], []
        for node_id in bound:
            st = state.statuses[node_id]
            if self._contents.get(st.acked_version, {}).get(key) == digest:
                acked.append(node_id)
            elif st.last_nack_error and (
                st.last_nack_version == self._expected.get(node_id)
                or self._contents.get(st.last_nack_version, {}).get(key) == digest
            ):
                nacks.append(f"{node_id}: {st.last_nack_error}")
        summary = f"{len(acked)}/{len(bound)} sidecars applied {what}"
        if len(acked) == len(bound):
            cond = condition("Applied", "True", "Applied", summary, generation)
        elif nacks:
            cond = condition(
                "Applied", "False", "Nacked", f"{summary}; NACK from {'; '.join(nacks)}", generation
            )
        else:
            cond = condition("Applied", "False", "Applying", summary, generation)
        return cond, len(bound), len(acked)


def _stages_of(state: State, prefix: str, api_key: str) -> list[resources_pb2.Stage]:
    parts = keys.parse_key(prefix, api_key)
    if parts is None:
        return []
    ns, api = parts.namespace, parts.name
    return [s for (sns, sapi, _), s in state.stages.items() if sns == ns and sapi == api]


def _what(state: State, key: str) -> str:
    msg = state.resource(key)
    if isinstance(msg, resources_pb2.Stage):
        c = msg.spec.canary
        canary = (
            f" (canary deployment {c.deployment} at {c.percent:g}%)" if c.percent > 0 and c.deployment else ""
        )
        return f"deployment {msg.spec.deployment}{canary}"
    return f"generation {msg.metadata.generation}" if msg is not None else "it"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def digest(msg: Any) -> str:
    return hashlib.sha256(msg.SerializeToString(deterministic=True)).hexdigest()[:16]


def condition(type_: str, status: str, reason: str, message: str, generation: int) -> JSON:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": now(),
    }
