"""Reconcile: compare Entra ID (users/delta), the state table and the managed OUs, and repair drift.

Notifications are fast but not guaranteed (Graph may drop them, a subscription may lapse), and admins edit
AD by hand. The reconcile catches all of it:

1. Graph: users/delta from the stored deltaLink (first run, or 410 Gone: a full pass); every changed,
   new or ``@removed`` user goes through the same apply rules as a notification. After a full pass, guests
   that Graph no longer returns are re-read (and deprovisioned when gone). With a scoping group, its
   transitive members are compared with state too (membership changes send no user notification).
2. AD: a paged scan of the managed OUs joined to state on objectSid. Persistent attributes that drifted
   are repaired, accounts deleted by hand are recreated, archived accounts past the grace period are
   deleted; objects guestsync does not own are reported and left alone. Initial-only attributes
   (userAccountControl, password) are never compared.

AD writes are not made here: they are queued as exports, so the worker's breaker and ETag rules apply.
State is copied once into an on-disk SQLite index for the run, so memory stays flat however large the
tenant is. ``dry_run`` (``guestsync plan``) computes the same findings and writes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import sqlite3
import tempfile
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from shared.core.ad_rules import fit_cosmetic, uid_from_dn
from shared.core.deprovisioning import ExportAction, plan_export
from shared.core.domain import DEPROVISION_STATUSES, AdAccount, DeltaPage, GraphUser, GuestStatus
from shared.core.errors import DeltaExpiredError
from shared.core.messages import ExportMessage
from shared.core.outcomes import FindingAction
from shared.core.ports import AccountScanner, DeltaReader, GuestStore
from shared.core.records import GuestRecord, utcnow
from shared.core.rules import (
    GUEST_USER_TYPE,
    Decision,
    attribute_changes,
    initial_user_account_control,
    outbound_persistent,
)
from shared.observability import RECONCILE_FINDINGS, guest_context, new_correlation_id
from shared.services.apply import apply_user, next_record, plan_for, read_scope
from shared.settings import DeprovisioningSettings

log = logging.getLogger("guestsync.reconcile")
DELTA_META = "delta"
REPORT_META = "reconcile"
MAX_FINDINGS_KEPT = 200  # in the stored report (status); the full list goes to the caller as it is found




@dataclass(frozen=True)
class Finding:
    """One thing the reconcile found: ``action`` is what is (or, in a plan, would be) done about it."""

    uid: str
    action: FindingAction
    reason: str
    user_principal_name: str | None = None
    dn: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class ReconcileReport:
    started_at: datetime
    dry_run: bool
    delta_mode: str = "incremental"  # incremental | full
    finished_at: datetime | None = None
    graph_users: int = 0
    ad_accounts: int = 0
    guests_in_state: int = 0
    actions: Counter[str] = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "startedAt": self.started_at.isoformat(),
            "finishedAt": self.finished_at.isoformat() if self.finished_at else None,
            "dryRun": self.dry_run,
            "deltaMode": self.delta_mode,
            "graphUsers": self.graph_users,
            "adAccounts": self.ad_accounts,
            "guestsInState": self.guests_in_state,
            "actions": dict(sorted(self.actions.items())),
            "findings": [f.as_dict() for f in self.findings[:MAX_FINDINGS_KEPT]],
        }


class _Index:
    """This run's copy of state on disk (SQLite in a temporary directory): lookups by uid and objectSid,
    and marks for what Graph and AD returned, without holding the tenant in memory."""

    def __init__(self, folder: str) -> None:
        self._db = sqlite3.connect(str(Path(folder) / "reconcile.sqlite"))
        self._db.executescript(
            """
            PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -16000;
            CREATE TABLE guest (uid TEXT PRIMARY KEY, sid TEXT, record BLOB,
                                graph_seen INTEGER DEFAULT 0, ad_seen INTEGER DEFAULT 0, handled INTEGER DEFAULT 0,
                                waiting BLOB);
            CREATE INDEX guest_sid ON guest (sid);
            CREATE TABLE member (uid TEXT PRIMARY KEY);
            """
        )

    def close(self) -> None:
        self._db.close()

    def load(self, records: Iterable[GuestRecord], progress: Callable[[int], None]) -> int:
        count = 0
        batch: list[tuple[str, str | None, bytes]] = []
        for record in records:
            batch.append((record.uid, record.object_sid, pickle.dumps(record.evolve(etag=None))))
            count += 1
            if len(batch) >= 1000:
                self._db.executemany("INSERT OR REPLACE INTO guest (uid, sid, record) VALUES (?, ?, ?)", batch)
                batch.clear()
                progress(count)
        self._db.executemany("INSERT OR REPLACE INTO guest (uid, sid, record) VALUES (?, ?, ?)", batch)
        self._db.commit()
        progress(count)
        return count

    def add_new(self, record: GuestRecord, finding: Finding) -> None:
        """A guest this run found in Graph but not in state, as the Graph phase planned it: its ``finding`` (a
        create) waits for the AD phase, which may find the guest's CN=<uid> already there (a MIM-era account)."""
        self._db.execute("INSERT OR REPLACE INTO guest (uid, sid, record, graph_seen, handled, waiting) "
                         "VALUES (?, NULL, ?, 1, 1, ?)", (record.uid, pickle.dumps(record), pickle.dumps(finding)))

    def take_waiting(self, uid: str) -> Finding | None:
        """The waiting finding of a new guest (and forget it), or None."""
        row = self._db.execute("SELECT waiting FROM guest WHERE uid = ?", (uid,)).fetchone()
        if not row or row[0] is None:
            return None
        self._db.execute("UPDATE guest SET waiting = NULL WHERE uid = ?", (uid,))
        finding = pickle.loads(row[0])  # noqa: S301 (our own temporary file, written in this run)
        assert isinstance(finding, Finding)
        return finding

    def waiting(self) -> Iterator[Finding]:
        """The findings still waiting (new guests whose CN=<uid> the AD phase did not find), in uid order."""
        for _, blob in _pages(self._db, "SELECT uid, waiting FROM guest WHERE waiting IS NOT NULL AND uid > ? "
                                        "ORDER BY uid LIMIT 500", ""):
            finding = pickle.loads(blob)  # noqa: S301 (our own temporary file, written in this run)
            assert isinstance(finding, Finding)
            yield finding

    def add_members(self, uids: list[str]) -> None:
        self._db.executemany("INSERT OR IGNORE INTO member (uid) VALUES (?)", [(u.lower(),) for u in uids])

    def is_member(self, uid: str) -> bool:
        return self._db.execute("SELECT 1 FROM member WHERE uid = ?", (uid.lower(),)).fetchone() is not None

    def get(self, uid: str) -> GuestRecord | None:
        row = self._db.execute("SELECT record FROM guest WHERE uid = ?", (uid,)).fetchone()
        return _unpickle(row[0]) if row else None

    def by_sid(self, sid: str) -> GuestRecord | None:
        row = self._db.execute("SELECT record FROM guest WHERE sid = ?", (sid,)).fetchone()
        return _unpickle(row[0]) if row else None

    def mark(self, uid: str, column: str) -> None:
        assert column in ("graph_seen", "ad_seen", "handled")
        self._db.execute(f"UPDATE guest SET {column} = 1 WHERE uid = ?", (uid,))  # noqa: S608 (fixed names)

    def is_handled(self, uid: str) -> bool:
        row = self._db.execute("SELECT handled FROM guest WHERE uid = ?", (uid,)).fetchone()
        return bool(row and row[0])

    def records(self, where: str) -> Iterator[GuestRecord]:
        """Records matching a fixed condition."""
        for _, blob in _pages(self._db, "SELECT uid, record FROM guest WHERE uid > ? AND "  # noqa: S608
                                        f"({where}) ORDER BY uid LIMIT 500", ""):
            yield _unpickle(blob)

    def new_members(self) -> Iterator[str]:
        for (uid,) in _pages(self._db, "SELECT m.uid FROM member m LEFT JOIN guest g ON g.uid = m.uid "
                                       "WHERE g.uid IS NULL AND m.uid > ? ORDER BY m.uid LIMIT 500", ""):
            yield uid


