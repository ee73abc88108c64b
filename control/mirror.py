"""The one etcd mirror of a control process: load the prefix, watch it from the load's revision, reload
after a compacted or failed watch, and keep `State` current for every subscriber.

The config streamer and the Kubernetes controller read the same `State` and
subscribe to the same events (one load, one watch per process). A subscriber
is a plain callback, called in the mirror's task in etcd's order, after the
event is in `state`:

- `Change` for each put or delete (with `changed`: whether it changed a
  resource or the set of sidecars, which is what snapshots depend on);
- `Reloaded` after a reload: `state` was replaced by a fresh range read, and
  anything may have changed since the last event (deletes included).

A value that cannot be used (`State.poisoned`: it does not decode, names
another key, or fails validation when `state.VALIDATE_STORED`) is skipped and marks only its own key: one
warning per poisoned put, the `meshgate_control_poisoned_objects` gauge and
`meshgate_control_poisoned_total` counter (`metrics`), and `Change.poisoned`
for subscribers; the object's last good version stays (across reloads too).

A watch that fails (etcd restarted, its revision compacted, the stream
ended) is not resumed: the mirror waits (backoff 0.1 s doubling to 5 s, reset
by a watch that lasted), reads the whole prefix again and watches from there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from meshgate.control.state import State
from meshgate.control.store import Compacted, Store
from meshgate.control.tasks import cancel_and_wait
from meshgate.sidecar.metrics import Family, Labels, Value, prometheus_text

log = logging.getLogger("meshgate.control.mirror")

LASTED_S = 1.0  # a watch that ran this long (or delivered an event) resets the backoff

POISONED = Family(
    "meshgate_control_poisoned_objects",
    "Keys under the prefix whose stored value cannot be used (skipped; the last good version kept)",
    "gauge",
)
POISONED_SEEN = Family(
    "meshgate_control_poisoned", "Unusable values read from etcd (each poisoned put, each load)", "counter"
)


@dataclass(frozen=True, slots=True)
class Change:
    """One put or delete under the prefix, already applied to the mirror's `state`."""

    key: str
    value: bytes  # b"" for a delete
    deleted: bool
    revision: int  # the etcd revision of the change
    changed: bool  # it changed a resource or the set of sidecars (not only a status or a sequence key)
    poisoned: str = ""  # why the value cannot be used ("" = usable): skipped, the last good version kept


@dataclass(frozen=True, slots=True)
class Reloaded:
    """`state` is a fresh read of the whole prefix at `revision`: treat everything as changed."""

    revision: int


MirrorEvent = Change | Reloaded
Subscriber = Callable[[MirrorEvent], None]


class Subscription:
    """One subscriber's place in the mirror's fan-out; `close()` ends it."""

    def __init__(self, mirror: EtcdMirror, callback: Subscriber, name: str) -> None:
        self.mirror = mirror
        self.callback = callback
        self.name = name

    def close(self) -> None:
        self.mirror.unsubscribe(self)


class EtcdMirror:
    """The in-memory `State` of one store's prefix, kept current by one watch."""

    def __init__(self, store: Store, *, retry_s: float = 0.1, max_backoff_s: float = 5.0) -> None:
        self.store = store
        self.retry_s = retry_s
        self.max_backoff_s = max_backoff_s
        self.state = State(store.prefix)
        self.revision = 0  # the newest etcd revision seen (the load's, or the last event's)
        self.watches = 0  # watches opened, reloads done (stats, tests)
        self.reloads = 0
        self.poisoned_total = 0  # unusable values read (each poisoned put, each poisoned key of a load)
        self._subscriptions: list[Subscription] = []
        self._task: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()

    def subscribe(self, callback: Subscriber, name: str = "") -> Subscription:
        """Call `callback` with every event from now on; `state` is the view so far."""
        sub = Subscription(self, callback, name or getattr(callback, "__qualname__", "subscriber"))
        self._subscriptions.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscriptions = [s for s in self._subscriptions if s is not sub]

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Load the prefix (raises when etcd cannot be read) and start watching; a no-op when running."""
        async with self._starting:
            if self._task is not None:
                return
            await self._load()
            self._task = asyncio.create_task(self._run(), name=f"etcd-mirror {self.store.prefix}")

    async def stop(self) -> None:
        """Stop watching (re-cancelling as `cancel_and_wait` does: aetcd's watch setup can swallow one)."""
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait([task])

    async def _load(self) -> None:
        state = await self.store.load_state()
        state.keep_last_good(self.state)
        for key, why in sorted(state.poisoned.items()):
            self.poisoned_total += 1
            kept = "keeping its last good version" if state.resource(key) is not None else "absent"
            log.warning("etcd key %s is poisoned: %s; skipped (%s)", key, why, kept)
        self.state = state
        self.revision = state.revision

    def metrics(self) -> list[tuple[Family, list[tuple[Labels, Value]]]]:
        """The poison gauge and counter (with the config stream's, on --metrics-listen and OTLP)."""
        return [(POISONED, [((), len(self.state.poisoned))]), (POISONED_SEEN, [((), self.poisoned_total)])]

    def metrics_text(self) -> str:
        return prometheus_text(self.metrics())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = self.retry_s
        while True:
            started, events = loop.time(), 0
            self.watches += 1
            try:
                async for event in self.store.watch(self.revision + 1):
                    events += 1
                    self._apply(event.key, event.value, event.deleted, event.mod_revision)
                why = "the watch ended"
            except asyncio.CancelledError:
                raise
            except Compacted as exc:
                why = f"revision {self.revision + 1} is compacted (below {exc.compacted_revision})"
            except Exception as exc:
                why = f"the watch failed: {type(exc).__name__}: {exc}"
            if events or loop.time() - started >= LASTED_S:
                backoff = self.retry_s
            backoff = await self._reload(why, backoff)

    async def _reload(self, why: str, backoff: float) -> float:
        """Wait, then read the whole prefix again until that works; returns the next backoff."""
        while True:
            log.warning("etcd %s: %s; reloading in %.2fs", self.store.prefix, why, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)
            try:
                await self._load()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                why = f"reload failed: {type(exc).__name__}: {exc}"
                continue
            self.reloads += 1
            log.info("etcd %s reloaded at revision %d", self.store.prefix, self.revision)
            self._notify(Reloaded(self.revision))
            return backoff

    def _apply(self, key: str, value: bytes, deleted: bool, revision: int) -> None:
        was = key in self.state.poisoned
        changed = self.state.delete(key) if deleted else self.state.put(key, value)
        if changed:
            self.state.revision = max(self.state.revision, revision)
        self.revision = max(self.revision, revision)
        why = self.state.poisoned.get(key, "")
        if why:
            self.poisoned_total += 1
            kept = "keeping its last good version" if self.state.resource(key) is not None else "absent"
            log.warning("etcd key %s is poisoned at revision %d: %s; skipped (%s)", key, revision, why, kept)
        elif was:
            log.info("etcd key %s is no longer poisoned (%s)", key, "deleted" if deleted else "rewritten")
        self._notify(Change(key, value, deleted, revision, changed, why))

    def _notify(self, event: MirrorEvent) -> None:
        for sub in list(self._subscriptions):
            try:
                sub.callback(event)
            except Exception:
                log.exception("etcd mirror subscriber %s failed on %s", sub.name, event)
