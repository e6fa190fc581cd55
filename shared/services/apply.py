"""Apply service: one changed user -> read Graph -> flow rules -> state -> export operation.

Never trusts the notification: the user is read from Graph with every property the rules need. The join
is on Graph ``id`` = metaverse ``uid`` (the RowKey of the state entity); writes are guarded by ETag, and on a
conflict the plan is made again from fresh state, so concurrent or repeated messages converge.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from functools import partial

from shared.concurrency import run_blocking
from shared.core.domain import DEPROVISION_STATUSES, GraphUser, GuestStatus, graph_id
from shared.core.errors import GraphThrottledError
from shared.core.messages import ChangeMessage, ExportMessage
from shared.core.ports import GuestReader, GuestStore, UserReader
from shared.core.records import ConcurrencyError, GuestRecord, utcnow
from shared.core.rules import ApplyPlan, Decision, plan_apply, scope_exit
from shared.core.unit_of_work import READ, Change, change_guest
from shared.observability import current_correlation_id, guest_context
from shared.services.tenant import ensure_initial_domain

log = logging.getLogger("guestsync.apply")
MAX_ATTEMPTS = 8
#: Times a change throttled by Graph (429/503 after the SDK's own retries) is queued again with a delay before
#: the queue's retries take over. Throttling is Graph asking us to wait, not a failure of the message: it must
#: not spend the message's five dequeues and end a guest's change in the poison queue.
MAX_DEFERRALS = 12
MAX_DEFERRAL_SECONDS = 60
#: Apply's own threads for its blocking state and queue calls (see shared.concurrency).
_STORAGE_THREADS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="guestsync-apply")



async def read_scope(
    graph: UserReader, user_id: str, scope_group_id: str | None
) -> tuple[GraphUser | None, bool | None]:
    """Read the user and, when a scoping group is set and the user is an enabled guest, its membership."""
    user = await graph.get_user(user_id)
    return user, await group_membership(graph, user_id, user, scope_group_id)


async def group_membership(graph: UserReader, user_id: str, user: GraphUser | None,
                           scope_group_id: str | None) -> bool | None:
    """Membership in the scoping group of a user already read: None when there is no scoping group or the user
    is out of scope anyway (gone, disabled, not a guest), so the group is not asked in vain."""
    if scope_group_id is None or user is None or scope_exit(user) is not None:
        return None
    return bool(await graph.is_group_member(user_id, scope_group_id))


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
    state: GuestStore,
    send_export: Callable[[str], None],
    now: Callable[[], datetime] = utcnow,
    scope_group_id: str | None = None,
) -> list[ApplyPlan]:
    """Run the inbound rules for the message's users and queue an export for each guest whose AD account must
    change. The users of one message (one notification POST) are read from Graph together, in one request per
    15 users, so a burst of member changes costs a few reads instead of one per user."""
    removed = message.change_type.removeprefix("removed:") if message.change_type.startswith("removed:") else None
    if message.change_type == "deleted":
        removed = "deleted"  # Graph notifies a permanent delete as "deleted" (a soft delete arrives as "updated")
    if message.more_user_ids:
        users = await graph.get_users(message.user_ids)
    else:
        users = {message.user_id: await graph.get_user(message.user_id)}
    if any(user is not None and scope_exit(user) is None for user in users.values()):
        # The export checks the guest's UPN suffix against the tenant's initial domain: keep it in state (one
        # Graph read a day, see shared.services.tenant), so the export never asks Graph per guest.
        await ensure_initial_domain(graph, state)

    read_at = now()
    in_groups = dict(zip(message.user_ids, await asyncio.gather(
        *(group_membership(graph, uid, users.get(uid), scope_group_id) for uid in message.user_ids)), strict=True))
    new = new_guests({uid: users.get(uid) for uid in message.user_ids}, in_groups, removed=removed,
                     read_at=read_at, notified_at=message.received)
    inserted = await run_blocking(_STORAGE_THREADS, partial(insert_new_guests, state, new)) if len(new) > 1 else {}

    def after_insert() -> dict[str, ApplyPlan]:
        """The exports of the guests inserted together, queued in one thread hop (not one each)."""
        plans = {}
        for uid, (plan, saved) in inserted.items():
            with guest_context(uid):
                plans[uid] = _saved(uid, plan, saved, send_export)
        return plans

    async def one(uid: str) -> ApplyPlan:
        with guest_context(uid):
            call = partial(apply_user, uid, users.get(uid), state, send_export, in_group=in_groups[uid],
                           removed=removed, read_at=read_at, notified_at=message.received)
            return await run_blocking(_STORAGE_THREADS, call)

    done = await run_blocking(_STORAGE_THREADS, after_insert) if inserted else {}
    # The other users: applied side by side (a message holds up to 15).
    rest = [uid for uid in message.user_ids if uid not in done]
    done.update(zip(rest, await asyncio.gather(*(one(uid) for uid in rest)), strict=True))
    return [done[uid] for uid in message.user_ids]


def new_guests(users: dict[str, GraphUser | None], in_groups: dict[str, bool | None], *, removed: str | None,
               read_at: datetime, notified_at: datetime | None) -> dict[str, tuple[ApplyPlan, GuestRecord]]:
    """The users of a message that would be inserted as new guests without a read (see ``apply_user``): in scope,
    and not known to this process to hold a record. Pure but for that hint."""
    new: dict[str, tuple[ApplyPlan, GuestRecord]] = {}
    keys: set[str] = set()
    for uid, user in users.items():
        if graph_id(uid) in keys:  # one entity twice in a transaction is refused
            continue
        plan = _new_guest_plan(uid, user, in_group=in_groups.get(uid), removed=removed)
        record = None if plan is None else next_record(None, plan, read_at=read_at, notified_at=notified_at)
        if plan is not None and record is not None:
            keys.add(graph_id(uid))
            new[uid] = (plan, record)
    return new


def insert_new_guests(state: GuestStore, new: dict[str, tuple[ApplyPlan, GuestRecord]]
                      ) -> dict[str, tuple[ApplyPlan, GuestRecord]]:
    """Insert the new guests of one message in one transaction (one storage transaction instead of one each,
    about a third less of the host's CPU per insert). All or none: when any of them has a record already (a
    guest this process has not met), nothing is written and each goes through ``apply_user`` alone, as without
    this."""
    try:
        saved = state.insert_all([record for _, record in new.values()])
    except ConcurrencyError:
        log.info("%d new guests: one of them has a record already; applied one by one", len(new))
        return {}
    return {uid: (plan, record) for (uid, (plan, _)), record in zip(new.items(), saved, strict=True)}


def deferral_delay(deferrals: int, rand: Callable[[], float] = random.random) -> int:
    """Seconds before a throttled change is read again: 2, 4, 8 ... up to a minute, with jitter so that a
    burst deferred together does not come back together. Pure."""
    base = min(MAX_DEFERRAL_SECONDS, 2 ** (deferrals + 1))
    return max(1, min(MAX_DEFERRAL_SECONDS, int(base * (0.75 + rand() / 2) + 0.5)))


async def apply_or_defer(
    message: ChangeMessage,
    graph: GuestReader,
    state: GuestStore,
    send_export: Callable[[str], None],
    requeue: Callable[[str, int], None],
    scope_group_id: str | None = None,
) -> list[ApplyPlan]:
    """``apply_change``, but a change that Graph still throttles after the SDK's retries is queued again with a
    delay (``requeue(body, seconds)``) instead of failing, up to MAX_DEFERRALS times; then it raises and the
    queue's own retries (and poison queue) apply. Users applied before the throttle are applied again later,
    which is harmless: apply is idempotent."""
    try:
        return await apply_change(message, graph, state, send_export, scope_group_id=scope_group_id)
    except GraphThrottledError as exc:
        if message.deferrals >= MAX_DEFERRALS:
            raise
        delay = deferral_delay(message.deferrals)
        requeue(replace(message, deferrals=message.deferrals + 1).to_json(), delay)
        log.warning("Graph is throttling (%s): %d user(s) read again in %d s (deferral %d of %d)",
                    exc, len(message.user_ids), delay, message.deferrals + 1, MAX_DEFERRALS)
        return []


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


class _KnownRecords:
    """Users this process has met a state record for (bounded, least recently added dropped first). Only a
    cost hint for ``apply_user``: a wrong guess costs one storage transaction, never a wrong result."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._uids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, uid: object) -> bool:
        return uid in self._uids

    def add(self, uid: str) -> None:
        with self._lock:
            self._uids[uid] = None
            self._uids.move_to_end(uid)
            while len(self._uids) > self._size:
                self._uids.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._uids.clear()


