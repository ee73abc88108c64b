"""`scripts/demo` as a newcomer runs it, on a fresh clone: bootstrap installs once (one line per step,
no warning block) and not again for the other README command, the demo serves every protocol, every
line it prints runs as printed from the clone's root (HTTP, WebSocket, a WebSocket API, gRPC, the
CLI), the README shows the same lines, and Ctrl-C stops everything and removes the demo's temp dir."""

from __future__ import annotations

import itertools
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from meshgate.control.demo import lines as demo_lines
from meshgate.control.etcd_local import free_port, free_port_pair

ROOT = Path(__file__).resolve().parents[2]

# What each printed line answers (a fragment of its output), by the start of its title: every line
# the demo prints needs one here.
EXPECT = {
    "prod stage": '"service": "v1"',
    "dev stage": '"service": "v2"',
    "POST through": '"created": {"type": "bird"}',
    "mock integration": '{"ok": true}',
    "a VTL response template": '"card": "pet 1 is a dog for 249.99"',
    "gateway error: 404": '"reason": ',
    "WebSocket pass-through": "v1 echo: hi",
    "a WebSocket API": '"x-meshgate-route-key": "sendMessage"',
    "gRPC through": '"pet": {"id": 1, "price": 249.99, "type": "dog"}',
    "a gRPC server stream": '"type": "fish"',
    "stages and their": "pets",
    "sidecars:": "demo-sidecar",
    "20% canary": "",
    "see the split": '"service": "v1"',
    "promote the canary": "",
    "a new deployment": "",
    "sidecar admin: ready": '"version"',
    "counters and gauges": "config.version",
}


def fresh_clone(tmp_path: Path) -> Path:
    """A `git clone` of this repository with the working tree's changes on top (what CI checks out
    once they are committed), and a `.venv` that borrows this test run's installed dependencies
    (a .pth to its site-packages) so that bootstrap installs meshgate itself without downloads."""
    clone = tmp_path / "meshgate"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=60)
    changed = subprocess.run(
        ["git", "ls-files", "-z", "--modified", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in changed)):
        src, dst = ROOT / name, clone / name
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        elif dst.exists():
            dst.unlink()  # deleted in the working tree
    base = getattr(sys, "_base_executable", "") or "python3"
    subprocess.run([base, "-m", "venv", str(clone / ".venv")], check=True, timeout=120)
    import site

    site_dir = next(Path(clone / ".venv" / "lib").glob("python3*/site-packages"))
    (site_dir / "zz-test-borrowed.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return clone


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "MESHGATE_VENV")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def printed_lines(text: str) -> list[tuple[str, str]]:
    """(title, command) of each line to try in the demo's output: `  # title` then `  command`."""
    out = []
    rows = text.split("Try (from the repo root):", 1)[1].splitlines()
    for title, command in itertools.pairwise(rows):
        if title.startswith("  # ") and command.startswith("  ") and not command.startswith("  #"):
            out.append((title[4:], command.strip()))
    return out


def run_interactive(command: str, typed: str, want: str, cwd: Path) -> str:
    """Run an interactive line, type `typed`, read until `want` shows (or 15 s), then Ctrl-D."""
    proc = subprocess.Popen(
        ["bash", "-c", command],
        cwd=cwd,
        env=_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdin is not None and proc.stdout is not None
    seen = b""
    try:
        proc.stdin.write(typed.encode() + b"\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 15
        while want.encode() not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.2)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                seen += chunk
        proc.stdin.close()
        seen += proc.stdout.read()
        assert proc.wait(15) == 0, (command, seen)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return seen.decode(errors="replace")


def test_readme_shows_the_lines_the_demo_prints() -> None:
    """The README's "Two commands" block is the demo's lines for its default ports, in order."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    shown = [row.split("   # ", 1)[0] for row in blocks[-1].splitlines()]
    assert shown == [line.command for line in demo_lines()]
    # and a demo line quoted elsewhere in the README (`.venv/bin/...` against the demo's ports) is one too
    commands = {line.command for line in demo_lines()}
    for quoted in re.findall(r"`(\.venv/bin/[^`]*127\.0\.0\.1:80[0-9]{2}[^`]*)`", readme):
        assert quoted in commands, quoted


@pytest.mark.timeout(300)
def test_fresh_clone_demo_every_printed_line_runs_as_printed(tmp_path: Path) -> None:
    clone = fresh_clone(tmp_path)
    # scripts/test's bootstrap, then scripts/demo's: one install, one line per step, no warning block
    first = subprocess.run(
        ["scripts/bootstrap", "--dev"], cwd=clone, env=_env(), capture_output=True, text=True, timeout=240
    )
    assert first.returncode == 0 and first.stdout.strip() == ".venv", first.stderr
    steps = [x for x in first.stderr.splitlines() if x.startswith("bootstrap: ")]
    assert [x.split(":", 2)[1].strip() for x in steps] == ["pip", "ready"], first.stderr
    assert "!!" not in first.stderr and "Warning" not in first.stderr, first.stderr
    second = subprocess.run(
        ["scripts/bootstrap"], cwd=clone, env=_env(), capture_output=True, text=True, timeout=60
    )
    assert second.returncode == 0 and second.stdout.strip() == ".venv" and second.stderr == "", second.stderr

    app = free_port_pair()
    ports = {"--port": free_port(), "--grpc-port": free_port(), "--admin-port": free_port()}
    args = ["scripts/demo", "--control-port", str(free_port_pair()), "--app-port", str(app)]
    args += ["--app-grpc-port", str(free_port_pair()), "--json-ready"]
    for flag, port in ports.items():
        args += [flag, str(port)]
    proc = subprocess.Popen(
        args, cwd=clone, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        printed: list[str] = []
        ready: dict[str, str] = {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            row = proc.stdout.readline()
            if not row:
                break
            printed.append(row)
            if row.startswith("{"):
                ready = json.loads(row)
                break
        text = "".join(printed)
        assert ready, text + (proc.stderr.read() if proc.poll() is not None else "")
        work = Path(ready["work"])
        assert f"logs            {work}/" in text and "removed on stop; --keep keeps them" in text

        shown = printed_lines(text)
        assert len(shown) >= 12, text
        commands = " ".join(command for _, command in shown)
        for what in ("curl -s http://", "-m websockets ws://", "/prod/chat", "demo-app call", "meshgate get"):
            assert what in commands, what
        for title, command in shown:
            want = next((v for k, v in EXPECT.items() if title.startswith(k)), None)
            assert want is not None, f"no expectation for the printed line {title!r}"
            if "; type: " in title:
                out = run_interactive(command, title.split("; type: ", 1)[1], want, clone)
            else:
                done = subprocess.run(
                    ["bash", "-c", command], cwd=clone, env=_env(), capture_output=True, text=True, timeout=60
                )
                assert done.returncode == 0, (command, done.stdout, done.stderr)
                out = done.stdout
            assert want in out, (command, out)

        sidecar_log = (work / "sidecar.log").read_text()
        assert f"grpc 127.0.0.1:{ports['--grpc-port']}" in sidecar_log.splitlines()[0], sidecar_log
        proc.send_signal(signal.SIGINT)
        rest, errors = proc.communicate(timeout=30)
        assert proc.returncode == 0, errors
        assert f"removed {work}" in rest and not work.exists(), rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
