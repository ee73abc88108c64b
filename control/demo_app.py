"""The sample app behind the demo sidecar: a tiny pet store that echoes what it received.

Run: python -m meshgate.control.demo_app --port 9001 --name v1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

from aiohttp import web

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

    async def echo(request: web.Request) -> web.Response:
        raw = await request.read()
        return reply(request, {"method": request.method, "bodyBytes": len(raw)})

    app = web.Application()
    app.router.add_get("/pets", list_pets)
    app.router.add_get("/pets/{id}", get_pet)
    app.router.add_post("/pets", add_pet)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def serve(host: str, port: int, name: str) -> None:
    runner = web.AppRunner(make_app(name), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"sample app {name} listening on http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshgate-demo-app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--name", default="v1")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
