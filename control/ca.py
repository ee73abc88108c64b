"""Control's certificate authority: its key pair, the certificates it issues (control's serving cert,
sidecars' SPIFFE certs from a CSR, admin client certs) and reading the identity back from one."""

from __future__ import annotations

import datetime
import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

CA_COMMON_NAME = "meshgate-control-ca"
CA_VALIDITY = datetime.timedelta(days=3650)
SIDECAR_VALIDITY = datetime.timedelta(hours=24)
ADMIN_VALIDITY = datetime.timedelta(days=365)
SERVER_VALIDITY = datetime.timedelta(days=30)
# A private extension that carries what control verified about a sidecar when it issued the cert
# (node id, namespace, labels): signed by the CA, so the stream trusts it and nothing the client says.
NODE_OID = ObjectIdentifier("1.3.6.1.4.1.59872.1.1")
# An admin principal's role (admin: every call; viewer: read-only calls).
ROLE_OID = ObjectIdentifier("1.3.6.1.4.1.59872.1.2")
ROLES = ("admin", "viewer")


class CertificateError(ValueError):
    """A CSR or certificate that cannot be used (the message says why)."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def csr_for(key: ec.EllipticCurvePrivateKey, common_name: str) -> bytes:
    """A PEM CSR (what a sidecar sends to IssueCertificate): only its public key is used."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(name)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """A sidecar as control verified it: what decides which config its stream gets."""

    node_id: str
    namespace: str
    service_account: str = "default"
    labels: dict[str, str] = field(default_factory=dict)

    def spiffe_id(self, trust_domain: str) -> str:
        return f"spiffe://{trust_domain}/ns/{self.namespace}/sa/{self.service_account}"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified client certificate names: a sidecar (node) or an admin (name and role)."""

    kind: str  # "sidecar" | "admin"
    name: str  # node id, or the admin's name
    node: NodeIdentity | None = None
    role: str = ""
    not_after: datetime.datetime | None = None


def generate_ca(
    common_name: str = CA_COMMON_NAME, validity: datetime.timedelta = CA_VALIDITY
) -> tuple[bytes, bytes]:
    """A new CA: (certificate PEM, private key PEM)."""
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _pem(cert), private_pem(key)


def _sans(hosts: Sequence[str]) -> list[x509.GeneralName]:
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    return sans


class Authority:
    """Issues and reads certificates under one CA and trust domain."""

    def __init__(self, ca_cert_pem: bytes, ca_key_pem: bytes, trust_domain: str = "cluster.local") -> None:
        self.ca_pem = ca_cert_pem
        self.ca = x509.load_pem_x509_certificate(ca_cert_pem)
        key = serialization.load_pem_private_key(ca_key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertificateError("the CA key must be an EC key")
        self._key = key
        self.trust_domain = trust_domain

    def _issue(
        self,
        public_key: ec.EllipticCurvePublicKey,
        common_name: str,
        sans: list[x509.GeneralName],
        usage: list[ObjectIdentifier],
        validity: datetime.timedelta,
        extra: Sequence[x509.ExtensionType] = (),
    ) -> bytes:
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])]))
            .issuer_name(self.ca.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(min(now + validity, self.ca.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        for ext in extra:
            builder = builder.add_extension(ext, critical=False)
        return _pem(builder.sign(self._key, hashes.SHA256()))

    def server_cert(
        self, hosts: list[str], validity: datetime.timedelta = SERVER_VALIDITY
    ) -> tuple[bytes, bytes]:
        """Control's own serving cert for `hosts` (DNS names or IPs): (cert PEM, key PEM)."""
        key = new_key()
        cert = self._issue(
            key.public_key(), hosts[0], _sans(hosts), [ExtendedKeyUsageOID.SERVER_AUTH], validity
        )
        return cert, private_pem(key)

    def peer_cert(self, name: str, hosts: Sequence[str] = ()) -> tuple[bytes, bytes]:
        """A cert for TLS outside meshgate's identities (a private etcd, its clients): client auth,
        and server auth for `hosts` too when given (etcd dials itself with its serving cert)."""
        key = new_key()
        usage = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if hosts else [])
        cert = self._issue(key.public_key(), name, _sans(hosts), usage, SERVER_VALIDITY)
        return cert, private_pem(key)

    def sidecar_cert(
        self, csr_pem: bytes, node: NodeIdentity, validity: datetime.timedelta = SIDECAR_VALIDITY
    ) -> bytes:
        """A sidecar's client cert for the CSR's key, naming its SPIFFE id and the verified node."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError:
            raise CertificateError("the CSR is not a PEM certificate signing request") from None
        if not csr.is_signature_valid:
            raise CertificateError("the CSR's signature does not verify")
        public = csr.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise CertificateError("the CSR must carry an EC P-256 key")
        doc = {"node": node.node_id, "ns": node.namespace, "sa": node.service_account, "labels": node.labels}
        ext = x509.UnrecognizedExtension(NODE_OID, json.dumps(doc, sort_keys=True).encode())
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(node.spiffe_id(self.trust_domain))]
        return self._issue(public, node.node_id, sans, [ExtendedKeyUsageOID.CLIENT_AUTH], validity, [ext])

    def admin_cert(self, name: str, role: str = "admin") -> tuple[bytes, bytes]:
        """A client cert for the CLI: (cert PEM, key PEM)."""
        if role not in ROLES:
            raise CertificateError(f"role must be one of {', '.join(ROLES)}")
        key = new_key()
        uri = x509.UniformResourceIdentifier(f"spiffe://{self.trust_domain}/admin/{name}")
        ext = x509.UnrecognizedExtension(ROLE_OID, role.encode())
        cert = self._issue(
            key.public_key(), name, [uri], [ExtendedKeyUsageOID.CLIENT_AUTH], ADMIN_VALIDITY, [ext]
        )
        return cert, private_pem(key)

    def principal(self, cert_pem: bytes) -> Principal | None:
        """Who a client cert (already verified by TLS against this CA) names, or None: not one of ours."""
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError:
            return None
        if cert.issuer != self.ca.subject:
            return None
        exts = {e.oid: e.value for e in cert.extensions}
        name = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        node_ext, role_ext = exts.get(NODE_OID), exts.get(ROLE_OID)
        if isinstance(node_ext, x509.UnrecognizedExtension):
            doc = json.loads(node_ext.value)
            node = NodeIdentity(doc["node"], doc["ns"], doc["sa"], dict(doc["labels"]))
            return Principal("sidecar", node.node_id, node, not_after=cert.not_valid_after_utc)
        if isinstance(role_ext, x509.UnrecognizedExtension):
            role = role_ext.value.decode()
            if role in ROLES:
                return Principal("admin", str(name), role=role, not_after=cert.not_valid_after_utc)
        return None


def not_after(cert_pem: bytes) -> datetime.datetime:
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc


def not_before(cert_pem: bytes) -> datetime.datetime:
    return x509.load_pem_x509_certificate(cert_pem).not_valid_before_utc
