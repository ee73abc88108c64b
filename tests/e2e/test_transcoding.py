"""REST -> gRPC transcoding the user's way (README "gRPC"): REST routes whose `grpc` integration names
`grpcMethod` and carries a descriptor set (built here as `protoc --include_imports
--descriptor_set_out` would, base64 in the YAML), applied with `meshgate apply -f`, deployed, served on
a sidecar's HTTP listener; JSON in, JSON out, gRPC status mapped to HTTP."""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from meshgate.control.etcd_local import LocalEtcd

from .harness import NO_DRAIN, Sidecar, mesh, wait_until

T = descriptor_pb2.FieldDescriptorProto


def descriptor_set() -> bytes:
    f = descriptor_pb2.FileDescriptorProto(name="pets.proto", package="demo", syntax="proto3")
    req = f.message_type.add(name="GetPetRequest")
    req.field.add(name="id", number=1, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    req.field.add(name="view", number=2, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    pet = f.message_type.add(name="Pet")
    pet.field.add(name="id", number=1, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    pet.field.add(name="name", number=2, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    pet.field.add(name="age", number=3, type=T.TYPE_INT32, label=T.LABEL_OPTIONAL)
    svc = f.service.add(name="Pets")
    svc.method.add(name="GetPet", input_type=".demo.GetPetRequest", output_type=".demo.Pet")
    svc.method.add(name="CreatePet", input_type=".demo.Pet", output_type=".demo.Pet")
    return descriptor_pb2.FileDescriptorSet(file=[f]).SerializeToString()


DS = descriptor_set()
_pool = descriptor_pool.DescriptorPool()
for _f in descriptor_pb2.FileDescriptorSet.FromString(DS).file:
    _pool.Add(_f)
GetPetRequest = message_factory.GetMessageClass(_pool.FindMessageTypeByName("demo.GetPetRequest"))
Pet = message_factory.GetMessageClass(_pool.FindMessageTypeByName("demo.Pet"))

CONFIG = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {{name: pets}}
spec:
  selector: {{matchLabels: {{app: pets}}}}
  routes:
    - method: GET
      path: /v1/pets/{{id}}
      integration:
        type: grpc
        uri: grpc://127.0.0.1:{port}
        grpcMethod: demo.Pets/GetPet
        body: "-"
        descriptorSet: {ds}
    - method: POST
      path: /v1/pets
      integration:
        type: grpc
        uri: grpc://127.0.0.1:{port}
        grpcMethod: demo.Pets/CreatePet
        body: "*"
        descriptorSet: {ds}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: prod}}
spec: {{api: pets}}
"""


@pytest.fixture(scope="module")
def pets_service() -> Iterator[int]:
    def get_pet(req: Any, ctx: grpc.ServicerContext) -> Any:
        if req.id == "404":
            ctx.abort(grpc.StatusCode.NOT_FOUND, f"no pet {req.id}")
        if req.id == "bad":
            ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad id")
        return Pet(
            id=req.id, name=f"{req.view}:{dict(ctx.invocation_metadata()).get('authorization', '-')}", age=3
        )

    def create_pet(req: Any, ctx: grpc.ServicerContext) -> Any:
        return Pet(id="new", name=req.name, age=req.age + 1)

    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "demo.Pets",
                {
                    "GetPet": grpc.unary_unary_rpc_method_handler(
                        get_pet, GetPetRequest.FromString, Pet.SerializeToString
                    ),
                    "CreatePet": grpc.unary_unary_rpc_method_handler(
                        create_pet, Pet.FromString, Pet.SerializeToString
                    ),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(0)


@pytest.fixture(scope="module")
def sidecar(
    etcd: LocalEtcd, tmp_path_factory: pytest.TempPathFactory, pets_service: int
) -> Iterator[Sidecar]:
    with mesh(etcd.endpoint, tmp_path_factory.mktemp("e2e-transcode")) as m:
        m.start_control()
        m.apply(CONFIG.format(port=pets_service, ds=base64.b64encode(DS).decode()))
        m.cli("deploy", "pets", "--stage", "prod")
        sc = m.start_sidecar(extra=NO_DRAIN)
        wait_until(lambda: call(sc, "GET", "/prod/v1/pets/1")[0] == 200, what="the transcoded route served")
        yield sc


def call(
    sc: Sidecar, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", sc.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data) if data else None
    finally:
        conn.close()


def test_path_query_and_metadata_fill_the_request(sidecar: Sidecar) -> None:
    status, body = call(sidecar, "GET", "/prod/v1/pets/7?view=full", headers={"Authorization": "Bearer t"})
    assert (status, body) == (200, {"id": "7", "name": "full:Bearer t", "age": 3})


def test_a_json_body_becomes_the_message(sidecar: Sidecar) -> None:
    status, body = call(sidecar, "POST", "/prod/v1/pets", json.dumps({"name": "rex", "age": 4}).encode())
    assert (status, body) == (200, {"id": "new", "name": "rex", "age": 5})
    status, body = call(sidecar, "POST", "/prod/v1/pets", b'{"name": "rex", "wings": 2}')
    assert status == 400  # no such field in demo.Pet


def test_grpc_status_maps_to_http(sidecar: Sidecar) -> None:
    assert call(sidecar, "GET", "/prod/v1/pets/404")[0] == 404
    assert call(sidecar, "GET", "/prod/v1/pets/bad")[0] == 400