KNOWN_RECORDS = _KnownRecords(100_000)  # ~10 MB at most


def apply_user(
    user_id: str,
    user: GraphUser | None,
    state: GuestStore,
    send_export: Callable[[str], None],
    *,
    in_group: bool | None,
    removed: str | None,
    read_at: datetime,
    notified_at: datetime | None = None,
    insert_first: bool | None = None,
) -> ApplyPlan:
    """Join a user already read from Graph (None: gone) with its state, save, and queue the export.

    A guest in scope is first inserted as new without reading state (one storage transaction less per new
    guest); if a record exists the insert fails and the loop reads and plans again. A user out of scope is
    always read first: it may still hold a record (a guest that became a member). ``insert_first``: whether
    the caller expects no record (None: no record unless this process has met one for the user; a failed insert
    costs a transaction, like the read it replaces)."""
    read = _new_guest_plan(user_id, user, in_group=in_group, removed=removed, insert_first=insert_first) is None

    def decide(record: GuestRecord | None) -> Change[ApplyPlan]:
        if record is not None:
            KNOWN_RECORDS.add(user_id)
        plan = plan_for(user, record, in_group=in_group, removed=removed)
        return Change(plan, next_record(record, plan, read_at=read_at, notified_at=notified_at))

    done = change_guest(state, user_id, decide, start=READ if read else None, attempts=MAX_ATTEMPTS)
    return _saved(user_id, done.result, done.saved, send_export)


