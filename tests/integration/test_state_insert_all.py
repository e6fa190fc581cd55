"""StateStore.insert_all against real Table Storage (Azurite): one entity group transaction, all or none, and
ETags a later replace can be guarded by."""

from __future__ import annotations

import uuid

import pytest

from shared.adapters.state import MAX_TRANSACTION, StateStore
from shared.core.domain import GraphUser, GuestStatus
from shared.core.records import ConcurrencyError, GuestRecord
from shared.core.rules import inbound
from shared.settings import StorageSettings

pytestmark = pytest.mark.integration


def new_record() -> GuestRecord:
    uid = str(uuid.uuid4())
    user = GraphUser(id=uid, user_type="Guest", display_name="Guest", given_name="G", surname="N",
                     user_principal_name=f"{uid[:8]}_fabrikam.com#EXT#@contoso.com", mail=f"{uid[:8]}@fabrikam.com",
                     account_enabled=True)
    return GuestRecord(uid=uid, entry=inbound(user), reason="new guest")


@pytest.fixture
def state(azurite, storage_names) -> StateStore:
    return StateStore.from_settings(StorageSettings(connection_string=azurite.connection_string),
                                    storage_names["GUESTSYNC_STATE_TABLE"])


def test_all_are_inserted_with_etags_that_guard_the_next_write(state: StateStore) -> None:
    records = [new_record() for _ in range(15)]
    saved = state.insert_all(records)
    assert [r.uid for r in saved] == [r.uid for r in records]
    for record in saved:
        stored = state.get(record.uid)
        assert stored is not None and stored.etag == record.etag and stored.entry == record.entry
    state.save(saved[0].evolve(status=GuestStatus.PROVISIONED))  # the ETag it returned is the entity's
    with pytest.raises(ConcurrencyError):
        state.save(saved[0].evolve(status=GuestStatus.ERROR))  # and now stale


def test_one_existing_guest_fails_the_transaction_and_nothing_is_written(state: StateStore) -> None:
    records = [new_record() for _ in range(5)]
    state.save(records[3])
    with pytest.raises(ConcurrencyError) as failed:
        state.insert_all(records)
    assert str(failed.value) == records[3].uid  # the one that exists
    assert [state.get(r.uid) is not None for r in records] == [False, False, False, True, False]


def test_what_one_transaction_cannot_hold_is_refused_before_anything_is_sent(state: StateStore) -> None:
    with pytest.raises(ValueError):
        state.insert_all([new_record() for _ in range(MAX_TRANSACTION + 1)])
    one = new_record()
    with pytest.raises(ValueError):
        state.insert_all([one, one.evolve(uid=one.uid.upper())])  # the same entity twice
    with pytest.raises(ValueError):
        state.insert_all([one.evolve(etag='W/"1"')])  # not new
    assert state.get(one.uid) is None
    assert state.insert_all([]) == []
