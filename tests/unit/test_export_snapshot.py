"""Fewer storage transactions per guest change: apply inserts a new guest without reading it first, and the export
message carries the saved record (a snapshot with its ETag) so the worker need not read it again. The shared
in-memory fakes (tests/fakes.py) have Table Storage's ETag semantics; the real table is exercised in
tests/integration/test_export_snapshot.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.core.ad_rules import fit_cosmetic
from shared.core.domain import (
    GUEST_USER_ACCOUNT_CONTROL,
    UAC_ACCOUNTDISABLE,
    Approval,
    GraphUser,
    GuestStatus,
)
from shared.core.messages import MAX_SNAPSHOT_CHARS, ExportMessage
from shared.core.records import GuestRecord
from shared.core.rules import Decision, inbound, outbound_persistent
from shared.services.apply import KNOWN_RECORDS, apply_user
from shared.services.export import SNAPSHOT_FRESH_SECONDS, export_guest
from shared.settings import DeprovisioningSettings
from tests.fakes import ARCHIVE_OU, GUEST_OU, MemoryDirectory, MemoryGuestStore

UID = "6ea91a8d-e32e-41a1-b7bd-d2d185eed0e0"
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


#: The guests' UPN suffix, allowed as the worker allows it (GUESTSYNC_UPN_SUFFIXES and the initial domain).
UPN_SUFFIXES = ("contoso.com",)


def desired(rec: GuestRecord) -> dict[str, str | None]:
    return fit_cosmetic(outbound_persistent(rec.entry))[0]


def export(message: ExportMessage, state: MemoryGuestStore, directory: MemoryDirectory) -> str:
    return export_guest(message, state, directory, POLICY, now=lambda: NOW, upn_suffixes=UPN_SUFFIXES).action


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


def apply(state: MemoryGuestStore, user: GraphUser | None, **kwargs: Any) -> tuple[Decision, list[ExportMessage]]:
    sent: list[str] = []
    plan = apply_user(UID, user, state, sent.append, in_group=None, removed=None, read_at=NOW, **kwargs)
    return plan.decision, [ExportMessage.from_json(m) for m in sent]


def test_new_guest_is_inserted_without_reading_state_and_the_export_carries_it() -> None:
    state = MemoryGuestStore()
    decision, [message] = apply(state, guest())
    assert decision is Decision.EXPORT
    assert state.calls == {"insert": 1}
    assert message.snapshot is not None
    assert GuestRecord.from_snapshot(message.snapshot).etag == state.records[UID].etag


def test_known_guest_falls_back_to_read_and_replan_after_the_failed_insert() -> None:
    state = MemoryGuestStore()
    state.put(record(status=GuestStatus.PROVISIONED, object_sid=SID, exported_version=1))
    decision, [message] = apply(state, guest(given_name="Alicia"))  # a process that never met this guest
    assert decision is Decision.EXPORT
    assert state.calls == {"insert": 1, "get": 1, "replace": 1}
    saved = state.records[UID]
    assert saved.version == 2 and saved.entry.given_name == "Alicia" and saved.object_sid == SID
    assert message.version == 2 and GuestRecord.from_snapshot(message.snapshot) == saved


def test_a_guest_this_process_met_before_is_read_first_without_a_failed_insert() -> None:
    state = MemoryGuestStore()
    apply(state, guest())
    state.calls.clear()
    apply(state, guest(given_name="Alicia"))
    assert state.calls == {"get": 1, "replace": 1}


def test_caller_that_knows_a_record_exists_reads_first() -> None:
    state = MemoryGuestStore()
    state.put(record(status=GuestStatus.PROVISIONED, object_sid=SID, exported_version=1))
    apply(state, guest(given_name="Alicia"), insert_first=False)
    assert state.calls == {"get": 1, "replace": 1}


def test_member_without_a_record_is_read_and_nothing_is_written() -> None:
    state = MemoryGuestStore()
    decision, sent = apply(state, guest(user_type="Member"))
    assert decision is Decision.IGNORE and sent == []
    assert state.calls == {"get": 1} and state.records == {}


@pytest.mark.parametrize("user", [guest(user_type="Member"), guest(account_enabled=False), None])
def test_guest_leaving_scope_is_read_first_and_deprovisioned_without_snapshot(user: GraphUser | None) -> None:
    state = MemoryGuestStore()
    state.put(record(status=GuestStatus.PROVISIONED, object_sid=SID, exported_version=1))
    decision, [message] = apply(state, user)
    assert decision is Decision.OUT_OF_SCOPE
    assert state.calls == {"get": 1, "replace": 1}
    assert state.records[UID].status is GuestStatus.OUT_OF_SCOPE
    assert message.snapshot is None  # the worker reads a deprovisioning record fresh anyway


# --- export: the snapshot stands in for the read, never for a lifecycle action ------------------------------------


def test_new_guest_is_exported_from_the_snapshot_without_reading_state() -> None:
    state, directory = MemoryGuestStore(), MemoryDirectory()
    _, [message] = apply(state, guest())
    state.calls.clear()
    assert export(message, state, directory) == "created"
    assert state.calls == {"replace": 1}
    assert state.records[UID].status is GuestStatus.PROVISIONED and state.records[UID].object_sid == SID


def test_a_snapshot_that_waited_in_a_backlog_is_not_trusted_and_state_is_read() -> None:
    state, directory = MemoryGuestStore(), MemoryDirectory()
    _, [message] = apply(state, guest())
    apply(state, guest(account_enabled=False))  # the guest left while its export waited behind a backlog
    state.calls.clear()
    late = SNAPSHOT_FRESH_SECONDS + 1
    action = export_guest(message, state, directory, POLICY,
                          now=lambda: NOW + timedelta(seconds=late), upn_suffixes=UPN_SUFFIXES).action
    assert action == "unchanged" and directory.writes == []  # no account created for a guest already gone
    assert state.calls["get"] == 1


def test_stale_snapshot_is_caught_by_the_etag_and_converges_on_the_fresh_record() -> None:
    state, directory = MemoryGuestStore(), MemoryDirectory()
    _, [stale] = apply(state, guest())
    apply(state, guest(given_name="Alicia"))  # a newer change is saved before the first export runs
    state.calls.clear()
    # Created from the stale snapshot; the save conflicts; re-run on fresh state: the account it created (it
    # carries guestsync's mark) is joined and updated.
    assert export(stale, state, directory) == "joined"
    assert directory.writes == ["create", "update"]
    account = directory.account(UID)
    assert account is not None and account.attributes["givenName"] == "Alicia"
    fresh = state.records[UID]
    assert fresh.status is GuestStatus.PROVISIONED and fresh.exported_version == fresh.version == 2
    assert state.calls == {"replace": 2, "get": 1}


def test_stale_snapshot_never_restores_an_archived_account() -> None:
    state, directory = MemoryGuestStore(), MemoryDirectory()
    live = record(status=GuestStatus.PROVISIONED, object_sid=SID, exported_version=1)
    back = state.put(live.evolve(status=GuestStatus.PENDING, reason="guest is back in scope"))
    # Since that message was sent, the guest left again and its account went back to the archive.
    state.put(back.evolve(status=GuestStatus.ARCHIVED, reason="user was deleted", archived_at=NOW))
    directory.add(f"CN={UID},{ARCHIVE_OU}", desired(live), sid=SID,
                  user_account_control=GUEST_USER_ACCOUNT_CONTROL | UAC_ACCOUNTDISABLE)
    assert export(message_for(back), state, directory) == "unchanged"
    assert directory.writes == []
    assert state.calls["get"] == 1 and state.records[UID].status is GuestStatus.ARCHIVED


def test_restore_is_planned_from_fresh_state_even_when_the_snapshot_is_current() -> None:
    state, directory = MemoryGuestStore(), MemoryDirectory()
    back = state.put(record(status=GuestStatus.PENDING, object_sid=SID, exported_version=1,
                            reason="guest is back in scope"))
    directory.add(f"CN={UID},{ARCHIVE_OU}", desired(back), sid=SID,
                  user_account_control=GUEST_USER_ACCOUNT_CONTROL | UAC_ACCOUNTDISABLE)
    assert export(message_for(back), state, directory) == "restored"
    assert directory.writes == ["restore"] and state.calls["get"] == 1


@pytest.mark.parametrize("status", [GuestStatus.OUT_OF_SCOPE, GuestStatus.HELD, GuestStatus.ARCHIVED])
def test_deprovisioning_snapshot_is_ignored_and_fresh_state_decides(status: GuestStatus) -> None:
    state, directory = MemoryGuestStore(), MemoryDirectory()
    left = state.put(record(status=status, object_sid=SID, exported_version=1, reason="user was deleted",
                            approval=Approval.APPROVED if status is GuestStatus.HELD else None))
    state.put(left.evolve(status=GuestStatus.PROVISIONED, reason="guest is back in scope", approval=None))
    directory.add(f"CN={UID},{GUEST_OU}", desired(left), user_account_control=GUEST_USER_ACCOUNT_CONTROL, sid=SID)
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
    state, directory = MemoryGuestStore(), MemoryDirectory()
    saved = state.put(record())
    assert export(make(saved), state, directory) == "created"
    assert state.calls == {"get": 1, "replace": 1}
