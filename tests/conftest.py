"""Shared fixtures: a real etcd process per test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from meshgate.control.etcd_local import LocalEtcd


@pytest.fixture(scope="session")
def etcd() -> Iterator[LocalEtcd]:
    """A real etcd on loopback; tests isolate themselves with their own key prefix."""
    with LocalEtcd() as server:
        yield server
