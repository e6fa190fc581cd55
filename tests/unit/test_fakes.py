"""The shared fakes (tests/fakes.py) behave as the adapters do where a service can tell. Each test names the
integration test that shows the same behaviour of the real adapter (Azurite, Samba AD, the Graph simulator)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import pytest

from shared.core.domain import (
    GUEST_USER_ACCOUNT_CONTROL,
    UAC_ACCOUNTDISABLE,
    ConfigurationError,
    GraphUser,
    GuestStatus,
)
from shared.core.errors import (
    AccountExistsError,
    AccountNotFoundError,
    ConstraintError,
    DeltaExpiredError,
    DirectoryError,
    GraphNotFoundError,
    GraphThrottledError,
    OutsideManagedOuError,
)
from shared.core.records import ConcurrencyError, GuestRecord
from shared.core.rules import inbound
from shared.core.unit_of_work import Change, change_guest, change_meta
from tests.fakes import (
    ARCHIVE_OU,
    FIRST_SID,
    GUEST_OU,
    MemoryDirectory,
    MemoryGraph,
    MemoryGuestStore,
    MemoryQueue,
)

UID = "6ea91a8d-e32e-41a1-b7bd-d2d185eed0e0"
OTHER = "00000000-0000-4000-8000-000000000002"
T = TypeVar("T")


def record(uid: str = UID, **changes: Any) -> GuestRecord:
    return GuestRecord(uid=uid, entry=inbound(GraphUser(id=uid, user_type="Guest", display_name="Alice")),
                       reason="new guest").evolve(**changes)


def attributes(n: int = 1) -> dict[str, str | None]:
    return {"sAMAccountName": f"guest{n}", "userPrincipalName": f"guest{n}@contoso.com", "givenName": "Alice"}


# --- guest store: tests/integration/test_state.py ------------------------------------------------------------------


def test_stale_etag_is_a_conflict_not_an_overwrite() -> None:
    """As test_state.test_stale_etag_is_a_conflict_not_an_overwrite."""
    store = MemoryGuestStore()
    first = store.save(record())
    newer = store.save(first.evolve(version=2))
    with pytest.raises(ConcurrencyError):
        store.save(first.evolve(version=3))  # written from an outdated read
    stored = store.get(UID)
    assert stored is not None and stored.version == 2 and newer.version == 2 and newer.etag != first.etag


def test_double_insert_and_a_replace_of_a_deleted_record_are_conflicts() -> None:
    """As test_state.test_double_insert_is_a_conflict; a replace after a delete is Table Storage's 404."""
    store = MemoryGuestStore()
    saved = store.save(record())
    with pytest.raises(ConcurrencyError):
        store.save(record())
    store.delete(UID)
    with pytest.raises(ConcurrencyError):
        store.save(saved.evolve(version=2))
    assert store.get(UID) is None
    assert store.calls == {"insert": 2, "replace": 1, "delete": 1, "get": 1}


def test_planning_records_have_no_etag_and_cannot_be_saved() -> None:
    """As test_state.test_planning_records_carry_what_planning_reads_and_cannot_be_saved."""
    store = MemoryGuestStore()
    full = store.save(record(status=GuestStatus.HELD, version=4, sam_account_name="alice", latency_ms=12))
    [view] = list(store.planning_records())
    assert view.etag is None and view.version == 4 and view.status is GuestStatus.HELD
    assert view.sam_account_name is None and view.latency_ms is None  # not a planning property
    with pytest.raises(ConcurrencyError):
        store.save(view)
    assert store.get(UID) == full


def test_iteration_counts_and_status_queries() -> None:
    """As test_state.test_iteration_and_counts."""
    store = MemoryGuestStore()
    ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(5)]
    for i, uid in enumerate(reversed(ids)):
        store.save(record(uid, status=GuestStatus.PROVISIONED if i % 2 else GuestStatus.PENDING))
    assert [r.uid for r in store] == ids  # RowKey order
    assert store.counts() == {"pending": 3, "provisioned": 2}
    assert {r.uid for r in store.with_status(GuestStatus.PROVISIONED)} == {ids[3], ids[1]}


