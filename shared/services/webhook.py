"""Webhook service: accept Graph notifications fast and hand user ids to the change queue.

Graph wants an answer within 3 seconds (slow endpoints are throttled, then dropped), so this does no Graph
or AD work at all: check, enqueue, answer 202.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from shared.core.domain import MAX_IN_VALUES
from shared.core.messages import ChangeMessage
from shared.core.notifications import (
    MAX_BODY_BYTES,
    ChangeBatch,
    MalformedNotificationError,
    SubscriptionEvent,
    SubscriptionEventBatch,
    parse_change_notifications,
    parse_lifecycle_notifications,
    validation_token,
)
from shared.core.records import utcnow
from shared.observability import new_correlation_id
from shared.settings import WebhookSettings

log = logging.getLogger("guestsync.webhook")
#: Refused items of one POST that are logged and listed in the answer one by one; the rest are counted.
MAX_REPORTED = 20


#: On every answer: a browser must not sniff the echoed validation token (or anything else) into HTML.
NOSNIFF = {"X-Content-Type-Options": "nosniff"}
JSON_MEDIA_TYPE = "application/json"


@dataclass(frozen=True)
class Reply:
    status: int
    body: str = ""
    mimetype: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=lambda: dict(NOSNIFF))


def _problem(status: int, message: str, details: list[str] | None = None) -> Reply:
    payload: dict[str, object] = {"error": message}
    if details:
        payload["details"] = details
    return Reply(status, json.dumps(payload))


def answer_validation(params: dict[str, str]) -> Reply | None:
    """Subscription validation handshake: echo the token as text/plain with 200."""
    try:
        token = validation_token(params)
    except MalformedNotificationError as exc:
        return _problem(400, str(exc))
    if token is None:
        return None
    return Reply(200, token, "text/plain")  # with NOSNIFF: the token is the caller's text, echoed


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A request header whatever the letter case of its name (func.HttpRequest's headers are case-insensitive
    already; a plain dict is not)."""
    value = headers.get(name)
    if value is not None:
        return value
    return next((v for k, v in headers.items() if k.lower() == name.lower()), None)


def screen(params: Mapping[str, str], headers: Mapping[str, str]) -> Reply | None:
    """Refuse a request on its headers alone, before its body is read: a declared body over MAX_BODY_BYTES
    (413), a Content-Length that is not a number (400), and a notification that is not JSON (415; a charset
    parameter is fine). The validation handshake (a text/plain POST without a body) passes to its echo."""
    length = _header(headers, "Content-Length")
    if length is not None:
        text = length.strip()
        if not (text.isascii() and text.isdigit()):
            return _problem(400, "Content-Length is not a number")
        if int(text) > MAX_BODY_BYTES:
            log.warning("notification body of %s bytes refused unread (the limit is %d)", text, MAX_BODY_BYTES)
            return _problem(413, f"body is larger than {MAX_BODY_BYTES} bytes")
    if "validationToken" in params:
        return None
    media_type = (_header(headers, "Content-Type") or "").split(";", 1)[0].strip().lower()
    if media_type != JSON_MEDIA_TYPE:
        return _problem(415, f"notifications must be {JSON_MEDIA_TYPE}, not {media_type[:100] or 'untyped'}")
    return None


def _too_large(body: bytes) -> Reply | None:
    """A body sent without Content-Length (chunked) is only known once read: the same limit, the same 413."""
    if len(body) > MAX_BODY_BYTES:
        return _problem(413, f"body is larger than {MAX_BODY_BYTES} bytes")
    return None


USERS_PER_MESSAGE = MAX_IN_VALUES


