"""The invariant check itself: it must see a write outside the managed OUs, a second account of a guest and a
leaked password, or the scenarios that pass it prove nothing."""

from __future__ import annotations

import logging
from typing import Any

import ldap3
import pytest

from tests.plugins.samba import GuestsyncDC
from tests.plugins.stack import Stack
from tests.reliability.invariants import assert_invariants, check_accounts, check_outside, check_secrets, watched

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


def test_invariants_catch_outside_writes_duplicates_and_leaked_passwords(rstack: Stack,
                                                                         samba_dc: GuestsyncDC) -> None:
    stack = rstack
    sim: Any = stack.sim
    uid = sim.invite_guest("probe@fabrikam.com", "Probe Guest", "Probe", "Guest")["id"]
    stack.wait(lambda: stack.settled([uid]), "the account")
    assert_invariants(stack, [uid])  # a clean run passes

    users = f"CN=Users,{samba_dc.base_dn}"
    conn = stack.admin
    conn.search(users, "(objectClass=*)", ldap3.BASE, attributes=["description"])
    original = conn.entries[0].entry_attributes_as_dict.get("description") or []
    twin = f"CN={uid},{users}"
    try:
        assert conn.modify(users, {"description": [(ldap3.MODIFY_REPLACE, ["tampered"])]}), conn.result
        assert conn.add(twin, ["top", "person", "organizationalPerson", "user"],
                        {"sAMAccountName": "twin-probe"}), conn.result
        logging.getLogger("guestsync.test").debug("oops: %s", watched(stack).passwords[0])

        outside = check_outside(stack)
        assert any(users.lower() in p and "description" in p for p in outside), outside
        assert any(twin.lower() in p and "created" in p for p in outside), outside
        accounts = check_accounts(stack, [uid])
        assert any("2 AD accounts" in p for p in accounts), accounts
        assert any(f"duplicate cn '{uid}'" in p for p in accounts), accounts
        leaked = check_secrets(stack)
        assert any("generated password #1" in p and "guestsync.test" in p for p in leaked), leaked
    finally:
        conn.delete(twin)
        conn.modify(users, {"description": [(ldap3.MODIFY_REPLACE, original)]})
