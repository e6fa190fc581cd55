"""The guest record: the metaverse entry of one guest, its join to AD and where it stands, and its serialised
form (the Table Storage entity, and the snapshot an export message carries). Pure: no client of any system.

One entity per guest (PartitionKey ``guest``, RowKey = Graph id = metaverse uid, in lower case whatever the case
it arrived in). No password is ever part of it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from shared.core.domain import Approval, GuestStatus, MetaverseEntry, SecurityKind, graph_id

PARTITION = "guest"
SNAPSHOT_ETAG = "ETag"  # the ETag's key in a snapshot (no entity property has that name)
_WHEN_PROPERTIES = ("GraphReadAt", "NotifiedAt", "ExportedAt", "ArchivedAt")
#: What each property of a snapshot must be (datetimes travel as ISO 8601 strings).
_SNAPSHOT_TYPES: dict[str, type | tuple[type, ...]] = {
    "RowKey": str, "Entry": str, "Status": str, "Version": int, "ExportedVersion": int,
    **dict.fromkeys(("Reason", "Error", "Warnings", "ObjectSid", "Dn", "SamAccountName", "Domain", "Approval",
                     "Security", *_WHEN_PROPERTIES), str),
    "Adopt": bool,
    "LatencyMs": int,
}
_SNAPSHOT_REQUIRED = frozenset({"RowKey", "Entry", "Status", "Version", "ExportedVersion"})


#: What planning reads of a record (``plan_for``, ``plan_export``, the reconcile's findings and exports).
PLANNING_PROPERTIES = ("RowKey", "Entry", "Status", "Version", "Reason", "Error", "ObjectSid", "Dn", "ArchivedAt",
                       "Approval", "Security", "Adopt")


class ConcurrencyError(Exception):
    """Someone else wrote the entity since we read it; re-read and try again."""


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class GuestRecord:
    """A guest as guestsync knows it: metaverse entry (Graph side) and join to its AD account."""

    uid: str
    entry: MetaverseEntry
    status: GuestStatus = GuestStatus.PENDING
    version: int = 1  # bumped whenever the metaverse entry changes
    exported_version: int = 0  # the version last written to AD
    reason: str | None = None  # why the last change happened (apply plan reason)
    error: str | None = None  # readable per-guest export error, for the operator
    warnings: str | None = None  # e.g. a displayName truncated to AD's limit
    object_sid: str | None = None  # AD join anchor once known (import flow objectSid->objectSid)
    dn: str | None = None
    sam_account_name: str | None = None  # import flow sAMAccountName->accountName
    domain: str | None = None  # import flow NetBIOS domain -> domain
    graph_read_at: datetime | None = None
    notified_at: datetime | None = None  # earliest notification not yet exported (latency metric)
    exported_at: datetime | None = None
    latency_ms: int | None = None  # last invite/change-to-account latency
    archived_at: datetime | None = None  # when the account was disabled and moved to the archive OU
    approval: Approval | None = None  # operator's answer to a held deprovisioning
    security: SecurityKind | None = None  # set with ``error`` when a security rule refused the export
    adopt: bool = False  # an operator chose to take over the object at CN=<uid> (``guestsync adopt``)
    etag: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "uid", graph_id(self.uid))  # the RowKey: one key per guest, whatever the case

    @property
    def has_account(self) -> bool:
        return self.object_sid is not None

    def to_entity(self) -> dict[str, Any]:
        entity: dict[str, Any] = {
            "PartitionKey": PARTITION,
            "RowKey": self.uid,
            "Entry": json.dumps(self.entry.as_dict(), ensure_ascii=False),
            "Status": self.status.value,
            "Version": self.version,
            "ExportedVersion": self.exported_version,
        }
        optional: dict[str, Any] = {
            "Reason": self.reason,
            "Error": self.error,
            "Warnings": self.warnings,
            "ObjectSid": self.object_sid,
            "Dn": self.dn,
            "SamAccountName": self.sam_account_name,
            "Domain": self.domain,
            "GraphReadAt": self.graph_read_at,
            "NotifiedAt": self.notified_at,
            "ExportedAt": self.exported_at,
            "LatencyMs": self.latency_ms,
            "ArchivedAt": self.archived_at,
            "Approval": self.approval.value if self.approval else None,
            "Security": self.security.value if self.security else None,
            "Adopt": True if self.adopt else None,
        }
        # Table Storage has no null: an absent property is how "None" is stored (REPLACE drops it).
        entity.update({k: v for k, v in optional.items() if v is not None})
        return entity

    @classmethod
    def from_entity(cls, entity: Any) -> GuestRecord:
        return cls._from_fields(entity, entity.metadata.get("etag") if hasattr(entity, "metadata") else None)

    @classmethod
    def _from_fields(cls, entity: Mapping[str, Any], etag: str | None) -> GuestRecord:
        def when(name: str) -> datetime | None:
            value = entity.get(name)
            return value if isinstance(value, datetime) else None

        return cls(
            uid=entity["RowKey"],
            entry=MetaverseEntry.from_dict(json.loads(entity["Entry"])),
            status=GuestStatus(entity.get("Status", GuestStatus.PENDING.value)),
            version=int(entity.get("Version", 1)),
            exported_version=int(entity.get("ExportedVersion", 0)),
            reason=entity.get("Reason"),
            error=entity.get("Error"),
            warnings=entity.get("Warnings"),
            object_sid=entity.get("ObjectSid"),
            dn=entity.get("Dn"),
            sam_account_name=entity.get("SamAccountName"),
            domain=entity.get("Domain"),
            graph_read_at=when("GraphReadAt"),
            notified_at=when("NotifiedAt"),
            exported_at=when("ExportedAt"),
            latency_ms=entity.get("LatencyMs"),
            archived_at=when("ArchivedAt"),
            approval=Approval(entity["Approval"]) if entity.get("Approval") else None,
            security=SecurityKind(entity["Security"]) if entity.get("Security") else None,
            adopt=bool(entity.get("Adopt")),
            etag=etag,
        )

    def to_snapshot(self) -> dict[str, Any]:
        """The entity as JSON values plus its ETag, for an export message: the worker starts from it instead of
        reading the record again, and its ETag-guarded save catches a snapshot that went stale."""
        data = {k: v.isoformat() if isinstance(v, datetime) else v
                for k, v in self.to_entity().items() if k != "PartitionKey"}
        data[SNAPSHOT_ETAG] = self.etag
        return data

    @classmethod
    def from_snapshot(cls, data: object) -> GuestRecord:
        """The record of :meth:`to_snapshot`; ValueError when malformed (the caller reads state instead)."""
        if not isinstance(data, dict):
            raise ValueError("snapshot is not an object")
        etag = data.get(SNAPSHOT_ETAG)
        if not isinstance(etag, str) or not etag:
            raise ValueError("snapshot has no ETag")
        fields = dict(data)
        for name, kinds in _SNAPSHOT_TYPES.items():
            value = fields.get(name)
            if value is None and name not in _SNAPSHOT_REQUIRED:
                continue
            if not isinstance(value, kinds) or (isinstance(value, bool) and kinds is not bool):
                raise ValueError(f"snapshot property {name} is missing or of the wrong type")
        try:
            for name in _WHEN_PROPERTIES:
                if fields.get(name) is not None:
                    fields[name] = datetime.fromisoformat(fields[name])
                    if fields[name].tzinfo is None:
                        raise ValueError(f"{name} has no time zone")
            return cls._from_fields(fields, etag)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:  # JSONDecodeError is a ValueError
            raise ValueError(f"malformed snapshot: {exc}") from exc

    def evolve(self, **changes: Any) -> GuestRecord:
        return replace(self, **changes)
