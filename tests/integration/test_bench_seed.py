"""The reconcile benchmark's offline AD seeding makes accounts the product cannot tell from the ones an export
creates: read as the delegated service account they carry their objectSid (unique RIDs of the domain), the
ownership mark under the stack's key, userAccountControl 262656 and the attributes an export writes; the DC's RID
pool has moved past them, so a normal LDAP add afterwards succeeds with a fresh RID; and a scan of the OU joins
every one of them. A real DC, stopped and seeded through Samba's DSDB modules in ldb's batch mode. A seed kept
in the cache and copied into the DC of another stack (other passwords, other ownership key) is as good."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.common import bench_stack, guest_user
from bench.seed_ad import restore_seed, seed_accounts, verify_seeded
from shared.adapters.directory import Directory
from shared.settings import load_settings

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _logging_left_as_found() -> Iterator[None]:
    """bench_stack() quietens logging for a benchmark's console (the root logger, guestsync, azure): put it back,
    so that the tests after these still capture what they check in the logs."""
    root = logging.getLogger()
    names = ("guestsync", "graphsim", "azure", "asyncio")
    levels = {name: logging.getLogger(name).level for name in names}
    root_level, handlers = root.level, list(root.handlers)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        root.setLevel(root_level)
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)


def test_seeded_accounts_are_what_an_export_makes() -> None:
    with bench_stack() as bench:
        users = [guest_user(bench.stack.sim.tenant_domain, "seed", i) for i in range(300)]
        seeded = seed_accounts(bench, users, batch=128)  # several transactions, one partly filled

        summary = verify_seeded(bench, users, seeded.sids, sample=len(users))

        assert "an LDAP add afterwards got RID" in summary
        settings = load_settings(bench.env, need_directory=True)
        assert settings.directory is not None
        with Directory(settings.directory) as directory:
            scanned = list(directory.iter_managed_accounts())
        assert len(scanned) == len(users)  # the LDAP add of the check was deleted again
        assert all(a.marked and a.object_sid == seeded.sids[a.dn[3:39].lower()] for a in scanned)
        assert {a.user_account_control for a in scanned} == {262656}


def test_a_cached_seed_restored_into_another_stack_is_as_good(tmp_path: Path) -> None:
    cache = tmp_path / "seed-cache"
    with bench_stack() as first:
        users = [guest_user(first.stack.sim.tenant_domain, "seed", i) for i in range(120)]
        seeded = seed_accounts(first, users, cache=cache)
        key = first.env["GUESTSYNC_OWNERSHIP_KEY"]

    with bench_stack() as second:
        assert second.env["GUESTSYNC_OWNERSHIP_KEY"] != key
        restored = restore_seed(second, cache)
        assert restored is not None
        ids, again = restored

        assert ids == [u.id for u in users] and again.sids == seeded.sids and again.from_cache
        assert second.env["GUESTSYNC_OWNERSHIP_KEY"] == key  # the marks in the copied database are under it
        # this run's service account and Administrator passwords work on the copy (bound by the check and start)
        verify_seeded(second, users, again.sids, sample=len(users))
