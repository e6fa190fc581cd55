"""Export service (the AD worker): bring one guest's shadow account in line with its state.

The same function runs as a queue-triggered function (worker mode ``function``) and inside the on-premises
agent (``guestsync worker``). It always exports the record as it is *now*, so duplicate or reordered export
messages converge instead of regressing AD: a snapshot carried by the message spares the state read, and the
ETag-guarded save that ends every export catches a stale one (then the record is read and exported again).
Initial-only flows (DN, password, userAccountControl) are written at creation only; later runs touch only the
persistent attributes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from shared.core.ad_rules import fit_cosmetic, guest_upn_problem, new_password, validate_export
from shared.core.deprovisioning import (
    BreakerVerdict,
    ExportAction,
    ExportPlan,
    breaker_admit,
    is_archived,
    is_disabled,
    plan_export,
)
from shared.core.domain import (
    DEPROVISION_STATUSES,
    AdAccount,
    Approval,
    GuestStatus,
    SecurityFindingError,
    SecurityKind,
)
from shared.core.errors import AccessDeniedError, AccountExistsError, ConstraintError, OutsideManagedOuError
from shared.core.messages import ExportMessage
from shared.core.outcomes import ExportResult
from shared.core.ports import GuestDirectory, GuestStore
from shared.core.records import ConcurrencyError, GuestRecord, utcnow
from shared.core.rules import attribute_changes, gone_for_good, initial_user_account_control, outbound_persistent
from shared.core.unit_of_work import READ, Change, change_guest, change_meta
from shared.observability import SECURITY_FINDINGS, record_export
from shared.services.tenant import allowed_suffixes
from shared.settings import DeprovisioningSettings

log = logging.getLogger("guestsync.export")
MAX_ATTEMPTS = 8
BREAKER_META = "breaker"
#: Deprovisioning actions never taken from an export message's snapshot, which may be stale: state is read first.
NOT_FROM_SNAPSHOT = frozenset({ExportAction.RESTORE, ExportAction.DISABLE, ExportAction.DELETE, ExportAction.RELEASE})
#: Age (since the Graph read) up to which a snapshot stands in for the state read; older ones are re-read.
SNAPSHOT_FRESH_SECONDS = 10.0
#: How a guest's error says it is a security finding (status, plan and the alert digest key on it).
SECURITY_PREFIX = "security: "



@dataclass(frozen=True)
class ExportOutcome:
    uid: str
    action: ExportResult
    detail: str = ""


def _adoption_allowed(record: GuestRecord, policy: DeprovisioningSettings, now: datetime) -> bool:
    """An operator chose to take this guest's CN=<uid> over, or the migration window is open."""
    return record.adopt or (policy.adopt_until is not None and now < policy.adopt_until)


def _join(
    directory: GuestDirectory, record: GuestRecord, policy: DeprovisioningSettings, now: datetime
) -> tuple[AdAccount | None, bool]:
    """Join to AD: (the guest's account or None, whether it must be adopted first).

    By objectSid once known, and never re-linked to another: if the joined account is gone and another object
    now holds CN=<uid>, that is a security finding (replaced or planted), unless an operator chose to take it
    over. A guest never joined is not looked up (the create meets an existing CN=<uid> as "already exists",
    which saves a search on every new guest), except when it is leaving: then only a marked account is ours."""
    if record.object_sid:
        account = directory.find_by_sid(record.object_sid)
        if account is not None:
            return account, False
        other = directory.find_guest(record.uid)
        if other is None:
            return None, False  # deleted in AD: created again (or, for a leaving guest, nothing to deprovision)
        if record.adopt:
            return other, True
        raise SecurityFindingError(
            f"{other.dn} is not the account joined to this guest (objectSid {record.object_sid} is gone; this "
            f"object has {other.identity}): it was replaced or planted. Nothing was written to it. Delete it "
            f"(a new account is then created), or take it over with `guestsync adopt {record.uid}`",
            SecurityKind.FOREIGN_OBJECT, other.dn)
    if record.status not in DEPROVISION_STATUSES:
        return None, False
    account = directory.find_guest(record.uid)
    if account is not None and not account.marked:
        log.warning("guest %s: %s has no ownership mark; not deprovisioned (it is not guestsync's)", record.uid,
                    account.dn)
        return None, False
    return account, False


