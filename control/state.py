"""The etcd key layout and the in-memory view of everything stored under the prefix.

One place says which key holds which resource and how values are encoded
(binary protobuf of the resource message): every key and key range is built
and parsed by the functions here, nowhere else. The store writes with them and
the etcd mirror (`control/mirror.py`) keeps a `State` from a range read plus
watch events. A value that does not decode, names another key or (when
VALIDATE_STORED) fails the apply-time validators is poison: `State` skips it, keeps the last good version
of that object if it had one, and lists the key in `poisoned`.

    {prefix}apis/{ns}/{name}                  Api
    {prefix}stages/{ns}/{api}/{stage}         Stage
    {prefix}deployments/{ns}/{api}/{id:010d}  Deployment (ids sort as numbers)
    {prefix}usageplans/{ns}/{name}            UsagePlan
    {prefix}apikeys/{ns}/{name}               ApiKey
    {prefix}seq/deployments/{ns}/{api}        the last deployment id of an Api
    {prefix}sidecars/{node id}                SidecarStatus, under a control replica's lease
    {prefix}secrets/connection-id-key         the @connections id key (32 random bytes, written once)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError
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

# the words users type for a kind (CLI, admin RPCs) -> the kind
KIND_WORDS = {
    "api": "Api",
    "apis": "Api",
    "stage": "Stage",
    "stages": "Stage",
    "deployment": "Deployment",
    "deployments": "Deployment",
    "usageplan": "UsagePlan",
    "usageplans": "UsagePlan",
    "apikey": "ApiKey",
    "apikeys": "ApiKey",
}

SidecarsSegment = "sidecars"
SeqSegment = "seq"
SecretsSegment = "secrets"
SIDECAR = "Sidecar"  # KeyParts.kind of a sidecar status key
SEQ = "Seq"  # KeyParts.kind of a deployment sequence key
SECRET = "Secret"  # KeyParts.kind of a key control makes for itself (name: which one)
CONNECTION_ID_KEY = "connection-id-key"  # the secret that MACs @connections ids


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
    return f"{prefix}{SeqSegment}/deployments/{namespace}/{api}"


def sidecar_key(prefix: str, node_id: str) -> str:
    return f"{prefix}{SidecarsSegment}/{node_id}"


def secret_key(prefix: str, name: str) -> str:
    """The key of one of control's own secrets (CONNECTION_ID_KEY)."""
    return f"{prefix}{SecretsSegment}/{name}"


def named_key(prefix: str, kind: str, namespace: str, name: str) -> str:
    """The key of an Api, UsagePlan or ApiKey (the kinds named by namespace and name alone)."""
    if kind not in ("Api", "UsagePlan", "ApiKey"):
        raise ValueError(f"{kind} keys need more than a namespace and a name")
    return f"{prefix}{KINDS[kind][0]}/{namespace}/{name}"


def kind_prefix(prefix: str, kind: str, namespace: str = "", api: str = "") -> str:
    """The key range of one kind, narrowed to a namespace and (stages, deployments) to an Api."""
    out = f"{prefix}{KINDS[kind][0]}/"
    if namespace:
        out += namespace + "/"
        if api and kind in ("Stage", "Deployment"):
            out += api + "/"
    return out


def stages_prefix(prefix: str, namespace: str, api: str) -> str:
    """The key range of an Api's stages."""
    return kind_prefix(prefix, "Stage", namespace, api)


def deployments_prefix(prefix: str, namespace: str, api: str) -> str:
    """The key range of an Api's deployments."""
    return kind_prefix(prefix, "Deployment", namespace, api)


def sidecars_prefix(prefix: str) -> str:
    """The key range of the sidecar status keys."""
    return f"{prefix}{SidecarsSegment}/"


def seq_prefix(prefix: str) -> str:
    """The key range of the deployment sequence keys."""
    return f"{prefix}{SeqSegment}/"


