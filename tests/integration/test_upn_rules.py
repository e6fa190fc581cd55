"""Guest UPN rules and implicit name collisions, against the real Samba AD DC, Azurite and the Graph simulator.

Windows AD (and its KDC) finds an account by its explicit userPrincipalName and by its implicit UPN
``sAMAccountName@<domain DNS name>``; Samba is lenient or reports such clashes as something else, so guestsync
checks them itself before any add, and refuses guest UPNs that are not of the kind Entra gives guests.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import ldap3
import pytest

from shared.adapters.directory import Directory
from shared.core.domain import GUEST_USER_ACCOUNT_CONTROL, GuestStatus
from shared.core.errors import ConstraintError
from shared.settings import DirectorySettings
from tests.integration.test_directory import guest_values, password_for
from tests.plugins.samba import GuestsyncDC
from tests.plugins.stack import Stack

pytestmark = pytest.mark.integration
USER_CLASSES = ["top", "person", "organizationalPerson", "user"]


@pytest.fixture
def directory(directory_settings: DirectorySettings, clean_guest_ou: None) -> Iterator[Directory]:
    with Directory(directory_settings) as d:
        yield d


@pytest.fixture
def planted(admin_ldap: ldap3.Connection, samba_dc: GuestsyncDC) -> Iterator[list[str]]:
    """DNs of accounts a test adds in CN=Users as Administrator (outside the guest OU); removed afterwards."""
    dns: list[str] = []
    yield dns
    for dn in dns:
        admin_ldap.delete(dn)


def add_account(admin: ldap3.Connection, samba_dc: GuestsyncDC, planted: list[str], sam: str,
                upn: str | None = None) -> str:
    """An ordinary (disabled) account in CN=Users with ``sam`` and, only if given, an explicit UPN."""
    dn = f"CN=upn-test-{uuid.uuid4().hex[:8]},CN=Users,{samba_dc.base_dn}"
    values: dict[str, Any] = {"sAMAccountName": sam, "userAccountControl": 0x202}
    if upn:
        values["userPrincipalName"] = upn
    assert admin.add(dn, USER_CLASSES, values), admin.result
    planted.append(dn)
    return dn


def new_guest(directory: Directory, **overrides: str | None) -> None:
    uid = str(uuid.uuid4())
    values = guest_values(uid, **overrides)
    directory.create_guest(uid, values, password_for(values), GUEST_USER_ACCOUNT_CONTROL)


def guest_dns(admin: ldap3.Connection, guest_ou: str) -> list[str]:
    admin.search(guest_ou, "(objectClass=user)", ldap3.LEVEL, attributes=["cn"])
    return [e.entry_dn for e in admin.entries]


# --- the directory's own uniqueness check ----------------------------------------------------------------------
def test_a_upn_that_is_the_implicit_upn_of_an_account_is_refused_naming_it(
        directory: Directory, admin_ldap: ldap3.Connection, samba_dc: GuestsyncDC, planted: list[str]) -> None:
    sam = f"p{uuid.uuid4().hex[:6]}#EXT#"
    holder = add_account(admin_ldap, samba_dc, planted, sam)  # no userPrincipalName: its implicit UPN is sam@realm
    with pytest.raises(ConstraintError) as exc:
        new_guest(directory, userPrincipalName=f"{sam.upper()}@{samba_dc.realm.lower()}")
    assert holder in str(exc.value) and "implicit UPN" in str(exc.value)
    assert guest_dns(admin_ldap, samba_dc.guest_ou) == []


def test_a_sam_account_name_whose_implicit_upn_is_someones_upn_is_refused_naming_it(
        directory: Directory, admin_ldap: ldap3.Connection, samba_dc: GuestsyncDC, planted: list[str]) -> None:
    name = f"s{uuid.uuid4().hex[:8]}"
    holder = add_account(admin_ldap, samba_dc, planted, f"other{uuid.uuid4().hex[:6]}",
                         upn=f"{name}@{samba_dc.realm.upper()}")
    with pytest.raises(ConstraintError) as exc:
        new_guest(directory, sAMAccountName=name)
    assert holder in str(exc.value) and f"{name}@{samba_dc.realm.lower()}" in str(exc.value)
    assert guest_dns(admin_ldap, samba_dc.guest_ou) == []


def test_a_upn_in_a_forest_upn_suffix_clashes_with_the_implicit_upn_too(
        directory: Directory, admin_ldap: ldap3.Connection, samba_dc: GuestsyncDC, planted: list[str]) -> None:
    partitions = f"CN=Partitions,CN=Configuration,{samba_dc.base_dn}"
    suffix = f"partners{uuid.uuid4().hex[:6]}.example"
    assert admin_ldap.modify(partitions, {"uPNSuffixes": [(ldap3.MODIFY_ADD, [suffix])]}), admin_ldap.result
    try:
        sam = f"q{uuid.uuid4().hex[:6]}#EXT#"
        holder = add_account(admin_ldap, samba_dc, planted, sam)
        with Directory(directory._settings) as fresh:  # reads the forest's suffixes anew
            with pytest.raises(ConstraintError, match="implicit UPN") as exc:
                new_guest(fresh, userPrincipalName=f"{sam}@{suffix}")
            assert holder in str(exc.value)
            new_guest(fresh, userPrincipalName=f"{sam}@other{suffix}")  # a suffix the forest does not have: fine
    finally:
        admin_ldap.modify(partitions, {"uPNSuffixes": [(ldap3.MODIFY_DELETE, [suffix])]})


def test_an_update_to_a_clashing_upn_is_refused_too(
        directory: Directory, admin_ldap: ldap3.Connection, samba_dc: GuestsyncDC, planted: list[str]) -> None:
    uid = str(uuid.uuid4())
    values = guest_values(uid)
    account = directory.create_guest(uid, values, password_for(values), GUEST_USER_ACCOUNT_CONTROL)
    sam = f"u{uuid.uuid4().hex[:6]}#EXT#"
    holder = add_account(admin_ldap, samba_dc, planted, sam)
    with pytest.raises(ConstraintError, match="implicit UPN") as exc:
        directory.update_guest(account.dn, {"userPrincipalName": f"{sam}@{samba_dc.realm.lower()}"})
    assert holder in str(exc.value)


def test_the_check_uses_the_global_catalog(directory: Directory) -> None:
    new_guest(directory)
    forest = directory._forest()
    assert forest.global_catalog and forest.own.dns_name == "contoso.com"
    assert directory._gc_conn is not None and directory._gc_conn.server.port == 3269


# --- end to end: the function app refuses, the guest shows why ------------------------------------------------
def _record(stack: Stack, uid: str) -> Any:
    return stack.state.get(uid)


def _errored(stack: Stack, uid: str) -> bool:
    record = _record(stack, uid)
    return record is not None and record.status is GuestStatus.ERROR


def test_an_administrator_upn_is_refused_as_a_security_finding(stack: Stack) -> None:
    sim: Any = stack.sim
    guest = sim.add_user(userType="Guest", displayName="Impostor", mail="impostor@fabrikam.example",
                         userPrincipalName="Administrator@contoso.com")
    stack.wait(lambda: _errored(stack, guest["id"]), "the refused guest")
    error = _record(stack, guest["id"]).error
    assert error.startswith("security: ") and "Administrator@contoso.com" in error and "#EXT#" in error
    assert "sAMAccountName" not in error
    assert guest["id"] not in stack.ad_accounts()


def test_a_guest_upn_with_a_suffix_not_allowed_is_refused(stack: Stack) -> None:
    sim: Any = stack.sim
    guest = sim.add_user(userType="Guest", displayName="Elsewhere", mail="e@fabrikam.example",
                         userPrincipalName="e_fabrikam.example#EXT#@fabrikam.onmicrosoft.com")
    stack.wait(lambda: _errored(stack, guest["id"]), "the refused guest")
    error = _record(stack, guest["id"]).error
    assert error.startswith("security: ") and "'fabrikam.onmicrosoft.com'" in error
    assert "allowed: contoso.onmicrosoft.com" in error
    assert guest["id"] not in stack.ad_accounts()


@pytest.mark.parametrize("stack", [{"GUESTSYNC_UPN_SUFFIXES": "contoso.com"}], indirect=True)
def test_an_implicit_clash_in_an_allowed_suffix_names_the_holder(stack: Stack, samba_dc: GuestsyncDC,
                                                                  planted: list[str]) -> None:
    sam = f"p{uuid.uuid4().hex[:6]}#EXT#"
    holder = add_account(stack.admin, samba_dc, planted, sam)
    sim: Any = stack.sim
    guest = sim.add_user(userType="Guest", displayName="Clash", mail="clash@fabrikam.example",
                         userPrincipalName=f"{sam}@contoso.com")
    stack.wait(lambda: _errored(stack, guest["id"]), "the refused guest")
    error = _record(stack, guest["id"]).error
    assert holder in error and "implicit UPN" in error
    assert guest["id"] not in stack.ad_accounts()


def test_a_normal_guest_is_provisioned_and_the_initial_domain_is_read_once(stack: Stack) -> None:
    sim: Any = stack.sim
    guests = [sim.invite_guest(f"normal{i}@fabrikam.com", "Normal", "N", str(i)) for i in range(3)]
    uids = [g["id"] for g in guests]
    stack.wait(lambda: all(_record(stack, u) is not None and _record(stack, u).status is GuestStatus.PROVISIONED
                           for u in uids), "the guests provisioned")
    accounts = stack.ad_accounts()
    assert {str(accounts[u]["userPrincipalName"][0]) for u in uids} == {g["userPrincipalName"] for g in guests}
    body, _ = stack.state.get_meta("tenant")  # shared.services.tenant.TENANT_META
    assert body["initialDomain"] == "contoso.onmicrosoft.com"
    assert sim.request_count["GET /organization"] == 1  # cached: not one read per guest


def test_the_initial_domain_comes_from_graph(stack: Stack) -> None:
    """Point the tenant's initial domain elsewhere: the simulator's own guests no longer pass."""
    sim: Any = stack.sim
    sim.verified_domains = [{**sim.verified_domains[0], "name": "Fabrikam.onmicrosoft.com"}]
    guest = sim.invite_guest("late@fabrikam.com", "Late", "L", "G")
    stack.wait(lambda: _errored(stack, guest["id"]), "the refused guest")
    assert "allowed: fabrikam.onmicrosoft.com" in _record(stack, guest["id"]).error
