"""Change and lifecycle notifications POSTed to subscribers, the way Graph delivers them.

A change to a user queues one notification per live subscription that asked for that change type; one thread
delivers the queue, batching what is waiting for the same URL, and redelivers with back-off after a transient
failure (5xx, timeout, refused) while a 4xx answer is final. Tests can drop the next notifications
(``drop_next``) and wait until the queue is empty (``wait_for_deliveries``).
"""

from __future__ import annotations

import json
import queue
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from devtools.graphsim.state import Tenant, iso, now


@dataclass
class Deliveries:
    sent: list[dict[str, Any]] = field(default_factory=list)  # one {"value": [item]} per notification delivered
    failed: list[str] = field(default_factory=list)
    dropped: int = 0


def post(url: str, body: bytes, content_type: str, timeout: float) -> tuple[int, bytes]:
    """POST to a subscriber's endpoint; (status, body) whatever the status."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"notification URL must be http(s): {url}")
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        url, data=body, method="POST", headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - scheme checked above
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read() if exc.fp else b""


class Notifications:
    """The outbox of notifications and the thread (``deliver_loop``) that POSTs them."""

    def __init__(self, tenant: Tenant) -> None:
        self._tenant = tenant
        self.deliveries = Deliveries()
        #: Back-off between redeliveries of a notification that failed transiently (Graph: up to 4 hours).
        self.redelivery_delays: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
        self.max_batch = 100  # notifications per POST at most when several are waiting
        self.drop_next = 0
        self._outbox: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()

    def reset(self) -> None:
        with self._tenant.lock:
            self.deliveries = Deliveries()
            self.drop_next = 0

    def drop_next_notifications(self, count: int) -> None:
        with self._tenant.lock:
            self.drop_next += count

    def user_changed(self, user_id: str, change_type: str) -> None:
        """Queue a change notification on the user for each live subscription to ``change_type``.
        Call with the lock held (the change and its notifications go together)."""
        tenant = self._tenant
        at = now()
        for sub in tenant.subscriptions.values():
            if sub.expiration <= at or change_type not in sub.change_type.split(","):
                continue
            if self.drop_next > 0:
                self.drop_next -= 1
                self.deliveries.dropped += 1
                continue
            item = {
                "subscriptionId": sub.id,
                "subscriptionExpirationDateTime": iso(sub.expiration),
                "clientState": sub.client_state,
                "changeType": change_type,
                "resource": f"Users/{tenant.out_id(user_id)}",
                "tenantId": tenant.tenant_id,
                "resourceData": {
                    "@odata.type": "#Microsoft.Graph.User",
                    "@odata.id": f"Users/{tenant.out_id(user_id)}",
                    "id": tenant.out_id(user_id),
                    "organizationId": tenant.tenant_id,
                },
            }
            self._outbox.put((sub.notification_url, {"value": [item]}))

    def send_lifecycle(self, subscription_id: str, event: str) -> None:
        """Queue a lifecycle notification (e.g. ``reauthorizationRequired``) to the subscription's lifecycle URL."""
        with self._tenant.lock:
            sub = self._tenant.subscriptions[subscription_id]
            if not sub.lifecycle_url:
                raise ValueError("subscription has no lifecycleNotificationUrl")
            item = {
                "subscriptionId": sub.id,
                "subscriptionExpirationDateTime": iso(sub.expiration),
                "tenantId": self._tenant.tenant_id,
                "clientState": sub.client_state,
                "lifecycleEvent": event,
            }
            self._outbox.put((sub.lifecycle_url, {"value": [item]}))

    def wait_for_deliveries(self, timeout: float = 10.0) -> None:
        """Return once everything queued so far has been tried (redeliveries scheduled later are not awaited)."""
        done = threading.Event()
        self._outbox.put(("", {"__marker__": done}))
        done.wait(timeout)

    def stop(self) -> None:
        """Make ``deliver_loop`` return after what is queued."""
        self._outbox.put(None)

    def deliver_loop(self) -> None:
        carry: tuple[str, dict[str, Any]] | None = None
        while True:
            job = carry if carry is not None else self._outbox.get()
            carry = None
            if job is None:
                return
            url, payload = job
            marker = payload.get("__marker__")
            if isinstance(marker, threading.Event):
                marker.set()
                continue
            attempt = int(payload.pop("__attempt__", 0))
            if attempt == 0:
                # Like Graph under load, notifications already waiting for the same URL go out in one POST.
                while len(payload["value"]) < self.max_batch:
                    try:
                        following = self._outbox.get_nowait()
                    except queue.Empty:
                        break
                    if (following is None or following[0] != url or "__marker__" in following[1]
                            or "__attempt__" in following[1]):
                        carry = following
                        break
                    payload = {"value": [*payload["value"], *following[1]["value"]]}
            try:
                status, _ = post(url, json.dumps(payload).encode(), "application/json", timeout=3.0)
                if status >= 300:
                    raise urllib.error.HTTPError(url, status, "refused", None, None)  # type: ignore[arg-type]
                with self._tenant.lock:
                    self.deliveries.sent.extend({"value": [item]} for item in payload["value"])
            except Exception as exc:
                with self._tenant.lock:
                    self.deliveries.failed.append(f"{url}: {exc}")
                transient = not isinstance(exc, urllib.error.HTTPError) or exc.code >= 500
                if transient and attempt < len(self.redelivery_delays):
                    # Graph retries a failed delivery (5xx, timeout, refused) with back-off for up to 4 hours;
                    # a 4xx answer is final.
                    self._redeliver(url, payload, attempt + 1, self.redelivery_delays[attempt])

    def _redeliver(self, url: str, payload: dict[str, Any], attempt: int, delay: float) -> None:
        def put() -> None:
            self._outbox.put((url, {**payload, "__attempt__": attempt}))

        timer = threading.Timer(delay, put)
        timer.daemon = True
        timer.start()
