"""Guest state in Azure Table Storage: the metaverse entry of each guest plus its join to AD.

One entity per guest (PartitionKey ``guest``, RowKey = Graph id = metaverse uid, in lower case whatever the
case it arrived in: Table Storage keys compare as strings). Writes use the entity's
ETag so two instances never overwrite each other's newer data; the caller re-reads and re-plans on conflict.
No password is ever stored here.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from shared.adapters.storage import table_service
from shared.domain import Approval, GuestStatus, MetaverseEntry, SecurityKind, graph_id
from shared.settings import StorageSettings

PARTITION = "guest"
META_PARTITION = "meta"  # small singletons: the users deltaLink, the breaker window, the last reconcile
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


class StateStore:
    """Table Storage repository of guest records (the metaverse + join table)."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    @classmethod
    def from_connection_string(cls, connection_string: str, table_name: str) -> StateStore:
        return cls.from_settings(StorageSettings(connection_string=connection_string), table_name)

    @classmethod
    def from_settings(cls, storage: StorageSettings, table_name: str) -> StateStore:
        return cls(table_service(storage).create_table_if_not_exists(table_name))

    def get(self, uid: str) -> GuestRecord | None:
        try:
            return GuestRecord.from_entity(self._table.get_entity(PARTITION, graph_id(uid)))
        except ResourceNotFoundError:
            return None

    def save(self, record: GuestRecord) -> GuestRecord:
        """Insert a new record (etag None) or replace ours if nobody wrote it since we read it."""
        try:
            if record.etag is None:
                meta = self._table.create_entity(record.to_entity())
            else:
                meta = self._table.update_entity(
                    record.to_entity(),
                    mode=UpdateMode.REPLACE,
                    etag=record.etag,
                    match_condition=MatchConditions.IfNotModified,
                )
        except (ResourceExistsError, ResourceModifiedError) as exc:
            raise ConcurrencyError(record.uid) from exc
        except ResourceNotFoundError as exc:  # deleted under us
            raise ConcurrencyError(record.uid) from exc
        return record.evolve(etag=meta.get("etag"))

    def delete(self, uid: str) -> None:
        self._table.delete_entity(PARTITION, graph_id(uid))

    def get_meta(self, name: str) -> tuple[dict[str, Any], str | None]:
        """A singleton document and its ETag (``({}, None)`` when it does not exist yet)."""
        try:
            entity = self._table.get_entity(META_PARTITION, name)
        except ResourceNotFoundError:
            return {}, None
        return json.loads(entity.get("Body") or "{}"), entity.metadata.get("etag")

    def save_meta(self, name: str, body: dict[str, Any], etag: str | None) -> str:
        """Write a singleton guarded by its ETag (None = must not exist yet); ConcurrencyError on a race."""
        entity = {"PartitionKey": META_PARTITION, "RowKey": name,
                  "Body": json.dumps(body, ensure_ascii=False, default=str)}
        try:
            if etag is None:
                meta = self._table.create_entity(entity)
            else:
                meta = self._table.update_entity(entity, mode=UpdateMode.REPLACE, etag=etag,
                                                 match_condition=MatchConditions.IfNotModified)
        except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError) as exc:
            raise ConcurrencyError(name) from exc
        return str(meta.get("etag"))

    def put_meta(self, name: str, body: dict[str, Any]) -> None:
        """Write a singleton whatever its current version (last writer wins: reports, not counters)."""
        self._table.upsert_entity({"PartitionKey": META_PARTITION, "RowKey": name,
                                   "Body": json.dumps(body, ensure_ascii=False, default=str)},
                                  mode=UpdateMode.REPLACE)

    def list_meta(self, prefix: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """The singletons whose name starts with ``prefix`` (agent heartbeats), as (name, body)."""
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        query = f"PartitionKey eq '{META_PARTITION}' and RowKey ge '{prefix}' and RowKey lt '{end}'"
        for entity in self._table.query_entities(query, select=["RowKey", "Body"]):
            yield str(entity["RowKey"]), json.loads(entity.get("Body") or "{}")

    def delete_meta(self, name: str) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            self._table.delete_entity(META_PARTITION, name)

    def __iter__(self) -> Iterator[GuestRecord]:
        for entity in self._table.query_entities(f"PartitionKey eq '{PARTITION}'", results_per_page=1000):
            yield GuestRecord.from_entity(entity)

    def planning_records(self) -> Iterator[GuestRecord]:
        """Every guest with only the properties the reconcile plans with (a third less to transfer and parse).
        Read-only views without an ETag: saving one would be refused as an insert of an existing guest."""
        for entity in self._table.query_entities(f"PartitionKey eq '{PARTITION}'", select=list(PLANNING_PROPERTIES),
                                                 results_per_page=1000):
            yield GuestRecord.from_entity(entity).evolve(etag=None)

    def with_status(self, *statuses: GuestStatus) -> Iterator[GuestRecord]:
        """Guests in any of ``statuses`` (a server-side filter: only those entities cross the wire)."""
        wanted = " or ".join(f"Status eq '{s.value}'" for s in statuses)
        for entity in self._table.query_entities(f"PartitionKey eq '{PARTITION}' and ({wanted})",
                                                 results_per_page=1000):
            yield GuestRecord.from_entity(entity)

    def counts(self) -> Counter[str]:
        """Guests per status, streamed (``select`` keeps each page small)."""
        counts: Counter[str] = Counter()
        for entity in self._table.query_entities(
            f"PartitionKey eq '{PARTITION}'", select=["Status"], results_per_page=1000
        ):
            counts[entity.get("Status", GuestStatus.PENDING.value)] += 1
        return counts
