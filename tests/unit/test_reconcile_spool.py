"""The reconcile's AD scan runs in a thread while state loads and Graph pages: order, errors and cancelling."""

from __future__ import annotations

import asyncio
import tempfile
import threading

import pytest

from shared.core.errors import DirectoryUnavailableError
from shared.services.reconcile import _AccountSpool
from tests.fakes import GUEST_OU, MemoryDirectory


def _directory(count: int, fail_at: int | None = None,
               gate: threading.Event | None = None) -> tuple[MemoryDirectory, threading.Event]:
    """``count`` accounts in the guest OU; the scan fails at account ``fail_at`` as the adapter does when the DC
    goes away between pages, or waits at account 10 until ``gate`` is set (``at_gate`` says it got there)."""
    directory = MemoryDirectory()
    for n in range(count):
        directory.add(f"CN={n},{GUEST_OU}", {"givenName": f"G{n}", "sn": None},
                      sid=f"S-1-5-21-1-2-3-{n}", marked=False)
    at_gate = threading.Event()

    def hook(n: int) -> None:
        if gate is not None and n == 10:
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
