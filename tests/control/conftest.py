"""Control test kit: a Store on the session etcd under a fresh prefix per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

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


@pytest.fixture
async def store(etcd: LocalEtcd) -> AsyncIterator[Store]:
    s = Store(etcd.endpoint, f"/t-{uuid.uuid4().hex[:8]}/")
    await s.open()
    yield s
    await s.client.delete_prefix(s.prefix.encode())
    await s.close()


async def dump(store: Store) -> dict[bytes, bytes]:
    rng = await store.client.get_prefix(store.prefix.encode())
    return {bytes(kv.key): bytes(kv.value) for kv in rng}


def docs(text: str = PETS):  # type: ignore[no-untyped-def]
    return load_documents(text)
