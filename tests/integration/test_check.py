"""``guestsync check``: the preflight against the real Samba AD DC, Azurite, the Graph simulator and the
function app on the local runner (its webhook answers Graph's validation handshake).

Every test runs the command in this process, with the settings of the ``stack`` fixture changed where the
test breaks something, and reads its JSON (or text) output and exit code.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import uuid
from pathlib import Path
from typing import Any

import ldap3
import pytest

from devtools.localenv.certs import create_local_pki
from shared import cli
from shared.adapters.directory import PROBE_PREFIX, Directory
from shared.services.preflight import CHECKS
from shared.settings import DirectorySettings
from tests.plugins.samba import GuestsyncDC, delete_children
from tests.plugins.stack import Stack

pytestmark = pytest.mark.integration

PROBE_STEPS = ("ad.probe.create", "ad.probe.modify", "ad.probe.move", "ad.probe.delete")


def check(*args: str) -> tuple[int, dict[str, Any]]:
    """``guestsync check --json <args>``: (exit code, report)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["check", "--json", *args])
    return code, json.loads(out.getvalue())


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["status"] for c in report["checks"]}


def result(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in report["checks"] if c["name"] == name)


def probes_in_domain(stack: Stack) -> list[str]:
    """Every object named like a probe anywhere in the domain, found as Administrator."""
    base = stack.guest_ou.split(",", 1)[1]
    stack.admin.search(base, f"(cn={PROBE_PREFIX}*)", ldap3.SUBTREE, attributes=["cn"])
    return [e.entry_dn for e in stack.admin.entries]


@pytest.fixture
def scratch_ous(samba_dc: GuestsyncDC) -> Any:
    """Make OUs for one test (as Administrator) and delete them, with their content, afterwards."""
    made: list[str] = []

    def make(label: str) -> str:
        made.append(samba_dc.create_ou(f"OU={label}-{uuid.uuid4().hex[:8]},{samba_dc.base_dn}"))
        return made[-1]

    yield make
    conn = samba_dc.admin_connection()
    try:
        for ou in made:
            delete_children(conn, ou)
            conn.delete(ou)
    finally:
        conn.unbind()


def test_everything_passes_and_the_probe_leaves_nothing(stack: Stack) -> None:
    code, report = check()
    assert code == 0, report
    assert set(report) == {"ok", "summary", "checks"} and report["ok"] is True
    assert [c["name"] for c in report["checks"]] == list(CHECKS)
    for item in report["checks"]:
        assert set(item) == {"name", "status", "detail", "fix"}
        assert item["status"] in ("pass", "warn", "fail", "skip")
    got = statuses(report)
    not_passing = {name: status for name, status in got.items() if status != "pass"}
    assert not_passing == {"graph.scope_group": "skip", "graph.mail": "skip", "entra_connect": "warn"}, report
    assert report["summary"] == {"pass": len(CHECKS) - 3, "warn": 1, "fail": 0, "skip": 2}
    assert "User.Read.All" in result(report, "graph.signin")["detail"]  # the token's roles are listed
    assert stack.guest_ou in result(report, "entra_connect")["detail"]
    assert stack.archive_ou in result(report, "entra_connect")["detail"]
    assert "take over the shadow accounts" in result(report, "entra_connect")["detail"]
    assert PROBE_PREFIX in result(report, "ad.probe.create")["detail"]
    assert probes_in_domain(stack) == []
    assert stack.ad_accounts() == {}

    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        assert cli.main(["check", "--no-probe"]) == 0
    lines = text.getvalue().splitlines()
    assert len(lines) == len(CHECKS) + 1
    assert [line.split()[0] for line in lines[:-1]] == [
        {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "skip": "SKIP"}[got[name]] if not name.startswith(
            "ad.probe.") or name == "ad.probe.cleanup" else "SKIP" for name in CHECKS]
    assert lines[-1].endswith(": OK")


def test_missing_user_read_all_fails(stack: Stack) -> None:
    stack.sim.app_roles = {"GroupMember.Read.All", "Mail.Send"}  # type: ignore[attr-defined]
    code, report = check("--no-probe")
    assert code == 1 and report["ok"] is False
    users = result(report, "graph.users")
    assert users["status"] == "fail"
    assert "the app lacks the Graph application permission User.Read.All (admin consent)" in users["detail"]
    assert "admin consent" in users["fix"]
    assert statuses(report)["graph.signin"] == "pass"
    assert report["summary"]["fail"] == 1


