"""The `meshgate` command: the command line and its dispatch to process commands and admin subcommands.

Process commands (control, sidecar, demo, ...) take their own flags and run
their own module; admin subcommands (apply, get, deploy, ...) are in
`control/cli_admin.py` and talk to a control service over gRPC (`--control`,
env MESHGATE_CONTROL); every failure prints one line per error on stderr and
exits non-zero. As with kubectl, `-n/--namespace` and `-o/--output` may stand
before or after the subcommand. Each implementation is imported only when its
command runs, so `meshgate sidecar` loads no control-plane library (aetcd,
kubernetes_asyncio).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence

DEFAULT_CONTROL = "127.0.0.1:7070"
OUTPUTS = ("table", "yaml", "json")
Subparsers = argparse._SubParsersAction  # what add_subparsers returns


def _flags(output: bool = False) -> list[argparse.ArgumentParser]:
    """The global flags an admin subcommand also takes after its name (kubectl's habit): given
    there, they win; not given, the value before the subcommand (or the default) stays."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-n", "--namespace", default=argparse.SUPPRESS, help="namespace")
    if output:
        p.add_argument(
            "-o", "--output", choices=OUTPUTS, default=argparse.SUPPRESS, help="table, yaml or json"
        )
    return [p]


# ---------------------------------------------------------------- process commands


def cmd_control(rest: list[str]) -> int:
    from meshgate.control.server import run_control

    return run_control(rest)


def cmd_sidecar(rest: list[str]) -> int:
    from meshgate.sidecar.main import main as sidecar_main

    return sidecar_main(rest)


def cmd_demo_app(rest: list[str]) -> int:
    from meshgate.control.demo_app import main as app_main

    return app_main(rest)


def cmd_iptables(rest: list[str]) -> int:
    from meshgate.control.iptables import run

    return run(rest)


def cmd_webhook(rest: list[str]) -> int:
    from meshgate.control.webhook import run

    return run(rest)


def cmd_wait_ready(rest: list[str]) -> int:
    """Block until a sidecar's admin port says /ready (the legacy injection's start hold)."""
    import urllib.request

    p = argparse.ArgumentParser(prog="meshgate wait-ready")
    p.add_argument("--admin", default="127.0.0.1:15000")
    p.add_argument("--timeout", type=float, default=600.0)
    args = p.parse_args(rest)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{args.admin}/ready", timeout=1) as resp:
                if resp.status == 200:
                    return 0
        except OSError:
            pass
        time.sleep(0.2)
    print(f"error: sidecar at {args.admin} not ready after {args.timeout:g}s", file=sys.stderr)
    return 1


def cmd_demo(rest: list[str]) -> int:
    from meshgate.control.demo import main as demo_main

    return demo_main(rest)


