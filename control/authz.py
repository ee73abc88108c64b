"""Admin calls need a principal and a permission: a server interceptor that authenticates every admin
RPC (an admin certificate from control's CA, or a Kubernetes bearer token checked with a TokenReview)
and authorizes it (the certificate's role, or a SubjectAccessReview on the meshgate.io resource and
verb, so Kubernetes RBAC governs the CLI as it governs kubectl). Refusals are logged and counted."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from meshgate.control.ca import Authority
from meshgate.control.crds import GROUP
from meshgate.control.identity import TokenUser, Unauthenticated, bearer_token, peer_certificate, review
from meshgate.control.kube import KubeClient, KubeError
from meshgate.control.state import KIND_WORDS, KINDS
from meshgate.sidecar.metrics import Family, Labels, Value

log = logging.getLogger("meshgate.control.authz")

REFUSED = Family(
    "meshgate_control_refused_calls", "Admin calls refused (unauthenticated or denied)", "counter"
)
READ_VERBS = frozenset({"get", "list"})
# Calls that check their caller themselves: the config stream (a sidecar certificate) and
# IssueCertificate (a certificate, a ServiceAccount token or the bootstrap token).
SELF_CHECKED = frozenset({"StreamConfig", "IssueCertificate"})


@dataclass(frozen=True, slots=True)
class Access:
    """One Kubernetes-style permission a call needs."""

    verb: str
    resource: str  # plural: apis, stages, deployments, usageplans, apikeys, sidecars
    namespace: str = ""
    name: str = ""


def _plural(kind: str) -> str:
    name = KIND_WORDS.get(kind.lower(), kind)
    return KINDS[name][0] if name in KINDS else kind.lower()


def needed(method: str, request: Any) -> list[Access]:
    """What `method` with `request` needs (each one must be allowed)."""
    if method == "Apply":
        out = []
        for res in request.resources:
            which = res.WhichOneof("kind")
            msg = getattr(res, which) if which else None
            ns = msg.metadata.namespace if msg is not None else ""
            kind = next((k for k, (_, _, oneof) in KINDS.items() if oneof == which), "")
            out.append(Access("update", _plural(kind), ns or "default", msg.metadata.name if msg else ""))
        return out or [Access("update", "apis", "default")]
    if method == "Delete":
        ref = request.ref
        return [Access("delete", _plural(ref.kind), ref.namespace or "default", ref.name)]
    if method == "Get":
        verb = "get" if request.name else "list"
        return [Access(verb, _plural(request.kind), request.namespace, request.name)]
    if method == "ListSidecars":
        return [Access("list", "sidecars")]
    # Deploy, Rollback, SetCanary, PromoteCanary, RemoveCanary, FlushStageCache: they change a stage
    return [Access("update", "stages", getattr(request, "namespace", "") or "default", request.stage)]


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated admin: a certificate's name and role, or a Kubernetes user."""

    name: str
    role: str = ""  # for certificate principals
    user: TokenUser | None = None


class AdminAuthorizer(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, authority: Authority, kube: KubeClient | None = None) -> None:
        self.authority = authority
        self.kube = kube
        self.refused: Counter[tuple[str, str]] = Counter()  # (method, "unauthenticated"|"denied")

    async def caller(self, context: Any) -> Caller:
        principal = self.authority.principal(peer_certificate(context))
        if principal is not None:
            if principal.kind != "admin":
                raise Unauthenticated(f"{principal.kind} certificates cannot make admin calls")
            return Caller(principal.name, principal.role)
        user = await review(self.kube, bearer_token(context))
        return Caller(user.username, user=user)

    async def allowed(self, caller: Caller, access: Access) -> bool:
        if caller.user is None:
            return caller.role == "admin" or (caller.role == "viewer" and access.verb in READ_VERBS)
        assert self.kube is not None
        attrs = {"group": GROUP, "resource": access.resource, "verb": access.verb}
        if access.namespace:
            attrs["namespace"] = access.namespace
        if access.name:
            attrs["name"] = access.name
        try:
            result = await self.kube.review_access(caller.user.raw, attrs)
        except KubeError as exc:
            log.warning("SubjectAccessReview failed: %s", exc)
            return False
        return bool((result.get("status") or {}).get("allowed"))

    async def _refuse(self, context: Any, method: str, code: grpc.StatusCode, why: str) -> None:
        self.refused[
            (method, "unauthenticated" if code == grpc.StatusCode.UNAUTHENTICATED else "denied")
        ] += 1
        log.warning("refused %s from %s: %s", method, context.peer(), why)
        await context.abort(code, why)

    async def check(self, method: str, request: Any, context: Any) -> None:
        """Abort the call unless its caller is authenticated and allowed everything it needs."""
        try:
            caller = await self.caller(context)
        except Unauthenticated as exc:
            await self._refuse(context, method, grpc.StatusCode.UNAUTHENTICATED, f"{method}: {exc}")
            return
        for access in needed(method, request):
            if not await self.allowed(caller, access):
                where = f" in {access.namespace}" if access.namespace else ""
                why = f"{caller.name} may not {access.verb} {access.resource}{where}"
                await self._refuse(context, method, grpc.StatusCode.PERMISSION_DENIED, why)
                return

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], details: Any) -> Any:
        handler = await continuation(details)
        method = str(details.method).rsplit("/", 1)[-1]
        if handler is None or method in SELF_CHECKED or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        async def guarded(request: Any, context: Any) -> Any:
            await self.check(method, request, context)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def metrics(self) -> list[tuple[Family, list[tuple[Labels, Value]]]]:
        rows: list[tuple[Labels, Value]] = [
            ((("method", method), ("reason", why)), n) for (method, why), n in sorted(self.refused.items())
        ]
        return [(REFUSED, rows)]
