"""Deprovisioning rules, pure: what the AD worker does with one guest's account, and the mass-change breaker.

The export worker, ``guestsync reconcile`` and ``guestsync plan`` all decide with :func:`plan_export`, so
a dry run says exactly what a real run would do. Deprovisioning (the seeds' "disable or delete the shadow
account when the guest leaves") defaults to *disable and move to the archive OU*; the account comes back
(enabled, moved home, attributes refreshed) when the guest returns, and is deleted only after an optional
grace period. Disables and deletes pass through the breaker: beyond a threshold in a rolling window they
are held for an operator instead of applied.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from shared.core.ad_rules import is_within
from shared.core.domain import (
    DEPROVISION_STATUSES,
    UAC_ACCOUNTDISABLE,
    AdAccount,
    Approval,
    GuestStatus,
)
from shared.core.rules import attribute_changes, gone_for_good
from shared.settings import DeprovisioningSettings


class ExportAction(StrEnum):
    CREATE = "create"  # no account yet: create it (initial flows: DN, password, userAccountControl)
    UPDATE = "update"  # persistent attributes differ from the metaverse entry
    RESTORE = "restore"  # the guest is back: move home from the archive OU, enable, refresh attributes
    DISABLE = "disable"  # the guest left scope: disable and move to the archive OU
    DELETE = "delete"  # archived longer than the grace period: delete the account
    RELEASE = "release"  # the guest is gone for good: its archived, disabled account gives up the UPN
    NONE = "none"  # nothing to write


#: Actions that take access away; they pass through the mass-change breaker.
DESTRUCTIVE = frozenset({ExportAction.DISABLE, ExportAction.DELETE})


@dataclass(frozen=True)
class ExportPlan:
    action: ExportAction
    reason: str
    changes: dict[str, str | None] = field(default_factory=dict)

    @property
    def destructive(self) -> bool:
        return self.action in DESTRUCTIVE


def is_disabled(account: AdAccount) -> bool:
    return bool((account.user_account_control or 0) & UAC_ACCOUNTDISABLE)


def is_archived(account: AdAccount, policy: DeprovisioningSettings) -> bool:
    return policy.archive_ou is not None and is_within(account.dn, policy.archive_ou)


def delete_due(archived_at: datetime | None, policy: DeprovisioningSettings) -> datetime | None:
    """When an archived account may be deleted (None: never, or not archived yet)."""
    if policy.delete_after_days is None or archived_at is None:
        return None
    return archived_at + timedelta(days=policy.delete_after_days)


def plan_export(
    *,
    status: GuestStatus,
    reason: str | None,
    approval: Approval | None,
    archived_at: datetime | None,
    account: AdAccount | None,
    desired: Mapping[str, str | None],
    policy: DeprovisioningSettings,
    now: datetime,
) -> ExportPlan:
    """Decide the one AD write that brings a guest's account in line with its state (pure).

    ``desired`` is the persistent outbound flow, already fitted to AD's limits. Initial-only flows are
    never re-applied to a live account: a userAccountControl changed by hand in the guest OU stays.
    """
    if status in DEPROVISION_STATUSES:
        why = reason or "guest left scope"
        if status is GuestStatus.HELD and approval is None:
            return ExportPlan(ExportAction.NONE, f"{why}; held by the mass-change breaker, awaiting approval")
        if account is None:
            return ExportPlan(ExportAction.NONE, f"{why}; there is no AD account to deprovision")
        if policy.deprovision == "none":
            return ExportPlan(ExportAction.NONE, f"{why}; deprovisioning is off (GUESTSYNC_DEPROVISION=none)")
        if approval is Approval.REJECTED:
            return ExportPlan(ExportAction.NONE, f"{why}; an operator rejected deprovisioning this guest")
        if not is_archived(account, policy):
            return ExportPlan(ExportAction.DISABLE, why)
        due = delete_due(archived_at, policy)
        if due is not None and now >= due:
            return ExportPlan(ExportAction.DELETE, f"{why}; archived since {archived_at:%Y-%m-%d}, "
                                                   f"grace period of {policy.delete_after_days} day(s) over")
        if not is_disabled(account):
            return ExportPlan(ExportAction.DISABLE, f"{why}; archived account was enabled again")
        if gone_for_good(reason, archived_at, now) and account.attributes.get("userPrincipalName"):
            return ExportPlan(ExportAction.RELEASE, f"{why}; the guest is gone for good, so the archived account "
                                                    "releases its userPrincipalName for a new invitation")
        return ExportPlan(ExportAction.NONE, f"{why}; account already disabled in the archive OU")
    changes = attribute_changes(desired, account.attributes) if account is not None else dict(desired)
    if account is None:
        return ExportPlan(ExportAction.CREATE, reason or "guest has no AD account", changes)
    if is_archived(account, policy):
        return ExportPlan(ExportAction.RESTORE, "guest is back in scope", changes)
    if changes:
        return ExportPlan(ExportAction.UPDATE, f"attributes differ: {', '.join(sorted(changes))}", changes)
    return ExportPlan(ExportAction.NONE, "account matches the metaverse entry")


# --- the mass-change breaker ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BreakerVerdict:
    allowed: bool
    window: tuple[datetime, ...]  # the window to store (only changed when allowed)
    reason: str


def breaker_admit(
    window: Sequence[datetime], now: datetime, *, threshold: int, window_minutes: int
) -> BreakerVerdict:
    """Admit one more disable/delete if fewer than ``threshold`` happened in the last ``window_minutes``.

    The stored window never holds more than ``threshold`` timestamps, so it stays small however many
    changes arrive; a held change is not counted (it did not happen).
    """
    since = now - timedelta(minutes=window_minutes)
    recent = tuple(sorted(t for t in window if t > since))
    if len(recent) >= threshold:
        return BreakerVerdict(
            False,
            recent,
            f"held by the mass-change breaker: {len(recent)} disables/deletes in the last {window_minutes} "
            f"minute(s) reached GUESTSYNC_BREAKER_THRESHOLD={threshold}; run `guestsync approve` to release "
            "or reject",
        )
    return BreakerVerdict(True, (*recent, now), "within the breaker threshold")
