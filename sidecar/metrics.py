"""Request metrics per api/stage/route, named as API Gateway users know them, as Prometheus text
(and, through `otlp_metrics`, OTLP).

Count, 4XX and 5XX errors, latency, integration latency and authorizer latency
histograms, cache hits and misses, throttled requests, active WebSocket
connections and WebSocket API messages. Recording is a few dict updates per
request; rendering happens only when /metrics is scraped or an export is due.
"""

from __future__ import annotations

import bisect
import functools
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

Key = tuple[str, str, str]  # api, stage, route


class Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # per bucket (value <= bound), the last one +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.sum += value


Labels = tuple[tuple[str, str], ...]
Value = int | float | Histogram


@dataclass(frozen=True, slots=True)
class Family:
    """One metric. `name` is the OTLP name; Prometheus adds `_seconds` (unit "s") and `_total`
    (counters), which is also what a collector's Prometheus exporter makes of the OTLP metric."""

    name: str
    help: str
    kind: str  # counter | gauge | histogram
    unit: str = ""  # "s" or "" (a count)

    @property
    def prometheus_name(self) -> str:
        name = self.name + ("_seconds" if self.unit == "s" else "")
        return name + "_total" if self.kind == "counter" else name


Families = Iterable[tuple[Family, Iterable[tuple[Labels, Value]]]]


def histogram_lines(
    name: str, h: Histogram, labels: Callable[[str], str] = lambda extra: "{" + extra.lstrip(",") + "}"
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


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _label_text(labels: Labels, extra: str = "") -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + (inner + extra if inner else extra.lstrip(",")) + "}"


def prometheus_text(families: Families) -> str:
    out: list[str] = []
    for fam, samples in families:
        name = fam.prometheus_name
        out.append(f"# HELP {name} {fam.help}\n# TYPE {name} {fam.kind}")
        for labels, value in samples:
            if isinstance(value, Histogram):
                out.extend(histogram_lines(name, value, functools.partial(_label_text, labels)))
            else:
                text = _label_text(labels)
                out.append(f"{name}{'' if text == '{}' else text} {value}")
    return "\n".join(out) + "\n"


REQUESTS = Family("meshgate_requests", "Requests answered (API Gateway: Count)", "counter")
ERRORS_4XX = Family("meshgate_4xx_errors", "Client errors (API Gateway: 4XXError)", "counter")
ERRORS_5XX = Family("meshgate_5xx_errors", "Server errors (API Gateway: 5XXError)", "counter")
THROTTLED = Family("meshgate_throttled_requests", "Requests refused with 429", "counter")
CACHE_HITS = Family("meshgate_cache_hits", "Stage cache hits (API Gateway: CacheHitCount)", "counter")
CACHE_MISSES = Family("meshgate_cache_misses", "Stage cache misses (API Gateway: CacheMissCount)", "counter")
WS_MESSAGES = Family(
    "meshgate_websocket_messages", "WebSocket API messages routed (API Gateway: MessageCount)", "counter"
)
WS_ACTIVE = Family(
    "meshgate_websocket_connections", "Open WebSocket connections (pass-through and WebSocket APIs)", "gauge"
)
LATENCY = Family(
    "meshgate_latency", "Request latency in the sidecar (API Gateway: Latency)", "histogram", "s"
)
INTEGRATION_LATENCY = Family(
    "meshgate_integration_latency",
    "Time spent in the integration (API Gateway: IntegrationLatency)",
    "histogram",
    "s",
)
AUTHORIZER_LATENCY = Family(
    "meshgate_authorizer_latency", "Time spent in the authorizer (cached or called)", "histogram", "s"
)


# The config stream, per sidecar (sidecar/admin.py renders them from its ConfigClient on /metrics).
CONFIG_FAMILIES = (
    Family("meshgate_config_connected", "1 while the config stream to control is open", "gauge"),
    Family("meshgate_config_acks", "Snapshots applied and acknowledged", "counter"),
    Family("meshgate_config_nacks", "Snapshots refused (NACKed); the last good one keeps serving", "counter"),
    Family(
        "meshgate_config_info",
        "The applied snapshot: its version and source (control, persisted, file)",
        "gauge",
    ),
    Family(
        "meshgate_config_apply_latency",
        "Time from the etcd change to its apply on this sidecar (changes pushed on an open stream)",
        "histogram",
        "s",
    ),
)


def _labels(key: Key) -> Labels:
    return (("api", key[0]), ("stage", key[1]), ("route", key[2]))


RECENT_ERRORS = 50


class Metrics:
    def __init__(self) -> None:
        self.count: defaultdict[Key, int] = defaultdict(int)
        self.errors_4xx: defaultdict[Key, int] = defaultdict(int)
        self.errors_5xx: defaultdict[Key, int] = defaultdict(int)
        self.throttled: defaultdict[Key, int] = defaultdict(int)
        self.cache_hits: defaultdict[Key, int] = defaultdict(int)
        self.cache_misses: defaultdict[Key, int] = defaultdict(int)
        self.latency: defaultdict[Key, Histogram] = defaultdict(Histogram)
        self.integration_latency: defaultdict[Key, Histogram] = defaultdict(Histogram)
        self.authorizer_latency: defaultdict[Key, Histogram] = defaultdict(Histogram)
        self.websockets: defaultdict[Key, int] = defaultdict(int)  # open now (a gauge)
        self.ws_messages: defaultdict[Key, int] = defaultdict(int)  # route = the message's route key
        # the last gateway errors with their full reason (what an outsider was not told), for /stats
        self.recent_errors: deque[tuple[str, int, str, str]] = deque(maxlen=RECENT_ERRORS)

    def error(self, request_id: str, status: int, where: str, reason: str) -> None:
        self.recent_errors.append((request_id, status, where, reason))

    def open_websocket(self, key: Key) -> Callable[[], None]:
        """Count an open WebSocket; the returned callable counts it closed."""
        self.websockets[key] += 1

        def closed() -> None:
            self.websockets[key] -= 1

        return closed

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

    def families(self) -> list[tuple[Family, list[tuple[Labels, Value]]]]:
        tables: tuple[tuple[Family, Mapping[Key, Value]], ...] = (
            (REQUESTS, self.count),
            (ERRORS_4XX, self.errors_4xx),
            (ERRORS_5XX, self.errors_5xx),
            (THROTTLED, self.throttled),
            (CACHE_HITS, self.cache_hits),
            (CACHE_MISSES, self.cache_misses),
            (WS_ACTIVE, self.websockets),
            (WS_MESSAGES, self.ws_messages),
            (LATENCY, self.latency),
            (INTEGRATION_LATENCY, self.integration_latency),
            (AUTHORIZER_LATENCY, self.authorizer_latency),
        )
        return [(fam, [(_labels(k), v) for k, v in sorted(table.items())]) for fam, table in tables]

    def render(self) -> str:
        return prometheus_text(self.families())
