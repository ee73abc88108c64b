"""Connecting to etcd: the endpoint (HOST:PORT, http:// or https://), the TLS files control proves
itself with (`EtcdTLS`), the one place a client is made (`etcd_client`: plaintext, or aetcd's
connect() redone over a TLS channel, which aetcd 1.0 lacks) and one line on why etcd did not
answer (`why`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aetcd
import grpc
from aetcd import rpc as aetcd_rpc
from aetcd import watcher as aetcd_watcher
from cryptography import x509
from cryptography.hazmat.primitives import serialization


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """HOST:PORT (an http:// or https:// in front is allowed and dropped)."""
    host, _, port = endpoint.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"etcd endpoint must be HOST:PORT, got {endpoint!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class EtcdTLS:
    """How control proves itself to etcd and checks etcd: PEM files (CA, client cert, client key)."""

    ca: Path
    cert: Path
    key: Path

    def credentials(self) -> grpc.ChannelCredentials:
        """Read and check the three files; a problem is one line (OSError) naming the file."""
        pems: list[bytes] = []
        for what, path in (("CA", self.ca), ("client certificate", self.cert), ("client key", self.key)):
            try:
                pems.append(Path(path).read_bytes())
            except OSError as exc:
                raise OSError(f"etcd {what} {path}: {exc.strerror or exc}") from None
        ca, cert, key = pems
        try:
            x509.load_pem_x509_certificates(ca)
            x509.load_pem_x509_certificates(cert)
            serialization.load_pem_private_key(key, password=None)
        except (ValueError, TypeError) as exc:
            raise OSError(f"etcd TLS files ({self.ca}, {self.cert}, {self.key}): not PEM: {exc}") from None
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


class _TLSClient(aetcd.Client):  # type: ignore[misc]
    """aetcd 1.0 (the newest) opens only plaintext channels: its own connect() over a TLS channel."""

    def __init__(self, host: str, port: int, credentials: grpc.ChannelCredentials, timeout: int) -> None:
        super().__init__(host=host, port=port, timeout=timeout)
        self._credentials = credentials
        self._is_connecting: bool = False  # aetcd's own state, typed for mypy

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        if self._is_connecting:
            await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
            return
        self._is_connecting = True
        try:
            target = f"{self._host}:{self._port}"
            self.channel = grpc.aio.secure_channel(
                target, self._credentials, options=list(self._options.items())
            )
            self.kvstub = aetcd_rpc.KVStub(self.channel)
            self.clusterstub = aetcd_rpc.ClusterStub(self.channel)
            self.leasestub = aetcd_rpc.LeaseStub(self.channel)
            self.maintenancestub = aetcd_rpc.MaintenanceStub(self.channel)
            self._watcher = aetcd_watcher.Watcher(
                aetcd_rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
            )
            self._connected.set()
        finally:
            self._is_connecting = False


def etcd_client(endpoint: str, tls: EtcdTLS | None = None, timeout: int = 10) -> Any:
    """The one place an etcd client is made: plaintext, or TLS with a client certificate. An
    https:// endpoint needs `tls`, an http:// one refuses it."""
    host, port = parse_endpoint(endpoint)
    scheme = endpoint.split("://", 1)[0] if "://" in endpoint else ""
    if scheme == "https" and tls is None:
        raise ValueError(f"etcd endpoint {endpoint} is https: give the CA, client certificate and key")
    if scheme == "http" and tls is not None:
        raise ValueError(f"etcd endpoint {endpoint} is http: TLS files given for a plaintext endpoint")
    if tls is None:
        return aetcd.Client(host=host, port=port, timeout=timeout)
    return _TLSClient(host, port, tls.credentials(), timeout)


def why(exc: BaseException, tls: EtcdTLS | None) -> str:
    """One line on why etcd did not answer: what it likely means, then grpc's detail."""
    detail = " ".join(str(exc).split()) or type(exc).__name__
    cause = exc.__cause__
    if isinstance(cause, grpc.aio.AioRpcError):
        detail = " ".join((cause.details() or "").split()) or detail
    detail = detail.removeprefix("failed to connect to all addresses; ")[:300]
    hint = ""
    if tls is not None and "CERTIFICATE_VERIFY_FAILED" in detail:
        hint = f"etcd's serving certificate does not verify against the CA {tls.ca}"
    elif tls is not None and ("TSI_" in detail or "handshake" in detail.lower() or "Socket closed" in detail):
        hint = f"etcd refused the TLS handshake (is the client certificate {tls.cert} from etcd's CA?)"
    elif tls is None and "Socket closed" in detail:
        hint = "etcd closed the plaintext connection (does it want TLS and a client certificate?)"
    return f"{hint}: {detail}" if hint else detail
