"""Control test kit: a Store on the session etcd under a fresh prefix per test; raw etcd access."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import aetcd
import pytest
from meshgate.control.etcd_local import LocalEtcd
from meshgate.control.resources import load_documents
from meshgate.control.store import Store

PETS = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {name: pets, labels: {team: a}}
spec:
  selector: {matchLabels: {app: pets}}
  routes:
    - {method: GET, path: /health, integration: {type: mock, mock: {body: ok}}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {name: prod}
spec: {api: pets, variables: {backend: "b:1"}}
"""


# The same Api and stage in namespace shop: a sidecar of namespace default must never get them.
SHOP = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {name: shop-pets, namespace: shop}
spec:
  selector: {matchLabels: {app: pets}}
  routes:
    - {method: GET, path: /health, integration: {type: mock, mock: {body: shop}}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {name: prod, namespace: shop}
spec: {api: shop-pets}
"""


@pytest.fixture
async def store(etcd: LocalEtcd) -> AsyncIterator[Store]:
    s = Store(etcd.endpoint, f"/t-{uuid.uuid4().hex[:8]}/")
    await s.open()
    yield s
    await wipe(s)
    await s.close()


@contextlib.asynccontextmanager
async def raw_etcd(endpoint: str) -> AsyncIterator[aetcd.Client]:
    """A plain etcd client beside the Store (which does not expose its own): what tests check or break."""
    host, _, port = endpoint.rpartition(":")
    client = aetcd.Client(host=host, port=int(port), timeout=10)
    await client.connect()
    try:
        yield client
    finally:
        await client.close()


async def dump(store: Store) -> dict[bytes, bytes]:
    async with raw_etcd(store.endpoint) as client:
        rng = await client.get_prefix(store.prefix.encode())
    return {bytes(kv.key): bytes(kv.value) for kv in rng}


async def wipe(store: Store) -> None:
    async with raw_etcd(store.endpoint) as client:
        await client.delete_prefix(store.prefix.encode())


def docs(text: str = PETS):  # type: ignore[no-untyped-def]
    return load_documents(text)
