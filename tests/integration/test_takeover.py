"""No takeover of objects guestsync did not create (issue 10, item 1), against Samba, Azurite and the simulator.

The attack: whoever can create objects in the guest OU plants ``CN=<guest id>`` (a user with a known password, or
a computer) before the guest's notification arrives, or deletes a real shadow account and plants a look-alike. If
guestsync took it over, application proxy would be issued Kerberos tickets for a principal whose password the
planter knows. guestsync marks what it creates, joins on objectSid only, and takes over an unmarked object only
when an operator says so (``guestsync adopt``) or a migration window is open.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import ldap3
import pytest

from shared.core.ad_rules import OWNERSHIP_ATTRIBUTE, carries_mark, new_password
from shared.core.domain import GuestStatus, SecurityKind
from tests.plugins.samba import OWNERSHIP_KEY
from tests.plugins.stack import Stack

pytestmark = pytest.mark.integration

PLANTED_UAC = 512  # NORMAL_ACCOUNT, enabled, no smart card: a password sign-in works


def _plant_user(stack: Stack, uid: str, *, mark: str | None = None) -> tuple[str, str]:
    """Create CN=<uid> in the guest OU as an admin would, with a known password; (dn, password)."""
    dn = f"CN={uid},{stack.guest_ou}"
    password = new_password(20, avoid=("planted",))
    attributes: dict[str, Any] = {"sAMAccountName": "planted-" + uid[:8], "userPrincipalName": f"planted-{uid[:8]}@"
                                  "contoso.com", "unicodePwd": f'"{password}"'.encode("utf-16-le"),
                                  "userAccountControl": PLANTED_UAC}
    if mark is not None:
        attributes[OWNERSHIP_ATTRIBUTE] = mark
    assert stack.admin.add(dn, ["top", "person", "organizationalPerson", "user"], attributes), stack.admin.result
    return dn, password


def _read(stack: Stack, dn: str) -> dict[str, Any]:
    stack.admin.search(dn, "(objectClass=*)", ldap3.BASE,
                       attributes=["userAccountControl", "uSNChanged", "objectSid", "userPrincipalName",
                                   OWNERSHIP_ATTRIBUTE, "objectClass"])
    assert stack.admin.entries, f"{dn} is gone"
    return stack.admin.entries[0].entry_attributes_as_dict


def _uac(attributes: dict[str, Any]) -> int:
    return int(attributes["userAccountControl"][0])


def _binds(stack: Stack, user: str, password: str) -> bool:
    """Whether a simple bind as ``user`` (a DN or a UPN) with ``password`` succeeds on the DC."""
    server = stack.admin.server
    conn = ldap3.Connection(server, user=user, password=password, raise_exceptions=False)
    try:
        return bool(conn.bind())
    finally:
        conn.unbind()


def _guest_upn(uid: str) -> str:
    return f"p{uid[:8]}_fabrikam.com#EXT#@contoso.onmicrosoft.com"


def _invite(stack: Stack, uid: str) -> None:
    sim: Any = stack.sim
    sim.add_user(id=uid, userType="Guest", displayName="Planted Target", givenName="Pat", surname="Target",
                 mail=f"p{uid[:8]}@fabrikam.com", userPrincipalName=_guest_upn(uid))


def _wait_status(stack: Stack, uid: str, status: GuestStatus) -> Any:
    stack.wait(lambda: (r := stack.state.get(uid)) is not None and r.status is status, f"{uid} {status.value}")
    return stack.state.get(uid)


def test_a_planted_user_is_not_taken_over_until_an_operator_adopts_it(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    uid = str(uuid.uuid4())
    dn, password = _plant_user(stack, uid)
    before = _read(stack, dn)
    _invite(stack, uid)

    record = _wait_status(stack, uid, GuestStatus.ERROR)
    assert record.security is SecurityKind.UNMARKED
    assert record.error.startswith("security: ") and "guestsync adopt" in record.error and "512" in record.error
    assert record.object_sid is None
    after = _read(stack, dn)
    assert after["uSNChanged"] == before["uSNChanged"], "nothing may be written to the planted object"
    assert _uac(after) == PLANTED_UAC
    assert not _binds(stack, _guest_upn(uid), password), "the guest's UPN must not sign in with the planted password"
    # status and the adopt list show it; plan lists it as adoptable with its userAccountControl and whenCreated
    status = stack.cli_json("status", "--json", "--no-graph")
    assert [f["uid"] for f in status["securityFindings"]] == [uid]
    assert [r["uid"] for r in stack.cli_json("adopt", "--json")["adoptable"]] == [uid]
    plan = stack.cli_json("plan", "--json")
    adoptable = [f for f in plan["findings"] if f["action"] == "adoptable"]
    assert [f["uid"] for f in adoptable] == [uid]
    assert "userAccountControl 512" in adoptable[0]["reason"] and "created 20" in adoptable[0]["reason"]
    assert _read(stack, dn)["uSNChanged"] == before["uSNChanged"], "plan writes nothing"

    # The operator's explicit takeover: fresh password, 262656, the mark; audited.
    with caplog.at_level(logging.WARNING):
        taken = stack.cli_json("adopt", uid, "--json")
        assert [a["outcome"] for a in taken["answers"]] == ["adopting"], taken
        assert set(taken) == {"adoptable", "answers"}, taken  # the listing's shape, not a second one
        record = _wait_status(stack, uid, GuestStatus.PROVISIONED)
    adopted = _read(stack, dn)
    assert _uac(adopted) == 262656
    assert carries_mark([OWNERSHIP_KEY], uid, adopted[OWNERSHIP_ATTRIBUTE][0])
    assert adopted["userPrincipalName"] == [_guest_upn(uid)]
    assert record.object_sid and not record.adopt and record.security is None
    assert not _binds(stack, dn, password), "the planted password must stop working at adoption"
    assert not _binds(stack, _guest_upn(uid), password)
    audit = [r.getMessage() for r in caplog.records if "AUDIT" in r.getMessage()]
    assert any("adopted" in line and dn.lower() in line.lower() for line in audit), audit


def test_a_replaced_account_is_a_security_finding_even_with_a_copied_mark(stack: Stack) -> None:
    sim: Any = stack.sim
    guest = sim.invite_guest("replaced@fabrikam.com", "Replaced Guest", "Rep", "Laced")
    uid = guest["id"]
    record = _wait_status(stack, uid, GuestStatus.PROVISIONED)
    dn, original_sid = record.dn, record.object_sid
    mark = _read(stack, dn)[OWNERSHIP_ATTRIBUTE][0]
    assert stack.admin.delete(dn), stack.admin.result
    planted_dn, password = _plant_user(stack, uid, mark=mark)  # the look-alike even carries the real mark
    before = _read(stack, planted_dn)

    plan = stack.cli_json("plan", "--json")
    assert [f["uid"] for f in plan["findings"] if f["action"] == "security"] == [uid]
    stack.reconcile()
    record = _wait_status(stack, uid, GuestStatus.ERROR)
    assert record.security is SecurityKind.FOREIGN_OBJECT and record.error.startswith("security: ")
    assert record.object_sid == original_sid, "never re-linked to another objectSid"
    stack.drain()
    assert _read(stack, planted_dn)["uSNChanged"] == before["uSNChanged"]
    assert not _binds(stack, guest["userPrincipalName"], password)
    status = stack.cli_json("status", "--json", "--no-graph")
    assert [(f["uid"], f["finding"]) for f in status["securityFindings"]] == [(uid, "foreign_object")]


def test_a_computer_holding_the_guest_name_is_never_joined(stack: Stack) -> None:
    uid = str(uuid.uuid4())
    dn = f"CN={uid},{stack.guest_ou}"
    assert stack.admin.add(dn, ["top", "person", "organizationalPerson", "user", "computer"],
                           {"sAMAccountName": f"pc{uid[:8]}$", "userAccountControl": 4096}), stack.admin.result
    before = _read(stack, dn)
    _invite(stack, uid)
    record = _wait_status(stack, uid, GuestStatus.ERROR)
    assert record.security is SecurityKind.NOT_A_USER and "not a user account" in record.error
    assert _read(stack, dn)["uSNChanged"] == before["uSNChanged"]


def test_an_account_guestsync_created_is_joined_when_its_answer_was_lost(stack: Stack) -> None:
    """The legitimate case behind the old adoption: the add went through but its answer (or the join's save) was
    lost. The object carries the mark, so the retry joins it instead of refusing it."""
    from shared import bootstrap

    uid = str(uuid.uuid4())
    s = bootstrap.services()
    with s.directory_pool.lease() as directory:
        created = directory.create_guest(uid, {"sAMAccountName": uid[:20], "userPrincipalName": _guest_upn(uid)},
                                         new_password(), 262656)
    assert created.marked
    _invite(stack, uid)
    record = _wait_status(stack, uid, GuestStatus.PROVISIONED)
    assert record.object_sid == created.object_sid and record.security is None


@pytest.mark.parametrize("stack", [{"GUESTSYNC_ADOPT_UNTIL": (datetime.now(UTC) + timedelta(hours=1)).isoformat()}],
                         indirect=True)
def test_the_migration_window_adopts_unmarked_accounts_by_itself(stack: Stack) -> None:
    uid = str(uuid.uuid4())
    dn, password = _plant_user(stack, uid)
    _invite(stack, uid)
    record = _wait_status(stack, uid, GuestStatus.PROVISIONED)
    adopted = _read(stack, dn)
    assert _uac(adopted) == 262656
    assert carries_mark([OWNERSHIP_KEY], uid, adopted[OWNERSHIP_ATTRIBUTE][0])
    assert record.object_sid is not None
    assert not _binds(stack, dn, password)


@pytest.mark.parametrize("stack", [{"GUESTSYNC_ADOPT_UNTIL": (datetime.now(UTC) - timedelta(minutes=1)).isoformat()}],
                         indirect=True)
def test_a_closed_migration_window_adopts_nothing(stack: Stack) -> None:
    uid = str(uuid.uuid4())
    dn, _ = _plant_user(stack, uid)
    before = _read(stack, dn)
    _invite(stack, uid)
    assert _wait_status(stack, uid, GuestStatus.ERROR).security is SecurityKind.UNMARKED
    assert _read(stack, dn)["uSNChanged"] == before["uSNChanged"]
