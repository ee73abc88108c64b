from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ObjectMeta(_message.Message):
    __slots__ = ("name", "namespace", "labels", "annotations", "revision", "update_time_unix_nano", "generation", "creation_time_unix_nano")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class AnnotationsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ANNOTATIONS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CREATION_TIME_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    labels: _containers.ScalarMap[str, str]
    annotations: _containers.ScalarMap[str, str]
    revision: int
    update_time_unix_nano: int
    generation: int
    creation_time_unix_nano: int
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., annotations: _Optional[_Mapping[str, str]] = ..., revision: _Optional[int] = ..., update_time_unix_nano: _Optional[int] = ..., generation: _Optional[int] = ..., creation_time_unix_nano: _Optional[int] = ...) -> None: ...

class Selector(_message.Message):
    __slots__ = ("namespaces", "match_labels")
    class MatchLabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    MATCH_LABELS_FIELD_NUMBER: _ClassVar[int]
    namespaces: _containers.RepeatedScalarFieldContainer[str]
    match_labels: _containers.ScalarMap[str, str]
    def __init__(self, namespaces: _Optional[_Iterable[str]] = ..., match_labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class MockResponse(_message.Message):
    __slots__ = ("status", "headers", "body")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STATUS_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    status: int
    headers: _containers.ScalarMap[str, str]
    body: str
    def __init__(self, status: _Optional[int] = ..., headers: _Optional[_Mapping[str, str]] = ..., body: _Optional[str] = ...) -> None: ...

class IntegrationResponse(_message.Message):
    __slots__ = ("selection_pattern", "status", "response_parameters", "response_templates")
    class ResponseParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ResponseTemplatesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SELECTION_PATTERN_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    selection_pattern: str
    status: int
    response_parameters: _containers.ScalarMap[str, str]
    response_templates: _containers.ScalarMap[str, str]
    def __init__(self, selection_pattern: _Optional[str] = ..., status: _Optional[int] = ..., response_parameters: _Optional[_Mapping[str, str]] = ..., response_templates: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Integration(_message.Message):
    __slots__ = ("type", "uri", "http_method", "timeout_ms", "connect_timeout_ms", "request_parameters", "mock", "request_templates", "passthrough_behavior", "payload_format_version", "response_parameters", "response_templates", "remove_request_parameters", "remove_response_headers", "idle_timeout_ms", "max_duration_ms", "max_message_bytes", "grpc_method", "descriptor_set", "body", "route_selection_expression", "websocket_routes", "template_language", "responses", "proxy")
    class RequestParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class RequestTemplatesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ResponseParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ResponseTemplatesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class WebsocketRoutesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Integration
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Integration, _Mapping]] = ...) -> None: ...
    TYPE_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    HTTP_METHOD_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    CONNECT_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    MOCK_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    PASSTHROUGH_BEHAVIOR_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    REMOVE_REQUEST_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    REMOVE_RESPONSE_HEADERS_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    GRPC_METHOD_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTOR_SET_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    ROUTE_SELECTION_EXPRESSION_FIELD_NUMBER: _ClassVar[int]
    WEBSOCKET_ROUTES_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    PROXY_FIELD_NUMBER: _ClassVar[int]
    type: str
    uri: str
    http_method: str
    timeout_ms: int
    connect_timeout_ms: int
    request_parameters: _containers.ScalarMap[str, str]
    mock: MockResponse
    request_templates: _containers.ScalarMap[str, str]
    passthrough_behavior: str
    payload_format_version: str
    response_parameters: _containers.ScalarMap[str, str]
    response_templates: _containers.ScalarMap[str, str]
    remove_request_parameters: _containers.RepeatedScalarFieldContainer[str]
    remove_response_headers: _containers.RepeatedScalarFieldContainer[str]
    idle_timeout_ms: int
    max_duration_ms: int
    max_message_bytes: int
    grpc_method: str
    descriptor_set: bytes
    body: str
    route_selection_expression: str
    websocket_routes: _containers.MessageMap[str, Integration]
    template_language: str
    responses: _containers.RepeatedCompositeFieldContainer[IntegrationResponse]
    proxy: bool
    def __init__(self, type: _Optional[str] = ..., uri: _Optional[str] = ..., http_method: _Optional[str] = ..., timeout_ms: _Optional[int] = ..., connect_timeout_ms: _Optional[int] = ..., request_parameters: _Optional[_Mapping[str, str]] = ..., mock: _Optional[_Union[MockResponse, _Mapping]] = ..., request_templates: _Optional[_Mapping[str, str]] = ..., passthrough_behavior: _Optional[str] = ..., payload_format_version: _Optional[str] = ..., response_parameters: _Optional[_Mapping[str, str]] = ..., response_templates: _Optional[_Mapping[str, str]] = ..., remove_request_parameters: _Optional[_Iterable[str]] = ..., remove_response_headers: _Optional[_Iterable[str]] = ..., idle_timeout_ms: _Optional[int] = ..., max_duration_ms: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., grpc_method: _Optional[str] = ..., descriptor_set: _Optional[bytes] = ..., body: _Optional[str] = ..., route_selection_expression: _Optional[str] = ..., websocket_routes: _Optional[_Mapping[str, Integration]] = ..., template_language: _Optional[str] = ..., responses: _Optional[_Iterable[_Union[IntegrationResponse, _Mapping]]] = ..., proxy: _Optional[bool] = ...) -> None: ...