def test_meta_documents_are_etag_guarded_and_listed_by_prefix() -> None:
    store = MemoryGuestStore()
    assert store.get_meta("breaker") == ({}, None)
    etag = store.save_meta("breaker", {"window": [1]}, None)
    with pytest.raises(ConcurrencyError):
        store.save_meta("breaker", {"window": [2]}, None)  # must not exist yet
    newer = store.save_meta("breaker", {"window": [1, 2]}, etag)
    with pytest.raises(ConcurrencyError):
        store.save_meta("breaker", {"window": [3]}, etag)  # stale
    assert store.get_meta("breaker") == ({"window": [1, 2]}, newer)
    store.put_meta("agent-b", {"at": 2})
    store.put_meta("agent-a", {"at": 1})
    assert list(store.list_meta("agent-")) == [("agent-a", {"at": 1}), ("agent-b", {"at": 2})]
    store.delete_meta("agent-a")
    store.delete_meta("agent-a")  # already gone: no error, as the adapter
    assert [name for name, _ in store.list_meta("agent-")] == ["agent-b"]


def test_the_unit_of_work_converges_when_other_writers_win_races() -> None:
    """Lost races are retried with a fresh read until the write lands (shared.core.unit_of_work)."""
    store = MemoryGuestStore()
    store.put(record(version=1))
    store.conflicts = 3
    committed = change_guest(store, UID, lambda r: Change("bumped", r.evolve(version=r.version + 1) if r else None))
    assert committed.result == "bumped" and committed.saved is not None and committed.saved.version == 2
    assert store.calls == {"get": 4, "replace": 4}
    store.conflicts = 2
    assert change_meta(store, "digest", lambda body: ({**body, "n": body.get("n", 0) + 1}, "ok")) == "ok"
    assert store.get_meta("digest")[0] == {"n": 1}
    store.conflicts = 100
    with pytest.raises(ConcurrencyError, match="kept changing"):
        change_meta(store, "digest", lambda body: ({"n": 9}, None))


# --- directory: tests/integration/test_directory.py and test_directory_lifecycle.py ------------------------------


def test_create_twice_is_account_exists_and_the_account_carries_the_mark() -> None:
    """As test_directory.test_create_twice_raises_account_exists."""
    directory = MemoryDirectory()
    account = directory.create_guest(UID, attributes(), "pw", GUEST_USER_ACCOUNT_CONTROL)
    assert account.dn == f"CN={UID},{GUEST_OU}" and account.object_sid == FIRST_SID and account.marked
    with pytest.raises(AccountExistsError, match="already exists"):
        directory.create_guest(UID, attributes(2), "pw", GUEST_USER_ACCOUNT_CONTROL)
    assert directory.find_guest(UID) == account and directory.find_by_sid(FIRST_SID) == account
    assert directory.find_guest(OTHER) is None
    assert directory.writes == ["create"]


def test_only_the_mark_of_this_guest_under_a_known_key_makes_an_account_ours() -> None:
    """As test_takeover.test_a_planted_user_is_not_taken_over_until_an_operator_adopts_it: an unmarked account,
    or one carrying another guest's mark, is not guestsync's; a mark under the previous key still counts."""
    directory = MemoryDirectory()
    directory.add(f"CN={UID},{GUEST_OU}", attributes(1), marked=False)
    directory.add(f"CN={OTHER},{GUEST_OU}", attributes(2), uid=UID)  # a copy of UID's mark on OTHER
    unmarked, copied = directory.find_guest(UID), directory.find_guest(OTHER)
    assert unmarked is not None and not unmarked.marked and copied is not None and not copied.marked
    directory.mark_owned(unmarked, UID)
    assert directory.find_guest(UID).marked and directory.writes == ["mark"]  # type: ignore[union-attr]
    rotated = MemoryDirectory(keys=("new-key", directory.keys[0]))
    rotated.objects = directory.objects
    assert rotated.find_guest(UID).marked  # type: ignore[union-attr]
    forgotten = MemoryDirectory(keys=("new-key",))  # the old key dropped: its marks no longer count
    forgotten.objects = directory.objects
    assert not forgotten.find_guest(UID).marked  # type: ignore[union-attr]


