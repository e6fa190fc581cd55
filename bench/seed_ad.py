"""Seed the bench DC with N guest accounts offline, and prove they are what guestsync itself would have made.

``seed_accounts`` stops the DC, adds the accounts to its sam.ldb through Samba's DSDB module stack in ldb's
batch mode (``bench/seed_samba.py``, run with the system python3 that has Samba's bindings; why batch mode is
what makes it linear is explained there) and starts the DC again. Each account carries what an export writes
at creation except the password: the persistent attributes, userAccountControl 262656 and the ownership mark in
adminDescription under the stack's GUESTSYNC_OWNERSHIP_KEY (``shared.core.ad_rules.ownership_mark``). Hashing a
password costs ~30 ms per account in Samba (Kerberos keys), and neither the reconcile nor the scan reads it.

``seed_cache_dir`` / ``restore_seed``: the seeded database (``private/sam.ldb`` and ``sam.ldb.d``) is kept under
the system temp directory, keyed by N, the provisioned DC template it was copied from (realm, Samba version, the
provisioning itself) and the source of everything that shapes the accounts; a later run copies it into its
stopped DC, sets the Administrator and service account passwords it chose, and takes the guest ids and the
ownership key from the cache, so that seeding AD is seconds instead of minutes.

``verify_seeded`` then reads a sample back over LDAPS as the delegated service account, through the product's
own Directory adapter (so the inherited security descriptor lets it read them, as the reconcile must), checks
objectSid, mark, attributes and the operational attributes a real add gets, and creates one more guest over
LDAP, as an export does, to show that the DC's RID pool moved past the seeded RIDs (it is deleted again).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import random
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import ldap3

from bench.common import REPO, BenchStack
from devtools.localenv.samba import TEMPLATE_READY, template_cache_dir
from shared.adapters.directory import Directory
from shared.core.ad_rules import OWNERSHIP_ATTRIBUTE, fit_cosmetic, guest_dn, new_password, ownership_mark
from shared.core.domain import GraphUser
from shared.core.rules import inbound, initial_user_account_control, outbound_persistent
from shared.settings import load_settings

SYSTEM_PYTHON = "/usr/bin/python3"
#: Bump when what a cached seed holds changes.
SEED_FORMAT = 1
#: The sources that decide what a seeded database holds (the stack's OUs and delegation, the accounts' values).
_SHAPING_SOURCES = ("devtools/localenv/stack.py", "devtools/localenv/samba.py", "bench/seed_samba.py",
                    "bench/seed_ad.py", "bench/common.py", "shared/core/rules.py", "shared/core/ad_rules.py")
_SEED_META = "seed.json"


@dataclass
class SeededAccounts:
    sids: dict[str, str]  # guest id (lower case) -> objectSid
    seconds: float  # stop, offline adds (or the copy from the cache), start
    adds_seconds: float  # the offline adds alone, as seed_samba.py timed them (when the cache was filled)
    log: list[str] = field(default_factory=list)
    from_cache: bool = False


def account_values(user: GraphUser, ownership_key: str) -> dict[str, str]:
    """What an export writes on the guest's account at creation, minus the password."""
    desired, _ = fit_cosmetic(outbound_persistent(inbound(user)))
    values = {k: v for k, v in desired.items() if v}
    values[OWNERSHIP_ATTRIBUTE] = ownership_mark(ownership_key, user.id)
    values["userAccountControl"] = str(initial_user_account_control())
    return values