class RouteThrottle(_message.Message):
    __slots__ = ("rate_limit", "burst_limit")
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    BURST_LIMIT_FIELD_NUMBER: _ClassVar[int]
    rate_limit: float
    burst_limit: int
    def __init__(self, rate_limit: _Optional[float] = ..., burst_limit: _Optional[int] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("method", "path", "integration", "authorizer", "api_key_required", "throttling", "request_model", "cache_key_parameters", "operation_name", "authorization_scopes", "required_parameters", "cache_shared", "ports")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    INTEGRATION_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZER_FIELD_NUMBER: _ClassVar[int]
    API_KEY_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    THROTTLING_FIELD_NUMBER: _ClassVar[int]
    REQUEST_MODEL_FIELD_NUMBER: _ClassVar[int]
    CACHE_KEY_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    OPERATION_NAME_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_SCOPES_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    CACHE_SHARED_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    method: str
    path: str
    integration: Integration
    authorizer: str
    api_key_required: bool
    throttling: RouteThrottle
    request_model: str
    cache_key_parameters: _containers.RepeatedScalarFieldContainer[str]
    operation_name: str
    authorization_scopes: _containers.RepeatedScalarFieldContainer[str]
    required_parameters: _containers.RepeatedScalarFieldContainer[str]
    cache_shared: bool
    ports: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, method: _Optional[str] = ..., path: _Optional[str] = ..., integration: _Optional[_Union[Integration, _Mapping]] = ..., authorizer: _Optional[str] = ..., api_key_required: _Optional[bool] = ..., throttling: _Optional[_Union[RouteThrottle, _Mapping]] = ..., request_model: _Optional[str] = ..., cache_key_parameters: _Optional[_Iterable[str]] = ..., operation_name: _Optional[str] = ..., authorization_scopes: _Optional[_Iterable[str]] = ..., required_parameters: _Optional[_Iterable[str]] = ..., cache_shared: _Optional[bool] = ..., ports: _Optional[_Iterable[int]] = ...) -> None: ...