def test_duplicates_and_limits_are_constraint_errors() -> None:
    """As test_directory.test_duplicate_upn_is_a_readable_constraint_error and its sAMAccountName twin."""
    directory = MemoryDirectory()
    directory.create_guest(UID, attributes(1), "pw", GUEST_USER_ACCOUNT_CONTROL)
    with pytest.raises(ConstraintError, match=r"userPrincipalName 'GUEST1@contoso\.com' is already used"):
        directory.create_guest(OTHER, {**attributes(2), "userPrincipalName": "GUEST1@contoso.com"}, "pw", 512)
    with pytest.raises(ConstraintError, match="sAMAccountName 'guest1' is already in use"):
        directory.create_guest(OTHER, {**attributes(2), "sAMAccountName": "guest1"}, "pw", 512)
    with pytest.raises(ConstraintError):
        directory.create_guest(OTHER, {**attributes(2), "sAMAccountName": "s" * 21}, "pw", 512)
    with pytest.raises(ValueError, match="unicodePwd"):
        directory.update_guest(f"CN={UID},{GUEST_OU}", {"unicodePwd": "x"})
    assert directory.writes == ["create"]


def test_update_of_a_vanished_account_is_not_found_and_outside_the_ou_is_refused() -> None:
    """As test_directory.test_update_of_a_vanished_account_is_not_found and
    test_write_outside_the_managed_ou_is_refused_without_sending."""
    directory = MemoryDirectory()
    with pytest.raises(AccountNotFoundError):
        directory.update_guest(f"CN={UID},{GUEST_OU}", {"givenName": "Alicia"})
    with pytest.raises(OutsideManagedOuError):
        directory.update_guest(f"CN={UID},OU=Staff,DC=contoso,DC=com", {"givenName": "Alicia"})
    with pytest.raises(OutsideManagedOuError):
        directory.adopt_guest(f"CN={OTHER},{GUEST_OU}", UID, attributes(), "pw", 512)  # CN is not the guest
    assert directory.writes == []


def test_archive_and_restore_keep_the_sid_and_repeat_without_writes() -> None:
    """As test_directory_lifecycle: disable_and_archive / restore keep the objectSid, are idempotent, and a name
    clash in the target OU is AccountExistsError before any write."""
    directory = MemoryDirectory()
    created = directory.create_guest(UID, attributes(), "pw", GUEST_USER_ACCOUNT_CONTROL)
    archived = directory.disable_and_archive(created.dn)
    assert archived.dn == f"CN={UID},{ARCHIVE_OU}" and archived.object_sid == created.object_sid
    assert archived.disabled and directory.find_guest(UID) is None
    assert directory.disable_and_archive(created.dn) == archived  # gone from the guest OU: found in the archive
    directory.release_upn(archived.dn)
    with pytest.raises(OutsideManagedOuError):
        directory.release_upn(created.dn)  # only archived accounts give their UPN up
    directory.add(f"CN={UID},{GUEST_OU}", attributes(2))  # a new object took the name meanwhile
    with pytest.raises(AccountExistsError):
        directory.restore_guest(archived.dn)
    directory.delete_guest(f"CN={UID},{GUEST_OU}")
    restored = directory.restore_guest(archived.dn)
    assert restored.dn == created.dn and restored.object_sid == created.object_sid
    assert restored.user_account_control == GUEST_USER_ACCOUNT_CONTROL & ~UAC_ACCOUNTDISABLE
    assert "userPrincipalName" not in restored.attributes
    assert directory.writes == ["create", "disable", "release_upn", "delete", "restore"]
    with pytest.raises(AccountNotFoundError, match="there is no user account at"):
        directory.disable_and_archive(f"CN={OTHER},{GUEST_OU}")
    directory.delete_guest(f"CN={OTHER},{GUEST_OU}")  # nothing there: success


