from meshgate.v1 import resources_pb2 as _resources_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Node(_message.Message):
    __slots__ = ("id", "pod", "namespace", "labels", "version", "advertise", "identity")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    POD_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ADVERTISE_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    id: str
    pod: str
    namespace: str
    labels: _containers.ScalarMap[str, str]
    version: str
    advertise: str
    identity: str
    def __init__(self, id: _Optional[str] = ..., pod: _Optional[str] = ..., namespace: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., version: _Optional[str] = ..., advertise: _Optional[str] = ..., identity: _Optional[str] = ...) -> None: ...

class StageBundle(_message.Message):
    __slots__ = ("api", "stage", "deployment", "canary_deployment", "replicas")
    API_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    CANARY_DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    api: _resources_pb2.Api
    stage: _resources_pb2.Stage
    deployment: _resources_pb2.Deployment
    canary_deployment: _resources_pb2.Deployment
    replicas: int
    def __init__(self, api: _Optional[_Union[_resources_pb2.Api, _Mapping]] = ..., stage: _Optional[_Union[_resources_pb2.Stage, _Mapping]] = ..., deployment: _Optional[_Union[_resources_pb2.Deployment, _Mapping]] = ..., canary_deployment: _Optional[_Union[_resources_pb2.Deployment, _Mapping]] = ..., replicas: _Optional[int] = ...) -> None: ...

class Peer(_message.Message):
    __slots__ = ("node_id", "advertise")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADVERTISE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    advertise: str
    def __init__(self, node_id: _Optional[str] = ..., advertise: _Optional[str] = ...) -> None: ...

