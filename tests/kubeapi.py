"""A small Kubernetes API server for tests, speaking the real wire format (aiohttp app).

What it implements is what the meshgate controller and `kubectl apply` /
`kubectl wait` use: discovery (`/api`, `/apis`, group versions, `/version`),
list and watch of namespaced resources (`?watch=true&resourceVersion=N`,
newline-delimited ADDED/MODIFIED/DELETED events, BOOKMARK on request,
`timeoutSeconds`, `fieldSelector=metadata.name=X`, and an ERROR event with a
410 Status when the resourceVersion is older than the last compaction, as
the real apiserver's watch cache answers), GET/POST/PUT/PATCH (JSON merge
patch; strategic merge patch is refused with 415 for custom resources, as
the real server does)/DELETE, the `/status` subresource (main-resource writes
ignore status, status writes ignore everything else; `generation` bumps
only on spec changes), optimistic concurrency on `metadata.resourceVersion`
(409), `uid`/`creationTimestamp`/`managedFields`, for the meshgate.io
kinds, coordination.k8s.io/v1 Leases, v1 Events, v1 Secrets (POST of an
existing name: 409 AlreadyExists) and the cluster-scoped
admissionregistration.k8s.io/v1 MutatingWebhookConfigurations, v1 Pods,
ConfigMaps and Namespaces. Each request is logged with its answer's status
code; `on_request` hooks can hold a request (to force a race). No auth of
its own callers and no admission webhooks.

meshgate.io objects go through their CRD's own openAPIV3Schema
(deploy/k8s/crds.yaml, kubeschema.py) as on a real API server: unknown fields
are pruned (a `Warning` header each, or 400 under `fieldValidation=Strict`,
what kubectl sends), defaults are set, and a value the schema refuses is a
422 Invalid with the field path; `/openapi/v3` publishes the schemas and the
`fieldValidation` parameter, so `kubectl apply` validates on the server
(no `--validate=false`). Deletion honours `metadata.finalizers`: a DELETE of
an object that has some sets `deletionTimestamp` (and bumps `generation`),
no finalizer may be added after that, and the object goes (DELETED) when the
last one is removed. A watch or an Exact list from a compacted
resourceVersion is refused with 410 Gone: as an ERROR event in the stream
(the watch cache's way) or, with `gone_as_status`, as the HTTP status.

It also answers what a control plane asks an API server about others, in the
real wire format: TokenReview (authentication.k8s.io/v1; tokens the test
registers, with their audiences; a pod-bound ServiceAccount token is valid
only while its pod exists, as the real server checks) and SubjectAccessReview
(authorization.k8s.io/v1; RBAC-like grants the test adds). Every review is
kept in `reviews` as answered: the request object with its `status`.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from kubeschema import Cause, apply_defaults, invalid_message, load_schemas, prune, validate

JSON = dict[str, Any]
SCHEMAS = load_schemas()  # (apiVersion, kind) -> openAPIV3Schema of the meshgate.io CRDs


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    singular: str
    short_names: tuple[str, ...] = ()
    status: bool = False  # has a /status subresource
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


KINDS = [
    Kind("meshgate.io", "v1", "apis", "Api", "api", ("mgapi",), status=True),
    Kind("meshgate.io", "v1", "stages", "Stage", "stage", ("mgstage",), status=True),
    Kind("meshgate.io", "v1", "usageplans", "UsagePlan", "usageplan", ("mgplan",), status=True),
    Kind("meshgate.io", "v1", "apikeys", "ApiKey", "apikey", ("mgkey",), status=True),
    Kind("coordination.k8s.io", "v1", "leases", "Lease", "lease"),
    Kind("", "v1", "secrets", "Secret", "secret"),
    Kind("", "v1", "events", "Event", "event", ("ev",)),
    Kind("", "v1", "namespaces", "Namespace", "namespace", ("ns",), namespaced=False),
    Kind("", "v1", "pods", "Pod", "pod", ("po",)),
    Kind("", "v1", "configmaps", "ConfigMap", "configmap", ("cm",)),
    Kind(
        "admissionregistration.k8s.io",
        "v1",
        "mutatingwebhookconfigurations",
        "MutatingWebhookConfiguration",
        "mutatingwebhookconfiguration",
        namespaced=False,
    ),
]
BY_PATH = {(k.group, k.version, k.plural): k for k in KINDS}
API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"  # what a token is for unless it says
TOKEN_REVIEW = ("authentication.k8s.io", "v1", "tokenreviews")
ACCESS_REVIEW = ("authorization.k8s.io", "v1", "subjectaccessreviews")


@dataclass(frozen=True)
class Token:
    """A token the fake API server vouches for: its user (TokenReview status.user) and audiences."""

    user: JSON
    audiences: tuple[str, ...] = (API_AUDIENCE,)
    pod: tuple[str, str] = ("", "")  # (namespace, name) of the pod it is bound to


@dataclass(frozen=True)
class Grant:
    """An RBAC rule bound to a user or group: these verbs on these resources of a group."""

    subject: str  # a username or a group
    verbs: frozenset[str]
    resources: frozenset[str]
    group: str = "meshgate.io"
    namespace: str = ""  # "" = cluster-wide (a ClusterRoleBinding)

    def allows(self, user: str, groups: list[str], attrs: JSON) -> bool:
        return (
            (self.subject == user or self.subject in groups)
            and attrs.get("group", "") == self.group
            and attrs.get("resource") in self.resources
            and attrs.get("verb") in self.verbs
            and (not self.namespace or attrs.get("namespace") == self.namespace)
        )


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_error(code: int, reason: str, message: str, **details: Any) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code,
    }
    return web.json_response(body, status=code)


def object_not_found(kind: Kind, name: str) -> web.Response:
    """The API server's 404 for a named object of a kind it serves."""
    return status_error(
        404, "NotFound", f'{kind.plural}.{kind.group} "{name}" not found', name=name, kind=kind.plural
    )


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


