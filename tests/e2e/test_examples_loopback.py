"""The examples' headers as a user runs them: each `examples/*.yaml` says how to try it on one
machine next to `scripts/demo`; those lines run as printed (from the repo root, in one bash, against
this test's control and with this test's free ports for the ones the header names), the example is
applied and served by a sidecar (ACKed, not NACKed), and each curl gets the answer its comment says
(a gateway error's log line shows the path as text)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from meshgate.control.etcd_local import LocalEtcd, free_port

from .harness import _env, mesh

ROOT = Path(__file__).resolve().parents[2]
MARK = "# On one machine"

# What each curl line of a header answers, in order (a fragment of its output).
EXPECT = {
    "request-phase.yaml": [
        '"message": "Forbidden"',
        '"message": "Service unavailable"',
        '"message": "Unauthorized"',
    ],
    "api-definition.yaml": [
        '"error": "invalid order"',
        "access-control-allow-origin: https://shop.example.com",
    ],
}


def header_lines(path: Path) -> list[str]:
    """The commands of the header's "On one machine" block (`#   COMMAND   # comment`)."""
    out: list[str] = []
    inside = False
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if line.startswith(MARK):
            inside = True
        elif inside and line.startswith("#   "):
            out.append(line[4:].strip())
        elif inside:
            break
    return out


def test_every_example_has_lines_to_try_on_one_machine() -> None:
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        lines = header_lines(path)
        assert lines and any(x.startswith(".venv/bin/meshgate apply -f examples/") for x in lines), path.name
        assert path.name in EXPECT, f"{path.name}: say what its curl lines answer in EXPECT"


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_example_header_runs_as_printed_and_serves(etcd: LocalEtcd, tmp_path: Path, name: str) -> None:
    lines = header_lines(ROOT / "examples" / name)
    venv_bin = Path(sys.executable).parent
    with mesh(etcd.endpoint, tmp_path) as m:
        m.start_control()
        script = ["set -euo pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT"]
        for i, line in enumerate(lines):
            # the ports the header names -> free ones; .venv/bin -> this test's venv (the same install)
            for port in sorted(set(re.findall(r"127\.0\.0\.1:(\d+)", line))):
                line = line.replace(f"127.0.0.1:{port}", f"127.0.0.1:{_port(port)}")
            script += [f"echo '::: {i}'", line.replace(".venv/bin/", f"{venv_bin}/")]
        env = {
            **_env(),
            "MESHGATE_CONTROL": f"127.0.0.1:{m.control_port}",  # the CLI's and the sidecar's default
            "MESHGATE_CONTROL_TOKEN_ADDRESS": f"127.0.0.1:{m.token_port}",
        }
        done = subprocess.run(
            ["bash", "-c", "\n".join(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=90
        )
        assert done.returncode == 0, (done.stdout, done.stderr)
        outputs = dict(
            (int(part.split("\n", 1)[0]), part.split("\n", 1)[1] if "\n" in part else "")
            for part in done.stdout.split("::: ")[1:]
        )
        curls = [i for i, line in enumerate(lines) if line.startswith("curl ")]
        assert len(curls) == len(EXPECT[name]), lines
        for i, fragment in zip(curls, EXPECT[name], strict=True):
            assert fragment in outputs[i].lower() if fragment.islower() else fragment in outputs[i], (
                lines[i],
                outputs[i],
            )
        assert "NACK" not in done.stderr, done.stderr
        if name == "request-phase.yaml":  # the sidecar logs the 503 with its path as text, not b'...'
            assert "GET /prod/partner/orders -> 503" in done.stderr and "b'/" not in done.stderr, done.stderr


_PORTS: dict[str, int] = {}


def _port(printed: str) -> int:
    """A free port standing in for one the header prints (the same one for every line)."""
    if printed not in _PORTS:
        _PORTS[printed] = free_port()
    return _PORTS[printed]