def test_scoping_group_and_mail_permissions(stack: Stack) -> None:
    sim: Any = stack.sim
    group = sim.add_group("guestsync scope")
    stack.configure(GUESTSYNC_SCOPE_GROUP_ID=group["id"], GUESTSYNC_MAIL="graph",
                    GUESTSYNC_MAIL_TO="admin@contoso.com", GUESTSYNC_MAIL_FROM="guestsync@contoso.com")
    code, report = check("--no-probe")
    assert code == 0, report
    assert statuses(report)["graph.scope_group"] == "pass" and statuses(report)["graph.mail"] == "pass"

    sim.app_roles = {"User.Read.All"}
    code, report = check("--no-probe")
    assert code == 1
    scope, mail = result(report, "graph.scope_group"), result(report, "graph.mail")
    assert scope["status"] == "fail" and "GroupMember.Read.All" in scope["detail"]
    assert mail["status"] == "fail" and "Mail.Send" in mail["detail"]
    assert statuses(report)["graph.users"] == "pass"

    sim.app_roles = {"User.Read.All", "GroupMember.Read.All", "Mail.Send"}
    stack.configure(GUESTSYNC_SCOPE_GROUP_ID=str(uuid.uuid4()))
    code, report = check("--no-probe")
    assert code == 1
    assert result(report, "graph.scope_group")["status"] == "fail"
    assert "does not exist" in result(report, "graph.scope_group")["detail"]


def test_wrong_client_secret_fails_sign_in(stack: Stack) -> None:
    stack.configure(GRAPH_CLIENT_SECRET="not-the-secret")
    code, report = check("--no-probe")
    assert code == 1
    signin = result(report, "graph.signin")
    assert signin["status"] == "fail"
    assert "the client secret is wrong" in signin["detail"] and "AADSTS7000215" in signin["detail"]
    assert "GRAPH_CLIENT_SECRET" in signin["fix"]
    got = statuses(report)
    assert {got[n] for n in ("graph.users", "graph.scope_group", "graph.mail", "graph.subscription")} == {"skip"}
    assert got["webhook.notifications"] == "pass" and got["storage.table"] == "pass" and got["ad.bind"] == "pass"


def test_certificate_sign_in(stack: Stack, tmp_path: Path) -> None:
    from tests.integration.test_graphsim import _certificate_pem

    path, cert = _certificate_pem(tmp_path, "guestsync-check")
    stack.sim.register_certificate(cert)  # type: ignore[attr-defined]
    stack.monkeypatch.delenv("GRAPH_CLIENT_SECRET")
    stack.configure(GRAPH_AUTH="certificate", GRAPH_CLIENT_CERTIFICATE_PATH=str(path))
    code, report = check("--no-probe")
    assert code == 0, report
    assert "(certificate)" in result(report, "graph.signin")["detail"]
    assert statuses(report)["graph.users"] == "pass"


def test_unreachable_and_unset_webhook_urls(stack: Stack) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    stack.monkeypatch.delenv("GUESTSYNC_LIFECYCLE_URL")
    stack.configure(GUESTSYNC_NOTIFICATION_URL=f"http://127.0.0.1:{closed}/api/graph/notifications")
    code, report = check("--no-probe")
    assert code == 1
    hook = result(report, "webhook.notifications")
    assert hook["status"] == "fail" and f"cannot reach http://127.0.0.1:{closed}" in hook["detail"]
    lifecycle = result(report, "webhook.lifecycle")
    assert lifecycle["status"] == "warn" and "GUESTSYNC_LIFECYCLE_URL is not set" in lifecycle["detail"]
    sub = result(report, "graph.subscription")  # the stack's subscription is for the other URL
    assert sub["status"] == "warn" and "no Graph subscription" in sub["detail"]


def test_webhook_that_does_not_echo_the_token_fails(stack: Stack) -> None:
    url = f"{stack.host.base_url}/api/graph/nothing-here"
    stack.configure(GUESTSYNC_NOTIFICATION_URL=url)
    code, report = check("--no-probe")
    assert code == 1
    assert result(report, "webhook.notifications")["status"] == "fail"
    assert "instead of 200" in result(report, "webhook.notifications")["detail"]


def test_wrong_ad_ca_file_fails_with_the_adapters_message(stack: Stack, tmp_path: Path) -> None:
    other = create_local_pki(tmp_path / "other-ca", ("dc1.contoso.com",))
    stack.configure(AD_CA_FILE=str(other.ca_file))
    code, report = check()
    assert code == 1
    ldaps = result(report, "ad.ldaps")
    assert ldaps["status"] == "fail"
    assert f"could not be validated against AD_CA_FILE={other.ca_file}" in ldaps["detail"]
    assert "AD_CA_FILE" in ldaps["fix"]
    got = statuses(report)
    assert {got[n] for n in CHECKS if n.startswith("ad.") and n != "ad.ldaps"} == {"skip"}
    assert got["graph.users"] == "pass"


def test_missing_archive_ou(stack: Stack) -> None:
    missing = f"OU=NoSuchArchive,{stack.guest_ou.split(',', 1)[1]}"
    stack.configure(AD_ARCHIVE_OU=missing)
    code, report = check()
    assert code == 1
    archive = result(report, "ad.archive_ou")
    assert archive["status"] == "fail" and f"{missing} does not exist" in archive["detail"]
    got = statuses(report)
    assert got["ad.guest_ou"] == "pass" and got["ad.probe.move"] == "skip"
    assert [got[n] for n in ("ad.probe.create", "ad.probe.modify", "ad.probe.delete")] == ["pass"] * 3
    assert probes_in_domain(stack) == []


