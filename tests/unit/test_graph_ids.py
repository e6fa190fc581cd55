"""Graph ids are keyed in lower case wherever they enter (issue 10, item 4). The end-to-end proof against the
real stack is tests/integration/test_graph_id_case.py; these pin each entry point on its own."""

from __future__ import annotations

import json

from shared import cli
from shared.core.domain import GraphUser, graph_id
from shared.core.messages import ChangeMessage, ExportMessage
from shared.core.notifications import parse_change_notifications
from shared.core.records import GuestRecord
from shared.core.rules import inbound

UID = "6ea91a8d-e32e-41a1-b7bd-d2d185eed0e0"
UPPER = UID.upper()


def test_graph_id_is_lower_case() -> None:
    assert graph_id(UPPER) == UID and graph_id(f" {UPPER}\n") == UID


def test_inbound_keys_the_metaverse_entry_in_lower_case() -> None:
    entry = inbound(GraphUser(id=UPPER, user_type="Guest", user_principal_name="a_b.com#EXT#@c.onmicrosoft.com"))
    assert (entry.uid, entry.cn, entry.account_name) == (UID, UID, UID[:20])


def test_state_record_row_key_is_lower_case() -> None:
    record = GuestRecord(uid=UPPER, entry=inbound(GraphUser(id=UID, user_type="Guest")))
    assert record.uid == UID and record.to_entity()["RowKey"] == UID
    assert record.evolve(uid=UPPER).uid == UID


def test_queue_messages_carry_lower_case_ids() -> None:
    change = ChangeMessage.from_json(json.dumps({"user_id": UPPER, "change_type": "updated",
                                                 "more_user_ids": [UPPER.replace("6EA", "7EA")]}))
    assert change.user_ids == (UID, UID.replace("6ea", "7ea"))
    assert ExportMessage.from_json(json.dumps({"uid": UPPER, "version": 3, "reason": "x"})).uid == UID


def test_notifications_carry_lower_case_ids() -> None:
    body = {"value": [{"clientState": "cs", "changeType": "updated", "resource": f"Users/{UPPER}",
                       "subscriptionId": "s"},
                      {"clientState": "cs", "changeType": "updated", "resource": "Users/x",
                       "resourceData": {"id": UPPER}, "subscriptionId": "s"}]}
    batch = parse_change_notifications(json.dumps(body).encode(), client_states=("cs",), tenant_id=None)
    assert [c.user_id for c in batch.accepted] == [UID, UID]


def test_cli_approve_reads_ids_in_any_case() -> None:
    args = cli.build_parser().parse_args(["approve", UPPER, f"{UID}"])
    assert args.uid == [UID, UID]
