"""Why a connection failed, from the error's own words: DNS, refused, timeout, certificate or credentials.

``guestsync check`` and every CLI command turn a failure into one line with the fix that matches it, instead of
one fix for every failure (a refused port does not need a CA file, a certificate error does not need DNS)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Cause(StrEnum):
    DNS = "dns"
    REFUSED = "refused"
    TIMEOUT = "timeout"
    CERTIFICATE = "certificate"
    CREDENTIALS = "credentials"
    OTHER = "other"


#: The words each cause leaves in errors of the socket, ssl, urllib3/requests, aiohttp, httpx and ldap3 layers,
#: checked in this order (a TLS handshake that timed out is a timeout; a refused retry after DNS is DNS).
_PATTERNS: tuple[tuple[Cause, re.Pattern[str]], ...] = (
    (Cause.CERTIFICATE, re.compile(r"certificate verify failed|CERTIFICATE_VERIFY_FAILED|self[- ]signed certificate|"
                                   r"hostname mismatch|doesn't match|does not match|unable to get local issuer|"
                                   r"certificate has expired|SSLCertVerificationError|invalid server certificate",
                                   re.IGNORECASE)),
    (Cause.DNS, re.compile(r"Name or service not known|nodename nor servname|getaddrinfo failed|No address associated|"
                           r"Temporary failure in name resolution|NameResolutionError|Name does not resolve|"
                           r"invalid server address|\[Errno -[235]\]|\[Errno 11001\]", re.IGNORECASE)),
    (Cause.REFUSED, re.compile(r"Connection refused|ConnectionRefused|Errno 111\b|WinError 10061|actively refused",
                               re.IGNORECASE)),
    (Cause.TIMEOUT, re.compile(r"timed out|timeout|Errno 110\b|WinError 10060", re.IGNORECASE)),
    (Cause.CREDENTIALS, re.compile(r"invalidCredentials|AuthenticationFailed|Server failed to authenticate|"
                                   r"\b401\b|AADSTS\d+|invalid_client|unauthorized_client|"
                                   r"AuthorizationPermissionMismatch|AuthorizationFailure|\b403\b", re.IGNORECASE)),
)


@dataclass(frozen=True)
class Failure:
    cause: Cause
    text: str  # the error's own words on one line, shortened


def classify(exc: BaseException) -> Failure:
    """The cause of ``exc`` from its text and the texts of the errors it was raised from (its chain)."""
    texts, seen = [], set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts.append(f"{type(current).__name__}: {current}")
        current = current.__cause__ or current.__context__
    whole = " | ".join(texts)
    line = " ".join(str(exc).split()) or type(exc).__name__
    if len(line) > 300:
        line = line[:300] + "..."
    if isinstance(exc, TimeoutError):
        return Failure(Cause.TIMEOUT, line)
    for cause, pattern in _PATTERNS:
        if pattern.search(whole):
            return Failure(cause, line)
    return Failure(Cause.OTHER, line)
