"""Guests whose Entra attributes are hostile or merely unusual: LDAP filter and DN injection, unicode that
trips normalisation, values beyond AD's limits, user principal names AD refuses.

Each guest ends either provisioned, with the exact value in state and the value fitted to AD's limits (with a
warning) in AD, or in error with a readable message. Never a write elsewhere in the domain, never a poison
message (a crash loop), and once provisioned, no drift that the reconcile would repair again and again.

Real Azurite, Samba AD DC and Graph simulator; the function app on the local runner.
"""

from __future__ import annotations

from typing import Any

import ldap3
import pytest

from shared.core.ad_rules import fit_cosmetic
from shared.core.domain import GuestStatus
from shared.core.rules import outbound_persistent
from tests.plugins.stack import Stack
from tests.reliability.faults import poisoned
from tests.reliability.invariants import admin, assert_invariants

pytestmark = [pytest.mark.integration, pytest.mark.reliability]
TENANT = "#EXT#@contoso.onmicrosoft.com"
PROVISIONED, ERROR = "provisioned", "error"

#: name -> (Graph properties, expected outcome, for an error: a word the message must contain)
HOSTILE: dict[str, tuple[dict[str, str], str, str]] = {
    "ldap filter injection": ({
        "displayName": "*)(objectClass=*", "givenName": "*", "surname": ")(cn=*))(|(cn=*",
        "mail": "a*)(mail=*@evil.example", "userPrincipalName": f"x*)(userPrincipalName=*{TENANT}",
    }, PROVISIONED, ""),
    "dn injection": ({
        "displayName": ",OU=Domain Controllers,DC=contoso,DC=com", "givenName": "+CN=x", "surname": "x\\,CN=y\\",
        "mail": "dn=injection@evil.example", "userPrincipalName": f"CN=evil,OU=Domain Controllers{TENANT}",
    }, PROVISIONED, ""),
    "leading hash, spaces, backslashes": ({
        "displayName": "#leading hash", "givenName": " padded ", "surname": "back\\slash\\\\ \\2C",
        "mail": "hash@evil.example", "userPrincipalName": f"#hash\\slash{TENANT}",
    }, PROVISIONED, ""),
    "unicode": ({
        "displayName": "\u200fRTL\u202eevil\u202c \U0001f600 e\u0301\u0301 \u0130stanbul",
        "givenName": "\u0130", "surname": "\U0001f600\U0001f468\u200d\U0001f469\u200d\U0001f467",
        "mail": "\u0130nfo@fabrikam.example", "userPrincipalName": f"\u0130nfo_fabrikam.example{TENANT}",
    }, PROVISIONED, ""),
    "over-long cosmetic attributes": ({
        "displayName": "D" * 300, "givenName": "G" * 100, "surname": "\U0001f600" * 100,  # 200 UTF-16 units
        "mail": "long@fabrikam.example", "userPrincipalName": f"long_fabrikam.example{TENANT}",
    }, PROVISIONED, ""),
    "over-long mail": ({
        "displayName": "Long Mail", "mail": "m" * 300 + "@fabrikam.example",
        "userPrincipalName": f"longmail_fabrikam.example{TENANT}",
    }, ERROR, "mail"),
    "NUL in displayName": ({
        "displayName": "nul\x00byte", "mail": "nul@fabrikam.example", "userPrincipalName": f"nul{TENANT}",
    }, ERROR, "displayName"),
    "UPN with two @": ({
        "displayName": "Two Ats", "mail": "two@fabrikam.example", "userPrincipalName": "two@ats@contoso.com",
    }, ERROR, "userPrincipalName"),
    "UPN of another account in the domain": ({
        "displayName": "Impostor", "mail": "impostor@fabrikam.example",
        "userPrincipalName": "SVC-GUESTSYNC@contoso.com",
    }, ERROR, "userPrincipalName"),
    "over-long UPN": ({
        "displayName": "Long UPN", "mail": "longupn@fabrikam.example", "userPrincipalName": "u" * 1100 + TENANT,
    }, ERROR, "userPrincipalName"),
    "unpaired surrogate": ({
        "displayName": "half \ud800 a pair", "mail": "surrogate@fabrikam.example",
        "userPrincipalName": f"surrogate{TENANT}",
    }, ERROR, "displayName"),
}


def _ad_values(stack: Stack, uid: str) -> dict[str, str | None]:
    conn = admin(stack)
    names = list(outbound_persistent(_entry(stack, uid)))
    conn.search(f"CN={uid},{stack.guest_ou}", "(objectClass=user)", ldap3.BASE, attributes=names)
    assert conn.response and conn.response[0].get("type") == "searchResEntry", conn.result
    raw = conn.response[0]["raw_attributes"]
    return {name: bytes(raw[name][0]).decode("utf-8") if raw.get(name) else None for name in names}


def _entry(stack: Stack, uid: str) -> Any:
    record = stack.state.get(uid)
    assert record is not None
    return record.entry


def test_hostile_guest_attributes_end_provisioned_exactly_or_in_readable_error(rstack: Stack) -> None:
    stack = rstack
    sim: Any = stack.sim
    uids = {name: sim.add_user(userType="Guest", **props)["id"] for name, (props, _, _) in HOSTILE.items()}
    stack.wait(lambda: stack.settled(list(uids.values())), "every hostile guest settled")
    stack.drain()

    for name, (props, expected, word) in HOSTILE.items():
        uid = uids[name]
        record = stack.state.get(uid)
        assert record is not None, name
        entry = record.entry
        stored = {"displayName": entry.display_name, "givenName": entry.given_name, "surname": entry.sn,
                  "mail": entry.mail, "userPrincipalName": entry.user_principal_name}
        assert {k: stored[k] for k in props} == props, f"{name}: state does not hold the exact Graph values"
        assert record.status.value == expected, f"{name}: {record.status.value} ({record.error})"
        if record.status is GuestStatus.ERROR:
            assert word in (record.error or ""), f"{name}: {record.error}"
            continue
        desired, _ = fit_cosmetic(outbound_persistent(entry))
        assert _ad_values(stack, uid) == {k: v or None for k, v in desired.items()}, name
        for attribute in ("displayName", "givenName", "sn"):
            cut = desired[attribute] != outbound_persistent(entry)[attribute]
            assert cut == (attribute in (record.warnings or "")), f"{name}: {attribute}: {record.warnings}"

    # No drift loop: AD holds what guestsync wants, so a reconcile finds nothing to repair for them.
    report = stack.reconcile()
    provisioned = {uid for uid in uids.values() if stack.state.get(uid).status is GuestStatus.PROVISIONED}  # type: ignore[union-attr]
    repeated = [f for f in report["findings"] if f.get("uid") in provisioned]
    assert not repeated, repeated
    stack.wait(lambda: stack.settled(list(uids.values())), "the reconcile's retries of the guests in error")
    stack.drain()
    assert poisoned() == {"changes": 0, "exports": 0}
    assert_invariants(stack, list(uids.values()),
                      expected_errors={uids[name]: word for name, (_, outcome, word) in HOSTILE.items()
                                       if outcome == ERROR})
