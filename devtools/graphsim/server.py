"""A local Microsoft Graph simulator: the parts of Graph v1.0 guestsync uses, in Graph's documented shapes.

Serves HTTPS (so azure-identity and msgraph-sdk run unmodified), issues OAuth2 client-credential tokens
(``auth``), and implements ``/users`` (``$select``, ``$filter`` on userType, ``$top`` paging), ``/users/{id}``
(``users``), ``/users/delta`` (nextLink/deltaLink, ``@removed``, 410 on an unknown token; ``delta``),
``/subscriptions`` with the validation handshake and 409 on duplicates (``subscriptions``), change and lifecycle
notifications POSTed to the subscriber (``notifications``), groups: ``/groups/{id}``,
``/groups/{id}/transitiveMembers`` (optionally cast to ``microsoft.graph.user`` or ``microsoft.graph.group``;
nested groups expanded, cycles safe; ``$select``, ``$top`` paging) and ``POST /users/{id}/checkMemberGroups``
(transitive; ``groups``). Group membership changes send no change notifications, as in Graph.
``POST /users/{id | userPrincipalName}/sendMail`` (202, needs Mail.Send) records the message in ``sent_mail``
instead of delivering it (``mail``); ``GET /organization`` lists the verified domains (``organization``).
Throttling (429/503 with Retry-After) can be switched on for the next requests.
Object ids are GUIDs that Graph matches in any letter case; ``id_case = "upper"`` (or ``"lower"``) makes the
simulator write every object id it returns (objects, ``@removed`` items, notifications) in that case, as some
Graph responses do, while lookups keep matching ids whatever their case.
Permissions: ``app_roles`` holds the application permissions granted to the app (admin consent); a request
that needs one it lacks gets Graph's 403 ``Authorization_RequestDenied`` (see ``auth``).

This module wires the pieces: one ``Tenant`` (the shared state and its lock, ``state``) that every resource
object shares, the routing of requests to them, and the HTTPS front (``transport``).

The JSON follows the examples in Microsoft's Graph documentation (see tests that compare the keys with
``tests/reference/graph-examples``, copied verbatim from the docs).
"""

from __future__ import annotations

import re
import secrets
import threading
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

from devtools.graphsim.auth import Auth
from devtools.graphsim.delta import Delta
from devtools.graphsim.groups import Groups
from devtools.graphsim.mail import Mail
from devtools.graphsim.notifications import Deliveries, Notifications
from devtools.graphsim.organization import Organization
from devtools.graphsim.state import GraphHttpError, Subscription, Tenant
from devtools.graphsim.subscriptions import Subscriptions
from devtools.graphsim.transport import https_server
from devtools.graphsim.users import Users

