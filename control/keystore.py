"""Control's own secrets, never in etcd: the CA, the API-key hash key and the sidecars' bootstrap
token, kept in a state directory (0700, files 0600) or a Kubernetes Secret (created or adopted)."""

from __future__ import annotations

import base64
import contextlib
import datetime
import fcntl
import hmac
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from meshgate.control.ca import Authority, generate_ca
from meshgate.control.kube import JSON, KubeClient, KubeError
from meshgate.sidecar.credentials import CA_FILE, CERT_FILE, KEY_FILE

log = logging.getLogger("meshgate.control.keys")

# File names in the state directory, and keys of the Secret's data.
CA_CERT, CA_KEY, HASH_KEY, BOOTSTRAP = "ca.crt", "ca.key", "apikey-hash.key", "bootstrap-token"
MAX_ATTEMPTS = 8


@dataclass(frozen=True, slots=True)
class ControlKeys:
    ca_cert: bytes  # PEM
    ca_key: bytes  # PEM (PKCS#8)
    api_key_hash_key: bytes  # 32 bytes: API keys are stored as HMAC-SHA256(this, sha256(value))
    bootstrap_token: str  # lets a sidecar outside Kubernetes get its first certificate

    def check_bootstrap(self, token: str) -> bool:
        return bool(token) and hmac.compare_digest(token.encode(), self.bootstrap_token.encode())

    def as_files(self) -> dict[str, bytes]:
        return {
            CA_CERT: self.ca_cert,
            CA_KEY: self.ca_key,
            HASH_KEY: self.api_key_hash_key,
            BOOTSTRAP: self.bootstrap_token.encode(),
        }

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> ControlKeys:
        return cls(files[CA_CERT], files[CA_KEY], files[HASH_KEY], files[BOOTSTRAP].decode().strip())


def generate() -> ControlKeys:
    cert, key = generate_ca()
    return ControlKeys(cert, key, secrets.token_bytes(32), secrets.token_urlsafe(32))


def write_private(path: Path, data: bytes) -> None:
    """Write a file readable by its owner only (created 0600, atomically replaced)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with open(os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def load_dir(directory: Path) -> ControlKeys:
    """The keys in `directory`, created there first if it has none (two controls sharing it, or
    starting at once, end up with the same keys)."""
    private_dir(directory)
    with _locked(directory):
        present = {name: (directory / name) for name in (CA_CERT, CA_KEY, HASH_KEY, BOOTSTRAP)}
        if all(p.exists() for p in present.values()):
            return ControlKeys.from_files({n: p.read_bytes() for n, p in present.items()})
        if any(p.exists() for p in present.values()):
            missing = ", ".join(n for n, p in present.items() if not p.exists())
            raise ValueError(f"{directory} holds some of control's keys but not {missing}")
        keys = generate()
        for name, data in keys.as_files().items():
            write_private(directory / name, data)
        log.info("created control's CA, API-key hash key and bootstrap token in %s", directory)
        return keys


def write_admin_credential(directory: Path, authority: Authority, name: str = "local-admin") -> Path:
    """The CLI's credential (ca.crt, tls.crt, tls.key; admin role) in `directory`, issued again when it
    is missing, from another CA or within 30 days of expiry. Returns the directory."""
    private_dir(directory)
    cert_path = directory / CERT_FILE
    if cert_path.exists() and (directory / KEY_FILE).exists():
        current = authority.principal(cert_path.read_bytes())
        soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=30)
        if current is not None and current.kind == "admin" and current.not_after and current.not_after > soon:
            write_private(directory / CA_FILE, authority.ca_pem)
            return directory
    cert, key = authority.admin_cert(name)
    write_private(directory / KEY_FILE, key)
    write_private(directory / CERT_FILE, cert)
    write_private(directory / CA_FILE, authority.ca_pem)
    return directory


def _secret(namespace: str, name: str, keys: ControlKeys) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "meshgate-control"},
        },
        "type": "Opaque",
        "data": {k: base64.b64encode(v).decode() for k, v in keys.as_files().items()},
    }


def _from_secret(secret: JSON) -> ControlKeys | None:
    data = secret.get("data") or {}
    try:
        return ControlKeys.from_files({k: base64.b64decode(data[k], validate=True) for k in data})
    except (KeyError, TypeError, ValueError):
        return None


async def load_secret(kube: KubeClient, namespace: str, name: str) -> ControlKeys:
    """The keys in Secret `namespace/name`, created first if there is none; a replica that loses the
    create race reads the winner's (every replica ends up with the same CA and keys)."""
    for _ in range(MAX_ATTEMPTS):
        secret = await kube.get_secret(namespace, name)
        if secret is not None:
            keys = _from_secret(secret)
            if keys is None:
                raise ValueError(f"Secret {namespace}/{name} does not hold control's keys")
            return keys
        keys = generate()
        try:
            await kube.create_secret(namespace, _secret(namespace, name, keys))
        except KubeError as exc:
            if exc.status != 409:
                raise
            continue  # another replica created it: read theirs
        log.info("created Secret %s/%s with control's CA and keys", namespace, name)
        return keys
    raise ValueError(f"Secret {namespace}/{name}: still conflicting after {MAX_ATTEMPTS} attempts")
