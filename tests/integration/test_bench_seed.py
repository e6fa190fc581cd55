"""The reconcile benchmark's offline AD seeding makes accounts the product cannot tell from the ones an export
creates: read as the delegated service account they carry their objectSid (unique RIDs of the domain), the
ownership mark under the stack's key, userAccountControl 262656 and the attributes an export writes; the DC's RID
pool has moved past them, so a normal LDAP add afterwards succeeds with a fresh RID; and a scan of the OU joins
every one of them. A real DC, stopped and seeded through Samba's DSDB modules in ldb's batch mode."""

from __future__ import annotations

import pytest

from bench.common import bench_stack, guest_user
from bench.seed_ad import seed_accounts, verify_seeded
from shared.adapters.directory import Directory
from shared.settings import load_settings

pytestmark = pytest.mark.integration


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
