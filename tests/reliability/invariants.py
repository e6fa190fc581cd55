"""What must hold after every fault: ``assert_invariants(stack, uids)``.

1. Every guest ends with exactly one AD account (the whole domain is searched, by cn and by
   userPrincipalName), joined in state, or in the error the scenario expects for it: ``expected_errors``
   maps such a guest to a text its readable message must contain (then at most one account of its cn exists).
   A guest in ``error`` that the scenario does not expect counts as lost, however readable its message: a
   build that refuses every account must not pass as "every guest visibly in error". A guest expected in
   error that ends provisioned (or anywhere else) fails too: the scenario did not test what it says.
2. No duplicate accounts in the domain: by cn, userPrincipalName or sAMAccountName (case-insensitive, as AD
   compares them).
3. Nothing was written outside the managed OUs (``OU=B2BGuest`` and ``OU=B2BGuestArchive``): the domain
   outside them is compared, as Administrator, with a snapshot taken before the scenario. Every attribute of
   every object is compared, and also what ``*`` does not show: the whole security descriptor
   (nTSecurityDescriptor with owner, group, DACL and SACL, read with the SD flags control), the replication
   metadata of every attribute (replPropertyMetaData: a write to an attribute nobody can read back, a password
   reset for one, still bumps its version) and the operational whenChanged / uSNChanged / modifyTimeStamp.
   The DC changes some objects outside the OUs by itself (the service account's lastLogonTimestamp when it
   binds, the RID Set's rIDNextRID when an account is created in the OU), so only that DC bookkeeping is
   ignored, and whenChanged / uSNChanged / modifyTimeStamp may move only on an object whose bookkeeping moved.
4. No password or secret in the logs (every record of every logger at DEBUG) or in state (every property of
   every entity of the state table, the meta singletons included) or in a poison queue: the generated
   account passwords (recorded by wrapping ``shared.services.export.new_password``), the AD bind password,
   the Graph client secret, the webhook clientState and the storage account key. Each is also looked for in
   the forms a library may write it in: UTF-16LE (raw, and as ``repr(bytes)`` shows it), URL-encoded (either
   hex case, ``+`` or ``%20``), JSON-escaped, and base64 (every base64 run in the text is decoded, at each
   alignment and in both alphabets, and searched for the secret's UTF-8 and UTF-16LE bytes).

``watch()`` (the ``rstack`` fixture calls it) takes the snapshot and installs the recorders before the
scenario starts.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import re
import struct
import unicodedata
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import ldap3
import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableServiceClient
from azure.storage.queue import QueueClient
from ldap3.core.exceptions import LDAPException
from ldap3.protocol.microsoft import security_descriptor_control

from shared import bootstrap
from shared.core import ad_rules
from shared.core.ad_rules import format_sid, is_within, same_dn
from shared.core.domain import GuestStatus
from shared.services import export
from tests.plugins.samba import GuestsyncDC
from tests.plugins.stack import Stack

#: Attributes the DC maintains by itself on objects outside the OUs while guestsync works inside them.
DC_BOOKKEEPING = frozenset(a.lower() for a in (
    "lastLogon", "lastLogonTimestamp", "logonCount", "badPwdCount", "badPasswordTime",  # binds
    "rIDNextRID", "rIDAllocationPool", "rIDPreviousAllocationPool", "rIDAvailablePool", "rIDUsedPool",  # new SIDs
))
#: Operational attributes that any write bumps: they may move only where DC bookkeeping moved.
CHANGE_STAMPS = frozenset(a.lower() for a in ("whenChanged", "uSNChanged", "modifyTimeStamp"))
#: What the snapshot reads beyond ``*``: operational attributes and the replication metadata.
OPERATIONAL = ("modifyTimeStamp", "createTimeStamp", "replPropertyMetaData", "msDS-KeyVersionNumber")
#: OWNER | GROUP | DACL | SACL: the whole security descriptor (the SACL needs the DC admin's rights).
SD_FLAGS = 0x0F
#: MS-DRSR's default prefix table (5.16.4) for the OID arcs of the base schema: an ATTRTYP in replication
#: metadata is prefix index * 65536 + the OID's last arc (below 16384). Other arcs are shown as numbers.
_ATTRTYP_PREFIXES = {"2.5.4": 0, "2.5.6": 1, "1.2.840.113556.1.2": 2, "1.2.840.113556.1.3": 3,
                     "1.2.840.113556.1.4": 9, "1.2.840.113556.1.5": 10}
META = "meta:"  # prefix of the pseudo-attributes that hold one attribute's replication metadata
#: Longest readable error we accept, and what must never be in one.
MAX_ERROR_LENGTH = 2000
_NOT_READABLE = re.compile(r"Traceback \(most recent call last\)|\bFile \"/|object at 0x")

Snapshot = dict[str, dict[str, list[bytes]]]


@dataclass
class Watch:
    """What one scenario is checked against."""

    samba_dc: GuestsyncDC
    caplog: pytest.LogCaptureFixture
    outside: Snapshot
    passwords: list[str] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict)


_watches: dict[int, Watch] = {}


def attribute_names(conn: ldap3.Connection, base_dn: str) -> dict[int, str]:
    """ATTRTYP -> lDAPDisplayName for the schema's attributes (for readable replication metadata)."""
    schema = f"CN=Schema,CN=Configuration,{base_dn}"
    entries = conn.extend.standard.paged_search(schema, "(objectClass=attributeSchema)", ldap3.LEVEL,
                                                attributes=["attributeID", "lDAPDisplayName", "msDS-IntId"],
                                                paged_size=1000, generator=False)
    names: dict[int, str] = {}
    for entry in entries or []:
        raw = entry.get("raw_attributes") or {}
        if not raw.get("attributeID") or not raw.get("lDAPDisplayName"):
            continue
        name = bytes(raw["lDAPDisplayName"][0]).decode()
        parent, _, last = bytes(raw["attributeID"][0]).decode().rpartition(".")
        if parent in _ATTRTYP_PREFIXES and int(last) < 16384:
            names[_ATTRTYP_PREFIXES[parent] * 65536 + int(last)] = name
        if raw.get("msDS-IntId"):
            names[int(bytes(raw["msDS-IntId"][0])) & 0xFFFFFFFF] = name
    return names


