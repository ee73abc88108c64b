"""Credentials for tests that start control in-process (`start_control`): an admin channel (the local
CLI's kind of certificate), a sidecar's channel or identity, all from that control's own CA."""

from __future__ import annotations

from typing import Any

import grpc
from meshgate.control.ca import Authority, NodeIdentity, csr_for, new_key, private_pem
from meshgate.control.keystore import load_dir
from meshgate.sidecar.credentials import ClientCredentials, default_state_dir
from meshgate.sidecar.identity import SidecarIdentity
from meshgate.v1 import control_pb2_grpc


def admin_credentials(ctl: Any, role: str = "admin") -> ClientCredentials:
    cert, key = ctl.authority.admin_cert("test-admin", role)
    return ClientCredentials(ctl.authority.ca_pem, cert, key)


def sidecar_credentials(
    ctl: Any, node_id: str, namespace: str = "default", labels: dict[str, str] | None = None
) -> ClientCredentials:
    """A sidecar certificate issued straight from the CA (what IssueCertificate would give)."""
    key = new_key()
    node = NodeIdentity(node_id, namespace, "default", dict(labels or {}))
    cert = ctl.authority.sidecar_cert(csr_for(key, node_id), node)
    return ClientCredentials(ctl.authority.ca_pem, cert, private_pem(key))


def admin_channel(ctl: Any, role: str = "admin") -> grpc.aio.Channel:
    return grpc.aio.secure_channel(f"127.0.0.1:{ctl.port}", admin_credentials(ctl, role).channel())


def admin_stub(ctl: Any, role: str = "admin") -> control_pb2_grpc.ControlServiceStub:
    """A blocking stub (for code that runs outside the event loop)."""
    channel = grpc.secure_channel(f"127.0.0.1:{ctl.port}", admin_credentials(ctl, role).channel())
    return control_pb2_grpc.ControlServiceStub(channel)


def sidecar_channel(ctl: Any, node_id: str, namespace: str = "default", **labels: str) -> grpc.aio.Channel:
    creds = sidecar_credentials(ctl, node_id, namespace, labels)
    return grpc.aio.secure_channel(f"127.0.0.1:{ctl.port}", creds.channel())


def bootstrap_identity(ctl: Any) -> SidecarIdentity:
    """What a sidecar on this machine has: control's CA and its bootstrap token."""
    return SidecarIdentity(
        f"127.0.0.1:{ctl.port}",
        ctl.authority.ca_pem,
        token=(ctl.keys if hasattr(ctl, "keys") else ctl.store.keys).bootstrap_token,
        token_address=f"127.0.0.1:{ctl.token_port}",
    )


class LocalControl:
    """A `meshgate control` process on this machine: its keys are in the default state dir (the
    session's $XDG_STATE_HOME), its admin credential where the CLI looks by default."""

    def __init__(self, port: int, token_port: int = 0) -> None:
        self.port = port
        self.token_port = token_port or port + 1
        self.keys = load_dir(default_state_dir())
        self.authority = Authority(self.keys.ca_cert, self.keys.ca_key)