class Authorizer(_message.Message):
    __slots__ = ("name", "type", "issuer", "audiences", "jwks_uri", "uri", "identity_sources", "result_ttl_seconds", "claims_to_headers", "clock_skew_seconds", "timeout_ms", "algorithms")
    class ClaimsToHeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    AUDIENCES_FIELD_NUMBER: _ClassVar[int]
    JWKS_URI_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_SOURCES_FIELD_NUMBER: _ClassVar[int]
    RESULT_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CLAIMS_TO_HEADERS_FIELD_NUMBER: _ClassVar[int]
    CLOCK_SKEW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    ALGORITHMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    issuer: str
    audiences: _containers.RepeatedScalarFieldContainer[str]
    jwks_uri: str
    uri: str
    identity_sources: _containers.RepeatedScalarFieldContainer[str]
    result_ttl_seconds: int
    claims_to_headers: _containers.ScalarMap[str, str]
    clock_skew_seconds: int
    timeout_ms: int
    algorithms: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., issuer: _Optional[str] = ..., audiences: _Optional[_Iterable[str]] = ..., jwks_uri: _Optional[str] = ..., uri: _Optional[str] = ..., identity_sources: _Optional[_Iterable[str]] = ..., result_ttl_seconds: _Optional[int] = ..., claims_to_headers: _Optional[_Mapping[str, str]] = ..., clock_skew_seconds: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., algorithms: _Optional[_Iterable[str]] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("name", "content_type", "schema_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    content_type: str
    schema_json: str
    def __init__(self, name: _Optional[str] = ..., content_type: _Optional[str] = ..., schema_json: _Optional[str] = ...) -> None: ...

class ApiSpec(_message.Message):
    __slots__ = ("description", "endpoint_type", "selector", "base_path", "routes", "authorizers", "models", "binary_media_types", "resource_policy", "cors", "gateway_responses", "escaped_slashes_action", "template_language")
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    BASE_PATH_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZERS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    BINARY_MEDIA_TYPES_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_POLICY_FIELD_NUMBER: _ClassVar[int]
    CORS_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_RESPONSES_FIELD_NUMBER: _ClassVar[int]
    ESCAPED_SLASHES_ACTION_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    description: str
    endpoint_type: str
    selector: Selector
    base_path: str
    routes: _containers.RepeatedCompositeFieldContainer[Route]
    authorizers: _containers.RepeatedCompositeFieldContainer[Authorizer]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    binary_media_types: _containers.RepeatedScalarFieldContainer[str]
    resource_policy: ResourcePolicy
    cors: Cors
    gateway_responses: _containers.RepeatedCompositeFieldContainer[GatewayResponse]
    escaped_slashes_action: str
    template_language: str
    def __init__(self, description: _Optional[str] = ..., endpoint_type: _Optional[str] = ..., selector: _Optional[_Union[Selector, _Mapping]] = ..., base_path: _Optional[str] = ..., routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ..., authorizers: _Optional[_Iterable[_Union[Authorizer, _Mapping]]] = ..., models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., binary_media_types: _Optional[_Iterable[str]] = ..., resource_policy: _Optional[_Union[ResourcePolicy, _Mapping]] = ..., cors: _Optional[_Union[Cors, _Mapping]] = ..., gateway_responses: _Optional[_Iterable[_Union[GatewayResponse, _Mapping]]] = ..., escaped_slashes_action: _Optional[str] = ..., template_language: _Optional[str] = ...) -> None: ...

class Cors(_message.Message):
    __slots__ = ("allow_origins", "allow_methods", "allow_headers", "expose_headers", "allow_credentials", "max_age_seconds")
    ALLOW_ORIGINS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_METHODS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_HEADERS_FIELD_NUMBER: _ClassVar[int]
    EXPOSE_HEADERS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    MAX_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    allow_origins: _containers.RepeatedScalarFieldContainer[str]
    allow_methods: _containers.RepeatedScalarFieldContainer[str]
    allow_headers: _containers.RepeatedScalarFieldContainer[str]
    expose_headers: _containers.RepeatedScalarFieldContainer[str]
    allow_credentials: bool
    max_age_seconds: int
    def __init__(self, allow_origins: _Optional[_Iterable[str]] = ..., allow_methods: _Optional[_Iterable[str]] = ..., allow_headers: _Optional[_Iterable[str]] = ..., expose_headers: _Optional[_Iterable[str]] = ..., allow_credentials: _Optional[bool] = ..., max_age_seconds: _Optional[int] = ...) -> None: ...

class GatewayResponse(_message.Message):
    __slots__ = ("type", "status", "headers", "body_template")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    BODY_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    type: str
    status: int
    headers: _containers.ScalarMap[str, str]
    body_template: str
    def __init__(self, type: _Optional[str] = ..., status: _Optional[int] = ..., headers: _Optional[_Mapping[str, str]] = ..., body_template: _Optional[str] = ...) -> None: ...

class ResourcePolicy(_message.Message):
    __slots__ = ("allow_cidrs", "deny_cidrs")
    ALLOW_CIDRS_FIELD_NUMBER: _ClassVar[int]
    DENY_CIDRS_FIELD_NUMBER: _ClassVar[int]
    allow_cidrs: _containers.RepeatedScalarFieldContainer[str]
    deny_cidrs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, allow_cidrs: _Optional[_Iterable[str]] = ..., deny_cidrs: _Optional[_Iterable[str]] = ...) -> None: ...

