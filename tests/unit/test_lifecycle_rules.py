"""Deprovisioning triggers in the flow rules (scope_exit, plan_apply) and the state they lead to (next_record)."""

from datetime import UTC, datetime, timedelta

import pytest

from shared.core.domain import Approval, GuestStatus
from shared.core.records import GuestRecord
from shared.core.rules import ApplyPlan, Decision, inbound, plan_apply, scope_exit
from shared.services.apply import next_record
from tests.unit.test_rules import GUEST_ID, guest

READ_AT = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
NOTIFIED_AT = READ_AT - timedelta(seconds=5)
DEPROVISION = (GuestStatus.OUT_OF_SCOPE, GuestStatus.HELD, GuestStatus.ARCHIVED)


KNOWN = inbound(guest())


def record(**overrides: object) -> GuestRecord:
    values: dict[str, object] = {
        "uid": GUEST_ID,
        "entry": KNOWN,
        "status": GuestStatus.PROVISIONED,
        "version": 3,
        "exported_version": 3,
        "reason": "guest attributes changed",
        "object_sid": "S-1-5-21-1-2-3-1104",
        "dn": f"CN={GUEST_ID},OU=B2BGuest,DC=contoso,DC=com",
        "graph_read_at": READ_AT - timedelta(days=1),
    }
    values.update(overrides)
    return GuestRecord(**values)  # type: ignore[arg-type]


# --- scope_exit --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("removed", "expected"),
    [
        ("deleted", "user was permanently deleted in Entra ID"),
        ("changed", "user was deleted in Entra ID (restorable for 30 days)"),
        (None, "user no longer exists in Entra ID"),
    ],
)
def test_scope_exit_deleted_user(removed: str | None, expected: str) -> None:
    assert scope_exit(None, removed=removed) == expected


def test_scope_exit_member() -> None:
    assert scope_exit(guest(user_type="Member")) == "userType changed to 'Member'"


def test_scope_exit_disabled() -> None:
    reason = scope_exit(guest(account_enabled=False))
    assert reason is not None
    assert "accountEnabled false" in reason


def test_scope_exit_enabled_unknown_is_in_scope() -> None:
    """accountEnabled not read (None) is not 'disabled'."""
    assert scope_exit(guest(account_enabled=None)) is None


def test_scope_exit_not_in_scoping_group() -> None:
    reason = scope_exit(guest(), in_group=False)
    assert reason is not None
    assert "GUESTSYNC_SCOPE_GROUP_ID" in reason


@pytest.mark.parametrize("in_group", [True, None])
def test_scope_exit_in_scope(in_group: bool | None) -> None:
    assert scope_exit(guest(), in_group=in_group) is None


def test_scope_exit_member_wins_over_group() -> None:
    assert scope_exit(guest(user_type="Member"), in_group=False) == "userType changed to 'Member'"


# --- plan_apply --------------------------------------------------------------------------------------------------


def test_unknown_disabled_guest_is_ignored() -> None:
    """No account is created for a guest that is disabled before guestsync ever saw it."""
    result = plan_apply(guest(account_enabled=False), None)
    assert result.decision is Decision.IGNORE
    assert result.entry is None


def test_unknown_guest_outside_group_is_ignored() -> None:
    result = plan_apply(guest(), None, in_group=False)
    assert result.decision is Decision.IGNORE


def test_known_guest_disabled_is_out_of_scope() -> None:
    result = plan_apply(guest(account_enabled=False), KNOWN, status=GuestStatus.PROVISIONED, has_account=True)
    assert result.decision is Decision.OUT_OF_SCOPE
    assert result.entry == KNOWN
    assert "accountEnabled false" in result.reason


@pytest.mark.parametrize("removed", ["deleted", "changed", None])
def test_known_guest_deleted_is_out_of_scope(removed: str | None) -> None:
    result = plan_apply(None, KNOWN, status=GuestStatus.PROVISIONED, has_account=True, removed=removed)
    assert result.decision is Decision.OUT_OF_SCOPE
    assert result.entry == KNOWN


@pytest.mark.parametrize("status", DEPROVISION)
def test_known_guest_back_in_scope_is_exported(status: GuestStatus) -> None:
    result = plan_apply(guest(), KNOWN, status=status, has_account=True)
    assert result.decision is Decision.EXPORT
    assert result.reason == "guest is back in scope"
    assert result.entry == KNOWN


@pytest.mark.parametrize("status", DEPROVISION)
def test_known_guest_back_in_scoping_group_is_exported(status: GuestStatus) -> None:
    result = plan_apply(guest(), KNOWN, status=status, has_account=True, in_group=True)
    assert result.decision is Decision.EXPORT
    assert result.reason == "guest is back in scope"


