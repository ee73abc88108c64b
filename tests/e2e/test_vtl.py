"""VTL mapping templates through control: `meshgate apply -f` of an Api with `templateLanguage: vtl`, a
deploy, and a sidecar process that renders them; a VTL template that does not parse is refused at apply."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

from meshgate.control.etcd_local import LocalEtcd

from .harness import mesh
from .test_request_phase import cli

CONFIG = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {{name: pets}}
spec:
  selector: {{matchLabels: {{app: pets}}}}
  templateLanguage: vtl
  routes:
    - method: POST
      path: /pets
      integration:
        type: http
        uri: "http://127.0.0.1:{backend}/pets"
        requestTemplates:
          application/json: |
            #set($tags = $input.path('$.tags'))
            {{"name": $input.json('$.petName'), "stage": "$context.stage", "tags": [#foreach($t in $tags)"$t.toUpperCase()"#if($foreach.hasNext),#end#end]}}
        responseTemplates:
          application/json: |
            #set($context.responseOverride.status = 200)
            #set($context.responseOverride.header.X-Served-By = "$input.path('$.service')")
            {{"created": $input.json('$.data.created')}}
"""
BROKEN = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {name: broken}
spec:
  templateLanguage: vtl
  routes:
    - method: POST
      path: /x
      integration:
        type: http
        uri: "http://127.0.0.1:9/x"
        requestTemplates: {"application/json": "#foreach($a in $b) no end"}
"""


def test_vtl_api_through_control_and_a_sidecar_process(etcd: LocalEtcd, tmp_path: Path) -> None:
    with mesh(etcd.endpoint, tmp_path) as m:
        m.start_control()
        backend = m.start_backend("v1")
        cfg = tmp_path / "pets.yaml"
        cfg.write_text(CONFIG.format(backend=backend))
        out = cli(m, "apply", "-f", str(cfg))
        assert out.returncode == 0, out.stderr
        assert cli(m, "deploy", "pets", "--stage", "prod", "--create-stage").returncode == 0
        sc = m.start_sidecar()
        conn = http.client.HTTPConnection("127.0.0.1", sc.port, timeout=5)
        body = json.dumps({"petName": "rex", "tags": ["good", "dog"]})
        conn.request("POST", "/prod/pets", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = json.loads(resp.read())
        conn.close()
        # the backend answered 201 with what the request template made; the response template says 200
        assert resp.status == 200 and resp.getheader("X-Served-By") == "v1", data
        assert data == {"created": {"name": "rex", "stage": "prod", "tags": ["GOOD", "DOG"]}}

        bad = tmp_path / "broken.yaml"
        bad.write_text(BROKEN)
        out = cli(m, "apply", "-f", str(bad))
        assert out.returncode == 1 and "spec.routes[0].integration" in out.stderr, out.stderr
        assert "template for application/json: VTL:" in out.stderr and "#end" in out.stderr
        bad.write_text(BROKEN.replace("templateLanguage: vtl", "templateLanguage: velocity"))
        out = cli(m, "apply", "-f", str(bad))
        assert out.returncode == 1 and 'spec.templateLanguage: must be "jinja" or "vtl"' in out.stderr, (
            out.stderr
        )