@dataclass(eq=False)
class _Watcher:
    kind: Kind
    namespace: str
    name: str
    queue: asyncio.Queue[JSON | None] = field(default_factory=asyncio.Queue)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    user_agent: str
    content_type: str
    body: Any
    status: int = 0  # the answer's status code, once it is known


class KubeApi:
    """State of the fake cluster plus the aiohttp app serving it."""

    def __init__(self) -> None:
        self.objects: dict[tuple[Kind, str, str], JSON] = {}
        self.rv = 100
        self.compacted = 0
        self.log: list[tuple[int, Kind, str, str, JSON]] = []  # rv, kind, namespace, type, object
        self.watchers: set[_Watcher] = set()
        self.requests: list[Request] = []
        # awaited in order before a request is served (after it is logged): a test can hold one back
        self.on_request: list[Callable[[Request], Awaitable[None]]] = []
        self.watch_gate = asyncio.Event()
        self.watch_gate.set()
        self.gone_as_status = False  # a watch from a compacted resourceVersion: HTTP 410, not an ERROR event
        self.warnings: list[str] = []  # Warning headers of the request being served
        self.tokens: dict[str, Token] = {}
        self.grants: list[Grant] = []
        self.reviews: list[JSON] = []  # TokenReviews and SubjectAccessReviews, as answered
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        self.close_watches()
        self.watch_gate.set()
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------------ test controls

    def kind(self, kind: str) -> Kind:
        return next(k for k in KINDS if k.kind == kind)

    def get(self, kind: str, namespace: str, name: str) -> JSON | None:
        obj = self.objects.get((self.kind(kind), namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def create(self, obj: JSON) -> JSON:
        """Store an object as a POST would (for test setup)."""
        kind = next(k for k in KINDS if k.kind == obj["kind"] and k.api_version == obj["apiVersion"])
        ns = obj["metadata"].get("namespace", "default") if kind.namespaced else ""
        created = self._create(kind, ns, copy.deepcopy(obj), "test")
        assert not isinstance(created, web.Response), created.text
        return created

    def delete(self, kind: str, namespace: str, name: str) -> JSON:
        """Delete as a DELETE would: at once, or (finalizers pending) mark it with deletionTimestamp."""
        k = self.kind(kind)
        obj = copy.deepcopy(self.objects[(k, namespace, name)])
        meta = obj["metadata"]
        if meta.get("finalizers"):
            if meta.get("deletionTimestamp"):
                return obj  # already being deleted: nothing changes
            meta["deletionTimestamp"] = now()
            meta["deletionGracePeriodSeconds"] = 0
            if meta.get("generation"):
                meta["generation"] = int(meta["generation"]) + 1
            self.rv += 1
            meta["resourceVersion"] = str(self.rv)
            self.objects[(k, namespace, name)] = obj
            self._emit(k, namespace, "MODIFIED", obj)
            return copy.deepcopy(obj)
        self._remove(k, namespace, name)
        return obj

    def _remove(self, kind: Kind, namespace: str, name: str) -> JSON:
        obj = copy.deepcopy(self.objects.pop((kind, namespace, name)))
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self._emit(kind, namespace, "DELETED", obj)
        return obj

    def compact(self) -> None:
        """Forget the event history: a watch from an older resourceVersion gets 410 Gone."""
        self.compacted = self.rv
        self.log.clear()

    def close_watches(self) -> None:
        """End every open watch (as an apiserver restart or a watch timeout would)."""
        for w in list(self.watchers):
            w.queue.put_nowait(None)

    def bookmark(self) -> None:
        for w in list(self.watchers):
            w.queue.put_nowait(
                {
                    "type": "BOOKMARK",
                    "object": {
                        "kind": w.kind.kind,
                        "apiVersion": w.kind.api_version,
                        "metadata": {"resourceVersion": str(self.rv)},
                    },
                }
            )

    def writes_by(self, user_agent_part: str) -> list[Request]:
        return [
            r
            for r in self.requests
            if r.method in ("POST", "PUT", "PATCH", "DELETE") and user_agent_part in r.user_agent
        ]

    def add_token(
        self, user: JSON, audiences: tuple[str, ...] = (API_AUDIENCE,), pod: tuple[str, str] = ("", "")
    ) -> str:
        """Register a token for `user` (status.user of a TokenReview) and return it."""
        token = "tok-" + uuid.uuid4().hex
        self.tokens[token] = Token(copy.deepcopy(user), audiences, pod)
        return token

    def service_account_token(
        self, namespace: str, account: str, pod: str, audiences: tuple[str, ...] = ("meshgate",)
    ) -> str:
        """A projected token of `pod` (which must exist) running as ServiceAccount namespace/account,
        with the user the real API server reports for one."""
        obj = self.get("Pod", namespace, pod)
        assert obj is not None, f"no pod {namespace}/{pod}"
        user = {
            "username": f"system:serviceaccount:{namespace}:{account}",
            "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"sa/{namespace}/{account}")),
            "groups": [
                "system:serviceaccounts",
                f"system:serviceaccounts:{namespace}",
                "system:authenticated",
            ],
            "extra": {
                "authentication.kubernetes.io/credential-id": [f"JTI={uuid.uuid4()}"],
                "authentication.kubernetes.io/node-name": ["kind-worker"],
                "authentication.kubernetes.io/node-uid": [str(uuid.uuid4())],
                "authentication.kubernetes.io/pod-name": [pod],
                "authentication.kubernetes.io/pod-uid": [obj["metadata"]["uid"]],
            },
        }
        return self.add_token(user, audiences, (namespace, pod))

    def grant(
        self, subject: str, verbs: str, resources: str, group: str = "meshgate.io", namespace: str = ""
    ) -> None:
        """Allow `subject` (user or group) the space-separated verbs on the space-separated resources."""
        self.grants.append(
            Grant(subject, frozenset(verbs.split()), frozenset(resources.split()), group, namespace)
        )

    def token_review(self, review: JSON) -> JSON:
        """The answer to a TokenReview: authenticated with the user when the token is known, meant for
        one of the asked audiences (the API server's own when none are asked) and, when bound to a pod,
        that pod still exists; otherwise status.error, as the real server says it."""
        spec = review.get("spec") or {}
        known = self.tokens.get(str(spec.get("token", "")))
        wanted = [str(a) for a in spec.get("audiences") or []] or [API_AUDIENCE]
        error = ""
        if known is None:
            error = "[invalid bearer token, square/go-jose: error in cryptographic primitive]"
        elif not set(known.audiences) & set(wanted):
            error = (
                f"[invalid bearer token, token audiences {json.dumps(list(known.audiences))} is invalid "
                f"for the target audiences {json.dumps(wanted)}]"
            )
        elif known.pod[1] and self.get("Pod", *known.pod) is None:
            error = f'[invalid bearer token, pod "{known.pod[1]}" not found]'
        if error:
            status: JSON = {"user": {}, "error": error}
        else:
            assert known is not None
            status = {
                "authenticated": True,
                "user": copy.deepcopy(known.user),
                "audiences": [a for a in wanted if a in known.audiences],
            }
        return {**review, "metadata": {"creationTimestamp": None}, "status": status}

    def access_review(self, review: JSON) -> JSON:
        """The answer to a SubjectAccessReview: allowed when a grant covers the resourceAttributes."""
        spec = review.get("spec") or {}
        user, groups = str(spec.get("user", "")), [str(g) for g in spec.get("groups") or []]
        attrs = spec.get("resourceAttributes") or {}
        grant = next((g for g in self.grants if g.allows(user, groups, attrs)), None)
        status: JSON = {"allowed": False}
        if grant is not None:
            how = "ClusterRoleBinding" if not grant.namespace else f"RoleBinding in {grant.namespace}"
            status = {
                "allowed": True,
                "reason": f'RBAC: allowed by {how} of a test grant to "{grant.subject}"',
            }
        return {**review, "metadata": {"creationTimestamp": None}, "status": status}

    def reviews_of(self, kind: str) -> list[JSON]:
        return [r for r in self.reviews if r.get("kind") == kind]

    # ------------------------------------------------------------------ storage

    def _emit(self, kind: Kind, namespace: str, type_: str, obj: JSON) -> None:
        self.log.append((self.rv, kind, namespace, type_, copy.deepcopy(obj)))
        for w in list(self.watchers):
            if self._matches(w, kind, namespace, obj):
                w.queue.put_nowait({"type": type_, "object": copy.deepcopy(obj)})

    @staticmethod
    def _matches(w: _Watcher, kind: Kind, namespace: str, obj: JSON) -> bool:
        return (
            w.kind == kind
            and (not w.namespace or w.namespace == namespace)
            and (not w.name or w.name == obj["metadata"].get("name"))
        )

    def _admit(self, kind: Kind, obj: JSON, validation: str, old: JSON | None = None) -> web.Response | None:
        """A meshgate.io object as the API server stores it: pruned, defaulted and validated against its
        CRD's schema (`validation`: the fieldValidation directive); a refusal as the server words it."""
        schema = SCHEMAS.get((kind.api_version, kind.kind))
        if schema is None:
            return None
        name = str((obj.get("metadata") or {}).get("name", ""))
        dropped = prune(obj, schema)
        if dropped and validation == "Strict":
            unknown = ", ".join(f'unknown field "{d}"' for d in dropped)
            return status_error(
                400,
                "BadRequest",
                f'{kind.kind} in version "{kind.version}" cannot be handled as a {kind.kind}: '
                f"strict decoding error: {unknown}",
            )
        if validation != "Ignore":
            self.warnings += [f'unknown field "{d}"' for d in dropped]
        apply_defaults(obj, schema)
        causes = validate(obj, schema)
        new_finalizers = set((obj.get("metadata") or {}).get("finalizers") or [])
        if old is not None and old["metadata"].get("deletionTimestamp"):
            added = sorted(new_finalizers - set(old["metadata"].get("finalizers") or []))
            if added:
                found = "[]string{" + ", ".join(f'"{f}"' for f in added) + "}"
                causes.append(
                    Cause(
                        "FieldValueForbidden",
                        "metadata.finalizers",
                        f"Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {found}",
                    )
                )
        if not causes:
            return None
        return status_error(
            422,
            "Invalid",
            invalid_message(kind.kind, kind.group, name, causes),
            name=name,
            group=kind.group,
            kind=kind.kind,
            causes=[{"reason": c.reason, "message": c.message, "field": c.field} for c in causes],
        )

    def _create(
        self, kind: Kind, ns: str, obj: JSON, manager: str, validation: str = "Warn"
    ) -> JSON | web.Response:
        meta = obj.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            return status_error(422, "Invalid", "metadata.name: Required value")
        refused = self._admit(kind, obj, validation)
        if refused is not None:
            return refused
        if (kind, ns, name) in self.objects:
            return status_error(
                409,
                "AlreadyExists",
                f'{kind.plural}.{kind.group} "{name}" already exists',
                name=name,
                group=kind.group,
                kind=kind.plural,
            )
        self.rv += 1
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        if kind.namespaced:
            meta["namespace"] = ns
        meta.update(
            uid=str(uuid.uuid4()),
            resourceVersion=str(self.rv),
            creationTimestamp=now(),
        )
        meta.pop("deletionTimestamp", None)
        _encode_string_data(kind, obj)
        if kind.status:
            obj.pop("status", None)  # the status subresource is written only through /status
            meta["generation"] = 1
        meta["managedFields"] = [self._managed_entry(kind, manager, "Update", obj)]
        self.objects[(kind, ns, name)] = obj
        self._emit(kind, ns, "ADDED", obj)
        return copy.deepcopy(obj)

    @staticmethod
    def _managed_entry(kind: Kind, manager: str, operation: str, obj: JSON, subresource: str = "") -> JSON:
        fields: JSON = {f"f:{k}": {} for k in obj if k not in ("apiVersion", "kind", "metadata", "status")}
        if subresource:
            fields = {"f:status": {}}
        entry = {
            "manager": manager,
            "operation": operation,
            "apiVersion": kind.api_version,
            "time": now(),
            "fieldsType": "FieldsV1",
            "fieldsV1": fields,
        }
        if subresource:
            entry["subresource"] = subresource
        return entry

    def _update(
        self,
        kind: Kind,
        ns: str,
        name: str,
        new: JSON,
        manager: str,
        subresource: str,
        operation: str,
        validation: str = "Warn",
    ) -> JSON | web.Response:
        old = self.objects.get((kind, ns, name))
        if old is None:
            return object_not_found(kind, name)
        want_rv = (new.get("metadata") or {}).get("resourceVersion")
        if want_rv and want_rv != old["metadata"]["resourceVersion"]:
            return status_error(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {kind.plural}.{kind.group} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
                name=name,
                kind=kind.plural,
            )
        result = copy.deepcopy(old)
        if subresource == "status":
            if "status" in new:
                result["status"] = copy.deepcopy(new["status"])
            else:
                result.pop("status", None)
        else:
            for k in list(result):
                if k not in ("apiVersion", "kind", "metadata", "status"):
                    del result[k]
            for k, v in new.items():
                if k in ("apiVersion", "kind", "metadata") or (k == "status" and kind.status):
                    continue
                result[k] = copy.deepcopy(v)
            new_meta = new.get("metadata") or {}
            for k in ("labels", "annotations", "finalizers", "ownerReferences"):
                if k in new_meta:
                    result["metadata"][k] = copy.deepcopy(new_meta[k])
                else:
                    result["metadata"].pop(k, None)
            if not kind.status:
                result.pop("status", None)
                if "status" in new:
                    result["status"] = copy.deepcopy(new["status"])
            _encode_string_data(kind, result)
        refused = self._admit(kind, result, validation, old)
        if refused is not None:
            return refused
        if result == old:
            return copy.deepcopy(old)  # a no-op write keeps the resourceVersion, as the real server does
        if result["metadata"].get("deletionTimestamp") and not result["metadata"].get("finalizers"):
            self.objects[(kind, ns, name)] = result
            return self._remove(kind, ns, name)  # the last finalizer is gone: so is the object
        if kind.status and subresource != "status":
            spec_old = {k: v for k, v in old.items() if k not in ("metadata", "status")}
            spec_new = {k: v for k, v in result.items() if k not in ("metadata", "status")}
            if spec_old != spec_new:
                result["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
        self.rv += 1
        result["metadata"]["resourceVersion"] = str(self.rv)
        managed = [
            m
            for m in result["metadata"].get("managedFields", [])
            if (m.get("manager"), m.get("subresource", "")) != (manager, subresource)
        ]
        managed.append(self._managed_entry(kind, manager, operation, result, subresource))
        result["metadata"]["managedFields"] = managed
        self.objects[(kind, ns, name)] = result
        self._emit(kind, ns, "MODIFIED", result)
        return copy.deepcopy(result)

    # ------------------------------------------------------------------ HTTP

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        """Log the request, run the hooks, serve it and note the answer's status in the log."""
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                return status_error(400, "BadRequest", "the request body is not JSON")
        entry = Request(
            request.method,
            request.path,
            dict(request.query),
            request.headers.get("User-Agent", ""),
            request.headers.get("Content-Type", ""),
            body,
        )
        self.requests.append(entry)
        for hook in self.on_request:
            await hook(entry)
        self.warnings = []
        resp = await self._serve(request, body)
        for warning in self.warnings:  # (set by the synchronous write _serve just made)
            resp.headers.add("Warning", f'299 - "{_go_quote(warning)}"')
        entry.status = resp.status
        return resp

    async def _serve(self, request: web.Request, body: Any) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if request.method == "GET":
            discovery = self._discovery(parts) or _openapi_v3(parts)
            if discovery is not None:
                return web.json_response(discovery)
        if parts[:1] == ["api"] and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return status_error(404, "NotFound", "the server could not find the requested resource")
        ns = ""
        if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) > 2:
            ns, rest = rest[1], rest[2:]
        if not rest:
            return status_error(404, "NotFound", "the server could not find the requested resource")
        if (group, version, rest[0]) in (TOKEN_REVIEW, ACCESS_REVIEW) and not ns and len(rest) == 1:
            return self._review((group, version, rest[0]), request.method, body)
        kind = BY_PATH.get((group, version, rest[0]))
        if kind is None:
            return status_error(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else ""
        subresource = rest[2] if len(rest) > 2 else ""
        if subresource and (subresource != "status" or not kind.status):
            return status_error(404, "NotFound", "the server could not find the requested resource")
        manager = request.query.get("fieldManager") or _manager(request.headers.get("User-Agent", ""))
        validation = request.query.get("fieldValidation") or "Warn"
        if validation not in ("Ignore", "Warn", "Strict"):
            return status_error(
                400, "BadRequest", f"fieldValidation must be one of Ignore, Warn or Strict, got {validation}"
            )
        if not name:
            if request.method == "GET":
                if _bool(request.query.get("watch")):
                    return await self._watch(request, kind, ns)
                return self._list(request, kind, ns)
            if request.method == "POST":
                if not isinstance(body, dict):
                    return status_error(400, "BadRequest", "expected an object")
                meta_ns = (body.get("metadata") or {}).get("namespace")
                if meta_ns and ns and meta_ns != ns:
                    return status_error(
                        400,
                        "BadRequest",
                        "the namespace of the provided object does not match the namespace sent on the request",
                    )
                if request.query.get("dryRun"):
                    return web.json_response(body, status=201)
                return _answer(self._create(kind, ns, body, manager, validation), 201)
            return status_error(405, "MethodNotAllowed", f"{request.method} is not supported")
        key = (kind, ns, name)
        if request.method == "GET":
            obj = self.objects.get(key)
            if obj is None:
                return object_not_found(kind, name)
            return web.json_response(obj)
        if request.method == "PUT":
            if not isinstance(body, dict):
                return status_error(400, "BadRequest", "expected an object")
            return _answer(
                self._update(kind, ns, name, body, manager, subresource, "Update", validation), 200
            )
        if request.method == "PATCH":
            ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
            if ctype != "application/merge-patch+json":
                accepted = (
                    "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
                )
                return status_error(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - accepted media types include: {accepted}",
                )
            old = self.objects.get(key)
            if old is None:
                return object_not_found(kind, name)
            patched = merge_patch(copy.deepcopy(old), body)
            if "resourceVersion" not in ((body or {}).get("metadata") or {}):
                patched["metadata"].pop("resourceVersion", None)
            return _answer(
                self._update(kind, ns, name, patched, manager, subresource, "Update", validation), 200
            )
        if request.method == "DELETE":
            obj = self.objects.get(key)
            if obj is None:
                return object_not_found(kind, name)
            if self.delete(kind.kind, ns, name)["metadata"].get("finalizers"):
                return web.json_response(self.objects[key])  # marked for deletion: the object, as it is now
            return web.json_response(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": {
                        "name": name,
                        "group": kind.group,
                        "kind": kind.plural,
                        "uid": obj["metadata"]["uid"],
                    },
                }
            )
        return status_error(405, "MethodNotAllowed", f"{request.method} is not supported")

    def _review(self, which: tuple[str, str, str], method: str, body: Any) -> web.Response:
        """POST of a TokenReview or SubjectAccessReview (create-only, cluster-scoped, not stored)."""
        if method != "POST":
            return status_error(405, "MethodNotAllowed", f"{method} is not supported")
        kind = "TokenReview" if which == TOKEN_REVIEW else "SubjectAccessReview"
        if (
            not isinstance(body, dict)
            or body.get("kind") != kind
            or body.get("apiVersion") != f"{which[0]}/v1"
        ):
            return status_error(400, "BadRequest", f"expected a {which[0]}/v1 {kind}")
        answer = self.token_review(body) if kind == "TokenReview" else self.access_review(body)
        self.reviews.append(copy.deepcopy(answer))
        return web.json_response(answer, status=201)

    def _selected(self, request: web.Request, kind: Kind, ns: str) -> list[JSON]:
        name = _field_name(request.query.get("fieldSelector", ""))
        return [
            o
            for (k, ons, oname), o in sorted(self.objects.items(), key=lambda kv: kv[0][1:])
            if k == kind and (not ns or ons == ns) and (not name or oname == name)
        ]

    def _list(self, request: web.Request, kind: Kind, ns: str) -> web.Response:
        rv = request.query.get("resourceVersion", "")
        if request.query.get("resourceVersionMatch") == "Exact" and rv and int(rv) < self.compacted:
            return _expired(rv, self.compacted)  # that version of the list is compacted away
        return web.json_response(
            {
                "apiVersion": kind.api_version,
                "kind": f"{kind.kind}List",
                "metadata": {"resourceVersion": str(self.rv)},
                "items": [copy.deepcopy(o) for o in self._selected(request, kind, ns)],
            }
        )

    async def _watch(self, request: web.Request, kind: Kind, ns: str) -> web.StreamResponse:
        await self.watch_gate.wait()
        rv_param = request.query.get("resourceVersion", "")
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        w = _Watcher(kind, ns, _field_name(request.query.get("fieldSelector", "")))
        too_old = rv_param not in ("", "0") and int(rv_param) < self.compacted
        if too_old and self.gone_as_status:
            return _expired(rv_param, self.compacted)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        if too_old:
            error = {
                "type": "ERROR",
                "object": {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "message": f"too old resource version: {rv_param} ({self.compacted})",
                    "reason": "Expired",
                    "code": 410,
                },
            }
            await resp.write(json.dumps(error).encode() + b"\n")
            return resp
        if rv_param in ("", "0"):
            backlog = [
                {"type": "ADDED", "object": copy.deepcopy(o)} for o in self._selected(request, kind, ns)
            ]
        else:
            start = int(rv_param)
            backlog = [
                {"type": t, "object": copy.deepcopy(o)}
                for rv, k, ons, t, o in self.log
                if rv > start and self._matches(w, k, ons, o)
            ]
        for event in backlog:
            w.queue.put_nowait(event)
        self.watchers.add(w)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                try:
                    event = await asyncio.wait_for(w.queue.get(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    break
                if event is None:
                    break
                if event["type"] == "BOOKMARK" and not _bool(request.query.get("allowWatchBookmarks")):
                    continue
                await resp.write(json.dumps(event).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.watchers.discard(w)
        return resp

    def _discovery(self, parts: list[str]) -> JSON | None:
        groups: dict[str, list[Kind]] = {}
        for k in KINDS:
            groups.setdefault(k.group, []).append(k)
        if parts == ["version"]:
            return {"major": "1", "minor": "32", "gitVersion": "v1.32.0", "platform": "linux/amd64"}
        if parts == ["api"]:
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}
                ],
            }
        if parts == ["apis"]:
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [
                    {
                        "name": g,
                        "versions": [{"groupVersion": f"{g}/v1", "version": "v1"}],
                        "preferredVersion": {"groupVersion": f"{g}/v1", "version": "v1"},
                    }
                    for g in groups
                    if g
                ],
            }
        if parts in (["api", "v1"], *[["apis", g, "v1"] for g in groups if g]):
            group = "" if parts[0] == "api" else parts[1]
            resources = []
            for k in groups[group]:
                resources.append(
                    {
                        "name": k.plural,
                        "singularName": k.singular,
                        "namespaced": k.namespaced,
                        "kind": k.kind,
                        "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                        **({"shortNames": list(k.short_names)} if k.short_names else {}),
                    }
                )
                if k.status:
                    resources.append(
                        {
                            "name": f"{k.plural}/status",
                            "singularName": "",
                            "namespaced": True,
                            "kind": k.kind,
                            "verbs": ["get", "patch", "update"],
                        }
                    )
            return {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": f"{group}/v1" if group else "v1",
                "resources": resources,
            }
        return None


