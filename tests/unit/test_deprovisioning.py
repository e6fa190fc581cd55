"""Lifecycle rules, pure: plan_export (what the AD worker writes for one guest) and the mass-change breaker."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.core.deprovisioning import (
    DESTRUCTIVE,
    ExportAction,
    ExportPlan,
    breaker_admit,
    delete_due,
    is_archived,
    is_disabled,
    plan_export,
)
from shared.core.domain import (
    GUEST_USER_ACCOUNT_CONTROL,
    UAC_ACCOUNTDISABLE,
    AdAccount,
    Approval,
    GraphUser,
    GuestStatus,
)
from shared.core.messages import ExportMessage
from shared.core.records import GuestRecord
from shared.core.rules import inbound
from shared.services.export import export_guest
from shared.settings import DeprovisioningSettings
from tests.fakes import MemoryDirectory, MemoryGuestStore

GUEST_ID = "6ea91a8d-e32e-41a1-b7bd-d2d185eed0e0"
GUEST_OU = "OU=B2BGuest,DC=contoso,DC=com"
ARCHIVE_OU = "OU=B2BGuestArchive,DC=contoso,DC=com"
LIVE_DN = f"CN={GUEST_ID},{GUEST_OU}"
ARCHIVED_DN = f"CN={GUEST_ID},{ARCHIVE_OU}"
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
ENABLED = GUEST_USER_ACCOUNT_CONTROL
DISABLED = GUEST_USER_ACCOUNT_CONTROL | UAC_ACCOUNTDISABLE

DESIRED: dict[str, str | None] = {
    "sAMAccountName": GUEST_ID[:20],
    "givenName": "Alice",
    "mail": "alice@fabrikam.com",
    "sn": "Smith",
    "userPrincipalName": "alice_fabrikam.com#EXT#@contoso.onmicrosoft.com",
    "displayName": "Alice Smith",
}

POLICY = DeprovisioningSettings(archive_ou=ARCHIVE_OU)
DEPROVISION = (GuestStatus.OUT_OF_SCOPE, GuestStatus.ARCHIVED)


def account(
    dn: str = LIVE_DN, uac: int | None = ENABLED, **attributes: str | None
) -> AdAccount:
    values = dict(DESIRED)
    values.update(attributes)
    return AdAccount(dn=dn, object_sid="S-1-5-21-1-2-3-1104", sam_account_name=GUEST_ID[:20],
                     user_account_control=uac, attributes=values)


def plan(
    status: GuestStatus = GuestStatus.PENDING,
    *,
    reason: str | None = None,
    approval: Approval | None = None,
    archived_at: datetime | None = None,
    acct: AdAccount | None = None,
    desired: dict[str, str | None] | None = None,
    policy: DeprovisioningSettings = POLICY,
    now: datetime = NOW,
) -> ExportPlan:
    return plan_export(status=status, reason=reason, approval=approval, archived_at=archived_at, account=acct,
                       desired=DESIRED if desired is None else desired, policy=policy, now=now)


# --- helpers ------------------------------------------------------------------------------------------------


def test_is_archived_only_inside_the_archive_ou() -> None:
    assert is_archived(account(ARCHIVED_DN), POLICY)
    assert is_archived(account(ARCHIVED_DN.upper()), POLICY)  # DNs compare case-insensitively
    assert not is_archived(account(LIVE_DN), POLICY)
    assert not is_archived(account(f"CN={GUEST_ID},OU=B2BGuestArchiveX,DC=contoso,DC=com"), POLICY)
    assert not is_archived(account(ARCHIVED_DN), DeprovisioningSettings(deprovision="none"))  # no archive OU


def test_is_disabled_reads_accountdisable_bit() -> None:
    assert is_disabled(account(uac=DISABLED))
    assert not is_disabled(account(uac=ENABLED))
    assert not is_disabled(account(uac=None))  # unknown is not disabled


def test_delete_due() -> None:
    archived = NOW - timedelta(days=3)
    assert delete_due(archived, POLICY) is None  # no grace period: never
    assert delete_due(None, DeprovisioningSettings(archive_ou=ARCHIVE_OU, delete_after_days=30)) is None
    due = delete_due(archived, DeprovisioningSettings(archive_ou=ARCHIVE_OU, delete_after_days=30))
    assert due == archived + timedelta(days=30)


# --- in scope ------------------------------------------------------------------------------------------------


def test_in_scope_without_account_creates() -> None:
    result = plan(GuestStatus.PENDING, reason="new guest")
    assert result.action is ExportAction.CREATE
    assert result.reason == "new guest"
    assert result.changes == DESIRED


def test_in_scope_without_account_and_no_reason_still_explains() -> None:
    result = plan(GuestStatus.PENDING)
    assert result.action is ExportAction.CREATE
    assert result.reason


def test_in_scope_with_archived_account_restores_with_attribute_changes() -> None:
    acct = account(ARCHIVED_DN, uac=DISABLED, displayName="Alice Old", mail="old@fabrikam.com")
    result = plan(GuestStatus.PENDING, reason="guest is back in scope", acct=acct)
    assert result.action is ExportAction.RESTORE
    assert result.changes == {"displayName": "Alice Smith", "mail": "alice@fabrikam.com"}
    assert not result.destructive


def test_in_scope_with_archived_account_restores_even_without_changes() -> None:
    result = plan(GuestStatus.PENDING, acct=account(ARCHIVED_DN, uac=DISABLED))
    assert result.action is ExportAction.RESTORE
    assert result.changes == {}


def test_attribute_drift_updates_exactly_the_changed_attributes() -> None:
    acct = account(givenName="Alicia", sn=None, employeeType="Guest")  # employeeType: not in the outbound flow
    result = plan(GuestStatus.PENDING, acct=acct)
    assert result.action is ExportAction.UPDATE
    assert result.changes == {"givenName": "Alice", "sn": "Smith"}
    assert "givenName" in result.reason and "sn" in result.reason


def test_attribute_drift_clears_attributes_gone_from_the_metaverse() -> None:
    desired = dict(DESIRED, mail=None)
    result = plan(GuestStatus.PENDING, acct=account(), desired=desired)
    assert result.action is ExportAction.UPDATE
    assert result.changes == {"mail": None}


@pytest.mark.parametrize("uac", [DISABLED, 0x0200, None])
def test_hand_changed_user_account_control_on_live_account_is_not_a_change(uac: int | None) -> None:
    """userAccountControl flows initial-only: an admin's change in the guest OU stays."""
    acct = account(uac=uac, userAccountControl=str(uac))
    result = plan(GuestStatus.PROVISIONED, acct=acct)
    assert result.action is ExportAction.NONE
    assert result.changes == {}


