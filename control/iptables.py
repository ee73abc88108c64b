"""The injected init container's job: REDIRECT inbound TCP for the app's ports to the sidecar.

PREROUTING only sees traffic entering the pod, so the sidecar's own calls to
the app on loopback are never redirected; a uid guard keeps the sidecar's
outbound traffic out of any OUTPUT capture (as Istio's init does).
"""

from __future__ import annotations

import shutil
import subprocess
import sys


def rules(app_ports: list[int], proxy_port: int, proxy_uid: int) -> list[list[str]]:
    nat = ["iptables", "-t", "nat"]
    out = [
        [*nat, "-N", "MESHGATE_INBOUND"],
        [*nat, "-A", "PREROUTING", "-p", "tcp", "-j", "MESHGATE_INBOUND"],
        [*nat, "-N", "MESHGATE_OUTPUT"],
        [*nat, "-A", "OUTPUT", "-p", "tcp", "-j", "MESHGATE_OUTPUT"],
        [*nat, "-A", "MESHGATE_OUTPUT", "-m", "owner", "--uid-owner", str(proxy_uid), "-j", "RETURN"],
    ]
    for port in sorted(set(app_ports)):
        if port == proxy_port:
            continue
        out.append(
            [
                *nat,
                "-A",
                "MESHGATE_INBOUND",
                "-p",
                "tcp",
                "--dport",
                str(port),
                "-j",
                "REDIRECT",
                "--to-ports",
                str(proxy_port),
            ]
        )
    return out


def run(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="meshgate iptables", description=__doc__)
    p.add_argument("--app-port", type=int, action="append", default=[])
    p.add_argument("--proxy-port", type=int, default=15001)
    p.add_argument("--proxy-uid", type=int, default=1337)
    p.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    args = p.parse_args(argv)
    cmds = rules(args.app_port, args.proxy_port, args.proxy_uid)
    if args.dry_run:
        for cmd in cmds:
            print(" ".join(cmd))
        return 0
    if shutil.which("iptables") is None:
        print("error: iptables not found in the init container image", file=sys.stderr)
        return 1
    for cmd in cmds:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"error: {' '.join(cmd)}: {proc.stderr.strip()}", file=sys.stderr)
            return 1
    print(f"redirecting inbound tcp ports {args.app_port} to {args.proxy_port}")
    return 0