def _create(
    directory: GuestDirectory, record: GuestRecord, desired: dict[str, str | None], policy: DeprovisioningSettings,
    now: datetime,
) -> tuple[ExportResult, AdAccount]:
    avoid = tuple(v for v in (desired.get("sAMAccountName"), desired.get("displayName")) if v)
    try:
        return ExportResult.CREATED, directory.create_guest(record.uid, desired, new_password(avoid=avoid),
                                                            initial_user_account_control())
    except AccountExistsError:
        account = directory.find_guest(record.uid)
    if account is None:
        holder = directory.holder_of(record.uid) or f"CN={record.uid}"
        raise SecurityFindingError(
            f"{holder} exists and is not a user account (a computer or another object holds the guest's name): "
            "nothing was written to it; remove it, and the account is created", SecurityKind.NOT_A_USER, holder)
    if account.marked:  # ours: an earlier attempt created it but its answer (or the join's save) was lost
        _refresh(directory, account, desired)
        return ExportResult.JOINED, account
    if _adoption_allowed(record, policy, now):
        return ExportResult.ADOPTED, _adopt(directory, record, account, desired)
    raise SecurityFindingError(
        f"{account.dn} exists and was not created by guestsync (no ownership mark; {account.identity}): "
        f"nothing was written to it. If it is this guest's (a MIM-era account), take it over with "
        f"`guestsync adopt {record.uid}` (fresh password, userAccountControl {initial_user_account_control()}, "
        "ownership mark); otherwise delete it", SecurityKind.UNMARKED, account.dn)


def _adopt(
    directory: GuestDirectory, record: GuestRecord, account: AdAccount, desired: dict[str, str | None]
) -> AdAccount:
    avoid = tuple(v for v in (desired.get("sAMAccountName"), desired.get("displayName")) if v)
    return directory.adopt_guest(account.dn, record.uid, desired, new_password(avoid=avoid),
                                 initial_user_account_control())


def _release(directory: GuestDirectory, account: AdAccount) -> AdAccount:
    """Clear the userPrincipalName of an archived account whose guest is gone for good (it stays disabled, with
    its objectSid and sAMAccountName, until deleted per GUESTSYNC_DELETE_AFTER_DAYS)."""
    directory.release_upn(account.dn)
    return replace(account, attributes={**account.attributes, "userPrincipalName": None})


def _refresh(directory: GuestDirectory, account: AdAccount, desired: dict[str, str | None]) -> None:
    """Write the persistent attributes that differ on an account joined late or brought back (restored)."""
    changes = attribute_changes(desired, account.attributes)
    if changes:
        directory.update_guest(account.dn, changes)


def admit_destructive(state: GuestStore, policy: DeprovisioningSettings, now: datetime) -> BreakerVerdict:
    """Reserve one disable/delete in the breaker window (shared by every worker through an ETag)."""

    def decide(body: dict[str, Any]) -> tuple[dict[str, Any] | None, BreakerVerdict]:
        window = [datetime.fromisoformat(t) for t in body.get("applied", [])]
        verdict = breaker_admit(window, now, threshold=policy.breaker_threshold,
                                window_minutes=policy.breaker_window_minutes)
        return ({"applied": [t.isoformat() for t in verdict.window]} if verdict.allowed else None), verdict

    return change_meta(state, BREAKER_META, decide, attempts=MAX_ATTEMPTS * 4)


def _execute(
    directory: GuestDirectory, record: GuestRecord, plan: ExportPlan, account: AdAccount | None,
    desired: dict[str, str | None], policy: DeprovisioningSettings, now: datetime,
) -> tuple[ExportResult, AdAccount | None]:
    """Carry out one planned AD write; returns (outcome action, the account afterwards)."""
    if plan.action is ExportAction.CREATE:
        return _create(directory, record, desired, policy, now)
    if account is None:  # nothing to deprovision (a guest that left before its first export)
        return ExportResult.UNCHANGED, None
    if not account.marked:
        directory.mark_owned(account, record.uid)  # joined by objectSid: ours, whatever its adminDescription says
    if plan.action is ExportAction.RESTORE:
        account = directory.restore_guest(account.dn)
        _refresh(directory, account, desired)
        return ExportResult.RESTORED, account
    if plan.action is ExportAction.DISABLE:
        account = directory.disable_and_archive(account.dn)
        if gone_for_good(record.reason, record.archived_at or now, now):
            account = _release(directory, account)
        return ExportResult.DISABLED, account
    if plan.action is ExportAction.RELEASE:
        return ExportResult.RELEASED, _release(directory, account)
    if plan.action is ExportAction.DELETE:
        directory.delete_guest(account.dn)
        return ExportResult.DELETED, None
    if plan.action is ExportAction.UPDATE:
        directory.update_guest(account.dn, plan.changes)
        return ExportResult.UPDATED, account
    return ExportResult.UNCHANGED, account