class Api(_message.Message):
    __slots__ = ("api_version", "kind", "metadata", "spec")
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    api_version: str
    kind: str
    metadata: ObjectMeta
    spec: ApiSpec
    def __init__(self, api_version: _Optional[str] = ..., kind: _Optional[str] = ..., metadata: _Optional[_Union[ObjectMeta, _Mapping]] = ..., spec: _Optional[_Union[ApiSpec, _Mapping]] = ...) -> None: ...

class DeploymentSpec(_message.Message):
    __slots__ = ("api", "description", "api_spec", "created_unix_nano")
    API_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    API_SPEC_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    api: str
    description: str
    api_spec: ApiSpec
    created_unix_nano: int
    def __init__(self, api: _Optional[str] = ..., description: _Optional[str] = ..., api_spec: _Optional[_Union[ApiSpec, _Mapping]] = ..., created_unix_nano: _Optional[int] = ...) -> None: ...

class Deployment(_message.Message):
    __slots__ = ("api_version", "kind", "metadata", "spec", "id")
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    api_version: str
    kind: str
    metadata: ObjectMeta
    spec: DeploymentSpec
    id: int
    def __init__(self, api_version: _Optional[str] = ..., kind: _Optional[str] = ..., metadata: _Optional[_Union[ObjectMeta, _Mapping]] = ..., spec: _Optional[_Union[DeploymentSpec, _Mapping]] = ..., id: _Optional[int] = ...) -> None: ...

class CanarySettings(_message.Message):
    __slots__ = ("deployment", "percent", "variables", "sticky_header", "sticky_cookie")
    class VariablesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    STICKY_HEADER_FIELD_NUMBER: _ClassVar[int]
    STICKY_COOKIE_FIELD_NUMBER: _ClassVar[int]
    deployment: int
    percent: float
    variables: _containers.ScalarMap[str, str]
    sticky_header: str
    sticky_cookie: str
    def __init__(self, deployment: _Optional[int] = ..., percent: _Optional[float] = ..., variables: _Optional[_Mapping[str, str]] = ..., sticky_header: _Optional[str] = ..., sticky_cookie: _Optional[str] = ...) -> None: ...

class StageThrottle(_message.Message):
    __slots__ = ("rate_limit", "burst_limit")
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    BURST_LIMIT_FIELD_NUMBER: _ClassVar[int]
    rate_limit: float
    burst_limit: int
    def __init__(self, rate_limit: _Optional[float] = ..., burst_limit: _Optional[int] = ...) -> None: ...

class StageCache(_message.Message):
    __slots__ = ("enabled", "capacity_bytes", "ttl_seconds", "encrypted", "invalidation", "methods", "flush_epoch")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTED_FIELD_NUMBER: _ClassVar[int]
    INVALIDATION_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    FLUSH_EPOCH_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    capacity_bytes: int
    ttl_seconds: int
    encrypted: bool
    invalidation: str
    methods: _containers.RepeatedScalarFieldContainer[str]
    flush_epoch: int
    def __init__(self, enabled: _Optional[bool] = ..., capacity_bytes: _Optional[int] = ..., ttl_seconds: _Optional[int] = ..., encrypted: _Optional[bool] = ..., invalidation: _Optional[str] = ..., methods: _Optional[_Iterable[str]] = ..., flush_epoch: _Optional[int] = ...) -> None: ...

class StageSpec(_message.Message):
    __slots__ = ("api", "deployment", "variables", "hosts", "canary", "throttling", "cache", "access_log_format", "tracing_sample_ratio", "description", "error_detail", "secret_variables")
    class VariablesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    API_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    THROTTLING_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    ACCESS_LOG_FORMAT_FIELD_NUMBER: _ClassVar[int]
    TRACING_SAMPLE_RATIO_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ERROR_DETAIL_FIELD_NUMBER: _ClassVar[int]
    SECRET_VARIABLES_FIELD_NUMBER: _ClassVar[int]
    api: str
    deployment: int
    variables: _containers.ScalarMap[str, str]
    hosts: _containers.RepeatedScalarFieldContainer[str]
    canary: CanarySettings
    throttling: StageThrottle
    cache: StageCache
    access_log_format: str
    tracing_sample_ratio: float
    description: str
    error_detail: bool
    secret_variables: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, api: _Optional[str] = ..., deployment: _Optional[int] = ..., variables: _Optional[_Mapping[str, str]] = ..., hosts: _Optional[_Iterable[str]] = ..., canary: _Optional[_Union[CanarySettings, _Mapping]] = ..., throttling: _Optional[_Union[StageThrottle, _Mapping]] = ..., cache: _Optional[_Union[StageCache, _Mapping]] = ..., access_log_format: _Optional[str] = ..., tracing_sample_ratio: _Optional[float] = ..., description: _Optional[str] = ..., error_detail: _Optional[bool] = ..., secret_variables: _Optional[_Iterable[str]] = ...) -> None: ...