def seed_accounts(bench: BenchStack, users: list[GraphUser], batch: int = 10000,
                  cache: Path | None = None) -> SeededAccounts:
    """Add one account per user to the stopped DC's sam.ldb, start the DC again, and return the objectSids; with
    ``cache``, keep the seeded database there (copied while the DC is stopped) for ``restore_seed``."""
    stack = bench.stack
    dc = stack.dc
    key = bench.env["GUESTSYNC_OWNERSHIP_KEY"]
    accounts = bench.workdir / "accounts.jsonl"
    sids_file = bench.workdir / "sids.jsonl"
    with accounts.open("w") as out:
        for user in users:
            out.write(json.dumps({"dn": guest_dn(user.id, stack.guest_ou),
                                  "attributes": account_values(user, key)}) + "\n")
    started = time.monotonic()
    dc.stop()
    try:
        result = subprocess.run([SYSTEM_PYTHON, str(REPO / "bench" / "seed_samba.py"), str(dc.smb_conf),  # noqa: S603
                                 str(dc.sam_ldb), str(accounts), str(sids_file), str(batch)],
                                capture_output=True, text=True, timeout=7200, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"seeding sam.ldb failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
        log = result.stdout.strip().splitlines()
        adds = float(log[-1].rsplit(" in ", 1)[1].split()[0]) if log else 0.0
        sids: dict[str, str] = {}
        with sids_file.open() as handle:
            for line in handle:
                item = json.loads(line)
                sids[item["cn"].lower()] = item["objectSid"]
        if cache is not None:
            _save(bench, cache, [u.id for u in users], sids, adds)
            log.append(f"  samba: seeded database kept in {cache} for the next run")
    finally:
        dc.start()
    return SeededAccounts(sids, time.monotonic() - started, adds, log)


def seed_cache_dir(bench: BenchStack, guests: int) -> Path:
    """Where a seeded database of ``guests`` accounts for this stack's DC template is (or would be) kept."""
    dc = bench.stack.dc
    template = template_cache_dir(dc.realm, dc.domain)  # its name digests the realm and the Samba version
    digest = hashlib.sha256(f"{SEED_FORMAT}|{guests}|{template.name}|".encode())
    digest.update((template / TEMPLATE_READY).read_bytes())  # the provisioning itself (domain SID, machine keys)
    for source in _SHAPING_SOURCES:
        digest.update((REPO / source).read_bytes())
    return Path(tempfile.gettempdir()) / f"guestsync-bench-seed-{guests}-{digest.hexdigest()[:16]}"


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    with (cache.parent / (cache.name + ".lock")).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _copy_database(source: Path, target: Path) -> None:
    """``private/sam.ldb`` and ``private/sam.ldb.d`` of one DC directory into another (the DC stopped)."""
    (target / "private" / "sam.ldb.d").mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / "private" / "sam.ldb", target / "private" / "sam.ldb")
    for path in (source / "private" / "sam.ldb.d").iterdir():
        shutil.copy2(path, target / "private" / "sam.ldb.d" / path.name)