@dataclass(frozen=True, slots=True)
class KeyParts:
    """What a key under the prefix names: kind (a KINDS name, SIDECAR or SEQ) and its parts."""

    kind: str
    namespace: str = ""
    api: str = ""  # Stage, Deployment, Seq
    name: str = ""  # the resource's name, the stage's name, a sidecar's node id, a secret's name
    deployment: int = 0  # Deployment


def parse_key(prefix: str, key: str) -> KeyParts | None:
    """The parts of a key under `prefix`; None for keys outside the layout."""
    if not key.startswith(prefix):
        return None
    segment, _, rest = key[len(prefix) :].partition("/")
    if segment == SidecarsSegment:
        return KeyParts(SIDECAR, name=rest) if rest else None
    if segment == SecretsSegment:
        return KeyParts(SECRET, name=rest) if rest else None
    parts = rest.split("/")
    try:
        if segment == SeqSegment:
            return KeyParts(SEQ, namespace=parts[1], api=parts[2])
        kind = SEGMENT_TO_KIND.get(segment)
        if kind == "Stage":
            return KeyParts(kind, namespace=parts[0], api=parts[1], name=parts[2])
        if kind == "Deployment":
            return KeyParts(kind, namespace=parts[0], api=parts[1], deployment=int(parts[2]))
        if kind is not None:
            return KeyParts(kind, namespace=parts[0], name=parts[1])
    except (IndexError, ValueError):
        return None
    return None


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
    """Decode a stored value by its key; None for keys that hold no resource and for values that do
    not decode (poison: the etcd mirror marks those, see `check_stored`)."""
    if not key.startswith(prefix):
        return None
    segment = key[len(prefix) :].split("/", 1)[0]
    kind = SEGMENT_TO_KIND.get(segment)
    if kind is None:
        return None
    msg = KINDS[kind][1]()
    try:
        msg.ParseFromString(value)
    except DecodeError:
        return None
    return msg


# Also poison values the apply-time validators refuse (control/validation.py): what no apply would
# write (a hand-edited key, an older control's looser rules) isolates its own object.
VALIDATE_STORED = True


class Poison(ValueError):
    """A stored value that cannot be used: it does not decode, names another key, or fails validation."""


