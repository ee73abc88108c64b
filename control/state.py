"""The etcd key layout and the in-memory view of everything stored under the prefix.

One place says which key holds which resource and how values are encoded
(binary protobuf of the resource message); the store writes with it and the
config streamer rebuilds its `State` from a range read plus watch events.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meshgate.v1 import control_pb2, resources_pb2

ResourceMsg = (
    resources_pb2.Api
    | resources_pb2.Stage
    | resources_pb2.Deployment
    | resources_pb2.UsagePlan
    | resources_pb2.ApiKey
)

# kind -> (key segment, message class, Resource oneof field)
KINDS: dict[str, tuple[str, type[ResourceMsg], str]] = {
    "Api": ("apis", resources_pb2.Api, "api"),
    "Stage": ("stages", resources_pb2.Stage, "stage"),
    "Deployment": ("deployments", resources_pb2.Deployment, "deployment"),
    "UsagePlan": ("usageplans", resources_pb2.UsagePlan, "usage_plan"),
    "ApiKey": ("apikeys", resources_pb2.ApiKey, "api_key"),
}
SEGMENT_TO_KIND = {seg: kind for kind, (seg, _, _) in KINDS.items()}
ONEOF_TO_KIND = {oneof: kind for kind, (_, _, oneof) in KINDS.items()}

SidecarsSegment = "sidecars"


def api_key(prefix: str, namespace: str, name: str) -> str:
    return f"{prefix}apis/{namespace}/{name}"


def stage_key(prefix: str, namespace: str, api: str, stage: str) -> str:
    return f"{prefix}stages/{namespace}/{api}/{stage}"


def deployment_key(prefix: str, namespace: str, api: str, dep_id: int) -> str:
    return f"{prefix}deployments/{namespace}/{api}/{dep_id:010d}"


def usage_plan_key(prefix: str, namespace: str, name: str) -> str:
    return f"{prefix}usageplans/{namespace}/{name}"


def apikey_key(prefix: str, namespace: str, name: str) -> str:
    return f"{prefix}apikeys/{namespace}/{name}"


def deployment_seq_key(prefix: str, namespace: str, api: str) -> str:
    return f"{prefix}seq/deployments/{namespace}/{api}"


def sidecar_key(prefix: str, node_id: str) -> str:
    return f"{prefix}{SidecarsSegment}/{node_id}"


def key_for(prefix: str, res: resources_pb2.Resource) -> str:
    """The etcd key of a Resource (oneof)."""
    which = res.WhichOneof("kind")
    if which == "api":
        m = res.api.metadata
        return api_key(prefix, m.namespace or "default", m.name)
    if which == "stage":
        m = res.stage.metadata
        return stage_key(prefix, m.namespace or "default", res.stage.spec.api, m.name)
    if which == "deployment":
        d = res.deployment
        return deployment_key(prefix, d.metadata.namespace or "default", d.spec.api, d.id)
    if which == "usage_plan":
        m = res.usage_plan.metadata
        return usage_plan_key(prefix, m.namespace or "default", m.name)
    if which == "api_key":
        m = res.api_key.metadata
        return apikey_key(prefix, m.namespace or "default", m.name)
    raise ValueError("empty Resource")


def wrap(msg: ResourceMsg) -> resources_pb2.Resource:
    """Put a resource message into the Resource oneof."""
    oneof = KINDS[msg.DESCRIPTOR.name][2]
    res = resources_pb2.Resource()
    getattr(res, oneof).CopyFrom(msg)
    return res


def unwrap(res: resources_pb2.Resource) -> ResourceMsg:
    which = res.WhichOneof("kind")
    if which is None:
        raise ValueError("empty Resource")
    msg: ResourceMsg = getattr(res, which)
    return msg


def decode(prefix: str, key: str, value: bytes) -> ResourceMsg | None:
    """Decode a stored value by its key; None for keys that hold no resource."""
    if not key.startswith(prefix):
        return None
    segment = key[len(prefix) :].split("/", 1)[0]
    kind = SEGMENT_TO_KIND.get(segment)
    if kind is None:
        return None
    cls = KINDS[kind][1]
    msg = cls()
    msg.ParseFromString(value)
    return msg


@dataclass
class State:
    """Every resource under the prefix, keyed by its etcd key, at `revision`."""

    prefix: str
    apis: dict[tuple[str, str], resources_pb2.Api] = field(default_factory=dict)
    stages: dict[tuple[str, str, str], resources_pb2.Stage] = field(default_factory=dict)
    deployments: dict[tuple[str, str, int], resources_pb2.Deployment] = field(default_factory=dict)
    usage_plans: dict[tuple[str, str], resources_pb2.UsagePlan] = field(default_factory=dict)
    api_keys: dict[tuple[str, str], resources_pb2.ApiKey] = field(default_factory=dict)
    # connected sidecars (from their status keys): node id -> Node; only membership matters here
    sidecars: dict[str, control_pb2.Node] = field(default_factory=dict)
    revision: int = 0

    def put(self, key: str, value: bytes) -> bool:
        """Apply a put event; returns True when it changed a resource or the set of sidecars."""
        sc_prefix = self.prefix + SidecarsSegment + "/"
        if key.startswith(sc_prefix):
            try:
                node = control_pb2.SidecarStatus.FromString(value).node
            except Exception:
                return False
            old = self.sidecars.get(node.id)
            if old is not None and old.namespace == node.namespace and dict(old.labels) == dict(node.labels):
                return False
            self.sidecars[node.id] = node
            return True
        msg = decode(self.prefix, key, value)
        if msg is None:
            return False
        self._store(msg)
        return True

    def delete(self, key: str) -> bool:
        """Apply a delete event; returns True when it removed a resource."""
        parts = key[len(self.prefix) :].split("/") if key.startswith(self.prefix) else []
        if not parts:
            return False
        seg = parts[0]
        try:
            if seg == SidecarsSegment:
                return self.sidecars.pop(key[len(self.prefix) + len(SidecarsSegment) + 1 :], None) is not None
            if seg == "apis":
                return self.apis.pop((parts[1], parts[2]), None) is not None
            if seg == "stages":
                return self.stages.pop((parts[1], parts[2], parts[3]), None) is not None
            if seg == "deployments":
                return self.deployments.pop((parts[1], parts[2], int(parts[3])), None) is not None
            if seg == "usageplans":
                return self.usage_plans.pop((parts[1], parts[2]), None) is not None
            if seg == "apikeys":
                return self.api_keys.pop((parts[1], parts[2]), None) is not None
        except (IndexError, ValueError):
            return False
        return False

    def _store(self, msg: ResourceMsg) -> None:
        ns = msg.metadata.namespace or "default"
        if isinstance(msg, resources_pb2.Api):
            self.apis[(ns, msg.metadata.name)] = msg
        elif isinstance(msg, resources_pb2.Stage):
            self.stages[(ns, msg.spec.api, msg.metadata.name)] = msg
        elif isinstance(msg, resources_pb2.Deployment):
            self.deployments[(ns, msg.spec.api, msg.id)] = msg
        elif isinstance(msg, resources_pb2.UsagePlan):
            self.usage_plans[(ns, msg.metadata.name)] = msg
        else:
            self.api_keys[(ns, msg.metadata.name)] = msg


def ref_of(msg: ResourceMsg) -> control_pb2.ObjectRef:
    """The ObjectRef naming a stored resource (for errors and results)."""
    kind = msg.DESCRIPTOR.name
    api = msg.spec.api if isinstance(msg, resources_pb2.Stage | resources_pb2.Deployment) else ""
    return control_pb2.ObjectRef(
        kind=kind, namespace=msg.metadata.namespace or "default", name=msg.metadata.name, api=api
    )
