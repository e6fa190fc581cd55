"""Webhook service: accept Graph notifications fast and hand user ids to the change queue.

Graph wants an answer within 3 seconds (slow endpoints are throttled, then dropped), so this does no Graph
or AD work at all: check, enqueue, answer 202.
"""

from __future__ import annotations

import json
import logging
import threading
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
#: How long a POST waits for the send that carries its users (the webhook's queue client fails fast well before).
COMMIT_WAIT_SECONDS = 10.0


def change_messages(changes: list[tuple[str, str]], received_at: str) -> list[str]:
    """The change queue messages for (user id, change type) pairs: one per USERS_PER_MESSAGE distinct users and
    change type, so that apply reads them from Graph in one request. A user named twice is applied once (with
    the first change type named; apply re-reads it anyway). Pure."""
    first_type: dict[str, str] = {}
    for user_id, change_type in changes:
        first_type.setdefault(user_id, change_type)
    by_type: dict[str, list[str]] = {}
    for user_id, change_type in first_type.items():
        by_type.setdefault(change_type, []).append(user_id)
    bodies = []
    for change_type, users in by_type.items():
        for start in range(0, len(users), USERS_PER_MESSAGE):
            first, *more = users[start:start + USERS_PER_MESSAGE]
            bodies.append(ChangeMessage(first, change_type, received_at, correlation_id=new_correlation_id(),
                                        more_user_ids=tuple(more)).to_json())
    return bodies


@dataclass
class _Waiting:
    changes: list[tuple[str, str]]
    received_at: str
    woken: threading.Event = field(default_factory=threading.Event)
    finished: bool = False
    lead: bool = False
    error: Exception | None = None


class GroupCommit:
    """Queue the changes of concurrent POSTs together (a group commit, as databases do for their log): a POST
    that arrives while another POST's changes are being sent waits for that send to end, and then the changes
    of every POST that waited meanwhile go in one round of sends, up to USERS_PER_MESSAGE users per message.

    Graph sends one POST per notification when they trickle in: under load that makes one change message, one
    storage send and one Graph read per user; grouped, it makes one per 15. A POST is still answered only once
    its own users are on the queue (or with 503 when the send that carried them failed), and an idle webhook
    sends at once: nothing waits for a batch to fill."""

    def __init__(self, send: Callable[[str], None], wait_seconds: float = COMMIT_WAIT_SECONDS) -> None:
        self._send = send
        self._wait_seconds = wait_seconds
        self._lock = threading.Lock()
        self._waiting: list[_Waiting] = []
        self._sending = False

    def enqueue(self, changes: list[tuple[str, str]], received_at: str) -> None:
        """Put (user id, change type) pairs on the change queue; returns once they are there, raises the send's
        error when they could not be (the caller answers 503 and Graph delivers them again)."""
        mine = _Waiting(changes, received_at)
        with self._lock:
            self._waiting.append(mine)
            mine.lead = not self._sending
            self._sending = True
        if not mine.lead and not mine.woken.wait(self._wait_seconds):
            with self._lock:
                if not mine.finished and not mine.lead and mine in self._waiting:
                    self._waiting.remove(mine)
                    raise TimeoutError(f"the change queue did not take the changes within {self._wait_seconds} s")
            mine.woken.wait()  # taken into a send (or made the sender) just now: its end is near
        if mine.lead and not mine.finished:
            self._lead(mine)
        if mine.error is not None:
            raise mine.error

    def _lead(self, mine: _Waiting) -> None:
        """Send for everyone waiting until this POST's changes are sent, then hand over to a POST that arrived
        meanwhile (it sends the next round), or end."""
        while not mine.finished:
            with self._lock:
                group, self._waiting = self._waiting, []
            self._commit(group)
        with self._lock:
            if self._waiting:
                following = self._waiting[0]
                following.lead = True
                following.woken.set()
            else:
                self._sending = False

    def _commit(self, group: list[_Waiting]) -> None:
        received_at = min(w.received_at for w in group)  # the earliest: latency is measured from the first
        error: Exception | None = None
        try:
            for body in change_messages([c for w in group for c in w.changes], received_at):
                self._send(body)
        except Exception as exc:  # every POST of the group answers 503; messages already sent are duplicates
            error = exc
        for waiting in group:
            waiting.error, waiting.finished = error, True
            waiting.woken.set()


def receive_changes(
    body: bytes,
    params: dict[str, str],
    settings: WebhookSettings,
    enqueue: Callable[[str], None] | GroupCommit,
    now: Callable[[], datetime] = utcnow,
) -> Reply:
    """Handle ``POST /api/graph/notifications``: validation handshake or a batch of user changes, put on the
    change queue by ``enqueue`` (a message at a time) or a GroupCommit (together with concurrent POSTs)."""
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
    changes = [(change.user_id, change.change_type) for change in batch.accepted]
    try:
        if isinstance(enqueue, GroupCommit):
            if changes:
                enqueue.enqueue(changes, received_at)
        else:
            for message in change_messages(changes, received_at):
                enqueue(message)
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
