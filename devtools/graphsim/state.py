"""The simulated tenant's shared state, and the OData shapes every resource writes.

One ``Tenant`` holds the directory (users, deleted users, groups and their members), the subscriptions and the
knobs tests turn (``page_size``, ``id_case``, ``app_roles``, ``verified_domains``), behind one re-entrant lock
that every resource takes: a request and a test's control call never see each other half done. The resource
modules import this one and nothing above it, so they can be read (and tested) on their own.
"""

from __future__ import annotations

import re
import threading
import urllib.parse
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

CONTEXT = "https://graph.microsoft.com/v1.0/$metadata"
USER_PROPERTIES = (
    "id", "businessPhones", "displayName", "givenName", "jobTitle", "mail", "mobilePhone", "officeLocation",
    "preferredLanguage", "surname", "userPrincipalName", "userType", "accountEnabled",
)
DEFAULT_SELECT = ("businessPhones", "displayName", "givenName", "jobTitle", "mail", "mobilePhone",
                  "officeLocation", "preferredLanguage", "surname", "userPrincipalName", "id")
#: Application permissions granted by default (admin consent), restored by ``reset``.
DEFAULT_APP_ROLES = frozenset({"User.Read.All", "GroupMember.Read.All", "Mail.Send", "Organization.Read.All"})


def now() -> datetime:
    return datetime.now(UTC)


def iso(when: datetime) -> str:
    """Graph's timestamp format: seven fractional digits and a Z."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")


def parse_time(value: str) -> datetime:
    """Graph writes 7 fractional digits; Python reads at most 6."""
    text = value.strip().replace("Z", "+00:00")
    match = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)$", text)
    if match and match.group(2):
        text = match.group(1) + match.group(2)[:7] + match.group(3)
    result = datetime.fromisoformat(text)
    return result if result.tzinfo else result.replace(tzinfo=UTC)


class GraphHttpError(Exception):
    """An error answer in Graph's JSON shape; the HTTP front turns it into the response."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "innerError": {"date": now().strftime("%Y-%m-%dT%H:%M:%S"),
                               "request-id": str(uuid.uuid4()), "client-request-id": str(uuid.uuid4())},
            }
        }


def not_found(object_id: str) -> GraphHttpError:
    return GraphHttpError(404, "Request_ResourceNotFound",
                          f"Resource '{object_id}' does not exist or one of its queried reference-property "
                          "objects are not present.")


def select(params: dict[str, str], known: tuple[str, ...] = USER_PROPERTIES,
           default: tuple[str, ...] = DEFAULT_SELECT, type_name: str = "microsoft.graph.user") -> tuple[str, ...]:
    """The ``$select`` properties, ``default`` without one; 400 for a property the type does not have."""
    raw = params.get("$select")
    if not raw:
        return default
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise GraphHttpError(400, "Request_BadRequest",
                             f"Could not find a property named '{unknown[0]}' on type '{type_name}'.")
    return names


def context(selected: tuple[str, ...], what: str = "users", default: tuple[str, ...] = DEFAULT_SELECT) -> str:
    """``@odata.context`` of a collection, naming the selected properties when they are not the default."""
    if selected == default:
        return f"{CONTEXT}#{what}"
    return f"{CONTEXT}#{what}({','.join(selected)})"


@dataclass
class Subscription:
    id: str
    resource: str
    change_type: str
    notification_url: str
    lifecycle_url: str | None
    client_state: str | None
    expiration: datetime
    latest_tls: str = "v1_2"

    def to_json(self, application_id: str, *, with_client_state: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "resource": self.resource,
            "applicationId": application_id,
            "changeType": self.change_type,
            "clientState": self.client_state if with_client_state else None,
            "notificationUrl": self.notification_url,
            "expirationDateTime": iso(self.expiration),
            "creatorId": application_id,
            "latestSupportedTlsVersion": self.latest_tls,
            "notificationContentType": "application/json",
        }
        if self.lifecycle_url:
            body["lifecycleNotificationUrl"] = self.lifecycle_url
        return body


