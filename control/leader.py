"""Leader election on a coordination.k8s.io/v1 Lease, the way client-go's leaderelection does it.

One Lease (`holderIdentity`, `leaseDurationSeconds`, `acquireTime`,
`renewTime`, `leaseTransitions`) names the leader. Every candidate reads it
every `retry_s`; the holder renews it with a PUT guarded by the Lease's
`resourceVersion`, so two candidates can never both win one round. A
candidate takes the Lease over only when it has seen the same record,
unchanged, for a whole `leaseDurationSeconds` on its own clock (no trust in
other machines' clocks). A leader that has not renewed within
`renew_deadline_s` (shorter than the lease duration) or that loses a renewal
race stops leading at once: `is_leader()` turns false before anyone else can
take over. A graceful stop releases the Lease so a follower takes over
without waiting for it to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from meshgate.control.kube import JSON, KubeClient, KubeError
from meshgate.control.tasks import cancel_and_wait

log = logging.getLogger("meshgate.control.leader")


def _now() -> str:
    """MicroTime as the API server writes it (RFC 3339, microseconds, Z)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Campaigns for one Lease; `is_leader()` says whether this replica may write right now."""

    def __init__(
        self,
        kube: KubeClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration_s: float = 15.0,
        renew_deadline_s: float | None = None,
        retry_s: float = 2.0,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration_s = lease_duration_s
        self.renew_deadline_s = renew_deadline_s or lease_duration_s * 2 / 3
        if self.renew_deadline_s >= lease_duration_s:
            raise ValueError("the renew deadline must be shorter than the lease duration")
        self.retry_s = retry_s
        self.on_change = on_change
        self.transitions = 0  # how often this replica started leading
        self._leading = False
        self._valid_until = 0.0  # monotonic: leading is void after this without a renewal
        self._observed: tuple[Any, ...] = ()
        self._observed_at = 0.0
        self._resource_version = ""
        self._task: asyncio.Task[None] | None = None

    def is_leader(self) -> bool:
        return self._leading and time.monotonic() < self._valid_until

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"leader-election-{self.identity}")

    async def stop(self, release: bool = True) -> None:
        """Stop campaigning; a leader releases the Lease unless `release` is False (a crash, in tests)."""
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
        was_leading = self.is_leader()
        self._set_leading(False)
        if release and was_leading:
            with contextlib.suppress(Exception):
                await self._release()

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        while True:
            try:
                won = await self._try_acquire_or_renew()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # API server unreachable: keep leading until the deadline
                log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
                won = None
            now = time.monotonic()
            if won:
                self._valid_until = now + self.renew_deadline_s
                self._set_leading(True)
            elif won is False or now >= self._valid_until:
                self._set_leading(False)
            await asyncio.sleep(self.retry_s)

    def _set_leading(self, leading: bool) -> None:
        if leading == self._leading:
            return
        self._leading = leading
        if leading:
            self.transitions += 1
        else:
            self._valid_until = 0.0
        log.info(
            "%s %s leading (lease %s/%s)",
            self.identity,
            "started" if leading else "stopped",
            self.namespace,
            self.name,
        )
        if self.on_change is not None:
            self.on_change(leading)

    def _timeout(self) -> float:
        return max(0.2, min(10.0, self.renew_deadline_s / 2))

    async def _try_acquire_or_renew(self) -> bool:
        now = _now()
        timeout = self._timeout()
        lease = await self.kube.get_lease(self.namespace, self.name, timeout)
        if lease is None:
            body: JSON = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(now, now, 0),
            }
            try:
                created = await self.kube.create_lease(self.namespace, body, timeout)
            except KubeError as exc:
                if exc.status == 409:
                    return False  # another candidate created it first
                raise
            self._observe(created)
            return True
        spec = lease.get("spec") or {}
        self._observe(lease)
        holder = str(spec.get("holderIdentity") or "")
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration_s)
        if holder and holder != self.identity and time.monotonic() < self._observed_at + duration:
            return False  # held by someone else, renewed within its duration (as far as we have seen)
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder == self.identity:
            acquired = str(spec.get("acquireTime") or now)
        else:
            acquired, transitions = now, transitions + 1
        lease["spec"] = self._spec(now, acquired, transitions)
        try:
            updated = await self.kube.replace_lease(self.namespace, self.name, lease, timeout)
        except KubeError as exc:
            if exc.status == 409:
                return False  # lost the race: someone else wrote the Lease since we read it
            raise
        self._observe(updated)
        return True

    def _spec(self, renew: str, acquire: str, transitions: int) -> JSON:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.lease_duration_s)),
            "acquireTime": acquire,
            "renewTime": renew,
            "leaseTransitions": transitions,
        }

    def _observe(self, lease: JSON) -> None:
        """Remember when the Lease record last changed, on our own clock."""
        spec = lease.get("spec") or {}
        record = (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("leaseTransitions"))
        if record != self._observed:
            self._observed = record
            self._observed_at = time.monotonic()
        self._resource_version = str((lease.get("metadata") or {}).get("resourceVersion", ""))

    async def _release(self) -> None:
        """Hand the Lease back (empty holder, 1 s duration) so a follower need not wait for expiry."""
        timeout = self._timeout()
        lease = await self.kube.get_lease(self.namespace, self.name, timeout)
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        now = _now()
        lease["spec"] = {**lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": now}
        await self.kube.replace_lease(self.namespace, self.name, lease, timeout)