def _after(
    record: GuestRecord, action: str, account: AdAccount | None, desired: dict[str, str | None],
    warnings: list[str], directory: GuestDirectory, policy: DeprovisioningSettings, now: datetime,
) -> GuestRecord | None:
    """The record to save after a successful AD write (None: delete the record with the account)."""
    if action == ExportResult.DELETED:
        return None
    joined = {} if account is None else {"object_sid": account.object_sid, "dn": account.dn}
    if record.status in DEPROVISION_STATUSES:
        archived = account is not None and is_archived(account, policy) and is_disabled(account)
        return record.evolve(
            status=GuestStatus.ARCHIVED if archived else GuestStatus.OUT_OF_SCOPE,
            archived_at=(record.archived_at or now) if archived else record.archived_at,
            approval=None if action == ExportResult.DISABLED else record.approval,
            error=None,
            security=None,
            adopt=False,
            **joined,
        )
    assert account is not None
    latency = int((now - record.notified_at).total_seconds() * 1000) if record.notified_at else None
    return record.evolve(
        status=GuestStatus.PROVISIONED,
        exported_version=record.version,
        error=None,
        warnings="; ".join(warnings) or None,
        sam_account_name=desired.get("sAMAccountName"),
        domain=directory.netbios_domain(),
        exported_at=now if action != ExportResult.UNCHANGED or record.exported_at is None else record.exported_at,
        latency_ms=latency if latency is not None else record.latency_ms,
        notified_at=None,
        archived_at=None,
        approval=None,
        security=None,
        adopt=False,
        **joined,
    )


def message_snapshot(message: ExportMessage, now: datetime) -> GuestRecord | None:
    """The record the message carries, when it may stand in for a state read: well formed, this guest's, not
    older than the message, not leaving scope (deprovisioning is planned from fresh state only), and read from
    Graph at most SNAPSHOT_FRESH_SECONDS ago. A message that waited in a backlog reads state: its guest may have
    left meanwhile (a bulk invite undone by a bulk delete must not create accounts only to disable them)."""
    if message.snapshot is None:
        return None
    try:
        record = GuestRecord.from_snapshot(message.snapshot)
    except ValueError as exc:
        log.warning("guest %s: export message snapshot ignored (%s); reading state", message.uid, exc)
        return None
    if record.uid != message.uid or record.entry.uid != message.uid:
        log.warning("guest %s: export message snapshot is another guest's; reading state", message.uid)
        return None
    if record.version < message.version or record.status in DEPROVISION_STATUSES:
        return None
    if record.graph_read_at is None or abs((now - record.graph_read_at).total_seconds()) > SNAPSHOT_FRESH_SECONDS:
        return None
    return record


