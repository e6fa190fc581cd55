"""Held deprovisionings: the operator's side of the mass-change breaker (``guestsync approve``).

A held guest keeps its account as it is until an operator answers. *Approve* queues the disable/delete
again, now exempt from the breaker; *reject* keeps the account and records the answer, so later exports
and reconciles leave it alone until the guest's scope changes again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from shared.core.domain import Approval, GuestStatus, SecurityKind, graph_id
from shared.core.messages import ExportMessage
from shared.core.outcomes import ApprovalOutcome
from shared.core.ports import GuestStore
from shared.core.records import GuestRecord
from shared.core.unit_of_work import Change, change_guest

log = logging.getLogger("guestsync.approvals")


@dataclass(frozen=True)
class Answer:
    uid: str
    outcome: ApprovalOutcome
    detail: str = ""


def held(state: GuestStore) -> Iterator[GuestRecord]:
    return state.with_status(GuestStatus.HELD)


def answer(
    state: GuestStore,
    uids: Iterable[str],
    send_export: Callable[[str], None],
    *,
    approve: bool,
) -> list[Answer]:
    """Release (``approve``) or reject the held deprovisioning of each guest in ``uids``."""
    answers: list[Answer] = []
    for uid in uids:
        answers.append(_answer_one(state, graph_id(uid), send_export, approve=approve))
    return answers


def _answer_one(state: GuestStore, uid: str, send_export: Callable[[str], None], *, approve: bool) -> Answer:
    decision = Approval.APPROVED if approve else Approval.REJECTED

    def decide(record: GuestRecord | None) -> Change[Answer]:
        if record is None:
            return Change(Answer(uid, ApprovalOutcome.UNKNOWN, "no such guest in state"))
        if record.status is not GuestStatus.HELD:
            return Change(Answer(uid, ApprovalOutcome.NOT_HELD, f"status is {record.status.value}"))
        return Change(Answer(uid, ApprovalOutcome(decision.value), record.reason or ""),
                      record.evolve(status=GuestStatus.OUT_OF_SCOPE, approval=decision, error=None))

    done = change_guest(state, uid, decide)
    if done.saved is not None:
        if approve:
            send_export(ExportMessage(done.saved.uid, done.saved.version,
                                      "deprovisioning approved by an operator").to_json())
        log.warning("guest %s: held deprovisioning %s by an operator", uid, decision.value)
    return done.result


# --- adoption: taking over a CN=<uid> that guestsync did not create ---------------------------------------------

#: Security findings an operator may resolve by taking the object over.
ADOPTABLE = frozenset({SecurityKind.UNMARKED, SecurityKind.FOREIGN_OBJECT})


def adoptable(state: GuestStore) -> Iterator[GuestRecord]:
    """Guests whose export found an object at CN=<uid> that is not theirs (unmarked, or not the joined one)."""
    return (r for r in state.with_status(GuestStatus.ERROR) if r.security in ADOPTABLE)


def adopt(state: GuestStore, uids: Iterable[str], send_export: Callable[[str], None]) -> list[Answer]:
    """Record the operator's decision to take over each guest's CN=<uid> and queue the export that does it (fresh
    password, userAccountControl 262656, ownership mark; audited in the worker's log)."""
    return [_adopt_one(state, graph_id(uid), send_export) for uid in uids]


def _adopt_one(state: GuestStore, uid: str, send_export: Callable[[str], None]) -> Answer:
    def decide(record: GuestRecord | None) -> Change[Answer]:
        if record is None:
            return Change(Answer(uid, ApprovalOutcome.UNKNOWN, "no such guest in state"))
        if record.security not in ADOPTABLE:
            return Change(Answer(uid, ApprovalOutcome.NOT_ADOPTABLE, "no object to take over was found for this guest "
                                                       f"(status {record.status.value})"))
        return Change(Answer(uid, ApprovalOutcome.ADOPTING, record.error or ""), record.evolve(adopt=True))

    done = change_guest(state, uid, decide)
    saved = done.saved
    if saved is not None:
        send_export(ExportMessage(saved.uid, saved.version, "takeover approved by an operator").to_json())
        log.warning("AUDIT guest %s: an operator approved taking over %s (%s)", uid, saved.dn or f"CN={uid}",
                    saved.security.value if saved.security else "")
    return done.result