def _expired(rv: str, compacted: int) -> web.Response:
    """410 Gone for a resourceVersion older than the last compaction, as the HTTP answer."""
    return status_error(410, "Expired", f"too old resource version: {rv} ({compacted})")


def _go_quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _openapi_v3(parts: list[str]) -> JSON | None:
    """`/openapi/v3` (the index) and a document per group version: each kind's paths with, on its
    PATCH, the `fieldValidation` parameter kubectl looks for before it leaves validation to the
    server, and the meshgate.io kinds' schemas."""
    versions = sorted({k.api_version for k in KINDS})
    prefix = {gv: ("api/" if "/" not in gv else "apis/") + gv for gv in versions}
    if parts == ["openapi", "v3"]:
        return {"paths": {p: {"serverRelativeURL": f"/openapi/v3/{p}?hash=0"} for p in prefix.values()}}
    gv = next((gv for gv, p in prefix.items() if parts[2:] == p.split("/")), None)
    if parts[:2] != ["openapi", "v3"] or gv is None:
        return None
    paths: JSON = {}
    schemas: JSON = {}
    params = [
        {"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
        for n in ("dryRun", "fieldManager", "fieldValidation", "force")
    ]
    for kind in KINDS:
        if kind.api_version != gv:
            continue
        gvk = {"group": kind.group, "version": kind.version, "kind": kind.kind}
        collection = f"/{prefix[gv]}/{'namespaces/{namespace}/' if kind.namespaced else ''}{kind.plural}"
        schema = SCHEMAS.get((gv, kind.kind))
        patch: JSON = {
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": gvk,
            "parameters": params,
        }
        if schema is not None:
            ref = ".".join([*reversed(kind.group.split(".")), kind.version, kind.kind])
            schemas[ref] = {**copy.deepcopy(schema), "x-kubernetes-group-version-kind": [gvk]}
            patch["requestBody"] = {
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}
            }
        paths[collection] = {
            "post": {
                "x-kubernetes-action": "post",
                "x-kubernetes-group-version-kind": gvk,
                "parameters": params,
            }
        }
        paths[collection + "/{name}"] = {
            "get": {"x-kubernetes-action": "get", "x-kubernetes-group-version-kind": gvk},
            "put": {
                "x-kubernetes-action": "put",
                "x-kubernetes-group-version-kind": gvk,
                "parameters": params,
            },
            "patch": patch,
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _encode_string_data(kind: Kind, obj: JSON) -> None:
    """A Secret's write-only stringData is merged into data (base64), as the apiserver does."""
    if kind.kind == "Secret" and "stringData" in obj:
        data = obj.setdefault("data", {})
        for k, v in (obj.pop("stringData") or {}).items():
            data[k] = base64.b64encode(str(v).encode()).decode()


def _bool(value: str | None) -> bool:
    """Query booleans as the apiserver parses them (Go's strconv.ParseBool)."""
    return (value or "") in ("1", "t", "T", "true", "TRUE", "True")


def _field_name(selector: str) -> str:
    for term in selector.split(","):
        key, _, value = term.partition("=")
        if key == "metadata.name":
            return value.lstrip("=")
    return ""


def _manager(user_agent: str) -> str:
    return user_agent.split("/", 1)[0] or "unknown"


def _answer(result: JSON | web.Response, status: int) -> web.Response:
    return result if isinstance(result, web.Response) else web.json_response(result, status=status)
