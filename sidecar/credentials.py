"""How clients reach control over TLS (the CLI, the demo, sidecars): where a local control keeps its keys
and the CLI's credential, and the channel credentials of an admin certificate or a bearer token."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc

# Inside a credential directory (what `meshgate control` writes for the CLI, in <state dir>/admin):
CA_FILE, CERT_FILE, KEY_FILE = "ca.crt", "tls.crt", "tls.key"
ADMIN_DIR = "admin"


def default_state_dir() -> Path:
    """Where a local `meshgate control` keeps its CA, keys and the CLI's credential."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "meshgate" / "control"


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    ca: bytes  # control's CA (PEM): whom to trust
    cert: bytes = b""  # a client certificate from that CA (PEM), or none
    key: bytes = b""
    token: str = ""  # a bearer token (Kubernetes), sent as `authorization: Bearer ...`

    def channel(self) -> grpc.ChannelCredentials:
        import grpc  # the CLI's and control's: a sidecar imports this module for its paths only

        tls = grpc.ssl_channel_credentials(self.ca, self.key or None, self.cert or None)
        if not self.token:
            return tls
        call = grpc.access_token_call_credentials(self.token)
        return grpc.composite_channel_credentials(tls, call)

    @classmethod
    def from_dir(cls, directory: Path, token: str = "") -> ClientCredentials:
        cert, key = directory / CERT_FILE, directory / KEY_FILE
        return cls(
            (directory / CA_FILE).read_bytes(),
            cert.read_bytes() if cert.exists() else b"",
            key.read_bytes() if key.exists() else b"",
            token,
        )


def cli_credentials(
    directory: str | None = None, ca_file: str | None = None, token: str | None = None
) -> ClientCredentials:
    """The CLI's credentials: --credentials DIR (or $MESHGATE_CREDENTIALS), else the admin credential a
    local control wrote in its default state dir; --ca-file and --token ($MESHGATE_TOKEN, or a
    Kubernetes token such as `kubectl create token`) for a bearer-token caller. Raises OSError with
    what is missing."""
    token = token or os.environ.get("MESHGATE_TOKEN", "")
    directory = directory or os.environ.get("MESHGATE_CREDENTIALS")
    ca_file = ca_file or os.environ.get("MESHGATE_CA_FILE")
    if ca_file and token and not directory:
        return ClientCredentials(Path(ca_file).read_bytes(), token=token)
    where = Path(directory) if directory else default_state_dir() / ADMIN_DIR
    if not (where / CA_FILE).exists():
        raise OSError(
            f"no credentials for the control service in {where} "
            "(pass --credentials DIR, or --ca-file FILE with --token TOKEN)"
        )
    creds = ClientCredentials.from_dir(where, token)
    if ca_file:
        creds = ClientCredentials(Path(ca_file).read_bytes(), creds.cert, creds.key, creds.token)
    return creds
