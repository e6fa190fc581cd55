"""The invariant check itself: it must see a write outside the managed OUs (attributes, security descriptor,
a write undone again), a second account of a guest, a guest lost in an error nobody expected and a leaked
password (in any encoding), or the scenarios that pass it prove nothing."""

from __future__ import annotations

import base64
import json
import logging
import struct
import urllib.parse
from typing import Any

import ldap3
import pytest
from ldap3.protocol.microsoft import security_descriptor_control

from tests.plugins.samba import GuestsyncDC
from tests.plugins.stack import Stack
from tests.reliability.invariants import assert_invariants, check_accounts, check_outside, check_secrets, watched

SE_DACL_PROTECTED = 0x1000  # SECURITY_DESCRIPTOR control bit: the DACL does not inherit
DACL_ONLY = 0x04

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


def test_invariants_catch_security_descriptor_and_undone_writes_outside_the_ous(rstack: Stack,
                                                                             samba_dc: GuestsyncDC) -> None:
    """Writes that compare equal attribute by attribute: a DACL change (nTSecurityDescriptor is not in ``*``)
    and a value written and put back (only uSNChanged, whenChanged and the replication metadata remember it)."""
    stack = rstack
    conn = stack.admin
    guest, users = f"CN=Guest,CN=Users,{samba_dc.base_dn}", f"CN=Users,{samba_dc.base_dn}"
    assert check_outside(stack) == []
    sd_control = security_descriptor_control(sdflags=DACL_ONLY)
    conn.search(guest, "(objectClass=*)", ldap3.BASE, attributes=["nTSecurityDescriptor"], controls=sd_control)
    original = bytes(conn.response[0]["raw_attributes"]["nTSecurityDescriptor"][0])
    (control,) = struct.unpack_from("<H", original, 2)
    toggled = original[:2] + struct.pack("<H", control ^ SE_DACL_PROTECTED) + original[4:]
    conn.search(users, "(objectClass=*)", ldap3.BASE, attributes=["description"])
    description = conn.entries[0].entry_attributes_as_dict.get("description") or []
    try:
        assert conn.modify(guest, {"nTSecurityDescriptor": [(ldap3.MODIFY_REPLACE, [toggled])]},
                           controls=sd_control), conn.result
        assert conn.modify(users, {"description": [(ldap3.MODIFY_REPLACE, ["written and put back"])]}), conn.result
        assert conn.modify(users, {"description": [(ldap3.MODIFY_REPLACE, description)]}), conn.result

        outside = check_outside(stack)
        assert any(p.startswith(guest.lower()) and "ntsecuritydescriptor" in p for p in outside), outside
        (undone,) = [p for p in outside if p.startswith(users.lower() + " ")]
        assert "meta:description" in undone and "usnchanged" in undone and "whenchanged" in undone, undone
        assert "description," not in undone.replace("meta:description", "")  # the value itself is as it was
    finally:
        conn.modify(guest, {"nTSecurityDescriptor": [(ldap3.MODIFY_REPLACE, [original])]}, controls=sd_control)


def test_a_guest_in_an_error_the_scenario_does_not_expect_is_lost(rstack: Stack) -> None:
    stack = rstack
    sim: Any = stack.sim
    good = sim.invite_guest("fine@fabrikam.com", "Fine Guest", "Fine", "Guest")["id"]
    bad = sim.add_user(userType="Guest", displayName="Two Ats", mail="two@fabrikam.example",
                       userPrincipalName="two@ats@contoso.com")["id"]
    stack.wait(lambda: stack.settled([good, bad]), "both guests settled")
    record = stack.state.get(bad)
    assert record is not None and record.error and "userPrincipalName" in record.error

    lost = check_accounts(stack, [good, bad])
    assert [p for p in lost if p.startswith(f"{bad}: lost: in error")] and not [p for p in lost if good in p], lost
    assert check_accounts(stack, [good, bad], {bad: "userPrincipalName"}) == []
    wrong = check_accounts(stack, [good, bad], {bad: "sAMAccountName"})
    assert any(f"{bad}: in error, but not the expected one" in p for p in wrong), wrong
    unmet = check_accounts(stack, [good, bad], {bad: "userPrincipalName", good: "mail"})
    assert any(f"{good}: the scenario expects an error" in p for p in unmet), unmet
    assert_invariants(stack, [good, bad], expected_errors={bad: "userPrincipalName"})


def test_invariants_find_secrets_in_their_encoded_forms(rstack: Stack) -> None:
    """A secret written UTF-16LE (as unicodePwd carries a password), URL-encoded, base64-encoded at any alignment
    or JSON-escaped is still a leaked secret. The secret has characters that each of these encodings changes."""
    stack = rstack
    sim: Any = stack.sim
    uid = sim.invite_guest("encoded@fabrikam.com", "Encoded Guest", "Encoded", "Guest")["id"]
    stack.wait(lambda: stack.settled([uid]), "the account")
    assert check_secrets(stack) == []
    secret = 'Tst "pw"/+\\ \u00e9t\u00e9 ' + watched(stack).passwords[0]
    watched(stack).secrets["the test's secret"] = secret
    quoted_utf16 = f'"{secret}"'.encode("utf-16-le")
    forms = {
        "utf16-raw": quoted_utf16.decode("latin-1"),
        "utf16-repr": repr({"unicodePwd": [quoted_utf16]}),
        "url": "grant=x&pw=" + urllib.parse.quote(secret, safe="") + "&y=1",
        "url-plus": "q=" + urllib.parse.quote_plus(secret),
        "base64": "blob " + base64.b64encode(b"\x01" + secret.encode() + b"tail").decode() + " end",
        "base64-utf16": "x" + base64.urlsafe_b64encode(b"ab" + quoted_utf16).decode(),
        "json": json.dumps({"body": f'set "{secret}"'}),
        "json-ascii": json.dumps({"body": secret}, ensure_ascii=True),
    }
    for name, text in forms.items():
        assert secret not in text, name
        logging.getLogger(f"guestsync.test.{name}").debug("oops: %s", text)
    leaked = check_secrets(stack)
    for name in forms:
        assert any("the test's secret" in p and f"guestsync.test.{name} " in p for p in leaked), (name, leaked)
