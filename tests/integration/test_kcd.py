"""KCD proven against a real KDC: for the accounts guestsync writes, application proxy's connector gets a service
ticket on behalf of the guest's exact Entra UPN (S4U2Self + S4U2Proxy against Samba's KDC, with MIT kinit/kvno),
through the guest's lifecycle; and ``guestsync kcd`` says so per guest.

Real Azurite, Samba AD DC and the Graph simulator through the function app on the local runner (the ``stack``)."""

from __future__ import annotations

import contextlib
import io
import json
import secrets
from typing import Any

import pytest

from shared import cli
from shared.core.domain import GUEST_USER_ACCOUNT_CONTROL, UAC_SMARTCARD_REQUIRED, GuestStatus
from tests.plugins.kerberos import KcdApp, add_principal, s4u
from tests.plugins.samba import GuestsyncDC
from tests.plugins.stack import Stack

pytestmark = pytest.mark.integration

#: What Samba's KDC says when S4U is asked for a disabled account (Windows: KDC_ERR_CLIENT_REVOKED).
DISABLED_REFUSAL = "KDC policy rejects request"


def _invite(stack: Stack, *names: str) -> list[dict[str, Any]]:
    sim: Any = stack.sim
    guests = [sim.invite_guest(f"{n}@fabrikam.com", f"Guest {n}", n.title(), "Partner") for n in names]
    stack.wait(lambda: stack.settled([g["id"] for g in guests]), f"{len(guests)} account(s)")
    return guests


def _ad_upn(stack: Stack, uid: str) -> str | None:
    base = stack.guest_ou.split(",", 1)[1]
    stack.admin.search(base, f"(cn={uid})", attributes=["userPrincipalName"])
    return str(stack.admin.entries[0].userPrincipalName) if stack.admin.entries else None


def _assert_ticket(kcd: KcdApp, upn: str) -> None:
    result = s4u(upn, kcd.spn)
    assert result.returncode == 0, f"no ticket for {upn}: {result.stderr}"
    assert f"{kcd.spn}@" in result.stdout  # "HTTP/app...@CONTOSO.COM: kvno = 1"


def _assert_no_ticket(kcd: KcdApp, upn: str, because: str) -> str:
    result = s4u(upn, kcd.spn)
    assert result.returncode != 0, f"a ticket was issued for {upn}: {result.stdout}"
    assert because in result.stderr, result.stderr
    return result.stderr


def test_application_proxy_gets_a_ticket_for_each_guest_through_its_lifecycle(
        stack: Stack, connector_signed_in: KcdApp) -> None:
    kcd, sim = connector_signed_in, stack.sim
    guests = _invite(stack, "alice", "bob")
    for guest in guests:  # provisioned: the exact Entra UPN (…#EXT#@…), smart card required, and a ticket
        upn = guest["userPrincipalName"]
        assert "#EXT#@" in upn and _ad_upn(stack, guest["id"]) == upn
        record = stack.state.get(guest["id"])
        assert record is not None and record.status is GuestStatus.PROVISIONED
        assert GUEST_USER_ACCOUNT_CONTROL & UAC_SMARTCARD_REQUIRED  # 262656: S4U works all the same
        _assert_ticket(kcd, upn)

    alice, bob = guests
    old_upn = alice["userPrincipalName"]
    new_upn = old_upn.replace("alice_", "alice.smith_", 1)
    sim.update_user(alice["id"], userPrincipalName=new_upn)  # type: ignore[attr-defined]
    stack.wait(lambda: _ad_upn(stack, alice["id"]) == new_upn, "the renamed UPN in AD")
    _assert_ticket(kcd, new_upn)  # renamed: the new UPN gets a ticket, the old one names nobody
    _assert_no_ticket(kcd, old_upn, "not found in Kerberos database")

    sim.update_user(bob["id"], accountEnabled=False)  # type: ignore[attr-defined]
    stack.wait(lambda: (r := stack.state.get(bob["id"])) is not None and r.status is GuestStatus.ARCHIVED,
               "bob archived")
    _assert_no_ticket(kcd, bob["userPrincipalName"], DISABLED_REFUSAL)  # archived: disabled, no ticket
    _assert_ticket(kcd, new_upn)  # the others are unaffected

    sim.update_user(bob["id"], accountEnabled=True)  # type: ignore[attr-defined]
    stack.wait(lambda: (r := stack.state.get(bob["id"])) is not None and r.status is GuestStatus.PROVISIONED,
               "bob restored")
    _assert_ticket(kcd, bob["userPrincipalName"])  # restored: a ticket again

    member = sim.add_user(displayName="Member", userType="Member",  # type: ignore[attr-defined]
                          userPrincipalName="member.kcd@contoso.com", mail="member.kcd@contoso.com")
    invited = _invite(stack, "carol")[0]  # a later guest is provisioned: the member's change has been seen
    assert stack.state.get(member["id"]) is None
    _assert_no_ticket(kcd, member["userPrincipalName"], "not found in Kerberos database")  # member: no account
    _assert_ticket(kcd, invited["userPrincipalName"])


