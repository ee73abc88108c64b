"""The sidecar's identity toward control: a private key made for each certificate (by `keygen`, in a
child process; it is never written to disk), the certificate control issues for it (first with a
bootstrap or ServiceAccount token, then renewed with the current certificate at two thirds of its
lifetime) and the TLS context of the config stream."""

from __future__ import annotations

import logging
import os
import ssl
import time
from datetime import UTC, datetime
from pathlib import Path

from meshgate.sidecar import keygen
from meshgate.sidecar.grpc_client import Channel
from meshgate.v1 import control_pb2

log = logging.getLogger("meshgate.sidecar.identity")

RENEW_AT = 2 / 3  # of a certificate's lifetime
ISSUE_CERTIFICATE = "/meshgate.v1.ControlService/IssueCertificate"


def token_address_of(control_address: str) -> str:
    """Control's token port by default: the same host, the next port."""
    host, _, port = control_address.rpartition(":")
    return f"{host}:{int(port) + 1}" if port.isdigit() else control_address


class SidecarIdentity:
    """Holds the key and the current certificate; `tls_context()` is what the stream uses."""

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
        self.key_pem = b""  # the key of `cert_pem`
        self.cert_pem = b""
        self.identity = ""  # the SPIFFE id control put in the certificate
        self.renew_at = 0.0  # time.time() when the certificate should be renewed
        self.expires_at = 0.0
        self.renewals = 0
        self._tls: ssl.SSLContext | None = None  # for the current certificate

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

    def tls_context(self) -> ssl.SSLContext:
        """TLS that trusts control's CA (only) and presents this sidecar's certificate, once it has one."""
        if self._tls is None:
            ctx = ssl.create_default_context(cadata=self._ca().decode("ascii"))
            ctx.set_alpn_protocols(["h2"])
            if self.cert_pem:
                load_key_pair(ctx, self.cert_pem, self.key_pem)
            self._tls = ctx
        return self._tls

    def _token(self) -> str:
        if self.token or self.token_file is None:
            return self.token
        try:
            return self.token_file.read_text().strip()  # re-read: kubelet rotates projected tokens
        except OSError as exc:
            log.warning("cannot read the token file %s: %s", self.token_file, exc)
            return ""

    async def obtain(self, node: control_pb2.Node, deadline_s: float = 10.0) -> None:
        """Get a certificate for a new key: a renewal with the current one while it is valid, else with
        the token. Raises RpcError (refused, unreachable) or OSError (no CA, no key)."""
        renewal = self.has_certificate
        metadata = () if renewal else (("authorization", f"Bearer {self._token()}"),)
        address = self.control_address if renewal else self.token_address
        key_pem, csr_pem = await keygen.generate(node.id or "sidecar")
        request = control_pb2.CertificateRequest(csr_pem=csr_pem, node=node)
        async with Channel(address, self.tls_context(), connect_timeout_s=deadline_s) as channel:
            answer = await channel.unary(ISSUE_CERTIFICATE, request.SerializeToString(), metadata, deadline_s)
        resp = control_pb2.CertificateResponse.FromString(answer)
        start, end = time.time(), float(resp.not_after_unix)  # not_before is backdated
        if end <= start or not resp.certificate_pem:
            raise OSError("control's answer holds no certificate valid from now")
        self.cert_pem, self.key_pem, self._tls = resp.certificate_pem, key_pem, None
        self.identity = resp.identity
        self.expires_at = end
        self.renew_at = start + (end - start) * RENEW_AT
        if renewal:
            self.renewals += 1
        log.info(
            "%s certificate for %s, valid until %s",
            "renewed" if renewal else "got a",
            resp.identity,
            datetime.fromtimestamp(end, UTC).isoformat(timespec="seconds"),
        )


def load_key_pair(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """`load_cert_chain` from memory: the ssl module reads files only, so the pair goes through an
    anonymous in-memory file (memfd), never the disk."""
    fd = os.memfd_create("meshgate-identity", os.MFD_CLOEXEC)
    try:
        os.write(fd, cert_pem + b"\n" + key_pem)
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
