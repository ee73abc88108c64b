"""An open-loop HTTP/1.1 load generator: requests at a fixed rate whatever the answers do.

Each request is due at t0 + i/rate and its latency counts from when it was due (not when a
connection was free to send it), so a slow proxy cannot hide its queueing (no coordinated
omission). Keep-alive connections are opened as needed (up to --max-connections). Prints JSON:
requests, errors, p50/p99/p99.9 in ms.

Usage: python bench/openloop.py URL RATE SECONDS
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from urllib.parse import urlsplit

import httptools
import uvloop


class Conn(asyncio.Protocol):
    def __init__(self, gen: Gen) -> None:
        self.gen = gen
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.due = 0.0
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.gen.idle.append(self)

    def send(self, due: float) -> None:
        assert self.transport is not None
        self.due = due
        self.busy = True
        self.transport.write(self.gen.request)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.gen.errors += 1
            self.transport.close() if self.transport else None

    def on_message_complete(self) -> None:
        gen = self.gen
        self.busy = False
        gen.latencies.append((time.perf_counter() - self.due) * 1000)
        if self.parser.get_status_code() != 200:
            gen.errors += 1
        gen.idle.append(self)
        if len(gen.latencies) + gen.errors == gen.total:
            gen.done.set()

    def connection_lost(self, exc: Exception | None) -> None:
        gen = self.gen
        if self in gen.idle:
            gen.idle.remove(self)
        gen.open -= 1
        if self.busy:  # closed with a request in flight
            gen.errors += 1
            if len(gen.latencies) + gen.errors == gen.total:
                gen.done.set()


class Gen:
    def __init__(self, url: str, limit: int) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.request = f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode()
        self.idle: list[Conn] = []
        self.latencies: list[float] = []
        self.errors = 0
        self.open = 0
        self.limit = limit
        self.connecting: set[asyncio.Task[object]] = set()
        self.done = asyncio.Event()
        self.total = -1  # known once every request is sent

    async def run(self, rate: float, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        total = int(rate * seconds)
        waiting: list[float] = []  # due times that found no idle connection yet
        t0 = time.perf_counter() + 0.05
        sent = 0
        while sent < total or waiting:
            now = time.perf_counter()
            while sent < total and t0 + sent / rate <= now:
                waiting.append(t0 + sent / rate)
                sent += 1
            while waiting and self.idle:
                self.idle.pop().send(waiting.pop(0))
            if waiting and self.open < self.limit:
                self.open += 1
                task = loop.create_task(loop.create_connection(lambda: Conn(self), self.host, self.port))
                self.connecting.add(task)
                task.add_done_callback(self.connecting.discard)
            if sent >= total and not waiting:
                break
            await asyncio.sleep(0.0005)
        self.total = total
        if len(self.latencies) + self.errors < total:
            try:
                async with asyncio.timeout(10):
                    await self.done.wait()
            except TimeoutError:
                pass


def main() -> int:
    url, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    gen = Gen(url, limit=256)
    uvloop.run(gen.run(rate, seconds))
    times = sorted(gen.latencies)
    pick = {
        q: times[min(len(times) - 1, int(q * len(times)))] if times else float("nan")
        for q in (0.5, 0.99, 0.999)
    }
    print(
        json.dumps(
            {
                "requests": len(times),
                "errors": gen.errors,
                "p50": pick[0.5],
                "p99": pick[0.99],
                "p999": pick[0.999],
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
