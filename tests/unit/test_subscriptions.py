"""Subscription upkeep decisions (create, renew, 409 -> list and renew), with the shared in-memory Graph
(tests/fakes.py).

The Graph side of these calls is covered against the simulator in tests/integration; here only the
service's choices are checked.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from shared.core.domain import ConfigurationError, Subscription
from shared.services.subscriptions import ensure_subscription, handle_subscription_event, keyed_url, url_without_key
from shared.settings import Settings, WebhookSettings
from tests.fakes import MemoryGraph

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
URL = "https://guestsync.example/api/graph/notifications"
KEY = "functions-key-1"
SETTINGS = Settings(storage_connection="UseDevelopmentStorage=true",
                    webhook=WebhookSettings(client_states=("s3cret",), notification_url=URL,
                                            lifecycle_url=URL.replace("notifications", "lifecycle"),
                                            function_key=KEY))


def _sub(expires_in: timedelta, sub_id: str = "sub-1", key: str = KEY) -> Subscription:
    return Subscription(sub_id, "users", "updated,deleted", keyed_url(URL, key), None, NOW + expires_in)


def run(graph: MemoryGraph) -> Subscription:
    return asyncio.run(ensure_subscription(graph, SETTINGS, now=lambda: NOW))


def test_creates_when_missing_with_at_most_the_graph_limit() -> None:
    graph = MemoryGraph()
    sub = run(graph)
    assert graph.calls == ["list", "create"]
    assert sub.expiration - NOW <= timedelta(minutes=41_760)
    # Both URLs carry the Functions key the endpoints demand.
    assert sub.notification_url == f"{URL}?code={KEY}"
    assert sub.lifecycle_url == f"{URL.replace('notifications', 'lifecycle')}?code={KEY}"


def test_subscribing_needs_the_webhook_key() -> None:
    unkeyed = replace(SETTINGS, webhook=replace(SETTINGS.webhook, function_key=None))
    with pytest.raises(ConfigurationError, match="GUESTSYNC_WEBHOOK_KEY"):
        asyncio.run(ensure_subscription(MemoryGraph(), unkeyed, now=lambda: NOW))


def test_a_rotated_key_replaces_the_subscription_new_first_then_old() -> None:
    graph = MemoryGraph(subscriptions=[_sub(timedelta(days=20), "old", key="functions-key-0")])
    sub = run(graph)
    assert graph.calls == ["list", "create", "delete old"]
    assert sub.id == "new" and [s.id for s in graph.subscriptions] == ["new"]
    assert url_without_key(sub.notification_url) == URL


def test_leaves_a_fresh_subscription_alone_and_renews_one_that_expires_soon() -> None:
    fresh = MemoryGraph(subscriptions=[_sub(timedelta(days=20))])
    assert run(fresh).id == "sub-1" and fresh.calls == ["list"]
    stale = MemoryGraph(subscriptions=[_sub(timedelta(hours=5))])
    renewed = run(stale)
    assert stale.calls == ["list", "renew sub-1"]
    assert renewed.expiration - NOW > timedelta(days=28)


def test_conflict_on_create_lists_and_renews_the_existing_one() -> None:
    graph = MemoryGraph(subscriptions=[], conflict_then=[_sub(timedelta(hours=1), "theirs")])
    sub = run(graph)
    assert graph.calls == ["list", "create", "list", "renew theirs"]
    assert sub.id == "theirs"


def test_lifecycle_events_say_when_a_catch_up_is_needed() -> None:
    graph = MemoryGraph(subscriptions=[_sub(timedelta(hours=1))])
    assert asyncio.run(handle_subscription_event(graph, SETTINGS, "sub-1", "reauthorizationRequired")) is False
    assert graph.calls == ["renew sub-1"]
    assert asyncio.run(handle_subscription_event(graph, SETTINGS, "sub-1", "missed")) is True
    gone = MemoryGraph()
    assert asyncio.run(handle_subscription_event(gone, SETTINGS, "sub-1", "subscriptionRemoved")) is True
    assert gone.calls == ["list", "create"]
