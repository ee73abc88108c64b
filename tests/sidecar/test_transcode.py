"""REST -> gRPC transcoding through the real listener against a grpcio server: path, query and body
mapping, JSON responses, gRPC status -> HTTP status, and descriptor sets that cannot be compiled."""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from meshgate.sidecar.routing import CompileError, compile_snapshot
from meshgate.sidecar.runtime import Runtime

from .conftest import Gateway, LoopThread, bundle, snapshot


def descriptor_set() -> bytes:
    f = descriptor_pb2.FileDescriptorProto(name="pets.proto", package="demo", syntax="proto3")
    req = f.message_type.add(name="GetPetRequest")
    req.field.add(name="id", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING, label=1)
    req.field.add(name="view", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING, label=1)
    pet = f.message_type.add(name="Pet")
    pet.field.add(name="id", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING, label=1)
    pet.field.add(name="name", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING, label=1)
    pet.field.add(name="age", number=3, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT32, label=1)
    svc = f.service.add(name="Pets")
    svc.method.add(name="GetPet", input_type=".demo.GetPetRequest", output_type=".demo.Pet")
    svc.method.add(name="CreatePet", input_type=".demo.Pet", output_type=".demo.Pet")
    svc.method.add(
        name="WatchPets", input_type=".demo.GetPetRequest", output_type=".demo.Pet", server_streaming=True
    )
    return descriptor_pb2.FileDescriptorSet(file=[f]).SerializeToString()


DS = descriptor_set()
_pool = descriptor_pool.DescriptorPool()
for _f in descriptor_pb2.FileDescriptorSet.FromString(DS).file:
    _pool.Add(_f)
GetPetRequest = message_factory.GetMessageClass(_pool.FindMessageTypeByName("demo.GetPetRequest"))
Pet = message_factory.GetMessageClass(_pool.FindMessageTypeByName("demo.Pet"))


@pytest.fixture
def pets_service(lt: LoopThread) -> Iterator[int]:
    async def get_pet(req: Any, ctx: Any) -> Any:
        if req.id == "404":
            await ctx.abort(grpc.StatusCode.NOT_FOUND, f"no pet {req.id}")
        md = dict(ctx.invocation_metadata())
        return Pet(id=req.id, name=f"{req.view}:{md.get('authorization', '-')}", age=3)

    async def create_pet(req: Any, ctx: Any) -> Any:
        return Pet(id="new", name=req.name, age=req.age + 1)

    handler = grpc.method_handlers_generic_handler(
        "demo.Pets",
        {
            "GetPet": grpc.unary_unary_rpc_method_handler(
                get_pet, GetPetRequest.FromString, Pet.SerializeToString
            ),
            "CreatePet": grpc.unary_unary_rpc_method_handler(
                create_pet, Pet.FromString, Pet.SerializeToString
            ),
        },
    )

    async def go() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = lt.run(go())
    yield port
    lt.run(server.stop(0))


def routes(port: int) -> list[dict[str, Any]]:
    ds = base64.b64encode(DS).decode()
    integ = {"type": "grpc", "uri": f"grpc://127.0.0.1:{port}", "descriptorSet": ds}
    return [
        {
            "method": "GET",
            "path": "/v1/pets/{id}",
            "integration": {**integ, "grpcMethod": "demo.Pets/GetPet"},
        },
        {"method": "POST", "path": "/v1/pets", "integration": {**integ, "grpcMethod": "demo.Pets/CreatePet"}},
    ]


def call(port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def test_rest_calls_grpc_and_gets_json(gateway: Gateway, pets_service: int) -> None:
    snap = snapshot(bundle(routes(pets_service)))
    gateway.start(snap)
    runtime = Runtime()
    gateway.on_stop.append(runtime.close)
    gateway.holder.table = compile_snapshot(snap, runtime)
    status, data = call(
        gateway.port, "GET", "/prod/v1/pets/7?view=full", headers={"Authorization": "Bearer t"}
    )
    assert status == 200 and json.loads(data) == {"id": "7", "name": "full:Bearer t", "age": 3}
    status, data = call(gateway.port, "POST", "/prod/v1/pets", json.dumps({"name": "rex", "age": 4}).encode())
    assert status == 200 and json.loads(data) == {"id": "new", "name": "rex", "age": 5}
    status, data = call(gateway.port, "GET", "/prod/v1/pets/404")
    assert status == 404 and json.loads(data)["reason"] == "gRPC NOT_FOUND: no pet 404"
    status, data = call(gateway.port, "POST", "/prod/v1/pets", b'{"name": "rex", "wings": 2}')
    assert status == 400 and "demo.Pet" in json.loads(data)["reason"]
    status, data = call(gateway.port, "POST", "/prod/v1/pets", b'{"age": "old"}')
    assert status == 400


def test_grpc_service_down_is_503(gateway: Gateway) -> None:
    snap = snapshot(bundle(routes(1)))
    gateway.start(snap)
    status, data = call(gateway.port, "GET", "/prod/v1/pets/1")
    assert status == 503 and "unavailable" in json.loads(data)["reason"]


@pytest.mark.parametrize(
    ("method", "ds", "why"),
    [
        ("demo.Pets/Nope", DS, "has no method"),
        ("demo.Pets/WatchPets", DS, "streaming"),
        ("demo.Other/GetPet", DS, "descriptorSet"),
        ("demo.Pets/GetPet", b"not a descriptor set", "descriptorSet"),
    ],
)
def test_bad_transcoding_config_cannot_compile(method: str, ds: bytes, why: str) -> None:
    route = {
        "method": "GET",
        "path": "/x",
        "integration": {
            "type": "grpc",
            "uri": "grpc://h:1",
            "grpcMethod": method,
            "descriptorSet": base64.b64encode(ds).decode(),
        },
    }
    with pytest.raises(CompileError, match=why):
        compile_snapshot(snapshot(bundle([route])))
