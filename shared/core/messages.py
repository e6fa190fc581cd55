"""The queue messages between the webhook, the apply step and the AD worker, and their schema version.

Every message carries its schema version (``"v"``). A reader that meets a newer schema than it knows leaves the
message for a newer reader instead of guessing at it or sending it to the poison queue (see
``shared.adapters.queues.leave_for_newer_reader``); ``newer_versions_seen()`` tells the agent's heartbeat so.
Upgrade the agents first, then the app: a newer agent reads every older schema.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from shared.core.domain import graph_id

#: The schema of the messages this code writes, and the newest it reads. Bump it when a field is added that an
#: older reader must not ignore, or a field changes meaning; messages without ``v`` are schema 1.
SCHEMA_VERSION = 1
#: How long a message of a newer schema stays invisible before a reader looks at it again: a newer agent that
#: shares the queue picks it up by then; until every agent is upgraded it comes back, with a warning, this often.
NEWER_SCHEMA_DELAY_SECONDS = 300

_newest_seen: int | None = None
_newest_lock = threading.Lock()


class NewerSchemaError(Exception):
    """A message written by newer code than this reader (its ``v`` is above SCHEMA_VERSION)."""

    def __init__(self, version: int, reader: str = "agent") -> None:
        self.version = version
        self.reader = reader
        super().__init__(f"message schema v{version} is newer than this {reader} (v{SCHEMA_VERSION}): "
                         f"upgrade the {reader}")


def newer_versions_seen() -> int | None:
    """The newest message schema this process met and could not read (None: none so far), for the heartbeat."""
    with _newest_lock:
        return _newest_seen


def _check_schema(data: dict[str, Any], reader: str) -> None:
    version = data.get("v", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"queue message schema version v must be a positive integer, not {version!r}")
    if version > SCHEMA_VERSION:
        global _newest_seen
        with _newest_lock:
            _newest_seen = max(version, _newest_seen or 0)
        raise NewerSchemaError(version, reader)



@dataclass(frozen=True)
class ChangeMessage:
    """A user that Graph says changed; the apply step re-reads it from Graph."""

    user_id: str
    change_type: str
    received_at: str  # ISO 8601 UTC, when the webhook accepted the notification
    source: str = "notification"  # notification | reconcile | operator (never SUBSCRIPTION_EVENT_SOURCE)
    correlation_id: str = ""  # follows this change through apply and export (logs, App Insights)
    more_user_ids: tuple[str, ...] = ()  # further users of the same notification batch: read together
    deferrals: int = 0  # times queued again because Graph throttled the read (see apply.apply_or_defer)

    @property
    def user_ids(self) -> tuple[str, ...]:
        return (self.user_id, *self.more_user_ids)

    def to_json(self) -> str:
        data = {"v": SCHEMA_VERSION, **asdict(self)}
        if not self.more_user_ids:
            del data["more_user_ids"]
        if not self.deferrals:
            del data["deferrals"]
        return json.dumps(data)

    @classmethod
    def from_json(cls, body: str | bytes) -> ChangeMessage:
        """Raises NewerSchemaError for a newer schema (the app reads change messages)."""
        data = _load_object(body)
        _check_schema(data, "app")
        user_id = data.get("user_id")
        if not isinstance(user_id, str):
            raise ValueError("change message has no user_id")
        return cls(
            user_id=graph_id(user_id),
            change_type=str(data.get("change_type", "updated")),
            received_at=str(data.get("received_at", "")),
            source=str(data.get("source", "notification")),
            correlation_id=str(data.get("correlation_id", "")),
            more_user_ids=tuple(graph_id(u) for u in data.get("more_user_ids") or () if isinstance(u, str)),
            deferrals=deferrals if isinstance(deferrals := data.get("deferrals"), int) else 0,
        )

    @property
    def received(self) -> datetime | None:
        try:
            return datetime.fromisoformat(self.received_at)
        except ValueError:
            return None


#: ``source`` that marks a change-queue message as a subscription event. Older code wrote these as a
#: ChangeMessage with the subscription id in ``user_id`` and ``lifecycle:<event>`` in ``change_type``.
SUBSCRIPTION_EVENT_SOURCE = "lifecycle"
_EVENT_PREFIX = "lifecycle:"


@dataclass(frozen=True)
class SubscriptionEventMessage:
    """A Graph lifecycle notification, queued so the endpoint answers fast: ``event`` (reauthorizationRequired,
    subscriptionRemoved, missed) on subscription ``subscription_id``. It concerns the subscription, not a guest.

    It shares the change queue with ChangeMessage. On the wire it keeps the shape older code wrote and reads
    (``user_id``/``change_type``/``source``), next to its own ``subscription_id`` and ``event``, so that an
    instance of either version handles what the other queued during an upgrade."""

    subscription_id: str
    event: str
    received_at: str  # ISO 8601 UTC, when the lifecycle endpoint accepted the notification
    correlation_id: str = ""

    def to_json(self) -> str:
        return json.dumps({
            "v": SCHEMA_VERSION, "subscription_id": self.subscription_id, "event": self.event,
            "received_at": self.received_at, "correlation_id": self.correlation_id,
            # read by older code as a ChangeMessage
            "user_id": self.subscription_id, "change_type": f"{_EVENT_PREFIX}{self.event}",
            "source": SUBSCRIPTION_EVENT_SOURCE,
        })

    @classmethod
    def _from_data(cls, data: dict[str, Any]) -> SubscriptionEventMessage:
        subscription_id = data.get("subscription_id", data.get("user_id"))
        if not isinstance(subscription_id, str):
            raise ValueError("subscription event message has no subscription_id")
        event = data.get("event")
        if not isinstance(event, str):  # written by older code: only change_type says which event
            event = str(data.get("change_type", "")).removeprefix(_EVENT_PREFIX)
        return cls(subscription_id=graph_id(subscription_id), event=event,
                   received_at=str(data.get("received_at", "")),
                   correlation_id=str(data.get("correlation_id", "")))

    @property
    def received(self) -> datetime | None:
        try:
            return datetime.fromisoformat(self.received_at)
        except ValueError:
            return None


def read_change_queue_message(body: str | bytes) -> ChangeMessage | SubscriptionEventMessage:
    """A message of the change queue: a user that changed, or a subscription event (also as older code wrote
    it). Raises NewerSchemaError for a newer schema (the app reads the change queue)."""
    data = _load_object(body)
    _check_schema(data, "app")
    if data.get("source") == SUBSCRIPTION_EVENT_SOURCE:
        return SubscriptionEventMessage._from_data(data)
    return ChangeMessage.from_json(body)


@dataclass(frozen=True)
class ExportMessage:
    """Bring the AD account of ``uid`` in line with its record at ``version`` (or newer).

    ``snapshot`` (``GuestRecord.to_snapshot()``: the saved entity and its ETag) spares the worker a state read;
    its save is guarded by that ETag, so on a stale snapshot it re-reads and runs again. Either way, messages
    that arrive twice or out of order converge on the newest state instead of regressing it.
    """

    uid: str
    version: int
    reason: str
    correlation_id: str = ""
    snapshot: dict[str, Any] | None = field(default=None, hash=False)
    deferrals: int = 0  # times sent back because the directory was unreachable (function mode; never poison)

    def to_json(self) -> str:
        data = {"v": SCHEMA_VERSION, **asdict(self)}
        if not self.deferrals:
            del data["deferrals"]
        # A queue message holds 64 KB: an oversized snapshot is left out (the worker then reads state).
        if self.snapshot is None or len(json.dumps(self.snapshot)) > MAX_SNAPSHOT_CHARS:
            del data["snapshot"]
        return json.dumps(data)

    @classmethod
    def from_json(cls, body: str | bytes) -> ExportMessage:
        """Raises NewerSchemaError for a newer schema (the AD worker agent reads export messages)."""
        data = _load_object(body)
        _check_schema(data, "agent")
        uid, version = data.get("uid"), data.get("version")
        if not isinstance(uid, str) or not isinstance(version, int):
            raise ValueError("export message needs uid (string) and version (integer)")
        snapshot = data.get("snapshot")  # checked by the worker; anything but an object is ignored
        deferrals = data.get("deferrals", 0)
        return cls(uid=graph_id(uid), version=version, reason=str(data.get("reason", "")),
                   correlation_id=str(data.get("correlation_id", "")),
                   snapshot=snapshot if isinstance(snapshot, dict) else None,
                   deferrals=deferrals if isinstance(deferrals, int) and not isinstance(deferrals, bool) else 0)


#: Largest snapshot (JSON, ASCII-escaped) an export message carries; a guest's entity is a few hundred bytes.
MAX_SNAPSHOT_CHARS = 16 * 1024


def _load_object(body: str | bytes) -> dict[str, Any]:
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("queue message is not a JSON object")
    return data
