"""Access-log formats: `$context` variables (dotted names included) substituted, the rest kept as text."""

from __future__ import annotations

import json

from meshgate.sidecar.accesslog import access_line


def test_a_dot_after_a_variable_is_text() -> None:
    ctx = {"status": 200, "identity.sourceIp": "10.0.0.1", "requestId": "r1"}
    line = access_line("status=$context.status. ip=$context.identity.sourceIp, id=$context.requestId.", ctx)
    assert line == "status=200. ip=10.0.0.1, id=r1."
    assert access_line("$context.nope", ctx) == "-"
    assert json.loads(access_line("json", ctx)) == ctx


def test_a_value_cannot_forge_a_line() -> None:
    """Values come from requests and upstreams (a transcoded upstream's gRPC message is percent-
    decoded, so it may hold a newline): in a custom format control characters are escaped; JSON
    escapes them itself."""
    ctx = {"status": 502, "error": {"message": 'bad\n{"status":200}\r\x1b[31m'}}
    line = access_line(
        "$context.status $context.error.message", {"status": 502, "error.message": ctx["error"]["message"]}
    )
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert line == '502 bad\\x0a{"status":200}\\x0d\\x1b[31m'
    assert "\n" not in access_line("json", ctx)