def replication_metadata(blob: bytes, names: dict[int, str]) -> dict[str, list[bytes]]:
    """replPropertyMetaData (MS-DRSR replPropertyMetaDataBlob, version 1) as one pseudo-attribute per
    attribute: ``meta:<name>`` -> version, originating time, invocation id and USNs of its last write."""
    version, _, count, _ = struct.unpack_from("<IIII", blob)
    assert version == 1, f"replPropertyMetaData version {version}"
    out: dict[str, list[bytes]] = {}
    for index in range(count):
        attid, *_ = struct.unpack_from("<I", blob, 16 + 48 * index)
        name = names.get(attid, f"attid 0x{attid:x}").lower()
        out[META + name] = [blob[16 + 48 * index: 16 + 48 * (index + 1)]]
    return out


def snapshot_outside(conn: ldap3.Connection, base_dn: str, managed_ous: Iterable[str]) -> Snapshot:
    """Every object of the domain naming context outside the managed OUs, with all its attributes (raw), its
    whole security descriptor, operational attributes and per-attribute replication metadata."""
    ous = tuple(managed_ous)
    names = attribute_names(conn, base_dn)
    conn.search(base_dn, "(objectClass=*)", ldap3.SUBTREE, attributes=[ldap3.ALL_ATTRIBUTES, *OPERATIONAL],
                controls=security_descriptor_control(sdflags=SD_FLAGS))
    assert conn.result["description"] == "success", conn.result
    out: Snapshot = {}
    for entry in conn.response or []:
        if entry.get("type") != "searchResEntry":
            continue
        dn = str(entry["dn"])
        if any(is_within(dn, ou) for ou in ous):
            continue
        raw = dict(entry["raw_attributes"])
        assert raw.get("nTSecurityDescriptor"), f"{dn}: no security descriptor read (SD flags control?)"
        meta = raw.pop("replPropertyMetaData", None) or []
        attributes = {str(k).lower(): sorted(bytes(v) for v in values) for k, values in raw.items() if values}
        if meta:
            attributes.update(replication_metadata(bytes(meta[0]), names))
        out[dn.lower()] = attributes
    return out


