"""Subscription upkeep decisions (create, renew, 409 -> list and renew), with an in-memory Graph stand-in.

The Graph side of these calls is covered against the simulator in tests/integration; here only the
service's choices are checked.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from shared.core.domain import ConfigurationError, Subscription
from shared.core.errors import SubscriptionConflictError
from shared.services.subscriptions import ensure_subscription, handle_subscription_event, keyed_url, url_without_key
from shared.settings import Settings, WebhookSettings

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
URL = "https://guestsync.example/api/graph/notifications"
KEY = "functions-key-1"
SETTINGS = Settings(storage_connection="UseDevelopmentStorage=true",
                    webhook=WebhookSettings(client_states=("s3cret",), notification_url=URL,
                                            lifecycle_url=URL.replace("notifications", "lifecycle"),
                                            function_key=KEY))


def _sub(expires_in: timedelta, sub_id: str = "sub-1", key: str = KEY) -> Subscription:
    return Subscription(sub_id, "users", "updated,deleted", keyed_url(URL, key), None, NOW + expires_in)


class FakeGraph:
    def __init__(self, existing: list[Subscription], *, conflict_then: list[Subscription] | None = None) -> None:
        self.existing = existing
        self.conflict_then = conflict_then
        self.calls: list[str] = []

    async def list_subscriptions(self) -> list[Subscription]:
        self.calls.append("list")
        return list(self.existing)

    async def create_subscription(self, notification_url: str, lifecycle_url: str | None, client_state: str,
                                  expiration: datetime) -> Subscription:
        self.calls.append("create")
        if self.conflict_then is not None:
            self.existing = self.conflict_then  # another instance created it meanwhile
            raise SubscriptionConflictError(409, "Conflict", "subscription exists")
        created = Subscription("new", "users", "updated,deleted", notification_url, lifecycle_url, expiration)
        self.existing = [created]
        return created

    async def renew_subscription(self, subscription_id: str, expiration: datetime) -> Subscription:
        self.calls.append(f"renew {subscription_id}")
        (current,) = [s for s in self.existing if s.id == subscription_id]
        renewed = replace(current, expiration=expiration)
        self.existing = [renewed]
        return renewed

    async def delete_subscription(self, subscription_id: str) -> None:
        self.calls.append(f"delete {subscription_id}")
        self.existing = [s for s in self.existing if s.id != subscription_id]


def run(graph: FakeGraph) -> Subscription:
    return asyncio.run(ensure_subscription(graph, SETTINGS, now=lambda: NOW))


def test_creates_when_missing_with_at_most_the_graph_limit() -> None:
    graph = FakeGraph([])
    sub = run(graph)
    assert graph.calls == ["list", "create"]
    assert sub.expiration - NOW <= timedelta(minutes=41_760)
    # Both URLs carry the Functions key the endpoints demand.
    assert sub.notification_url == f"{URL}?code={KEY}"
    assert sub.lifecycle_url == f"{URL.replace('notifications', 'lifecycle')}?code={KEY}"


def test_subscribing_needs_the_webhook_key() -> None:
    unkeyed = replace(SETTINGS, webhook=replace(SETTINGS.webhook, function_key=None))
    with pytest.raises(ConfigurationError, match="GUESTSYNC_WEBHOOK_KEY"):
        asyncio.run(ensure_subscription(FakeGraph([]), unkeyed, now=lambda: NOW))


def test_a_rotated_key_replaces_the_subscription_new_first_then_old() -> None:
    graph = FakeGraph([_sub(timedelta(days=20), "old", key="functions-key-0")])
    sub = run(graph)
    assert graph.calls == ["list", "create", "delete old"]
    assert sub.id == "new" and [s.id for s in graph.existing] == ["new"]
    assert url_without_key(sub.notification_url) == URL


def test_leaves_a_fresh_subscription_alone_and_renews_one_that_expires_soon() -> None:
    fresh = FakeGraph([_sub(timedelta(days=20))])
    assert run(fresh).id == "sub-1" and fresh.calls == ["list"]
    stale = FakeGraph([_sub(timedelta(hours=5))])
    renewed = run(stale)
    assert stale.calls == ["list", "renew sub-1"]
    assert renewed.expiration - NOW > timedelta(days=28)


def test_conflict_on_create_lists_and_renews_the_existing_one() -> None:
    graph = FakeGraph([], conflict_then=[_sub(timedelta(hours=1), "theirs")])
    sub = run(graph)
    assert graph.calls == ["list", "create", "list", "renew theirs"]
    assert sub.id == "theirs"


def test_lifecycle_events_say_when_a_catch_up_is_needed() -> None:
    graph = FakeGraph([_sub(timedelta(hours=1))])
    assert asyncio.run(handle_subscription_event(graph, SETTINGS, "sub-1", "reauthorizationRequired")) is False
    assert graph.calls == ["renew sub-1"]
    assert asyncio.run(handle_subscription_event(graph, SETTINGS, "sub-1", "missed")) is True
    gone = FakeGraph([])
    assert asyncio.run(handle_subscription_event(gone, SETTINGS, "sub-1", "subscriptionRemoved")) is True
    assert gone.calls == ["list", "create"]