def receive_changes(
    body: bytes,
    params: dict[str, str],
    settings: WebhookSettings,
    enqueue: Callable[[str], None],
    now: Callable[[], datetime] = utcnow,
) -> Reply:
    """Handle ``POST /api/graph/notifications``: validation handshake or a batch of user changes."""
    validation = answer_validation(params)
    if validation is not None:
        return validation
    if not settings.client_states:
        log.error("GRAPH_CLIENT_STATE is not set: refusing every notification")
        return _problem(503, "webhook is not configured")
    too_large = _too_large(body)
    if too_large is not None:
        return too_large
    try:
        batch: ChangeBatch = parse_change_notifications(
            body, client_states=settings.client_states, tenant_id=settings.tenant_id
        )
    except MalformedNotificationError as exc:
        log.warning("malformed notification body refused: %s", exc)
        return _problem(400, str(exc))
    received_at = now().isoformat()
    # One queue message per USERS_PER_MESSAGE distinct users of the POST (and change type): the apply step reads
    # them from Graph in one request, so a burst of (mostly member) changes costs a read per 15 users, not per
    # user. A user named twice in one POST is applied once (apply re-reads it anyway).
    first_type: dict[str, str] = {}
    for change in batch.accepted:
        first_type.setdefault(change.user_id, change.change_type)
    by_type: dict[str, list[str]] = {}
    for user_id, change_type in first_type.items():
        by_type.setdefault(change_type, []).append(user_id)
    try:
        for change_type, users in by_type.items():
            for start in range(0, len(users), USERS_PER_MESSAGE):
                first, *more = users[start:start + USERS_PER_MESSAGE]
                enqueue(ChangeMessage(first, change_type, received_at, correlation_id=new_correlation_id(),
                                      more_user_ids=tuple(more)).to_json())
    except Exception as exc:  # storage unreachable: fail fast, Graph redelivers
        return _not_queued(exc)
    return _batch_reply(batch, "notification")


def _not_queued(exc: Exception) -> Reply:
    """Storage is unreachable: answer 503 at once (within Graph's 3 s) so that Graph delivers the batch again
    later, instead of hanging on retries; items queued before the failure are harmless duplicates."""
    log.error("could not queue notifications (%s); answering 503 so Graph retries", type(exc).__name__)
    return _problem(503, "notifications could not be queued; retry later")


def _batch_reply(batch: ChangeBatch | SubscriptionEventBatch, noun: str) -> Reply:
    """Log the refused items and answer with the batch's status code (details list the refused items). Both
    stop after MAX_REPORTED items: a body of junk items must not turn into as many log lines."""
    for rejection in batch.rejected[:MAX_REPORTED]:
        log.warning("%s item %d refused: %s", noun, rejection.index, rejection.reason)
    more = len(batch.rejected) - MAX_REPORTED
    if more > 0:
        log.warning("%d more %s items refused (%d in all)", more, noun, len(batch.rejected))
    status = batch.status_code()
    if status == 202:
        return Reply(202, "")
    details = [f"item {r.index}: {r.reason}" for r in batch.rejected[:MAX_REPORTED]]
    if more > 0:
        details.append(f"... and {more} more refused items")
    message = f"some {noun}s were refused" if batch.accepted else f"no {noun} was accepted"
    return _problem(status, message, details)


def receive_lifecycle(
    body: bytes,
    params: dict[str, str],
    settings: WebhookSettings,
    handle: Callable[[SubscriptionEventBatch], None],
    ours: Callable[[], frozenset[str] | None] = lambda: None,
) -> Reply:
    """Handle ``POST /api/graph/lifecycle``: validation handshake or lifecycle events.

    ``ours`` gives our subscription ids (None when none is recorded yet): events for any other subscription
    are acknowledged and dropped with a warning. ``handle`` gets each (subscription, event) once per POST,
    however often the POST repeats it."""
    validation = answer_validation(params)
    if validation is not None:
        return validation
    if not settings.client_states:
        return _problem(503, "webhook is not configured")
    too_large = _too_large(body)
    if too_large is not None:
        return too_large
    try:
        batch = parse_lifecycle_notifications(
            body, client_states=settings.client_states, tenant_id=settings.tenant_id
        )
    except MalformedNotificationError as exc:
        return _problem(400, str(exc))
    if batch.accepted:
        try:
            known = ours()
            kept: dict[tuple[str, str], SubscriptionEvent] = {}
            foreign: dict[str, int] = {}
            for event in batch.accepted:
                if known is not None and event.subscription_id.lower() not in known:
                    foreign[event.subscription_id] = foreign.get(event.subscription_id, 0) + 1
                    continue
                kept.setdefault((event.subscription_id.lower(), event.event), event)
            for subscription_id, count in list(foreign.items())[:MAX_REPORTED]:
                log.warning("%d lifecycle event(s) for subscription %s dropped: it is not ours", count,
                            subscription_id)
            if kept:
                handle(SubscriptionEventBatch(rejected=batch.rejected, accepted=list(kept.values())))
        except Exception as exc:
            return _not_queued(exc)
    return _batch_reply(batch, "lifecycle notification")
