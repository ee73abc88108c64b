"""Integration responses through `kubectl apply` (issue 16): an Api custom resource with a non-proxy
http integration and `responses` fits the CRD's schema, the controller stores it with apply's
validation, and the sidecar answers with the response the backend's status selects; a bad
selectionPattern is refused on the resource's condition with the field path."""

from __future__ import annotations

import copy
import json

import test_controller
import yaml
from aiohttp import web
from test_controller import Env, wait_condition

env, kube = test_controller.env, test_controller.kube  # the controller test's fixtures

API = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {name: catalog, namespace: shop}
spec:
  selector: {matchLabels: {app: pets}}
  templateLanguage: vtl
  routes:
    - method: GET
      path: /items/{code}
      integration:
        type: http
        proxy: false
        uri: "BASE/status/{code}"
        responses:
          - selectionPattern: "4\\\\d{2}"
            status: 404
            responseTemplates: {application/json: '{"missing": $input.json(''$.code'')}'}
          - status: 200
            responseParameters: {method.response.header.X-Backend: integration.response.header.X-Backend}
---
{apiVersion: meshgate.io/v1, kind: Stage, metadata: {name: live, namespace: shop}, spec: {api: catalog}}
"""


async def test_integration_responses_custom_resource_is_accepted_and_served(env: Env) -> None:
    import jsonschema
    from test_deploy import K8S, _structural

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.json_response({"code": code}, status=code, headers={"X-Backend": "b", "X-Other": "o"})

    app = web.Application()
    app.router.add_get("/status/{code}", status)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    api, stage = yaml.safe_load_all(API.replace("BASE", base))
    crds = {d["spec"]["names"]["kind"]: d for d in yaml.safe_load_all((K8S / "crds.yaml").read_text())}
    jsonschema.validate(api, _structural(crds["Api"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]))
    try:
        env.kube.create(api)
        env.kube.create(stage)
        await wait_condition(env.kube, "Api", "catalog", "Accepted", "True")
        await wait_condition(env.kube, "Stage", "live", "Applied", "True")
        [stored] = await env.store.get("Api", "shop", "catalog")
        integ = stored.api.spec.routes[0].integration
        assert [r.status for r in integ.responses] == [404, 200] and integ.HasField("proxy")
        await env.serves("/live/items/200", 200, '"code": 200')
        code, body = await env.get("/live/items/410")
        assert (code, json.loads(body)) == (404, {"missing": 410})

        bad = copy.deepcopy(api)
        bad["metadata"]["name"] = "catalog-bad"
        bad["spec"]["routes"][0]["integration"]["responses"][0]["selectionPattern"] = "4(\\d"
        env.kube.create(bad)
        refused = await wait_condition(env.kube, "Api", "catalog-bad", "Accepted", "False")
        assert refused["message"].startswith("spec.routes[0].integration.responses[0].selectionPattern:")
    finally:
        await runner.cleanup()
