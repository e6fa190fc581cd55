"""Apply service: one changed user -> read Graph -> flow rules -> state -> export operation.

Never trusts the notification: the user is read from Graph with every property the rules need. The join
is on Graph ``id`` = metaverse ``uid`` (the RowKey of the state entity); writes are guarded by ETag, and on a
conflict the plan is made again from fresh state, so concurrent or repeated messages converge.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from shared.adapters.queues import ChangeMessage, ExportMessage
from shared.adapters.state import ConcurrencyError, GuestRecord, StateStore, utcnow
from shared.domain import GraphUser, GuestStatus
from shared.rules import ApplyPlan, Decision, plan_apply

log = logging.getLogger("guestsync.apply")
MAX_ATTEMPTS = 8


class GuestReader(Protocol):
    async def get_user(self, user_id: str) -> GraphUser | None: ...


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def next_record(
    record: GuestRecord | None, plan: ApplyPlan, *, read_at: datetime, notified_at: datetime | None
) -> GuestRecord | None:
    """The record to save for ``plan`` (None: nothing to write). Pure."""
    if plan.decision in (Decision.IGNORE, Decision.UNCHANGED) or plan.entry is None:
        return None
    if plan.decision is Decision.OUT_OF_SCOPE:
        if record is None or (record.status is GuestStatus.OUT_OF_SCOPE and record.reason == plan.reason):
            return None
        return record.evolve(status=GuestStatus.OUT_OF_SCOPE, reason=plan.reason, graph_read_at=read_at)
    if record is None:
        return GuestRecord(
            uid=plan.entry.uid,
            entry=plan.entry,
            status=GuestStatus.PENDING,
            version=1,
            reason=plan.reason,
            graph_read_at=read_at,
            notified_at=notified_at,
        )
    version = record.version + 1 if plan.entry != record.entry else record.version
    if plan.decision is Decision.SAVE:
        return record.evolve(entry=plan.entry, version=version, graph_read_at=read_at)
    return record.evolve(
        entry=plan.entry,
        version=version,
        status=GuestStatus.PENDING,
        reason=plan.reason,
        error=None,
        graph_read_at=read_at,
        notified_at=_earliest(record.notified_at, notified_at),
    )


async def apply_change(
    message: ChangeMessage,
    graph: GuestReader,
    state: StateStore,
    send_export: Callable[[str], None],
    now: Callable[[], datetime] = utcnow,
) -> ApplyPlan:
    """Run the inbound rules for one user and queue an export when AD must change."""
    user = await graph.get_user(message.user_id)
    read_at = now()
    for _ in range(MAX_ATTEMPTS):
        record = state.get(message.user_id)
        plan = plan_apply(
            user,
            record.entry if record else None,
            status=record.status if record else None,
            has_account=record.has_account if record else False,
        )
        new = next_record(record, plan, read_at=read_at, notified_at=message.received)
        if new is None:
            log.info("user %s: %s (%s)", message.user_id, plan.decision.value, plan.reason)
            return plan
        try:
            saved = state.save(new)
        except ConcurrencyError:
            continue  # someone else wrote this guest: plan again from fresh state
        if plan.decision is Decision.EXPORT:
            send_export(ExportMessage(saved.uid, saved.version, plan.reason).to_json())
        log.info("guest %s: %s (%s)", message.user_id, plan.decision.value, plan.reason)
        return plan
    raise ConcurrencyError(f"guest {message.user_id}: state kept changing under {MAX_ATTEMPTS} attempts")
