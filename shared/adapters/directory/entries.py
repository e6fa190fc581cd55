"""LDAP entries and DNs without I/O: the attributes read, entry decoding into ``AdAccount``, DN parsing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ldap3.core.exceptions import LDAPInvalidDnError
from ldap3.utils.dn import parse_dn

from shared.core.ad_rules import OWNERSHIP_ATTRIBUTE, format_sid, join_rdns, split_rdns
from shared.core.domain import AdAccount, ConfigurationError
from shared.core.rules import PERSISTENT_ATTRIBUTES

USER_OBJECT_CLASSES = ["top", "person", "organizationalPerson", "user"]
READ_ATTRIBUTES = [*PERSISTENT_ATTRIBUTES, "objectSid", "userAccountControl", OWNERSHIP_ATTRIBUTE, "whenCreated"]
PAGED_RESULTS_OID = "1.2.840.113556.1.4.319"
#: What deprovisioning operations act on: people only (a computer object is objectClass=user as well).
PERSON_FILTER = "(&(objectCategory=person)(objectClass=user))"


def _valid_dn(dn: str, setting: str) -> str:
    try:
        parse_dn(dn)
    except (LDAPInvalidDnError, ValueError, IndexError) as exc:
        raise ConfigurationError(
            f"setting {setting} is not a valid DN ({exc}); write it like OU=B2BGuest,DC=contoso,DC=com "
            "(no spaces after the commas)"
        ) from None
    return dn


def _split_dn(dn: str) -> tuple[str, str] | None:
    """(first RDN, parent DN) as written, escaping kept; None if ``dn`` does not parse or has no parent."""
    rdns = split_rdns(dn)
    if rdns is None or len(rdns) < 2:
        return None
    return join_rdns(rdns[:1]), join_rdns(rdns[1:])


def _raw(entry: Mapping[str, Any]) -> dict[str, list[bytes]]:
    raw = entry.get("raw_attributes") or {}
    return {str(k).lower(): list(v) for k, v in raw.items()}


def _text(raw: Mapping[str, list[bytes]], name: str) -> str | None:
    values = raw.get(name.lower())
    if not values:
        return None
    value = values[0]
    return value.decode("utf-8") if isinstance(value, bytes | bytearray) else str(value)


def _account(entry: Mapping[str, Any]) -> AdAccount:
    raw = _raw(entry)
    sid_values = raw.get("objectsid")
    uac = _text(raw, "userAccountControl")
    return AdAccount(
        dn=str(entry.get("dn", "")),
        object_sid=format_sid(bytes(sid_values[0])) if sid_values else None,
        sam_account_name=_text(raw, "sAMAccountName"),
        user_account_control=int(uac) if uac else None,
        attributes={name: _text(raw, name) for name in PERSISTENT_ATTRIBUTES},
        when_created=_text(raw, "whenCreated"),
    )
