"""Migration from MIM (issue 13, item 2), against Samba, Azurite and the Graph simulator.

A MIM 2016 B2B deployment (seed 002) leaves, per guest, ``CN=<id>`` in the guest OU with sAMAccountName
``Left(id,20)``, givenName, sn, mail and userPrincipalName from Entra ID, the password
``RandomNum(0,999)+userPrincipalName`` and userAccountControl 262656. The OU here is seeded exactly so, with the
admin connection, before guestsync has seen the guests (their notifications are dropped, as if they were invited
before guestsync's subscription existed). The admin's path of docs/migration-from-mim.md is then followed:
``guestsync plan`` (nothing written), a reconcile, ``guestsync adopt --all`` (or the migration window).
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import ldap3
import pytest

from shared.core.ad_rules import OWNERSHIP_ATTRIBUTE, carries_mark, format_sid
from shared.core.domain import GuestStatus, SecurityKind
from tests.plugins.samba import OWNERSHIP_KEY
from tests.plugins.stack import Stack

pytestmark = pytest.mark.integration

MIM_UAC = 262656  # the seed's initial flow: NORMAL_ACCOUNT | SMARTCARD_REQUIRED


@dataclass
class MimAccount:
    uid: str
    dn: str
    password: str  # what MIM's RandomNum(0,999)+userPrincipalName flow wrote
    object_sid: str
    usn: str


def _guest(sim: Any, name: str, *, notify: bool) -> dict[str, Any]:
    """A guest in the simulator; without ``notify`` guestsync is not told (invited before its subscription)."""
    uid = str(uuid.uuid4())
    if not notify:
        sim.drop_next_notifications(1)
    user: dict[str, Any] = sim.add_user(
        id=uid, userType="Guest", displayName=f"{name.title()} Partner", givenName=name.title(), surname="Partner",
        mail=f"{name}@fabrikam.com", userPrincipalName=f"{name}_fabrikam.com#EXT#@{sim.tenant_domain}")
    sim.wait_for_deliveries()
    return user


def _read(stack: Stack, dn: str) -> dict[str, Any]:
    stack.admin.search(dn, "(objectClass=*)", ldap3.BASE,
                       attributes=["userAccountControl", "uSNChanged", "objectSid", "userPrincipalName", "givenName",
                                   "mail", "sn", "displayName", OWNERSHIP_ATTRIBUTE])
    assert stack.admin.entries, f"{dn} is gone"
    return stack.admin.entries[0].entry_attributes_as_dict


def _binds(stack: Stack, dn: str, password: str) -> bool:
    conn = ldap3.Connection(stack.admin.server, user=dn, password=password, raise_exceptions=False)
    try:
        return bool(conn.bind())
    finally:
        conn.unbind()


def _seed_like_mim(stack: Stack, uid: str, user: dict[str, Any] | None, **stale: str) -> MimAccount:
    """What MIM's AD MA export writes for a guest (seed 002's outbound rule), in one add as the MA does it;
    ``stale`` overrides values that changed in Entra ID after MIM's last run. ``user`` None: an orphan (a guest
    deleted from Entra ID long ago whose account MIM left behind)."""
    upn = user["userPrincipalName"] if user else f"gone{uid[:6]}_fabrikam.com#EXT#@contoso.onmicrosoft.com"
    values = {"givenName": user["givenName"], "sn": user["surname"], "mail": user["mail"]} if user else {
        "givenName": "Gone", "sn": "Guest", "mail": f"gone{uid[:6]}@fabrikam.com"}
    values.update(stale)
    password = f"{secrets.randbelow(1000)}{upn}"  # RandomNum(0,999)+userPrincipalName
    dn = f"CN={uid},{stack.guest_ou}"
    attributes = {"sAMAccountName": uid[:20], "userPrincipalName": upn, **values,
                  "unicodePwd": f'"{password}"'.encode("utf-16-le"), "userAccountControl": MIM_UAC}
    assert stack.admin.add(dn, ["top", "person", "organizationalPerson", "user"], attributes), stack.admin.result
    if not _binds(stack, dn, password):
        # Samba (like AD when the smart card flag is set) scrambles the password of an account added with
        # SMARTCARD_REQUIRED. The worst case for the migration is that MIM's guessable password is live (a later
        # password write, or a DC that kept it): set it again, so the takeover must be seen to end it.
        assert stack.admin.modify(dn, {"unicodePwd": [(ldap3.MODIFY_REPLACE, [f'"{password}"'.encode("utf-16-le")])]}
                                  ), stack.admin.result
    assert _binds(stack, dn, password), "MIM's password must bind before the migration (the test's premise)"
    read = _read(stack, dn)  # after the bind, which records lastLogonTimestamp (a write of the DC's own)
    assert int(read["userAccountControl"][0]) == MIM_UAC
    return MimAccount(uid, dn, password, format_sid(read["objectSid"][0]), str(read["uSNChanged"][0]))


def _findings(plan: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    by_uid: dict[str, list[dict[str, Any]]] = {}
    for finding in plan["findings"]:
        by_uid.setdefault(finding["uid"], []).append(finding)
    return by_uid


def _wait_status(stack: Stack, uid: str, status: GuestStatus) -> Any:
    stack.wait(lambda: (r := stack.state.get(uid)) is not None and r.status is status, f"{uid} {status.value}")
    return stack.state.get(uid)


def _assert_taken_over(stack: Stack, account: MimAccount, user: dict[str, Any]) -> None:
    record = _wait_status(stack, account.uid, GuestStatus.PROVISIONED)
    after = _read(stack, account.dn)
    assert int(after["userAccountControl"][0]) == MIM_UAC
    assert carries_mark([OWNERSHIP_KEY], account.uid, after[OWNERSHIP_ATTRIBUTE][0])
    assert record.object_sid == account.object_sid, "the MIM account itself is joined, not a new one"
    assert record.security is None and not record.adopt
    assert after["givenName"] == [user["givenName"]] and after["mail"] == [user["mail"]]
    assert after["displayName"] == [user["displayName"]]
    assert not _binds(stack, account.dn, account.password), "MIM's guessable password must stop working"


def test_plan_then_adopt_takes_over_an_ou_populated_by_mim(stack: Stack) -> None:
    sim: Any = stack.sim
    # Guests invited before guestsync: in Entra ID, not in state, each with MIM's account.
    early = [_guest(sim, name, notify=False) for name in ("ada", "bert")]
    renamed = _guest(sim, "cleo", notify=False)
    mim = {u["id"]: _seed_like_mim(stack, u["id"], u) for u in early}
    # cleo changed her name and address in Entra ID after MIM's last export
    mim[renamed["id"]] = _seed_like_mim(stack, renamed["id"], renamed, givenName="Cleopatra",
                                        mail="cleo@old.example")
    orphan = _seed_like_mim(stack, str(uuid.uuid4()), None)
    # A guest whose notification reached guestsync: in state, refused by the export (unmarked CN=<uid>).
    known_uid = str(uuid.uuid4())
    known_seed = {"givenName": "Dana", "surname": "Partner", "mail": "dana@fabrikam.com",
                  "userPrincipalName": f"dana_fabrikam.com#EXT#@{sim.tenant_domain}"}
    mim[known_uid] = _seed_like_mim(stack, known_uid, known_seed)
    known = sim.add_user(id=known_uid, userType="Guest", displayName="Dana Partner", **known_seed)
    assert _wait_status(stack, known_uid, GuestStatus.ERROR).security is SecurityKind.UNMARKED
    # A guest without any account (invited after MIM was stopped): created.
    fresh = _guest(sim, "emil", notify=False)
    users = {u["id"]: u for u in (*early, renamed, known, fresh)}
    for uid in (*[u["id"] for u in early], renamed["id"], fresh["id"]):
        assert stack.state.get(uid) is None, "the premise: state does not know these guests yet"

    plan = stack.cli_json("plan", "--json")
    found = _findings(plan)
    actions = {uid: [f["action"] for f in found.get(uid, [])] for uid in (*mim, fresh["id"], orphan.uid)}
    assert actions == {**{uid: ["adoptable"] for uid in mim}, fresh["id"]: ["create"], orphan.uid: ["foreign"]}
    cleo = found[renamed["id"]][0]["reason"]
    assert "userAccountControl 262656" in cleo and "created 20" in cleo
    assert "updates displayName, givenName, mail" in cleo, cleo  # MIM never wrote displayName; cleo's changed
    assert "updates displayName)" in found[early[0]["id"]][0]["reason"]
    assert found[orphan.uid][0]["dn"] == orphan.dn
    # plan writes nothing: not to AD, not to state
    for account in (*mim.values(), orphan):
        assert str(_read(stack, account.dn)["uSNChanged"][0]) == account.usn
    assert all(stack.state.get(u["id"]) is None for u in (*early, renamed, fresh))

    # The first real run records the guests; the export refuses every unmarked account until an operator acts.
    report = stack.reconcile()
    assert report["actions"].get("adoptable") == len(mim) and report["actions"].get("create") == 1
    for uid in mim:
        assert _wait_status(stack, uid, GuestStatus.ERROR).security is SecurityKind.UNMARKED
    _wait_status(stack, fresh["id"], GuestStatus.PROVISIONED)
    stack.drain()
    for account in mim.values():
        assert str(_read(stack, account.dn)["uSNChanged"][0]) == account.usn, "refused: nothing written"
        assert _binds(stack, account.dn, account.password)

    listed = stack.cli_json("adopt", "--json")["adoptable"]
    assert sorted(item["uid"] for item in listed) == sorted(mim)
    answers = stack.cli_json("adopt", "--all", "--json")["answers"]
    assert sorted((a["uid"], a["outcome"]) for a in answers) == sorted((uid, "adopting") for uid in mim)
    for uid, account in mim.items():
        _assert_taken_over(stack, account, users[uid])
    stack.drain()
    after = _read(stack, orphan.dn)
    assert str(after["uSNChanged"][0]) == orphan.usn and not after.get(OWNERSHIP_ATTRIBUTE), "the orphan is left alone"
    assert _binds(stack, orphan.dn, orphan.password)
    status = stack.cli_json("status", "--json", "--no-graph")
    assert status["guests"]["provisioned"] == len(users) and not status["securityFindings"]


@pytest.mark.parametrize("stack", [{"GUESTSYNC_ADOPT_UNTIL": (datetime.now(UTC) + timedelta(hours=1)).isoformat()}],
                         indirect=True)
def test_the_migration_window_plans_and_makes_the_takeover_without_an_operator(stack: Stack) -> None:
    sim: Any = stack.sim
    user = _guest(sim, "fay", notify=False)
    account = _seed_like_mim(stack, user["id"], user)
    orphan = _seed_like_mim(stack, str(uuid.uuid4()), None)

    found = _findings(stack.cli_json("plan", "--json"))
    assert [f["action"] for f in found[user["id"]]] == ["adopt"]
    assert "GUESTSYNC_ADOPT_UNTIL" in found[user["id"]][0]["reason"]
    assert [f["action"] for f in found[orphan.uid]] == ["foreign"]
    assert str(_read(stack, account.dn)["uSNChanged"][0]) == account.usn and stack.state.get(user["id"]) is None

    stack.reconcile()
    _assert_taken_over(stack, account, user)
    stack.drain()
    assert str(_read(stack, orphan.dn)["uSNChanged"][0]) == orphan.usn
