"""Export service (the AD worker): bring one guest's shadow account in line with its state.

The same function runs as a queue-triggered function (worker mode ``function``) and inside the on-premises
agent (``guestsync worker``). It always exports the record as it is *now*, so duplicate or reordered export
messages converge instead of regressing AD. Initial-only flows (DN, password, userAccountControl) are
written at creation only; later runs touch only the persistent attributes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from shared.ad_rules import fit_cosmetic, new_password, validate_export
from shared.adapters.directory import (
    AccessDeniedError,
    AccountExistsError,
    ConstraintError,
    OutsideManagedOuError,
)
from shared.adapters.queues import ExportMessage
from shared.adapters.state import ConcurrencyError, GuestRecord, StateStore, utcnow
from shared.domain import AdAccount, GuestStatus
from shared.rules import attribute_changes, initial_user_account_control, outbound_persistent

log = logging.getLogger("guestsync.export")
MAX_ATTEMPTS = 8


class GuestDirectory(Protocol):
    def find_guest(self, uid: str) -> AdAccount | None: ...
    def find_by_sid(self, sid: str) -> AdAccount | None: ...
    def create_guest(
        self, uid: str, attributes: dict[str, str | None], password: str, user_account_control: int
    ) -> AdAccount: ...
    def update_guest(self, dn: str, changes: dict[str, str | None]) -> None: ...
    def netbios_domain(self) -> str: ...


@dataclass(frozen=True)
class ExportOutcome:
    uid: str
    action: str  # created | adopted | updated | unchanged | error | skipped
    detail: str = ""


def _locate(directory: GuestDirectory, record: GuestRecord) -> AdAccount | None:
    """Join to AD: by objectSid once known, else adopt an existing CN=<uid> in the guest OU."""
    if record.object_sid:
        account = directory.find_by_sid(record.object_sid)
        if account is not None:
            return account
    return directory.find_guest(record.uid)


def _write(directory: GuestDirectory, record: GuestRecord, desired: dict[str, str | None]) -> tuple[str, AdAccount]:
    account = _locate(directory, record)
    if account is None:
        avoid = tuple(v for v in (desired.get("sAMAccountName"), desired.get("displayName")) if v)
        password = new_password(avoid=avoid)
        try:
            return "created", directory.create_guest(
                record.uid, desired, password, initial_user_account_control()
            )
        except AccountExistsError:
            account = directory.find_guest(record.uid)  # created meanwhile by another worker: adopt it
            if account is None:
                raise
    action = "updated" if record.object_sid == account.object_sid else "adopted"
    changes = attribute_changes(desired, account.attributes)
    if changes:
        directory.update_guest(account.dn, changes)
    elif action == "updated":
        action = "unchanged"
    return action, account


def export_guest(
    message: ExportMessage,
    state: StateStore,
    directory: GuestDirectory,
    now: Callable[[], datetime] = utcnow,
) -> ExportOutcome:
    """Apply one export. AD constraint errors end as a readable error on the guest (not a retry loop);
    an unreachable DC raises so the queue retries and, after 5 tries, parks the message as poison."""
    for _ in range(MAX_ATTEMPTS):
        record = state.get(message.uid)
        if record is None:
            return ExportOutcome(message.uid, "skipped", "guest unknown to state")
        if record.status is GuestStatus.OUT_OF_SCOPE:
            return ExportOutcome(message.uid, "skipped", f"guest out of scope: {record.reason}")
        desired, warnings = fit_cosmetic(outbound_persistent(record.entry))
        problems = validate_export(desired)
        error: str | None = "; ".join(problems) if problems else None
        account: AdAccount | None = None
        action = "error"
        if error is None:
            try:
                action, account = _write(directory, record, desired)
            except (ConstraintError, AccessDeniedError, OutsideManagedOuError, AccountExistsError) as exc:
                error = str(exc)
        if error is not None or account is None:
            new = record.evolve(status=GuestStatus.ERROR, error=error, warnings="; ".join(warnings) or None)
            outcome = ExportOutcome(record.uid, "error", error or "")
        else:
            done = now()
            latency = int((done - record.notified_at).total_seconds() * 1000) if record.notified_at else None
            new = record.evolve(
                status=GuestStatus.PROVISIONED,
                exported_version=record.version,
                error=None,
                warnings="; ".join(warnings) or None,
                object_sid=account.object_sid,
                dn=account.dn,
                sam_account_name=desired.get("sAMAccountName"),
                domain=directory.netbios_domain(),
                exported_at=done if action != "unchanged" or record.exported_at is None else record.exported_at,
                latency_ms=latency if latency is not None else record.latency_ms,
                notified_at=None,
            )
            outcome = ExportOutcome(record.uid, action)
        try:
            state.save(new)
        except ConcurrencyError:
            continue  # the record changed while we exported: run again on the fresh record (idempotent)
        if outcome.action == "error":
            log.warning("guest %s: export failed: %s", record.uid, outcome.detail)
        else:
            log.info("guest %s: %s", record.uid, outcome.action)
        return outcome
    raise ConcurrencyError(f"guest {message.uid}: state kept changing under {MAX_ATTEMPTS} attempts")