def test_service_account_without_rights_on_the_guest_ou(stack: Stack, scratch_ous: Any) -> None:
    foreign = scratch_ous("NotDelegated")
    stack.configure(AD_GUEST_OU=foreign)
    code, report = check()
    assert code == 1
    got = statuses(report)
    assert got["ad.guest_ou"] == "pass"  # visible, but not writable
    create = result(report, "ad.probe.create")
    assert create["status"] == "fail" and "access denied" in create["detail"]
    assert "delegate" in create["fix"]
    assert [got[n] for n in PROBE_STEPS[1:]] == ["skip"] * 3
    assert probes_in_domain(stack) == []


def test_failure_midway_still_leaves_nothing(stack: Stack, samba_dc: GuestsyncDC, scratch_ous: Any) -> None:
    """Guest OU delegated, archive OU not: the move is refused after create and modify; the probe is deleted."""
    guest_ou, archive_ou = scratch_ous("ProbeGuests"), scratch_ous("ProbeArchiveNotDelegated")
    samba_dc.delegate_user_admin(samba_dc.object_sid(samba_dc.service_dn), guest_ou)
    stack.configure(AD_GUEST_OU=guest_ou, AD_ARCHIVE_OU=archive_ou)
    code, report = check()
    assert code == 1
    got = statuses(report)
    assert [got[n] for n in PROBE_STEPS] == ["pass", "pass", "fail", "pass"], report
    assert "access denied" in result(report, "ad.probe.move")["detail"]
    assert probes_in_domain(stack) == []


def test_probe_left_by_a_crashed_run_is_recognised_and_removed(stack: Stack, samba_dc: GuestsyncDC,
                                                               directory_settings: DirectorySettings) -> None:
    with Directory(directory_settings, archive_ou=samba_dc.archive_ou) as directory:  # what a crashed run left
        in_guest_ou = directory.create_probe().dn
        in_archive = directory.disable_and_archive(directory.create_probe().dn).dn
    decoy = f"CN={PROBE_PREFIX}0123456789ab,{samba_dc.guest_ou}"  # the name, but not our description
    assert stack.admin.add(decoy, ["top", "person", "organizationalPerson", "user"],
                           {"sAMAccountName": "decoy-probe", "description": "someone else's"})

    code, report = check("--no-probe")  # reports, writes nothing
    assert code == 0
    cleanup = result(report, "ad.probe.cleanup")
    assert cleanup["status"] == "warn" and in_guest_ou in cleanup["detail"] and in_archive in cleanup["detail"]
    assert decoy not in cleanup["detail"]
    assert sorted(probes_in_domain(stack)) == sorted([in_guest_ou, in_archive, decoy])

    code, report = check()
    assert code == 0, report
    cleanup = result(report, "ad.probe.cleanup")
    assert cleanup["status"] == "pass" and "deleted 2 probe account(s)" in cleanup["detail"]
    assert probes_in_domain(stack) == [decoy]


@pytest.mark.parametrize(("env", "setting"), [
    ({"GRAPH_AUTH": "client_secret", "GRAPH_TENANT_ID": "84bd8158-6d4d-4958-8b9f-9d6445542f95",
      "GRAPH_CLIENT_ID": "24d3b144-21ae-4080-943f-7067b395b913"}, "GRAPH_CLIENT_SECRET"),
    ({"AD_SERVER": "ldaps://dc1.contoso.com", "AD_BIND_USER": "svc", "AD_BIND_PASSWORD": "x",
      "AD_GUEST_OU": "OU=B2BGuest,DC=contoso,DC=com", "AD_ARCHIVE_OU": "OU=Archive,OU=B2BGuest,DC=contoso,DC=com",
      "GUESTSYNC_OWNERSHIP_KEY": "a-test-ownership-key-of-32-chars-or-more"},
     "AD_ARCHIVE_OU"),
])
def test_configuration_error_fails_naming_the_setting(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                                      setting: str) -> None:
    for name in ("GRAPH_CLIENT_SECRET", "GRAPH_AUTH", "AD_SERVER", "GUESTSYNC_WORKER_MODE", "GUESTSYNC_MAIL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AzureWebJobsStorage", "UseDevelopmentStorage=true")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, report = check()
    assert code == 1
    first = report["checks"][0]
    assert (first["name"], first["status"]) == ("settings", "fail") and setting in first["detail"]
    assert {c["status"] for c in report["checks"][1:]} == {"skip"}
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        assert cli.main(["check"]) == 1
    assert text.getvalue().splitlines()[0].startswith("FAIL  settings")
    assert setting in text.getvalue().splitlines()[0]
