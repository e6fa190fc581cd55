"""The seed 002 flow rules, as pure functions."""

import pytest

from shared.core.domain import GUEST_USER_ACCOUNT_CONTROL, GraphUser, GuestStatus
from shared.core.rules import (
    Decision,
    attribute_changes,
    in_scope,
    inbound,
    initial_user_account_control,
    outbound_persistent,
    plan_apply,
)

GUEST_ID = "6ea91a8d-e32e-41a1-b7bd-d2d185eed0e0"


def guest(**overrides: object) -> GraphUser:
    values: dict[str, object] = {
        "id": GUEST_ID,
        "user_type": "Guest",
        "display_name": "Alice Smith",
        "given_name": "Alice",
        "surname": "Smith",
        "user_principal_name": "alice_fabrikam.com#EXT#@contoso.onmicrosoft.com",
        "mail": "alice@fabrikam.com",
        "mobile_phone": "+1 555 0100",
    }
    values.update(overrides)
    return GraphUser(**values)  # type: ignore[arg-type]


def test_connector_filter_takes_guests_only() -> None:
    assert in_scope(guest())
    assert not in_scope(guest(user_type="Member"))
    assert not in_scope(guest(user_type=None))
    assert not in_scope(guest(user_type="guest"))  # Graph's value is exactly "Guest"


def test_inbound_flow_matches_seed_table() -> None:
    entry = inbound(guest())
    assert entry.uid == GUEST_ID
    assert entry.cn == GUEST_ID
    assert entry.account_name == GUEST_ID[:20] == "6ea91a8d-e32e-41a1-b"
    assert entry.employee_type == "Guest"
    assert entry.display_name == "Alice Smith"
    assert entry.given_name == "Alice"
    assert entry.sn == "Smith"
    assert entry.user_principal_name == "alice_fabrikam.com#EXT#@contoso.onmicrosoft.com"
    assert entry.mail == "alice@fabrikam.com"
    assert entry.mobile_phone == "+1 555 0100"


def test_inbound_refuses_non_guid_ids() -> None:
    with pytest.raises(ValueError, match="not a GUID"):
        inbound(guest(id="x,OU=Evil"))


def test_outbound_persistent_flow_matches_seed_table() -> None:
    assert outbound_persistent(inbound(guest())) == {
        "sAMAccountName": "6ea91a8d-e32e-41a1-b",
        "givenName": "Alice",
        "mail": "alice@fabrikam.com",
        "sn": "Smith",
        "userPrincipalName": "alice_fabrikam.com#EXT#@contoso.onmicrosoft.com",
        "displayName": "Alice Smith",
    }


def test_initial_user_account_control_is_smartcard_required_normal_account() -> None:
    assert initial_user_account_control() == GUEST_USER_ACCOUNT_CONTROL == 262656


def test_attribute_changes_only_real_differences() -> None:
    assert attribute_changes({"givenName": "A", "sn": "B"}, {"givenName": "A", "sn": "B"}) == {}
    assert attribute_changes({"givenName": "X", "sn": "B"}, {"givenName": "A", "sn": "B"}) == {"givenName": "X"}
    assert attribute_changes({"mail": None}, {"mail": "a@b"}) == {"mail": None}
    assert attribute_changes({"mail": ""}, {}) == {}
    assert attribute_changes({"mail": "a@b"}, {}) == {"mail": "a@b"}


def test_plan_new_guest_exports() -> None:
    plan = plan_apply(guest(), None)
    assert plan.decision is Decision.EXPORT and plan.entry == inbound(guest())


def test_plan_member_unknown_is_ignored() -> None:
    assert plan_apply(guest(user_type="Member"), None).decision is Decision.IGNORE
    assert plan_apply(None, None).decision is Decision.IGNORE


def test_plan_known_guest_unchanged_is_noop() -> None:
    entry = inbound(guest())
    plan = plan_apply(guest(), entry, status=GuestStatus.PROVISIONED, has_account=True)
    assert plan.decision is Decision.UNCHANGED


def test_plan_outbound_change_exports() -> None:
    entry = inbound(guest())
    plan = plan_apply(guest(given_name="Alicia"), entry, status=GuestStatus.PROVISIONED, has_account=True)
    assert plan.decision is Decision.EXPORT
    assert plan.entry is not None and plan.entry.given_name == "Alicia"


def test_plan_metaverse_only_change_saves_without_export() -> None:
    entry = inbound(guest())
    plan = plan_apply(guest(mobile_phone="+1 555 0199"), entry, status=GuestStatus.PROVISIONED, has_account=True)
    assert plan.decision is Decision.SAVE


def test_plan_pending_export_is_sent_again() -> None:
    entry = inbound(guest())
    plan = plan_apply(guest(), entry, status=GuestStatus.PENDING, has_account=False)
    assert plan.decision is Decision.EXPORT


def test_plan_error_without_change_does_not_loop() -> None:
    entry = inbound(guest())
    plan = plan_apply(guest(), entry, status=GuestStatus.ERROR, has_account=False)
    assert plan.decision is Decision.UNCHANGED


def test_plan_error_with_change_retries() -> None:
    entry = inbound(guest())
    plan = plan_apply(guest(mail="new@fabrikam.com"), entry, status=GuestStatus.ERROR, has_account=False)
    assert plan.decision is Decision.EXPORT


def test_plan_deleted_or_converted_known_guest_is_out_of_scope() -> None:
    entry = inbound(guest())
    assert plan_apply(None, entry, status=GuestStatus.PROVISIONED, has_account=True).decision is Decision.OUT_OF_SCOPE
    plan = plan_apply(guest(user_type="Member"), entry, status=GuestStatus.PROVISIONED, has_account=True)
    assert plan.decision is Decision.OUT_OF_SCOPE and "Member" in plan.reason


def test_plan_returning_guest_exports() -> None:
    entry = inbound(guest())
    plan = plan_apply(guest(), entry, status=GuestStatus.OUT_OF_SCOPE, has_account=True)
    assert plan.decision is Decision.EXPORT


def test_guid_check_refuses_trailing_newline() -> None:
    from shared.core.domain import is_guid

    assert is_guid(GUEST_ID)
    assert not is_guid(GUEST_ID + "\n")