PROCESS_COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "control": cmd_control,
    "sidecar": cmd_sidecar,
    "demo": cmd_demo,
    "iptables": cmd_iptables,
    "wait-ready": cmd_wait_ready,
    "webhook": cmd_webhook,
    "demo-app": cmd_demo_app,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meshgate",
        description="meshgate: API gateway features as a mesh sidecar. "
        "Process commands: control, sidecar, demo (see `meshgate control --help`).",
    )
    p.add_argument(
        "--control",
        default=os.environ.get("MESHGATE_CONTROL", DEFAULT_CONTROL),
        help="control service address (env MESHGATE_CONTROL, default %(default)s)",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the control service")
    p.add_argument(
        "--credentials",
        help="directory with ca.crt, tls.crt, tls.key (env MESHGATE_CREDENTIALS; default: the admin "
        "credential a local `meshgate control` writes in its state dir)",
    )
    p.add_argument("--ca-file", help="control's CA certificate, with --token (env MESHGATE_CA_FILE)")
    p.add_argument("--token", help="a bearer token, e.g. `kubectl create token NAME` (env MESHGATE_TOKEN)")
    p.add_argument("-n", "--namespace", default="", help="namespace (default: 'default'; get: all)")
    p.add_argument("-o", "--output", choices=OUTPUTS, default="table", help="get: table, yaml or json")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in (
        ("control", "run the control service"),
        ("sidecar", "run a sidecar"),
        ("demo", "run the local demo"),
        ("iptables", "install the inbound REDIRECT rules (the injected init container)"),
        ("wait-ready", "wait until a sidecar is ready (legacy injection start hold)"),
        ("webhook", "run the sidecar-injection admission webhook (HTTPS)"),
        ("demo-app", "run the sample pet-store app"),
    ):
        sub.add_parser(name, help=help_text, add_help=False)
    _add_release_commands(sub)
    _add_resource_commands(sub)
    return p


def _add_release_commands(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """apply, deploy, rollback, canary."""
    a = sub.add_parser(
        "apply", parents=_flags(), help="validate and store resources from YAML/JSON files or directories"
    )
    a.add_argument("-f", "--filename", action="append", required=True, help="file, directory or - (stdin)")
    a.add_argument("--dry-run", action="store_true", help="validate and report, write nothing")

    d = sub.add_parser(
        "deploy", parents=_flags(), help="snapshot an Api into a new deployment and point a stage at it"
    )
    d.add_argument("api")
    d.add_argument("--stage", required=True)
    d.add_argument(
        "--create-stage", action="store_true", help="create the stage if it does not exist (else refused)"
    )
    d.add_argument("--description", default="")
    d.add_argument("--skip-canary", action="store_true", help="deploy to the base even if a canary is set")

    r = sub.add_parser("rollback", parents=_flags(), help="point a stage at an earlier deployment")
    r.add_argument("api")
    r.add_argument("--stage", required=True)
    r.add_argument("--to", type=int, default=0, help="deployment id (default: the one before the current)")

    c = sub.add_parser("canary", parents=_flags(), help="set, promote or remove a stage's canary")
    c.add_argument("action", choices=["set", "promote", "remove"])
    c.add_argument("api")
    c.add_argument("--stage", required=True)
    c.add_argument("--percent", type=float)
    c.add_argument("--deployment", type=int, default=0, help="canary deployment id (default: current base)")
    c.add_argument("--var", action="append", help="canary stage-variable override KEY=VALUE")
    c.add_argument("--sticky-header", default="")
    c.add_argument("--sticky-cookie", default="")


def _add_resource_commands(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """import, export, inject, cache, get, delete."""
    im = sub.add_parser(
        "import",
        parents=_flags(),
        help="create or update an Api from an OpenAPI 3.0/3.1 or Swagger 2.0 document (AWS API Gateway exports too)",
    )
    im.add_argument("file")
    im.add_argument("--api", required=True, help="name of the Api to create or update")
    im.add_argument(
        "--fail-on-warnings", action="store_true", help="refuse the import when anything was not understood"
    )
    im.add_argument(
        "--function-url",
        default="",
        help="where the Lambda functions of AWS exports run: {function}, {namespace} "
        "(default http://{function}.{namespace}.svc.cluster.local/)",
    )
    im.add_argument("--dry-run", action="store_true")
    im.add_argument("--show", action="store_true", help="print the Api document instead of applying it")

    ex = sub.add_parser(
        "export", parents=_flags(), help="write an Api (as deployed to a stage) as OpenAPI 3.1"
    )
    ex.add_argument("api")
    ex.add_argument(
        "--stage", default="", help="export the deployment this stage serves (default: the live Api)"
    )
    ex.add_argument("-o", "--output", dest="file", default="-", help="file to write (default stdout)")
    ex.add_argument(
        "--format",
        choices=["yaml", "json", "aws"],
        help="default yaml (or -o json before export); aws: API Gateway's export format (YAML)",
    )

    ij = sub.add_parser(
        "inject", help="add the sidecar to Kubernetes workloads offline (like istioctl kube-inject)"
    )
    ij.add_argument("-f", "--filename", required=True, help="YAML file or - (stdin)")
    ij.add_argument("--image", default="ghcr.io/meshgate/meshgate:latest")
    ij.add_argument("--control-address", default="meshgate-control.meshgate-system.svc:7070")
    ij.add_argument("--otlp-endpoint", default="")
    ij.add_argument(
        "--legacy", action="store_true", help="plain container + start hold (clusters before 1.29)"
    )

    f = sub.add_parser("cache", parents=_flags(), help="stage cache operations")
    f.add_argument("action", choices=["flush"])
    f.add_argument("api")
    f.add_argument("--stage", required=True)

    g = sub.add_parser(
        "get",
        parents=_flags(output=True),
        help="list apis, stages, deployments, usageplans, apikeys or sidecars (-o yaml|json: a List; "
        "with a NAME: the one object)",
    )
    g.add_argument("kind")
    g.add_argument("name", nargs="?")
    g.add_argument("--api", default="", help="only stages/deployments of this Api")

    x = sub.add_parser("delete", parents=_flags(), help="delete a resource")
    x.add_argument("kind")
    x.add_argument("name")
    x.add_argument("--api", default="", help="owning Api (stages, deployments)")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Process commands take their own flags: split at the first positional word.
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in (
            "--control",
            "--timeout",
            "-n",
            "--namespace",
            "-o",
            "--output",
            "--credentials",
            "--ca-file",
            "--token",
        ):
            i += 2
            continue
        if word.startswith("-"):
            i += 1
            continue
        if word in PROCESS_COMMANDS:
            parser.parse_args(argv[:i])  # validate the global flags
            return PROCESS_COMMANDS[word](argv[i + 1 :])
        break
    args = parser.parse_args(argv)
    if args.command is None or args.command in PROCESS_COMMANDS:
        parser.print_help()
        return 2
    from meshgate.control.cli_admin import run

    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
