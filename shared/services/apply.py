"""Apply service: one changed user -> read Graph -> flow rules -> state -> export operation.

Never trusts the notification: the user is read from Graph with every property the rules need. The join
is on Graph ``id`` = metaverse ``uid`` (the RowKey of the state entity); writes are guarded by ETag, and on a
conflict the plan is made again from fresh state, so concurrent or repeated messages converge.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from shared.adapters.queues import ChangeMessage, ExportMessage
from shared.adapters.state import ConcurrencyError, GuestRecord, StateStore, utcnow
from shared.domain import DEPROVISION_STATUSES, GraphUser, GuestStatus
from shared.observability import current_correlation_id
from shared.rules import ApplyPlan, Decision, plan_apply, scope_exit

log = logging.getLogger("guestsync.apply")
MAX_ATTEMPTS = 8


class GuestReader(Protocol):
    async def get_user(self, user_id: str) -> GraphUser | None: ...
    async def is_group_member(self, user_id: str, group_id: str) -> bool | None: ...


async def read_scope(
    graph: GuestReader, user_id: str, scope_group_id: str | None
) -> tuple[GraphUser | None, bool | None]:
    """Read the user and, when a scoping group is set and the user is an enabled guest, its membership."""
    user = await graph.get_user(user_id)
    if scope_group_id is None or user is None or scope_exit(user) is not None:
        return user, None
    member = await graph.is_group_member(user_id, scope_group_id)
    return user, bool(member)


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
        if record is None or (record.status in DEPROVISION_STATUSES and record.reason == plan.reason):
            return None
        if record.status in DEPROVISION_STATUSES:  # still out, for another reason: keep where it stands
            return record.evolve(reason=plan.reason, graph_read_at=read_at)
        return record.evolve(status=GuestStatus.OUT_OF_SCOPE, reason=plan.reason, approval=None,
                             graph_read_at=read_at, notified_at=None)
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
        approval=None,
        graph_read_at=read_at,
        notified_at=_earliest(record.notified_at, notified_at),
    )


async def apply_change(
    message: ChangeMessage,
    graph: GuestReader,
    state: StateStore,
    send_export: Callable[[str], None],
    now: Callable[[], datetime] = utcnow,
    scope_group_id: str | None = None,
) -> ApplyPlan:
    """Run the inbound rules for one user and queue an export when AD must change."""
    user, in_group = await read_scope(graph, message.user_id, scope_group_id)
    removed = message.change_type.removeprefix("removed:") if message.change_type.startswith("removed:") else None
    # State and queue calls block: run them off the event loop, which the other functions share.
    return await asyncio.to_thread(apply_user, message.user_id, user, state, send_export, in_group=in_group,
                                   removed=removed, read_at=now(), notified_at=message.received)


def plan_for(user: GraphUser | None, record: GuestRecord | None, *, in_group: bool | None,
             removed: str | None) -> ApplyPlan:
    """The apply rules for one Graph read against the record we hold (None: unknown guest)."""
    return plan_apply(
        user,
        record.entry if record else None,
        status=record.status if record else None,
        has_account=record.has_account if record else False,
        in_group=in_group,
        removed=removed if user is None else None,
    )


def apply_user(
    user_id: str,
    user: GraphUser | None,
    state: StateStore,
    send_export: Callable[[str], None],
    *,
    in_group: bool | None,
    removed: str | None,
    read_at: datetime,
    notified_at: datetime | None = None,
) -> ApplyPlan:
    """Join a user already read from Graph (None: gone) with its state, save, and queue the export."""
    for _ in range(MAX_ATTEMPTS):
        record = state.get(user_id)
        plan = plan_for(user, record, in_group=in_group, removed=removed)
        new = next_record(record, plan, read_at=read_at, notified_at=notified_at)
        if new is None:
            log.info("user %s: %s (%s)", user_id, plan.decision.value, plan.reason)
            return plan
        try:
            saved = state.save(new)
        except ConcurrencyError:
            continue  # someone else wrote this guest: plan again from fresh state
        if plan.decision is Decision.EXPORT or saved.status is GuestStatus.OUT_OF_SCOPE:
            send_export(ExportMessage(saved.uid, saved.version, plan.reason,
                                      current_correlation_id() or "").to_json())
        log.info("guest %s: %s (%s)", user_id, plan.decision.value, plan.reason)
        return plan
    raise ConcurrencyError(f"guest {user_id}: state kept changing under {MAX_ATTEMPTS} attempts")
