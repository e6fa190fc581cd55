"""Guest state in real Table Storage (Azurite): round trip, ETag concurrency, hostile values."""

from datetime import UTC, datetime

import pytest

from shared.adapters.queues import MessageQueue
from shared.adapters.state import StateStore
from shared.core.domain import GraphUser, GuestStatus
from shared.core.messages import ChangeMessage, ExportMessage
from shared.core.records import ConcurrencyError, GuestRecord
from shared.core.rules import inbound

UID = "6ea91a8d-e32e-41a1-b7bd-d2d185eed0e0"


@pytest.fixture
def store(azurite, storage_names) -> StateStore:
    return StateStore.from_connection_string(azurite.connection_string, storage_names["GUESTSYNC_STATE_TABLE"])


def record(**user: object) -> GuestRecord:
    values: dict[str, object] = {"id": UID, "user_type": "Guest", "display_name": "Alice"}
    values.update(user)
    entry = inbound(GraphUser(**values))  # type: ignore[arg-type]
    return GuestRecord(uid=UID, entry=entry, notified_at=datetime(2026, 1, 1, tzinfo=UTC))


def test_round_trip_keeps_every_field(store: StateStore) -> None:
    hostile = 'Evil, Corp =*)(|(uid=*)\\ 🙂 ' + "x" * 300
    saved = store.save(record(display_name=hostile, given_name="Zoë"))
    loaded = store.get(UID)
    assert loaded == saved
    assert loaded is not None and loaded.entry.display_name == hostile
    assert loaded.notified_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert loaded.status is GuestStatus.PENDING and loaded.etag


def test_stale_etag_is_a_conflict_not_an_overwrite(store: StateStore) -> None:
    first = store.save(record())
    newer = store.save(first.evolve(version=2))
    with pytest.raises(ConcurrencyError):
        store.save(first.evolve(version=3))  # written from an outdated read
    assert store.get(UID).version == 2  # type: ignore[union-attr]
    assert newer.version == 2


def test_double_insert_is_a_conflict(store: StateStore) -> None:
    store.save(record())
    with pytest.raises(ConcurrencyError):
        store.save(record())


def test_clearing_a_field_removes_it(store: StateStore) -> None:
    saved = store.save(record().evolve(error="boom"))
    store.save(saved.evolve(error=None))
    assert store.get(UID).error is None  # type: ignore[union-attr]


def test_iteration_and_counts(store: StateStore) -> None:
    ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(5)]
    for i, uid in enumerate(ids):
        rec = record(id=uid)
        store.save(GuestRecord(uid=uid, entry=rec.entry,
                               status=GuestStatus.PROVISIONED if i % 2 else GuestStatus.PENDING))
    assert sorted(r.uid for r in store) == ids
    assert store.counts() == {"pending": 3, "provisioned": 2}


def test_queue_messages_round_trip_base64(azurite, storage_names) -> None:
    queue = MessageQueue.from_connection_string(azurite.connection_string, storage_names["GUESTSYNC_EXPORT_QUEUE"])
    queue.send(ExportMessage(UID, 3, "new guest").to_json())
    queue.send(ChangeMessage(UID, "updated", "2026-01-01T00:00:00+00:00").to_json())
    peeked = queue.peek()
    assert ExportMessage.from_json(peeked[0]) == ExportMessage(UID, 3, "new guest")
    assert ChangeMessage.from_json(peeked[1]).received == datetime(2026, 1, 1, tzinfo=UTC)
    assert queue.approximate_count() == 2


@pytest.mark.parametrize("raw", ["[]", '{"uid": 1, "version": 1}', '{"uid": "x"}'])
def test_bad_export_messages_are_refused(raw: str) -> None:
    with pytest.raises(ValueError):
        ExportMessage.from_json(raw)


def test_planning_records_carry_what_planning_reads_and_cannot_be_saved(store: StateStore) -> None:
    from shared.core.domain import Approval

    full = store.save(record().evolve(status=GuestStatus.HELD, version=4, exported_version=3, reason="left",
                                      error="held by the breaker", object_sid="S-1-5-21-1-2-3-1105",
                                      dn=f"CN={UID},OU=B2BGuest,DC=contoso,DC=com", sam_account_name="alice",
                                      domain="CONTOSO", archived_at=datetime(2026, 2, 1, tzinfo=UTC),
                                      approval=Approval.APPROVED, latency_ms=12, warnings="w"))
    [view] = list(store.planning_records())
    assert view.etag is None
    assert (view.uid, view.entry, view.status, view.version, view.reason, view.error, view.object_sid, view.dn,
            view.archived_at, view.approval) == (full.uid, full.entry, full.status, full.version, full.reason,
                                                 full.error, full.object_sid, full.dn, full.archived_at,
                                                 full.approval)
    assert view.sam_account_name is None and view.notified_at is None and view.latency_ms is None
    with pytest.raises(ConcurrencyError):  # a partial view never overwrites the full record
        store.save(view)
    assert store.get(UID) == full
