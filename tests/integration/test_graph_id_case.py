"""Graph ids in any letter case, end to end (issue 10, item 4).

Graph object ids are GUIDs that Graph matches whatever their case, and some answers write them in upper case.
guestsync keys a guest by its id (state RowKey, queue messages, ``CN=<id>``), so an id compared as received
turned a batch read that answered ``7F3A…`` for the ``7f3a…`` it asked for into "the guest is gone" (a
disable), and gave a new guest an upper-case state key that its next change could never find again (repeated
ConcurrencyErrors, then the poison queue). The Graph simulator's ``id_case`` switch writes every id it returns
in upper case; guestsync must keep one lower-case key per guest either way.
"""

from __future__ import annotations

from typing import Any

import ldap3
import pytest
from azure.data.tables import TableServiceClient

from shared import bootstrap
from shared.core.domain import GuestStatus
from tests.plugins.stack import Stack
from tests.reliability.faults import notification, poisoned, post

pytestmark = pytest.mark.integration


def _row_keys() -> list[str]:
    """Every guest RowKey in the state table, as stored."""
    settings = bootstrap.services().settings
    with TableServiceClient.from_connection_string(str(settings.storage.connection_string)) as service:
        table = service.get_table_client(settings.state_table)
        return [str(e["RowKey"]) for e in table.query_entities("PartitionKey eq 'guest'", select=["RowKey"])]


def _accounts(stack: Stack) -> dict[str, tuple[str, dict[str, Any]]]:
    """Every user object below the domain (both managed OUs), by cn as AD returns it: (dn, attributes)."""
    base = stack.guest_ou.split(",", 1)[1]
    stack.admin.search(base, "(&(objectClass=user)(|(cn=*-*-*-*-*)))", ldap3.SUBTREE,
                       attributes=["cn", "givenName", "userAccountControl"])
    return {str(e.cn.value): (e.entry_dn, e.entry_attributes_as_dict) for e in stack.admin.entries}


def _provision(stack: Stack, *emails: str) -> list[str]:
    sim: Any = stack.sim
    uids = [sim.invite_guest(email, email.split("@")[0].title(), "Given", "Sur")["id"] for email in emails]
    stack.wait(lambda: stack.settled(uids), f"{len(uids)} account(s)")
    return uids


def test_batch_read_answering_upper_case_ids_keeps_provisioned_guests(stack: Stack) -> None:
    """Two changes of one notification POST are read together (``id in (…)``); Graph answers in upper case."""
    sim: Any = stack.sim
    uids = _provision(stack, "anna@fabrikam.com", "bert@fabrikam.com")
    sim.id_case = "upper"
    sim.drop_next_notifications(2)  # the simulator's own deliveries: one POST with both is sent below instead
    for uid in uids:
        sim.update_user(uid, givenName="Renamed")
    status, _, body = post(stack, {"value": [notification(stack, uid.upper()) for uid in uids]})
    assert status == 202, body
    stack.drain()

    assert sim.request_count["GET /users"] >= 1  # the batch read was made
    accounts = _accounts(stack)
    for uid in uids:
        record = stack.state.get(uid)
        assert record is not None
        assert record.status is GuestStatus.PROVISIONED, (record.status, record.reason, record.error)
        assert record.entry.given_name == "Renamed" and record.exported_version == record.version
        assert record.uid == uid and record.entry.uid == uid and record.entry.cn == uid
        dn, attrs = accounts[uid]
        assert dn.lower().endswith(stack.guest_ou.lower()), dn  # not archived
        assert attrs["givenName"] == ["Renamed"] and attrs["userAccountControl"] == ["262656"]
    assert sorted(_row_keys()) == sorted(uids)
    assert poisoned() == {"changes": 0, "exports": 0}


def test_new_guest_with_an_upper_case_id_gets_one_lower_case_key_and_later_changes_apply(stack: Stack) -> None:
    sim: Any = stack.sim
    sim.id_case = "upper"
    guest = sim.invite_guest("carla@fabrikam.com", "Carla", "Carla", "Sur")
    uid = guest["id"].lower()
    stack.wait(lambda: stack.settled([uid]), "the account of the guest read with an upper-case id")
    assert _row_keys() == [uid]
    record = stack.state.get(uid.upper())  # any case finds the one record
    assert record is not None and record.uid == uid and record.entry.cn == uid
    assert record.entry.account_name == uid[:20]
    assert list(_accounts(stack)) == [uid]

    # Its next change: applied, not ConcurrencyErrors into the poison queue.
    sim.update_user(guest["id"], givenName="Carlotta")
    stack.wait(lambda: (r := stack.state.get(uid)) is not None and r.entry.given_name == "Carlotta"
               and r.exported_version == r.version, "the givenName change")
    stack.drain()
    assert _accounts(stack)[uid][1]["givenName"] == ["Carlotta"]
    assert poisoned() == {"changes": 0, "exports": 0}

    # A delete that only users/delta reports (@removed, upper-case id): the reconcile archives the guest.
    stack.reconcile()  # stores the deltaLink
    sim.drop_next_notifications(1)
    sim.delete_user(guest["id"])
    stack.reconcile()
    stack.wait(lambda: (r := stack.state.get(uid)) is not None and r.status is GuestStatus.ARCHIVED, "archived")
    dn, _ = _accounts(stack)[uid]
    assert dn.lower().endswith(stack.archive_ou.lower()), dn
    assert _row_keys() == [uid]
    assert poisoned() == {"changes": 0, "exports": 0}


@pytest.mark.parametrize("stack", [{"GUESTSYNC_BREAKER_THRESHOLD": "1", "GUESTSYNC_BREAKER_WINDOW_MINUTES": "60"}],
                         indirect=True)
def test_operator_approves_a_held_guest_named_in_upper_case(stack: Stack) -> None:
    sim: Any = stack.sim
    uids = _provision(stack, "dora@fabrikam.com", "emil@fabrikam.com")
    sim.id_case = "upper"
    for uid in uids:
        sim.delete_user(uid)
    stack.wait(lambda: sorted(str(r.status) for u in uids if (r := stack.state.get(u)) is not None)
               == ["archived", "held"], "one removal archived, one held")
    stack.drain()
    (held,) = [u for u in uids if (r := stack.state.get(u)) is not None and r.status is GuestStatus.HELD]

    decided = stack.cli_json("approve", "--json", held.upper())
    answers = decided["answers"]
    assert [(a["uid"], a["outcome"]) for a in answers] == [(held, "approved")], answers
    assert set(decided) == {"held", "answers"}, decided
    stack.wait(lambda: (r := stack.state.get(held)) is not None and r.status is GuestStatus.ARCHIVED,
               "the approved removal")
    assert sorted(_row_keys()) == sorted(uids)