def _pages(db: sqlite3.Connection, sql: str, first: Any) -> Iterator[Any]:
    """The rows of ``sql`` (keyed by its first column, ``?`` = the last key seen, ``first`` before any) page by
    page, so that no cursor stays open across the caller's own updates of the table."""
    last = first
    while True:
        rows = db.execute(sql, (last,)).fetchall()
        if not rows:
            return
        yield from rows
        last = rows[-1][0]


class _AccountSpool:
    """The managed OUs' accounts, scanned in a thread of their own while state loads and Graph pages, and spooled
    to a file of their own: the LDAP scan (mostly waiting on the DC) overlaps the other phases, and memory stays
    flat however many accounts there are. The AD phase reads them back in scan order, page by page as the scan
    commits them (a page of the scan at a time), so that joining them overlaps the rest of the scan too."""

    PAGE = 500  # accounts per commit (the adapter's LDAP page) and per read

    def __init__(self, folder: str, directory: AccountScanner) -> None:
        self._path = str(Path(folder) / "accounts.sqlite")
        self._directory = directory
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._scan, name="reconcile-ad-scan", daemon=True)

    def start(self) -> None:
        db = sqlite3.connect(self._path)
        try:  # WAL: the AD phase reads committed pages while the scan writes the next ones
            db.executescript("PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF;"
                             "CREATE TABLE account (n INTEGER PRIMARY KEY, blob BLOB);")
        finally:
            db.close()
        self._thread.start()

    def _scan(self) -> None:
        db = sqlite3.connect(self._path)
        try:
            batch: list[tuple[bytes]] = []
            for account in self._directory.iter_managed_accounts():
                if self._stop.is_set():
                    return
                batch.append((pickle.dumps(account),))
                if len(batch) >= self.PAGE:
                    db.executemany("INSERT INTO account (blob) VALUES (?)", batch)
                    db.commit()
                    batch.clear()
            db.executemany("INSERT INTO account (blob) VALUES (?)", batch)
            db.commit()
        except BaseException as exc:  # handed to the reconcile, which raises it in its own task
            self._error = exc
        finally:
            db.close()

    async def wait(self, *, cancel: bool = False) -> None:
        """Until the scan is done (without blocking the event loop; ``cancel`` stops it at the next account);
        re-raises the scan's error."""
        if cancel:
            self._stop.set()
        await asyncio.to_thread(self._thread.join)
        if self._error is not None:
            raise self._error

    async def pages(self, poll: float = 0.05) -> AsyncIterator[list[AdAccount]]:
        """The accounts in scan order, a committed page at a time, as soon as the scan has committed it; the
        scan's error once every account it read before the error has been handed out."""
        db = sqlite3.connect(self._path)
        try:
            last = 0
            while True:
                done = not self._thread.is_alive()  # before reading: a page committed after this is read next time
                rows = db.execute("SELECT n, blob FROM account WHERE n > ? ORDER BY n LIMIT ?",
                                  (last, self.PAGE)).fetchall()
                if rows:
                    last = rows[-1][0]
                    yield [_unpickle_account(blob) for _, blob in rows]
                elif done:
                    break
                else:
                    await asyncio.sleep(poll)
        finally:
            db.close()
        await self.wait()

    def __iter__(self) -> Iterator[AdAccount]:
        db = sqlite3.connect(self._path)
        try:
            for _, blob in _pages(db, "SELECT n, blob FROM account WHERE n > ? ORDER BY n LIMIT 500", 0):
                yield _unpickle_account(blob)
        finally:
            db.close()


