"""End to end: Graph simulator -> webhook -> apply -> export -> Samba AD DC, through the local runner.

Everything is real except Entra ID itself: Azurite for queues and state, a Samba AD DC over LDAPS with
certificate validation, the msgraph-sdk client against the Graph simulator, and the function app's own
registrations dispatched with the host's queue semantics.
"""

from __future__ import annotations

import ldap3
import pytest

from shared.core.domain import GuestStatus
from tests.plugins.stack import Stack

pytestmark = pytest.mark.integration

def test_guests_get_exactly_one_account_each_members_none(stack: Stack) -> None:
    sim = stack.sim
    members = [sim.add_user(displayName=f"Member {i}", userType="Member",  # type: ignore[attr-defined]
                            userPrincipalName=f"member{i}@contoso.com", mail=f"member{i}@contoso.com")
               for i in range(5)]
    guests = [sim.invite_guest(f"partner{i}@fabrikam.com", f"Partner {i}", f"Given{i}", f"Sur{i}")  # type: ignore[attr-defined]
              for i in range(25)]
    uids = [g["id"] for g in guests]
    stack.wait(lambda: stack.settled(uids), "25 guest accounts")

    accounts = stack.ad_accounts()
    assert len(accounts) == 25
    for guest in guests:
        ad = accounts[guest["id"]]
        assert ad["sAMAccountName"] == [guest["id"][:20]]
        assert ad["userPrincipalName"] == [guest["userPrincipalName"]]
        assert "#EXT#@contoso.onmicrosoft.com" in ad["userPrincipalName"][0]
        assert ad["givenName"] == [guest["givenName"]]
        assert ad["sn"] == [guest["surname"]]
        assert ad["mail"] == [guest["mail"]]
        assert ad["displayName"] == [guest["displayName"]]
        assert int(ad["userAccountControl"][0]) == 262656
        record = stack.state.get(guest["id"])
        assert record is not None and record.status is GuestStatus.PROVISIONED
        assert record.object_sid and record.object_sid.startswith("S-1-5-21-")
        assert record.sam_account_name == guest["id"][:20]
        assert record.domain == "CONTOSO"
        assert record.latency_ms is not None and record.latency_ms >= 0
    for member in members:
        assert member["id"] not in accounts
        assert stack.state.get(member["id"]) is None


def test_given_name_change_flows_and_initial_only_attributes_are_not_reapplied(stack: Stack) -> None:
    sim = stack.sim
    guest = sim.invite_guest("alice@fabrikam.com", "Alice Smith", "Alice", "Smith")  # type: ignore[attr-defined]
    uid = guest["id"]
    stack.wait(lambda: stack.settled([uid]), "the account")
    record = stack.state.get(uid)
    assert record is not None
    dn = record.dn
    assert dn is not None
    # An admin changes an initial-only attribute by hand: UAC without SMARTCARD_REQUIRED.
    assert stack.admin.modify(dn, {"userAccountControl": [(ldap3.MODIFY_REPLACE, ["512"])]}), stack.admin.result

    sim.update_user(uid, givenName="Alicia", displayName="Alicia Smith")  # type: ignore[attr-defined]
    stack.wait(lambda: (r := stack.state.get(uid)) is not None and r.entry.given_name == "Alicia"
               and r.exported_version == r.version, "the givenName change")
    ad = stack.ad_accounts()[uid]
    assert ad["givenName"] == ["Alicia"]
    assert ad["displayName"] == ["Alicia Smith"]
    assert int(ad["userAccountControl"][0]) == 512  # initial-only: not re-applied
    assert len(stack.ad_accounts()) == 1


def test_hostile_display_name_is_stored_and_exported_safely(stack: Stack) -> None:
    sim = stack.sim
    hostile = "Mallory, =*)(|(objectClass=*)\\ OU=Evil+CN=x <x> " + "Z" * 300
    guest = sim.invite_guest("mallory@evil.example", hostile, "Mal*", "Lory)(")  # type: ignore[attr-defined]
    uid = guest["id"]
    stack.wait(lambda: stack.settled([uid]), "the hostile guest")
    record = stack.state.get(uid)
    assert record is not None
    assert record.entry.display_name == hostile  # state keeps the exact value
    assert record.status is GuestStatus.PROVISIONED, record.error
    assert record.warnings and "displayName" in record.warnings
    ad = stack.ad_accounts()[uid]
    assert ad["displayName"] == [hostile[:256]]  # AD's limit, cut only there
    assert ad["givenName"] == ["Mal*"] and ad["sn"] == ["Lory)("]
    assert record.dn is not None and record.dn.lower().startswith(f"cn={uid},ou=b2bguest,")


def test_duplicate_and_reordered_notifications_are_harmless(stack: Stack) -> None:
    sim = stack.sim
    guest = sim.invite_guest("dup@fabrikam.com", "Dup Licate", "Dup", "Licate")  # type: ignore[attr-defined]
    uid = guest["id"]
    for name in ("One", "Two", "Three"):
        sim.update_user(uid, givenName=name)  # type: ignore[attr-defined]
    stack.wait(lambda: (r := stack.state.get(uid)) is not None and r.entry.given_name == "Three"
               and r.exported_version == r.version and r.status is GuestStatus.PROVISIONED, "convergence")
    accounts = stack.ad_accounts()
    assert len(accounts) == 1 and accounts[uid]["givenName"] == ["Three"]
