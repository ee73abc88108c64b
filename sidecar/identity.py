"""The sidecar's identity toward control: a private key made here (it never leaves the process), the
certificate control issues for it (first with a bootstrap or ServiceAccount token, then renewed with
the current certificate at two thirds of its lifetime) and the TLS credentials of the config stream."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import grpc
from meshgate.v1 import control_pb2, control_pb2_grpc

log = logging.getLogger("meshgate.sidecar.identity")

RENEW_AT = 2 / 3  # of a certificate's lifetime


def token_address_of(control_address: str) -> str:
    """Control's token port by default: the same host, the next port."""
    host, _, port = control_address.rpartition(":")
    return f"{host}:{int(port) + 1}" if port.isdigit() else control_address


class SidecarIdentity:
    """Holds the key and the current certificate; `channel_credentials()` is what the stream uses."""

    def __init__(
        self,
        control_address: str,
        ca_pem: bytes,
        token_file: Path | None = None,
        *,
        token_address: str = "",
        token: str = "",
    ) -> None:
        self.control_address = control_address  # TLS with client certificates (streams, renewals)
        self.token_address = token_address or token_address_of(control_address)  # the first certificate
        self.ca_pem = ca_pem
        self.token_file = token_file
        self.token = token  # instead of a file (tests, embedding)
        self.ca_file: Path | None = None
        self._key: Any = None  # made with the first certificate request (`_private_key`)
        self._key_pem = b""
        self.cert_pem = b""
        self.identity = ""  # the SPIFFE id control put in the certificate
        self.renew_at = 0.0  # time.time() when the certificate should be renewed
        self.expires_at = 0.0
        self.renewals = 0

    @classmethod
    def from_files(
        cls, control_address: str, ca_file: Path, token_file: Path | None, token_address: str = ""
    ) -> SidecarIdentity:
        """Files read when needed: a CA or token mounted after the sidecar started is picked up by
        the next connection attempt (until then the stream fails and the sidecar keeps serving)."""
        ident = cls(control_address, b"", token_file, token_address=token_address)
        ident.ca_file = ca_file
        return ident

    def _ca(self) -> bytes:
        if not self.ca_pem and self.ca_file is not None:
            self.ca_pem = self.ca_file.read_bytes()  # OSError: the connection attempt fails, retried
        return self.ca_pem

    @property
    def has_certificate(self) -> bool:
        return bool(self.cert_pem) and time.time() < self.expires_at

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """TLS that trusts control's CA and presents this sidecar's certificate (once it has one)."""
        if self.cert_pem:
            return grpc.ssl_channel_credentials(self._ca(), self._key_pem, self.cert_pem)
        return grpc.ssl_channel_credentials(self._ca())

    def _private_key(self) -> Any:
        """The key, made on first use: a sidecar fed from a snapshot file never needs one (nor loads
        cryptography)."""
        if self._key is None:
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric import ec

            self._key = ec.generate_private_key(ec.SECP256R1())
            self._key_pem = self._key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        return self._key

    def _csr(self, node: control_pb2.Node) -> bytes:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.x509.oid import NameOID

        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node.id[:64] or "sidecar")])
        key = self._private_key()
        csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
        return csr.public_bytes(serialization.Encoding.PEM)

    def _token(self) -> str:
        if self.token or self.token_file is None:
            return self.token
        try:
            return self.token_file.read_text().strip()  # re-read: kubelet rotates projected tokens
        except OSError as exc:
            log.warning("cannot read the token file %s: %s", self.token_file, exc)
            return ""

    async def obtain(self, node: control_pb2.Node, deadline_s: float = 10.0) -> None:
        """Get a certificate: a renewal with the current one while it is valid, else with the token."""
        renewal = self.has_certificate
        metadata = () if renewal else (("authorization", f"Bearer {self._token()}"),)
        address = self.control_address if renewal else self.token_address
        async with grpc.aio.secure_channel(address, self.channel_credentials()) as channel:
            stub = control_pb2_grpc.ControlServiceStub(channel)
            request = control_pb2.CertificateRequest(csr_pem=self._csr(node), node=node)
            resp = await stub.IssueCertificate(request, metadata=metadata, timeout=deadline_s)
        from cryptography import x509

        cert = x509.load_pem_x509_certificate(resp.certificate_pem)
        start, end = time.time(), cert.not_valid_after_utc.timestamp()  # not_before is backdated
        self.cert_pem = resp.certificate_pem
        self.identity = resp.identity
        self.expires_at = end
        self.renew_at = start + (end - start) * RENEW_AT
        if renewal:
            self.renewals += 1
        log.info(
            "%s certificate for %s, valid until %s",
            "renewed" if renewal else "got a",
            resp.identity,
            cert.not_valid_after_utc.isoformat(timespec="seconds"),
        )
