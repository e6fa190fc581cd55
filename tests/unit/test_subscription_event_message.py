"""Subscription events (Graph lifecycle notifications) have a queue message of their own, and the change queue
still reads them as older code wrote them: a ChangeMessage with the subscription id in ``user_id``."""

from __future__ import annotations

import json

import pytest

from shared.core.messages import (
    ChangeMessage,
    NewerSchemaError,
    SubscriptionEventMessage,
    read_change_queue_message,
)

SUB = "7f3c2a10-0c1d-4e5f-8a9b-0c1d2e3f4a5b"


def test_a_subscription_event_round_trips_with_its_own_fields() -> None:
    message = SubscriptionEventMessage(SUB, "missed", "2026-01-01T00:00:00+00:00", correlation_id="c-1")
    assert read_change_queue_message(message.to_json()) == message
    data = json.loads(message.to_json())
    assert (data["subscription_id"], data["event"]) == (SUB, "missed")


def test_a_subscription_event_written_by_older_code_is_read() -> None:
    legacy = json.dumps({"v": 1, "user_id": SUB.upper(), "change_type": "lifecycle:subscriptionRemoved",
                         "received_at": "2026-01-01T00:00:00+00:00", "source": "lifecycle",
                         "correlation_id": "c-2"})
    assert read_change_queue_message(legacy) == SubscriptionEventMessage(
        SUB, "subscriptionRemoved", "2026-01-01T00:00:00+00:00", correlation_id="c-2")


def test_older_code_reads_a_subscription_event_written_now() -> None:
    """What the previous version's reader (ChangeMessage.from_json, then ``source == "lifecycle"``) relied on."""
    old_view = ChangeMessage.from_json(SubscriptionEventMessage(SUB, "reauthorizationRequired", "t").to_json())
    assert (old_view.user_id, old_view.change_type, old_view.source) == (
        SUB, "lifecycle:reauthorizationRequired", "lifecycle")


def test_a_user_change_is_still_a_change_message() -> None:
    change = ChangeMessage("u-1", "updated", "2026-01-01T00:00:00+00:00", correlation_id="c-3")
    assert read_change_queue_message(change.to_json()) == change


def test_a_newer_schema_is_left_for_a_newer_reader() -> None:
    with pytest.raises(NewerSchemaError):
        read_change_queue_message(json.dumps({"v": 99, "source": "lifecycle", "subscription_id": SUB}))
