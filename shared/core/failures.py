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
                           r"invalid server address|Domain name not found|DNSError|\[Errno -[235]\]|\[Errno 11001\]",
                           re.IGNORECASE)),
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


#: The fix for each cause, per system: what the admin changes (a setting, DNS, a firewall, a CA file).
FIXES: dict[str, dict[Cause, str]] = {
    "graph": {
        Cause.DNS: "the host name does not resolve: check GRAPH_ENDPOINT and GRAPH_AUTHORITY_HOST (or GRAPH_CLOUD) "
                   "and DNS from here",
        Cause.REFUSED: "nothing accepts connections there: check GRAPH_ENDPOINT and GRAPH_AUTHORITY_HOST (host and "
                       "port) and the outbound proxy or firewall",
        Cause.TIMEOUT: "it accepted no request or gave no answer in time: check outbound HTTPS (443) from here, "
                       "the firewall and any proxy in between (HTTPS_PROXY)",
        Cause.CERTIFICATE: "its TLS certificate is not trusted here: set GRAPH_CA_FILE to the CA of the "
                           "TLS-inspecting proxy (or correct GRAPH_ENDPOINT / GRAPH_AUTHORITY_HOST)",
        Cause.CREDENTIALS: "check GRAPH_AUTH and its credential settings (GRAPH_CLIENT_ID, GRAPH_CLIENT_SECRET or "
                           "GRAPH_CLIENT_CERTIFICATE_PATH, GRAPH_TENANT_ID)",
        Cause.OTHER: "check GRAPH_ENDPOINT and outbound HTTPS to it (GRAPH_CA_FILE behind a TLS-inspecting proxy)",
    },
    "storage": {
        Cause.DNS: "the storage host name does not resolve: check the account name or endpoints in "
                   "AzureWebJobsStorage (or AzureWebJobsStorage__queueServiceUri and __tableServiceUri) and DNS "
                   "from here (a private endpoint needs its private DNS zone)",
        Cause.REFUSED: "the connection was refused: check the endpoint in AzureWebJobsStorage (or "
                       "AzureWebJobsStorage__queueServiceUri and __tableServiceUri) and that the storage account "
                       "(locally: Azurite) is running and accepts connections from this network",
        Cause.TIMEOUT: "no answer in time: check outbound HTTPS (443) from here to the storage account, its "
                       "firewall (public network access, private endpoint) and any proxy",
        Cause.CERTIFICATE: "its TLS certificate is not trusted here: trust the CA that signs it (a TLS-inspecting "
                           "proxy's CA: REQUESTS_CA_BUNDLE), or correct the endpoint in AzureWebJobsStorage",
        Cause.CREDENTIALS: "it refused our credentials: check the account key in AzureWebJobsStorage, or give the "
                           "identity (AzureWebJobsStorage__clientId) the Storage Queue Data Contributor and Storage "
                           "Table Data Contributor roles",
        Cause.OTHER: "check AzureWebJobsStorage and the storage account's health; run again with -v for the details",
    },
    "ad": {
        Cause.DNS: "the DC's name does not resolve: check AD_SERVER and DNS from here (for a domain name, its "
                   "_ldap._tcp SRV records)",
        Cause.REFUSED: "nothing accepts LDAPS there: check AD_SERVER (host and port 636), that the DC has a "
                       "certificate for LDAPS, and the firewall",
        Cause.TIMEOUT: "the DC accepted no connection or gave no answer in time: check the firewall (TCP 636 from "
                       "here to the DC), that AD_SERVER names a running DC, and AD_CONNECT_TIMEOUT",
        Cause.CERTIFICATE: "the DC's certificate is not trusted: set AD_CA_FILE to the CA that issued it and use a "
                           "name from the certificate in AD_SERVER",
        Cause.CREDENTIALS: "check AD_BIND_USER and AD_BIND_PASSWORD (or AD_KEYTAB for Kerberos)",
        Cause.OTHER: "check AD_SERVER, AD_CA_FILE, DNS and TCP 636 from here",
    },
}


def fix_for(exc: BaseException, system: str) -> tuple[Failure, str]:
    """The failure and its fix for ``system`` (graph, storage, ad)."""
    failure = classify(exc)
    return failure, FIXES[system][failure.cause]
