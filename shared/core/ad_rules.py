"""Active Directory rules as pure functions: schema limits, DN containment, filter escaping, passwords, SIDs.

The limits are those of Windows AD (the production target), not Samba's: Samba accepts values that a
Windows DC refuses (a 30-character sAMAccountName, for one), so we check them ourselves before writing,
and a guest whose Graph data cannot be exported gets a readable error instead of a half-created account.
Lengths are counted in UTF-16 code units, as AD stores and limits them.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import secrets
import string
import struct
from collections.abc import Collection, Iterable, Mapping

from ldap3.core.exceptions import LDAPInvalidDnError
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn, parse_dn

from shared.core.domain import GUID_RE

#: rangeUpper of the attributes we write (Windows AD schema).
MAX_LENGTHS: dict[str, int] = {
    "sAMAccountName": 20,  # the SAM limit for user logon names (pre-Windows 2000)
    "userPrincipalName": 1024,
    "displayName": 256,
    "givenName": 64,
    "sn": 64,
    "mail": 256,
    "cn": 64,
}
#: Attributes that only label a person: safe to shorten (with a warning) instead of failing the export.
COSMETIC_ATTRIBUTES: tuple[str, ...] = ("displayName", "givenName", "sn")
#: Characters Windows refuses in a sAMAccountName.
SAM_FORBIDDEN_CHARS = frozenset('"/\\[]:;|=,+*?<>@')
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
#: Half of a UTF-16 surrogate pair on its own: not Unicode text, cannot be sent over LDAP (UTF-8).
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
#: Delimiters AD uses to split displayName/sAMAccountName into tokens for its password complexity check.
_PASSWORD_TOKEN_DELIMITERS = re.compile(r"[,.\-_#\t ]+")
_PASSWORD_SYMBOLS = "!#$%&()*+-./:;<=>?@[]^_{|}~"  # noqa: S105 (an alphabet)
_PASSWORD_ALPHABET = string.ascii_letters + string.digits + _PASSWORD_SYMBOLS
_HEX_PAIR = re.compile(r"[0-9a-fA-F]{2}")
#: What Entra puts between the invited address and the tenant's suffix in a guest's UPN.
GUEST_UPN_MARKER = "#EXT#"
#: A DNS name: labels of letters, digits and inner hyphens, dot-separated (a UPN suffix or AD domain name).
_DNS_NAME = re.compile(r"(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def utf16_length(value: str) -> int:
    """Length as AD counts it: UTF-16 code units (a character outside the BMP counts twice; an unpaired
    surrogate, which ``validate_export`` refuses, once)."""
    return len(value.encode("utf-16-le", "surrogatepass")) // 2


def _truncate_utf16(value: str, limit: int) -> str:
    """The longest prefix of ``value`` within ``limit`` UTF-16 code units (never splits a surrogate pair)."""
    out: list[str] = []
    used = 0
    for char in value:
        size = 2 if ord(char) > 0xFFFF else 1
        if used + size > limit:
            break
        out.append(char)
        used += size
    return "".join(out)


def validate_export(attributes: Mapping[str, str | None]) -> list[str]:
    """Problems that would make a Windows DC refuse (or mangle) these values; empty when all is well.

    Each message names the attribute so an operator can fix the guest in Entra.
    """
    problems: list[str] = []
    for name, value in attributes.items():
        if value is None or value == "":
            continue
        if _CONTROL_CHARS.search(value):
            problems.append(f"{name} contains a control character, which AD does not accept")
        if _LONE_SURROGATE.search(value):
            problems.append(f"{name} contains half of a UTF-16 surrogate pair (not valid Unicode), which cannot "
                            "be written to AD")
        limit = MAX_LENGTHS.get(name)
        if limit is not None and utf16_length(value) > limit:
            problems.append(f"{name} is {utf16_length(value)} characters long; AD allows at most {limit}")
    sam = attributes.get("sAMAccountName")
    if sam:
        bad = sorted({c for c in sam if c in SAM_FORBIDDEN_CHARS})
        if bad:
            problems.append(f"sAMAccountName {sam!r} contains characters AD forbids: {' '.join(bad)}")
        if sam.strip(". ") == "":
            problems.append(f"sAMAccountName {sam!r} consists only of dots and spaces")
    upn = attributes.get("userPrincipalName")
    if upn:
        if upn.count("@") != 1:
            problems.append(f"userPrincipalName {upn!r} must contain exactly one '@'")
        elif upn.startswith("@") or upn.endswith("@"):
            problems.append(f"userPrincipalName {upn!r} needs a name before and a suffix after the '@'")
    return problems


def normalise_dns_name(name: str) -> str | None:
    """``name`` as AD and Entra compare DNS names (lower case, no trailing dot), or None if it is not one."""
    folded = name.strip().lower().rstrip(".")
    return folded if _DNS_NAME.fullmatch(folded) else None


def guest_upn_problem(upn: str | None, allowed_suffixes: Collection[str]) -> str | None:
    """Why ``upn`` is not a UPN of the kind Entra gives B2B guests (``<something>#EXT#@<suffix>``, the suffix
    one of ``allowed_suffixes``), or None when it is one. Pure.

    The shadow account's UPN is what App Proxy asks KCD tickets for: a guest whose Entra UPN names an on-premises
    account (``Administrator@contoso.com``, or ``p@<domain>``, the implicit UPN of sAMAccountName ``p``) must
    never get an account, nor be mistaken for that account. Entra writes every guest UPN with the ``#EXT#``
    marker and the tenant's initial domain; an admin may move guests to a verified custom domain, which is why
    more suffixes can be allowed (GUESTSYNC_UPN_SUFFIXES). Suffixes compare case-insensitively and exactly (a
    subdomain of an allowed suffix is not allowed).
    """
    if not upn:
        return "the guest has no userPrincipalName (Entra gives every guest one ending in #EXT#@<tenant domain>)"
    if upn.count("@") != 1:
        return f"userPrincipalName {upn!r} is not of the kind Entra gives guests: it must contain exactly one '@'"
    local, suffix = upn.split("@")
    marker = len(GUEST_UPN_MARKER)
    if local[-marker:].upper() != GUEST_UPN_MARKER or len(local) <= marker:
        return (f"userPrincipalName {upn!r} is not of the kind Entra gives guests (<something>{GUEST_UPN_MARKER}@"
                "<suffix>); it could name an on-premises account, so no account is made for it")
    allowed = sorted({n for n in (normalise_dns_name(a) for a in allowed_suffixes) if n})
    if suffix.lower() not in allowed:
        listed = ", ".join(allowed) if allowed else (
            "none: the tenant's initial domain is not known yet and GUESTSYNC_UPN_SUFFIXES is empty")
        return (f"userPrincipalName {upn!r} has the suffix {suffix!r}, which is not allowed for guests (allowed: "
                f"{listed}; add more with GUESTSYNC_UPN_SUFFIXES)")
    return None


def fit_cosmetic(attributes: Mapping[str, str | None]) -> tuple[dict[str, str | None], list[str]]:
    """Shorten the cosmetic attributes to their AD limits; return the values and one warning per cut.

    Identity-bearing attributes (sAMAccountName, userPrincipalName, mail) are never touched: a shortened
    logon name or address would be a different identity, so ``validate_export`` reports them instead.
    """
    fitted = dict(attributes)
    warnings: list[str] = []
    for name in COSMETIC_ATTRIBUTES:
        value = fitted.get(name)
        limit = MAX_LENGTHS[name]
        if value is not None and utf16_length(value) > limit:
            fitted[name] = _truncate_utf16(value, limit)
            warnings.append(f"{name} was shortened from {utf16_length(value)} to {limit} characters (AD limit)")
    return fitted, warnings


def guest_dn(uid: str, guest_ou: str) -> str:
    """``CN=<uid>,<guest OU>``; the uid must be a GUID so it can never inject an RDN."""
    if not GUID_RE.fullmatch(uid):  # fullmatch: the pattern's ``$`` would accept a trailing newline
        raise ValueError(f"guest id {uid!r} is not a GUID; refusing to build a DN from it")
    return f"CN={escape_rdn(uid)},{guest_ou}"


def _unescape_dn_value(value: str) -> str:
    """The value an escaped RDN value stands for (``\\,`` and ``\\2C`` both mean ``,``)."""
    data = bytearray()
    i = 0
    while i < len(value):
        char = value[i]
        if char == "\\" and i + 1 < len(value):
            pair = value[i + 1 : i + 3]
            if _HEX_PAIR.fullmatch(pair):
                data.append(int(pair, 16))
                i += 3
                continue
            data.extend(value[i + 1].encode("utf-8"))
            i += 2
            continue
        data.extend(char.encode("utf-8"))
        i += 1
    return data.decode("utf-8", errors="replace")


#: One attribute-value assertion of a DN as ldap3's parse_dn returns it: (type, value as written, separator after).
Ava = tuple[str, str, str]


def split_rdns(dn: str) -> list[list[Ava]] | None:
    """The DN's RDNs, left to right, each the AVAs as written (a multi-valued ``a=1+b=2`` RDN is one); None if
    it does not parse. The one DN splitter: comparisons normalise it (``_rdns``), moves rejoin it."""
    try:
        avas = parse_dn(dn)
    except (LDAPInvalidDnError, ValueError, IndexError):
        return None
    rdns: list[list[Ava]] = []
    current: list[Ava] = []
    for ava in avas:
        current.append(ava)
        if ava[2] != "+":
            rdns.append(current)
            current = []
    if current:
        rdns.append(current)
    return rdns


def join_rdns(rdns: list[list[Ava]]) -> str:
    """The DN text of ``split_rdns`` parts, as written (escaping kept)."""
    avas = [ava for rdn in rdns for ava in rdn]
    text = "".join(f"{kind}={value}{separator}" for kind, value, separator in avas)
    return text[: len(text) - len(avas[-1][2])] if avas else ""  # without the separator after the last one


@functools.lru_cache(maxsize=4096)
def _rdns(dn: str) -> tuple[frozenset[tuple[str, str]], ...] | None:
    """The DN as its RDNs (each a set of case-folded type/value pairs); None if it does not parse. Cached: every
    write checks its DN against the managed OUs, and parsing a DN costs more than the rest of that check."""
    rdns = split_rdns(dn)
    if rdns is None:
        return None
    return tuple(frozenset((kind.casefold(), _unescape_dn_value(value).casefold()) for kind, value, _ in rdn)
                 for rdn in rdns)


def is_within(dn: str, ou_dn: str) -> bool:
    """True if ``dn`` is strictly below ``ou_dn`` (the OU itself is not within itself).

    Compares parsed, unescaped RDNs, so an escaped comma inside a CN cannot fake an OU boundary and
    ``OU=B2BGuestEvil`` is not ``OU=B2BGuest``. A DN that does not parse is never within anything.
    """
    child = _rdns(dn)
    parent = _rdns(ou_dn)
    if not child or not parent or len(child) <= len(parent):
        return False
    return child[len(child) - len(parent) :] == parent


def same_dn(a: str, b: str) -> bool:
    """DN equality as AD sees it (case-insensitive, escaping-insensitive)."""
    ra, rb = _rdns(a), _rdns(b)
    return ra is not None and ra == rb


def _password_tokens(avoid: Iterable[str]) -> list[str]:
    tokens: list[str] = []
    for text in avoid:
        if not text:
            continue
        if len(text) >= 3:
            tokens.append(text.casefold())
        tokens.extend(t.casefold() for t in _PASSWORD_TOKEN_DELIMITERS.split(text) if len(t) >= 3)
    return tokens


def new_password(length: int = 24, avoid: Iterable[str] = ()) -> str:
    """A random password that passes AD complexity: upper, lower, digit and symbol, and no 3+-character
    token of the account's sAMAccountName/displayName (pass them as ``avoid``), which AD would refuse."""
    if length < 8:
        raise ValueError("a password shorter than 8 characters would not pass the AD default policy")
    tokens = _password_tokens(avoid)
    classes = (string.ascii_uppercase, string.ascii_lowercase, string.digits, _PASSWORD_SYMBOLS)
    while True:
        password = "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(length))
        if not all(any(c in cls for c in password) for cls in classes):
            continue
        folded = password.casefold()
        if any(token in folded for token in tokens):
            continue
        return password