def watch(stack: Stack, samba_dc: GuestsyncDC, caplog: pytest.LogCaptureFixture,
          monkeypatch: pytest.MonkeyPatch) -> Watch:
    """Start watching ``stack``: DEBUG logs captured, generated passwords recorded, the domain outside the
    managed OUs snapshotted."""
    caplog.set_level(logging.DEBUG)
    settings = bootstrap.services().settings
    assert settings.directory is not None and settings.storage.connection_string
    key = re.search(r"AccountKey=([^;]+)", settings.storage.connection_string)
    assert key is not None
    w = Watch(samba_dc, caplog, snapshot_outside(stack.admin, samba_dc.base_dn, (stack.guest_ou, stack.archive_ou)))
    w.secrets = {
        "the AD bind password": settings.directory.bind_password,
        "the Graph client secret": str(settings.graph.client_secret),
        "the webhook clientState": settings.webhook.client_states[0],
        "the storage account key": key.group(1),
    }
    original = ad_rules.new_password

    def recording_password(*args: Any, **kwargs: Any) -> str:
        value = original(*args, **kwargs)
        w.passwords.append(value)
        return value

    monkeypatch.setattr(export, "new_password", recording_password)
    _watches[id(stack)] = w
    return w


def unwatch(stack: Stack) -> None:
    _watches.pop(id(stack), None)


def watched(stack: Stack) -> Watch:
    w = _watches.get(id(stack))
    assert w is not None, "use the rstack fixture: it snapshots the domain before the scenario"
    return w


def admin(stack: Stack) -> ldap3.Connection:
    """``stack.admin``, bound again if the DC was restarted under it."""
    conn = stack.admin
    try:
        if not conn.closed and conn.search(watched(stack).samba_dc.base_dn, "(objectClass=domain)", ldap3.BASE):
            return conn
    except LDAPException:
        pass
    with contextlib.suppress(LDAPException):
        conn.unbind()
    stack.admin = watched(stack).samba_dc.admin_connection()
    return stack.admin


def _casefold(value: object) -> str:
    return unicodedata.normalize("NFC", str(value)).casefold()


def _domain_users(conn: ldap3.Connection, base_dn: str) -> list[dict[str, Any]]:
    # Every page: the session's DC holds more users than one page once the whole suite has run.
    entries = conn.extend.standard.paged_search(
        base_dn, "(objectClass=user)", ldap3.SUBTREE,
        attributes=["cn", "sAMAccountName", "userPrincipalName", "objectSid"], paged_size=500, generator=False)
    assert conn.result["description"] == "success", conn.result
    users = []
    for entry in entries or []:
        if entry.get("type") != "searchResEntry":
            continue
        raw = entry["raw_attributes"]

        def text(name: str, raw: dict[str, list[bytes]] = raw) -> str | None:
            values = raw.get(name) or []
            return bytes(values[0]).decode("utf-8") if values else None

        sid = raw.get("objectSid") or []
        users.append({"dn": str(entry["dn"]), "cn": text("cn"), "sam": text("sAMAccountName"),
                      "upn": text("userPrincipalName"), "sid": format_sid(bytes(sid[0])) if sid else None})
    return users


