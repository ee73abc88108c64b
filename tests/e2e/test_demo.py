"""`meshgate demo` as a user runs it: its own private etcd, control, apps, sidecar; Ctrl-C stops it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from meshgate.control.etcd_local import free_port
from websockets.sync.client import connect

from .harness import _env, http_get_json, meshgate


def test_demo_starts_serves_prod_and_dev_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    app = free_port()
    while True:  # the demo takes app and app+1
        try:
            with socket.create_server(("127.0.0.1", app + 1)):
                break
        except OSError:
            app = free_port()
    args = meshgate(
        "demo",
        "--port",
        str(free_port()),
        "--admin-port",
        str(free_port()),
        "--control-port",
        str(free_port()),
        "--app-port",
        str(app),
        "--work-dir",
        str(tmp_path),
        "--json-ready",
    )
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        assert proc.stdout is not None
        ready: dict[str, str] = {}
        printed: list[str] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            printed.append(line)
            if line.startswith("{"):
                ready = json.loads(line)
                break
        errors = proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
        assert ready, "".join(printed) + errors
        text = "".join(printed)
        assert "private" in text and "curl -s http://" in text
        port = int(ready["listen"].rsplit(":", 1)[1])
        status, body = http_get_json(port, "/prod/pets/1")
        assert status == 200 and body["service"] == "v1"
        status, body = http_get_json(port, "/dev/pets/1")
        assert status == 200 and body["service"] == "v2"
        status, body = http_get_json(port, "/prod/health")
        assert (status, body) == (200, {"ok": True})
        # The VTL route and the WebSocket API the demo prints lines for
        status, body = http_get_json(port, "/prod/pets/1/card")
        assert status == 200 and body == {
            "card": "pet 1 is a dog for 249.99",
            "servedBy": "v1",
            "stage": "prod",
        }
        ws_line = next(x.strip() for x in printed if " -m websockets ws://" in x)
        with connect(ws_line.split()[-1], open_timeout=10) as ws:
            ws.send(json.dumps({"action": "sendMessage", "text": "hi"}))
            reply = json.loads(ws.recv(timeout=10))
            assert reply["path"] == "/chat/message" and reply["service"] == "v1", reply
            assert reply["headers"]["x-meshgate-route-key"] == "sendMessage"
            # Every CLI line the demo prints runs as printed (the demo made the CLI's credential itself).
        cli_lines = [
            x.strip() for x in printed if "meshgate " in x and x.strip().startswith(("MESHGATE_", "for "))
        ]
        assert len(cli_lines) >= 4, text
        env = {**_env(), "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
        for line in cli_lines:
            done = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=60, env=env)
            assert done.returncode == 0, (line, done.stderr)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
