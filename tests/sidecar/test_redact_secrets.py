"""/config_dump redaction driven by the stage's secret declaration (names that no guess catches), the
keyed API-key hash and its installation key redacted, and the persisted snapshot at rest: 0600 in a
0700 directory, created so or tightened when the client starts."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

from meshgate.sidecar.admin import AdminState, config_dump
from meshgate.sidecar.config_client import ConfigClient
from meshgate.sidecar.redact import REDACTED, restore
from meshgate.sidecar.routing import TableHolder
from meshgate.v1 import control_pb2, resources_pb2

from .conftest import bundle, mock_route, snapshot

DECLARED = {"db_pass": "v-db-1", "pwd": "v-pwd-2", "auth": "v-auth-3", "bearer": "v-bearer-4", "plain": "v-5"}


def declared_snapshot() -> control_pb2.Snapshot:
    b = bundle(
        [mock_route("GET", "/hello", '"hi"')],
        variables={**DECLARED, "region": "eu"},
        canary={"deployment": 2, "percent": 10, "variables": {"pwd": "v-canary-6", "region": "us"}},
    )
    b["stage"]["spec"]["secretVariables"] = list(DECLARED)
    snap = snapshot(b, version="v-declared")
    snap.api_key_hash_key = b"h" * 32
    key = snap.api_keys.add()
    key.metadata.name = "partner"
    key.spec.usage_plan = "gold"
    key.spec.value_hmac = "ab" * 32
    return snap


def test_config_dump_redacts_what_the_stage_declares_secret() -> None:
    client = ConfigClient("127.0.0.1:1", control_pb2.Node(id="sc-1"), lambda s: None)
    client.applied, client.applied_from = declared_snapshot(), "file"
    doc = config_dump(AdminState(client, TableHolder(), "sc-1"))
    assert doc is not None
    text = json.dumps(doc)
    for value in [*DECLARED.values(), "v-canary-6", "ab" * 32]:
        assert value not in text
    spec = doc["stages"][0]["stage"]["spec"]  # type: ignore[index]
    assert spec["variables"] == {**dict.fromkeys(DECLARED, REDACTED), "region": "eu"}
    assert spec["canary"]["variables"] == {"pwd": REDACTED, "region": "us"}
    assert doc["apiKeys"][0]["spec"]["valueHmac"] == REDACTED  # type: ignore[index]
    assert base64.b64decode(doc["apiKeyHashKey"]) == REDACTED.encode()  # type: ignore[arg-type]
    assert client.applied.stages[0].stage.spec.variables["db_pass"] == "v-db-1"  # a copy was redacted


def test_persisted_snapshot_is_owner_only_in_an_owner_only_directory(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh" / "state"
    client = ConfigClient("127.0.0.1:1", control_pb2.Node(id="sc-1"), lambda s: None, state_dir=fresh)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700  # created at start, before any snapshot
    client._persist(declared_snapshot())  # what the client does after applying a streamed snapshot
    assert stat.S_IMODE((fresh / "snapshot.pb").stat().st_mode) == 0o600
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700

    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    ConfigClient("127.0.0.1:1", control_pb2.Node(id="sc-1"), lambda s: None, state_dir=loose)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700  # tightened at start


def test_restore_puts_back_every_redacted_variable_of_a_map() -> None:
    """A read-back applied again: each "[redacted]" secret variable gets its stored value, however
    many there are (writing a protobuf map while iterating it skipped some, depending on hashing)."""
    names = [f"secret{i}" for i in range(64)]
    old = resources_pb2.Stage()
    old.spec.secret_variables.extend(names)
    for n in names:
        old.spec.variables[n] = f"value-of-{n}"
    old.spec.variables["plain"] = "p"
    new = resources_pb2.Stage()
    new.CopyFrom(old)
    for n in names:
        new.spec.variables[n] = REDACTED
    restore(new, old)
    assert dict(new.spec.variables) == dict(old.spec.variables)
