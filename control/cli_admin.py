"""The admin subcommands of `meshgate` (apply, get, deploy, canary, import, export, inject, ...):
gRPC calls to a control service, tables and documents out, every failure on stderr one line per
error, the field path first (`error: spec.routes[0].integration.type: must be ...`), the same for
what the CLI finds and what control refuses.

Imported by `control/cli.py` only when an admin subcommand runs, so process commands such as
`meshgate sidecar` never load what these need.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.protobuf import json_format
from meshgate.control.errors import (
    ERRORS_TRAILER,
    ControlError,
    FieldError,
    InvalidConfig,
    errors_from_trailer,
)
from meshgate.control.resources import Document, holds_redacted, read_documents, to_document
from meshgate.control.state import KIND_WORDS, unwrap
from meshgate.sidecar.credentials import cli_credentials
from meshgate.v1 import control_pb2, control_pb2_grpc, resources_pb2

KIND_ALIASES = {**KIND_WORDS, "dep": "Deployment"}


class CliError(ControlError):
    """A user-facing failure: one line per error on stderr, exit code 1."""


def _kv(items: Sequence[str] | None, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(FieldError(flag, f"expects KEY=VALUE, got {item!r}"))
        out[key] = value
    return out


def _line(e: FieldError) -> str:
    """One error as printed: the field path, the message, then where (file and document)."""
    text = ": ".join(part for part in (e.field, e.message) if part)
    return f"{text} ({e.resource})" if e.resource else text


WHO = {
    grpc.StatusCode.UNAUTHENTICATED: "unauthenticated: control did not accept this credential",
    grpc.StatusCode.PERMISSION_DENIED: "permission denied to this credential",
}


def _stub(args: argparse.Namespace) -> control_pb2_grpc.ControlServiceStub:
    try:
        creds = cli_credentials(args.credentials, args.ca_file, args.token)
    except OSError as exc:
        raise CliError(str(exc)) from None
    # a refusal's errors travel in its trailers (control's `errors_trailer`): room for all of them
    channel = grpc.secure_channel(
        args.control, creds.channel(), options=[("grpc.max_metadata_size", 1 << 20)]
    )
    return control_pb2_grpc.ControlServiceStub(channel)


def _call(args: argparse.Namespace, method: str, request: Any) -> Any:
    """Call one admin RPC; a refusal becomes a CliError with control's errors, field by field (no
    gRPC status names: `not_found:` tells a user nothing the message does not)."""
    stub = _stub(args)
    try:
        return getattr(stub, method)(request, timeout=args.timeout)
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        details = (exc.details() if hasattr(exc, "details") else str(exc)) or ""
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            why = "no answer in time" if code == grpc.StatusCode.DEADLINE_EXCEEDED else "unavailable"
            first = details.splitlines()[0] if details else why
            raise CliError(f"control service at {args.control} unreachable: {first}") from None
        trailers = dict(exc.trailing_metadata() or ()) if hasattr(exc, "trailing_metadata") else {}
        if ERRORS_TRAILER in trailers:
            raise CliError(*errors_from_trailer(trailers[ERRORS_TRAILER])) from None
        lines = details.splitlines() or ["control refused the call"]
        if code in WHO:  # the identity, not the request, was refused: say so after control's reason
            lines[-1] += f" ({WHO[code]})"
        raise CliError(*lines) from None


# ---------------------------------------------------------------- apply / delete


def _place(doc: Document) -> str:
    """Where a document is, as errors name it: `conf/pets.yaml document 2, Stage default/prod`."""
    place = f"{doc.origin or 'stdin'} document {doc.number}" if doc.number else doc.origin or "stdin"
    return f"{place}, {doc.subject}" if doc.subject else place


def _refused(found: list[tuple[Document, FieldError]]) -> CliError:
    """Every error of a document set, each placed at its document; then how many, when several."""
    errors = [replace(e, resource=_place(doc)) for doc, e in found]
    if len(errors) > 1:
        docs = len({id(doc) for doc, _ in found})
        errors.append(FieldError("", f"{len(errors)} errors in {docs} document(s); nothing was applied"))
    return CliError(*errors)


def cmd_apply(args: argparse.Namespace) -> int:
    from meshgate.control.validation import validate  # (jsonschema, templates: only apply needs them)

    docs: list[Document] = []
    namespace = args.namespace or "default"
    for source in args.filename:
        if source == "-":
            docs += read_documents(sys.stdin.read(), namespace)
        else:
            path = Path(source)
            if not path.exists():
                raise CliError(FieldError("", "no such file or directory", source))
            docs += read_documents(path, namespace)
    if not docs:
        raise CliError("no documents found")
    # the checks control makes of each resource on its own, here too: one apply shows every error,
    # those of documents that do not parse and those of documents that do
    for doc in docs:
        if doc.resource is not None and not holds_redacted(unwrap(doc.resource)):
            try:
                validate(doc.resource)
            except InvalidConfig as exc:
                doc.errors += exc.errors
    found = [(doc, e) for doc in docs for e in doc.errors]
    if found:
        raise _refused(found)
    resources = [doc.resource for doc in docs if doc.resource is not None]
    try:
        resp = _call(args, "Apply", control_pb2.ApplyRequest(resources=resources, dry_run=args.dry_run))
    except CliError as exc:  # control's refusals (references, private targets, stage variables)
        if not any(e.index is not None for e in exc.errors):
            raise
        raise _refused(
            [(docs[e.index] if e.index is not None else Document("", 0, e.resource), e) for e in exc.errors]
        ) from None
    suffix = " (dry run)" if args.dry_run else ""
    for r in resp.results:
        print(f"{r.kind.lower()}/{r.name} {r.action}{suffix}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    kind = _kind(args.kind)
    if kind in ("Stage", "Deployment") and not args.api:
        raise CliError(FieldError("--api", f"required to delete a {kind.lower()} (the Api it belongs to)"))
    ref = control_pb2.ObjectRef(
        kind=kind, namespace=args.namespace or "default", name=args.name, api=args.api
    )
    _call(args, "Delete", control_pb2.DeleteRequest(ref=ref))
    print(f"{kind.lower()}/{args.name} deleted")
    return 0


# ---------------------------------------------------------------- deploy / rollback / canary


def cmd_deploy(args: argparse.Namespace) -> int:
    resp = _call(
        args,
        "Deploy",
        control_pb2.DeployRequest(
            namespace=args.namespace or "default",
            api=args.api,
            stage=args.stage,
            description=args.description,
            skip_canary=args.skip_canary,
            create_stage=args.create_stage,
        ),
    )
    where = "canary of stage" if resp.to_canary else "stage"
    print(f"deployment {resp.deployment} of {args.api} now serves {where} {args.stage}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    resp = _call(
        args,
        "Rollback",
        control_pb2.RollbackRequest(
            namespace=args.namespace or "default", api=args.api, stage=args.stage, deployment=args.to
        ),
    )
    print(f"stage {args.stage} of {args.api} rolled back to deployment {resp.deployment}")
    return 0


def cmd_canary(args: argparse.Namespace) -> int:
    req = control_pb2.CanaryRequest(namespace=args.namespace or "default", api=args.api, stage=args.stage)
    if args.action == "set":
        if args.percent is None:
            raise CliError(FieldError("--percent", "required to set a canary"))
        req.canary.CopyFrom(
            resources_pb2.CanarySettings(
                deployment=args.deployment,
                percent=args.percent,
                variables=_kv(args.var, "--var"),
                sticky_header=args.sticky_header,
                sticky_cookie=args.sticky_cookie,
            )
        )
        resp = _call(args, "SetCanary", req)
        c = resp.stage.spec.canary
        print(f"stage {args.stage}: {c.percent:g}% of requests to canary deployment {c.deployment}")
    elif args.action == "promote":
        resp = _call(args, "PromoteCanary", req)
        print(f"stage {args.stage}: canary promoted, deployment {resp.stage.spec.deployment} serves 100%")
    else:
        resp = _call(args, "RemoveCanary", req)
        print(f"stage {args.stage}: canary removed, deployment {resp.stage.spec.deployment} serves 100%")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from meshgate.control.openapi import OpenApiError, import_openapi
    from meshgate.control.openapi_aws import DEFAULT_FUNCTION_URL

    path = Path(args.file)
    if not path.exists():
        raise CliError(f"{args.file}: no such file or directory")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CliError(f"{args.file}: invalid YAML/JSON: {str(exc).splitlines()[0]}") from None
    # AWS exports: where a Lambda function (aws_proxy integration, token/request authorizer) runs;
    # `--function-url` once control/cli.py defines it (default http://{function}.{namespace}.svc.cluster.local/)
    function_url = getattr(args, "function_url", None) or DEFAULT_FUNCTION_URL
    try:
        function_url.format(function="f", namespace="n")
    except (KeyError, IndexError, ValueError):
        raise CliError(
            f"--function-url {function_url!r}: only {{function}} and {{namespace}} may be substituted"
        ) from None
    try:
        result = import_openapi(doc, args.api, args.namespace or "default", function_url=function_url)
    except OpenApiError as exc:
        raise CliError(f"{args.file}: {exc}") from None
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if result.warnings and args.fail_on_warnings:
        raise CliError(f"{len(result.warnings)} warning(s) and --fail-on-warnings: nothing applied")
    res = resources_pb2.Resource(api=result.api)
    if args.show:
        print(yaml.safe_dump(to_document(res), sort_keys=False), end="")
        return 0
    try:
        resp = _call(args, "Apply", control_pb2.ApplyRequest(resources=[res], dry_run=args.dry_run))
    except CliError as exc:
        subject = f"Api {result.api.metadata.namespace}/{result.api.metadata.name}"
        raise CliError(*(replace(e, resource=f"{args.file}, {subject}") for e in exc.errors)) from None
    suffix = " (dry run)" if args.dry_run else ""
    for r in resp.results:
        print(
            f"{r.kind.lower()}/{r.name} {r.action}{suffix} ({len(result.api.spec.routes)} routes, {len(result.warnings)} warnings)"
        )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from meshgate.control.openapi import export_document

    ns = args.namespace or "default"
    version = "live"
    if args.stage:
        stages = _call(
            args, "Get", control_pb2.GetRequest(kind="Stage", namespace=ns, name=args.stage, api=args.api)
        )
        if not stages.resources:
            raise CliError(f"stage {args.stage} of Api {ns}/{args.api} not found")
        dep_id = stages.resources[0].stage.spec.deployment
        if not dep_id:
            raise CliError(f"stage {args.stage} is not deployed yet")
        deps = _call(
            args,
            "Get",
            control_pb2.GetRequest(
                kind="Deployment", namespace=ns, name=f"{args.api}-{dep_id}", api=args.api
            ),
        )
        if not deps.resources:
            raise CliError(f"deployment {dep_id} of Api {ns}/{args.api} not found")
        spec = deps.resources[0].deployment.spec.api_spec
        version = str(dep_id)
    else:
        apis = _call(args, "Get", control_pb2.GetRequest(kind="Api", namespace=ns, name=args.api))
        if not apis.resources:
            raise CliError(f"Api {ns}/{args.api} not found")
        spec = apis.resources[0].api.spec
    fmt = args.format or ("json" if args.output == "json" else "yaml")  # `meshgate -o json export ...`
    doc = export_document(args.api, spec, stage=args.stage or "", version=version, fmt=fmt, namespace=ns)
    text = json.dumps(doc, indent=2) + "\n" if fmt == "json" else yaml.safe_dump(doc, sort_keys=False)
    if args.file and args.file != "-":
        Path(args.file).write_text(text)
        print(f"wrote {args.file} ({len(doc['paths'])} paths)")
    else:
        print(text, end="")
    return 0


def cmd_inject(args: argparse.Namespace) -> int:
    from meshgate.control.inject import InjectConfig, inject_object

    path = Path(args.filename)
    if args.filename != "-" and not path.exists():
        raise CliError(f"{args.filename}: no such file or directory")
    text = sys.stdin.read() if args.filename == "-" else path.read_text()
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise CliError(f"{args.filename}: invalid YAML: {str(exc).splitlines()[0]}") from None
    cfg = InjectConfig(
        image=args.image, control=args.control_address, otlp_endpoint=args.otlp_endpoint, legacy=args.legacy
    )
    out = []
    for doc in docs:
        if not isinstance(doc, dict):
            raise CliError(f"{args.filename}: every document must be a Kubernetes object")
        injected, what = inject_object(doc, cfg)
        name = (doc.get("metadata") or {}).get("name", "?")
        print(f"{doc.get('kind', '?')}/{name}: {what}", file=sys.stderr)
        out.append(injected)
    print(yaml.safe_dump_all(out, sort_keys=False), end="")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    resp = _call(
        args,
        "FlushStageCache",
        control_pb2.FlushStageCacheRequest(
            namespace=args.namespace or "default", api=args.api, stage=args.stage
        ),
    )
    print(f"stage {args.stage}: cache flushed on every sidecar (epoch {resp.stage.spec.cache.flush_epoch})")
    return 0


# ---------------------------------------------------------------- get


def _kind(word: str) -> str:
    kind = KIND_ALIASES.get(word.lower())
    if kind is None:
        raise CliError(f"unknown kind {word!r} (apis, stages, deployments, usageplans, apikeys, sidecars)")
    return kind


def _age_of(meta: resources_pb2.ObjectMeta) -> str:
    """AGE, as kubectl's: since the object was created (an object stored before creation times
    were kept: since its last update)."""
    return _age(meta.creation_time_unix_nano or meta.update_time_unix_nano)


def _age(unix_nano: int) -> str:
    if not unix_nano:
        return "-"
    secs = max(0, int(time.time() - unix_nano / 1e9))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{secs}s"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = [
        "   ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def _rows(kind: str, resources: Sequence[resources_pb2.Resource]) -> tuple[list[str], list[list[str]]]:
    if kind == "Api":
        return ["NAMESPACE", "NAME", "ROUTES", "ENDPOINT", "SELECTOR", "AGE"], [
            [
                r.api.metadata.namespace,
                r.api.metadata.name,
                str(len(r.api.spec.routes)),
                r.api.spec.endpoint_type or "cluster",
                ",".join(f"{k}={v}" for k, v in sorted(r.api.spec.selector.match_labels.items())) or "*",
                _age_of(r.api.metadata),
            ]
            for r in resources
        ]
    if kind == "Stage":
        rows = []
        for r in resources:
            s = r.stage
            canary = (
                f"{s.spec.canary.percent:g}%->{s.spec.canary.deployment}" if s.spec.canary.percent else "-"
            )
            rows.append(
                [
                    s.metadata.namespace,
                    s.spec.api,
                    s.metadata.name,
                    str(s.spec.deployment or "-"),
                    canary,
                    ",".join(f"{k}={v}" for k, v in sorted(s.spec.variables.items())) or "-",
                    _age_of(s.metadata),
                ]
            )
        return ["NAMESPACE", "API", "STAGE", "DEPLOYMENT", "CANARY", "VARIABLES", "AGE"], rows
    if kind == "Deployment":
        return ["NAMESPACE", "API", "ID", "ROUTES", "DESCRIPTION", "AGE"], [
            [
                r.deployment.metadata.namespace,
                r.deployment.spec.api,
                str(r.deployment.id),
                str(len(r.deployment.spec.api_spec.routes)),
                r.deployment.spec.description or "-",
                _age(r.deployment.spec.created_unix_nano or r.deployment.metadata.update_time_unix_nano),
            ]
            for r in resources
        ]
    if kind == "UsagePlan":
        return ["NAMESPACE", "NAME", "APIS", "RATE", "BURST", "QUOTA"], [
            [
                r.usage_plan.metadata.namespace,
                r.usage_plan.metadata.name,
                ",".join(r.usage_plan.spec.apis) or "-",
                f"{r.usage_plan.spec.throttle.rate_limit:g}",
                str(r.usage_plan.spec.throttle.burst_limit),
                (
                    f"{r.usage_plan.spec.quota.limit}/{r.usage_plan.spec.quota.period}"
                    if r.usage_plan.spec.quota.limit
                    else "-"
                ),
            ]
            for r in resources
        ]
    return ["NAMESPACE", "NAME", "USAGE PLAN", "ENABLED"], [
        [
            r.api_key.metadata.namespace,
            r.api_key.metadata.name,
            r.api_key.spec.usage_plan or "-",
            str(r.api_key.spec.enabled).lower(),
        ]
        for r in resources
    ]


def _emit(docs: list[dict[str, Any]], output: str, one: bool) -> None:
    """`-o json|yaml`: the object itself for `get KIND NAME`, else a List, whatever the count (as
    kubectl prints them, so that a script reads `.items` with 0, 1 or many)."""
    out = docs[0] if one else {"apiVersion": "v1", "kind": "List", "items": docs}
    if output == "json":
        print(json.dumps(out, indent=2))
    else:
        print(yaml.safe_dump(out, sort_keys=False), end="")


def cmd_get(args: argparse.Namespace) -> int:
    if args.kind.lower() in ("sidecar", "sidecars"):
        return _get_sidecars(args)
    kind = _kind(args.kind)
    req = control_pb2.GetRequest(
        kind=kind, namespace=args.namespace or "", name=args.name or "", api=args.api
    )
    resp = _call(args, "Get", req)
    resources = list(resp.resources)
    if args.name and not resources:
        raise CliError(f"{kind.lower()} {args.name!r} not found")
    if args.output in ("yaml", "json"):
        _emit([to_document(r) for r in resources], args.output, one=bool(args.name))
        return 0
    if not resources:
        print(f"no {kind.lower()}s found", file=sys.stderr)
        return 0
    header, rows = _rows(kind, resources)
    print(_table(header, rows))
    return 0


def _get_sidecars(args: argparse.Namespace) -> int:
    resp = _call(args, "ListSidecars", control_pb2.ListSidecarsRequest())
    sidecars = [s for s in resp.sidecars if not args.name or s.node.id == args.name]
    if args.name and not sidecars:
        raise CliError(f"sidecar {args.name!r} not found")
    if args.output in ("yaml", "json"):
        docs = [json_format.MessageToDict(s) for s in sidecars]
        _emit(docs, args.output, one=bool(args.name))
        return 0
    rows = []
    for s in sidecars:
        in_sync = "yes" if s.acked_version and s.acked_version == s.sent_version else "no"
        rows.append(
            [
                s.node.id,
                s.node.namespace,
                ",".join(f"{k}={v}" for k, v in sorted(s.node.labels.items())) or "-",
                s.control_id,
                s.acked_version or "-",
                in_sync,
                f"{s.last_apply_latency_ms:.1f}ms" if s.last_ack_unix_nano else "-",
                str(s.nack_count),
                (s.last_nack_error.splitlines()[0][:80] if s.last_nack_error else "-"),
            ]
        )
    if not rows:
        print("no sidecars connected", file=sys.stderr)
        return 0
    header = [
        "NODE",
        "NAMESPACE",
        "LABELS",
        "CONTROL",
        "ACKED",
        "SYNCED",
        "APPLY LATENCY",
        "NACKS",
        "LAST NACK",
    ]
    print(_table(header, rows))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "apply": cmd_apply,
    "deploy": cmd_deploy,
    "rollback": cmd_rollback,
    "canary": cmd_canary,
    "import": cmd_import,
    "export": cmd_export,
    "inject": cmd_inject,
    "cache": cmd_cache,
    "get": cmd_get,
    "delete": cmd_delete,
}


def run(args: argparse.Namespace) -> int:
    """Run the admin subcommand `args.command` (parsed by cli.build_parser); each error one line."""
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a reader gone (`| head`) shows here, not at exit
        return code
    except BrokenPipeError:
        # the reader took what it wanted and left: quiet, as a process killed by SIGPIPE (kubectl)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except ControlError as exc:
        for e in exc.errors:
            print(f"error: {_line(e)}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(
            f"error: {exc.strerror or exc}: {getattr(exc, 'filename', '') or ''}".rstrip(": "),
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 130
