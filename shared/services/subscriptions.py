"""Keep one Graph change-notification subscription on /users alive for our webhook.

Graph caps user subscriptions at 41,760 minutes; we renew well before expiry. A duplicate create answers
409, in which case the existing subscription is listed and renewed instead.

The notification and lifecycle URLs carry the Functions key (``?code=``, GUESTSYNC_WEBHOOK_KEY) that both
endpoints demand. A subscription of ours whose URL has another key (the key was rotated) is replaced: the new
one is created first, then the old one is deleted.

The id of our subscription (and the one it replaced) is kept in state so that lifecycle events for any other
subscription are dropped, and catch-up work for ``missed`` / ``subscriptionRemoved`` is coalesced (one
reconcile and at most one re-creation per window, whatever the number of events).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from shared.core.domain import ConfigurationError, Subscription
from shared.core.errors import SubscriptionConflictError
from shared.core.ports import GuestStore, SubscriptionApi
from shared.core.records import utcnow
from shared.core.unit_of_work import change_meta
from shared.settings import Settings

log = logging.getLogger("guestsync.subscriptions")
RENEW_WHEN_LEFT = timedelta(days=3)
#: State meta row with our subscription's id and the one it replaced.
SUBSCRIPTION_META = "subscription"
#: State meta row (ETag-guarded) that coalesces catch-up work of lifecycle events.
CATCH_UP_META = "lifecycle-catch-up"
#: At most one catch-up (reconcile + subscription check) starts per window; later events wait for its end.
CATCH_UP_WINDOW = timedelta(minutes=5)
KEY_PARAMETER = "code"


def keyed_url(url: str, key: str) -> str:
    """``url`` with the Functions key as its ``code`` query parameter (replacing any there)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != KEY_PARAMETER]
    return urlunsplit(parts._replace(query=urlencode([*query, (KEY_PARAMETER, key)])))


