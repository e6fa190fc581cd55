"""Microsoft Graph adapter: the real msgraph-sdk client, configured from settings.

Reads users with an explicit ``$select`` of every property the rules need, pages ``users/delta`` by hand
(the SDK's PageIterator drops the deltaLink), manages the change-notification subscription, and answers
scoping-group questions (transitive membership of one user; the transitive user members of a group). Throttling
(429/503 with Retry-After) is retried by the SDK's retry middleware; what is still throttled after that
surfaces as ``GraphThrottledError`` so the queue retries the message later.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from kiota_abstractions.base_request_configuration import RequestConfiguration
from kiota_abstractions.request_information import RequestInformation
from kiota_authentication_azure.azure_identity_authentication_provider import AzureIdentityAuthenticationProvider
from msgraph.generated.groups.item.transitive_members.graph_user.graph_user_request_builder import (
    GraphUserRequestBuilder,
)
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.subscription import Subscription as GraphSubscription
from msgraph.generated.organization.organization_request_builder import OrganizationRequestBuilder
from msgraph.generated.users.delta.delta_request_builder import DeltaRequestBuilder
from msgraph.generated.users.item.check_member_groups.check_member_groups_post_request_body import (
    CheckMemberGroupsPostRequestBody,
)
from msgraph.generated.users.item.user_item_request_builder import UserItemRequestBuilder
from msgraph.generated.users.users_request_builder import UsersRequestBuilder
from msgraph.graph_request_adapter import GraphRequestAdapter
from msgraph.graph_service_client import GraphServiceClient
from msgraph_core import GraphClientFactory

from shared.core.domain import (
    GRAPH_USER_SELECT,
    MAX_IN_VALUES,
    DeltaPage,
    GraphUser,
    Subscription,
    graph_id,
    is_guid,
)
from shared.core.errors import (
    DeltaExpiredError,
    GraphError,
    GraphNotFoundError,
    GraphThrottledError,
    SubscriptionConflictError,
)
from shared.settings import GraphSettings

P = TypeVar("P")  # a page of a Graph collection

MICROSOFT_LOGIN_HOSTS = (
    "login.microsoftonline.com",
    "login.microsoftonline.us",
    "login.chinacloudapi.cn",
    "login.partner.microsoftonline.cn",
)





def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _user_from_json(data: dict[str, Any]) -> GraphUser:
    """A user from Graph's JSON, the one mapper of every user read. Mapped by hand: the SDK's model parser costs
    milliseconds of CPU per user (thousands of imports in get_field_deserializers), which made it the bottleneck
    of apply and reconcile."""
    enabled = data.get("accountEnabled")
    return GraphUser(
        id=graph_id(str(data["id"])),
        user_type=_text(data.get("userType")),
        display_name=_text(data.get("displayName")),
        given_name=_text(data.get("givenName")),
        surname=_text(data.get("surname")),
        user_principal_name=_text(data.get("userPrincipalName")),
        mail=_text(data.get("mail")),
        mobile_phone=_text(data.get("mobilePhone")),
        account_enabled=enabled if isinstance(enabled, bool) else None,
    )


def _json_items(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The objects with an id in a JSON page's ``value``."""
    for item in body.get("value") or []:
        if isinstance(item, dict) and item.get("id"):
            yield item


def _json_next_link(body: dict[str, Any]) -> str | None:
    return _text(body.get("@odata.nextLink"))


async def _paged(
    first: Callable[[], Awaitable[P | None]], more: Callable[[str], Awaitable[P | None]],
    next_link: Callable[[P], str | None],
) -> AsyncIterator[P]:
    """Graph's paging, written once: yield the first page, then follow ``@odata.nextLink`` one page at a time
    (the next page is fetched only when the caller asks for it). Pages are the SDK's collection responses or
    JSON bodies; Graph's errors arrive as the port's GraphError."""
    try:
        page = await first()
        while page is not None:
            yield page
            link = next_link(page)
            if not link:
                return
            page = await more(link)
    except ODataError as exc:
        raise _error(exc) from None


