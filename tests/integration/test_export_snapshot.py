"""Storage transactions per guest change, end to end: a new guest is inserted without a state read in apply, and
exported from the snapshot its export message carries, without a state read in the worker. A stale snapshot
converges on the fresh record and never restores or disables an account.

Real Azurite, Samba AD DC and Graph simulator through the function app's registrations on the local runner.
"""

from __future__ import annotations

import sys
from typing import Any

import ldap3
import pytest

from shared import bootstrap
from shared.adapters.state import StateStore
from shared.core.domain import UAC_ACCOUNTDISABLE, GuestStatus
from shared.core.messages import ExportMessage
from shared.core.records import GuestRecord
from shared.services.export import export_guest
from tests.plugins.stack import Stack

pytestmark = pytest.mark.integration


def _count_state_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    """Record (calling module, operation, uid) of every StateStore.get and save from now on."""
    calls: list[tuple[str, str, str]] = []
    real_get, real_save = StateStore.get, StateStore.save

    def service() -> str:
        """The module that asked, past the unit of work that runs every service's read-decide-save loop."""
        frame = sys._getframe(2)
        while frame.f_back is not None and frame.f_globals.get("__name__") == "shared.core.unit_of_work":
            frame = frame.f_back
        return str(frame.f_globals.get("__name__", ""))

    def get(self: StateStore, uid: str) -> GuestRecord | None:
        calls.append((service(), "get", uid))
        return real_get(self, uid)

    def save(self: StateStore, record: GuestRecord) -> GuestRecord:
        operation = "insert" if record.etag is None else "replace"
        calls.append((service(), operation, record.uid))
        return real_save(self, record)

    monkeypatch.setattr(StateStore, "get", get)
    monkeypatch.setattr(StateStore, "save", save)
    return calls


def test_new_guest_is_applied_and_exported_without_reading_state(stack: Stack,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_state_calls(monkeypatch)
    guest = stack.sim.invite_guest("frugal@fabrikam.com", "Fru Gal", "Fru", "Gal")  # type: ignore[attr-defined]
    uid = guest["id"]
    stack.wait(lambda: stack.settled([uid]), "the account")
    stack.drain()
    services = [(module, operation) for module, operation, who in calls
                if who == uid and module.startswith("shared.services.")]
    assert services == [("shared.services.apply", "insert"), ("shared.services.export", "replace")]
    assert uid in stack.ad_accounts()


def _export(message: ExportMessage) -> str:
    s = bootstrap.services()
    return export_guest(message, s.state, s.directory, s.settings.deprovisioning).action


def _account(stack: Stack, uid: str) -> tuple[str, int, str]:
    """(dn, userAccountControl, givenName) of CN=<uid> anywhere in the domain."""
    base = stack.guest_ou.split(",", 1)[1]
    stack.admin.search(base, f"(&(objectClass=user)(cn={uid}))", ldap3.SUBTREE,
                       attributes=["userAccountControl", "givenName"])
    [entry] = stack.admin.entries
    return entry.entry_dn, int(entry.userAccountControl.value), str(entry.givenName.value)


def _status(stack: Stack, uid: str) -> GuestStatus | None:
    record = stack.state.get(uid)
    return record.status if record else None


def _stale(record: GuestRecord) -> ExportMessage:
    return ExportMessage(record.uid, record.version, "replayed with a stale snapshot", "", record.to_snapshot())


def test_stale_snapshot_converges_and_never_restores_or_disables(stack: Stack) -> None:
    sim: Any = stack.sim
    uid = sim.invite_guest("stale@fabrikam.com", "Stale Snap", "Stale", "Snap")["id"]
    stack.wait(lambda: stack.settled([uid]), "the account")
    live = stack.state.get(uid)
    assert live is not None and live.status is GuestStatus.PROVISIONED

    # Attributes changed after the snapshot was taken: the stale write is caught by the ETag and redone.
    sim.update_user(uid, givenName="Fresh")
    stack.wait(lambda: (r := stack.state.get(uid)) is not None and r.entry.given_name == "Fresh"
               and r.exported_version == r.version and r.status is GuestStatus.PROVISIONED, "the change")
    stack.drain()
    _export(_stale(live))
    fresh = stack.state.get(uid)
    assert fresh is not None and fresh.status is GuestStatus.PROVISIONED and fresh.exported_version == fresh.version
    dn, uac, given = _account(stack, uid)
    assert given == "Fresh" and dn.lower().endswith(stack.guest_ou.lower()) and not uac & UAC_ACCOUNTDISABLE

    # The guest left and was archived: a snapshot from when it was live must not restore the account.
    sim.delete_user(uid)
    stack.wait(lambda: _status(stack, uid) is GuestStatus.ARCHIVED, "archived")
    stack.drain()
    assert _export(_stale(live)) == "unchanged"
    dn, uac, _ = _account(stack, uid)
    assert dn.lower().endswith(stack.archive_ou.lower()) and uac & UAC_ACCOUNTDISABLE
    archived = stack.state.get(uid)
    assert archived is not None and archived.status is GuestStatus.ARCHIVED

    # The guest is back and restored: a snapshot from when it was archived must not disable the account.
    sim.restore_user(uid)
    stack.wait(lambda: _status(stack, uid) is GuestStatus.PROVISIONED, "restored")
    stack.drain()
    assert _export(_stale(archived)) == "unchanged"
    dn, uac, _ = _account(stack, uid)
    assert dn.lower().endswith(stack.guest_ou.lower()) and not uac & UAC_ACCOUNTDISABLE
    assert _status(stack, uid) is GuestStatus.PROVISIONED
