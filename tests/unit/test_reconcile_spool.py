"""The reconcile's AD scan runs in a thread while state loads and Graph pages: order, errors and cancelling."""

from __future__ import annotations

import asyncio
import tempfile
import threading
from collections.abc import Iterator

import pytest

from shared.core.domain import AdAccount
from shared.services.reconcile import _AccountSpool


class _Directory:
    def __init__(self, count: int, fail_at: int | None = None, gate: threading.Event | None = None) -> None:
        self.count, self.fail_at, self.gate = count, fail_at, gate
        self.listed = 0
        self.at_gate = threading.Event()

    def iter_managed_accounts(self, page_size: int = 500) -> Iterator[AdAccount]:
        for n in range(self.count):
            if self.gate is not None and n == 10:
                self.at_gate.set()
                self.gate.wait(5)
            if n == self.fail_at:
                raise ConnectionError("the DC went away mid-scan")
            self.listed += 1
            yield AdAccount(f"CN={n},OU=B2BGuest,DC=contoso,DC=com", f"S-1-5-21-1-2-3-{n}", f"s{n}", 512,
                            {"givenName": f"G{n}", "sn": None})


def test_spooled_accounts_come_back_complete_and_in_scan_order() -> None:
    with tempfile.TemporaryDirectory() as folder:
        spool = _AccountSpool(folder, _Directory(1234))
        spool.start()
        asyncio.run(spool.wait())
        accounts = list(spool)
    assert [a.object_sid for a in accounts] == [f"S-1-5-21-1-2-3-{n}" for n in range(1234)]
    assert accounts[7].attributes == {"givenName": "G7", "sn": None} and accounts[7].user_account_control == 512


def test_a_scan_error_is_raised_by_the_reconcile_not_lost_in_the_thread() -> None:
    with tempfile.TemporaryDirectory() as folder:
        spool = _AccountSpool(folder, _Directory(100, fail_at=40))
        spool.start()
        with pytest.raises(ConnectionError, match="mid-scan"):
            asyncio.run(spool.wait())


def test_cancel_stops_the_scan_at_the_next_account() -> None:
    gate = threading.Event()
    directory = _Directory(100_000, gate=gate)
    with tempfile.TemporaryDirectory() as folder:
        spool = _AccountSpool(folder, directory)
        spool.start()

        assert directory.at_gate.wait(5)

        async def cancel() -> None:
            waiting = asyncio.create_task(spool.wait(cancel=True))
            await asyncio.sleep(0.05)
            gate.set()
            await waiting

        asyncio.run(cancel())
    assert directory.listed == 11  # the account being read when it was cancelled, then no more
