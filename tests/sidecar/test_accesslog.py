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