class Tenant:
    """The directory and the app registration every resource reads and changes, guarded by ``lock``."""

    def __init__(self, *, base_url: str, tenant_id: str, tenant_domain: str, client_id: str, client_secret: str,
                 page_size: int) -> None:
        self.base_url = base_url
        self.tenant_id = tenant_id
        self.tenant_domain = tenant_domain
        self.client_id = client_id
        self.client_secret = client_secret
        self.page_size = page_size
        self.lock = threading.RLock()
        #: The tenant's verified domains as /organization lists them (the initial one first).
        self.verified_domains: list[dict[str, Any]] = self.default_domains()
        self.users: dict[str, dict[str, Any]] = {}
        self.deleted: dict[str, dict[str, Any]] = {}  # soft-deleted users (deleted items), restorable
        self.groups: dict[str, dict[str, Any]] = {}
        self.members: dict[str, dict[str, None]] = {}  # group id -> member ids (users or groups), in order
        self.subscriptions: dict[str, Subscription] = {}
        self.app_roles: set[str] = set(DEFAULT_APP_ROLES)  # application permissions with admin consent
        self.request_count: Counter[str] = Counter()
        self.id_case: str | None = None  # None: ids as stored; "upper" / "lower": written in that case

    @property
    def graph_url(self) -> str:
        return f"{self.base_url}/v1.0"

    def default_domains(self) -> list[dict[str, Any]]:
        return [{"capabilities": "Email, OfficeCommunicationsOnline", "isDefault": True, "isInitial": True,
                 "name": self.tenant_domain, "type": "Managed"}]

    def reset(self) -> None:
        """Forget the directory, subscriptions and counters; default permissions, domains and id case."""
        with self.lock:
            self.users.clear()
            self.deleted.clear()
            self.groups.clear()
            self.members.clear()
            self.subscriptions.clear()
            self.request_count.clear()
            self.app_roles = set(DEFAULT_APP_ROLES)
            self.verified_domains = self.default_domains()
            self.id_case = None

    def out_id(self, object_id: str) -> str:
        """An id as this simulator writes it (see ``id_case``)."""
        if self.id_case == "upper":
            return object_id.upper()
        if self.id_case == "lower":
            return object_id.lower()
        return object_id

    def project(self, obj: dict[str, Any], selected: tuple[str, ...]) -> dict[str, Any]:
        body = {name: obj.get(name) for name in selected if name != "id"}
        body["id"] = self.out_id(obj["id"])
        return body

    def user_by_id_or_upn(self, user_id: str) -> dict[str, Any] | None:
        """The user whose id (any letter case, as Graph compares GUIDs) or userPrincipalName is ``user_id``.
        Call with the lock held."""
        wanted = user_id.lower()
        return self.users.get(user_id) or next(
            (u for u in self.users.values()
             if str(u["id"]).lower() == wanted or str(u.get("userPrincipalName", "")).lower() == wanted),
            None,
        )

    def find_user(self, user_id: str) -> dict[str, Any]:
        """By id or userPrincipalName, as /users/{id | userPrincipalName} does; 404 otherwise."""
        with self.lock:
            user = self.user_by_id_or_upn(user_id)
        if user is None:
            raise not_found(user_id)
        return user

    def page_window(self, params: dict[str, str]) -> tuple[int, int]:
        """($top, offset from our $skiptoken): Graph's default page is ours (page_size), its maximum 999."""
        try:
            top = min(int(params.get("$top", self.page_size)), 999)
            skip = int(params.get("$skiptoken", "0"))
        except ValueError:
            raise GraphHttpError(400, "Request_BadRequest", "Invalid $top or $skiptoken") from None
        if top < 1 or skip < 0:
            raise GraphHttpError(400, "Request_BadRequest", "Invalid $top or $skiptoken")
        return top, skip

    def paged(self, path: str, params: dict[str, str], context: str, items: list[Any]) -> dict[str, Any]:
        """One page of a collection, with @odata.nextLink (before value, as Graph writes it) when more follow."""
        top, skip = self.page_window(params)
        body: dict[str, Any] = {"@odata.context": context}
        if skip + top < len(items):
            query = {k: v for k, v in params.items() if k != "$skiptoken"} | {"$skiptoken": str(skip + top)}
            body["@odata.nextLink"] = f"{self.graph_url}{path}?{urllib.parse.urlencode(query)}"
        body["value"] = items[skip : skip + top]
        return body