def url_without_key(url: str) -> str:
    """``url`` without its ``code`` query parameter: what may be shown, logged and compared."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != KEY_PARAMETER]
    return urlunsplit(parts._replace(query=urlencode(query)))


def url_key(url: str) -> str | None:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True)).get(KEY_PARAMETER)



def _ours(subscriptions: list[Subscription], notification_url: str) -> list[Subscription]:
    """Our users subscriptions, whatever key their URL carries."""
    base = url_without_key(notification_url)
    return [
        s
        for s in subscriptions
        if url_without_key(s.notification_url) == base and s.resource.strip("/").lower() == "users"
    ]


def _record(state: GuestStore | None, current: Subscription, previous: str | None = None) -> None:
    """Remember our subscription's id (and the one it replaced) for the lifecycle endpoint's checks."""
    if state is None:
        return
    body, _ = state.get_meta(SUBSCRIPTION_META)
    if body.get("id") == current.id and previous is None:
        return
    if previous is None and body.get("id") and body.get("id") != current.id:
        previous = str(body["id"])  # a re-creation found by listing: the old id may still send lifecycle events
    state.put_meta(SUBSCRIPTION_META, {"id": current.id, "previous": previous})


def our_subscription_ids(state: GuestStore) -> frozenset[str] | None:
    """Our subscription and the one it replaced (lower case); None when none is recorded yet."""
    body, _ = state.get_meta(SUBSCRIPTION_META)
    ids = {str(v).lower() for v in (body.get("id"), body.get("previous")) if v}
    return frozenset(ids) if ids else None


async def ensure_subscription(
    graph: SubscriptionApi, settings: Settings, now: Callable[[], datetime] = utcnow, *,
    state: GuestStore | None = None,
) -> Subscription:
    """Create the users subscription if it is missing (or replace one with another key), renew it if it
    expires soon; record it in state (when given) and return it."""
    base = settings.webhook.notification_url
    if not base:
        raise ConfigurationError("setting GUESTSYNC_NOTIFICATION_URL is required to subscribe to Graph")
    if not settings.webhook.client_states:
        raise ConfigurationError("setting GRAPH_CLIENT_STATE is required to subscribe to Graph")
    key = settings.webhook.function_key
    if not key:
        raise ConfigurationError("setting GUESTSYNC_WEBHOOK_KEY is required to subscribe to Graph (the webhook "
                                 "endpoints demand this Functions key)")
    url = keyed_url(base, key)
    lifecycle = keyed_url(settings.webhook.lifecycle_url, key) if settings.webhook.lifecycle_url else None
    target = now() + timedelta(minutes=settings.subscription_minutes)
    existing = _ours(await graph.list_subscriptions(), url)
    current_key = [s for s in existing if url_key(s.notification_url) == key]
    if not current_key:
        try:
            created = await graph.create_subscription(url, lifecycle, settings.webhook.client_states[0], target)
            log.info("created Graph subscription %s until %s", created.id, created.expiration.isoformat())
        except SubscriptionConflictError:
            current_key = [s for s in _ours(await graph.list_subscriptions(), url) if url_key(s.notification_url)
                           == key]
            if not current_key:
                raise
        else:
            for stale in existing:  # the key was rotated: Graph cannot change a URL, so the old one goes
                await graph.delete_subscription(stale.id)
                log.warning("deleted Graph subscription %s: its URL carries an old webhook key", stale.id)
            _record(state, created, existing[0].id if existing else None)
            return created
    current = current_key[0]
    if current.expiration - now() < RENEW_WHEN_LEFT:
        current = await graph.renew_subscription(current.id, target)
        log.info("renewed Graph subscription %s until %s", current.id, current.expiration.isoformat())
    _record(state, current)
    return current


async def reauthorize(graph: SubscriptionApi, settings: Settings, subscription_id: str,
                      now: Callable[[], datetime] = utcnow) -> Subscription:
    """Answer ``reauthorizationRequired``: a renewal (PATCH) re-authorizes the subscription."""
    target = now() + timedelta(minutes=settings.subscription_minutes)
    return await graph.renew_subscription(subscription_id, target)


async def handle_subscription_event(
    graph: SubscriptionApi, settings: Settings, subscription_id: str, event: str
) -> bool:
    """Act on a subscription event (a Graph lifecycle notification); True when notifications may have been
    lost, so the caller must catch up with users/delta."""
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


class CatchUp(Enum):
    """What a ``missed`` / ``subscriptionRemoved`` message does: run the catch-up, leave it to one that starts
    after the event arrived (covered), or wait for the end of the current window (deferred)."""

    RUN = "run"
    COVERED = "covered"
    DEFERRED = "deferred"


@dataclass(frozen=True)
class CatchUpClaim:
    decision: CatchUp
    delay_seconds: int = 0


def _when(value: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


def claim_catch_up(state: GuestStore, received_at: datetime, token: str, now: Callable[[], datetime] = utcnow,
                   window: timedelta = CATCH_UP_WINDOW) -> CatchUpClaim:
    """Decide, through the ETag-guarded catch-up marker, whether this event's catch-up runs now.

    A catch-up that starts after the event arrived covers it (the reconcile reads users/delta from where the
    last one stopped). Catch-ups start at most once per ``window``: an event that arrives meanwhile defers one
    message to the window's end, and every other event until then is covered by that one. ``token`` names the
    message (its correlation id), so a redelivery of a claimed or deferred message still runs."""

    def decide(body: dict[str, Any]) -> tuple[dict[str, Any] | None, CatchUpClaim]:
        started = _when(body.get("startedAt"))
        deferred_until = _when(body.get("deferredUntil"))
        moment = now()
        if body.get("token") == token:
            return None, CatchUpClaim(CatchUp.RUN)  # a retry of the run this message claimed
        if started is not None and started >= received_at:
            return None, CatchUpClaim(CatchUp.COVERED)
        if body.get("deferredBy") not in (None, token) and deferred_until is not None and deferred_until > moment:
            return None, CatchUpClaim(CatchUp.COVERED)  # the deferred message runs after this event arrived
        if started is not None and moment - started < window:
            until = started + window
            return ({**body, "deferredBy": token, "deferredUntil": until.isoformat()},
                    CatchUpClaim(CatchUp.DEFERRED, max(1, int((until - moment).total_seconds()) + 1)))
        return {"startedAt": moment.isoformat(), "token": token}, CatchUpClaim(CatchUp.RUN)

    # another instance that claimed or deferred meanwhile makes the save fail: decide again on what it wrote
    return change_meta(state, CATCH_UP_META, decide, attempts=10)


async def on_subscription_event(
    graph: SubscriptionApi,
    state: GuestStore,
    settings: Settings,
    subscription_id: str,
    event: str,
    *,
    received_at: datetime | None,
    token: str,
    reconcile: Callable[[], Awaitable[object]],
    defer: Callable[[int], None],
    now: Callable[[], datetime] = utcnow,
) -> CatchUp | None:
    """Act on a queued subscription event (SubscriptionEventMessage), only for our subscription (or the one it
    replaced): renew on ``reauthorizationRequired``; for ``missed`` / ``subscriptionRemoved`` the coalesced
    catch-up (subscription check, which re-creates a removed one, then a reconcile). Events for other
    subscriptions are dropped with a warning: acknowledged, never retried or poisoned. Returns the catch-up
    decision (None for the others)."""
    ours = our_subscription_ids(state)
    if ours is not None and subscription_id.lower() not in ours:
        log.warning("subscription event %s for subscription %s dropped: it is not ours (%s)", event, subscription_id,
                    ", ".join(sorted(ours)))
        return None
    if event == "reauthorizationRequired":
        await handle_subscription_event(graph, settings, subscription_id, "reauthorizationRequired")
        return None
    claim = claim_catch_up(state, received_at or now(), token, now)
    if claim.decision is CatchUp.COVERED:
        log.info("subscription event %s on subscription %s: covered by a catch-up that starts after it",
                 event, subscription_id)
    elif claim.decision is CatchUp.DEFERRED:
        log.info("subscription event %s on subscription %s: catch-up deferred %d s to the end of the window",
                 event, subscription_id, claim.delay_seconds)
        defer(claim.delay_seconds)
    else:
        current = await ensure_subscription(graph, settings, state=state)
        log.warning("Graph reports %s on subscription %s; subscribed as %s; catching up with users/delta",
                    event, subscription_id, current.id)
        await reconcile()
    return claim.decision
