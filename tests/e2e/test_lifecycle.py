"""A sidecar's life through real processes: the usage-plan quotas it counted are written to its state
dir on SIGTERM (between its once-a-second saves) and read back when it starts again, so a restart
does not hand out a fresh quota. (The cache key from `--cache-key-file` and `MESHGATE_CACHE_KEY` is
in test_cache.py.)"""

from __future__ import annotations

import json
from pathlib import Path

from meshgate.control.etcd_local import LocalEtcd

from .harness import NO_DRAIN, Sidecar, http_request, mesh

KEY = "lifecycle-key-0123456789abcdef"
LIMIT = 8

CONFIG = f"""
apiVersion: meshgate.io/v1
kind: Api
metadata: {{name: pets}}
spec:
  selector: {{matchLabels: {{app: pets}}}}
  routes:
    - {{method: GET, path: /metered, apiKeyRequired: true, integration: {{type: mock}}}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: prod}}
spec: {{api: pets}}
---
apiVersion: meshgate.io/v1
kind: UsagePlan
metadata: {{name: metered}}
spec: {{apis: [pets/prod], throttle: {{rateLimit: 1000, burstLimit: 1000}}, quota: {{limit: {LIMIT}, period: DAY}}}}
---
apiVersion: meshgate.io/v1
kind: ApiKey
metadata: {{name: metered-client}}
spec: {{usagePlan: metered, value: {KEY}}}
"""


def saved(path: Path) -> int:
    """The requests the quota file says the key made (0 when there is no file yet)."""
    if not path.exists():
        return 0
    return sum(int(count) for _, count in json.loads(path.read_text()).values())


def metered(sc: Sidecar) -> int:
    return http_request(sc.port, "GET", "/prod/metered", {"x-api-key": KEY})[0]


def test_quotas_are_saved_on_sigterm_and_restored_on_start(etcd: LocalEtcd, tmp_path: Path) -> None:
    with mesh(etcd.endpoint, tmp_path) as m:
        m.start_control()
        m.apply(CONFIG)
        m.cli("deploy", "pets", "--stage", "prod")
        state = tmp_path / "state"
        quotas = state / "quotas.json"
        sc = m.start_sidecar(state_dir=state, extra=NO_DRAIN)
        # The store writes its file at most once a second: the first request writes it, the ones
        # right after stay in memory. Count until the file is behind what was counted.
        used = 0
        while True:
            assert metered(sc) == 200
            used += 1
            if saved(quotas) < used:
                break
            assert used < LIMIT - 1, "every request was written at once: nothing left for SIGTERM to save"
        assert sc.proc.stop() == 0  # SIGTERM: drain, then exit cleanly
        assert saved(quotas) == used, "the requests counted since the last save were lost on SIGTERM"

        again = m.start_sidecar(state_dir=state, extra=NO_DRAIN)
        codes = [metered(again) for _ in range(LIMIT - used + 1)]
        assert codes == [200] * (LIMIT - used) + [429], (used, codes)  # the quota went on where it was
