"""Before/after on the hot path: the sidecar of a git revision and of the working tree, side by side.

Both serve the bench's snapshot (and its JWT variant) against one nginx backend; wrk runs alternate
between them, so both see the same machine state, and the best run of each is compared. The
revision's code is checked out into a temporary worktree and imported through a view of the
installed layout (as scripts/typecheck builds one), with this venv's libraries.

`--latency RATE` adds open-loop latency of the plain GET at that fixed rate (bench/openloop.py),
alternating between the two `rounds` times: the median p50 / p99 / p99.9 of each.

Usage: python bench/ab.py --base REV [--duration 5] [--rounds 3] [--latency 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as b
from google.protobuf import json_format

ROOT = Path(__file__).resolve().parent.parent
CONNECTIONS = 32


def view_of(rev: str, tmp: Path) -> Path:
    """A worktree of `rev` and a directory that imports it as `meshgate`."""
    tree = tmp / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree), rev], check=True)
    pkg = tmp / "view" / "meshgate"
    pkg.mkdir(parents=True)
    for f in (tree / "proto" / "meshgate").glob("*.py"):
        (pkg / f.name).symlink_to(f)
    (pkg / "v1").symlink_to(tree / "proto" / "meshgate" / "v1")
    (pkg / "sidecar").symlink_to(tree / "sidecar")
    (pkg / "control").symlink_to(tree / "control")
    return tmp / "view"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="git revision to compare the working tree with")
    p.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--latency", type=int, default=0, help="also open-loop latency at this req/s")
    ns = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="meshgate-ab-") as t:
        tmp = Path(t)
        try:
            return compare(ns, tmp, view_of(ns.base, tmp))
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "tree")], check=False
            )


def compare(ns: argparse.Namespace, work: Path, view: Path) -> int:
    backend = b.free_port()
    jwks, token = b.make_idp()
    (work / "body").mkdir()
    (work / "backend.conf").write_text(b.NGINX_BACKEND.format(dir=work, port=backend, jwks=jwks))
    snaps = {}
    for kind, jwt in (("plain", False), ("jwt", True)):
        snaps[kind] = work / f"{kind}.json"
        snaps[kind].write_text(json_format.MessageToJson(b.bench_snapshot(backend, jwt=jwt)))
    post, post_json = work / "post.lua", work / "post-json.lua"
    post.write_text(b.POST_LUA)
    post_json.write_text(b.JSON_LUA)
    procs = [b.start(["nginx", "-c", str(work / "backend.conf"), "-p", str(work)], work / "backend.log")]
    ports: dict[tuple[str, str], int] = {}
    for side, env in (("base", {"PYTHONPATH": str(view)}), ("tree", {})):
        for kind, snap in snaps.items():
            port, admin = b.free_port(), b.free_port()
            with (work / f"{side}-{kind}.log").open("wb") as log:
                cmd = b.sidecar_cmd(snap, port, admin)
                procs.append(
                    subprocess.Popen(cmd, env={**os.environ, **env}, cwd=work, stdout=log, stderr=log)
                )
            ports[side, kind] = port
    auth = f"Authorization: Bearer {token}"
    cases = (
        ("GET 12B", "plain", "/hello", None, None),
        ("POST 1KB", "plain", "/echo", post, None),
        ("GET JWT+limit", "jwt", "/hello", None, auth),
        ("POST JSON", "plain", "/echo", post_json, None),
        ("POST JSON valid+template", "plain", "/orders", post_json, None),
    )
    try:
        b.wait_http(f"http://127.0.0.1:{backend}/hello")
        for (_, kind), port in ports.items():
            url = f"http://127.0.0.1:{port}/prod/hello"
            b.check_jwt_route(url, token) if kind == "jwt" else b.wait_http(url)
            b.wrk(url, 2, CONNECTIONS, None, auth if kind == "jwt" else None)  # warm-up
        print(
            f"{'case':26s} {'base':>9s} {'tree':>9s}  tree/base   (req/s, best of {ns.rounds} x {ns.duration}s)"
        )
        for case, kind, path, script, header in cases:
            best = {"base": 0.0, "tree": 0.0}
            for _ in range(ns.rounds):
                for side in best:
                    url = f"http://127.0.0.1:{ports[side, kind]}/prod{path}"
                    best[side] = max(best[side], b.wrk(url, ns.duration, CONNECTIONS, script, header)["rps"])
            print(
                f"{case:26s} {best['base']:9.0f} {best['tree']:9.0f}  {best['tree'] / best['base']:.3f}x",
                flush=True,
            )
        if ns.latency:
            latency(ns, {side: ports[side, "plain"] for side in ("base", "tree")})
    finally:
        for proc in procs:
            b.stop(proc)
    return 0


def latency(ns: argparse.Namespace, ports: dict[str, int]) -> None:
    gen = str(Path(__file__).resolve().parent / "openloop.py")
    got: dict[str, list[tuple[float, float, float]]] = {side: [] for side in ports}
    for _ in range(ns.rounds):
        for side, port in ports.items():
            url = f"http://127.0.0.1:{port}/prod/hello"
            cmd = [sys.executable, gen, url, str(ns.latency), str(max(ns.duration, 5))]
            res = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
            got[side].append((res["p50"], res["p99"], res["p999"]))
    print(f"GET 12B at {ns.latency} req/s, ms p50 / p99 / p99.9 (median of {ns.rounds})")
    for side, runs in got.items():
        med = [statistics.median(r[i] for r in runs) for i in range(3)]
        each = "  ".join(f"{r[1]:.2f}" for r in runs)
        print(f"  {side:5s} {med[0]:6.2f} / {med[1]:6.2f} / {med[2]:6.2f}   (p99 per round: {each})")


if __name__ == "__main__":
    raise SystemExit(main())
