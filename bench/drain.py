"""SIGTERM under keep-alive load: wrk against one sidecar, SIGTERM mid-run, wrk's errors inside the drain window.

The sidecar serves the bench's snapshot in front of the nginx backend (bench/run.py). wrk runs
-t1 -c32 for --duration seconds; --sigterm-at seconds in, the sidecar gets SIGTERM. The drain
window (--drain-seconds, default 10) outlasts the rest of the run, so every error wrk counts
happened inside it: connect errors are refused connections, read/write errors resets on
keep-alive connections, non-2xx failed requests. Prints wrk's figures, how many responses said
`Connection: close`, how soon /ready turned 503 and when and how the sidecar exited.

With --base REV the same run is made first with the sidecar of that git revision (imported
through a worktree view, as bench/ab.py does), for the before/after.

Usage: python bench/drain.py [--duration 10] [--sigterm-at 3] [--drain-seconds 10] [--base REV]
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ab
import run as b
from google.protobuf import json_format

CONNECTIONS = 32

# Counts responses and those with `Connection: close` (one wrk thread: -t1).
COUNT_LUA = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) responses = 0; closes = 0 end
function response(status, headers, body)
  responses = responses + 1
  local c = headers["connection"] or headers["Connection"]
  if c ~= nil and string.lower(c) == "close" then closes = closes + 1 end
end
function done(summary, latency, requests)
  local r, c = 0, 0
  for _, t in ipairs(threads) do r = r + t:get("responses"); c = c + t:get("closes") end
  io.write(string.format("responses %d close %d\\n", r, c))
end
"""


def ready_status(admin: int) -> int:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=1)
        conn.request("GET", "/ready")
        status = conn.getresponse().status
        conn.close()
        return status
    except OSError:
        return -1


def parse(out: str) -> dict[str, int]:
    figures = {"requests": 0, "connect": 0, "read": 0, "write": 0, "timeout": 0, "non2xx": 0}
    m = re.search(r"(\d+) requests in", out)
    if m:
        figures["requests"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        for key, value in zip(("connect", "read", "write", "timeout"), m.groups(), strict=True):
            figures[key] = int(value)
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if m:
        figures["non2xx"] = int(m.group(1))
    m = re.search(r"responses (\d+) close (\d+)", out)
    if m:
        figures["responses"], figures["close"] = int(m.group(1)), int(m.group(2))
    return figures


def one_run(
    ns: argparse.Namespace, work: Path, backend: int, label: str, env: dict[str, str]
) -> dict[str, float]:
    snap = work / "snapshot.json"
    port, admin = b.free_port(), b.free_port()
    cmd = b.sidecar_cmd(snap, port, admin, "--drain-seconds", str(ns.drain_seconds))
    with (work / f"sidecar-{label}.log").open("wb") as log:
        sidecar = subprocess.Popen(cmd, env={**os.environ, **env}, cwd=work, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}/prod/hello"
    try:
        b.wait_http(url)
        script = work / "count.lua"
        script.write_text(COUNT_LUA)
        wrk_cmd = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{ns.duration}s", "-s", str(script), url]
        wrk = subprocess.Popen(wrk_cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started = time.monotonic()
        time.sleep(ns.sigterm_at)
        t_sig = time.monotonic()
        sidecar.send_signal(signal.SIGTERM)
        ready_503 = float("nan")
        while time.monotonic() - t_sig < 1.0:
            status = ready_status(admin)
            if status == 503:
                ready_503 = time.monotonic() - t_sig
                break
            if status == -1:  # admin port gone: the sidecar is exiting
                break
            time.sleep(0.005)
        out, _ = wrk.communicate(timeout=ns.duration + 30)
        wrk_end = time.monotonic()
        code = sidecar.wait(ns.drain_seconds + 15)
        exited = time.monotonic() - t_sig
    finally:
        b.stop(sidecar)
    figures: dict[str, float] = {**parse(out)}
    figures.update(
        ready_503_ms=ready_503 * 1000,
        exit_code=code,
        exit_after_sigterm_s=exited,
        window_covers_rest=float(wrk_end - t_sig <= ns.drain_seconds),
        wrk_s=wrk_end - started,
    )
    return figures


def report(label: str, f: dict[str, float]) -> None:
    errors = f["connect"] + f["read"] + f["write"] + f["timeout"] + f["non2xx"]
    print(f"\n[{label}] wrk -t1 -c{CONNECTIONS}, SIGTERM at {f['sigterm_at']:g}s")
    print(f"  requests {f['requests']:.0f}  responses with Connection: close {f.get('close', 0):.0f}")
    print(
        f"  socket errors: connect {f['connect']:.0f}, read {f['read']:.0f}, write {f['write']:.0f}, "
        f"timeout {f['timeout']:.0f}; non-2xx {f['non2xx']:.0f}  => failed {errors:.0f}"
    )
    print(f"  /ready 503 after {f['ready_503_ms']:.0f} ms (nan: never seen)")
    print(f"  sidecar exit code {f['exit_code']:.0f}, {f['exit_after_sigterm_s']:.2f}s after SIGTERM")
    if not f["window_covers_rest"]:
        print("  note: wrk ran past the drain window; errors after it are not the drain's")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=10, help="seconds of wrk (default %(default)s)")
    p.add_argument("--sigterm-at", type=float, default=3.0, help="seconds into the run (default %(default)s)")
    p.add_argument(
        "--drain-seconds", type=float, default=10.0, help="the sidecar's window (default %(default)s)"
    )
    p.add_argument("--base", help="also run the sidecar of this git revision first, for the before figures")
    ns = p.parse_args()
    for tool in ("wrk", "nginx"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            print(f"error: {tool} not found (apt-get install wrk nginx-light)", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="meshgate-drain-") as t:
        work = Path(t)
        backend = b.free_port()
        jwks, _ = b.make_idp()
        (work / "body").mkdir()
        (work / "backend.conf").write_text(b.NGINX_BACKEND.format(dir=work, port=backend, jwks=jwks))
        (work / "snapshot.json").write_text(json_format.MessageToJson(b.bench_snapshot(backend)))
        nginx = b.start(["nginx", "-c", str(work / "backend.conf"), "-p", str(work)], work / "backend.log")
        runs: list[tuple[str, dict[str, str]]] = []
        failed = 0.0
        try:
            b.wait_http(f"http://127.0.0.1:{backend}/hello")
            if ns.base:
                runs.append((f"base {ns.base}", {"PYTHONPATH": str(ab.view_of(ns.base, work))}))
            runs.append(("tree", {}))
            for label, env in runs:
                figures = one_run(ns, work, backend, label.split()[0], env)
                figures["sigterm_at"] = ns.sigterm_at
                report(label, figures)
                if label == "tree":
                    failed = sum(figures[k] for k in ("connect", "read", "write", "timeout", "non2xx"))
                    failed += figures["exit_code"] != 0
        finally:
            b.stop(nginx)
            if ns.base:
                subprocess.run(
                    ["git", "-C", str(ab.ROOT), "worktree", "remove", "--force", str(work / "tree")],
                    check=False,
                )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