class ConnectionPeers(_message.Message):
    __slots__ = ("api", "peers")
    API_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    api: str
    peers: _containers.RepeatedCompositeFieldContainer[Peer]
    def __init__(self, api: _Optional[str] = ..., peers: _Optional[_Iterable[_Union[Peer, _Mapping]]] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("version", "nonce", "source_time_unix_nano", "stages", "usage_plans", "api_keys", "control_id", "cluster_cidrs", "connection_id_key", "connection_peers", "node_id", "api_key_hash_key")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TIME_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    USAGE_PLANS_FIELD_NUMBER: _ClassVar[int]
    API_KEYS_FIELD_NUMBER: _ClassVar[int]
    CONTROL_ID_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_CIDRS_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_ID_KEY_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_PEERS_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    API_KEY_HASH_KEY_FIELD_NUMBER: _ClassVar[int]
    version: str
    nonce: str
    source_time_unix_nano: int
    stages: _containers.RepeatedCompositeFieldContainer[StageBundle]
    usage_plans: _containers.RepeatedCompositeFieldContainer[_resources_pb2.UsagePlan]
    api_keys: _containers.RepeatedCompositeFieldContainer[_resources_pb2.ApiKey]
    control_id: str
    cluster_cidrs: _containers.RepeatedScalarFieldContainer[str]
    connection_id_key: bytes
    connection_peers: _containers.RepeatedCompositeFieldContainer[ConnectionPeers]
    node_id: str
    api_key_hash_key: bytes
    def __init__(self, version: _Optional[str] = ..., nonce: _Optional[str] = ..., source_time_unix_nano: _Optional[int] = ..., stages: _Optional[_Iterable[_Union[StageBundle, _Mapping]]] = ..., usage_plans: _Optional[_Iterable[_Union[_resources_pb2.UsagePlan, _Mapping]]] = ..., api_keys: _Optional[_Iterable[_Union[_resources_pb2.ApiKey, _Mapping]]] = ..., control_id: _Optional[str] = ..., cluster_cidrs: _Optional[_Iterable[str]] = ..., connection_id_key: _Optional[bytes] = ..., connection_peers: _Optional[_Iterable[_Union[ConnectionPeers, _Mapping]]] = ..., node_id: _Optional[str] = ..., api_key_hash_key: _Optional[bytes] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("version", "nonce", "error")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    version: str
    nonce: str
    error: str
    def __init__(self, version: _Optional[str] = ..., nonce: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("node", "ack")
    NODE_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    node: Node
    ack: Ack
    def __init__(self, node: _Optional[_Union[Node, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ...) -> None: ...

class ApplyRequest(_message.Message):
    __slots__ = ("resources", "dry_run")
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    resources: _containers.RepeatedCompositeFieldContainer[_resources_pb2.Resource]
    dry_run: bool
    def __init__(self, resources: _Optional[_Iterable[_Union[_resources_pb2.Resource, _Mapping]]] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class ApplyResult(_message.Message):
    __slots__ = ("kind", "namespace", "name", "action")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    kind: str
    namespace: str
    name: str
    action: str
    def __init__(self, kind: _Optional[str] = ..., namespace: _Optional[str] = ..., name: _Optional[str] = ..., action: _Optional[str] = ...) -> None: ...

class ApplyResponse(_message.Message):
    __slots__ = ("results", "revision")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ApplyResult]
    revision: int
    def __init__(self, results: _Optional[_Iterable[_Union[ApplyResult, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class FieldError(_message.Message):
    __slots__ = ("index", "resource", "field", "message")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    resource: str
    field: str
    message: str
    def __init__(self, index: _Optional[int] = ..., resource: _Optional[str] = ..., field: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class FieldErrors(_message.Message):
    __slots__ = ("errors",)
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    errors: _containers.RepeatedCompositeFieldContainer[FieldError]
    def __init__(self, errors: _Optional[_Iterable[_Union[FieldError, _Mapping]]] = ...) -> None: ...

class ObjectRef(_message.Message):
    __slots__ = ("kind", "namespace", "name", "api")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    API_FIELD_NUMBER: _ClassVar[int]
    kind: str
    namespace: str
    name: str
    api: str
    def __init__(self, kind: _Optional[str] = ..., namespace: _Optional[str] = ..., name: _Optional[str] = ..., api: _Optional[str] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("ref",)
    REF_FIELD_NUMBER: _ClassVar[int]
    ref: ObjectRef
    def __init__(self, ref: _Optional[_Union[ObjectRef, _Mapping]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("revision",)
    REVISION_FIELD_NUMBER: _ClassVar[int]
    revision: int
    def __init__(self, revision: _Optional[int] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("kind", "namespace", "name", "api")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    API_FIELD_NUMBER: _ClassVar[int]
    kind: str
    namespace: str
    name: str
    api: str
    def __init__(self, kind: _Optional[str] = ..., namespace: _Optional[str] = ..., name: _Optional[str] = ..., api: _Optional[str] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("resources",)
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    resources: _containers.RepeatedCompositeFieldContainer[_resources_pb2.Resource]
    def __init__(self, resources: _Optional[_Iterable[_Union[_resources_pb2.Resource, _Mapping]]] = ...) -> None: ...

class DeployRequest(_message.Message):
    __slots__ = ("namespace", "api", "stage", "description", "skip_canary", "create_stage")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    API_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SKIP_CANARY_FIELD_NUMBER: _ClassVar[int]
    CREATE_STAGE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    api: str
    stage: str
    description: str
    skip_canary: bool
    create_stage: bool
    def __init__(self, namespace: _Optional[str] = ..., api: _Optional[str] = ..., stage: _Optional[str] = ..., description: _Optional[str] = ..., skip_canary: _Optional[bool] = ..., create_stage: _Optional[bool] = ...) -> None: ...

class DeployResponse(_message.Message):
    __slots__ = ("deployment", "to_canary", "revision")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    TO_CANARY_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    deployment: int
    to_canary: bool
    revision: int
    def __init__(self, deployment: _Optional[int] = ..., to_canary: _Optional[bool] = ..., revision: _Optional[int] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("namespace", "api", "stage", "deployment")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    API_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    api: str
    stage: str
    deployment: int
    def __init__(self, namespace: _Optional[str] = ..., api: _Optional[str] = ..., stage: _Optional[str] = ..., deployment: _Optional[int] = ...) -> None: ...

class RollbackResponse(_message.Message):
    __slots__ = ("deployment", "revision")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    deployment: int
    revision: int
    def __init__(self, deployment: _Optional[int] = ..., revision: _Optional[int] = ...) -> None: ...

class CanaryRequest(_message.Message):
    __slots__ = ("namespace", "api", "stage", "canary")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    API_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    api: str
    stage: str
    canary: _resources_pb2.CanarySettings
    def __init__(self, namespace: _Optional[str] = ..., api: _Optional[str] = ..., stage: _Optional[str] = ..., canary: _Optional[_Union[_resources_pb2.CanarySettings, _Mapping]] = ...) -> None: ...

class CanaryResponse(_message.Message):
    __slots__ = ("stage", "revision")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    stage: _resources_pb2.Stage
    revision: int
    def __init__(self, stage: _Optional[_Union[_resources_pb2.Stage, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class SidecarStatus(_message.Message):
    __slots__ = ("node", "control_id", "acked_version", "last_nack_version", "last_nack_error", "connected_unix_nano", "last_ack_unix_nano", "last_apply_latency_ms", "nack_count", "sent_version")
    NODE_FIELD_NUMBER: _ClassVar[int]
    CONTROL_ID_FIELD_NUMBER: _ClassVar[int]
    ACKED_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_NACK_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_NACK_ERROR_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    LAST_ACK_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    LAST_APPLY_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    NACK_COUNT_FIELD_NUMBER: _ClassVar[int]
    SENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    node: Node
    control_id: str
    acked_version: str
    last_nack_version: str
    last_nack_error: str
    connected_unix_nano: int
    last_ack_unix_nano: int
    last_apply_latency_ms: float
    nack_count: int
    sent_version: str
    def __init__(self, node: _Optional[_Union[Node, _Mapping]] = ..., control_id: _Optional[str] = ..., acked_version: _Optional[str] = ..., last_nack_version: _Optional[str] = ..., last_nack_error: _Optional[str] = ..., connected_unix_nano: _Optional[int] = ..., last_ack_unix_nano: _Optional[int] = ..., last_apply_latency_ms: _Optional[float] = ..., nack_count: _Optional[int] = ..., sent_version: _Optional[str] = ...) -> None: ...

class FlushStageCacheRequest(_message.Message):
    __slots__ = ("namespace", "api", "stage")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    API_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    api: str
    stage: str
    def __init__(self, namespace: _Optional[str] = ..., api: _Optional[str] = ..., stage: _Optional[str] = ...) -> None: ...

class CertificateRequest(_message.Message):
    __slots__ = ("csr_pem", "node")
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    csr_pem: bytes
    node: Node
    def __init__(self, csr_pem: _Optional[bytes] = ..., node: _Optional[_Union[Node, _Mapping]] = ...) -> None: ...

class CertificateResponse(_message.Message):
    __slots__ = ("certificate_pem", "ca_pem", "not_after_unix", "identity")
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_UNIX_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    certificate_pem: bytes
    ca_pem: bytes
    not_after_unix: int
    identity: str
    def __init__(self, certificate_pem: _Optional[bytes] = ..., ca_pem: _Optional[bytes] = ..., not_after_unix: _Optional[int] = ..., identity: _Optional[str] = ...) -> None: ...

class ListSidecarsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSidecarsResponse(_message.Message):
    __slots__ = ("sidecars",)
    SIDECARS_FIELD_NUMBER: _ClassVar[int]
    sidecars: _containers.RepeatedCompositeFieldContainer[SidecarStatus]
    def __init__(self, sidecars: _Optional[_Iterable[_Union[SidecarStatus, _Mapping]]] = ...) -> None: ...
