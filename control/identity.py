"""Who calls control: the verified principal of a call (its TLS client certificate or a Kubernetes
bearer token), and sidecar certificates issued from a CSR to a caller that proved who it is."""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from typing import Any

import grpc
from meshgate.control.ca import Authority, CertificateError, NodeIdentity, Principal
from meshgate.control.keystore import ControlKeys
from meshgate.control.kube import JSON, KubeClient, KubeError
from meshgate.v1 import control_pb2

log = logging.getLogger("meshgate.control.identity")

TOKEN_AUDIENCE = "meshgate"  # the audience of the ServiceAccount token the injector projects
SA_PREFIX = "system:serviceaccount:"
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"


class Unauthenticated(Exception):
    """The caller proved nothing (no certificate of ours, no valid token)."""


def peer_certificate(context: Any) -> bytes:
    """The PEM client certificate TLS verified for this call, or b"" (plaintext, or none presented)."""
    try:
        auth = context.auth_context()
    except Exception:
        return b""
    certs = auth.get("x509_pem_cert") or []
    return bytes(certs[0]) if certs else b""


def bearer_token(context: Any) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :].strip()
    return ""


@dataclass(frozen=True, slots=True)
class TokenUser:
    """A TokenReview's verdict: the user as the API server knows it (for a SubjectAccessReview)."""

    username: str
    raw: JSON  # status.user as returned

    @property
    def service_account(self) -> tuple[str, str] | None:
        """(namespace, name) when the user is a ServiceAccount."""
        if not self.username.startswith(SA_PREFIX):
            return None
        ns, _, name = self.username[len(SA_PREFIX) :].partition(":")
        return (ns, name) if ns and name else None

    @property
    def pod_name(self) -> str:
        extra = self.raw.get("extra") or {}
        names = extra.get(POD_NAME_EXTRA) or []
        return str(names[0]) if names else ""


async def review(kube: KubeClient | None, token: str, audience: str | None = None) -> TokenUser:
    """Ask the API server whose token this is; Unauthenticated when it says nobody's."""
    if kube is None or not token:
        raise Unauthenticated("no Kubernetes API to check a token against" if token else "no token")
    try:
        result = await kube.review_token(token, (audience,) if audience else ())
    except KubeError as exc:
        log.warning("TokenReview failed: %s", exc)
        raise Unauthenticated("the token could not be checked") from None
    status = result.get("status") or {}
    if not status.get("authenticated"):
        raise Unauthenticated("the token is not valid")
    user = status.get("user") or {}
    return TokenUser(str(user.get("username", "")), user)


class Issuer:
    """IssueCertificate: a sidecar certificate for a caller that proved which node it is."""

    def __init__(
        self,
        authority: Authority,
        keys: ControlKeys,
        kube: KubeClient | None = None,
        validity: datetime.timedelta = datetime.timedelta(hours=24),
    ) -> None:
        self.authority = authority
        self.keys = keys
        self.kube = kube
        self.validity = validity

    async def node_for(self, request: control_pb2.CertificateRequest, context: Any) -> NodeIdentity:
        """The node this caller may have a certificate for (see CertificateRequest in control.proto)."""
        claimed = request.node
        current = self.authority.principal(peer_certificate(context))
        if current is not None and current.node is not None:  # renewal: the same identity again
            return current.node
        token = bearer_token(context)
        # The installer's token vouches for the claim, where there is no API server to ask instead.
        if token and self.kube is None and self.keys.check_bootstrap(token):
            if not claimed.id or not claimed.namespace:
                raise Unauthenticated("a bootstrap request must name its node id and namespace")
            return NodeIdentity(claimed.id, claimed.namespace, "default", dict(claimed.labels))
        user = await review(self.kube, token, TOKEN_AUDIENCE)
        sa = user.service_account
        if sa is None or not user.pod_name:
            raise Unauthenticated("the token is not a pod-bound ServiceAccount token")
        assert self.kube is not None
        pod = await self.kube.get_pod(sa[0], user.pod_name)
        if pod is None:
            raise Unauthenticated(f"pod {sa[0]}/{user.pod_name} does not exist")
        labels = (pod.get("metadata") or {}).get("labels") or {}
        node_id = f"{user.pod_name}.{sa[0]}"  # pod names repeat across namespaces (a StatefulSet's db-0)
        return NodeIdentity(node_id, sa[0], sa[1], {str(k): str(v) for k, v in labels.items()})

    async def issue(
        self, request: control_pb2.CertificateRequest, context: Any
    ) -> control_pb2.CertificateResponse:
        try:
            node = await self.node_for(request, context)
            cert = self.authority.sidecar_cert(request.csr_pem, node, self.validity)
        except Unauthenticated as exc:
            log.warning("IssueCertificate refused (%s): %s", context.peer(), exc)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            raise AssertionError("unreachable") from None
        except CertificateError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise AssertionError("unreachable") from None
        principal = self.authority.principal(cert)
        assert principal is not None and principal.not_after is not None
        log.info("issued a certificate to %s (%s)", node.node_id, node.spiffe_id(self.authority.trust_domain))
        return control_pb2.CertificateResponse(
            certificate_pem=cert,
            ca_pem=self.authority.ca_pem,
            not_after_unix=int(principal.not_after.timestamp()),
            identity=node.spiffe_id(self.authority.trust_domain),
        )


def sidecar_principal(authority: Authority, context: Any) -> Principal | None:
    """The sidecar a call's client certificate names, or None."""
    found = authority.principal(peer_certificate(context))
    return found if found is not None and found.kind == "sidecar" else None