def test_a_connector_without_delegation_rights_gets_no_ticket(
        stack: Stack, samba_dc: GuestsyncDC, kcd_app: KcdApp, krb5_client: object) -> None:
    """The control: the same request from a principal not trusted to delegate to the app is refused, so the
    tickets above are the delegation's doing."""
    from tests.plugins.kerberos import kinit_keytab

    (guest,) = _invite(stack, "dave")
    name = f"plain-{secrets.token_hex(3)}"
    add_principal(samba_dc, name, spn=f"HOST/{name}.{samba_dc.realm.lower()}")  # a server, not trusted to delegate
    principal = f"{name}@{samba_dc.realm}"
    kinit_keytab(principal, samba_dc.export_keytab(kcd_app.keytab.parent / f"{name}.keytab", principal))
    result = s4u(guest["userPrincipalName"], kcd_app.spn)
    assert result.returncode != 0, result.stdout
    assert "constrained delegation failed" in result.stderr, result.stderr  # S4U2Proxy refused: not allowed


def _kcd(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["kcd", *args])
    return code, out.getvalue()


def test_guestsync_kcd_reports_each_guest_and_fails_when_one_is_not_ready(
        stack: Stack, kcd_app: KcdApp, krb5_client: object) -> None:
    ready, broken = _invite(stack, "erin", "frank")
    # an admin clears SMARTCARD_REQUIRED by hand on one account: still a ticket, but not hardened
    frank_dn = stack.state.get(broken["id"]).dn  # type: ignore[union-attr]
    assert stack.admin.modify(frank_dn, {"userAccountControl": [("MODIFY_REPLACE", ["512"])]})
    connector = ["--connector", kcd_app.connector, "--keytab", str(kcd_app.keytab), "--spn", kcd_app.spn]

    code, text = _kcd(*connector)
    print(text)
    lines = text.splitlines()
    assert code == 1
    assert f"ready      {ready['id']}  {ready['userPrincipalName']}: application proxy would get a ticket for " \
           f"{kcd_app.spn}" in lines
    (frank_line,) = [line for line in lines if broken["id"] in line]
    assert frank_line.startswith("NOT READY") and "smart card not required" in frank_line
    assert lines[-1] == "1 of 2 guest(s) ready for KCD"

    code, text = _kcd(*connector, "--guest", ready["userPrincipalName"], "--json")
    body = json.loads(text)
    assert code == 0
    assert body == {"spn": kcd_app.spn, "connector": kcd_app.connector, "kdcAsked": True, "ready": 1, "notReady": 0,
                    "guests": [{"guest": ready["userPrincipalName"], "uid": ready["id"],
                                "userPrincipalName": ready["userPrincipalName"], "status": "provisioned",
                                "dn": stack.state.get(ready["id"]).dn, "ready": True,  # type: ignore[union-attr]
                                "problems": [], "ticket": "issued",
                                "ticketDetail": f"{kcd_app.spn}@{kcd_app.connector.split('@')[1]}: kvno = 1"}]}

    stack.sim.update_user(ready["id"], accountEnabled=False)  # type: ignore[attr-defined]
    stack.wait(lambda: (r := stack.state.get(ready["id"])) is not None and r.status is GuestStatus.ARCHIVED,
               "erin archived")
    code, text = _kcd(*connector, "--guest", ready["id"], "--guest", "nobody@contoso.com")
    print(text)
    erin, nobody = text.splitlines()[:2]
    assert code == 1
    assert erin.startswith("NOT READY") and DISABLED_REFUSAL in erin and "account disabled" in erin
    assert "guestsync state is archived" in erin and "outside the guest OU" in erin
    assert nobody.startswith("NOT READY") and "not a guest guestsync knows" in nobody

    code, text = _kcd("--guest", broken["id"])  # without a connector: the directory checks only
    assert code == 1 and "not tested against the KDC" in text and "smart card not required" in text


def test_guestsync_kcd_says_in_one_line_what_is_missing(
        stack: Stack, kcd_app: KcdApp, krb5_client: object, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["kcd", "--connector", kcd_app.connector, "--keytab", str(kcd_app.keytab)]) == 2
    assert capsys.readouterr().err.strip() == ("guestsync: kcd: --connector and --spn go together (the "
                                               "delegation-enabled principal and the app's SPN, e.g. --connector "
                                               "'CONNECTOR$@CONTOSO.COM' --spn HTTP/app.contoso.com)")
    with monkeypatch.context() as without_tools:
        without_tools.setenv("PATH", "/nonexistent")
        assert cli.main(["kcd", "--connector", kcd_app.connector, "--keytab", str(kcd_app.keytab),
                         "--spn", kcd_app.spn]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("guestsync: kinit, kvno not found: the KCD test needs the MIT Kerberos client tools")
    assert len(err.splitlines()) == 1
    monkeypatch.setattr("sys.stdin", io.StringIO("wrong password\n"))
    assert cli.main(["kcd", "--connector", kcd_app.connector, "--password-stdin", "--spn", kcd_app.spn]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"guestsync: kinit as the connector principal {kcd_app.connector} failed:")