def test_matching_account_needs_nothing() -> None:
    result = plan(GuestStatus.PROVISIONED, acct=account())
    assert result.action is ExportAction.NONE
    assert result.changes == {}
    assert not result.destructive


def test_empty_string_equals_absent_attribute() -> None:
    result = plan(GuestStatus.PROVISIONED, acct=account(mail=None), desired=dict(DESIRED, mail=""))
    assert result.action is ExportAction.NONE


# --- out of scope ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", DEPROVISION)
def test_out_of_scope_without_account_does_nothing(status: GuestStatus) -> None:
    result = plan(status, reason="user was deleted in Entra ID")
    assert result.action is ExportAction.NONE
    assert "no AD account" in result.reason
    assert result.reason.startswith("user was deleted in Entra ID")


@pytest.mark.parametrize("status", DEPROVISION)
def test_deprovision_none_policy_does_nothing(status: GuestStatus) -> None:
    result = plan(status, acct=account(), policy=DeprovisioningSettings(deprovision="none"))
    assert result.action is ExportAction.NONE
    assert "GUESTSYNC_DEPROVISION=none" in result.reason


@pytest.mark.parametrize("status", [*DEPROVISION, GuestStatus.HELD])
def test_rejected_deprovisioning_does_nothing(status: GuestStatus) -> None:
    result = plan(status, approval=Approval.REJECTED, acct=account())
    assert result.action is ExportAction.NONE
    assert "rejected" in result.reason


@pytest.mark.parametrize("status", DEPROVISION)
def test_live_account_in_guest_ou_is_disabled(status: GuestStatus) -> None:
    result = plan(status, reason="user is disabled in Entra ID (accountEnabled false)", acct=account())
    assert result.action is ExportAction.DISABLE
    assert result.reason == "user is disabled in Entra ID (accountEnabled false)"
    assert result.destructive


def test_deprovision_without_reason_still_explains() -> None:
    result = plan(GuestStatus.OUT_OF_SCOPE, acct=account())
    assert result.action is ExportAction.DISABLE
    assert result.reason


@pytest.mark.parametrize("status", DEPROVISION)
def test_archived_and_disabled_needs_nothing(status: GuestStatus) -> None:
    result = plan(status, acct=account(ARCHIVED_DN, uac=DISABLED), archived_at=NOW - timedelta(days=400))
    assert result.action is ExportAction.NONE
    assert "already disabled" in result.reason


