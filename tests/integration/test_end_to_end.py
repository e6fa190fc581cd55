"""End to end: Graph simulator -> webhook -> apply -> export -> Samba AD DC, through the local runner.

Everything is real except Entra ID itself: Azurite for queues and state, a Samba AD DC over LDAPS with
certificate validation, the msgraph-sdk client against the Graph simulator, and the function app's own
registrations dispatched with the host's queue semantics.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import ldap3
import pytest

from shared import bootstrap
from shared.adapters.state import StateStore
from shared.domain import GuestStatus
from shared.functions import create_app
from shared.runner import LocalFunctionsHost

pytestmark = pytest.mark.integration

GUEST_ATTRIBUTES = ["sAMAccountName", "givenName", "sn", "mail", "userPrincipalName", "displayName",
                    "userAccountControl", "objectSid", "cn"]


@dataclass
class Stack:
    host: LocalFunctionsHost
    sim: object
    state: StateStore
    admin: ldap3.Connection
    guest_ou: str

    def wait(self, check: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; status: {self.summary()}")

    def summary(self) -> dict[str, int]:
        return dict(self.state.counts())

    def settled(self, uids: list[str]) -> bool:
        """Every guest either provisioned at its current version or parked with an error."""
        for uid in uids:
            record = self.state.get(uid)
            if record is None:
                return False
            if record.status is GuestStatus.ERROR:
                continue
            if record.status is not GuestStatus.PROVISIONED or record.exported_version != record.version:
                return False
        return True

    def ad_accounts(self) -> dict[str, dict[str, object]]:
        self.admin.search(self.guest_ou, "(objectClass=user)", attributes=GUEST_ATTRIBUTES)
        return {str(e.cn): e.entry_attributes_as_dict for e in self.admin.entries}


@pytest.fixture
def stack(tmp_path: Path, azurite, storage_names, graph, graph_env, directory_env, clean_guest_ou,
          admin_ldap, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    env = {
        "AzureWebJobsStorage": azurite.connection_string,
        **storage_names,
        **graph_env,
        **directory_env,
        "GRAPH_CLIENT_STATE": secrets.token_urlsafe(24),
        "GUESTSYNC_WORKER_MODE": "function",
        "GUESTSYNC_SUBSCRIPTION_SCHEDULE": "0 0 0 1 1 *",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    host_json = tmp_path / "host.json"
    host_json.write_text(json.dumps({
        "version": "2.0",
        "extensions": {"queues": {"maxPollingInterval": "00:00:00.200", "visibilityTimeout": "00:00:01",
                                  "batchSize": 16, "maxDequeueCount": 5}},
    }))
    bootstrap.reset()
    host = LocalFunctionsHost(create_app("function"), env=os.environ, host_json=host_json)
    host.start()
    try:
        monkeypatch.setenv("GUESTSYNC_NOTIFICATION_URL", f"{host.base_url}/api/graph/notifications")
        monkeypatch.setenv("GUESTSYNC_LIFECYCLE_URL", f"{host.base_url}/api/graph/lifecycle")
        bootstrap.reset()
        host.trigger_timer("maintain_subscription")
        s = Stack(host, graph, bootstrap.services().state, admin_ldap, env["AD_GUEST_OU"])
        s.wait(lambda: len(graph.subscriptions) == 1, "the Graph subscription", 20)
        yield s
    finally:
        host.stop()
        bootstrap.reset()


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
