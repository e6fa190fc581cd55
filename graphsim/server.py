"""A local Microsoft Graph simulator: the parts of Graph v1.0 guestsync uses, in Graph's documented shapes.

Serves HTTPS (so azure-identity and msgraph-sdk run unmodified), issues OAuth2 client-credential tokens,
and implements ``/users`` (``$select``, ``$filter`` on userType, ``$top`` paging), ``/users/{id}``,
``/users/delta`` (nextLink/deltaLink, ``@removed``, 410 on an unknown token), ``/subscriptions`` with
the validation handshake, 409 on duplicates and change/lifecycle notifications POSTed to the subscriber, and
groups: ``/groups/{id}``, ``/groups/{id}/transitiveMembers`` (optionally cast to ``microsoft.graph.user`` or
``microsoft.graph.group``; nested groups expanded, cycles safe; ``$select``, ``$top`` paging) and
``POST /users/{id}/checkMemberGroups`` (transitive). Group membership changes send no change notifications,
as in Graph. ``POST /users/{id | userPrincipalName}/sendMail`` (202, needs Mail.Send) records the message in
``sent_mail`` instead of delivering it.
Throttling (429/503 with Retry-After) can be switched on for the next requests.
Object ids are GUIDs that Graph matches in any letter case; ``id_case = "upper"`` (or ``"lower"``) makes the
simulator write every object id it returns (objects, ``@removed`` items, notifications) in that case, as some
Graph responses do, while lookups keep matching ids whatever their case.
Permissions: ``app_roles`` holds the application permissions granted to the app (admin consent); a request
that needs one it lacks gets Graph's 403 ``Authorization_RequestDenied``. The check is made on each request
(Entra applies a consent change to new tokens only); tokens carry the granted roles in their ``roles`` claim
like Entra's (unsigned: clients must treat Graph tokens as opaque anyway). Sign-in takes a client secret or a
certificate (``register_certificate``; a client assertion JWT signed RS256 or PS256, as MSAL sends it).

The JSON follows the examples in Microsoft's Graph documentation (see tests that compare the keys with
``tests/reference/graph-examples``, copied verbatim from the docs).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import queue
import re
import secrets
import socket
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

log = logging.getLogger("graphsim")

CONTEXT = "https://graph.microsoft.com/v1.0/$metadata"
USER_PROPERTIES = (
    "id", "businessPhones", "displayName", "givenName", "jobTitle", "mail", "mobilePhone", "officeLocation",
    "preferredLanguage", "surname", "userPrincipalName", "userType", "accountEnabled",
)
DEFAULT_SELECT = ("businessPhones", "displayName", "givenName", "jobTitle", "mail", "mobilePhone",
                  "officeLocation", "preferredLanguage", "surname", "userPrincipalName", "id")
MAX_USER_SUBSCRIPTION_MINUTES = 41_760
GROUP_PROPERTIES = (
    "id", "createdDateTime", "description", "displayName", "groupTypes", "mail", "mailEnabled", "mailNickname",
    "securityEnabled", "visibility",
)
DIRECTORY_OBJECT_PROPERTIES = tuple(dict.fromkeys(USER_PROPERTIES + GROUP_PROPERTIES))
MAX_CHECK_MEMBER_GROUPS = 20
# OData casts on transitiveMembers: Graph accepts the namespace and its alias ("graph", which msgraph-sdk sends)
_MEMBER_CASTS = {"microsoft.graph.user": "user", "graph.user": "user",
                 "microsoft.graph.group": "group", "graph.group": "group"}
_UNSUPPORTED_MEMBER_QUERY = ("$filter", "$search", "$orderby", "$count", "$expand", "$skip")
_FILTER_USER_TYPE = re.compile(r"^\s*userType\s+eq\s+'(?P<value>[^']*)'\s*$", re.IGNORECASE)
#: ``id in ('…', '…')``: Graph allows at most 15 values in an ``in`` clause without advanced queries.
_FILTER_ID_IN = re.compile(r"^id in \((?P<ids>\s*'[^']*'(?:\s*,\s*'[^']*')*\s*)\)$", re.IGNORECASE)
MAX_IN_VALUES = 15
#: Application permissions granted by default, and the ones each kind of request accepts (any one of them).
DEFAULT_APP_ROLES = frozenset({"User.Read.All", "GroupMember.Read.All", "Mail.Send", "Organization.Read.All"})
USER_READ_ROLES = frozenset({"User.Read.All", "User.ReadWrite.All", "Directory.Read.All",
                             "Directory.ReadWrite.All"})
GROUP_MEMBER_READ_ROLES = frozenset({"GroupMember.Read.All", "GroupMember.ReadWrite.All", "Group.Read.All",
                                     "Group.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"})
MAIL_SEND_ROLES = frozenset({"Mail.Send"})
ORGANIZATION_READ_ROLES = frozenset({"Organization.Read.All", "Directory.Read.All", "Organization.ReadWrite.All",
                                     "Directory.ReadWrite.All"})
ORGANIZATION_PROPERTIES = ("id", "displayName", "verifiedDomains")
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CLOCK_SKEW = timedelta(minutes=5)


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")


def _parse_time(value: str) -> datetime:
    """Graph writes 7 fractional digits; Python reads at most 6."""
    text = value.strip().replace("Z", "+00:00")
    match = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)$", text)
    if match and match.group(2):
        text = match.group(1) + match.group(2)[:7] + match.group(3)
    result = datetime.fromisoformat(text)
    return result if result.tzinfo else result.replace(tzinfo=UTC)


class GraphHttpError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "innerError": {"date": _now().strftime("%Y-%m-%dT%H:%M:%S"),
                               "request-id": str(uuid.uuid4()), "client-request-id": str(uuid.uuid4())},
            }
        }


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
            "expirationDateTime": _iso(self.expiration),
            "creatorId": application_id,
            "latestSupportedTlsVersion": self.latest_tls,
            "notificationContentType": "application/json",
        }
        if self.lifecycle_url:
            body["lifecycleNotificationUrl"] = self.lifecycle_url
        return body


@dataclass
class _Change:
    seq: int
    user_id: str
    removed: str | None  # None = changed/created; "changed" = soft delete; "deleted" = hard delete


@dataclass
class Deliveries:
    sent: list[dict[str, Any]] = field(default_factory=list)  # one {"value": [item]} per notification delivered
    failed: list[str] = field(default_factory=list)
    dropped: int = 0


class GraphSimulator:
    """Run with ``start()``; drive with ``invite_guest``/``update_user``/``delete_user``; ``stop()`` at the end."""

    def __init__(
        self,
        cert_file: str | Path,
        key_file: str | Path,
        *,
        tenant_id: str = "84bd8158-6d4d-4958-8b9f-9d6445542f95",
        tenant_domain: str = "contoso.onmicrosoft.com",
        client_id: str = "24d3b144-21ae-4080-943f-7067b395b913",
        client_secret: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        page_size: int = 100,
    ) -> None:
        self.tenant_id = tenant_id
        self.tenant_domain = tenant_domain
        #: The tenant's verified domains as /organization lists them (the initial one first).
        self.verified_domains: list[dict[str, Any]] = self._default_domains()
        self.client_id = client_id
        self.client_secret = client_secret or secrets.token_urlsafe(24)
        self.page_size = page_size
        self._lock = threading.RLock()
        self._users: dict[str, dict[str, Any]] = {}
        self._deleted: dict[str, dict[str, Any]] = {}
        self._changes: list[_Change] = []
        self._seq = 0
        self._delta_epoch = 0
        self._groups: dict[str, dict[str, Any]] = {}
        self._members: dict[str, dict[str, None]] = {}  # group id -> member ids (users or groups), in order
        self._tokens: set[str] = set()
        self.app_roles: set[str] = set(DEFAULT_APP_ROLES)  # application permissions with admin consent
        self._certificates: dict[str, x509.Certificate] = {}  # base64url SHA-256 and SHA-1 thumbprint -> cert
        self.subscriptions: dict[str, Subscription] = {}
        self.request_count: Counter[str] = Counter()
        self.deliveries = Deliveries()
        #: Back-off between redeliveries of a notification that failed transiently (Graph: up to 4 hours).
        self.redelivery_delays: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
        self.max_batch = 100  # notifications per POST at most when several are waiting
        self.sent_mail: list[dict[str, Any]] = []  # sendMail requests accepted, oldest first
        self.id_case: str | None = None  # None: user ids as stored; "upper" / "lower": written in that case
        self._drop_next = 0
        self._throttle: list[tuple[int, int]] = []  # (status, retry_after) for the next requests
        self._outbox: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()
        self._server = _GraphHTTPServer((host, port), _handler_for(self))
        self._server.daemon_threads = True
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(cert_file), str(key_file))
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._threads: list[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"https://{host!s}:{port}"

    @property
    def graph_url(self) -> str:
        return f"{self.base_url}/v1.0"

    def start(self) -> GraphSimulator:
        for target in (self._server.serve_forever, self._deliver_loop):
            thread = threading.Thread(target=target, name=f"graphsim-{target.__name__}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._outbox.put(None)
        self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def reset(self) -> None:
        """Forget users, groups, subscriptions, counters, fault injection and registered certificates, and
        grant the default application permissions again (between tests)."""
        self.wait_for_deliveries()
        with self._lock:
            self._users.clear()
            self._deleted.clear()
            self._groups.clear()
            self._members.clear()
            self._changes.clear()
            self.subscriptions.clear()
            self.request_count.clear()
            self.deliveries = Deliveries()
            self.sent_mail.clear()
            self._drop_next = 0
            self._throttle.clear()
            self.app_roles = set(DEFAULT_APP_ROLES)
            self.verified_domains = self._default_domains()
            self._certificates.clear()
            self.id_case = None
            self._delta_epoch += 1

    def _default_domains(self) -> list[dict[str, Any]]:
        return [{"capabilities": "Email, OfficeCommunicationsOnline", "isDefault": True, "isInitial": True,
                 "name": self.tenant_domain, "type": "Managed"}]

    # -- control API (what an admin does in Entra) ------------------------------------------------------
    def add_user(self, **props: Any) -> dict[str, Any]:
        with self._lock:
            user: dict[str, Any] = {
                "id": props.pop("id", None) or str(uuid.uuid4()),
                "businessPhones": [],
                "userType": "Member",
                "accountEnabled": True,
            }
            user.update(props)
            user.setdefault("displayName", user.get("userPrincipalName"))
            self._users[user["id"]] = user
            self._record(user["id"], None, "updated")
            return dict(user)

    def invite_guest(
        self, email: str, display_name: str, given_name: str | None = None, surname: str | None = None
    ) -> dict[str, Any]:
        """What Entra does on a B2B invitation: a Guest whose UPN is <mail with _>#EXT#@<tenant>."""
        upn = f"{email.replace('@', '_')}#EXT#@{self.tenant_domain}"
        return self.add_user(
            userType="Guest", mail=email, displayName=display_name, givenName=given_name, surname=surname,
            userPrincipalName=upn,
        )

    def update_user(self, user_id: str, **props: Any) -> dict[str, Any]:
        with self._lock:
            user = self._users[user_id]
            user.update(props)
            self._record(user_id, None, "updated")
            return dict(user)

    def delete_user(self, user_id: str) -> None:
        """Soft delete (to deleted items): users/delta reports @removed reason 'changed'."""
        with self._lock:
            self._deleted[user_id] = self._users.pop(user_id)
            self._record(user_id, "changed", "updated")

    def restore_user(self, user_id: str) -> None:
        with self._lock:
            self._users[user_id] = self._deleted.pop(user_id)
            self._record(user_id, None, "updated")

    def hard_delete_user(self, user_id: str) -> None:
        with self._lock:
            self._users.pop(user_id, None)
            self._deleted.pop(user_id, None)
            for members in self._members.values():
                members.pop(user_id, None)
            self._record(user_id, "deleted", "deleted")

    # A soft-deleted user keeps its memberships (a restore brings them back, as in Entra) but is neither
    # listed by transitiveMembers nor found by checkMemberGroups while deleted.

    def add_group(self, display_name: str, group_id: str | None = None) -> dict[str, Any]:
        """A security group (no change notification: guestsync subscribes to users only)."""
        with self._lock:
            gid = group_id or str(uuid.uuid4())
            if gid in self._groups or gid in self._users or gid in self._deleted:
                raise ValueError(f"object {gid} exists already")
            nickname = re.sub(r"[^A-Za-z0-9]", "", display_name) or "group"
            group: dict[str, Any] = {
                "id": gid,
                "createdDateTime": _now().strftime("%Y-%m-%dT%H:%M:%SZ"),
                "description": None,
                "displayName": display_name,
                "groupTypes": [],
                "mail": None,
                "mailEnabled": False,
                "mailNickname": nickname,
                "securityEnabled": True,
                "visibility": None,
            }
            self._groups[gid] = group
            self._members[gid] = {}
            return dict(group)

    def add_group_member(self, group_id: str, member_id: str) -> None:
        """Add a user or a group (nesting) as a direct member; adding an existing member is a no-op.

        KeyError for an unknown group or member, ValueError for a group added to itself (Graph refuses both).
        Cycles through several groups are accepted; the transitive queries stay finite.
        """
        with self._lock:
            if group_id not in self._groups:
                raise KeyError(f"no group {group_id}")
            if member_id not in self._users and member_id not in self._groups:
                raise KeyError(f"no user or group {member_id}")
            if member_id == group_id:
                raise ValueError("a group cannot be a member of itself")
            self._members[group_id][member_id] = None

    def remove_group_member(self, group_id: str, member_id: str) -> None:
        """KeyError when the group is unknown or the object is not a direct member."""
        with self._lock:
            if group_id not in self._groups:
                raise KeyError(f"no group {group_id}")
            del self._members[group_id][member_id]

    def delete_group(self, group_id: str) -> None:
        with self._lock:
            del self._groups[group_id]
            self._members.pop(group_id, None)
            for members in self._members.values():
                members.pop(group_id, None)

    @property
    def groups(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(g) for g in self._groups.values()]

    def transitive_user_ids(self, group_id: str) -> list[str]:
        """The ids transitiveMembers/microsoft.graph.user returns, in its order (for tests)."""
        with self._lock:
            return [obj["id"] for kind, obj in self._transitive_members(group_id) if kind == "user"]

    @property
    def users(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(u) for u in self._users.values()]

    def seed(self, guests: int = 0, members: int = 0) -> None:
        for i in range(members):
            self.add_user(displayName=f"Member {i + 1}", userPrincipalName=f"member{i + 1}@{self.tenant_domain}",
                          mail=f"member{i + 1}@{self.tenant_domain}", givenName="Member", surname=str(i + 1))
        for i in range(guests):
            self.invite_guest(f"guest{i + 1}@fabrikam.com", f"Guest {i + 1}", "Guest", str(i + 1))

    def drop_next_notifications(self, count: int) -> None:
        with self._lock:
            self._drop_next += count

    def throttle(self, count: int, retry_after: int = 1, status: int = 429) -> None:
        with self._lock:
            self._throttle.extend([(status, retry_after)] * count)

    def register_certificate(self, pem: bytes) -> str:
        """Register the (first) certificate in ``pem`` as a credential of the app, as uploading it to the app
        registration does; return its SHA-256 thumbprint (base64url, the ``x5t#S256`` MSAL sends)."""
        cert = x509.load_pem_x509_certificates(pem)[0]
        if not isinstance(cert.public_key(), rsa.RSAPublicKey):
            raise ValueError("Entra ID accepts RSA certificates only")
        sha256, sha1 = (_b64url(cert.fingerprint(algorithm)) for algorithm in (hashes.SHA256(), hashes.SHA1()))  # noqa: S303
        with self._lock:
            self._certificates[sha256] = self._certificates[sha1] = cert
        return sha256

    def expire_delta_tokens(self) -> None:
        with self._lock:
            self._delta_epoch += 1

    def send_lifecycle(self, subscription_id: str, event: str) -> None:
        with self._lock:
            sub = self.subscriptions[subscription_id]
            if not sub.lifecycle_url:
                raise ValueError("subscription has no lifecycleNotificationUrl")
            item = {
                "subscriptionId": sub.id,
                "subscriptionExpirationDateTime": _iso(sub.expiration),
                "tenantId": self.tenant_id,
                "clientState": sub.client_state,
                "lifecycleEvent": event,
            }
            self._outbox.put((sub.lifecycle_url, {"value": [item]}))

    def wait_for_deliveries(self, timeout: float = 10.0) -> None:
        done = threading.Event()
        self._outbox.put(("", {"__marker__": done}))
        done.wait(timeout)

    # -- internals --------------------------------------------------------------------------------------
    def _record(self, user_id: str, removed: str | None, change_type: str) -> None:
        self._seq += 1
        self._changes.append(_Change(self._seq, user_id, removed))
        now = _now()
        for sub in self.subscriptions.values():
            if sub.expiration <= now or change_type not in sub.change_type.split(","):
                continue
            if self._drop_next > 0:
                self._drop_next -= 1
                self.deliveries.dropped += 1
                continue
            item = {
                "subscriptionId": sub.id,
                "subscriptionExpirationDateTime": _iso(sub.expiration),
                "clientState": sub.client_state,
                "changeType": change_type,
                "resource": f"Users/{self._out_id(user_id)}",
                "tenantId": self.tenant_id,
                "resourceData": {
                    "@odata.type": "#Microsoft.Graph.User",
                    "@odata.id": f"Users/{self._out_id(user_id)}",
                    "id": self._out_id(user_id),
                    "organizationId": self.tenant_id,
                },
            }
            self._outbox.put((sub.notification_url, {"value": [item]}))

    def _deliver_loop(self) -> None:
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
                status, _ = _post(url, json.dumps(payload).encode(), "application/json", timeout=3.0)
                if status >= 300:
                    raise urllib.error.HTTPError(url, status, "refused", None, None)  # type: ignore[arg-type]
                with self._lock:
                    self.deliveries.sent.extend({"value": [item]} for item in payload["value"])
            except Exception as exc:
                with self._lock:
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

    def _transitive_members(self, group_id: str) -> list[tuple[str, dict[str, Any]]]:
        """(kind, object) for every member of the group, nested groups expanded breadth first, each once.

        Direct members come first, in the order they were added. Call with the lock held.
        """
        result: list[tuple[str, dict[str, Any]]] = []
        seen = {group_id}
        pending = deque([group_id])
        while pending:
            for member_id in self._members.get(pending.popleft(), {}):
                if member_id in seen:
                    continue
                if member_id in self._groups:
                    seen.add(member_id)
                    result.append(("group", self._groups[member_id]))
                    pending.append(member_id)
                elif member_id in self._users:  # soft-deleted users drop out until restored
                    seen.add(member_id)
                    result.append(("user", self._users[member_id]))
        return result

    def _authorize(self, headers: Any) -> None:
        auth = headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        with self._lock:
            if token not in self._tokens:
                raise GraphHttpError(401, "InvalidAuthenticationToken", "Access token is empty or invalid.")

    def _maybe_throttle(self) -> None:
        with self._lock:
            if self._throttle:
                status, retry_after = self._throttle.pop(0)
                code = "TooManyRequests" if status == 429 else "ServiceUnavailable"
                raise GraphHttpError(status, code, "Too many requests" if status == 429 else "Service unavailable",
                                     {"Retry-After": str(retry_after)})

    @staticmethod
    def _select(params: dict[str, str], known: tuple[str, ...] = USER_PROPERTIES,
                default: tuple[str, ...] = DEFAULT_SELECT, type_name: str = "microsoft.graph.user"
                ) -> tuple[str, ...]:
        raw = params.get("$select")
        if not raw:
            return default
        names = tuple(n.strip() for n in raw.split(",") if n.strip())
        unknown = [n for n in names if n not in known]
        if unknown:
            raise GraphHttpError(400, "Request_BadRequest",
                                 f"Could not find a property named '{unknown[0]}' on type '{type_name}'.")
        return names

    def _page_window(self, params: dict[str, str]) -> tuple[int, int]:
        """($top, offset from our $skiptoken): Graph's default page is ours (page_size), its maximum 999."""
        try:
            top = min(int(params.get("$top", self.page_size)), 999)
            skip = int(params.get("$skiptoken", "0"))
        except ValueError:
            raise GraphHttpError(400, "Request_BadRequest", "Invalid $top or $skiptoken") from None
        if top < 1 or skip < 0:
            raise GraphHttpError(400, "Request_BadRequest", "Invalid $top or $skiptoken")
        return top, skip

    def _paged(self, path: str, params: dict[str, str], context: str, items: list[Any]) -> dict[str, Any]:
        """One page of a collection, with @odata.nextLink (before value, as Graph writes it) when more follow."""
        top, skip = self._page_window(params)
        body: dict[str, Any] = {"@odata.context": context}
        if skip + top < len(items):
            query = {k: v for k, v in params.items() if k != "$skiptoken"} | {"$skiptoken": str(skip + top)}
            body["@odata.nextLink"] = f"{self.graph_url}{path}?{urllib.parse.urlencode(query)}"
        body["value"] = items[skip : skip + top]
        return body

    def _out_id(self, object_id: str) -> str:
        """An id as this simulator writes it (see ``id_case``)."""
        if self.id_case == "upper":
            return object_id.upper()
        if self.id_case == "lower":
            return object_id.lower()
        return object_id

    def _project(self, obj: dict[str, Any], select: tuple[str, ...]) -> dict[str, Any]:
        body = {name: obj.get(name) for name in select if name != "id"}
        body["id"] = self._out_id(obj["id"])
        return body

    def _user_by_id_or_upn(self, user_id: str) -> dict[str, Any] | None:
        """The user whose id (any letter case, as Graph compares GUIDs) or userPrincipalName is ``user_id``.
        Call with the lock held."""
        wanted = user_id.lower()
        return self._users.get(user_id) or next(
            (u for u in self._users.values()
             if str(u["id"]).lower() == wanted or str(u.get("userPrincipalName", "")).lower() == wanted),
            None,
        )

    def _context(self, select: tuple[str, ...], what: str = "users", default: tuple[str, ...] = DEFAULT_SELECT
                 ) -> str:
        if select == default:
            return f"{CONTEXT}#{what}"
        return f"{CONTEXT}#{what}({','.join(select)})"

    # -- request handling -------------------------------------------------------------------------------
    def handle(self, method: str, path: str, params: dict[str, str], headers: Any, body: bytes
               ) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        if method == "POST" and path.endswith("/oauth2/v2.0/token"):
            return self._token(path, body)
        if method == "GET" and path.endswith("/v2.0/.well-known/openid-configuration"):
            return 200, self._openid(path.split("/")[1]), {}
        if not path.startswith("/v1.0/"):
            raise GraphHttpError(404, "BadRequest", f"Resource not found for the segment '{path}'.")
        self._authorize(headers)
        route = path[len("/v1.0"):].rstrip("/")
        with self._lock:
            self.request_count[f"{method} {re.sub(r'/[0-9a-fA-F-]{36}', '/{id}', route)}"] += 1
        self._maybe_throttle()
        self._require_roles(method, route)
        if route.lower() == "/users" and method == "GET":
            return 200, self._list_users(params), {}
        if route.lower() == "/organization":
            if method != "GET":
                raise GraphHttpError(405, "Request_BadRequest", "Method not allowed")
            return 200, self._list_organization(params), {}
        if route.lower() in ("/users/delta", "/users/delta()") and method == "GET":
            return 200, self._delta(params), {}
        match = re.match(r"^/users/([^/]+)$", route, re.IGNORECASE)
        if match and method == "GET":
            return 200, self._get_user(urllib.parse.unquote(match.group(1)), params), {}
        match = re.match(r"^/users/([^/]+)/checkMemberGroups$", route, re.IGNORECASE)
        if match:
            if method != "POST":
                raise GraphHttpError(405, "Request_BadRequest", "checkMemberGroups is a POST action.")
            return 200, self._check_member_groups(urllib.parse.unquote(match.group(1)), body), {}
        match = re.match(r"^/users/([^/]+)/sendMail$", route, re.IGNORECASE)
        if match:
            if method != "POST":
                raise GraphHttpError(405, "Request_BadRequest", "sendMail is a POST action.")
            self._send_mail(urllib.parse.unquote(match.group(1)), body)
            return 202, None, {}
        match = re.match(r"^/groups/([^/]+)(?:/(transitiveMembers)(?:/([^/]+))?)?$", route, re.IGNORECASE)
        if match:
            if method != "GET":
                raise GraphHttpError(405, "Request_BadRequest", "Method not allowed")
            group_id = urllib.parse.unquote(match.group(1))
            if match.group(2) is None:
                return 200, self._get_group(group_id, params), {}
            return 200, self._transitive_members_page(route, group_id, match.group(3), params), {}
        if route.lower() == "/subscriptions":
            if method == "POST":
                return 201, self._create_subscription(body), {}
            if method == "GET":
                with self._lock:
                    subs = [s.to_json(self.client_id, with_client_state=False) for s in self.subscriptions.values()]
                return 200, {"@odata.context": f"{CONTEXT}#subscriptions", "value": subs}, {}
        match = re.match(r"^/subscriptions/([^/]+)$", route, re.IGNORECASE)
        if match:
            return self._subscription(method, match.group(1), body)
        raise GraphHttpError(400, "BadRequest", f"Resource not found for the segment '{route}'.")

    def _token(self, path: str, body: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Client credentials with a client secret, or with a client assertion signed by a registered
        certificate (``client_assertion_type`` jwt-bearer)."""
        form = dict(urllib.parse.parse_qsl(body.decode()))
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}, {}
        if form.get("client_id", self.client_id) != self.client_id:
            return 400, {"error": "unauthorized_client", "error_description": (
                f"AADSTS700016: Application with identifier '{form.get('client_id')}' was not found in the "
                f"directory '{self.tenant_id}'.")}, {}
        if form.get("client_assertion_type") == JWT_BEARER:
            problem = self._assertion_problem(form.get("client_assertion", ""), f"{self.base_url}{path}")
            if problem:
                return 401, {"error": "invalid_client", "error_description": problem}, {}
        elif "client_id" not in form or not secrets.compare_digest(
            form.get("client_secret", ""), self.client_secret
        ):
            error = {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}
            return 401, error, {}
        token = self._access_token()
        with self._lock:
            self._tokens.add(token)
        return 200, {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token}, {}

    def _access_token(self) -> str:
        """A JWT-shaped app-only token like Entra's (``roles`` = the granted application permissions, left out
        when there are none, as Entra does); its signature is random: Graph tokens are opaque to clients."""
        now = int(_now().timestamp())
        with self._lock:
            roles = sorted(self.app_roles)
        claims: dict[str, Any] = {
            "aud": "https://graph.microsoft.com", "iss": f"https://sts.windows.net/{self.tenant_id}/",
            "iat": now, "nbf": now, "exp": now + 3599, "appid": self.client_id, "idtyp": "app",
            "oid": self.client_id, "sub": self.client_id, "tid": self.tenant_id, "ver": "1.0",
            "uti": secrets.token_urlsafe(16),
        }
        if roles:
            claims["roles"] = roles
        header = {"typ": "JWT", "alg": "RS256", "kid": "graphsim"}
        return ".".join(_b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)) + (
            "." + _b64url(secrets.token_bytes(64)))

    def _assertion_problem(self, assertion: str, token_endpoint: str) -> str | None:
        """Why Entra would refuse this client assertion (RFC 7523), or None when it is good."""
        try:
            head, payload, signature = assertion.split(".")
            header, claims = json.loads(_unb64url(head)), json.loads(_unb64url(payload))
            raw_signature = _unb64url(signature)
        except (ValueError, binascii.Error):
            return "AADSTS50027: JWT token is invalid or malformed."
        if not isinstance(header, dict) or not isinstance(claims, dict):
            return "AADSTS50027: JWT token is invalid or malformed."
        with self._lock:
            cert = next((self._certificates[t] for t in (str(header.get("x5t#S256")).rstrip("="),
                                                          str(header.get("x5t")).rstrip("="))
                         if t in self._certificates), None)  # MSAL keeps the base64 padding, RFC 7515 drops it
        if cert is None:
            return (f"AADSTS700027: The certificate with identifier used to sign the client assertion is not "
                    f"registered on application. [Reason - The key was not found., Thumbprint of key used by client: "
                    f"'{header.get('x5t#S256') or header.get('x5t')}']")
        key = cert.public_key()
        assert isinstance(key, rsa.RSAPublicKey)  # register_certificate accepts RSA only
        signed = f"{head}.{payload}".encode()
        schemes: dict[str, padding.AsymmetricPadding] = {
            "RS256": padding.PKCS1v15(),
            "PS256": padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH),
        }
        scheme = schemes.get(str(header.get("alg")))
        if scheme is None:
            return f"AADSTS5002730: Invalid JWT header: unsupported algorithm {header.get('alg')!r}."
        try:
            key.verify(raw_signature, signed, scheme, hashes.SHA256())
        except InvalidSignature:
            return "AADSTS700027: Client assertion failed signature validation."
        if claims.get("aud") != token_endpoint:
            return (f"AADSTS700212: The audience claim of the client assertion is {claims.get('aud')!r}; "
                    f"expected the token endpoint {token_endpoint!r}.")
        if claims.get("iss") != self.client_id or claims.get("sub") != self.client_id:
            return "AADSTS50027: Invalid JWT token: iss and sub of the client assertion must be the client id."
        now = _now().timestamp()
        try:
            expires, not_before = float(claims["exp"]), float(claims.get("nbf") or claims.get("iat") or now)
        except (KeyError, TypeError, ValueError):
            return "AADSTS50027: Invalid JWT token: exp (and nbf) must be numbers."
        skew = CLOCK_SKEW.total_seconds()
        if expires < now - skew or not_before > now + skew:
            return "AADSTS700024: Client assertion is not within its valid time range."
        return None

    def _require_roles(self, method: str, route: str) -> None:
        """403 Authorization_RequestDenied when the app lacks every permission that the request accepts."""
        lowered = route.lower()
        needed: frozenset[str] | None = None
        if re.fullmatch(r"/users/[^/]+/sendmail", lowered):
            needed = MAIL_SEND_ROLES
        elif lowered == "/organization":
            needed = ORGANIZATION_READ_ROLES
        elif re.fullmatch(r"/users/[^/]+/checkmembergroups", lowered) or lowered.startswith("/groups/"):
            needed = GROUP_MEMBER_READ_ROLES
        elif lowered == "/users" or lowered.startswith("/users/") or (lowered == "/subscriptions"
                                                                    and method == "POST"):
            needed = USER_READ_ROLES  # a subscription on users needs the permission to read users
        with self._lock:
            granted = set(self.app_roles)
        if needed is not None and not needed & granted:
            raise GraphHttpError(403, "Authorization_RequestDenied",
                                 "Insufficient privileges to complete the operation.")

    def _openid(self, tenant: str) -> dict[str, Any]:
        base = f"{self.base_url}/{tenant}"
        return {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "issuer": f"{self.base_url}/{self.tenant_id}/v2.0",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "tenant_region_scope": "EU",
        }

    def _list_organization(self, params: dict[str, str]) -> dict[str, Any]:
        """``GET /organization``: a collection of the one tenant (``$select`` of id, displayName,
        verifiedDomains; Graph's shape, see organization-list in the docs)."""
        select = self._select(params, ORGANIZATION_PROPERTIES, ORGANIZATION_PROPERTIES, "microsoft.graph.organization")
        with self._lock:
            org = {"id": self.tenant_id, "displayName": "Contoso",
                   "verifiedDomains": [dict(d) for d in self.verified_domains]}
        context = (f"{CONTEXT}#organization" if select == ORGANIZATION_PROPERTIES
                   else f"{CONTEXT}#organization({','.join(select)})")
        return {"@odata.context": context, "value": [{k: org[k] for k in select}]}

    def _list_users(self, params: dict[str, str]) -> dict[str, Any]:
        select = self._select(params)
        with self._lock:
            users = list(self._users.values())
        flt = params.get("$filter")
        if flt:
            match = _FILTER_USER_TYPE.match(flt)
            ids = _FILTER_ID_IN.match(flt)
            if match:
                users = [u for u in users if u.get("userType") == match.group("value")]
            elif ids:
                wanted = {v.strip().strip("'").lower() for v in ids.group("ids").split(",")}
                if len(wanted) > MAX_IN_VALUES:
                    raise GraphHttpError(400, "Request_UnsupportedQuery",
                                         f"Too many values in the 'in' clause: {len(wanted)}; at most {MAX_IN_VALUES}.")
                users = [u for u in users if str(u["id"]).lower() in wanted]
            else:
                raise GraphHttpError(400, "Request_UnsupportedQuery", f"Unsupported query: {flt}")
        return self._paged("/users", params, self._context(select), [self._project(u, select) for u in users])

    @staticmethod
    def _not_found(object_id: str) -> GraphHttpError:
        return GraphHttpError(404, "Request_ResourceNotFound",
                              f"Resource '{object_id}' does not exist or one of its queried reference-property "
                              "objects are not present.")

    def _find_user(self, user_id: str) -> dict[str, Any]:
        """By id or userPrincipalName, as /users/{id | userPrincipalName} does; 404 otherwise."""
        with self._lock:
            user = self._user_by_id_or_upn(user_id)
        if user is None:
            raise self._not_found(user_id)
        return user

    def _get_user(self, user_id: str, params: dict[str, str]) -> dict[str, Any]:
        select = self._select(params)
        user = self._find_user(user_id)
        return {"@odata.context": f"{self._context(select)}/$entity"} | self._project(user, select)

    def _check_member_groups(self, user_id: str, body: bytes) -> dict[str, Any]:
        """The groupIds (from the request, in its order) the user is a direct or transitive member of."""
        try:
            group_ids = json.loads(body or b"null")["groupIds"]
        except (KeyError, TypeError, ValueError):
            raise GraphHttpError(400, "Request_BadRequest",
                                 "The request body must be a JSON object with a groupIds collection.") from None
        if not isinstance(group_ids, list) or not all(isinstance(g, str) for g in group_ids):
            raise GraphHttpError(400, "Request_BadRequest", "groupIds must be a collection of strings.")
        if len(group_ids) > MAX_CHECK_MEMBER_GROUPS:
            raise GraphHttpError(400, "Request_BadRequest",
                                 f"Up to {MAX_CHECK_MEMBER_GROUPS} groups may be specified in groupIds.")
        user = self._find_user(user_id)
        with self._lock:
            found = [gid for gid in dict.fromkeys(group_ids) if gid in self._groups and any(
                kind == "user" and obj["id"] == user["id"] for kind, obj in self._transitive_members(gid))]
        return {"@odata.context": f"{CONTEXT}#Collection(Edm.String)", "value": found}

    def _send_mail(self, user_id: str, body: bytes) -> None:
        """user: sendMail with a JSON message (subject, body, toRecipients/ccRecipients/bccRecipients).

        Action parameters are matched without regard to case, as Graph does: msgraph-sdk for Python sends
        ``Message`` and ``SaveToSentItems`` where the documentation writes ``message`` and ``saveToSentItems``.
        """
        try:
            request = json.loads(body or b"null")
        except ValueError:
            raise GraphHttpError(400, "RequestBodyRead", "The request body is not valid JSON.") from None
        parameters = {str(k).lower(): v for k, v in request.items()} if isinstance(request, dict) else {}
        message = parameters.get("message")
        if not isinstance(message, dict):
            raise GraphHttpError(400, "RequestBodyRead", "The request body must be a JSON object with a message.")
        recipients: dict[str, list[str]] = {}
        for kind in ("toRecipients", "ccRecipients", "bccRecipients"):
            listed = message.get(kind) or []
            if not isinstance(listed, list):
                raise GraphHttpError(400, "RequestBodyRead", f"{kind} must be a collection of recipients.")
            addresses = []
            for item in listed:
                address = item.get("emailAddress", {}).get("address") if isinstance(item, dict) else None
                if not isinstance(address, str) or address.count("@") != 1 or address.strip() != address:
                    raise GraphHttpError(400, "ErrorInvalidRecipients",
                                         f"At least one recipient is not valid., Recipient '{address}' is not "
                                         "resolved. All recipients must be resolved before a message can be "
                                         "submitted.")
                addresses.append(address)
            recipients[kind] = addresses
        if not any(recipients.values()):
            raise GraphHttpError(400, "ErrorInvalidRecipients", "At least one recipient is not valid., A message "
                                 "can't be sent because it contains no recipients.")
        content = message.get("body") or {}
        subject = message.get("subject")
        if not isinstance(content, dict) or str(content.get("contentType", "Text")).lower() not in ("text", "html") \
                or not isinstance(content.get("content", ""), str) or not isinstance(subject, str | None):
            raise GraphHttpError(400, "RequestBodyRead", "Invalid message: subject must be a string and body an "
                                 "itemBody with contentType Text or HTML.")
        save = parameters.get("savetosentitems", True)
        if not isinstance(save, bool):
            raise GraphHttpError(400, "RequestBodyRead", "saveToSentItems must be a Boolean.")
        with self._lock:
            user = self._user_by_id_or_upn(user_id)
            if user is None:
                raise GraphHttpError(404, "ErrorInvalidUser", f"The requested user '{user_id}' is invalid.")
            self.sent_mail.append({
                "from": user.get("mail") or user.get("userPrincipalName"),
                "senderId": user["id"],
                "subject": subject,
                "contentType": content.get("contentType", "Text"),
                "content": content.get("content", ""),
                "to": recipients["toRecipients"],
                "cc": recipients["ccRecipients"],
                "bcc": recipients["bccRecipients"],
                "saveToSentItems": save,
                "at": _now(),
                "request": request,  # the JSON body as sent
            })

    def _find_group(self, group_id: str) -> dict[str, Any]:
        with self._lock:
            group = self._groups.get(group_id)
        if group is None:
            raise self._not_found(group_id)
        return group

    def _get_group(self, group_id: str, params: dict[str, str]) -> dict[str, Any]:
        select = self._select(params, GROUP_PROPERTIES, GROUP_PROPERTIES, "microsoft.graph.group")
        group = self._find_group(group_id)
        context = self._context(select, "groups", GROUP_PROPERTIES)
        return {"@odata.context": f"{context}/$entity"} | self._project(group, select)

    def _transitive_members_page(self, route: str, group_id: str, cast: str | None,
                                 params: dict[str, str]) -> dict[str, Any]:
        """groups/{id}/transitiveMembers[/microsoft.graph.user|group]: a flat, paged list of nested members."""
        kind = None
        if cast is not None:
            kind = _MEMBER_CASTS.get(cast.lower())
            if kind is None:
                raise GraphHttpError(400, "Request_UnsupportedQuery",
                                     f"The OData cast '{cast}' is not supported by the simulator.")
        unsupported = [p for p in _UNSUPPORTED_MEMBER_QUERY if p in params]
        if unsupported:
            raise GraphHttpError(400, "Request_UnsupportedQuery",
                                 f"Query option '{unsupported[0]}' on transitiveMembers is not supported by the "
                                 "simulator.")
        if kind == "user":
            select = self._select(params)
            context = self._context(select)
        elif kind == "group":
            select = self._select(params, GROUP_PROPERTIES, GROUP_PROPERTIES, "microsoft.graph.group")
            context = self._context(select, "groups", GROUP_PROPERTIES)
        else:
            select = self._select(params, DIRECTORY_OBJECT_PROPERTIES, (), "microsoft.graph.directoryObject")
            context = f"{CONTEXT}#directoryObjects"
        self._find_group(group_id)
        with self._lock:
            members = [(k, dict(o)) for k, o in self._transitive_members(group_id) if kind in (None, k)]
        items: list[dict[str, Any]] = []
        for member_kind, obj in members:
            if kind is not None:
                items.append(self._project(obj, select))
                continue
            own = select or (DEFAULT_SELECT if member_kind == "user" else GROUP_PROPERTIES)
            items.append({"@odata.type": f"#microsoft.graph.{member_kind}"} | self._project(obj, own))
        return self._paged(route, params, context, items)

    def _delta(self, params: dict[str, str]) -> dict[str, Any]:
        if "$filter" in params:
            raise GraphHttpError(400, "Request_UnsupportedQuery", "Unsupported query: $filter on delta for users")
        state: dict[str, Any]
        with self._lock:
            if "$deltatoken" in params:
                epoch, _, since = params["$deltatoken"].partition(".")
                if not since.isdigit() or epoch != str(self._delta_epoch):
                    raise GraphHttpError(410, "syncStateNotFound",
                                         "The sync state generation is invalid or has expired.")
                select = tuple(params.get("$select", ",".join(DEFAULT_SELECT)).split(","))
                state = {"mode": "changes", "since": int(since), "select": select, "offset": 0}
            elif "$skiptoken" in params:
                try:
                    state = json.loads(urllib.parse.unquote(params["$skiptoken"]))
                except json.JSONDecodeError:
                    raise GraphHttpError(400, "Request_BadRequest", "Invalid skip token") from None
                select = tuple(state["select"])
            else:
                select = self._select(params)
                state = {"mode": "initial", "since": self._seq, "select": select, "offset": 0}
            items: list[dict[str, Any]]
            if state["mode"] == "initial":
                items = [self._project(u, select) for u in self._users.values()]
                end_seq = state["since"]
            else:
                latest: dict[str, _Change] = {}
                for change in self._changes:
                    if change.seq > state["since"]:
                        latest[change.user_id] = change
                items = []
                for change in latest.values():
                    if change.removed:
                        items.append({"id": self._out_id(change.user_id), "@removed": {"reason": change.removed}})
                    elif change.user_id in self._users:
                        items.append(self._project(self._users[change.user_id], select))
                end_seq = self._seq
            offset = int(state["offset"])
            page = items[offset : offset + self.page_size]
            body: dict[str, Any] = {"@odata.context": self._context(select)}
            if offset + self.page_size < len(items):
                nxt = dict(state, offset=offset + self.page_size, since=state["since"])
                token = urllib.parse.quote(json.dumps(nxt, separators=(",", ":")))
                body["@odata.nextLink"] = f"{self.graph_url}/users/delta?$skiptoken={token}"
            else:
                body["@odata.deltaLink"] = (
                    f"{self.graph_url}/users/delta?$deltatoken={self._delta_epoch}.{end_seq}"
                    f"&$select={','.join(select)}"
                )
            body["value"] = page
            return body

    def _create_subscription(self, body: bytes) -> dict[str, Any]:
        try:
            request = json.loads(body)
            resource = str(request["resource"])
            change_type = str(request["changeType"])
            url = str(request["notificationUrl"])
            expiration = _parse_time(str(request["expirationDateTime"]))
        except (KeyError, ValueError, TypeError) as exc:
            raise GraphHttpError(400, "InvalidRequest", f"Invalid subscription request: {exc}") from None
        if resource.strip("/").lower() != "users":
            raise GraphHttpError(400, "InvalidRequest", f"Resource '{resource}' is not supported by the simulator.")
        if not set(change_type.split(",")) <= {"updated", "deleted"}:
            raise GraphHttpError(400, "InvalidRequest", "changeType for users must be updated and/or deleted.")
        self._check_expiration(expiration)
        lifecycle = request.get("lifecycleNotificationUrl")
        with self._lock:
            for sub in self.subscriptions.values():
                if (sub.resource.strip("/").lower(), sub.notification_url, sub.change_type) == (
                    "users", url, change_type
                ):
                    raise GraphHttpError(409, "ExtensionError",
                                         "Subscription already exists for this resource and notification URL.")
        for target in [url] + ([lifecycle] if lifecycle else []):
            self._validate_endpoint(str(target))
        sub = Subscription(str(uuid.uuid4()), resource, change_type, url, lifecycle, request.get("clientState"),
                           expiration, str(request.get("latestSupportedTlsVersion", "v1_2")))
        with self._lock:
            self.subscriptions[sub.id] = sub
        return {"@odata.context": f"{CONTEXT}#subscriptions/$entity"} | sub.to_json(self.client_id,
                                                                                  with_client_state=True)

    @staticmethod
    def _check_expiration(expiration: datetime) -> None:
        now = _now()
        if expiration <= now:
            raise GraphHttpError(400, "InvalidRequest", "Subscription expiration must be in the future.")
        if expiration > now + timedelta(minutes=MAX_USER_SUBSCRIPTION_MINUTES):
            raise GraphHttpError(400, "InvalidRequest",
                                 "Subscription expiration can only be 41760 minutes in the future.")

    def _validate_endpoint(self, url: str) -> None:
        """Graph's handshake: POST ?validationToken=..., expect 200 text/plain echoing it within 10 s."""
        token = f"Validation: Testing client application reachability for subscription Request-Id: {uuid.uuid4()}"
        sep = "&" if "?" in url else "?"
        try:
            status, answer = _post(f"{url}{sep}validationToken={urllib.parse.quote(token)}", b"",
                                   "text/plain; charset=utf-8", timeout=10.0)
        except Exception as exc:
            raise GraphHttpError(400, "InvalidRequest",
                                 f"Subscription validation request failed. Notification endpoint must respond with "
                                 f"200 OK to validation request. ({exc})") from None
        if status != 200 or answer.decode("utf-8", "replace") != token:
            raise GraphHttpError(400, "InvalidRequest",
                                 "Subscription validation request failed. Response must exactly match "
                                 "validationToken query parameter.")

    def _subscription(self, method: str, sub_id: str, body: bytes) -> tuple[int, dict[str, Any] | None,
                                                                            dict[str, str]]:
        with self._lock:
            sub = self.subscriptions.get(sub_id)
        if sub is None:
            raise GraphHttpError(404, "ResourceNotFound", f"The object was not found: {sub_id}")
        if method == "GET":
            return 200, {"@odata.context": f"{CONTEXT}#subscriptions/$entity"} | sub.to_json(
                self.client_id, with_client_state=False), {}
        if method == "DELETE":
            with self._lock:
                self.subscriptions.pop(sub_id, None)
            return 204, None, {}
        if method == "PATCH":
            try:
                expiration = _parse_time(str(json.loads(body)["expirationDateTime"]))
            except (KeyError, ValueError, TypeError) as exc:
                raise GraphHttpError(400, "InvalidRequest", f"Invalid renewal: {exc}") from None
            self._check_expiration(expiration)
            with self._lock:
                sub.expiration = expiration
            return 200, {"@odata.context": f"{CONTEXT}#subscriptions/$entity"} | sub.to_json(
                self.client_id, with_client_state=True), {}
        raise GraphHttpError(405, "BadRequest", "Method not allowed")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _post(url: str, body: bytes, content_type: str, timeout: float) -> tuple[int, bytes]:
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


class _GraphHTTPServer(ThreadingHTTPServer):
    request_queue_size = 128  # listen backlog for bursts of requests


def _handler_for(sim: GraphSimulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def setup(self) -> None:
            super().setup()
            # Headers and body are two writes: without TCP_NODELAY, Nagle holds the body until the client's
            # delayed ACK (about 40 ms per request on loopback), which no real Graph answer pays.
            with contextlib.suppress(OSError):
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

        def _serve(self) -> None:
            parsed = urllib.parse.urlsplit(self.path)
            params = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            try:
                status, payload, headers = sim.handle(self.command, parsed.path, params, self.headers, body)
            except GraphHttpError as exc:
                status, payload, headers = exc.status, exc.body(), exc.headers
            except Exception as exc:  # a bug in the simulator must show as a 500, like a Graph outage
                log.exception("graphsim failed")
                err = GraphHttpError(500, "generalException", str(exc))
                status, payload, headers = 500, err.body(), {}
            data = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            if payload is not None:
                self.send_header("Content-Type", "application/json;odata.metadata=minimal;charset=utf-8")
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("request-id", str(uuid.uuid4()))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = _serve

    return Handler