def check_accounts(stack: Stack, uids: Iterable[str], expected_errors: Mapping[str, str] | None = None
                   ) -> list[str]:
    """Invariants 1 and 2; returns the problems found (empty when all is well). ``expected_errors``: guest uid
    -> a text the guest's error message must contain; every other guest must end provisioned."""
    expected = {uid.lower(): text for uid, text in (expected_errors or {}).items()}
    uids = list(uids)
    unknown = sorted(set(expected) - {uid.lower() for uid in uids})
    assert not unknown, f"expected_errors names guests the scenario does not check: {unknown}"
    w = watched(stack)
    users = _domain_users(admin(stack), w.samba_dc.base_dn)
    problems: list[str] = []
    for uid in uids:
        record = stack.state.get(uid)
        if record is None:
            problems.append(f"{uid}: unknown to state (neither provisioned nor in error)")
            continue
        by_cn = [u for u in users if u["cn"] is not None and _casefold(u["cn"]) == uid.lower()]
        upn = record.entry.user_principal_name
        by_upn = [u for u in users if upn and u["upn"] is not None and _casefold(u["upn"]) == _casefold(upn)]
        wanted = expected.get(uid.lower())
        if record.status is not GuestStatus.ERROR and wanted is not None:
            problems.append(f"{uid}: the scenario expects an error containing {wanted!r}, but its status is "
                            f"{record.status.value} (error {record.error!r})")
            continue
        if record.status is GuestStatus.ERROR:
            error = record.error or ""
            if wanted is None:
                problems.append(f"{uid}: lost: in error, which the scenario does not expect: {error!r}")
            elif wanted not in error:
                problems.append(f"{uid}: in error, but not the expected one ({wanted!r}): {error!r}")
            if not error.strip() or len(error) > MAX_ERROR_LENGTH or _NOT_READABLE.search(error) or any(
                    unicodedata.category(c) == "Cc" for c in error):
                problems.append(f"{uid}: status error without a readable message: {error!r}")
            if len(by_cn) > 1:
                problems.append(f"{uid}: in error and {len(by_cn)} accounts named CN={uid}: {by_cn}")
            continue
        if record.status is not GuestStatus.PROVISIONED or record.exported_version != record.version:
            problems.append(f"{uid}: neither provisioned at its current version nor in error: status "
                            f"{record.status.value}, version {record.version}, exported {record.exported_version}, "
                            f"error {record.error!r}")
            continue
        found = {u["dn"].lower(): u for u in by_cn + by_upn}
        if len(found) != 1:
            problems.append(f"{uid}: {len(found)} AD accounts (by cn or userPrincipalName {upn!r}), expected 1: "
                            f"{sorted(found)}")
            continue
        (account,) = found.values()
        if account["sid"] != record.object_sid or not (record.dn and same_dn(record.dn, account["dn"])):
            problems.append(f"{uid}: state joins {record.dn} ({record.object_sid}) but the account is "
                            f"{account['dn']} ({account['sid']})")
        if not is_within(account["dn"], stack.guest_ou):
            problems.append(f"{uid}: its account {account['dn']} is not in {stack.guest_ou}")
    for key in ("cn", "sam", "upn"):
        counts = Counter(_casefold(u[key]) for u in users if u[key])
        for value, count in counts.items():
            if count > 1:
                dns = [u["dn"] for u in users if u[key] and _casefold(u[key]) == value]
                problems.append(f"duplicate {key} {value!r} in the domain: {dns}")
    return problems


def check_outside(stack: Stack) -> list[str]:
    """Invariant 3: the domain outside the managed OUs is as it was, but for the DC's own bookkeeping."""
    w = watched(stack)
    now = snapshot_outside(admin(stack), w.samba_dc.base_dn, (stack.guest_ou, stack.archive_ou))
    problems = [f"object created outside the managed OUs: {dn}" for dn in sorted(set(now) - set(w.outside))]
    problems += [f"object deleted or moved from outside the managed OUs: {dn}"
                 for dn in sorted(set(w.outside) - set(now))]
    for dn in sorted(set(now) & set(w.outside)):
        before, after = w.outside[dn], now[dn]
        moved = {name for name in set(before) | set(after) if before.get(name) != after.get(name)}
        bookkeeping = {name for name in moved if name.removeprefix(META) in DC_BOOKKEEPING}
        changed = sorted(name for name in moved - bookkeeping if name not in CHANGE_STAMPS or not bookkeeping)
        if changed:
            problems.append(f"{dn} was written outside the managed OUs: {', '.join(changed)}")
    return problems


