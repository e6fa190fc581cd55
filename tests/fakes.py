"""In-memory fakes of the ports (shared/core/ports.py), shared by every unit test.

Each behaves as its adapter does where a service can tell: the guest store refuses a stale ETag or an insert of an
existing guest with ConcurrencyError (Table Storage answers 412/409), the directory raises the errors of
shared.core.errors for the same causes the LDAP adapter does, the Graph fake answers None for a missing user and
410 for an unknown deltaLink. They also record what was asked of them, for tests that count storage transactions
or directory writes. The bottom of the module assigns one of each to its Protocol so mypy checks the signatures.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from shared.adapters.mail import MailError
from shared.core.ad_rules import (
    carries_mark,
    guest_dn,
    is_within,
    ownership_mark,
    same_dn,
    uid_from_dn,
    validate_export,
)
from shared.core.domain import (
    UAC_ACCOUNTDISABLE,
    AdAccount,
    ConfigurationError,
    DeltaPage,
    GraphUser,
    GuestStatus,
    Subscription,
    graph_id,
)
from shared.core.errors import (
    AccountExistsError,
    AccountNotFoundError,
    ConstraintError,
    DeltaExpiredError,
    DirectoryError,
    GraphNotFoundError,
    OutsideManagedOuError,
    SubscriptionConflictError,
)
from shared.core.ports import (
    AccountScanner,
    DeltaReader,
    GuestDirectory,
    GuestReader,
    GuestStore,
    Mailer,
    MessageSender,
    PoisonMessage,
    PoisonQueues,
    SubscriptionApi,
)
from shared.core.records import PLANNING_PROPERTIES, ConcurrencyError, GuestRecord
from shared.core.rules import PERSISTENT_ATTRIBUTES

GUEST_OU = "OU=B2BGuest,DC=contoso,DC=com"
ARCHIVE_OU = "OU=B2BGuestArchive,DC=contoso,DC=com"
#: The ownership key the fake directory marks accounts with (GUESTSYNC_OWNERSHIP_KEY in production).
OWNERSHIP_KEY = "test-ownership-key"
#: The first objectSid the fake directory hands out (RIDs count up from here, as a fresh DC's do).
FIRST_SID = "S-1-5-21-1-2-3-1104"


# --- state: guest records and meta documents ---------------------------------------------------------------------


class MemoryGuestStore:
    """StateStore in memory with Table Storage's ETag semantics: ``save`` without an ETag inserts and fails if the
    guest exists; with one it replaces and fails if the ETag is stale or the guest is gone; meta documents alike.

    ``calls`` counts record operations (get, insert, replace, delete: each a storage transaction) and
    ``meta_calls`` the meta ones; ``conflicts`` makes that many next saves lose a race, as if another instance
    wrote the entity just before."""

    def __init__(self) -> None:
        self.records: dict[str, GuestRecord] = {}
        self.meta: dict[str, tuple[str, str]] = {}  # name -> (JSON body, ETag)
        self.calls: Counter[str] = Counter()
        self.meta_calls: Counter[str] = Counter()
        self.conflicts = 0
        self._etags = itertools.count(1)

    def _etag(self) -> str:
        return f'W/"{next(self._etags)}"'

    def _lose_race(self, stored: Any) -> bool:
        """Consume one injected conflict: someone else wrote (the stored ETag changes)."""
        if not self.conflicts:
            return False
        self.conflicts -= 1
        if isinstance(stored, GuestRecord):
            self.records[graph_id(stored.uid)] = stored.evolve(etag=self._etag())
        elif isinstance(stored, tuple):
            name, (body, _) = stored
            self.meta[name] = (body, self._etag())
        return True

    # records

    def put(self, record: GuestRecord) -> GuestRecord:
        """Test setup: store ``record`` as if written (whatever is there), with a new ETag; not counted."""
        saved = record.evolve(etag=self._etag())
        self.records[graph_id(record.uid)] = saved
        return saved

    def get(self, uid: str) -> GuestRecord | None:
        self.calls["get"] += 1
        return self.records.get(graph_id(uid))

    def save(self, record: GuestRecord) -> GuestRecord:
        key = graph_id(record.uid)
        current = self.records.get(key)
        self.calls["insert" if record.etag is None else "replace"] += 1
        if self._lose_race(current):
            raise ConcurrencyError(record.uid)
        if record.etag is None:
            if current is not None:
                raise ConcurrencyError(record.uid)  # 409 EntityAlreadyExists
        elif current is None or current.etag != record.etag:
            raise ConcurrencyError(record.uid)  # 412 UpdateConditionNotSatisfied, or 404: deleted under us
        return self.put(record)

    def insert_all(self, records: Sequence[GuestRecord]) -> list[GuestRecord]:
        """One transaction (counted once, as "insert_all"): all inserted, or none when any exists."""
        self.calls["insert_all"] += 1
        if any(record.etag is not None for record in records) or len(records) > 100:
            raise ValueError("insert_all takes up to 100 new records")
        if any(graph_id(record.uid) in self.records for record in records) or self._lose_race(None):
            raise ConcurrencyError(records[0].uid if records else "")
        return [self.put(record) for record in records]

    def delete(self, uid: str) -> None:
        self.calls["delete"] += 1
        self.records.pop(graph_id(uid), None)

    def __iter__(self) -> Iterator[GuestRecord]:
        return iter([self.records[k] for k in sorted(self.records)])  # RowKey order, as a table query

    def planning_records(self) -> Iterator[GuestRecord]:
        """Only the planning properties, without an ETag (saving one is refused as an insert)."""
        for record in self:
            entity = record.to_entity()
            yield GuestRecord.from_entity({k: v for k, v in entity.items() if k in PLANNING_PROPERTIES})

    def with_status(self, *statuses: GuestStatus) -> Iterator[GuestRecord]:
        return (r for r in self if r.status in statuses)

    def counts(self) -> Counter[str]:
        return Counter(r.status.value for r in self)

    # meta documents

    def get_meta(self, name: str) -> tuple[dict[str, Any], str | None]:
        self.meta_calls["get_meta"] += 1
        if name not in self.meta:
            return {}, None
        body, etag = self.meta[name]
        return json.loads(body), etag

    def save_meta(self, name: str, body: dict[str, Any], etag: str | None) -> str:
        self.meta_calls["save_meta"] += 1
        current = self.meta.get(name)
        if self._lose_race((name, current) if current is not None else None):
            raise ConcurrencyError(name)
        if (current is not None) if etag is None else (current is None or current[1] != etag):
            raise ConcurrencyError(name)
        new = self._etag()
        self.meta[name] = (json.dumps(body, ensure_ascii=False, default=str), new)
        return new

    def put_meta(self, name: str, body: dict[str, Any]) -> None:
        self.meta_calls["put_meta"] += 1
        self.meta[name] = (json.dumps(body, ensure_ascii=False, default=str), self._etag())

    def list_meta(self, prefix: str) -> Iterator[tuple[str, dict[str, Any]]]:
        for name in sorted(self.meta):
            if name.startswith(prefix):
                yield name, json.loads(self.meta[name][0])

    def delete_meta(self, name: str) -> None:
        self.meta_calls["delete_meta"] += 1
        self.meta.pop(name, None)


# --- queues -------------------------------------------------------------------------------------------------------


class MemoryQueue:
    """A queue that keeps what was sent, with the visibility delay asked for."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int | None]] = []

    def send(self, text: str, *, delay_seconds: int | None = None) -> None:
        self.sent.append((text, delay_seconds))

    @property
    def texts(self) -> list[str]:
        return [text for text, _ in self.sent]