def _to_subscription(sub: GraphSubscription) -> Subscription:
    if sub.id is None or sub.expiration_date_time is None:
        raise GraphError(None, None, "subscription without id or expirationDateTime")
    return Subscription(
        id=sub.id,
        resource=sub.resource or "",
        change_type=sub.change_type or "",
        notification_url=sub.notification_url or "",
        lifecycle_url=sub.lifecycle_notification_url,
        expiration=sub.expiration_date_time,
    )


def _error(exc: ODataError) -> GraphError:
    status = exc.response_status_code
    code = exc.error.code if exc.error else None
    message = (exc.error.message if exc.error else None) or str(exc)
    if status == 410:
        return DeltaExpiredError(status, code, message)
    if status == 409:
        return SubscriptionConflictError(status, code, message)
    if status == 404:
        return GraphNotFoundError(status, code, message)
    if status in (429, 503):
        return GraphThrottledError(status, code, message)
    return GraphError(status, code, message)


def credential(settings: GraphSettings) -> Any:
    """The azure-identity (async) credential for the configured Graph identity."""
    from azure.identity.aio import ClientSecretCredential, ManagedIdentityCredential

    extra: dict[str, Any] = {"connection_verify": settings.ca_file} if settings.ca_file else {}
    if settings.auth == "client_secret":
        host = urlsplit(settings.authority_host).hostname or ""
        return ClientSecretCredential(
            str(settings.tenant_id),
            str(settings.client_id),
            str(settings.client_secret),
            authority=settings.authority_host,
            disable_instance_discovery=host not in MICROSOFT_LOGIN_HOSTS,
            **extra,
        )
    if settings.auth == "certificate":
        from azure.identity.aio import CertificateCredential

        host = urlsplit(settings.authority_host).hostname or ""
        source: dict[str, Any] = (
            {"certificate_path": settings.certificate_path} if settings.certificate_path
            else {"certificate_data": settings.certificate_data}
        )
        return CertificateCredential(
            str(settings.tenant_id),
            str(settings.client_id),
            password=settings.certificate_password,
            authority=settings.authority_host,
            disable_instance_discovery=host not in MICROSOFT_LOGIN_HOSTS,
            **source,
            **extra,
        )
    if settings.client_id:
        return ManagedIdentityCredential(client_id=settings.client_id, **extra)
    return ManagedIdentityCredential(**extra)


