"""The ports: what the services need of the outside world, as typing Protocols. The adapters (shared/adapters/)
implement them against Table Storage, Queue Storage, Microsoft Graph, LDAPS and mail; the unit tests' fakes
(tests/fakes.py) implement the same Protocols and raise the same errors (shared.core.errors, ConcurrencyError).
Services depend on these, never on an adapter; shared/bootstrap.py wires the real ones in once."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from shared.core.domain import AdAccount, DeltaPage, GraphUser, GuestStatus, Subscription
from shared.core.records import GuestRecord

# --- state: guest records and the small meta documents (Table Storage) -------------------------------------------


class RecordStore(Protocol):
    """Guest records by uid. ``save`` inserts a record without an ETag and replaces one with it; both raise
    ConcurrencyError when someone else wrote first. ``insert_all`` inserts new records together, all or none
    (ConcurrencyError when any exists)."""

    def get(self, uid: str) -> GuestRecord | None: ...
    def save(self, record: GuestRecord) -> GuestRecord: ...
    def insert_all(self, records: Sequence[GuestRecord]) -> list[GuestRecord]: ...
    def delete(self, uid: str) -> None: ...


class MetaStore(Protocol):
    """Singleton documents (the breaker window, alert digests, the deltaLink, heartbeats), ETag-guarded."""

    def get_meta(self, name: str) -> tuple[dict[str, Any], str | None]: ...
    def save_meta(self, name: str, body: dict[str, Any], etag: str | None) -> str: ...
    def put_meta(self, name: str, body: dict[str, Any]) -> None: ...


class GuestStore(RecordStore, MetaStore, Protocol):
    """The whole state port: records, meta documents and the queries the reconcile and status make."""

    def list_meta(self, prefix: str) -> Iterator[tuple[str, dict[str, Any]]]: ...
    def delete_meta(self, name: str) -> None: ...
    def __iter__(self) -> Iterator[GuestRecord]: ...
    def planning_records(self) -> Iterator[GuestRecord]: ...
    def with_status(self, *statuses: GuestStatus) -> Iterator[GuestRecord]: ...
    def counts(self) -> Counter[str]: ...


# --- queues ---------------------------------------------------------------------------------------------------


class MessageSender(Protocol):
    def send(self, text: str, *, delay_seconds: int | None = None) -> None: ...


# --- on-premises AD -------------------------------------------------------------------------------------------


class GuestDirectory(Protocol):
    """The guest and archive OUs, as the export needs them (shared.adapters.directory.Directory)."""

    def find_guest(self, uid: str) -> AdAccount | None: ...
    def holder_of(self, uid: str) -> str | None: ...
    def find_by_sid(self, sid: str) -> AdAccount | None: ...
    def create_guest(
        self, uid: str, attributes: dict[str, str | None], password: str, user_account_control: int
    ) -> AdAccount: ...
    def adopt_guest(
        self, dn: str, uid: str, attributes: dict[str, str | None], password: str, user_account_control: int
    ) -> AdAccount: ...
    def mark_owned(self, account: AdAccount, uid: str) -> None: ...
    def release_upn(self, dn: str) -> None: ...
    def update_guest(self, dn: str, changes: dict[str, str | None]) -> None: ...
    def netbios_domain(self) -> str: ...
    def disable_and_archive(self, dn: str) -> AdAccount: ...
    def restore_guest(self, dn: str) -> AdAccount: ...
    def delete_guest(self, dn: str) -> None: ...


class AccountScanner(Protocol):
    """Every account in the managed OUs, paged (the reconcile's AD side)."""

    def iter_managed_accounts(self, page_size: int = 500) -> Iterator[AdAccount]: ...


# --- Microsoft Graph ------------------------------------------------------------------------------------------


class UserReader(Protocol):
    async def get_user(self, user_id: str) -> GraphUser | None: ...
    async def is_group_member(self, user_id: str, group_id: str) -> bool | None: ...


class OrganizationReader(Protocol):
    async def get_initial_domain(self) -> str: ...


class GuestReader(UserReader, OrganizationReader, Protocol):
    """What apply reads: users (one or a batch), group membership, the tenant's initial domain."""

    async def get_users(self, user_ids: Sequence[str]) -> dict[str, GraphUser | None]: ...


class DeltaReader(UserReader, Protocol):
    """What the reconcile reads: users/delta, and the scoping group's members."""

    def delta(self, delta_link: str | None = None) -> AsyncIterator[DeltaPage]: ...
    def iter_group_member_ids(self, group_id: str, page_size: int = 999) -> AsyncIterator[str]: ...


class SubscriptionApi(Protocol):
    async def list_subscriptions(self) -> list[Subscription]: ...
    async def create_subscription(
        self, notification_url: str, lifecycle_url: str | None, client_state: str, expiration: datetime
    ) -> Subscription: ...
    async def renew_subscription(self, subscription_id: str, expiration: datetime) -> Subscription: ...
    async def delete_subscription(self, subscription_id: str) -> None: ...


# --- mail -----------------------------------------------------------------------------------------------------


class Mailer(Protocol):
    async def send(self, subject: str, body: str) -> None: ...


class NoMailer:
    """GUESTSYNC_MAIL=none: alerts are not mailed (they are still logged and shown by ``guestsync status``)."""

    async def send(self, subject: str, body: str) -> None:
        return None


# --- poison queues (peeked for alerts, never received) ----------------------------------------------------------


@dataclass(frozen=True)
class PoisonMessage:
    queue: str
    id: str
    inserted_on: datetime | None
    body: bytes


class PoisonQueues(Protocol):
    def peek(self, queue: str, max_messages: int = 32) -> list[PoisonMessage]: ...


# --- Kerberos constrained delegation: what application proxy's connector does ----------------------------------


@dataclass(frozen=True)
class DelegationTicket:
    """The KDC's answer to S4U2Self + S4U2Proxy on behalf of one user: issued, or why not (its own words)."""

    user_principal_name: str
    issued: bool
    detail: str


class DelegationTester(Protocol):
    """A delegation-enabled principal asking the KDC for a service ticket to ``spn`` on behalf of a user, the way
    the App Proxy connector does with Delegated Login Identity = user principal name."""

    spn: str
    principal: str

    def ticket_for(self, user_principal_name: str) -> DelegationTicket: ...