def format_sid(raw: bytes) -> str:
    """Binary objectSid -> ``S-1-5-21-...`` (the form stored in state and shown to operators)."""
    if len(raw) < 8:
        raise ValueError("a SID has at least 8 bytes")
    revision, count = raw[0], raw[1]
    if len(raw) != 8 + 4 * count:
        raise ValueError(f"SID of {len(raw)} bytes does not match its {count} sub-authorities")
    authority = int.from_bytes(raw[2:8], "big")
    subs = struct.unpack(f"<{count}I", raw[8:])
    return "-".join(["S", str(revision), str(authority), *(str(s) for s in subs)])


def parse_sid(sid: str) -> bytes:
    """``S-1-5-21-...`` -> binary objectSid (inverse of ``format_sid``)."""
    parts = sid.strip().split("-")
    if len(parts) < 3 or parts[0].upper() != "S" or not all(p.isdigit() for p in parts[1:]):
        raise ValueError(f"{sid!r} is not a SID (S-1-5-21-...)")
    revision, authority, subs = int(parts[1]), int(parts[2]), [int(p) for p in parts[3:]]
    if revision > 0xFF or authority >= 1 << 48 or len(subs) > 15 or any(s > 0xFFFFFFFF for s in subs):
        raise ValueError(f"{sid!r} is not a SID (a component is out of range)")
    return bytes([revision, len(subs)]) + authority.to_bytes(6, "big") + struct.pack(f"<{len(subs)}I", *subs)