def _unpickle_account(blob: bytes) -> AdAccount:
    account = pickle.loads(blob)  # noqa: S301 (our own temporary file, written in this run)
    assert isinstance(account, AdAccount)
    return account


def _unpickle(blob: bytes) -> GuestRecord:
    record = pickle.loads(blob)  # noqa: S301 (our own temporary file, written in this run)
    assert isinstance(record, GuestRecord)
    return record


def _predicted(plan_decision: Decision, record: GuestRecord | None, policy: DeprovisioningSettings) -> FindingAction:
    """The AD action an apply decision leads to, for findings (the worker decides for real)."""
    if plan_decision is Decision.OUT_OF_SCOPE:
        if policy.deprovision == "archive" and record and record.has_account:
            return FindingAction.DISABLE
        return FindingAction.DEPROVISION
    if plan_decision is Decision.SAVE:
        return FindingAction.SAVE
    if record is None or not record.has_account:
        return FindingAction.CREATE
    if record.status in DEPROVISION_STATUSES:
        return FindingAction.RESTORE
    return FindingAction.UPDATE


class Reconciler:
    """One reconcile run: ``await Reconciler(...).run(full=...)``. ``send_export`` queues AD work; Graph-side
    changes are applied to state directly (the same rules as the apply function), except in a dry run, which
    only reports. Without ``directory`` only the Graph side runs (a catch-up after missed notifications in
    the cloud half, where AD is out of reach)."""

    def __init__(
        self,
        graph: DeltaReader,
        state: GuestStore,
        send_export: Callable[[str], None],
        policy: DeprovisioningSettings,
        *,
        directory: AccountScanner | None = None,
        dry_run: bool = False,
        on_finding: Callable[[Finding], None] | None = None,
        progress: Callable[[str, int], None] | None = None,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.graph = graph
        self.state = state
        self.send_export = send_export
        self.policy = policy
        self.directory = directory
        self.dry_run = dry_run
        self.on_finding = on_finding
        self.progress = progress or (lambda _phase, _count: None)
        self.now = now
        self.report = ReconcileReport(started_at=now(), dry_run=dry_run)
        self._index: _Index | None = None

    # --- plumbing -------------------------------------------------------------------------------------------
    @property
    def index(self) -> _Index:
        assert self._index is not None
        return self._index

    def _found(self, finding: Finding) -> None:
        self.report.actions[finding.action] += 1
        RECONCILE_FINDINGS.add(1, {"action": finding.action, "dry_run": self.dry_run})
        if len(self.report.findings) < MAX_FINDINGS_KEPT:
            self.report.findings.append(finding)
        if self.on_finding:
            self.on_finding(finding)
        log.info("reconcile: %s %s (%s)", finding.action, finding.uid, finding.reason)

    async def _settle(self, uid: str, user: GraphUser | None, *, in_group: bool | None,
                      removed: str | None = None) -> None:
        """Plan one Graph user against the index; report and (unless dry run) apply what changes."""
        record = self.index.get(uid)
        plan = plan_for(user, record, in_group=in_group, removed=removed)
        planned = next_record(record, plan, read_at=self.now(), notified_at=None)
        if planned is None:
            return
        if record is not None:
            self.index.mark(uid, "handled")
        # Already deprovisioned and still out: only the recorded reason changes, nothing to report.
        quiet = record is not None and record.status in DEPROVISION_STATUSES and plan.decision is Decision.OUT_OF_SCOPE
        if not quiet:
            upn = (user.user_principal_name if user else None) or (
                record.entry.user_principal_name if record else None)
            finding = Finding(uid, _predicted(plan.decision, record, self.policy), plan.reason, upn,
                              record.dn if record else None)
            if record is None and finding.action is FindingAction.CREATE and self.directory is not None:
                # A guest state does not know yet (the first run after a migration from MIM): whether it is a
                # create or a takeover depends on its CN=<uid>, which the AD phase sees; the finding waits.
                self.index.add_new(planned, finding)
            else:
                self._found(finding)
        if not self.dry_run:
            with guest_context(uid, new_correlation_id()):
                apply_user(uid, user, self.state, self.send_export, in_group=in_group, removed=removed,
                           read_at=self.now(), insert_first=record is None)

    async def _reread(self, uid: str) -> None:
        """Read one user (and its group membership) from Graph, then settle it."""
        user, in_group = await read_scope(self.graph, uid, self.policy.scope_group_id)
        await self._settle(uid, user, in_group=in_group)

    # --- phases -----------------------------------------------------------------------------------------------
    async def run(self, *, full: bool = False) -> ReconcileReport:
        with tempfile.TemporaryDirectory(prefix="guestsync-reconcile-") as folder:
            self._index = _Index(folder)
            try:
                spool = _AccountSpool(folder, self.directory) if self.directory is not None else None
                if spool is not None:
                    spool.start()  # the AD scan runs meanwhile; its accounts are joined after the Graph phase
                try:
                    self.report.guests_in_state = self.index.load(self.state.planning_records(),
                                                                  lambda n: self.progress("state", n))
                    if self.policy.scope_group_id:
                        await self._load_group(self.policy.scope_group_id)
                    await self._graph_phase(full=full)
                    if self.policy.scope_group_id:
                        await self._group_phase()
                    if spool is not None:
                        await self._ad_phase(spool)
                except BaseException:
                    if spool is not None:
                        await spool.wait(cancel=True)  # never leave the scan thread behind
                    raise
                if spool is not None:
                    for finding in self.index.waiting():  # new guests without an account: created
                        self._found(finding)
            finally:
                self.index.close()
                self._index = None
        self.report.finished_at = self.now()
        if not self.dry_run:
            self.state.put_meta(REPORT_META, self.report.as_dict())
        return self.report

    async def _load_group(self, group_id: str) -> None:
        batch: list[str] = []
        async for uid in self.graph.iter_group_member_ids(group_id):
            batch.append(uid)
            if len(batch) >= 1000:
                self.index.add_members(batch)
                batch.clear()
        self.index.add_members(batch)

    def _in_group(self, uid: str) -> bool | None:
        return self.index.is_member(uid) if self.policy.scope_group_id else None

    async def _graph_phase(self, *, full: bool) -> None:
        link = None if full else self.state.get_meta(DELTA_META)[0].get("link")
        try:
            new_link = await self._delta_pass(link)
        except DeltaExpiredError:
            log.warning("reconcile: the stored deltaLink expired (410); running a full pass")
            new_link = await self._delta_pass(None)
        if link is None:
            # Guests that a full pass did not return are gone (or unreadable): re-read each one.
            for record in self.index.records("graph_seen = 0 AND handled = 0"):
                if record.status not in DEPROVISION_STATUSES or record.has_account:
                    await self._reread(record.uid)
        if new_link and not self.dry_run:
            self.state.put_meta(DELTA_META, {"link": new_link, "at": self.now().isoformat()})

    async def _delta_pass(self, link: str | None) -> str | None:
        self.report.delta_mode = "incremental" if link else "full"
        last: str | None = None
        page: DeltaPage
        async for page in self.graph.delta(link):
            for user in page.users:
                self.report.graph_users += 1
                uid = user.id.lower()
                self.index.mark(uid, "graph_seen")
                if link is None:
                    await self._settle(uid, user, in_group=self._in_group(uid))
                elif self.index.get(uid) is not None or user.user_type == GUEST_USER_TYPE:
                    # incremental items carry only what changed: read the whole user before deciding
                    await self._reread(uid)
            for uid, reason in page.removed:
                self.report.graph_users += 1
                if self.index.get(uid.lower()) is not None:
                    await self._settle(uid.lower(), None, in_group=None, removed=reason)
            self.progress("graph", self.report.graph_users)
            last = page.delta_link or last
        return last

    async def _group_phase(self) -> None:
        """Membership is not in users/delta: compare the group with state both ways."""
        for record in self.index.records("handled = 0"):
            member = self.index.is_member(record.uid)
            left = record.status not in DEPROVISION_STATUSES and not member
            back = record.status in DEPROVISION_STATUSES and member and "scoping group" in (record.reason or "")
            if left or back:
                await self._reread(record.uid)
        for uid in self.index.new_members():
            await self._reread(uid)

    async def _ad_phase(self, spool: _AccountSpool) -> None:
        """Join the scanned accounts to state on objectSid; compare, repair, report. Accounts are joined as the
        scan hands them over; the guests whose account it did not see are looked at only once it has seen every
        account (a scan that fails raises before that, so no account is ever taken for deleted because of it)."""
        async for page in spool.pages():
            self._join_accounts(page)
        self._accounts_not_seen()

    def _join_accounts(self, accounts: Iterable[AdAccount]) -> None:
        now = self.now()
        for account in accounts:
            self.report.ad_accounts += 1
            if self.report.ad_accounts % 500 == 0:
                self.progress("ad", self.report.ad_accounts)
            record = self.index.by_sid(account.object_sid) if account.object_sid else None
            if record is None:
                self._unjoined(account)
                continue
            self.index.mark(record.uid, "ad_seen")
            if self.index.is_handled(record.uid):
                continue  # the Graph phase already queued this guest's export
            desired, _ = fit_cosmetic(outbound_persistent(record.entry))
            plan = plan_export(status=record.status, reason=record.reason, approval=record.approval,
                               archived_at=record.archived_at, account=account, desired=desired,
                               policy=self.policy, now=now)
            if plan.action is ExportAction.NONE:
                continue
            self._export(record, FindingAction(plan.action.value), plan.reason, account.dn)

    def _accounts_not_seen(self) -> None:
        """Guests whose account was not in the OUs: deleted by hand (recreate), or never exported (retry)."""
        self.progress("ad", self.report.ad_accounts)
        for record in self.index.records("ad_seen = 0 AND handled = 0"):
            if record.status in DEPROVISION_STATUSES:
                continue
            if record.has_account:
                self._export(record, FindingAction.CREATE, "AD account was deleted outside guestsync; recreating it",
                             record.dn)
            elif record.status in (GuestStatus.PENDING, GuestStatus.ERROR):
                why = "export still outstanding" if record.status is GuestStatus.PENDING else (
                    f"retrying after error: {record.error}")
                self._export(record, FindingAction.CREATE, why, None)

    def _unjoined(self, account: AdAccount) -> None:
        """An account no guest is joined to by objectSid. One that carries the mark of a guest never joined was
        created by guestsync but its join was not saved: the guest's export joins it. Anything else is a finding
        and the object is left alone; the export queued for its guest records the finding on the guest (it
        refuses to write to the object) so that ``status`` shows it until an operator acts."""
        uid = uid_from_dn(account.dn)
        candidate = self.index.get(uid) if uid else None
        if candidate is None:
            self._found(Finding(uid or "-", FindingAction.FOREIGN, "object in a managed OU that guestsync does not "
                                "own (no guest with its objectSid or its name); left alone", dn=account.dn))
            return
        self.index.mark(candidate.uid, "ad_seen")
        waiting = self.index.take_waiting(candidate.uid)
        if waiting is None and self.index.is_handled(candidate.uid):
            return  # the Graph phase already queued this guest's export
        details = account.identity
        if candidate.object_sid is None and account.marked:
            action, why = FindingAction.JOIN, "account created by guestsync whose join was not saved; joining it"
        elif candidate.object_sid is None:
            action, why = self._takeover(candidate, account, details)
        else:
            action, why = FindingAction.SECURITY, (
                f"a different object holds CN={uid} than the account joined to the guest (objectSid "
                f"{candidate.object_sid}); this one has {details}: replaced or planted, left alone")
        if waiting is not None:  # a guest new to state: the Graph phase already queued its export
            self._found(Finding(candidate.uid, action, why, waiting.user_principal_name, account.dn))
            return
        self._export(candidate, action, why, account.dn)

    def _takeover(self, record: GuestRecord, account: AdAccount, details: str) -> tuple[FindingAction, str]:
        """An unmarked CN=<uid> of a guest never joined (a MIM-era account): taken over by the guest's export if
        an operator chose it or the migration window is open (``adopt``), else listed for an operator
        (``adoptable``). The reason names the attributes the takeover then brings in line with Entra ID."""
        desired, _ = fit_cosmetic(outbound_persistent(record.entry))
        changes = sorted(attribute_changes(desired, account.attributes))
        then = f"; the takeover also updates {', '.join(changes)}" if changes else ""
        window = self.policy.adopt_until is not None and self.now() < self.policy.adopt_until
        if record.adopt or window:
            why = "an operator chose to take it over" if record.adopt else (
                f"GUESTSYNC_ADOPT_UNTIL is {self.policy.adopt_until.isoformat() if self.policy.adopt_until else ''}")
            return FindingAction.ADOPT, (f"CN={record.uid} exists without guestsync's ownership mark ({details}); "
                                         f"would adopt it ({why}): fresh password, userAccountControl "
                                         f"{initial_user_account_control()}, ownership mark{then}")
        return FindingAction.ADOPTABLE, (f"CN={record.uid} exists without guestsync's ownership mark ({details}); "
                                         f"would adopt on `guestsync adopt {record.uid}` (fresh password, "
                                         f"userAccountControl {initial_user_account_control()}, ownership "
                                         f"mark{then}), nothing is written until then")

    def _export(self, record: GuestRecord, action: FindingAction, reason: str, dn: str | None) -> None:
        self._found(Finding(record.uid, action, reason, record.entry.user_principal_name, dn))
        if not self.dry_run:
            self.send_export(ExportMessage(record.uid, record.version, f"reconcile: {reason}",
                                           new_correlation_id()).to_json())


def last_report(state: GuestStore) -> dict[str, Any] | None:
    body, _ = state.get_meta(REPORT_META)
    return body or None


def delta_status(state: GuestStore) -> dict[str, Any] | None:
    body, _ = state.get_meta(DELTA_META)
    return {"at": body.get("at")} if body else None