def test_non_person_objects_block_the_name_but_are_not_accounts() -> None:
    directory = MemoryDirectory()
    directory.add(f"CN={UID},{GUEST_OU}", {}, person=False)
    assert directory.find_guest(UID) is None and directory.holder_of(UID) == f"CN={UID},{GUEST_OU}"
    with pytest.raises(AccountExistsError):
        directory.create_guest(UID, attributes(), "pw", 512)
    with pytest.raises(DirectoryError, match="not a user account"):
        directory.delete_guest(f"CN={UID},{GUEST_OU}")
    assert list(directory.iter_managed_accounts()) == []


def test_lifecycle_needs_the_archive_ou() -> None:
    """As test_directory_lifecycle.test_lifecycle_needs_the_archive_ou."""
    guest_only = MemoryDirectory(archive_ou=None)
    with pytest.raises(ConfigurationError, match="AD_ARCHIVE_OU is not set"):
        guest_only.disable_and_archive(f"CN={UID},{GUEST_OU}")


# --- Graph: tests/integration/test_graph_users.py and test_graph_groups.py -----------------------------------------


async def _pages(graph: MemoryGraph, link: str | None) -> list[Any]:
    return [page async for page in graph.delta(link)]


async def _all(items: AsyncIterator[T]) -> list[T]:
    return [item async for item in items]


def test_delta_gives_everyone_then_only_changes_and_refuses_an_unknown_link() -> None:
    alice, bob = GraphUser(id=UID, user_type="Guest"), GraphUser(id=OTHER, user_type="Guest")
    graph = MemoryGraph([alice, bob], page_size=1)
    first = asyncio.run(_pages(graph, None))
    assert [u.id for p in first for u in p.users] == [OTHER, UID]
    assert first[0].next_link and first[0].delta_link is None and first[-1].delta_link
    graph.set_user(GraphUser(id=UID, user_type="Member"))
    graph.remove_user(OTHER)
    [changes] = asyncio.run(_pages(graph, first[-1].delta_link))
    assert [u.user_type for u in changes.users] == ["Member"] and changes.removed == [(OTHER, "deleted")]
    graph.expire_delta_links()
    with pytest.raises(DeltaExpiredError):
        asyncio.run(_pages(graph, changes.delta_link))


def test_users_groups_and_failures_answer_as_the_adapter() -> None:
    graph = MemoryGraph([GraphUser(id=UID.upper())], groups={"g": [UID]})
    assert asyncio.run(graph.get_user(UID)) is not None and asyncio.run(graph.get_user(OTHER)) is None
    assert asyncio.run(graph.get_users([UID, OTHER])) == {UID: GraphUser(id=UID.upper()), OTHER: None}
    assert asyncio.run(graph.is_group_member(UID, "g")) is True
    assert asyncio.run(graph.is_group_member(UID, "unknown")) is False  # as checkMemberGroups answers
    assert asyncio.run(graph.is_group_member(OTHER, "g")) is None
    assert asyncio.run(_all(graph.iter_group_member_ids("g"))) == [UID]
    with pytest.raises(GraphNotFoundError):
        asyncio.run(_all(graph.iter_group_member_ids("unknown")))
    graph.fail_with = GraphThrottledError(429, "TooManyRequests", "slow down")
    with pytest.raises(GraphThrottledError):
        asyncio.run(graph.get_user(UID))


def test_queue_keeps_each_message_with_its_delay() -> None:
    queue = MemoryQueue()
    queue.send("a")
    queue.send("b", delay_seconds=30)
    assert queue.sent == [("a", None), ("b", 30)] and queue.texts == ["a", "b"]