__all__ = ["Deliveries", "GraphHttpError", "GraphSimulator", "Subscription"]


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
        self._server = https_server(host, port, cert_file, key_file, self.handle)
        bound_host, bound_port = self._server.server_address[:2]
        self.tenant = Tenant(base_url=f"https://{bound_host!s}:{bound_port}", tenant_id=tenant_id,
                             tenant_domain=tenant_domain, client_id=client_id,
                             client_secret=client_secret or secrets.token_urlsafe(24), page_size=page_size)
        self._auth = Auth(self.tenant)
        self._notifications = Notifications(self.tenant)
        self._delta = Delta(self.tenant)
        self._users = Users(self.tenant, self._delta, self._notifications)
        self._groups = Groups(self.tenant)
        self._subscriptions = Subscriptions(self.tenant)
        self._organization = Organization(self.tenant)
        self._mail = Mail(self.tenant)
        self._throttle: list[tuple[int, int]] = []  # (status, retry_after) for the next requests
        self._threads: list[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return self.tenant.base_url

    @property
    def graph_url(self) -> str:
        return self.tenant.graph_url

    def start(self) -> GraphSimulator:
        for name, target in (("serve_forever", self._server.serve_forever),
                             ("_deliver_loop", self._notifications.deliver_loop)):
            thread = threading.Thread(target=target, name=f"graphsim-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._notifications.stop()
        self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def reset(self) -> None:
        """Forget users, groups, subscriptions, counters, fault injection and registered certificates, and
        grant the default application permissions again (between tests)."""
        self.wait_for_deliveries()
        with self.tenant.lock:
            self.tenant.reset()
            self._delta.reset()
            self._notifications.reset()
            self._mail.reset()
            self._auth.reset()
            self._throttle.clear()

    # -- the tenant's settings and what tests read back --------------------------------------------------
    @property
    def tenant_id(self) -> str:
        return self.tenant.tenant_id

    @property
    def tenant_domain(self) -> str:
        return self.tenant.tenant_domain

    @property
    def client_id(self) -> str:
        return self.tenant.client_id

    @property
    def client_secret(self) -> str:
        return self.tenant.client_secret

    @property
    def page_size(self) -> int:
        return self.tenant.page_size

    @page_size.setter
    def page_size(self, value: int) -> None:
        self.tenant.page_size = value

    @property
    def id_case(self) -> str | None:
        """None: ids as stored; "upper" / "lower": every id the simulator writes is in that case."""
        return self.tenant.id_case

    @id_case.setter
    def id_case(self, value: str | None) -> None:
        self.tenant.id_case = value

    @property
    def app_roles(self) -> set[str]:
        """The application permissions with admin consent, checked on each request."""
        return self.tenant.app_roles

    @app_roles.setter
    def app_roles(self, value: set[str]) -> None:
        self.tenant.app_roles = value

    @property
    def verified_domains(self) -> list[dict[str, Any]]:
        """The tenant's verified domains as /organization lists them (the initial one first)."""
        return self.tenant.verified_domains

    @verified_domains.setter
    def verified_domains(self, value: list[dict[str, Any]]) -> None:
        self.tenant.verified_domains = value

    @property
    def redelivery_delays(self) -> tuple[float, ...]:
        """Back-off between redeliveries of a notification that failed transiently (Graph: up to 4 hours)."""
        return self._notifications.redelivery_delays

    @redelivery_delays.setter
    def redelivery_delays(self, value: tuple[float, ...]) -> None:
        self._notifications.redelivery_delays = value

    @property
    def max_batch(self) -> int:
        """Notifications per POST at most when several are waiting."""
        return self._notifications.max_batch

    @max_batch.setter
    def max_batch(self, value: int) -> None:
        self._notifications.max_batch = value

    @property
    def subscriptions(self) -> dict[str, Subscription]:
        return self.tenant.subscriptions

    @property
    def request_count(self) -> Counter[str]:
        """Requests served, by ``METHOD /route`` with object ids written ``{id}``."""
        return self.tenant.request_count

    @property
    def deliveries(self) -> Deliveries:
        return self._notifications.deliveries

    @property
    def sent_mail(self) -> list[dict[str, Any]]:
        """sendMail requests accepted, oldest first."""
        return self._mail.sent

    @property
    def users(self) -> list[dict[str, Any]]:
        return self._users.users

    @property
    def groups(self) -> list[dict[str, Any]]:
        return self._groups.groups

    # -- control API (what an admin does in Entra), delegated to the resources ---------------------------
    def add_user(self, **props: Any) -> dict[str, Any]:
        return self._users.add_user(**props)

    def invite_guest(
        self, email: str, display_name: str, given_name: str | None = None, surname: str | None = None
    ) -> dict[str, Any]:
        return self._users.invite_guest(email, display_name, given_name, surname)

    def update_user(self, user_id: str, **props: Any) -> dict[str, Any]:
        return self._users.update_user(user_id, **props)

    def delete_user(self, user_id: str) -> None:
        self._users.delete_user(user_id)

    def restore_user(self, user_id: str) -> None:
        self._users.restore_user(user_id)

    def hard_delete_user(self, user_id: str) -> None:
        self._users.hard_delete_user(user_id)

    def seed(self, guests: int = 0, members: int = 0) -> None:
        self._users.seed(guests, members)

    def add_group(self, display_name: str, group_id: str | None = None) -> dict[str, Any]:
        return self._groups.add_group(display_name, group_id)

    def add_group_member(self, group_id: str, member_id: str) -> None:
        self._groups.add_group_member(group_id, member_id)

    def remove_group_member(self, group_id: str, member_id: str) -> None:
        self._groups.remove_group_member(group_id, member_id)

    def delete_group(self, group_id: str) -> None:
        self._groups.delete_group(group_id)

    def transitive_user_ids(self, group_id: str) -> list[str]:
        return self._groups.transitive_user_ids(group_id)

    def register_certificate(self, pem: bytes) -> str:
        return self._auth.register_certificate(pem)

    def expire_delta_tokens(self) -> None:
        self._delta.expire_tokens()

    def drop_next_notifications(self, count: int) -> None:
        self._notifications.drop_next_notifications(count)

    def send_lifecycle(self, subscription_id: str, event: str) -> None:
        self._notifications.send_lifecycle(subscription_id, event)

    def wait_for_deliveries(self, timeout: float = 10.0) -> None:
        self._notifications.wait_for_deliveries(timeout)

    def throttle(self, count: int, retry_after: int = 1, status: int = 429) -> None:
        """Answer the next ``count`` Graph requests with ``status`` (429 or 503) and Retry-After."""
        with self.tenant.lock:
            self._throttle.extend([(status, retry_after)] * count)

    def _maybe_throttle(self) -> None:
        with self.tenant.lock:
            if self._throttle:
                status, retry_after = self._throttle.pop(0)
                code = "TooManyRequests" if status == 429 else "ServiceUnavailable"
                raise GraphHttpError(status, code, "Too many requests" if status == 429 else "Service unavailable",
                                     {"Retry-After": str(retry_after)})

    # -- request routing --------------------------------------------------------------------------------
    def handle(self, method: str, path: str, params: dict[str, str], headers: Any, body: bytes
               ) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        if method == "POST" and path.endswith("/oauth2/v2.0/token"):
            return self._auth.token(path, body)
        if method == "GET" and path.endswith("/v2.0/.well-known/openid-configuration"):
            return 200, self._auth.openid(path.split("/")[1]), {}
        if not path.startswith("/v1.0/"):
            raise GraphHttpError(404, "BadRequest", f"Resource not found for the segment '{path}'.")
        self._auth.authorize(headers)
        route = path[len("/v1.0"):].rstrip("/")
        with self.tenant.lock:
            self.tenant.request_count[f"{method} {re.sub(r'/[0-9a-fA-F-]{36}', '/{id}', route)}"] += 1
        self._maybe_throttle()
        self._auth.require_roles(method, route)
        if route.lower() == "/users" and method == "GET":
            return 200, self._users.list_users(params), {}
        if route.lower() == "/organization":
            if method != "GET":
                raise GraphHttpError(405, "Request_BadRequest", "Method not allowed")
            return 200, self._organization.list_organization(params), {}
        if route.lower() in ("/users/delta", "/users/delta()") and method == "GET":
            return 200, self._delta.page(params), {}
        match = re.match(r"^/users/([^/]+)$", route, re.IGNORECASE)
        if match and method == "GET":
            return 200, self._users.get_user(urllib.parse.unquote(match.group(1)), params), {}
        match = re.match(r"^/users/([^/]+)/checkMemberGroups$", route, re.IGNORECASE)
        if match:
            if method != "POST":
                raise GraphHttpError(405, "Request_BadRequest", "checkMemberGroups is a POST action.")
            return 200, self._groups.check_member_groups(urllib.parse.unquote(match.group(1)), body), {}
        match = re.match(r"^/users/([^/]+)/sendMail$", route, re.IGNORECASE)
        if match:
            if method != "POST":
                raise GraphHttpError(405, "Request_BadRequest", "sendMail is a POST action.")
            self._mail.send_mail(urllib.parse.unquote(match.group(1)), body)
            return 202, None, {}
        match = re.match(r"^/groups/([^/]+)(?:/(transitiveMembers)(?:/([^/]+))?)?$", route, re.IGNORECASE)
        if match:
            if method != "GET":
                raise GraphHttpError(405, "Request_BadRequest", "Method not allowed")
            group_id = urllib.parse.unquote(match.group(1))
            if match.group(2) is None:
                return 200, self._groups.get_group(group_id, params), {}
            return 200, self._groups.transitive_members_page(route, group_id, match.group(3), params), {}
        if route.lower() == "/subscriptions":
            if method == "POST":
                return 201, self._subscriptions.create(body), {}
            if method == "GET":
                return 200, self._subscriptions.list_subscriptions(), {}
        match = re.match(r"^/subscriptions/([^/]+)$", route, re.IGNORECASE)
        if match:
            return self._subscriptions.one(method, match.group(1), body)
        raise GraphHttpError(400, "BadRequest", f"Resource not found for the segment '{route}'.")
