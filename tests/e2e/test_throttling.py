"""Usage plans, API keys, route and stage throttles and quotas through the user's path: `meshgate
apply -f` of an Api, a Stage with a throttle, two UsagePlans (one with a throttle, one with a daily
quota) and their ApiKeys, `meshgate deploy`, one sidecar process fed by control from etcd (so every
limit is this replica's whole limit), and a real client: each limit refuses exactly after its burst
or quota with a 429 and Retry-After, the reason (seen from inside the cluster networks) names which
limit refused, a route limit replaces the stage's, and a key's plan replaces both."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from meshgate.control.etcd_local import LocalEtcd

from .harness import NO_DRAIN, Sidecar, http_request, mesh

GOLD = "gold-key-0123456789abcdef"
QUOTA = "quota-key-0123456789abcdef"

CONFIG = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {{name: pets}}
spec:
  selector: {{matchLabels: {{app: pets}}}}
  routes:
    - {{method: GET, path: /stage, integration: {{type: mock}}}}
    - method: GET
      path: /route
      throttling: {{rateLimit: 0.001, burstLimit: 5}}
      integration: {{type: mock}}
    - {{method: GET, path: /keyed, apiKeyRequired: true, integration: {{type: mock}}}}
    - {{method: GET, path: /metered, apiKeyRequired: true, integration: {{type: mock}}}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: prod}}
spec:
  api: pets
  throttling: {{rateLimit: 0.001, burstLimit: 3}}
---
apiVersion: meshgate.io/v1
kind: UsagePlan
metadata: {{name: gold}}
spec: {{apis: [pets/prod], throttle: {{rateLimit: 0.001, burstLimit: 2}}}}
---
apiVersion: meshgate.io/v1
kind: ApiKey
metadata: {{name: gold-client}}
spec: {{usagePlan: gold, value: {gold}}}
---
apiVersion: meshgate.io/v1
kind: UsagePlan
metadata: {{name: metered}}
spec: {{apis: [pets/prod], throttle: {{rateLimit: 1000, burstLimit: 1000}}, quota: {{limit: 4, period: DAY}}}}
---
apiVersion: meshgate.io/v1
kind: ApiKey
metadata: {{name: metered-client}}
spec: {{usagePlan: metered, value: {quota}}}
"""


@pytest.fixture(scope="module")
def sidecar(etcd: LocalEtcd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    with mesh(etcd.endpoint, tmp_path_factory.mktemp("throttling")) as m:
        m.start_control(extra=("--cluster-cidr", "127.0.0.0/8"))  # the client sees the reason
        m.apply(CONFIG.format(gold=GOLD, quota=QUOTA))
        m.cli("deploy", "pets", "--stage", "prod")
        yield m.start_sidecar(extra=NO_DRAIN)


Result = tuple[int, dict[str, str], dict[str, Any]]


def run(sc: Sidecar, path: str, n: int, key: str | None = None) -> list[Result]:
    out: list[Result] = []
    for _ in range(n):
        code, headers, body = http_request(sc.port, "GET", path, {"x-api-key": key} if key else {})
        out.append((code, headers, json.loads(body) if body else {}))
    return out


def refused_after(results: list[Result], n: int, reason: str) -> None:
    assert [r[0] for r in results] == [200] * n + [429], [(r[0], r[2]) for r in results]
    _, headers, body = results[-1]
    assert body["message"] == "Too many requests" and reason in body["reason"], body
    assert int(headers["retry-after"]) >= 1, headers


def test_stage_throttle(sidecar: Sidecar) -> None:
    refused_after(run(sidecar, "/prod/stage", 4), 3, "throttled by the stage prod limit")


def test_route_throttle_replaces_the_stages(sidecar: Sidecar) -> None:
    run(sidecar, "/prod/stage", 4)  # the stage's bucket is empty now
    # burst 5 on the route: the stage's limit does not apply to it
    refused_after(run(sidecar, "/prod/route", 6), 5, "throttled by the route GET /route limit")


def test_api_keys_and_the_usage_plan_throttle(sidecar: Sidecar) -> None:
    assert [r[0] for r in run(sidecar, "/prod/keyed", 1)] == [403]
    assert [r[0] for r in run(sidecar, "/prod/keyed", 1, key=GOLD + "x")] == [403]
    refused_after(run(sidecar, "/prod/keyed", 3, key=GOLD), 2, "throttled by the usage plan gold limit")


def test_the_quota_refuses_after_its_limit(sidecar: Sidecar) -> None:
    results = run(sidecar, "/prod/metered", 5, key=QUOTA)
    refused_after(results, 4, "quota of usage plan metered exhausted for this day")
    assert int(results[-1][1]["retry-after"]) <= 86400
    # the quota counts the key, whatever the route: the other keyed route is refused too
    assert run(sidecar, "/prod/keyed", 1, key=QUOTA)[0][0] == 429
