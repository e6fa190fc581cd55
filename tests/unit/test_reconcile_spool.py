"""The reconcile's AD scan runs in a thread while state loads and Graph pages: order, errors and cancelling."""

from __future__ import annotations

import asyncio
import tempfile
import threading

import pytest

from shared.core.domain import GraphUser, GuestStatus
from shared.core.errors import DirectoryUnavailableError
from shared.core.records import GuestRecord
from shared.core.rules import inbound
from shared.services.reconcile import Reconciler, _AccountSpool
from shared.settings import DeprovisioningSettings
from tests.fakes import GUEST_OU, MemoryDirectory, MemoryGraph, MemoryGuestStore


def _directory(count: int, fail_at: int | None = None, gate: threading.Event | None = None,
               gate_at: int = 10) -> tuple[MemoryDirectory, threading.Event]:
    """``count`` accounts in the guest OU; the scan fails at account ``fail_at`` as the adapter does when the DC
    goes away between pages, or waits at account ``gate_at`` until ``gate`` is set (``at_gate`` says it got
    there)."""
    directory = MemoryDirectory()
    for n in range(count):
        directory.add(f"CN={n},{GUEST_OU}", {"givenName": f"G{n}", "sn": None},
                      sid=f"S-1-5-21-1-2-3-{n}", marked=False)
    at_gate = threading.Event()

    def hook(n: int) -> None:
        if gate is not None and n == gate_at:
            at_gate.set()
            gate.wait(5)
        if n == fail_at:
            raise DirectoryUnavailableError("the DC went away mid-scan")

    directory.scan_hook = hook
    return directory, at_gate


def test_spooled_accounts_come_back_complete_and_in_scan_order() -> None:
    with tempfile.TemporaryDirectory() as folder:
        spool = _AccountSpool(folder, _directory(1234)[0])
        spool.start()
        asyncio.run(spool.wait())
        accounts = list(spool)
    assert [a.object_sid for a in accounts] == [f"S-1-5-21-1-2-3-{n}" for n in range(1234)]
    assert accounts[7].attributes == {"givenName": "G7", "sn": None} and accounts[7].user_account_control == 512


def test_a_scan_error_is_raised_by_the_reconcile_not_lost_in_the_thread() -> None:
    with tempfile.TemporaryDirectory() as folder:
        spool = _AccountSpool(folder, _directory(100, fail_at=40)[0])
        spool.start()
        with pytest.raises(DirectoryUnavailableError, match="mid-scan"):
            asyncio.run(spool.wait())


def test_cancel_stops_the_scan_at_the_next_account() -> None:
    gate = threading.Event()
    directory, at_gate = _directory(100_000, gate=gate)
    with tempfile.TemporaryDirectory() as folder:
        spool = _AccountSpool(folder, directory)
        spool.start()

        assert at_gate.wait(5)

        async def cancel() -> None:
            waiting = asyncio.create_task(spool.wait(cancel=True))
            await asyncio.sleep(0.05)
            gate.set()
            await waiting

        asyncio.run(cancel())
    assert directory.scanned == 11  # the account being read when it was cancelled, then no more


def test_the_ad_phase_joins_the_scanned_accounts_while_the_scan_still_runs() -> None:
    """At 100,000 accounts the scan takes ~25 s and joining what it returned ~10 s more: joining page by page as
    the scan spools them overlaps the two (a scan stuck after 600 accounts here: the first 500 are joined)."""
    gate = threading.Event()
    directory, _ = _directory(1200, gate=gate, gate_at=600)
    scanned_when_joined: list[int] = []

    def progress(phase: str, count: int) -> None:
        if phase == "ad" and count == 500:
            scanned_when_joined.append(directory.scanned)
            gate.set()

    report = asyncio.run(Reconciler(MemoryGraph(), MemoryGuestStore(), lambda _text: None, DeprovisioningSettings(),
                                    directory=directory, dry_run=True, progress=progress).run(full=True))

    assert scanned_when_joined == [600]  # the scan was still waiting at account 600 when 500 had been joined
    assert report.ad_accounts == 1200 and report.actions["foreign"] == 1200


def test_a_scan_that_fails_after_accounts_were_joined_takes_no_account_for_deleted() -> None:
    """The accounts the scan never reached are not "deleted outside guestsync": the reconcile raises the scan's
    error before it looks for guests whose account it did not see."""
    directory, _ = _directory(1200, fail_at=700)
    uid = "0b5a5c6e-3f0d-4f53-9d4e-8f1a2b3c4d5e"
    user = GraphUser(id=uid, user_type="Guest", display_name="Alice", given_name="Alice", surname="Smith",
                     user_principal_name="alice_fabrikam.com#EXT#@contoso.onmicrosoft.com", mail="alice@fabrikam.com",
                     account_enabled=True)
    state = MemoryGuestStore()
    state.put(GuestRecord(uid=uid, entry=inbound(user), status=GuestStatus.PROVISIONED, reason="guest is in scope",
                          object_sid="S-1-5-21-1-2-3-900", dn=f"CN={uid},{GUEST_OU}"))
    sent: list[str] = []
    joined: list[int] = []

    with pytest.raises(DirectoryUnavailableError, match="mid-scan"):
        asyncio.run(Reconciler(MemoryGraph([user]), state, sent.append, DeprovisioningSettings(), directory=directory,
                               progress=lambda phase, n: joined.append(n) if phase == "ad" else None).run(full=True))

    assert joined == [500]  # the first committed page was joined before the error
    assert sent == []  # not recreated: its account (the 901st) was never scanned