class GraphClient:
    """What guestsync asks of Graph, over msgraph-sdk."""

    def __init__(self, settings: GraphSettings) -> None:
        self._credential = credential(settings)
        host = urlsplit(settings.endpoint).hostname or ""
        auth = AzureIdentityAuthenticationProvider(
            self._credential, scopes=list(settings.scopes), allowed_hosts=[host]
        )
        http_client = None
        if settings.ca_file:
            verify = ssl.create_default_context(cafile=settings.ca_file)
            http_client = GraphClientFactory.create_with_default_middleware(client=httpx.AsyncClient(verify=verify))
        adapter = GraphRequestAdapter(auth, client=http_client)
        adapter.base_url = settings.endpoint
        self._client = GraphServiceClient(request_adapter=adapter)

    @property
    def service_client(self) -> GraphServiceClient:
        """The underlying msgraph-sdk client (for adapters of other Graph features, e.g. sendMail)."""
        return self._client

    async def __aenter__(self) -> GraphClient:
        return self

    async def __aexit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
                        ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._credential.close()

    async def _get_json(self, request: RequestInformation) -> dict[str, Any]:
        """Send a request through the SDK's adapter (auth, retry, throttling middleware) and parse the JSON
        body ourselves. Errors still arrive as ODataError."""
        adapter: Any = self._client.request_adapter  # send_primitive_async is typed as returning None upstream
        # The URL expanded once, as the adapter would: kiota expands the URL template again on each read of
        # ``url`` (building the request, the middleware), which was a third of a get_users call's CPU.
        request.path_parameters["baseurl"] = adapter.base_url
        request.url = request.url
        raw = await adapter.send_primitive_async(request, "bytes", {"XXX": ODataError})
        body: Any = json.loads(raw) if raw else {}
        if not isinstance(body, dict):
            raise GraphError(None, None, "Graph answered with something other than a JSON object")
        return body

    async def get_user(self, user_id: str) -> GraphUser | None:
        """The user with every property the flow rules read; None when Graph has no such user."""
        query = UserItemRequestBuilder.UserItemRequestBuilderGetQueryParameters(select=list(GRAPH_USER_SELECT))
        request = self._client.users.by_user_id(user_id).to_get_request_information(
            RequestConfiguration(query_parameters=query)
        )
        try:
            data = await self._get_json(request)
        except ODataError as exc:
            if exc.response_status_code == 404:
                return None
            raise _error(exc) from None
        return _user_from_json(data) if data.get("id") else None

    async def get_initial_domain(self) -> str:
        """The tenant's initial domain (``<name>.onmicrosoft.com``), lower case: the suffix Entra gives guest
        UPNs. ``GET /organization?$select=verifiedDomains``, the entry with ``isInitial`` true (needs the
        application permission Organization.Read.All)."""
        query = OrganizationRequestBuilder.OrganizationRequestBuilderGetQueryParameters(select=["verifiedDomains"])
        request = self._client.organization.to_get_request_information(RequestConfiguration(query_parameters=query))
        try:
            body = await self._get_json(request)
        except ODataError as exc:
            raise _error(exc) from None
        for organization in body.get("value") or []:
            for domain in (organization.get("verifiedDomains") or []) if isinstance(organization, dict) else []:
                if isinstance(domain, dict) and domain.get("isInitial") is True and _text(domain.get("name")):
                    return str(domain["name"]).lower()
        raise GraphError(200, None, "GET /organization returned no verified domain with isInitial true")

    async def get_users(self, user_ids: Sequence[str]) -> dict[str, GraphUser | None]:
        """Several users in one request per 15 ids (``$filter=id in (…)``, Graph's limit for ``in``); an id
        that Graph does not return maps to None (deleted, or no such user). Keys are the ids as asked; Graph's
        answer is matched whatever the letter case of its ids."""
        found: dict[str, GraphUser | None] = {uid: None for uid in user_ids}
        asked: dict[str, list[str]] = {}
        for uid in user_ids:
            asked.setdefault(graph_id(uid), []).append(uid)
        ids = [uid for uid in asked if is_guid(uid)]
        for start in range(0, len(ids), MAX_IN_VALUES):
            chunk = ids[start:start + MAX_IN_VALUES]
            flt = "id in (" + ",".join(f"'{uid}'" for uid in chunk) + ")"
            query = UsersRequestBuilder.UsersRequestBuilderGetQueryParameters(
                select=list(GRAPH_USER_SELECT), filter=flt, top=len(chunk))
            request = self._client.users.to_get_request_information(RequestConfiguration(query_parameters=query))
            try:
                body = await self._get_json(request)
            except ODataError as exc:
                raise _error(exc) from None
            for item in body.get("value") or []:
                if isinstance(item, dict) and isinstance(item.get("id"), str):
                    user = _user_from_json(item)
                    for uid in asked.get(user.id, ()):
                        found[uid] = user
        return found

    async def list_guests(self, page_size: int = 999) -> AsyncIterator[GraphUser]:
        """All guests, page by page (userType is filterable on /users, not on delta)."""
        query = UsersRequestBuilder.UsersRequestBuilderGetQueryParameters(
            select=list(GRAPH_USER_SELECT), filter="userType eq 'Guest'", top=page_size
        )
        users = self._client.users
        request = users.to_get_request_information(RequestConfiguration(query_parameters=query))
        pages = _paged(lambda: self._get_json(request),
                       lambda url: self._get_json(users.with_url(url).to_get_request_information()), _json_next_link)
        async for body in pages:
            for item in _json_items(body):
                yield _user_from_json(item)

    async def delta(self, delta_link: str | None = None) -> AsyncIterator[DeltaPage]:
        """users/delta, paged by hand so the final @odata.deltaLink is kept."""
        delta = self._client.users.delta
        if delta_link:
            request = delta.with_url(delta_link).to_get_request_information()
        else:
            query = DeltaRequestBuilder.DeltaRequestBuilderGetQueryParameters(select=list(GRAPH_USER_SELECT))
            request = delta.to_get_request_information(RequestConfiguration(query_parameters=query))
        pages = _paged(lambda: self._get_json(request),
                       lambda url: self._get_json(delta.with_url(url).to_get_request_information()), _json_next_link)
        async for body in pages:
            page = DeltaPage(next_link=_json_next_link(body), delta_link=_text(body.get("@odata.deltaLink")))
            for item in _json_items(body):
                removed = item.get("@removed")
                if isinstance(removed, dict):
                    page.removed.append((graph_id(str(item["id"])), str(removed.get("reason", "changed"))))
                else:
                    page.users.append(_user_from_json(item))
            yield page

    async def is_group_member(self, user_id: str, group_id: str) -> bool | None:
        """Whether the user is a direct or transitive member of the group (POST users/{id}/checkMemberGroups).

        None when Graph has no such user. A group id Graph does not know is simply not a match (False), as
        checkMemberGroups answers it; use ``iter_group_member_ids`` to find out whether the group exists.
        """
        body = CheckMemberGroupsPostRequestBody(group_ids=[group_id])
        try:
            result = await self._client.users.by_user_id(user_id).check_member_groups.post(body)
        except ODataError as exc:
            if exc.response_status_code == 404:
                return None
            raise _error(exc) from None
        wanted = group_id.lower()
        return any(str(found).lower() == wanted for found in (result.value or [] if result else []))

    async def iter_group_member_ids(self, group_id: str, page_size: int = 999) -> AsyncIterator[str]:
        """Ids of the group's transitive user members (groups/{id}/transitiveMembers/microsoft.graph.user).

        Nested groups are expanded by Graph; only users are yielded. Pages are fetched one at a time, following
        @odata.nextLink. An unknown group raises GraphNotFoundError (404), throttling GraphThrottledError.
        """
        builder = self._client.groups.by_group_id(group_id).transitive_members.graph_user
        query = GraphUserRequestBuilder.GraphUserRequestBuilderGetQueryParameters(select=["id"], top=page_size)
        request = builder.to_get_request_information(RequestConfiguration(query_parameters=query))
        pages = _paged(lambda: self._get_json(request),
                       lambda url: self._get_json(builder.with_url(url).to_get_request_information()),
                       _json_next_link)
        async for body in pages:
            for item in _json_items(body):
                yield graph_id(str(item["id"]))

    async def list_subscriptions(self) -> list[Subscription]:
        subscriptions = self._client.subscriptions
        pages = _paged(subscriptions.get, lambda url: subscriptions.with_url(url).get(),
                       lambda page: page.odata_next_link)
        return [_to_subscription(s) async for page in pages for s in page.value or []]

    async def create_subscription(
        self, notification_url: str, lifecycle_url: str | None, client_state: str, expiration: datetime
    ) -> Subscription:
        body = GraphSubscription(
            change_type="updated,deleted",
            notification_url=notification_url,
            lifecycle_notification_url=lifecycle_url,
            resource="users",
            expiration_date_time=expiration,
            client_state=client_state,
            latest_supported_tls_version="v1_2",
        )
        try:
            created = await self._client.subscriptions.post(body)
        except ODataError as exc:
            raise _error(exc) from None
        if created is None:
            raise GraphError(None, None, "subscription create returned no body")
        return _to_subscription(created)

    async def renew_subscription(self, subscription_id: str, expiration: datetime) -> Subscription:
        try:
            renewed = await self._client.subscriptions.by_subscription_id(subscription_id).patch(
                GraphSubscription(expiration_date_time=expiration)
            )
        except ODataError as exc:
            raise _error(exc) from None
        if renewed is None:
            raise GraphError(None, None, "subscription renewal returned no body")
        return _to_subscription(renewed)

    async def delete_subscription(self, subscription_id: str) -> None:
        try:
            await self._client.subscriptions.by_subscription_id(subscription_id).delete()
        except ODataError as exc:
            raise _error(exc) from None
