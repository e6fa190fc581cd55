"""Domain types shared by the rules, the services and the adapters.

Names follow the MIM scenario the product replaces (seed 002): a *guest* in Graph is projected into a
*metaverse entry* by the inbound flow rules, joined on ``uid`` (= Graph ``id``), and *exported* to an AD
shadow account by the outbound flow rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

#: Graph object ids are GUIDs. Anything else is refused before it can reach a DN or a filter.
GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

#: userAccountControl = NORMAL_ACCOUNT (0x200) | SMARTCARD_REQUIRED (0x40000), seed 002.
UAC_NORMAL_ACCOUNT = 0x0200
UAC_ACCOUNTDISABLE = 0x0002
UAC_SMARTCARD_REQUIRED = 0x40000
GUEST_USER_ACCOUNT_CONTROL = UAC_NORMAL_ACCOUNT | UAC_SMARTCARD_REQUIRED  # 262656


def is_guid(value: str) -> bool:
    return bool(GUID_RE.fullmatch(value))


def graph_id(value: str) -> str:
    """A Graph object id as guestsync keys it: lower case. Graph matches GUIDs in any letter case and some of
    its answers write them in upper case, but state keys, queue messages and ``CN=<id>`` compare as strings, so
    an id is normalised wherever it enters (Graph answers, notifications, queue messages, the CLI)."""
    return value.strip().lower()


@dataclass(frozen=True)
class GraphUser:
    """A user as Microsoft Graph returns it (the connector space of the Graph side)."""

    id: str
    user_type: str | None = None
    display_name: str | None = None
    given_name: str | None = None
    surname: str | None = None
    user_principal_name: str | None = None
    mail: str | None = None
    mobile_phone: str | None = None
    account_enabled: bool | None = None


#: The Graph properties every read must $select: the inbound flow sources plus what deprovisioning needs.
GRAPH_USER_SELECT: tuple[str, ...] = (
    "id",
    "userType",
    "displayName",
    "givenName",
    "surname",
    "userPrincipalName",
    "mail",
    "mobilePhone",
    "accountEnabled",
)


@dataclass(frozen=True)
class MetaverseEntry:
    """The person object after the inbound flow (seed 002 'Import Guest User' rule)."""

    uid: str
    cn: str
    account_name: str
    employee_type: str | None
    display_name: str | None
    given_name: str | None
    sn: str | None
    user_principal_name: str | None
    mail: str | None
    mobile_phone: str | None

    def as_dict(self) -> dict[str, str | None]:
        """The entry as stored in a guest record (``Entry``, JSON) and shown by the CLI: metaverse names."""
        return {key: getattr(self, name) for name, key in _ENTRY_KEYS.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MetaverseEntry:
        """The entry of :meth:`as_dict`; KeyError when uid, cn or accountName is missing."""
        values: dict[str, Any] = {name: data[key] if key in _ENTRY_REQUIRED else data.get(key)
                                  for name, key in _ENTRY_KEYS.items()}
        return cls(**values)


#: MetaverseEntry's fields and the metaverse attribute names they are stored under, in seed order: one table
#: for both directions.
_ENTRY_KEYS: dict[str, str] = {
    "uid": "uid",
    "cn": "cn",
    "account_name": "accountName",
    "employee_type": "employeeType",
    "display_name": "displayName",
    "given_name": "givenName",
    "sn": "sn",
    "user_principal_name": "userPrincipalName",
    "mail": "mail",
    "mobile_phone": "mobilePhone",
}
_ENTRY_REQUIRED = frozenset({"uid", "cn", "accountName"})


@dataclass(frozen=True)
class AdAccount:
    """A shadow account as read back from AD (the connector space of the AD side)."""

    dn: str
    object_sid: str | None
    sam_account_name: str | None
    user_account_control: int | None
    attributes: dict[str, str | None] = field(default_factory=dict)
    marked: bool = False  # carries guestsync's ownership mark for the uid in its CN (see ad_rules.ownership_mark)
    when_created: str | None = None  # AD generalized time, e.g. 20261130101500.0Z (shown for adoptable objects)

    @property
    def identity(self) -> str:
        """What tells this object apart from a look-alike, for findings about objects guestsync did not create."""
        return (f"objectSid {self.object_sid}, userAccountControl {self.user_account_control}, "
                f"created {self.when_created or 'at an unknown time'}")

    @property
    def disabled(self) -> bool:
        """ACCOUNTDISABLE is set (False if userAccountControl was not read: unknown is not disabled)."""
        return bool((self.user_account_control or 0) & UAC_ACCOUNTDISABLE)


class ExportKind(StrEnum):
    CREATE = "create"
    UPDATE = "update"


class GuestStatus(StrEnum):
    """Where a guest stands; shown by ``guestsync status``."""

    PENDING = "pending"  # export queued, not yet applied
    PROVISIONED = "provisioned"  # AD account matches the metaverse entry
    ERROR = "error"  # the last export failed for a reason an admin must fix (see ``error``)
    OUT_OF_SCOPE = "out_of_scope"  # left scope in Entra (deleted, disabled, member, group); deprovision due
    HELD = "held"  # deprovisioning held by the mass-change breaker until `guestsync approve`
    ARCHIVED = "archived"  # account disabled and moved to the archive OU; restored if the guest returns


#: Statuses of a guest that has left scope (its account is, or is about to be, deprovisioned).
DEPROVISION_STATUSES = frozenset({GuestStatus.OUT_OF_SCOPE, GuestStatus.HELD, GuestStatus.ARCHIVED})


class Approval(StrEnum):
    """An operator's answer to a held deprovisioning (``guestsync approve``)."""

    APPROVED = "approved"
    REJECTED = "rejected"


class GuestsyncError(Exception):
    """Base class of errors the operator can act on; ``str()`` is the readable message."""


class ConfigurationError(GuestsyncError):
    """A setting is missing or wrong; the message names the setting."""


class SecurityKind(StrEnum):
    """Why a change was refused for security (recorded on the guest; ``status`` and ``plan`` list them)."""

    FOREIGN_OBJECT = "foreign_object"  # CN=<uid> holds another object (objectSid) than the one joined to the guest
    UNMARKED = "unmarked"  # CN=<uid> exists without guestsync's ownership mark: adoptable, by an operator only
    NOT_A_USER = "not_a_user"  # CN=<uid> is held by a computer or another object that is not a person
    RULE = "rule"  # the guest's values break a security rule (e.g. a UPN not of the kind Entra gives guests)


class SecurityFindingError(GuestsyncError):
    """A security rule refused the change: a planted or look-alike AD object, a UPN that is not of the kind Entra
    gives guests. Nothing was written; the guest goes to ``error`` with this reason, flagged as a security finding,
    and an alert is raised (an error log, the ``guestsync.security.findings`` metric, mail when mail is on)."""

    def __init__(self, message: str, kind: SecurityKind = SecurityKind.RULE, dn: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.dn = dn


# --- Graph resources the services reason about ------------------------------------------------------------------

MAX_IN_VALUES = 15  # values in one $filter ``in`` clause that Graph accepts without advanced queries


@dataclass(frozen=True)
class Subscription:
    id: str
    resource: str
    change_type: str
    notification_url: str
    lifecycle_url: str | None
    expiration: datetime


@dataclass
class DeltaPage:
    users: list[GraphUser] = field(default_factory=list)
    removed: list[tuple[str, str]] = field(default_factory=list)  # (id, reason: changed | deleted)
    next_link: str | None = None
    delta_link: str | None = None
