"""A lease with expiry in the state table's meta partition: the agent that holds it runs the timers.

One ETag-guarded row (``agent-lease``) with the holder and when its lease expires. The holder renews it every
third of its length; anyone may take it once it has expired, so a dead holder is replaced within one lease
length. The row also keeps the reconcile's schedule status (when it last started and finished, and by whom), so
a new holder neither skips nor repeats an occurrence. Clocks of the agents' servers must agree to a few
seconds (they do where Kerberos works: it allows five minutes, NTP keeps far closer).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shared.adapters.state import StateStore
from shared.core.records import ConcurrencyError, utcnow

log = logging.getLogger("guestsync.agent.lease")
LEASE_ROW = "agent-lease"
#: Reconcile runs kept in the row (start, end, holder): enough to see who ran what lately.
HISTORY = 20


@dataclass
class TimerLease:
    """This agent's view of the lease: ``held`` is True only while a renewal is less than a lease old."""

    state: StateStore
    holder: str
    seconds: int
    body: dict[str, Any] | None = None
    etag: str | None = None
    valid_until: datetime | None = None

    @property
    def held(self) -> bool:
        return self.valid_until is not None and utcnow() < self.valid_until

    def _write(self, body: dict[str, Any], etag: str | None) -> bool:
        try:
            self.etag = self.state.save_meta(LEASE_ROW, body, etag)
        except ConcurrencyError:
            self.valid_until, self.body = None, None
            return False
        self.body = body
        return True

    def try_acquire(self) -> bool:
        """Take or renew the lease; False when another live agent holds it (or won the race for it)."""
        body, etag = self.state.get_meta(LEASE_ROW)
        now = utcnow()
        expires = body.get("expiresAt")
        current = body.get("holder")
        if current and current != self.holder and expires and datetime.fromisoformat(expires) > now:
            self.valid_until, self.body = None, None
            return False
        if current != self.holder:
            log.info("agent %s takes the timer lease (previous holder: %s)", self.holder, current or "none")
        new = {**body, "holder": self.holder, "expiresAt": (now + timedelta(seconds=self.seconds)).isoformat(),
               "renewedAt": now.isoformat()}
        if current != self.holder:
            new["acquiredAt"] = now.isoformat()
        if not self._write(new, etag):
            return False
        self.valid_until = now + timedelta(seconds=self.seconds) - timedelta(seconds=max(1.0, self.seconds / 6))
        return True

    def update(self, **changes: Any) -> bool:
        """Change the row while holding the lease (guarded by the ETag of our last write)."""
        if not self.held or self.body is None:
            return False
        return self._write({**self.body, **changes}, self.etag)

    def release(self) -> None:
        """Let another agent take over at once (on a clean stop)."""
        if self.held and self.body is not None:
            self._write({**self.body, "expiresAt": utcnow().isoformat()}, self.etag)
        self.valid_until = None

    def reconcile_started(self, when: datetime) -> bool:
        body = self.body or {}
        return self.update(reconcileStartedAt=when.isoformat(), reconcileRunning=True,
                           reconciles=[*body.get("reconciles", [])[-(HISTORY - 1):],
                                       {"holder": self.holder, "startedAt": when.isoformat()}])

    def reconcile_finished(self, started: datetime, when: datetime, outcome: str) -> bool:
        body = self.body or {}
        runs = [dict(r) for r in body.get("reconciles", [])]
        for run in runs:
            if run.get("holder") == self.holder and run.get("startedAt") == started.isoformat():
                run.update(finishedAt=when.isoformat(), outcome=outcome)
        return self.update(reconcileFinishedAt=when.isoformat(), reconcileRunning=False, reconciles=runs)


def lease_status(state: StateStore) -> dict[str, Any]:
    """The lease row as ``guestsync status`` shows it ({} before any agent ran)."""
    body, _ = state.get_meta(LEASE_ROW)
    return body
