"""Fewer storage transactions per guest change: apply inserts a new guest without reading it first, and the export
message carries the saved record (a snapshot with its ETag) so the worker need not read it again. In-memory
state with Table Storage's ETag semantics; the real table is exercised in tests/integration/test_export_snapshot.py.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.core.ad_rules import fit_cosmetic
from shared.core.domain import (
    GUEST_USER_ACCOUNT_CONTROL,
    UAC_ACCOUNTDISABLE,
    AdAccount,
    Approval,
    GraphUser,
    GuestStatus,
)
from shared.core.errors import AccountExistsError
from shared.core.messages import MAX_SNAPSHOT_CHARS, ExportMessage
from shared.core.records import ConcurrencyError, GuestRecord
from shared.core.rules import Decision, inbound, outbound_persistent
from shared.services.apply import KNOWN_RECORDS, apply_user
from shared.services.export import SNAPSHOT_FRESH_SECONDS, export_guest
from shared.settings import DeprovisioningSettings

UID = "6ea91a8d-e32e-41a1-b7bd-d2d185eed0e0"
GUEST_OU = "OU=B2BGuest,DC=contoso,DC=com"
ARCHIVE_OU = "OU=B2BGuestArchive,DC=contoso,DC=com"
SID = "S-1-5-21-1-2-3-1104"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
POLICY = DeprovisioningSettings(archive_ou=ARCHIVE_OU)


def guest(**props: Any) -> GraphUser:
    values: dict[str, Any] = {"id": UID, "user_type": "Guest", "display_name": "Alice Smith", "given_name": "Alice",
                              "surname": "Smith", "user_principal_name": "alice_fabrikam.com#EXT#@contoso.com",
                              "mail": "alice@fabrikam.com", "account_enabled": True}
    values.update(props)
    return GraphUser(**values)


def record(**changes: Any) -> GuestRecord:
    return GuestRecord(uid=UID, entry=inbound(guest()), reason="new guest").evolve(**changes)


class MemoryState:
    """StateStore's record API in memory with its ETag semantics (insert: must not exist; replace: ETag must
    match), counting every call as a storage transaction."""

    def __init__(self) -> None:
        self.records: dict[str, GuestRecord] = {}
        self.meta: dict[str, dict[str, Any]] = {}
        self.calls: Counter[str] = Counter()
        self._etags = itertools.count(1)

    def put(self, rec: GuestRecord) -> GuestRecord:
        """Store as if written (setup and every successful save): a new ETag."""
        saved = rec.evolve(etag=f'W/"{next(self._etags)}"')
        self.records[rec.uid] = saved
        return saved

    def get(self, uid: str) -> GuestRecord | None:
        self.calls["get"] += 1
        return self.records.get(uid)

    def save(self, rec: GuestRecord) -> GuestRecord:
        current = self.records.get(rec.uid)
        self.calls["insert" if rec.etag is None else "replace"] += 1
        if (current is not None) if rec.etag is None else (current is None or current.etag != rec.etag):
            raise ConcurrencyError(rec.uid)
        return self.put(rec)

    def delete(self, uid: str) -> None:
        self.calls["delete"] += 1
        self.records.pop(uid, None)

    def get_meta(self, name: str) -> tuple[dict[str, Any], str | None]:
        return self.meta.get(name, {}), None

    def save_meta(self, name: str, body: dict[str, Any], etag: str | None) -> str:
        self.meta[name] = body
        return "etag"


class MemoryDirectory:
    """The guest and archive OUs in memory; records every write."""

    def __init__(self) -> None:
        self.accounts: dict[str, AdAccount] = {}  # by uid
        self.writes: list[str] = []

    def add(self, dn: str, uac: int, attributes: dict[str, str | None]) -> None:
        self.accounts[UID] = AdAccount(dn, SID, attributes.get("sAMAccountName"), uac, dict(attributes),
                                       marked=True)

    def find_guest(self, uid: str) -> AdAccount | None:
        return self.accounts.get(uid)

    def holder_of(self, uid: str) -> str | None:
        return self.accounts[uid].dn if uid in self.accounts else None

    def adopt_guest(self, dn: str, uid: str, attributes: dict[str, str | None], password: str,
                    user_account_control: int) -> AdAccount:
        self.writes.append("adopt")
        self.add(dn, user_account_control, attributes)
        return self.accounts[uid]

    def mark_owned(self, account: AdAccount, uid: str) -> None:
        self.writes.append("mark")

    def find_by_sid(self, sid: str) -> AdAccount | None:
        return next((a for a in self.accounts.values() if a.object_sid == sid), None)

    def create_guest(self, uid: str, attributes: dict[str, str | None], password: str,
                     user_account_control: int) -> AdAccount:
        if uid in self.accounts:
            raise AccountExistsError(f"CN={uid} exists")
        self.writes.append("create")
        self.add(f"CN={uid},{GUEST_OU}", user_account_control, attributes)
        return self.accounts[uid]

    def update_guest(self, dn: str, changes: dict[str, str | None]) -> None:
        self.writes.append("update")
        old = self.accounts[UID]
        self.accounts[UID] = AdAccount(old.dn, old.object_sid, old.sam_account_name, old.user_account_control,
                                       {**old.attributes, **changes}, marked=old.marked)

    def netbios_domain(self) -> str:
        return "CONTOSO"

    def disable_and_archive(self, dn: str) -> AdAccount:
        self.writes.append("disable")
        old = self.accounts[UID]
        self.add(f"CN={UID},{ARCHIVE_OU}", (old.user_account_control or 0) | UAC_ACCOUNTDISABLE, old.attributes)
        return self.accounts[UID]

    def restore_guest(self, dn: str) -> AdAccount:
        self.writes.append("restore")
        old = self.accounts[UID]
        self.add(f"CN={UID},{GUEST_OU}", GUEST_USER_ACCOUNT_CONTROL, old.attributes)
        return self.accounts[UID]

    def delete_guest(self, dn: str) -> None:
        self.writes.append("delete")
        del self.accounts[UID]

#: The guests' UPN suffix, allowed as the worker allows it (GUESTSYNC_UPN_SUFFIXES and the initial domain).
UPN_SUFFIXES = ("contoso.com",)


def desired(rec: GuestRecord) -> dict[str, str | None]:
    return fit_cosmetic(outbound_persistent(rec.entry))[0]


def export(message: ExportMessage, state: MemoryState, directory: MemoryDirectory) -> str:
    return export_guest(message, state, directory, POLICY, now=lambda: NOW,  # type: ignore[arg-type]
                        upn_suffixes=UPN_SUFFIXES).action


def message_for(rec: GuestRecord, *, version: int | None = None) -> ExportMessage:
    """An export message as it travels: through JSON."""
    sent = ExportMessage(rec.uid, rec.version if version is None else version, "test", "cid", rec.to_snapshot())
    return ExportMessage.from_json(sent.to_json())


# --- the snapshot and the message ------------------------------------------------------------------------------


def test_snapshot_round_trips_every_field_through_json() -> None:
    full = record(status=GuestStatus.HELD, version=7, exported_version=6, reason="user was deleted", error="held",
                  warnings="displayName truncated", object_sid=SID, dn=f"CN={UID},{GUEST_OU}",
                  sam_account_name=UID[:20], domain="CONTOSO", graph_read_at=NOW, notified_at=NOW - timedelta(1),
                  exported_at=NOW, latency_ms=1234, archived_at=NOW, approval=Approval.REJECTED,
                  entry=inbound(guest(display_name='Zoë "Evil" =*)(|', mobile_phone="+1 555")), etag='W/"x"')
    snapshot = json.loads(json.dumps(full.to_snapshot()))
    assert "Password" not in json.dumps(snapshot)
    back = GuestRecord.from_snapshot(snapshot)
    assert back == full and back.etag == 'W/"x"'
    sparse = record(etag='W/"y"')  # absent optionals stay absent
    assert GuestRecord.from_snapshot(json.loads(json.dumps(sparse.to_snapshot()))) == sparse


@pytest.mark.parametrize("damage", [
    lambda s: "not an object",
    lambda s: {k: v for k, v in s.items() if k != "ETag"},
    lambda s: {**s, "ETag": None},
    lambda s: {k: v for k, v in s.items() if k != "Entry"},
    lambda s: {**s, "Entry": "{not json"},
    lambda s: {**s, "Entry": "[]"},
    lambda s: {**s, "Status": "bogus"},
    lambda s: {**s, "Version": "3"},
    lambda s: {**s, "Version": True},
    lambda s: {**s, "NotifiedAt": "yesterday"},
    lambda s: {**s, "NotifiedAt": "2026-03-01T12:00:00"},  # no time zone
    lambda s: {**s, "ObjectSid": 5},
    lambda s: {**s, "Approval": "maybe"},
])
def test_malformed_snapshot_is_a_value_error(damage: Any) -> None:
    with pytest.raises(ValueError):
        GuestRecord.from_snapshot(damage(record(notified_at=NOW, etag='W/"1"').to_snapshot()))


def test_export_message_keeps_its_old_wire_format_without_a_snapshot() -> None:
    plain = ExportMessage(UID, 3, "new guest", "cid")
    # The old fields plus the schema version (an agent from before "v" ignores it and reads schema 1 as ever).
    assert json.loads(plain.to_json()) == {"v": 1, "uid": UID, "version": 3, "reason": "new guest",
                                           "correlation_id": "cid"}
    assert ExportMessage.from_json(plain.to_json()) == plain
    old = ExportMessage.from_json(json.dumps({"uid": UID, "version": 3, "reason": "r"}))  # sent by an older app
    assert old.snapshot is None
    assert ExportMessage.from_json(json.dumps({"uid": UID, "version": 3, "snapshot": "junk"})).snapshot is None
    with_snapshot = message_for(record(etag='W/"1"'))
    assert with_snapshot.snapshot is not None and GuestRecord.from_snapshot(with_snapshot.snapshot) == record()


def test_oversized_snapshot_is_left_out_of_the_message() -> None:
    huge = record(warnings="w" * MAX_SNAPSHOT_CHARS, etag='W/"1"')
    message = ExportMessage.from_json(ExportMessage(UID, 1, "r", "", huge.to_snapshot()).to_json())
    assert message.snapshot is None and message.uid == UID


# --- apply: a new guest is inserted without a read --------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fresh_process() -> None:
    """Each test starts like a new process: apply has met no record yet."""
    KNOWN_RECORDS.clear()


def apply(state: MemoryState, user: GraphUser | None, **kwargs: Any) -> tuple[Decision, list[ExportMessage]]:
    sent: list[str] = []
    plan = apply_user(UID, user, state, sent.append, in_group=None, removed=None,  # type: ignore[arg-type]
                      read_at=NOW, **kwargs)
    return plan.decision, [ExportMessage.from_json(m) for m in sent]


def test_new_guest_is_inserted_without_reading_state_and_the_export_carries_it() -> None:
    state = MemoryState()
    decision, [message] = apply(state, guest())
    assert decision is Decision.EXPORT
    assert state.calls == {"insert": 1}
    assert message.snapshot is not None
    assert GuestRecord.from_snapshot(message.snapshot).etag == state.records[UID].etag


def test_known_guest_falls_back_to_read_and_replan_after_the_failed_insert() -> None:
    state = MemoryState()
    state.put(record(status=GuestStatus.PROVISIONED, object_sid=SID, exported_version=1))
    decision, [message] = apply(state, guest(given_name="Alicia"))  # a process that never met this guest
    assert decision is Decision.EXPORT
    assert state.calls == {"insert": 1, "get": 1, "replace": 1}
    saved = state.records[UID]
    assert saved.version == 2 and saved.entry.given_name == "Alicia" and saved.object_sid == SID
    assert message.version == 2 and GuestRecord.from_snapshot(message.snapshot) == saved


def test_a_guest_this_process_met_before_is_read_first_without_a_failed_insert() -> None:
    state = MemoryState()
    apply(state, guest())
    state.calls.clear()
    apply(state, guest(given_name="Alicia"))
    assert state.calls == {"get": 1, "replace": 1}


def test_caller_that_knows_a_record_exists_reads_first() -> None:
    state = MemoryState()
    state.put(record(status=GuestStatus.PROVISIONED, object_sid=SID, exported_version=1))
    apply(state, guest(given_name="Alicia"), insert_first=False)
    assert state.calls == {"get": 1, "replace": 1}


def test_member_without_a_record_is_read_and_nothing_is_written() -> None:
    state = MemoryState()
    decision, sent = apply(state, guest(user_type="Member"))
    assert decision is Decision.IGNORE and sent == []
    assert state.calls == {"get": 1} and state.records == {}


@pytest.mark.parametrize("user", [guest(user_type="Member"), guest(account_enabled=False), None])
def test_guest_leaving_scope_is_read_first_and_deprovisioned_without_snapshot(user: GraphUser | None) -> None:
    state = MemoryState()
    state.put(record(status=GuestStatus.PROVISIONED, object_sid=SID, exported_version=1))
    decision, [message] = apply(state, user)
    assert decision is Decision.OUT_OF_SCOPE
    assert state.calls == {"get": 1, "replace": 1}
    assert state.records[UID].status is GuestStatus.OUT_OF_SCOPE
    assert message.snapshot is None  # the worker reads a deprovisioning record fresh anyway


# --- export: the snapshot stands in for the read, never for a lifecycle action ------------------------------------


def test_new_guest_is_exported_from_the_snapshot_without_reading_state() -> None:
    state, directory = MemoryState(), MemoryDirectory()
    _, [message] = apply(state, guest())
    state.calls.clear()
    assert export(message, state, directory) == "created"
    assert state.calls == {"replace": 1}
    assert state.records[UID].status is GuestStatus.PROVISIONED and state.records[UID].object_sid == SID


def test_a_snapshot_that_waited_in_a_backlog_is_not_trusted_and_state_is_read() -> None:
    state, directory = MemoryState(), MemoryDirectory()
    _, [message] = apply(state, guest())
    apply(state, guest(account_enabled=False))  # the guest left while its export waited behind a backlog
    state.calls.clear()
    late = SNAPSHOT_FRESH_SECONDS + 1
    action = export_guest(message, state, directory, POLICY,  # type: ignore[arg-type]
                          now=lambda: NOW + timedelta(seconds=late), upn_suffixes=UPN_SUFFIXES).action
    assert action == "unchanged" and directory.writes == []  # no account created for a guest already gone
    assert state.calls["get"] == 1


def test_stale_snapshot_is_caught_by_the_etag_and_converges_on_the_fresh_record() -> None:
    state, directory = MemoryState(), MemoryDirectory()
    _, [stale] = apply(state, guest())
    apply(state, guest(given_name="Alicia"))  # a newer change is saved before the first export runs
    state.calls.clear()
    # Created from the stale snapshot; the save conflicts; re-run on fresh state: the account it created (it
    # carries guestsync's mark) is joined and updated.
    assert export(stale, state, directory) == "joined"
    assert directory.writes == ["create", "update"]
    assert directory.accounts[UID].attributes["givenName"] == "Alicia"
    fresh = state.records[UID]
    assert fresh.status is GuestStatus.PROVISIONED and fresh.exported_version == fresh.version == 2
    assert state.calls == {"replace": 2, "get": 1}


def test_stale_snapshot_never_restores_an_archived_account() -> None:
    state, directory = MemoryState(), MemoryDirectory()
    live = record(status=GuestStatus.PROVISIONED, object_sid=SID, exported_version=1)
    back = state.put(live.evolve(status=GuestStatus.PENDING, reason="guest is back in scope"))
    # Since that message was sent, the guest left again and its account went back to the archive.
    state.put(back.evolve(status=GuestStatus.ARCHIVED, reason="user was deleted", archived_at=NOW))
    directory.add(f"CN={UID},{ARCHIVE_OU}", GUEST_USER_ACCOUNT_CONTROL | UAC_ACCOUNTDISABLE, desired(live))
    assert export(message_for(back), state, directory) == "unchanged"
    assert directory.writes == []
    assert state.calls["get"] == 1 and state.records[UID].status is GuestStatus.ARCHIVED


def test_restore_is_planned_from_fresh_state_even_when_the_snapshot_is_current() -> None:
    state, directory = MemoryState(), MemoryDirectory()
    back = state.put(record(status=GuestStatus.PENDING, object_sid=SID, exported_version=1,
                            reason="guest is back in scope"))
    directory.add(f"CN={UID},{ARCHIVE_OU}", GUEST_USER_ACCOUNT_CONTROL | UAC_ACCOUNTDISABLE, desired(back))
    assert export(message_for(back), state, directory) == "restored"
    assert directory.writes == ["restore"] and state.calls["get"] == 1


@pytest.mark.parametrize("status", [GuestStatus.OUT_OF_SCOPE, GuestStatus.HELD, GuestStatus.ARCHIVED])
def test_deprovisioning_snapshot_is_ignored_and_fresh_state_decides(status: GuestStatus) -> None:
    state, directory = MemoryState(), MemoryDirectory()
    left = state.put(record(status=status, object_sid=SID, exported_version=1, reason="user was deleted",
                            approval=Approval.APPROVED if status is GuestStatus.HELD else None))
    state.put(left.evolve(status=GuestStatus.PROVISIONED, reason="guest is back in scope", approval=None))
    directory.add(f"CN={UID},{GUEST_OU}", GUEST_USER_ACCOUNT_CONTROL, desired(left))
    assert export(message_for(left), state, directory) == "unchanged"
    assert directory.writes == []  # never disabled from the snapshot
    assert state.calls["get"] == 1


@pytest.mark.parametrize("make", [
    lambda rec: message_for(rec, version=rec.version + 1),  # older than the message: a newer save exists
    lambda rec: ExportMessage(UID, 1, "r", "", {**rec.to_snapshot(), "Status": "bogus"}),
    lambda rec: ExportMessage(UID, 1, "r", "", {**rec.to_snapshot(), "RowKey": "someone-else"}),
    lambda rec: ExportMessage(UID, 1, "r", "", {**rec.to_snapshot(), "ETag": None}),
    lambda rec: ExportMessage(UID, 1, "r"),  # an older app's message
])
def test_unusable_snapshot_falls_back_to_reading_state(make: Any) -> None:
    state, directory = MemoryState(), MemoryDirectory()
    saved = state.put(record())
    assert export(make(saved), state, directory) == "created"
    assert state.calls == {"get": 1, "replace": 1}