class MemoryPoisonQueues:
    """Poison queues to peek at (never received: peeking leaves them); counts the peeks."""

    def __init__(self, messages: Iterable[PoisonMessage] = ()) -> None:
        self.messages = list(messages)
        self.peeked = 0

    def peek(self, queue: str, max_messages: int = 32) -> list[PoisonMessage]:
        self.peeked += 1
        return [m for m in self.messages if m.queue == queue][:max_messages]


# --- mail ---------------------------------------------------------------------------------------------------------


class RecordingMailer:
    """Keeps each (subject, body); with ``fail`` it refuses as an unreachable relay does (MailError)."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, str]] = []
        self.fail = fail

    async def send(self, subject: str, body: str) -> None:
        if self.fail:
            raise MailError("could not hand the mail to SMTP relay smtp.invalid:25: refused")
        self.sent.append((subject, body))


# --- on-premises AD -----------------------------------------------------------------------------------------------


@dataclass
class _Entry:
    dn: str
    object_sid: str
    user_account_control: int | None
    attributes: dict[str, str | None] = field(default_factory=dict)
    mark: str | None = None
    person: bool = True  # False: some other object class (a contact, a computer) that only blocks the name


def _dn_key(dn: str) -> str:
    return dn.lower().replace(", ", ",")


def _split(dn: str) -> tuple[str, str]:
    rdn, _, parent = dn.partition(",")
    return rdn, parent


class MemoryDirectory:
    """The guest and archive OUs in memory, with the LDAP adapter's checks and errors: CN=<uid> names the guest
    in either OU, objectSids are handed out in order and never reused, accounts carry the HMAC ownership mark
    under ``keys[0]`` (``AdAccount.marked`` is computed from it), writes outside the OUs are refused before
    anything changes. ``writes`` lists each write (create, adopt, mark, release_upn, update, disable, restore,
    delete); ``scan_hook(n)`` runs before the n-th account of a scan (to block or fail it)."""

    def __init__(self, guest_ou: str = GUEST_OU, archive_ou: str | None = ARCHIVE_OU, *,
                 keys: Sequence[str] = (OWNERSHIP_KEY,), netbios: str = "CONTOSO", dns_name: str = "contoso.com"
                 ) -> None:
        self.guest_ou, self.archive_ou = guest_ou, archive_ou
        self.keys, self.netbios, self.dns_name = tuple(keys), netbios, dns_name
        self.objects: dict[str, _Entry] = {}  # by normalised DN, in creation order
        self.writes: list[str] = []
        self.scanned = 0
        self.scan_hook: Callable[[int], None] | None = None
        self._rids = itertools.count(int(FIRST_SID.rsplit("-", 1)[1]))
        self._lock = threading.Lock()

    # test setup

    def add(self, dn: str, attributes: Mapping[str, str | None], *, user_account_control: int = 512,
            uid: str | None = None, marked: bool = True, sid: str | None = None, person: bool = True) -> None:
        """Put an object at ``dn`` as if it were there already (no checks, not in ``writes``); marked for ``uid``
        (default: the uid in its CN) unless ``marked`` is False."""
        owner = (uid or uid_from_dn(dn)) if marked else None
        entry = _Entry(dn, sid or self._new_sid(), user_account_control, dict(attributes),
                       ownership_mark(self.keys[0], owner) if owner else None, person)
        self.objects[_dn_key(dn)] = entry

    def account(self, uid: str) -> AdAccount | None:
        """The person named CN=<uid> in either OU (test inspection)."""
        for ou in (self.guest_ou, self.archive_ou):
            entry = self.objects.get(_dn_key(guest_dn(uid, ou))) if ou else None
            if entry is not None and entry.person:
                return self._account(entry)
        return None

    # helpers

    def _new_sid(self) -> str:
        return f"{FIRST_SID.rsplit('-', 1)[0]}-{next(self._rids)}"

    def _account(self, entry: _Entry) -> AdAccount:
        owner = uid_from_dn(entry.dn)
        return AdAccount(entry.dn, entry.object_sid, entry.attributes.get("sAMAccountName"),
                         entry.user_account_control, dict(entry.attributes),
                         marked=owner is not None and carries_mark(self.keys, owner, entry.mark))

    def _managed(self) -> list[str]:
        return [ou for ou in (self.guest_ou, self.archive_ou) if ou]

    def _require_managed(self, dn: str) -> None:
        if not any(is_within(dn, ou) for ou in self._managed()):
            raise OutsideManagedOuError(f"refusing to write {dn}: it is outside {' and '.join(self._managed())}")

    def _person(self, dn: str) -> _Entry | None:
        entry = self.objects.get(_dn_key(dn))
        return entry if entry is not None and entry.person else None

    def _check_values(self, dn: str, values: Mapping[str, str | None]) -> None:
        unknown = sorted(set(values) - set(PERSISTENT_ATTRIBUTES))
        if unknown:
            raise ValueError(
                f"attribute(s) {', '.join(unknown)} cannot be written here; only {', '.join(PERSISTENT_ATTRIBUTES)}")
        problems = validate_export(values)
        if problems:
            raise ConstraintError("; ".join(problems))
        sam, upn = values.get("sAMAccountName"), values.get("userPrincipalName")
        for other in self.objects.values():
            if same_dn(other.dn, dn):
                continue
            if upn and (other.attributes.get("userPrincipalName") or "").casefold() == upn.casefold():
                raise ConstraintError(f"userPrincipalName {upn!r} is already used by another account in the "
                                      f"domain ({other.dn})")
            if sam and (other.attributes.get("sAMAccountName") or "").casefold() == sam.casefold():
                raise ConstraintError(f"sAMAccountName {sam!r} is already in use by another account in the "
                                      f"domain ({other.dn})")

    def _placement(self, dn: str, action: str) -> str:
        self._require_managed(dn)
        rdn, parent = _split(dn)
        if any(same_dn(parent, ou) for ou in self._managed()):
            return rdn
        raise OutsideManagedOuError(
            f"refusing to {action} {dn}: only accounts directly in {self.guest_ou} or {self.archive_ou} are moved")

    def _locate(self, dn: str, target: str, action: str) -> _Entry:
        entry = self._person(dn) or self._person(target)
        if entry is None:
            if _dn_key(dn) in self.objects:
                raise DirectoryError(f"refusing to {action} {dn}: it is not a user account")
            raise AccountNotFoundError(f"cannot {action} {dn}: there is no user account at {dn} nor at {target}")
        return entry

    def _move(self, entry: _Entry, target: str, action: str) -> None:
        if same_dn(entry.dn, target):
            return
        if _dn_key(target) in self.objects:
            raise AccountExistsError(f"cannot {action} {entry.dn}: {target} already exists (another object with "
                                     f"the same name is there; remove or rename one of them)")
        del self.objects[_dn_key(entry.dn)]
        entry.dn = target
        self.objects[_dn_key(target)] = entry

    # GuestDirectory

    def find_guest(self, uid: str) -> AdAccount | None:
        entry = self._person(guest_dn(uid, self.guest_ou))
        return self._account(entry) if entry is not None else None

    def holder_of(self, uid: str) -> str | None:
        entry = self.objects.get(_dn_key(guest_dn(uid, self.guest_ou)))
        return entry.dn if entry is not None else None

    def find_by_sid(self, sid: str) -> AdAccount | None:
        for entry in self.objects.values():
            if entry.person and entry.object_sid == sid and any(is_within(entry.dn, ou) for ou in self._managed()):
                return self._account(entry)
        return None

    def create_guest(self, uid: str, attributes: dict[str, str | None], password: str,
                     user_account_control: int) -> AdAccount:
        dn = guest_dn(uid, self.guest_ou)
        self._require_managed(dn)
        values = {k: v for k, v in attributes.items() if v is not None and v != ""}
        with self._lock:
            self._check_values(dn, values)
            if _dn_key(dn) in self.objects:
                raise AccountExistsError(f"{dn} already exists")
            self.writes.append("create")
            self.add(dn, values, user_account_control=user_account_control, uid=uid)
            return self._account(self.objects[_dn_key(dn)])

    def adopt_guest(self, dn: str, uid: str, attributes: dict[str, str | None], password: str,
                    user_account_control: int) -> AdAccount:
        self._require_managed(dn)
        if uid_from_dn(dn) != uid.lower():
            raise OutsideManagedOuError(f"refusing to adopt {dn} for guest {uid}: its CN is not the guest's id")
        with self._lock:
            entry = self._person(dn)
            if entry is None:
                raise AccountNotFoundError(f"cannot adopt {dn}: there is no user account there")
            values = {k: v for k, v in attributes.items() if v is not None and v != ""}
            self._check_values(dn, values)
            self.writes.append("adopt")
            entry.attributes.update(values)
            entry.user_account_control = user_account_control
            entry.mark = ownership_mark(self.keys[0], uid)
            return self._account(entry)

    def mark_owned(self, account: AdAccount, uid: str) -> None:
        self._require_managed(account.dn)
        entry = self._person(account.dn)
        if entry is None:
            raise AccountNotFoundError(f"marking {account.dn}: {account.dn} (or its OU) does not exist")
        self.writes.append("mark")
        entry.mark = ownership_mark(self.keys[0], uid)

    def release_upn(self, dn: str) -> None:
        self._require_managed(dn)
        if not self.archive_ou or not is_within(dn, self.archive_ou):
            raise OutsideManagedOuError(f"refusing to release the UPN of {dn}: only archived accounts give it up")
        entry = self._person(dn)
        if entry is None:
            raise AccountNotFoundError(f"releasing the userPrincipalName of {dn}: {dn} does not exist")
        self.writes.append("release_upn")
        entry.attributes.pop("userPrincipalName", None)

    def update_guest(self, dn: str, changes: dict[str, str | None]) -> None:
        self._require_managed(dn)
        if not changes:
            return
        with self._lock:
            self._check_values(dn, changes)
            entry = self._person(dn)
            if entry is None:
                raise AccountNotFoundError(f"updating {dn}: {dn} (or its OU) does not exist")
            self.writes.append("update")
            entry.attributes.update({k: (v or None) for k, v in changes.items()})

    def netbios_domain(self) -> str:
        return self.netbios

    def _require_archive(self, action: str) -> str:
        if not self.archive_ou:
            raise ConfigurationError(f"cannot {action}: setting AD_ARCHIVE_OU is not set (the OU that disabled "
                                     "guest accounts are moved to)")
        return self.archive_ou

    def disable_and_archive(self, dn: str) -> AdAccount:
        archive_ou = self._require_archive("archive a guest account")
        target = f"{self._placement(dn, 'archive')},{archive_ou}"
        with self._lock:
            entry = self._locate(dn, target, "archive")
            if not same_dn(entry.dn, target) and _dn_key(target) in self.objects:
                raise AccountExistsError(f"cannot archive {entry.dn}: {target} already exists (another object with "
                                         f"the same name is in {archive_ou}; remove or rename one of them)")
            disabled = (entry.user_account_control or 0) | UAC_ACCOUNTDISABLE
            if disabled != entry.user_account_control or not same_dn(entry.dn, target):
                self.writes.append("disable")  # a step already done sends nothing, as the adapter
            entry.user_account_control = disabled
            self._move(entry, target, "archive")
            return self._account(entry)

    def restore_guest(self, dn: str) -> AdAccount:
        self._require_archive("restore a guest account")
        target = f"{self._placement(dn, 'restore')},{self.guest_ou}"
        with self._lock:
            entry = self._locate(dn, target, "restore")
            enabled = (entry.user_account_control or 0) & ~UAC_ACCOUNTDISABLE
            if enabled != entry.user_account_control or not same_dn(entry.dn, target):
                self._move(entry, target, "restore")
                self.writes.append("restore")
            entry.user_account_control = enabled
            return self._account(entry)

    def delete_guest(self, dn: str) -> None:
        self._require_managed(dn)
        with self._lock:
            entry = self.objects.get(_dn_key(dn))
            if entry is None:
                return  # already gone: success, as the adapter
            if not entry.person:
                raise DirectoryError(f"refusing to delete {dn}: it is not a user account")
            self.writes.append("delete")
            del self.objects[_dn_key(dn)]

    # AccountScanner

    def iter_managed_accounts(self, page_size: int = 500) -> Iterator[AdAccount]:
        managed = (e for e in list(self.objects.values())
                   if e.person and any(is_within(e.dn, ou) for ou in self._managed()))
        for n, entry in enumerate(managed):
            if self.scan_hook is not None:
                self.scan_hook(n)
            self.scanned += 1
            yield self._account(entry)


# --- Microsoft Graph ----------------------------------------------------------------------------------------------


class MemoryGraph:
    """Users, groups, users/delta and subscriptions in memory, answering as the Graph adapter does: None for a
    user Graph does not have, False for a group it does not know (checkMemberGroups), GraphNotFoundError when
    listing an unknown group, DeltaExpiredError (410) for a deltaLink it did not give. Every change made with
    ``set_user``/``remove_user`` is a delta event. ``fail_with`` makes user reads raise it (throttling, 5xx);
    ``reads`` counts user reads; ``calls`` lists the subscription calls. ``conflict_then``: the next create
    answers 409 because another instance created these subscriptions meanwhile."""

    def __init__(self, users: Iterable[GraphUser] = (), *, groups: Mapping[str, Iterable[str]] | None = None,
                 initial_domain: str = "contoso.onmicrosoft.com", subscriptions: Iterable[Subscription] = (),
                 conflict_then: list[Subscription] | None = None, page_size: int = 100) -> None:
        self.users: dict[str, GraphUser] = {}
        self.groups = {g: set(map(graph_id, members)) for g, members in (groups or {}).items()}
        self.initial_domain = initial_domain
        self.subscriptions = list(subscriptions)
        self.conflict_then = conflict_then
        self.page_size = page_size
        self.fail_with: Exception | None = None
        self.reads = 0
        self.calls: list[str] = []
        self._events: list[tuple[str, GraphUser | None, str]] = []  # (id, user or None when removed, reason)
        self._expired_before = 0
        for user in users:
            self.users[graph_id(user.id)] = user

    def set_user(self, user: GraphUser) -> None:
        self.users[graph_id(user.id)] = user
        self._events.append((graph_id(user.id), user, "changed"))

    def remove_user(self, user_id: str, reason: str = "deleted") -> None:
        self.users.pop(graph_id(user_id), None)
        self._events.append((graph_id(user_id), None, reason))

    def expire_delta_links(self) -> None:
        """Every deltaLink given so far answers 410 Gone from now on (the sync state expired)."""
        self._expired_before = len(self._events) + 1

    def _read(self) -> None:
        self.reads += 1
        if self.fail_with is not None:
            raise self.fail_with

    # GuestReader

    async def get_user(self, user_id: str) -> GraphUser | None:
        self._read()
        return self.users.get(graph_id(user_id))

    async def get_users(self, user_ids: Sequence[str]) -> dict[str, GraphUser | None]:
        self._read()
        return {uid: self.users.get(graph_id(uid)) for uid in user_ids}

    async def is_group_member(self, user_id: str, group_id: str) -> bool | None:
        self._read()
        if graph_id(user_id) not in self.users:
            return None
        return graph_id(user_id) in self.groups.get(group_id, set())

    async def get_initial_domain(self) -> str:
        return self.initial_domain

    # DeltaReader

    def _link(self, position: int) -> str:
        return f"https://graph.invalid/v1.0/users/delta?$deltatoken={position}"

    async def delta(self, delta_link: str | None = None) -> AsyncIterator[DeltaPage]:
        users: list[GraphUser] = []
        removed: list[tuple[str, str]] = []
        if delta_link is None:
            users = [self.users[k] for k in sorted(self.users)]
        else:
            token = delta_link.rpartition("$deltatoken=")[2]
            if not token.isdigit() or not self._expired_before <= int(token) <= len(self._events):
                raise DeltaExpiredError(410, "SyncStateNotFound", f"the deltaLink {delta_link} has expired")
            latest: dict[str, tuple[GraphUser | None, str]] = {}
            for uid, user, reason in self._events[int(token):]:
                latest[uid] = (user, reason)
            users = [u for u, _ in latest.values() if u is not None]
            removed = [(uid, reason) for uid, (u, reason) in latest.items() if u is None]
        end = len(self._events)
        chunks = [users[i:i + self.page_size] for i in range(0, len(users), self.page_size)] or [[]]
        for n, chunk in enumerate(chunks):
            last = n == len(chunks) - 1
            yield DeltaPage(users=chunk, removed=removed if last else [],
                            next_link=None if last else f"{self._link(end)}&$skiptoken={n + 1}",
                            delta_link=self._link(end) if last else None)

    async def iter_group_member_ids(self, group_id: str, page_size: int = 999) -> AsyncIterator[str]:
        if group_id not in self.groups:
            raise GraphNotFoundError(404, "Request_ResourceNotFound", f"group {group_id} does not exist")
        for member in sorted(self.groups[group_id]):
            yield member

    # SubscriptionApi

    async def list_subscriptions(self) -> list[Subscription]:
        self.calls.append("list")
        return list(self.subscriptions)

    async def create_subscription(self, notification_url: str, lifecycle_url: str | None, client_state: str,
                                  expiration: datetime) -> Subscription:
        self.calls.append("create")
        if self.conflict_then is not None:
            self.subscriptions, self.conflict_then = self.conflict_then, None  # another instance was quicker
            raise SubscriptionConflictError(409, "Conflict", "subscription exists")
        created = Subscription("new", "users", "updated,deleted", notification_url, lifecycle_url, expiration)
        self.subscriptions.append(created)
        return created

    async def renew_subscription(self, subscription_id: str, expiration: datetime) -> Subscription:
        self.calls.append(f"renew {subscription_id}")
        for n, current in enumerate(self.subscriptions):
            if current.id == subscription_id:
                self.subscriptions[n] = replace(current, expiration=expiration)
                return self.subscriptions[n]
        raise GraphNotFoundError(404, "ResourceNotFound", f"subscription {subscription_id} does not exist")

    async def delete_subscription(self, subscription_id: str) -> None:
        self.calls.append(f"delete {subscription_id}")
        self.subscriptions = [s for s in self.subscriptions if s.id != subscription_id]


# --- each fake is checked against its port by mypy -----------------------------------------------------------------

_store: GuestStore = MemoryGuestStore()
_queue: MessageSender = MemoryQueue()
_poison: PoisonQueues = MemoryPoisonQueues()
_mailer: Mailer = RecordingMailer()
_directory: GuestDirectory = MemoryDirectory()
_scanner: AccountScanner = MemoryDirectory()
_guests: GuestReader = MemoryGraph()
_delta: DeltaReader = MemoryGraph()
_subscriptions: SubscriptionApi = MemoryGraph()