def _save(bench: BenchStack, cache: Path, ids: list[str], sids: dict[str, str], adds_seconds: float) -> None:
    with _locked(cache):
        if (cache / _SEED_META).exists():
            return
        partial = cache.with_name(cache.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        _copy_database(bench.stack.dc.workdir, partial)
        meta = {"ownership_key": bench.env["GUESTSYNC_OWNERSHIP_KEY"], "ids": ids, "sids": sids,
                "adds_seconds": adds_seconds}
        (partial / _SEED_META).write_text(json.dumps(meta))
        partial.chmod(0o700)
        shutil.rmtree(cache, ignore_errors=True)
        partial.rename(cache)


def restore_seed(bench: BenchStack, cache: Path) -> tuple[list[str], SeededAccounts] | None:
    """The cached seeded database copied into the stopped DC (passwords set to this run's, the ownership key taken
    into the stack's settings), the DC started again; the guest ids in seeding order and the objectSids. None
    when nothing is cached."""
    dc = bench.stack.dc
    with _locked(cache):
        if not (cache / _SEED_META).exists():
            return None
        started = time.monotonic()
        meta = json.loads((cache / _SEED_META).read_text())
        dc.stop()
        try:
            _copy_database(cache, dc.workdir)
            service = bench.env["AD_BIND_USER"].split(",", 1)[0].split("=", 1)[1]
            passwords = {"Administrator": dc.admin_password, service: bench.env["AD_BIND_PASSWORD"]}
            subprocess.run([SYSTEM_PYTHON, str(REPO / "bench" / "seed_samba.py"), "--passwords",  # noqa: S603
                            str(dc.smb_conf), str(dc.sam_ldb)], input=json.dumps(passwords), text=True,
                           capture_output=True, check=True, timeout=600)
        finally:
            dc.start()
    bench.env["GUESTSYNC_OWNERSHIP_KEY"] = meta["ownership_key"]
    seeded = SeededAccounts(meta["sids"], time.monotonic() - started, float(meta["adds_seconds"]),
                            [f"  samba: seeded database copied from {cache}"], from_cache=True)
    return list(meta["ids"]), seeded


def _rid(sid: str) -> int:
    return int(sid.rsplit("-", 1)[1])


def verify_seeded(bench: BenchStack, users: list[GraphUser], sids: dict[str, str], sample: int = 200) -> str:
    """Read ``sample`` seeded accounts (and the first and last) as the service account and add one more over LDAP;
    raise AssertionError naming the account and attribute that is not as an export would have left it."""
    if len(sids) != len(users):
        raise AssertionError(f"{len(users)} accounts seeded but {len(sids)} found in the guest OU")
    domains = {sid.rsplit("-", 1)[0] for sid in sids.values()}
    if len(domains) != 1 or len(set(sids.values())) != len(sids):
        raise AssertionError(f"seeded objectSids are not unique RIDs of one domain: domains {sorted(domains)[:3]}")
    key = bench.env["GUESTSYNC_OWNERSHIP_KEY"]
    settings = load_settings(bench.env, need_directory=True)
    assert settings.directory is not None
    rng = random.Random(len(users))
    picked = [users[0], users[-1], *rng.sample(users, min(sample, len(users)))]
    with Directory(settings.directory, archive_ou=settings.deprovisioning.archive_ou) as directory:
        for user in picked:
            account = directory.find_guest(user.id)
            if account is None:
                raise AssertionError(f"the service account cannot read the seeded account of {user.id}")
            if account.object_sid != sids[user.id.lower()] or not account.marked:
                raise AssertionError(f"{account.dn}: objectSid {account.object_sid} (seeded "
                                     f"{sids[user.id.lower()]}), ownership mark {account.marked}")
            expected = account_values(user, key)
            expected.pop(OWNERSHIP_ATTRIBUTE)  # checked above, under the key, by the adapter (account.marked)
            for name, value in expected.items():
                got = (str(account.user_account_control) if name == "userAccountControl"
                       else account.attributes.get(name))
                if got != value:
                    raise AssertionError(f"{account.dn}: {name} is {got!r}, an export writes {value!r}")
        operational = _operational(settings.directory.bind_user, bench, guest_dn(users[0].id, bench.stack.guest_ou))
        fresh_uid = str(uuid.uuid4())
        first = users[0]
        fresh_user = GraphUser(id=fresh_uid, user_type=first.user_type, display_name="Seed check",
                               given_name="Seed", surname="Check",
                               user_principal_name=f"seedcheck_{fresh_uid[:8]}.example#EXT#@"
                                                   f"{bench.stack.sim.tenant_domain}",
                               mail=f"seedcheck@{fresh_uid[:8]}.example")
        values: dict[str, str | None] = dict(fit_cosmetic(outbound_persistent(inbound(fresh_user)))[0])
        created = directory.create_guest(fresh_uid, values, new_password(24), initial_user_account_control())
        directory.delete_guest(created.dn)
    assert created.object_sid is not None
    top = max(_rid(s) for s in sids.values())
    if created.object_sid in sids.values() or _rid(created.object_sid) <= top or not created.marked:
        raise AssertionError(f"an LDAP add after seeding got objectSid {created.object_sid}; the seeded RIDs go up "
                             f"to {top}")
    return (f"{len(picked)} seeded accounts read as the service account match an export's (objectSid, mark, "
            f"attributes; {operational}); an LDAP add afterwards got RID {_rid(created.object_sid)} "
            f"(seeded RIDs up to {top})")


def _operational(bind_user: str, bench: BenchStack, dn: str) -> str:
    """objectGUID, objectCategory, instanceType, whenCreated and uSNCreated of ``dn``, read as the service account."""
    import ssl

    dc = bench.stack.dc
    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(dc.ca_file))
    server = ldap3.Server(dc.ldaps_url, use_ssl=True, tls=tls, get_info=ldap3.NONE)
    names = ["objectGUID", "objectCategory", "instanceType", "whenCreated", "uSNCreated"]
    with ldap3.Connection(server, bind_user, bench.env["AD_BIND_PASSWORD"], auto_bind=True) as conn:
        conn.search(dn, "(objectClass=user)", ldap3.BASE, attributes=names)
        if not conn.entries:
            raise AssertionError(f"{dn} not readable as the service account")
        entry = conn.entries[0]
        missing = [n for n in names if not entry[n].values]
        category = str(entry.objectCategory.value)
        if missing or not category.lower().startswith("cn=person,cn=schema") or int(entry.instanceType.value) != 4:
            raise AssertionError(f"{dn}: missing {missing}, objectCategory {category}, instanceType "
                                 f"{entry.instanceType.value}")
        return f"objectCategory {category.split(',')[0]}, instanceType 4, uSNCreated {entry.uSNCreated.value}"

