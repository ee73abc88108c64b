"""Request metrics per api/stage/route, named as API Gateway users know them, as Prometheus text.

Count, 4XX and 5XX errors, latency and integration latency histograms, cache
hits and misses, throttled requests. Recording is a few dict updates per
request; rendering happens only when /metrics is scraped.
"""

from __future__ import annotations

import bisect
import functools
from collections import defaultdict
from collections.abc import Callable

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

Key = tuple[str, str, str]  # api, stage, route


class _Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.sum += value


def histogram_lines(
    name: str, h: _Histogram, labels: Callable[[str], str] = lambda extra: "{" + extra.lstrip(",") + "}"
) -> list[str]:
    """Prometheus text lines of one histogram; `labels(extra)` renders the label set."""
    out = []
    running = 0
    for bound, n in zip((*BUCKETS, float("inf")), h.counts, strict=True):
        running += n
        le = "+Inf" if bound == float("inf") else f"{bound:g}"
        extra = ',le="' + le + '"'
        out.append(f"{name}_bucket{labels(extra)} {running}")
    bare = labels("")
    bare = "" if bare == "{}" else bare
    out.append(f"{name}_sum{bare} {h.sum:.6f}")
    out.append(f"{name}_count{bare} {running}")
    return out


class Metrics:
    def __init__(self) -> None:
        self.count: defaultdict[Key, int] = defaultdict(int)
        self.errors_4xx: defaultdict[Key, int] = defaultdict(int)
        self.errors_5xx: defaultdict[Key, int] = defaultdict(int)
        self.throttled: defaultdict[Key, int] = defaultdict(int)
        self.cache_hits: defaultdict[Key, int] = defaultdict(int)
        self.cache_misses: defaultdict[Key, int] = defaultdict(int)
        self.latency: defaultdict[Key, _Histogram] = defaultdict(_Histogram)
        self.integration_latency: defaultdict[Key, _Histogram] = defaultdict(_Histogram)

    def observe(self, key: Key, status: int, seconds: float, integration_s: float, cache: bytes) -> None:
        self.count[key] += 1
        if status >= 500:
            self.errors_5xx[key] += 1
        elif status >= 400:
            self.errors_4xx[key] += 1
            if status == 429:
                self.throttled[key] += 1
        if cache == b"hit":
            self.cache_hits[key] += 1
        elif cache == b"miss":
            self.cache_misses[key] += 1
        self.latency[key].observe(seconds)
        if integration_s > 0:
            self.integration_latency[key].observe(integration_s)

    def render(self) -> str:
        out: list[str] = []

        def labels(key: Key, extra: str = "") -> str:
            api, stage, route = (v.replace("\\", "\\\\").replace('"', '\\"') for v in key)
            return f'{{api="{api}",stage="{stage}",route="{route}"{extra}}}'

        for name, help_text, table in (
            ("meshgate_requests_total", "Requests answered (API Gateway: Count)", self.count),
            ("meshgate_4xx_errors_total", "Client errors (API Gateway: 4XXError)", self.errors_4xx),
            ("meshgate_5xx_errors_total", "Server errors (API Gateway: 5XXError)", self.errors_5xx),
            ("meshgate_throttled_requests_total", "Requests refused with 429", self.throttled),
            ("meshgate_cache_hits_total", "Stage cache hits (API Gateway: CacheHitCount)", self.cache_hits),
            (
                "meshgate_cache_misses_total",
                "Stage cache misses (API Gateway: CacheMissCount)",
                self.cache_misses,
            ),
        ):
            out.append(f"# HELP {name} {help_text}\n# TYPE {name} counter")
            out.extend(f"{name}{labels(k)} {v}" for k, v in sorted(table.items()))
        for name, help_text, hists in (
            (
                "meshgate_latency_seconds",
                "Request latency in the sidecar (API Gateway: Latency)",
                self.latency,
            ),
            (
                "meshgate_integration_latency_seconds",
                "Time spent in the integration (API Gateway: IntegrationLatency)",
                self.integration_latency,
            ),
        ):
            out.append(f"# HELP {name} {help_text}\n# TYPE {name} histogram")
            for k, h in sorted(hists.items()):
                out.extend(histogram_lines(name, h, functools.partial(labels, k)))
        return "\n".join(out) + "\n"
