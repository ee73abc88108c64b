"""The sample app behind the demo sidecar: a tiny pet store that echoes what it received.

It serves HTTP (the pets, and an echo of anything else), a WebSocket echo at /echo, and, with
--grpc-port, the gRPC service demo.PetStore (GetPet, and ListPets as a server stream). `call` is
the small gRPC client the demo's lines use (JSON in, JSON out, no protoc needed).

Run: python -m meshgate.control.demo_app --port 9001 --grpc-port 9011 --name v1
     python -m meshgate.control.demo_app call 127.0.0.1:8081 GetPet '{"id": 1}' --stage prod
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import WSMsgType, web

PETS = [
    {"id": 1, "type": "dog", "price": 249.99},
    {"id": 2, "type": "cat", "price": 124.99},
    {"id": 3, "type": "fish", "price": 0.99},
]
SHOWN_HEADERS = (
    "host",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-meshgate-request-id",
    "x-pet-id",
    "x-stage",
)
GRPC_SERVICE = "demo.PetStore"
# The service as a .proto (what grpcurl -proto wants); _descriptor() builds the same file in code.
PROTO = """\
syntax = "proto3";
package demo;
message GetPetRequest { int32 id = 1; }
message ListPetsRequest {}
message Pet { int32 id = 1; string type = 2; double price = 3; }
message PetReply { Pet pet = 1; string service = 2; string request_id = 3; }
service PetStore {
  rpc GetPet(GetPetRequest) returns (PetReply);
  rpc ListPets(ListPetsRequest) returns (stream PetReply);
}
"""


def make_app(name: str) -> web.Application:
    """The app; every JSON answer says which instance (`service`) served it and how many
    requests it has served so far (`served`), so caching and canaries are visible."""
    served = 0

    def reply(request: web.Request, payload: object, status: int = 200) -> web.Response:
        nonlocal served
        served += 1
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in SHOWN_HEADERS or k.lower().startswith(("x-meshgate-", "x-user-"))
        }
        body = {
            "service": name,
            "served": served,
            "path": request.path_qs,
            "headers": headers,
            "data": payload,
        }
        return web.json_response(body, status=status)

    async def list_pets(request: web.Request) -> web.Response:
        return reply(request, PETS)

    async def get_pet(request: web.Request) -> web.Response:
        pet_id = request.match_info["id"]
        for pet in PETS:
            if str(pet["id"]) == pet_id:
                return reply(request, pet)
        return reply(request, {"error": f"no pet {pet_id}"}, status=404)

    async def add_pet(request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            pet = json.loads(raw or b"{}")
        except ValueError:
            return reply(request, {"error": "body is not JSON"}, status=400)
        return reply(request, {"created": pet}, status=201)

    async def echo_socket(request: web.Request) -> web.StreamResponse:
        """A WebSocket that sends every message back, prefixed with the instance's name."""
        if request.headers.get("upgrade", "").lower() != "websocket":
            return reply(request, {"error": "this is a WebSocket endpoint"}, status=426)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(f"{name} echo: {msg.data}")
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    async def echo(request: web.Request) -> web.Response:
        raw = await request.read()
        return reply(request, {"method": request.method, "bodyBytes": len(raw)})

    app = web.Application()
    app.router.add_get("/pets", list_pets)
    app.router.add_get("/pets/{id}", get_pet)
    app.router.add_post("/pets", add_pet)
    app.router.add_get("/echo", echo_socket)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


# ------------------------------------------------------------------------------------------ gRPC


def _descriptor() -> Any:
    """demo/petstore.proto (PROTO) as a FileDescriptorProto, so neither side needs protoc."""
    from google.protobuf import descriptor_pb2

    f = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="demo/petstore.proto", package="demo", syntax="proto3")

    def message(msg_name: str, *fields: tuple[str, int, int, str]) -> None:
        msg = fdp.message_type.add(name=msg_name)
        for field_name, number, kind, type_name in fields:
            field = msg.field.add(name=field_name, number=number, type=kind, label=f.LABEL_OPTIONAL)
            if type_name:
                field.type_name = type_name

    message("GetPetRequest", ("id", 1, f.TYPE_INT32, ""))
    message("ListPetsRequest")
    message(
        "Pet", ("id", 1, f.TYPE_INT32, ""), ("type", 2, f.TYPE_STRING, ""), ("price", 3, f.TYPE_DOUBLE, "")
    )
    message(
        "PetReply",
        ("pet", 1, f.TYPE_MESSAGE, ".demo.Pet"),
        ("service", 2, f.TYPE_STRING, ""),
        ("request_id", 3, f.TYPE_STRING, ""),
    )
    svc = fdp.service.add(name="PetStore")
    svc.method.add(name="GetPet", input_type=".demo.GetPetRequest", output_type=".demo.PetReply")
    svc.method.add(
        name="ListPets",
        input_type=".demo.ListPetsRequest",
        output_type=".demo.PetReply",
        server_streaming=True,
    )
    return fdp