def export_guest(
    message: ExportMessage,
    state: GuestStore,
    directory: GuestDirectory,
    policy: DeprovisioningSettings | None = None,
    now: Callable[[], datetime] = utcnow,
    upn_suffixes: Collection[str] | None = None,
) -> ExportOutcome:
    """Apply one export. AD constraint errors end as a readable error on the guest (not a retry loop);
    an unreachable DC raises so the queue retries and, after 5 tries, parks the message as poison.

    A guest whose UPN is not of the kind Entra gives guests, or ends in a suffix not in ``upn_suffixes`` (None:
    the tenant's initial domain as stored in state; see shared.services.tenant), is refused before any LDAP
    call as a security finding."""
    policy = policy or DeprovisioningSettings()
    snapshot = message_snapshot(message, now())  # the first attempt starts from it instead of reading state

    def decide(record: GuestRecord | None) -> Change[tuple[ExportOutcome, bool]]:
        """(the outcome, whether it was written to state), and the record to save or delete."""
        if record is None:
            return Change((ExportOutcome(message.uid, ExportResult.SKIPPED, "guest unknown to state"), False))
        if record.status is GuestStatus.HELD and record.approval is None:
            waiting = record.error or "awaiting `guestsync approve`"
            return Change((ExportOutcome(record.uid, ExportResult.HELD, waiting), False))
        outcome, new = _export_record(record, record is snapshot, state, directory, policy, now, upn_suffixes)
        if new is None:
            return Change((outcome, True), delete=True)
        return Change((outcome, True), new)

    done = change_guest(state, message.uid, decide, start=snapshot if snapshot is not None else READ,
                        attempts=MAX_ATTEMPTS)
    outcome, written = done.result
    if not written:
        return outcome
    latency = done.saved.latency_ms if done.saved is not None and outcome.action != ExportResult.UNCHANGED else None
    record_export(outcome.action, latency)
    if outcome.detail.startswith(SECURITY_PREFIX):
        SECURITY_FINDINGS.add(1)
        log.error("guest %s: export refused: %s", outcome.uid, outcome.detail)
    elif outcome.action == ExportResult.ERROR:
        log.warning("guest %s: export failed: %s", outcome.uid, outcome.detail)
    elif outcome.action == ExportResult.HELD:
        log.warning("guest %s: %s", outcome.uid, outcome.detail)
    else:
        log.info("guest %s: %s (%s)", outcome.uid, outcome.action, outcome.detail)
    return outcome


def _export_record(
    record: GuestRecord, from_snapshot: bool, state: GuestStore, directory: GuestDirectory,
    policy: DeprovisioningSettings, now: Callable[[], datetime], upn_suffixes: Collection[str] | None,
) -> tuple[ExportOutcome, GuestRecord | None]:
    """Bring AD in line with ``record``: the outcome and the record to save (None: delete it with the account).
    Raises ConcurrencyError to be run again on the record read fresh (a snapshot met a deprovisioning action)."""
    desired, warnings = fit_cosmetic(outbound_persistent(record.entry))
    leaving = record.status in DEPROVISION_STATUSES
    problems = [] if leaving else validate_export(desired)
    error: str | None = "; ".join(problems) if problems else None
    security: SecurityKind | None = None
    if error is None and not leaving:
        allowed = allowed_suffixes(state, ()) if upn_suffixes is None else upn_suffixes
        refused = guest_upn_problem(desired.get("userPrincipalName"), allowed)
        if refused:
            error, security = f"{SECURITY_PREFIX}{refused}", SecurityKind.RULE
    if error is None:
        try:
            at = now()
            account, takeover = _join(directory, record, policy, at)
            adopted = False
            if takeover and account is not None:
                account = _adopt(directory, record, account, desired)
                adopted = True
            plan = plan_export(status=record.status, reason=record.reason, approval=record.approval,
                               archived_at=record.archived_at, account=account, desired=desired,
                               policy=policy, now=at)
            if from_snapshot and plan.action in NOT_FROM_SNAPSHOT:
                raise ConcurrencyError(record.uid)  # nothing written yet: plan again from the record as it is now
            if plan.destructive and record.approval is not Approval.APPROVED:
                verdict = admit_destructive(state, policy, at)
                if not verdict.allowed:
                    return (ExportOutcome(record.uid, ExportResult.HELD, verdict.reason),
                            record.evolve(status=GuestStatus.HELD, error=verdict.reason))
            action, after = _execute(directory, record, plan, account, desired, policy, at)
            if adopted and action in (ExportResult.UPDATED, ExportResult.UNCHANGED):
                action = ExportResult.ADOPTED
            return (ExportOutcome(record.uid, action, plan.reason),
                    _after(record, action, after, desired, warnings, directory, policy, at))
        except (ConstraintError, AccessDeniedError, OutsideManagedOuError, AccountExistsError) as exc:
            error = str(exc)
        except SecurityFindingError as exc:
            error, security = f"{SECURITY_PREFIX}{exc}", exc.kind
    status = record.status if leaving else GuestStatus.ERROR
    return (ExportOutcome(record.uid, ExportResult.ERROR, error),
            record.evolve(status=status, error=error, security=security, warnings="; ".join(warnings) or None))