@pytest.mark.parametrize("status", DEPROVISION)
def test_archived_but_enabled_again_is_disabled(status: GuestStatus) -> None:
    result = plan(status, acct=account(ARCHIVED_DN, uac=ENABLED), archived_at=NOW - timedelta(days=1))
    assert result.action is ExportAction.DISABLE
    assert "enabled again" in result.reason
    assert result.destructive


def test_archived_account_attribute_drift_is_not_exported() -> None:
    acct = account(ARCHIVED_DN, uac=DISABLED, displayName="Someone Else")
    result = plan(GuestStatus.ARCHIVED, acct=acct)
    assert result.action is ExportAction.NONE
    assert result.changes == {}


GRACE = DeprovisioningSettings(archive_ou=ARCHIVE_OU, delete_after_days=30)
ARCHIVED_AT = NOW - timedelta(days=30)  # due exactly at NOW


@pytest.mark.parametrize("uac", [DISABLED, ENABLED])
def test_delete_grace_period_not_over(uac: int) -> None:
    before = NOW - timedelta(seconds=1)
    result = plan(GuestStatus.ARCHIVED, acct=account(ARCHIVED_DN, uac=uac), archived_at=ARCHIVED_AT,
                  policy=GRACE, now=before)
    assert result.action is not ExportAction.DELETE
    expected = ExportAction.NONE if uac == DISABLED else ExportAction.DISABLE
    assert result.action is expected


@pytest.mark.parametrize("now", [NOW, NOW + timedelta(seconds=1), NOW + timedelta(days=365)])
def test_delete_at_or_after_due(now: datetime) -> None:
    result = plan(GuestStatus.ARCHIVED, reason="user was permanently deleted in Entra ID",
                  acct=account(ARCHIVED_DN, uac=DISABLED), archived_at=ARCHIVED_AT, policy=GRACE, now=now)
    assert result.action is ExportAction.DELETE
    assert result.destructive
    assert "30 day(s)" in result.reason
    assert result.reason.startswith("user was permanently deleted in Entra ID")


def test_delete_never_for_live_account_even_when_due() -> None:
    """A live (not yet archived) account is disabled first; deletion only ever follows archiving."""
    result = plan(GuestStatus.OUT_OF_SCOPE, acct=account(), archived_at=ARCHIVED_AT, policy=GRACE)
    assert result.action is ExportAction.DISABLE


def test_delete_never_without_archived_at() -> None:
    result = plan(GuestStatus.ARCHIVED, acct=account(ARCHIVED_DN, uac=DISABLED), archived_at=None, policy=GRACE,
                  now=NOW + timedelta(days=10_000))
    assert result.action is ExportAction.NONE


def test_delete_after_days_none_never_deletes() -> None:
    result = plan(GuestStatus.ARCHIVED, acct=account(ARCHIVED_DN, uac=DISABLED),
                  archived_at=NOW - timedelta(days=10_000), policy=POLICY)
    assert result.action is ExportAction.NONE


def test_held_without_approval_waits() -> None:
    for acct in (account(), account(ARCHIVED_DN, uac=ENABLED), None):
        result = plan(GuestStatus.HELD, reason="user no longer exists in Entra ID", acct=acct)
        assert result.action is ExportAction.NONE
        assert "breaker" in result.reason


def test_held_with_approval_disables() -> None:
    result = plan(GuestStatus.HELD, approval=Approval.APPROVED, acct=account())
    assert result.action is ExportAction.DISABLE
    assert result.destructive


def test_held_with_approval_deletes_when_due() -> None:
    result = plan(GuestStatus.HELD, approval=Approval.APPROVED, acct=account(ARCHIVED_DN, uac=DISABLED),
                  archived_at=ARCHIVED_AT, policy=GRACE)
    assert result.action is ExportAction.DELETE


# --- destructive ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", list(ExportAction))
def test_destructive_means_disable_or_delete(action: ExportAction) -> None:
    expected = action in (ExportAction.DISABLE, ExportAction.DELETE)
    assert ExportPlan(action, "x").destructive is expected
    assert (action in DESTRUCTIVE) is expected


# --- the mass-change breaker -----------------------------------------------------------------------------------


def minutes_ago(n: float) -> datetime:
    return NOW - timedelta(minutes=n)


def test_breaker_admits_up_to_threshold_then_holds() -> None:
    window: tuple[datetime, ...] = ()
    for i in range(3):
        verdict = breaker_admit(window, NOW + timedelta(seconds=i), threshold=3, window_minutes=60)
        assert verdict.allowed
        assert len(verdict.window) == i + 1
        window = verdict.window
    held = breaker_admit(window, NOW + timedelta(seconds=3), threshold=3, window_minutes=60)
    assert not held.allowed
    assert held.window == window  # a held change is not counted
    assert "GUESTSYNC_BREAKER_THRESHOLD=3" in held.reason
    assert "guestsync approve" in held.reason


