"""The flow rules of seed 002, as pure functions (no I/O): filter, inbound flow, join, outbound flow, diff.

These are the defaults an identity admin knows from the MIM B2B scenario:

* connector filter: only ``userType == "Guest"``;
* inbound: displayName, Left(id,20)->accountName, id->uid, id->cn, userType->employeeType, givenName,
  surname->sn, userPrincipalName, mail, mobilePhone;
* outbound, persistent: accountName->sAMAccountName, givenName, mail, sn, userPrincipalName, displayName;
* outbound, initial only: dn = CN=<uid>,<guest OU>; unicodePwd (random); userAccountControl = 262656.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from shared.core.domain import (
    DEPROVISION_STATUSES,
    GUEST_USER_ACCOUNT_CONTROL,
    GraphUser,
    GuestStatus,
    MetaverseEntry,
    graph_id,
    is_guid,
)

GUEST_USER_TYPE = "Guest"
ACCOUNT_NAME_LENGTH = 20

#: Outbound attributes kept in sync on every change (metaverse -> AD), in seed order.
PERSISTENT_ATTRIBUTES: tuple[str, ...] = (
    "sAMAccountName",
    "givenName",
    "mail",
    "sn",
    "userPrincipalName",
    "displayName",
)
#: Outbound attributes written once, at creation, and never re-applied.
INITIAL_ONLY_ATTRIBUTES: tuple[str, ...] = ("dn", "unicodePwd", "userAccountControl")


def in_scope(user: GraphUser) -> bool:
    """Connector filter: only guests get shadow accounts; members never do."""
    return user.user_type == GUEST_USER_TYPE


def inbound(user: GraphUser) -> MetaverseEntry:
    """Project a Graph user into a metaverse entry (seed 002, 'Import Guest User' rule)."""
    if not is_guid(user.id):
        raise ValueError(f"Graph user id {user.id!r} is not a GUID; refusing to build a DN from it")
    uid = graph_id(user.id)
    return MetaverseEntry(
        uid=uid,
        cn=uid,
        account_name=uid[:ACCOUNT_NAME_LENGTH],
        employee_type=user.user_type,
        display_name=user.display_name,
        given_name=user.given_name,
        sn=user.surname,
        user_principal_name=user.user_principal_name,
        mail=user.mail,
        mobile_phone=user.mobile_phone,
    )


def outbound_persistent(entry: MetaverseEntry) -> dict[str, str | None]:
    """The persistent outbound flow (seed 002 'Create Guest User account' rule, non-initial rows)."""
    return {
        "sAMAccountName": entry.account_name,
        "givenName": entry.given_name,
        "mail": entry.mail,
        "sn": entry.sn,
        "userPrincipalName": entry.user_principal_name,
        "displayName": entry.display_name,
    }


def initial_user_account_control() -> int:
    """Initial flow ``262656 => userAccountControl``: NORMAL_ACCOUNT | SMARTCARD_REQUIRED."""
    return GUEST_USER_ACCOUNT_CONTROL


def attribute_changes(
    desired: Mapping[str, str | None], current: Mapping[str, str | None]
) -> dict[str, str | None]:
    """What to write so that ``current`` becomes ``desired``; ``None`` means clear the attribute.

    Empty strings count as absent (AD cannot hold an empty string value).
    """
    changes: dict[str, str | None] = {}
    for name, value in desired.items():
        want = value or None
        have = current.get(name) or None
        if want != have:
            changes[name] = want
    return changes


class Decision(StrEnum):
    """What the apply step does with one Graph read."""

    IGNORE = "ignore"  # not a guest and never was one of ours: drop (one Graph read spent)
    EXPORT = "export"  # metaverse entry new or changed in an outbound attribute: save and export
    SAVE = "save"  # changed, but only in metaverse-only attributes (mobilePhone...): save, no export
    UNCHANGED = "unchanged"  # nothing to do (duplicate or stale notification)
    OUT_OF_SCOPE = "out_of_scope"  # ours, but left scope (deleted, disabled, member, group): deprovision


@dataclass(frozen=True)
class ApplyPlan:
    decision: Decision
    entry: MetaverseEntry | None
    reason: str


#: scope_exit's reasons for a user Graph no longer returns (``gone_for_good`` tells them apart).
PERMANENTLY_DELETED = "user was permanently deleted in Entra ID"
SOFT_DELETED = "user was deleted in Entra ID (restorable for 30 days)"
NOT_FOUND = "user no longer exists in Entra ID"
#: How long Entra keeps a deleted user restorable (deleted items) before purging it for good.
RESTORE_WINDOW = timedelta(days=30)


def gone_for_good(reason: str | None, archived_at: datetime | None, now: datetime) -> bool:
    """Whether the guest can never come back under the same object id: permanently deleted, or deleted and past
    Entra's 30-day restore window. Its archived account then gives up the UPN, so that the same address invited
    again (a new object id, the same UPN) gets an account. A disabled guest, a member or one outside the scoping
    group still exists in Entra and keeps its UPN."""
    if reason == PERMANENTLY_DELETED:
        return True
    return reason in (SOFT_DELETED, NOT_FOUND) and archived_at is not None and now >= archived_at + RESTORE_WINDOW


def scope_exit(user: GraphUser | None, *, in_group: bool | None = None, removed: str | None = None) -> str | None:
    """Why a user is not (or no longer) in scope, or None when it is: the deprovisioning triggers.

    ``in_group`` is None when no scoping group is configured; ``removed`` is the users/delta ``@removed``
    reason when known ("changed": soft-deleted, restorable for 30 days; "deleted": hard-deleted).
    """
    if user is None:
        if removed == "deleted":
            return PERMANENTLY_DELETED
        if removed == "changed":
            return SOFT_DELETED
        return NOT_FOUND
    if not in_scope(user):
        return f"userType changed to {user.user_type!r}"
    if user.account_enabled is False:
        return "user is disabled in Entra ID (accountEnabled false)"
    if in_group is False:
        return "user is not a member of the scoping group (GUESTSYNC_SCOPE_GROUP_ID)"
    return None


def plan_apply(
    user: GraphUser | None,
    known: MetaverseEntry | None,
    *,
    status: GuestStatus | None = None,
    has_account: bool = False,
    in_group: bool | None = None,
    removed: str | None = None,
) -> ApplyPlan:
    """Join a Graph read (``user``; None = not found) against the metaverse entry we hold (``known``).

    Pure: the caller reads Graph and state, calls this, then writes what it says. Running it twice on the
    same inputs gives the same plan, which is what makes duplicate and out-of-order messages harmless.
    """
    exit_reason = scope_exit(user, in_group=in_group, removed=removed)
    if exit_reason is not None:
        if known is None:
            return ApplyPlan(Decision.IGNORE, None, f"not in scope and unknown to guestsync: {exit_reason}")
        return ApplyPlan(Decision.OUT_OF_SCOPE, known, exit_reason)
    assert user is not None
    entry = inbound(user)
    if known is None:
        return ApplyPlan(Decision.EXPORT, entry, "new guest")
    if status in DEPROVISION_STATUSES:
        return ApplyPlan(Decision.EXPORT, entry, "guest is back in scope")
    if outbound_persistent(entry) != outbound_persistent(known):
        return ApplyPlan(Decision.EXPORT, entry, "guest attributes changed")
    if status is GuestStatus.PENDING:
        # An export is outstanding; sending it again is harmless (the worker converges) and covers a
        # message lost between saving the state and enqueueing the export.
        return ApplyPlan(Decision.EXPORT, entry, "export still outstanding")
    if not has_account and status is not GuestStatus.ERROR:
        return ApplyPlan(Decision.EXPORT, entry, "guest has no AD account yet")
    if entry != known:
        return ApplyPlan(Decision.SAVE, entry, "metaverse-only attributes changed")
    return ApplyPlan(Decision.UNCHANGED, entry, "no change")
