"""``/subscriptions``: create (with Graph's validation handshake), list, get, renew (PATCH) and delete.

Only ``users`` with change types ``updated``/``deleted`` is supported, as guestsync needs. Creating one
validates the notification URL (and the lifecycle URL) the way Graph does before it answers: a POST with
``?validationToken=…`` that must be echoed as ``text/plain`` within 10 seconds. A second subscription on the
same resource, URL and change types is refused with 409, and an expiration past Graph's maximum for users
(41,760 minutes) with 400.
"""

from __future__ import annotations

import json
import urllib.parse
import uuid
from datetime import datetime, timedelta
from typing import Any

from devtools.graphsim.notifications import post
from devtools.graphsim.state import CONTEXT, GraphHttpError, Subscription, Tenant, now, parse_time

MAX_USER_SUBSCRIPTION_MINUTES = 41_760


def _check_expiration(expiration: datetime) -> None:
    at = now()
    if expiration <= at:
        raise GraphHttpError(400, "InvalidRequest", "Subscription expiration must be in the future.")
    if expiration > at + timedelta(minutes=MAX_USER_SUBSCRIPTION_MINUTES):
        raise GraphHttpError(400, "InvalidRequest",
                             "Subscription expiration can only be 41760 minutes in the future.")


def _validate_endpoint(url: str) -> None:
    """Graph's handshake: POST ?validationToken=..., expect 200 text/plain echoing it within 10 s."""
    token = f"Validation: Testing client application reachability for subscription Request-Id: {uuid.uuid4()}"
    sep = "&" if "?" in url else "?"
    try:
        status, answer = post(f"{url}{sep}validationToken={urllib.parse.quote(token)}", b"",
                              "text/plain; charset=utf-8", timeout=10.0)
    except Exception as exc:
        raise GraphHttpError(400, "InvalidRequest",
                             f"Subscription validation request failed. Notification endpoint must respond with "
                             f"200 OK to validation request. ({exc})") from None
    if status != 200 or answer.decode("utf-8", "replace") != token:
        raise GraphHttpError(400, "InvalidRequest",
                             "Subscription validation request failed. Response must exactly match "
                             "validationToken query parameter.")


class Subscriptions:
    def __init__(self, tenant: Tenant) -> None:
        self._tenant = tenant

    def create(self, body: bytes) -> dict[str, Any]:
        try:
            request = json.loads(body)
            resource = str(request["resource"])
            change_type = str(request["changeType"])
            url = str(request["notificationUrl"])
            expiration = parse_time(str(request["expirationDateTime"]))
        except (KeyError, ValueError, TypeError) as exc:
            raise GraphHttpError(400, "InvalidRequest", f"Invalid subscription request: {exc}") from None
        if resource.strip("/").lower() != "users":
            raise GraphHttpError(400, "InvalidRequest", f"Resource '{resource}' is not supported by the simulator.")
        if not set(change_type.split(",")) <= {"updated", "deleted"}:
            raise GraphHttpError(400, "InvalidRequest", "changeType for users must be updated and/or deleted.")
        _check_expiration(expiration)
        lifecycle = request.get("lifecycleNotificationUrl")
        with self._tenant.lock:
            for sub in self._tenant.subscriptions.values():
                if (sub.resource.strip("/").lower(), sub.notification_url, sub.change_type) == (
                    "users", url, change_type
                ):
                    raise GraphHttpError(409, "ExtensionError",
                                         "Subscription already exists for this resource and notification URL.")
        for target in [url] + ([lifecycle] if lifecycle else []):
            _validate_endpoint(str(target))
        sub = Subscription(str(uuid.uuid4()), resource, change_type, url, lifecycle, request.get("clientState"),
                           expiration, str(request.get("latestSupportedTlsVersion", "v1_2")))
        with self._tenant.lock:
            self._tenant.subscriptions[sub.id] = sub
        return {"@odata.context": f"{CONTEXT}#subscriptions/$entity"} | sub.to_json(self._tenant.client_id,
                                                                                  with_client_state=True)

    def list_subscriptions(self) -> dict[str, Any]:
        """Graph leaves clientState out (null) when it lists or reads subscriptions."""
        with self._tenant.lock:
            subs = [s.to_json(self._tenant.client_id, with_client_state=False)
                    for s in self._tenant.subscriptions.values()]
        return {"@odata.context": f"{CONTEXT}#subscriptions", "value": subs}

    def one(self, method: str, sub_id: str, body: bytes) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        """GET, PATCH (renew: a new expirationDateTime) or DELETE one subscription."""
        client_id = self._tenant.client_id
        with self._tenant.lock:
            sub = self._tenant.subscriptions.get(sub_id)
        if sub is None:
            raise GraphHttpError(404, "ResourceNotFound", f"The object was not found: {sub_id}")
        if method == "GET":
            return 200, {"@odata.context": f"{CONTEXT}#subscriptions/$entity"} | sub.to_json(
                client_id, with_client_state=False), {}
        if method == "DELETE":
            with self._tenant.lock:
                self._tenant.subscriptions.pop(sub_id, None)
            return 204, None, {}
        if method == "PATCH":
            try:
                expiration = parse_time(str(json.loads(body)["expirationDateTime"]))
            except (KeyError, ValueError, TypeError) as exc:
                raise GraphHttpError(400, "InvalidRequest", f"Invalid renewal: {exc}") from None
            _check_expiration(expiration)
            with self._tenant.lock:
                sub.expiration = expiration
            return 200, {"@odata.context": f"{CONTEXT}#subscriptions/$entity"} | sub.to_json(
                client_id, with_client_state=True), {}
        raise GraphHttpError(405, "BadRequest", "Method not allowed")
