"""Parsing and checking Graph change and lifecycle notifications (pure; no I/O).

Graph POSTs a collection ``{"value": [changeNotification, ...]}``. We never trust its content beyond the
user id: the apply step re-reads the user from Graph. What we do check, per item, is that it is ours
(``clientState`` compared in constant time against the current and the previous secret, and the tenant),
so a forged or foreign notification cannot make us spend Graph reads or touch AD.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from shared.core.domain import graph_id, is_guid

#: Graph answers a subscription request with a validation token that we must echo; keep it bounded.
MAX_VALIDATION_TOKEN_LENGTH = 4096
#: A notification POST from Graph holds at most a few hundred items; refuse absurd bodies early.
MAX_BODY_BYTES = 1_000_000

_USER_RESOURCE = re.compile(r"^/?users/(?P<id>[^/]+)$", re.IGNORECASE)
CHANGE_TYPES = frozenset({"created", "updated", "deleted"})
LIFECYCLE_EVENTS = frozenset({"reauthorizationRequired", "subscriptionRemoved", "missed"})


class MalformedNotificationError(ValueError):
    """The body as a whole cannot be read as a notification collection."""


@dataclass(frozen=True)
class UserChange:
    """One accepted change notification: which user, what Graph said happened, and when we got it."""

    user_id: str
    change_type: str
    subscription_id: str


@dataclass(frozen=True)
class Rejection:
    index: int
    reason: str
    forged: bool = False  # clientState or tenant did not match: untrusted, not merely malformed


@dataclass(frozen=True)
class _Batch:
    """What one POST held: per-item rejections, and the status code that reports them to Graph."""

    rejected: list[Rejection] = field(default_factory=list)

    @property
    def accepted_count(self) -> int:
        raise NotImplementedError

    @property
    def malformed(self) -> list[Rejection]:
        return [r for r in self.rejected if not r.forged]

    @property
    def forged(self) -> list[Rejection]:
        return [r for r in self.rejected if r.forged]

    def status_code(self) -> int:
        """202 when every item was ours and well formed; 400 if any was malformed (the valid ones are
        still handled, so nothing valid is lost); 403 when nothing was accepted and something was forged."""
        if self.malformed:
            return 400
        if not self.accepted_count and self.forged:
            return 403
        return 202


@dataclass(frozen=True)
class ChangeBatch(_Batch):
    accepted: list[UserChange] = field(default_factory=list)

    @property
    def accepted_count(self) -> int:
        return len(self.accepted)


@dataclass(frozen=True)
class SubscriptionEvent:
    """One Graph lifecycle notification: an event on a subscription (not a guest's deprovisioning)."""

    subscription_id: str
    event: str


@dataclass(frozen=True)
class SubscriptionEventBatch(_Batch):
    accepted: list[SubscriptionEvent] = field(default_factory=list)

    @property
    def accepted_count(self) -> int:
        return len(self.accepted)


def validation_token(params: dict[str, str]) -> str | None:
    """The token of a subscription validation request, or None if this is not one."""
    token = params.get("validationToken")
    if token is None:
        return None
    if len(token) > MAX_VALIDATION_TOKEN_LENGTH:
        raise MalformedNotificationError("validationToken is too long")
    return token


def client_state_matches(received: object, expected: tuple[str, ...]) -> bool:
    """Constant-time comparison against every configured secret (current and previous)."""
    if not isinstance(received, str) or not expected:
        return False
    got = received.encode("utf-8")
    matched = False
    for secret in expected:
        # Compare against all secrets, without short-circuit, so timing says nothing about which matched.
        matched |= hmac.compare_digest(got, secret.encode("utf-8"))
    return matched


def _load_collection(body: bytes) -> list[Any]:
    if len(body) > MAX_BODY_BYTES:
        raise MalformedNotificationError(f"body is larger than {MAX_BODY_BYTES} bytes")
    try:
        document = json.loads(body)
    except RecursionError:  # nested deeper than the parser recurses: not a notification, and not our failure
        raise MalformedNotificationError("body is not JSON we accept: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, and an integer of over 4300 digits
        raise MalformedNotificationError(f"body is not JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("value"), list):
        raise MalformedNotificationError('body must be a JSON object with a "value" array')
    return list(document["value"])


def _check_trust(
    item: dict[str, Any], index: int, client_states: tuple[str, ...], tenant_id: str | None
) -> Rejection | None:
    if not client_state_matches(item.get("clientState"), client_states):
        return Rejection(index, "clientState does not match", forged=True)
    if tenant_id is not None and str(item.get("tenantId", "")).lower() != tenant_id.lower():
        return Rejection(index, "notification is for another tenant", forged=True)
    return None


def _trusted_items(
    body: bytes, client_states: tuple[str, ...], tenant_id: str | None, rejected: list[Rejection]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """The items of a notification collection that are objects and ours; the rest go to ``rejected``."""
    for index, item in enumerate(_load_collection(body)):
        if not isinstance(item, dict):
            rejected.append(Rejection(index, "item is not a JSON object"))
            continue
        distrust = _check_trust(item, index, client_states, tenant_id)
        if distrust:
            rejected.append(distrust)
            continue
        yield index, item


def _user_id(item: dict[str, Any]) -> str | None:
    resource_data = item.get("resourceData")
    if isinstance(resource_data, dict) and isinstance(resource_data.get("id"), str):
        candidate: str = resource_data["id"]
    else:
        match = _USER_RESOURCE.match(str(item.get("resource", "")))
        if not match:
            return None
        candidate = match.group("id")
    return graph_id(candidate) if is_guid(candidate) else None


def parse_change_notifications(
    body: bytes, *, client_states: tuple[str, ...], tenant_id: str | None
) -> ChangeBatch:
    """Split a notification POST into accepted user changes and per-item rejections."""
    batch = ChangeBatch()
    for index, item in _trusted_items(body, client_states, tenant_id, batch.rejected):
        change_type = item.get("changeType")
        if not isinstance(change_type, str) or not set(change_type.split(",")) <= CHANGE_TYPES:
            batch.rejected.append(Rejection(index, f"unknown changeType {change_type!r}"))
            continue
        user_id = _user_id(item)
        if user_id is None:
            batch.rejected.append(Rejection(index, "resource is not a user (Users/<guid>)"))
            continue
        batch.accepted.append(
            UserChange(user_id=user_id, change_type=change_type, subscription_id=str(item.get("subscriptionId", "")))
        )
    return batch


def parse_lifecycle_notifications(
    body: bytes, *, client_states: tuple[str, ...], tenant_id: str | None
) -> SubscriptionEventBatch:
    """Split a lifecycle POST into accepted events (reauthorizationRequired, subscriptionRemoved, missed)."""
    batch = SubscriptionEventBatch()
    for index, item in _trusted_items(body, client_states, tenant_id, batch.rejected):
        event = item.get("lifecycleEvent")
        subscription_id = item.get("subscriptionId")
        if event not in LIFECYCLE_EVENTS or not isinstance(subscription_id, str):
            batch.rejected.append(Rejection(index, f"unknown lifecycleEvent {event!r}"))
            continue
        batch.accepted.append(SubscriptionEvent(subscription_id=subscription_id, event=str(event)))
    return batch
