"""LDAP entries and DNs without I/O: the attributes read, entry decoding into ``AdAccount``, DN parsing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ldap3.core.exceptions import LDAPInvalidDnError
from ldap3.utils.dn import parse_dn

from shared.core.ad_rules import OWNERSHIP_ATTRIBUTE, format_sid
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
    try:
        avas = parse_dn(dn)
    except (LDAPInvalidDnError, ValueError, IndexError):
        return None
    end = 0
    while end < len(avas) and avas[end][2] == "+":  # a multi-valued RDN (a+b=...) is one RDN
        end += 1
    if end + 1 >= len(avas):
        return None

    def join(part: list[tuple[str, str, str]]) -> str:
        text = "".join(f"{kind}={value}{separator}" for kind, value, separator in part)
        return text[: len(text) - len(part[-1][2])]  # without the separator after the last one

    return join(avas[: end + 1]), join(avas[end + 1 :])


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