def test_group_removal_is_out_of_scope() -> None:
    result = plan_apply(guest(), KNOWN, status=GuestStatus.PROVISIONED, has_account=True, in_group=False)
    assert result.decision is Decision.OUT_OF_SCOPE
    assert "GUESTSYNC_SCOPE_GROUP_ID" in result.reason
    assert result.entry == KNOWN


def test_group_member_unchanged() -> None:
    result = plan_apply(guest(), KNOWN, status=GuestStatus.PROVISIONED, has_account=True, in_group=True)
    assert result.decision is Decision.UNCHANGED


# --- next_record -------------------------------------------------------------------------------------------------


def out_plan(reason: str = "user is disabled in Entra ID (accountEnabled false)") -> ApplyPlan:
    return ApplyPlan(Decision.OUT_OF_SCOPE, KNOWN, reason)


@pytest.mark.parametrize("status", [GuestStatus.PROVISIONED, GuestStatus.PENDING, GuestStatus.ERROR])
def test_next_record_in_scope_going_out(status: GuestStatus) -> None:
    old = record(status=status, approval=Approval.APPROVED, notified_at=NOTIFIED_AT)
    new = next_record(old, out_plan(), read_at=READ_AT, notified_at=NOTIFIED_AT)
    assert new is not None
    assert new.status is GuestStatus.OUT_OF_SCOPE
    assert new.approval is None
    assert new.reason == "user is disabled in Entra ID (accountEnabled false)"
    assert new.graph_read_at == READ_AT
    assert new.notified_at is None
    assert new.entry == old.entry
    assert new.version == old.version
    assert new.object_sid == old.object_sid  # the join to AD is kept: the worker needs it to disable


def test_next_record_out_of_scope_unknown_writes_nothing() -> None:
    assert next_record(None, out_plan(), read_at=READ_AT, notified_at=None) is None


def test_next_record_archived_other_reason_keeps_status() -> None:
    archived_at = READ_AT - timedelta(days=2)
    old = record(status=GuestStatus.ARCHIVED, reason="user is disabled in Entra ID (accountEnabled false)",
                 archived_at=archived_at, approval=Approval.APPROVED)
    new = next_record(old, out_plan("user was permanently deleted in Entra ID"), read_at=READ_AT,
                      notified_at=None)
    assert new is not None
    assert new.status is GuestStatus.ARCHIVED
    assert new.reason == "user was permanently deleted in Entra ID"
    assert new.archived_at == archived_at
    assert new.approval is Approval.APPROVED
    assert new.graph_read_at == READ_AT


def test_next_record_held_other_reason_stays_held() -> None:
    old = record(status=GuestStatus.HELD, reason="user no longer exists in Entra ID")
    new = next_record(old, out_plan("user was permanently deleted in Entra ID"), read_at=READ_AT,
                      notified_at=None)
    assert new is not None
    assert new.status is GuestStatus.HELD
    assert new.reason == "user was permanently deleted in Entra ID"


@pytest.mark.parametrize("status", DEPROVISION)
def test_next_record_same_reason_writes_nothing(status: GuestStatus) -> None:
    reason = "user is disabled in Entra ID (accountEnabled false)"
    old = record(status=status, reason=reason)
    assert next_record(old, out_plan(reason), read_at=READ_AT, notified_at=NOTIFIED_AT) is None


@pytest.mark.parametrize("status", DEPROVISION)
def test_next_record_coming_back(status: GuestStatus) -> None:
    approval = Approval.REJECTED if status is GuestStatus.HELD else Approval.APPROVED
    old = record(status=status, reason="user is disabled in Entra ID (accountEnabled false)", approval=approval,
                 archived_at=READ_AT - timedelta(days=1))
    back = plan_apply(guest(), KNOWN, status=status, has_account=True)
    new = next_record(old, back, read_at=READ_AT, notified_at=NOTIFIED_AT)
    assert new is not None
    assert new.status is GuestStatus.PENDING
    assert new.approval is None
    assert new.reason == "guest is back in scope"
    assert new.error is None
    assert new.graph_read_at == READ_AT
    assert new.notified_at == NOTIFIED_AT
    assert new.version == old.version  # entry unchanged


def test_next_record_coming_back_with_changes_bumps_version() -> None:
    old = record(status=GuestStatus.ARCHIVED, approval=Approval.APPROVED)
    back = plan_apply(guest(display_name="Alice Jones", surname="Jones"), KNOWN, status=GuestStatus.ARCHIVED,
                      has_account=True)
    new = next_record(old, back, read_at=READ_AT, notified_at=None)
    assert new is not None
    assert new.status is GuestStatus.PENDING
    assert new.version == old.version + 1
    assert new.entry.sn == "Jones"
