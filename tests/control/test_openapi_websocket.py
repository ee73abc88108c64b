"""A WebSocket API through OpenAPI: exported (the integration in x-meshgate-integration, a 101
response for readers), written as YAML or JSON and imported back to the same, valid Api."""

from __future__ import annotations

import json

import yaml
from meshgate.control.openapi import X_INTEGRATION, export_openapi, import_openapi
from meshgate.control.resources import load_documents
from meshgate.control.state import unwrap
from meshgate.control.validation import validate
from meshgate.v1 import resources_pb2

CHAT = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {name: chat}
spec:
  selector: {matchLabels: {app: chat}}
  routes:
    - method: GET
      path: /chat
      operationName: chat
      integration:
        type: websocket_api
        routeSelectionExpression: $request.body.meta.action
        maxMessageBytes: 65536
        websocketRoutes:
          $connect:    {type: http, uri: "http://chat.svc:8080/connect"}
          $disconnect: {type: http, uri: "http://chat.svc:8080/disconnect"}
          $default:    {type: http, uri: "http://chat.svc:8080/default", timeoutMs: 3000}
          sendMessage: {type: http, uri: "http://${stageVariables.chat}/message"}
    - method: GET
      path: /relay
      integration: {type: websocket, uri: "ws://relay.svc:9000/"}
    - {method: GET, path: /health, integration: {type: mock, mock: {body: ok}}}
"""


def chat() -> resources_pb2.Api:
    api = unwrap(load_documents(CHAT)[0])
    assert isinstance(api, resources_pb2.Api)
    return api


def test_a_websocket_api_survives_export_and_import() -> None:
    api = chat()
    doc = export_openapi("chat", api.spec)
    op = doc["paths"]["/chat"]["get"]
    assert op[X_INTEGRATION]["type"] == "websocket_api"
    assert sorted(op[X_INTEGRATION]["websocketRoutes"]) == [
        "$connect",
        "$default",
        "$disconnect",
        "sendMessage",
    ]
    assert op[X_INTEGRATION]["routeSelectionExpression"] == "$request.body.meta.action"
    assert list(op["responses"]) == ["101"]
    assert "$request.body.meta.action" in op["responses"]["101"]["description"]
    assert list(doc["paths"]["/relay"]["get"]["responses"]) == ["101"]
    assert list(doc["paths"]["/health"]["get"]["responses"]) == ["default"]
    for text in (yaml.safe_dump(doc, sort_keys=False), json.dumps(doc)):  # what `meshgate export` writes
        result = import_openapi(yaml.safe_load(text), "chat")
        assert result.warnings == []
        assert result.api.spec == api.spec
        validate(resources_pb2.Resource(api=result.api))  # what `meshgate import` then applies


def test_an_imported_websocket_api_keeps_every_route_setting() -> None:
    doc = export_openapi("chat", chat().spec)
    integ = import_openapi(doc, "chat", "team").api.spec.routes[0].integration
    assert integ.max_message_bytes == 65536
    assert integ.websocket_routes["$default"].timeout_ms == 3000
    assert integ.websocket_routes["sendMessage"].uri == "http://${stageVariables.chat}/message"