def _classes() -> dict[str, tuple[Any, Any, bool]]:
    """{method: (request class, reply class, server streaming)} of demo.PetStore."""
    from google.protobuf import descriptor_pool, message_factory

    pool = descriptor_pool.DescriptorPool()
    pool.Add(_descriptor())
    service = pool.FindServiceByName(GRPC_SERVICE)
    return {
        m.name: (
            message_factory.GetMessageClass(m.input_type),
            message_factory.GetMessageClass(m.output_type),
            m.server_streaming,
        )
        for m in service.methods
    }


async def start_grpc(host: str, port: int, name: str) -> Any:
    """demo.PetStore on HOST:PORT (grpc.aio, in the app's loop); returns the started server."""
    import grpc

    classes = _classes()
    pet_reply = classes["GetPet"][1]

    def answer(pet: dict[str, Any], context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        metadata = dict(context.invocation_metadata() or ())
        return pet_reply(pet=pet, service=name, request_id=str(metadata.get("x-meshgate-request-id", "")))

    async def get_pet(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        for pet in PETS:
            if pet["id"] == request.id:
                return answer(pet, context)
        await context.abort(grpc.StatusCode.NOT_FOUND, f"no pet {request.id}")

    async def list_pets(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        for pet in PETS:
            yield answer(pet, context)

    def handler(method: str, fn: Any) -> Any:
        req_cls, reply_cls, streaming = classes[method]
        make = grpc.unary_stream_rpc_method_handler if streaming else grpc.unary_unary_rpc_method_handler
        return make(
            fn, request_deserializer=req_cls.FromString, response_serializer=reply_cls.SerializeToString
        )

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                GRPC_SERVICE,
                {"GetPet": handler("GetPet", get_pet), "ListPets": handler("ListPets", list_pets)},
            ),
        )
    )
    if not server.add_insecure_port(f"{host}:{port}"):
        raise OSError(f"cannot listen for gRPC on {host}:{port}")
    await server.start()
    return server


def call(argv: list[str]) -> int:
    """`call ADDRESS METHOD [JSON]`: one demo.PetStore call, each reply printed as a JSON line."""
    import grpc
    from google.protobuf import json_format

    classes = _classes()
    p = argparse.ArgumentParser(prog="meshgate demo-app call", description=call.__doc__)
    p.add_argument("address", help="HOST:PORT of a gRPC listener (the sidecar's --grpc-listen)")
    p.add_argument("method", choices=sorted(classes), help=f"a method of {GRPC_SERVICE}")
    p.add_argument("request", nargs="?", default="{}", help="the request message as JSON")
    p.add_argument("--stage", default="", help="x-meshgate-stage metadata: which stage serves the call")
    p.add_argument("--timeout", type=float, default=10.0)
    args = p.parse_args(argv)
    req_cls, reply_cls, streaming = classes[args.method]
    try:
        request = json_format.Parse(args.request, req_cls())
    except json_format.ParseError as exc:
        print(f"error: request: {exc}", file=sys.stderr)
        return 2
    metadata = (("x-meshgate-stage", args.stage),) if args.stage else ()
    path = f"/{GRPC_SERVICE}/{args.method}"
    with grpc.insecure_channel(args.address) as channel:
        make = channel.unary_stream if streaming else channel.unary_unary
        stub = make(
            path, request_serializer=req_cls.SerializeToString, response_deserializer=reply_cls.FromString
        )
        try:
            result = stub(request, timeout=args.timeout, metadata=metadata)
            for reply in result if streaming else [result]:
                print(json.dumps(json_format.MessageToDict(reply), sort_keys=True), flush=True)
        except grpc.RpcError as exc:
            print(f"error: {path}: {exc.code().name}: {exc.details()}", file=sys.stderr)  # type: ignore[attr-defined]
            return 1
    return 0


# ------------------------------------------------------------------------------------------ serve


async def serve(host: str, port: int, name: str, grpc_port: int | None = None) -> None:
    runner = web.AppRunner(make_app(name), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    grpc_server = await start_grpc(host, grpc_port, name) if grpc_port else None
    where = f" and gRPC {GRPC_SERVICE} on {host}:{grpc_port}" if grpc_port else ""
    print(f"sample app {name} listening on http://{host}:{port}{where}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if grpc_server is not None:
        await grpc_server.stop(0.5)
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["call"]:
        return call(argv[1:])
    if argv[:1] == ["proto"]:
        print(PROTO, end="")
        return 0
    parser = argparse.ArgumentParser(
        prog="meshgate demo-app",
        description="The sample pet store (HTTP, WebSocket /echo, gRPC demo.PetStore). "
        "Also: `call ADDRESS METHOD [JSON]` (a gRPC client, see `call --help`), `proto` (print the .proto).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument(
        "--grpc-port", type=int, default=0, help="serve demo.PetStore here (default: no gRPC)"
    )
    parser.add_argument("--name", default="v1")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.host, args.port, args.name, args.grpc_port or None))
    except OSError as exc:
        print(f"error: sample app: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