def _new_guest_plan(user_id: str, user: GraphUser | None, *, in_group: bool | None, removed: str | None,
                    insert_first: bool | None = None) -> ApplyPlan | None:
    """The plan of a user that apply inserts as a new guest without reading state first (in scope, and expected
    to have no record: ``insert_first``, or by default not met by this process), or None: read it first."""
    if insert_first is None:
        insert_first = user_id not in KNOWN_RECORDS
    if not insert_first:
        return None
    plan = plan_for(user, None, in_group=in_group, removed=removed)
    return plan if plan.decision is Decision.EXPORT else None


def _saved(user_id: str, plan: ApplyPlan, saved: GuestRecord | None, send_export: Callable[[str], None]
           ) -> ApplyPlan:
    """After the guest's record is saved (or nothing was to be saved): queue its export, log the decision."""
    if saved is None:
        log.info("user %s: %s (%s)", user_id, plan.decision.value, plan.reason)
        return plan
    KNOWN_RECORDS.add(user_id)
    if plan.decision in (Decision.EXPORT, Decision.OUT_OF_SCOPE):
        # Out of scope: deprovision, or (already archived, now for another reason) e.g. release the UPN of a
        # guest now gone for good; the worker plans from the record and writes nothing when nothing is due.
        # The worker would re-read a deprovisioning record anyway: no snapshot for those.
        snapshot = None if saved.status in DEPROVISION_STATUSES else saved.to_snapshot()
        send_export(ExportMessage(saved.uid, saved.version, plan.reason, current_correlation_id() or "",
                                  snapshot).to_json())
    log.info("guest %s: %s (%s)", user_id, plan.decision.value, plan.reason)
    return plan