def test_breaker_admit_appends_now() -> None:
    verdict = breaker_admit([minutes_ago(5)], NOW, threshold=5, window_minutes=60)
    assert verdict.allowed
    assert verdict.window == (minutes_ago(5), NOW)


def test_breaker_prunes_timestamps_outside_the_window() -> None:
    full = [minutes_ago(61), minutes_ago(90), minutes_ago(10)]
    verdict = breaker_admit(full, NOW, threshold=2, window_minutes=60)
    assert verdict.allowed  # two of the three are older than the window and free capacity
    assert verdict.window == (minutes_ago(10), NOW)


def test_breaker_timestamp_exactly_window_old_is_pruned() -> None:
    verdict = breaker_admit([minutes_ago(60)], NOW, threshold=1, window_minutes=60)
    assert verdict.allowed
    assert verdict.window == (NOW,)


def test_breaker_held_window_is_pruned_and_sorted() -> None:
    verdict = breaker_admit([minutes_ago(1), minutes_ago(120), minutes_ago(2)], NOW, threshold=2,
                            window_minutes=60)
    assert not verdict.allowed
    assert verdict.window == (minutes_ago(2), minutes_ago(1))


def test_breaker_stored_window_never_exceeds_threshold() -> None:
    window: tuple[datetime, ...] = ()
    for i in range(50):
        verdict = breaker_admit(window, NOW + timedelta(seconds=i), threshold=7, window_minutes=60)
        if verdict.allowed:
            window = verdict.window
        assert len(window) <= 7
    assert len(window) == 7


@settings(max_examples=200, deadline=None)
@given(
    offsets=st.lists(st.integers(min_value=0, max_value=6 * 3600), max_size=60),
    threshold=st.integers(min_value=1, max_value=6),
    window_minutes=st.integers(min_value=1, max_value=30),
)
def test_breaker_never_admits_more_than_threshold_in_any_window(
    offsets: list[int], threshold: int, window_minutes: int
) -> None:
    """For any sorted request times, at most ``threshold`` are admitted in any ``window_minutes`` span."""
    times = [NOW + timedelta(seconds=s) for s in sorted(offsets)]
    window: tuple[datetime, ...] = ()
    admitted: list[datetime] = []
    for t in times:
        verdict = breaker_admit(window, t, threshold=threshold, window_minutes=window_minutes)
        if verdict.allowed:
            window = verdict.window
            admitted.append(t)
        assert len(window) <= threshold
    span = timedelta(minutes=window_minutes)
    # The busiest window (end - span, end] always ends at an admitted change.
    for end in admitted:
        assert sum(1 for t in admitted if end - span < t <= end) <= threshold
    # And the breaker is not stricter than asked: with no earlier admits in the window, a request is admitted.
    if times:
        assert admitted[0] == times[0]


# --- the export worker carries out the plan (in-memory fakes, no servers) ---------------------------------------


def _export_without_account(status: GuestStatus, policy: DeprovisioningSettings) -> tuple[str, list[str]]:
    entry = inbound(GraphUser(id=GUEST_ID, user_type="Guest", display_name="Alice Smith", given_name="Alice",
                              surname="Smith", user_principal_name=DESIRED["userPrincipalName"],
                              mail="alice@fabrikam.com"))
    state, directory = MemoryGuestStore(), MemoryDirectory(GUEST_OU, ARCHIVE_OU)  # an empty guest OU
    state.put(GuestRecord(uid=GUEST_ID, entry=entry, status=status, reason="user was deleted in Entra ID"))
    outcome = export_guest(ExportMessage(GUEST_ID, 1, "test"), state, directory, policy,
                           now=lambda: NOW, upn_suffixes=("contoso.onmicrosoft.com",))
    return outcome.action, directory.writes


def test_export_worker_creates_account_for_guest_in_scope() -> None:
    """Control for the test below: the fakes are enough for export_guest to create an account."""
    action, writes = _export_without_account(GuestStatus.PENDING, POLICY)
    assert action == "created"
    assert writes == ["create"]


@pytest.mark.parametrize(
    ("status", "policy"),
    [
        (GuestStatus.OUT_OF_SCOPE, POLICY),
        (GuestStatus.ARCHIVED, POLICY),
        (GuestStatus.OUT_OF_SCOPE, DeprovisioningSettings(deprovision="none")),
    ],
)
def test_export_worker_never_creates_account_for_guest_out_of_scope(
    status: GuestStatus, policy: DeprovisioningSettings
) -> None:
    action, writes = _export_without_account(status, policy)
    assert writes == []
    assert action != "created"
