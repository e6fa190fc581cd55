"""Keep one Graph change-notification subscription on /users alive for our webhook.

Graph caps user subscriptions at 41,760 minutes; we renew well before expiry. A duplicate create answers
409, in which case the existing subscription is listed and renewed instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol

from shared.adapters.graph import Subscription, SubscriptionConflictError
from shared.adapters.state import utcnow
from shared.domain import ConfigurationError
from shared.settings import Settings

log = logging.getLogger("guestsync.subscriptions")
RENEW_WHEN_LEFT = timedelta(days=3)


class SubscriptionApi(Protocol):
    async def list_subscriptions(self) -> list[Subscription]: ...
    async def create_subscription(
        self, notification_url: str, lifecycle_url: str | None, client_state: str, expiration: datetime
    ) -> Subscription: ...
    async def renew_subscription(self, subscription_id: str, expiration: datetime) -> Subscription: ...


def _ours(subscriptions: list[Subscription], notification_url: str) -> list[Subscription]:
    return [
        s
        for s in subscriptions
        if s.notification_url == notification_url and s.resource.strip("/").lower() == "users"
    ]


async def ensure_subscription(
    graph: SubscriptionApi, settings: Settings, now: Callable[[], datetime] = utcnow
) -> Subscription:
    """Create the users subscription if it is missing, renew it if it expires soon; return it."""
    url = settings.webhook.notification_url
    if not url:
        raise ConfigurationError("setting GUESTSYNC_NOTIFICATION_URL is required to subscribe to Graph")
    if not settings.webhook.client_states:
        raise ConfigurationError("setting GRAPH_CLIENT_STATE is required to subscribe to Graph")
    target = now() + timedelta(minutes=settings.subscription_minutes)
    existing = _ours(await graph.list_subscriptions(), url)
    if not existing:
        try:
            created = await graph.create_subscription(
                url, settings.webhook.lifecycle_url, settings.webhook.client_states[0], target
            )
            log.info("created Graph subscription %s until %s", created.id, created.expiration.isoformat())
            return created
        except SubscriptionConflictError:
            existing = _ours(await graph.list_subscriptions(), url)
            if not existing:
                raise
    current = existing[0]
    if current.expiration - now() < RENEW_WHEN_LEFT:
        current = await graph.renew_subscription(current.id, target)
        log.info("renewed Graph subscription %s until %s", current.id, current.expiration.isoformat())
    return current


async def reauthorize(graph: SubscriptionApi, settings: Settings, subscription_id: str,
                      now: Callable[[], datetime] = utcnow) -> Subscription:
    """Answer ``reauthorizationRequired``: a renewal (PATCH) re-authorizes the subscription."""
    target = now() + timedelta(minutes=settings.subscription_minutes)
    return await graph.renew_subscription(subscription_id, target)


async def handle_lifecycle(
    graph: SubscriptionApi, settings: Settings, subscription_id: str, change_type: str
) -> bool:
    """Act on a queued lifecycle event (``change_type`` is ``lifecycle:<event>``); True when notifications
    may have been lost, so the caller must catch up with users/delta."""
    event = change_type.removeprefix("lifecycle:")
    if event == "reauthorizationRequired":
        renewed = await reauthorize(graph, settings, subscription_id)
        log.info("reauthorized Graph subscription %s until %s", renewed.id, renewed.expiration.isoformat())
        return False
    if event == "subscriptionRemoved":
        created = await ensure_subscription(graph, settings)
        log.warning("Graph removed subscription %s; now subscribed as %s; catching up with users/delta",
                    subscription_id, created.id)
        return True
    log.warning("Graph reports %s on subscription %s; catching up with users/delta", event, subscription_id)
    return True
