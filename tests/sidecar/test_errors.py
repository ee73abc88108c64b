"""The one error table and its HTTP rendering."""

import json

from meshgate.sidecar.errors import GRPC_CODE
from meshgate.sidecar.respond import error_body, render_http_error


def test_grpc_codes_follow_the_table() -> None:
    assert GRPC_CODE[404] == 5
    assert GRPC_CODE[429] == 8
    assert GRPC_CODE[503] == 14
    assert GRPC_CODE[504] == 4
    assert set(GRPC_CODE) >= {400, 401, 403, 404, 405, 408, 413, 429, 431, 500, 502, 503, 504}


def test_error_body_is_json_with_default_message() -> None:
    doc = json.loads(error_body(404, "no stage 'qa'", "rid-1"))
    assert doc == {"message": "Not found", "reason": "no stage 'qa'", "requestId": "rid-1"}
    assert json.loads(error_body(500, "r", "x", "boom"))["message"] == "boom"


def test_render_http_error_is_a_complete_response() -> None:
    raw = render_http_error(405, "bad method", "rid", close=True, extra_headers=[(b"allow", b"GET, POST")])
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 405 Method Not Allowed"
    assert b"content-type: application/json" in lines
    assert b"content-length: %d" % len(body) in lines
    assert b"x-meshgate-request-id: rid" in lines
    assert b"connection: close" in lines
    assert b"allow: GET, POST" in lines
    assert json.loads(body)["reason"] == "bad method"
    assert b"connection: close" not in render_http_error(404, "r", "rid")
