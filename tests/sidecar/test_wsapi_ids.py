"""@connections ids without I/O: minting, verification, tampering with each part, resolving owners,
and the key kept out of config dumps."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from meshgate.sidecar.wsapi import ConnectionIds, Owner, encode_id, owner_tag, verify_id
from meshgate.v1 import control_pb2

KEY = bytes(range(32))
TAG = owner_tag("default/chat", "node-a")


def _flip(part: str) -> str:
    """The same part with one bit of its first byte changed (still canonical base64url)."""
    raw = bytearray(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    raw[0] ^= 1
    return base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")


def test_a_minted_id_verifies_and_names_its_owner() -> None:
    conn_id = encode_id(KEY, TAG)
    assert verify_id(KEY, conn_id) == TAG
    assert len(conn_id.split(".")) == 3 and all(c.isalnum() or c in "-_." for c in conn_id)
    assert encode_id(KEY, TAG) != conn_id  # a fresh random part every time
    assert encode_id(KEY, TAG, b"r" * 12) == encode_id(KEY, TAG, b"r" * 12)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_tampering_with_any_part_fails(index: int) -> None:
    parts = encode_id(KEY, TAG).split(".")
    parts[index] = _flip(parts[index])
    assert verify_id(KEY, ".".join(parts)) is None


def test_another_key_fails() -> None:
    assert verify_id(b"another key", encode_id(KEY, TAG)) is None


@pytest.mark.parametrize(
    "conn_id",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        base64.urlsafe_b64encode(b"127.0.0.1:8080").decode(),  # the old owner = address format
        base64.urlsafe_b64encode(b"127.0.0.1:8080").decode().rstrip("=") + ".00",
    ],
)
def test_malformed_ids_fail(conn_id: str) -> None:
    assert verify_id(KEY, conn_id) is None


def test_non_canonical_or_padded_parts_fail() -> None:
    tag, rand, mac = encode_id(KEY, TAG).split(".")
    for bad in (
        f"{tag}=.{rand}.{mac}",  # padding
        f"{tag}.{rand}.{mac}A",  # one character too many
        f"{tag}.{rand}.{mac[:-1]}",  # one too few
        f"{tag}.{rand}.{mac[:-1]}{chr(ord(mac[-1]) ^ 1)}",  # same bytes or not: never both spellings
        f"{tag}.{rand.replace(rand[0], '+', 1)}.{mac}",  # standard-alphabet character
        f"{tag} .{rand}.{mac}",
    ):
        assert verify_id(KEY, bad) is None, bad


def test_owner_resolution_only_through_the_listing() -> None:
    snap = control_pb2.Snapshot(connection_id_key=KEY, node_id="node-b")
    snap.connection_peers.add(
        api="default/chat",
        peers=[
            control_pb2.Peer(node_id="node-a", advertise="10.0.0.1:15001"),
            control_pb2.Peer(node_id="node-b", advertise="10.0.0.2:15001"),
            control_pb2.Peer(node_id="node-c"),  # no address: not reachable, not listed
        ],
    )
    ids = ConnectionIds.from_snapshot(snap)
    assert ids.owner(encode_id(KEY, TAG)) == Owner("default/chat", "node-a", "10.0.0.1:15001")
    assert ids.owner(ids.mint("default/chat")) is None  # ours: held here or gone, never forwarded
    assert ids.owner(encode_id(KEY, owner_tag("default/chat", "node-c"))) is None
    assert ids.owner(encode_id(KEY, owner_tag("default/other", "node-a"))) is None
    assert ids.owner(encode_id(b"x" * 32, TAG)) is None


def test_without_a_key_from_control_ids_are_good_only_here() -> None:
    ids = ConnectionIds.from_snapshot(control_pb2.Snapshot(node_id="n"))
    other = ConnectionIds.from_snapshot(control_pb2.Snapshot(node_id="n"))
    assert len(ids.key) == 32 and ids.key != other.key
    assert verify_id(ids.key, ids.mint("default/chat")) is not None


def test_the_key_is_redacted_from_config_dumps() -> None:
    from meshgate.sidecar.redact import REDACTED, redact

    snap = control_pb2.Snapshot(connection_id_key=KEY, node_id="node-a")
    redact(snap)
    assert snap.connection_id_key == REDACTED.encode() and snap.node_id == "node-a"


def test_the_persisted_snapshot_holding_the_key_is_owner_only(tmp_path: Path) -> None:
    from meshgate.sidecar.config_client import write_atomically

    path = tmp_path / "state" / "snapshot.pb"
    write_atomically(path, control_pb2.Snapshot(connection_id_key=KEY).SerializeToString())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