class Stage(_message.Message):
    __slots__ = ("api_version", "kind", "metadata", "spec")
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    api_version: str
    kind: str
    metadata: ObjectMeta
    spec: StageSpec
    def __init__(self, api_version: _Optional[str] = ..., kind: _Optional[str] = ..., metadata: _Optional[_Union[ObjectMeta, _Mapping]] = ..., spec: _Optional[_Union[StageSpec, _Mapping]] = ...) -> None: ...

class Quota(_message.Message):
    __slots__ = ("limit", "period")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    limit: int
    period: str
    def __init__(self, limit: _Optional[int] = ..., period: _Optional[str] = ...) -> None: ...

class UsagePlanSpec(_message.Message):
    __slots__ = ("apis", "throttle", "quota")
    APIS_FIELD_NUMBER: _ClassVar[int]
    THROTTLE_FIELD_NUMBER: _ClassVar[int]
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    apis: _containers.RepeatedScalarFieldContainer[str]
    throttle: StageThrottle
    quota: Quota
    def __init__(self, apis: _Optional[_Iterable[str]] = ..., throttle: _Optional[_Union[StageThrottle, _Mapping]] = ..., quota: _Optional[_Union[Quota, _Mapping]] = ...) -> None: ...

class UsagePlan(_message.Message):
    __slots__ = ("api_version", "kind", "metadata", "spec")
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    api_version: str
    kind: str
    metadata: ObjectMeta
    spec: UsagePlanSpec
    def __init__(self, api_version: _Optional[str] = ..., kind: _Optional[str] = ..., metadata: _Optional[_Union[ObjectMeta, _Mapping]] = ..., spec: _Optional[_Union[UsagePlanSpec, _Mapping]] = ...) -> None: ...

class ApiKeySpec(_message.Message):
    __slots__ = ("usage_plan", "value_sha256", "enabled", "value_hmac")
    USAGE_PLAN_FIELD_NUMBER: _ClassVar[int]
    VALUE_SHA256_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    VALUE_HMAC_FIELD_NUMBER: _ClassVar[int]
    usage_plan: str
    value_sha256: str
    enabled: bool
    value_hmac: str
    def __init__(self, usage_plan: _Optional[str] = ..., value_sha256: _Optional[str] = ..., enabled: _Optional[bool] = ..., value_hmac: _Optional[str] = ...) -> None: ...

class ApiKey(_message.Message):
    __slots__ = ("api_version", "kind", "metadata", "spec")
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    api_version: str
    kind: str
    metadata: ObjectMeta
    spec: ApiKeySpec
    def __init__(self, api_version: _Optional[str] = ..., kind: _Optional[str] = ..., metadata: _Optional[_Union[ObjectMeta, _Mapping]] = ..., spec: _Optional[_Union[ApiKeySpec, _Mapping]] = ...) -> None: ...

class Resource(_message.Message):
    __slots__ = ("api", "stage", "deployment", "usage_plan", "api_key")
    API_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    USAGE_PLAN_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    api: Api
    stage: Stage
    deployment: Deployment
    usage_plan: UsagePlan
    api_key: ApiKey
    def __init__(self, api: _Optional[_Union[Api, _Mapping]] = ..., stage: _Optional[_Union[Stage, _Mapping]] = ..., deployment: _Optional[_Union[Deployment, _Mapping]] = ..., usage_plan: _Optional[_Union[UsagePlan, _Mapping]] = ..., api_key: _Optional[_Union[ApiKey, _Mapping]] = ...) -> None: ...
