"""REST -> gRPC transcoding: a REST route calls a unary gRPC method described by a descriptor set.

The JSON body (or one field of it), path and query parameters fill the
request message; the response message comes back as JSON; a gRPC status maps
to the HTTP status grpc-gateway and Envoy's transcoder use (`errors.HTTP_FOR_GRPC`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import Message

if TYPE_CHECKING:
    from meshgate.sidecar.grpc_client import Channel

_CHANNELS: dict[tuple[str, int], Channel] = {}


def channel(host: str, port: int, connect_timeout_s: float) -> Channel:
    """One channel (one HTTP/2 connection, h2c) per upstream, shared by every transcoded call."""
    ch = _CHANNELS.get((host, port))
    if ch is None:
        from meshgate.sidecar.grpc_client import Channel

        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        ch = _CHANNELS[(host, port)] = Channel(
            address, None, keepalive_s=None, connect_timeout_s=connect_timeout_s
        )
    return ch


class TranscodeError(ValueError):
    """Config that cannot be transcoded (NACKed) or a request that does not fit the message (400)."""


@dataclass(frozen=True)
class Transcoder:
    method_path: str  # "/pkg.Service/Method"
    request_cls: Any
    response_cls: Any
    body: str  # "*", "" or a field name

    @classmethod
    def compile(cls, grpc_method: str, descriptor_set: bytes, body: str) -> Transcoder:
        service_name, _, method_name = grpc_method.strip("/").partition("/")
        if not service_name or not method_name:
            raise TranscodeError(f"grpcMethod must be package.Service/Method, got {grpc_method!r}")
        fds = descriptor_pb2.FileDescriptorSet()
        try:
            fds.ParseFromString(descriptor_set)
            pool = descriptor_pool.DescriptorPool()
            for f in fds.file:
                pool.Add(f)
            service = pool.FindServiceByName(service_name)
        except Exception as exc:
            raise TranscodeError(f"descriptorSet: {type(exc).__name__}: {exc}") from None
        method = service.methods_by_name.get(method_name)
        if method is None:
            raise TranscodeError(f"service {service_name} has no method {method_name}")
        if method.client_streaming or method.server_streaming:
            raise TranscodeError(f"{grpc_method} is a streaming method: only unary methods are transcoded")
        req_cls = message_factory.GetMessageClass(method.input_type)
        resp_cls = message_factory.GetMessageClass(method.output_type)
        body = body or "*"
        if body not in ("*", "-") and body not in method.input_type.fields_by_name:
            raise TranscodeError(f"body field {body!r} is not a field of {method.input_type.full_name}")
        return cls(f"/{service_name}/{method_name}", req_cls, resp_cls, body)

    def request(self, body: bytes, path_params: Mapping[str, str], query: Mapping[str, str]) -> bytes:
        doc: dict[str, Any] = {}
        if body.strip() and self.body != "-":
            try:
                parsed = json.loads(body)
            except (ValueError, RecursionError) as exc:
                raise TranscodeError(f"request body is not valid JSON: {str(exc)[:200]}") from None
            if self.body == "*":
                if not isinstance(parsed, dict):
                    raise TranscodeError("request body must be a JSON object")
                doc.update(parsed)
            else:
                doc[self.body] = parsed
        fields = self.request_cls.DESCRIPTOR.fields_by_name
        for source in (query, path_params):  # path parameters win
            for name, value in source.items():
                field = fields.get(name) or next((f for f in fields.values() if f.json_name == name), None)
                if field is not None:
                    doc[field.name] = value
        msg: Message = self.request_cls()
        try:
            json_format.ParseDict(doc, msg)
        except json_format.ParseError as exc:
            raise TranscodeError(
                f"request does not fit {self.request_cls.DESCRIPTOR.full_name}: {str(exc).splitlines()[0]}"
            ) from None
        return bytes(msg.SerializeToString())

    def response(self, data: bytes) -> bytes:
        msg: Message = self.response_cls()
        msg.ParseFromString(data)
        return json.dumps(json_format.MessageToDict(msg)).encode()