def check_stored(prefix: str, key: str, value: bytes) -> ResourceMsg | None:
    """The resource a stored value holds (None for keys that hold none): it must decode and belong at
    its key, and (VALIDATE_STORED) pass the checks apply makes; raises `Poison` saying why not.
    Per change, never per request."""
    kind = SEGMENT_TO_KIND.get(key[len(prefix) :].split("/", 1)[0]) if key.startswith(prefix) else None
    if kind is None:
        return None
    msg = KINDS[kind][1]()
    try:
        msg.ParseFromString(value)
    except DecodeError as exc:
        raise Poison(f"does not decode as a {kind} ({exc})") from None
    try:
        named = key_for(prefix, wrap(msg))
    except ValueError as exc:
        raise Poison(f"holds no usable {kind} ({exc})") from None
    if named != key:
        raise Poison(f"holds a {kind} that belongs at {named}")
    if not VALIDATE_STORED:
        return msg
    from meshgate.control.validation import validate, validate_api  # imports this module

    try:
        if isinstance(msg, resources_pb2.Deployment):
            validate_api(
                resources_pb2.Api(
                    metadata=resources_pb2.ObjectMeta(name=msg.spec.api, namespace=msg.metadata.namespace),
                    spec=msg.spec.api_spec,
                )
            )
        else:
            validate(wrap(msg))
    except Exception as exc:  # InvalidConfig, or a validator that trips over what no apply would write
        raise Poison(f"fails validation: {exc}") from None
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
    # connected sidecars (from their status keys): node id -> Node; membership, selectors' inputs
    # (namespace, labels) and the advertise address matter here
    sidecars: dict[str, control_pb2.Node] = field(default_factory=dict)
    # the same keys' full status (ACKs, NACKs), for whoever reports what the sidecars applied
    statuses: dict[str, control_pb2.SidecarStatus] = field(default_factory=dict)
    # the key that MACs @connections ids (b"" until control has made it)
    connection_id_key: bytes = b""
    # the etcd revision of the last change to the resources or the set of sidecars (or of the load)
    revision: int = 0
    # keys whose stored value cannot be used -> why: skipped, their last good version (if any) kept
    poisoned: dict[str, str] = field(default_factory=dict)

    def put(self, key: str, value: bytes) -> bool:
        """Apply a put event; returns True when it changed a resource, the set of sidecars (or what a
        snapshot says of one) or the connection id key. A value that cannot be used changes nothing:
        its key goes into `poisoned` (a later usable put or a delete takes it out)."""
        try:
            changed = self._put(key, value)
        except Exception as exc:  # Poison, or anything else a bad value trips: never the whole watch
            self.poisoned[key] = str(exc) if isinstance(exc, Poison) else f"{type(exc).__name__}: {exc}"
            return False
        self.poisoned.pop(key, None)
        return changed

    def _put(self, key: str, value: bytes) -> bool:
        parts = parse_key(self.prefix, key)
        if parts is None or parts.kind == SEQ:
            return False
        if parts.kind == SECRET:
            if parts.name != CONNECTION_ID_KEY or value == self.connection_id_key:
                return False
            self.connection_id_key = value
            return True
        if parts.kind == SIDECAR:
            try:
                status = control_pb2.SidecarStatus.FromString(value)
            except DecodeError as exc:
                raise Poison(f"does not decode as a SidecarStatus ({exc})") from None
            self.statuses[parts.name] = status
            node, old = status.node, self.sidecars.get(parts.name)
            if (
                old is not None
                and old.namespace == node.namespace
                and dict(old.labels) == dict(node.labels)
                and old.advertise == node.advertise
            ):
                return False
            self.sidecars[parts.name] = node
            return True
        msg = check_stored(self.prefix, key, value)
        if msg is None:
            return False
        self._store(msg)
        return True

    def keep_last_good(self, old: State) -> None:
        """After a reload: each poisoned key keeps the version `old` (the state before) had of it."""
        for key in self.poisoned:
            msg = old.resource(key)
            if msg is not None:
                self._store(msg)

    def delete(self, key: str) -> bool:
        """Apply a delete event; returns True when it removed a resource or a sidecar."""
        self.poisoned.pop(key, None)
        parts = parse_key(self.prefix, key)
        if parts is None or parts.kind == SEQ:
            return False
        if parts.kind == SECRET:
            had = parts.name == CONNECTION_ID_KEY and bool(self.connection_id_key)
            if had:
                self.connection_id_key = b""
            return had
        if parts.kind == SIDECAR:
            self.statuses.pop(parts.name, None)
            return self.sidecars.pop(parts.name, None) is not None
        table, ident = self._slot(parts)
        return table.pop(ident, None) is not None

    def resource(self, key: str) -> ResourceMsg | None:
        """The resource stored at an etcd key, if any."""
        parts = parse_key(self.prefix, key)
        if parts is None or parts.kind in (SIDECAR, SEQ, SECRET):
            return None
        table, ident = self._slot(parts)
        found: ResourceMsg | None = table.get(ident)
        return found

    def _slot(self, parts: KeyParts) -> tuple[dict[Any, Any], tuple[str | int, ...]]:
        """The table and entry of a resource key."""
        if parts.kind == "Api":
            return self.apis, (parts.namespace, parts.name)
        if parts.kind == "Stage":
            return self.stages, (parts.namespace, parts.api, parts.name)
        if parts.kind == "Deployment":
            return self.deployments, (parts.namespace, parts.api, parts.deployment)
        if parts.kind == "UsagePlan":
            return self.usage_plans, (parts.namespace, parts.name)
        return self.api_keys, (parts.namespace, parts.name)

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


def parts_of(prefix: str, key: str) -> KeyParts:
    parts = parse_key(prefix, key)
    if parts is None:
        raise ValueError(f"unexpected key {key!r} under {prefix!r}")
    return parts