def sid_filter_value(sid: str) -> str:
    """The binary SID escaped for an LDAP filter: ``(objectSid=<this>)``."""
    return "".join(f"\\{b:02x}" for b in parse_sid(sid))


def escape_filter_value(value: str) -> str:
    """Escape ``* ( ) \\ NUL`` so that a value from Graph can only ever be a value in a filter."""
    return str(escape_filter_chars(value))


# --- ownership ----------------------------------------------------------------------------------------------
#: Where guestsync's ownership mark lives. adminDescription is single-valued, on every user object in Windows AD
#: and Samba, unused by Windows itself, and Entra Connect's default sync rules skip users whose adminDescription
#: starts with ``User_``: the mark also keeps a shadow account out of Entra Connect if the OU filter is ever lost.
OWNERSHIP_ATTRIBUTE = "adminDescription"
OWNERSHIP_PREFIX = "User_guestsync:v1:"


def ownership_mark(key: str, uid: str) -> str:
    """The mark written on the account of guest ``uid`` at creation (or adoption): an HMAC-SHA256 of the uid under
    the ownership key (GUESTSYNC_OWNERSHIP_KEY). Whoever can create objects in the OU can write adminDescription
    on a planted object, but cannot compute the mark without the key; copying the mark of a deleted account onto a
    look-alike is caught by the objectSid join, which is never re-linked."""
    digest = hmac.new(key.encode("utf-8"), f"guestsync-owner|{uid.lower()}".encode(), hashlib.sha256).digest()
    return OWNERSHIP_PREFIX + base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def carries_mark(keys: Iterable[str], uid: str, value: str | None) -> bool:
    """Whether ``value`` is the ownership mark of ``uid`` under any of ``keys`` (current, then previous); constant
    time per key."""
    if not value or not value.startswith(OWNERSHIP_PREFIX):
        return False
    given = value.encode("utf-8")
    return any(hmac.compare_digest(given, ownership_mark(key, uid).encode("utf-8")) for key in keys)


def uid_from_dn(dn: str) -> str | None:
    """The guest id in ``CN=<uid>,...`` (lower case), or None when the first RDN is not a CN holding a GUID."""
    avas = _rdns(dn)
    if not avas:
        return None
    first = dict(avas[0])
    value = first.get("cn")
    return value.lower() if value is not None and len(avas[0]) == 1 and GUID_RE.fullmatch(value) else None