def _state_texts() -> Iterable[tuple[str, str]]:
    settings = bootstrap.services().settings
    service = TableServiceClient.from_connection_string(str(settings.storage.connection_string))
    table = service.get_table_client(settings.state_table)
    try:
        for entity in table.list_entities():
            where = f"state entity {entity['PartitionKey']}/{entity['RowKey']}"
            for name, value in entity.items():
                yield f"{where} property {name}", str(value)
    finally:
        table.close()
        service.close()


def _poison_texts() -> Iterable[tuple[str, str]]:
    settings = bootstrap.services().settings
    for name in (settings.change_poison_queue, settings.export_poison_queue):
        client = QueueClient.from_connection_string(str(settings.storage.connection_string), name)
        try:
            for message in client.peek_messages(max_messages=32):
                content = str(message.content)
                with contextlib.suppress(ValueError, binascii.Error):
                    content += base64.b64decode(content, validate=True).decode("utf-8", "replace")
                yield f"poison queue {name}", content
        except ResourceNotFoundError:
            pass
        finally:
            client.close()


_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{8,}")


def _base64_decodings(text: str) -> Iterable[bytes]:
    """What every base64 run of ``text`` decodes to, from each of its first four characters (the run may begin
    with a character that belongs to the text around it), in the standard and the URL-safe alphabet."""
    for run in _BASE64_RUN.findall(text):
        for shift in range(4):
            chunk = run[shift:]
            chunk = chunk[:len(chunk) - len(chunk) % 4]
            for decode in (base64.b64decode, base64.urlsafe_b64decode):
                with contextlib.suppress(ValueError, binascii.Error):
                    yield decode(chunk)


def secret_forms(value: str) -> set[str]:
    """The textual forms of a secret that must not appear: as is, UTF-16LE, URL-encoded, JSON-escaped."""
    utf16 = value.encode("utf-16-le")
    forms = {value, utf16.decode("latin-1"), repr(utf16)[2:-1],
             json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
    for quoted in (urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value, safe="")):
        forms |= {quoted, re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quoted)}
    return forms


def leaked_in(text: str, value: str) -> str | None:
    """How ``value`` appears in ``text`` (the name of its form), or None."""
    for form in secret_forms(value):
        if form in text:
            return "as is" if form == value else f"encoded as {form!r}"
    needles = (value.encode("utf-8"), value.encode("utf-16-le"))
    for decoded in _base64_decodings(text):
        if any(needle in decoded for needle in needles):
            return "base64-encoded"
    return None


def check_secrets(stack: Stack) -> list[str]:
    """Invariant 4."""
    w = watched(stack)
    secrets = dict(w.secrets)
    secrets.update({f"generated password #{i + 1}": p for i, p in enumerate(w.passwords)})
    places: list[tuple[str, str]] = []
    for record in w.caplog.records:
        text = record.getMessage() + (record.exc_text or "") + (record.stack_info or "")
        places.append((f"a {record.levelname} record of logger {record.name}", text))
    places.append(("the captured log text", w.caplog.text))
    places += list(_state_texts())
    places += list(_poison_texts())
    problems = []
    for where, text in places:
        for name, value in secrets.items():
            how = leaked_in(text, value) if value else None
            if how:
                problems.append(f"{name} is in {where} ({how})")
    return problems


def assert_invariants(stack: Stack, uids: Iterable[str], *, expected_errors: Mapping[str, str] | None = None
                      ) -> None:
    """Check every invariant; fail with all the problems found. ``expected_errors``: the guests the scenario
    expects in error (uid -> a text of the expected message); any other guest in error is a lost guest."""
    uids = list(uids)
    problems = check_accounts(stack, uids, expected_errors) + check_outside(stack) + check_secrets(stack)
    assert not problems, f"{len(problems)} invariant violation(s):\n  " + "\n  ".join(problems)
