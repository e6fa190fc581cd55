"""On-premises Active Directory adapter: guest shadow accounts over LDAPS (ldap3), nothing else.

Design points:

* LDAPS only, with certificate validation (unless explicitly turned off): the initial password travels
  in the add request.
* Every write is checked against the managed OU(s) *before* anything is sent, so a bug upstream (or a
  forged DN) cannot make us touch an object elsewhere, even if the service account had the rights.
* Windows AD enforces sAMAccountName uniqueness domain-wide, and UPN uniqueness (2012 R2+); we look for
  clashes ourselves first, so the error names the other account, and map the DC's answer as well.
* LDAP results become the exceptions below; ``str()`` of each says in plain words what failed and never
  contains a password.
* One connection per instance, guarded by a lock (ldap3's sync strategy is not thread-safe); a dropped
  connection is re-opened once per operation. ``DirectoryPool`` lends instances to one thread at a time, so
  exports running in parallel each have a connection of their own instead of queueing on one.
* Lifecycle (disable and archive, restore, delete) only ever moves an account between the guest OU and
  the archive OU, and each operation is idempotent: a retry after a lost answer finds the work done.
  Disabling comes before the move out, enabling after the move back, so a half-done step leaves the
  account disabled, never enabled in the wrong place.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, TypeVar

import ldap3
from ldap3.core.exceptions import (
    LDAPCertificateError,
    LDAPCommunicationError,
    LDAPException,
    LDAPInvalidDnError,
    LDAPResponseTimeoutError,
    LDAPSSLConfigurationError,
)
from ldap3.utils.dn import parse_dn
from ldap3.utils.log import PROTOCOL, log_enabled

from shared.ad_rules import (
    OWNERSHIP_ATTRIBUTE,
    carries_mark,
    escape_filter_value,
    format_sid,
    guest_dn,
    is_within,
    new_password,
    ownership_mark,
    same_dn,
    sid_filter_value,
    uid_from_dn,
    validate_export,
)
from shared.adapters.dc_locator import DcLocator, DcLocatorError
from shared.domain import (
    GUEST_USER_ACCOUNT_CONTROL,
    UAC_ACCOUNTDISABLE,
    AdAccount,
    ConfigurationError,
    GuestsyncError,
)
from shared.rules import PERSISTENT_ATTRIBUTES
from shared.settings import DirectorySettings, DomainController, parse_ad_server

log = logging.getLogger("guestsync.directory")
T = TypeVar("T")

USER_OBJECT_CLASSES = ["top", "person", "organizationalPerson", "user"]
READ_ATTRIBUTES = [*PERSISTENT_ATTRIBUTES, "objectSid", "userAccountControl", OWNERSHIP_ATTRIBUTE, "whenCreated"]
PAGED_RESULTS_OID = "1.2.840.113556.1.4.319"
#: What lifecycle operations act on: people only (a computer object is objectClass=user as well).
PERSON_FILTER = "(&(objectCategory=person)(objectClass=user))"
#: Windows error codes in the diagnostic message that identify the cause.
_WIN_PASSWORD_RESTRICTION = "0000052d"  # noqa: S105 (ERROR_PASSWORD_RESTRICTION, an error code)
_WIN_USER_EXISTS = "00000524"  # ERROR_USER_EXISTS (duplicate sAMAccountName on Windows)
_UNAVAILABLE_RESULTS = frozenset({"busy", "unavailable", "timeLimitExceeded", "adminLimitExceeded", "other"})
#: The probe account of ``guestsync check``: CN=guestsync-probe-<12 hex> with this description, so that a
#: probe left behind by a crashed run is recognised (both must match) and removed by the next check.
PROBE_PREFIX = "guestsync-probe-"
PROBE_DESCRIPTION = "guestsync check probe account (created and deleted by guestsync check; safe to delete)"
_PROBE_NAME = re.compile(r"guestsync-probe-[0-9a-f]{12}")


#: The Global Catalog over TLS (LDAPS to the GC): the whole forest, with the attributes uniqueness needs.
GLOBAL_CATALOG_TLS_PORT = 3269


@dataclass(frozen=True)
class ForestDomain:
    dns_name: str  # lower case, e.g. contoso.com
    naming_context: str  # DC=contoso,DC=com


@dataclass(frozen=True)
class Forest:
    """What name uniqueness needs to know about the forest (read from CN=Partitions)."""

    own: ForestDomain  # the domain of the guest OU
    domains: tuple[ForestDomain, ...]
    upn_suffixes: frozenset[str]  # extra UPN suffixes of the forest, lower case
    global_catalog: bool  # whether the DC we talk to is a Global Catalog

    @property
    def names(self) -> frozenset[str]:
        """Every suffix an implicit or explicit UPN of this forest can end in."""
        return frozenset({d.dns_name for d in self.domains} | self.upn_suffixes)

    def domain_of(self, dn: str) -> ForestDomain | None:
        """The domain whose naming context holds ``dn`` (the deepest one, for child domains)."""
        holders = [d for d in self.domains if is_within(dn, d.naming_context)]
        return max(holders, key=lambda d: len(d.naming_context), default=None)


class DirectoryError(GuestsyncError):
    """AD refused or failed an operation; the message says what and why."""


class AccountExistsError(DirectoryError):
    """The object CN=<uid> already exists (another worker created it: the caller adopts it)."""


class AccountNotFoundError(DirectoryError):
    """The object to update is gone (deleted in AD meanwhile)."""


class ConstraintError(DirectoryError):
    """AD refused the values (duplicate name, password policy, schema limit): a person must fix the data."""


class DirectoryUnavailableError(DirectoryError):
    """The DC cannot be reached (refused, TLS failure, timeout): transient, the caller retries."""


class AccessDeniedError(DirectoryError):
    """The service account lacks the rights (insufficientAccessRights): the delegation must be fixed."""


class InvalidCredentialsError(DirectoryError):
    """The DC refused the bind of the service account (wrong password, disabled or locked account)."""


class OutsideManagedOuError(DirectoryError):
    """A write was asked for a DN outside the managed OU(s); refused without contacting AD."""


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


class Directory:
    """Guest shadow accounts in the guest OU (and, if given, the archive OU) of one AD domain."""

    def __init__(self, settings: DirectorySettings, *, archive_ou: str | None = None,
                 locator: DcLocator | None = None) -> None:
        self._settings = settings
        if not settings.ownership_keys:
            raise ConfigurationError("setting GUESTSYNC_OWNERSHIP_KEY is required where guestsync writes to AD: it "
                                     "marks the accounts guestsync creates, so that a planted object is never "
                                     "taken for one")
        self._keys = settings.ownership_keys
        self.guest_ou = _valid_dn(settings.guest_ou, "AD_GUEST_OU")
        self.archive_ou = _valid_dn(archive_ou, "AD_ARCHIVE_OU") if archive_ou else None
        if self.archive_ou and (same_dn(self.archive_ou, self.guest_ou) or is_within(self.archive_ou, self.guest_ou)
                                or is_within(self.guest_ou, self.archive_ou)):
            raise ConfigurationError(
                f"setting AD_ARCHIVE_OU ({self.archive_ou}) must be an OU of its own, neither AD_GUEST_OU "
                f"({self.guest_ou}) nor inside it or around it: archiving moves accounts between the two"
            )
        self.managed_ous: tuple[str, ...] = (self.guest_ou,) + ((self.archive_ou,) if self.archive_ou else ())
        self._locator = locator or DcLocator(parse_ad_server(settings.server))
        self._dc: DomainController | None = None  # the DC of this instance's connection(s), once one was opened
        self._sticky = False  # the current operation sequence has used self._dc: a reconnect must not leave it
        if settings.bind_method == "kerberos":
            _require_kerberos_library()
        self._ccache = f"MEMORY:guestsync-{secrets.token_hex(8)}"  # this instance's tickets from AD_KEYTAB
        try:
            self._tls = ldap3.Tls(
                validate=ssl.CERT_REQUIRED if settings.validate_certificate else ssl.CERT_NONE,
                ca_certs_file=settings.ca_file,
                version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except LDAPSSLConfigurationError as exc:
            raise ConfigurationError(f"setting AD_CA_FILE: {settings.ca_file!r} cannot be used ({exc})") from None
        if not settings.validate_certificate:
            log.warning("certificate validation is OFF for %s (AD_VALIDATE_CERTIFICATE=false)", settings.server)
        self._lock = threading.RLock()
        self._conn: ldap3.Connection | None = None
        self._naming: tuple[str, str] | None = None  # (defaultNamingContext, configurationNamingContext)
        self._netbios: str | None = None
        self._forest_info: Forest | None = None
        self._gc_conn: ldap3.Connection | None = None  # the Global Catalog, for forest-wide uniqueness checks

    # --- connection ---------------------------------------------------------------------------------------
    @property
    def _where(self) -> str:
        return self._dc.url if self._dc is not None else self._locator.description

    @property
    def domain_controller(self) -> str | None:
        """The URL of the DC this instance is connected to (or last was), None before its first connection."""
        return self._dc.url if self._dc is not None else None

    def end_sequence(self) -> None:
        """The caller's operation sequence (one export) is over: the next connection may go to another DC.
        ``DirectoryPool`` calls it when an instance comes back."""
        with self._lock:
            self._sticky = False

    def _open(self) -> ldap3.Connection:
        """Open and bind the main connection, choosing the DC (failover happens here and only here).

        Within one operation sequence (an export: uniqueness check, add, read-back; see ``end_sequence``) every
        call goes to one DC: a DC that has not replicated yet could answer "no such account" to the read-back of
        an add made on another, or take a retried add for a new one (two objects, one renamed by replication).
        So once the sequence has used a DC, a lost connection is re-opened to that DC only; if it cannot be,
        DirectoryUnavailableError tells the caller, who retries the whole export later (on another DC, since this
        one is then marked down). Before that, i.e. when the very first call of a sequence finds the connection
        dead (an idle pooled connection whose DC went away), any DC is fine: nothing was done yet.
        """
        previous = self._dc
        if self._sticky and previous is not None:
            try:
                return self._connect(previous)
            except DirectoryUnavailableError as exc:
                self._locator.mark_down(previous, str(exc))
                self._dc, self._sticky = None, False
                raise DirectoryUnavailableError(
                    f"{exc} (the operation was under way on this DC: not continued on another one; a retry will "
                    "pick another DC)") from None
        try:
            candidates = self._locator.candidates()
        except DcLocatorError as exc:
            raise DirectoryUnavailableError(f"cannot find a domain controller (setting AD_SERVER): {exc}") from None
        failures: list[str] = []
        for dc in candidates:
            try:
                conn = self._connect(dc)
            except DirectoryUnavailableError as exc:
                self._locator.mark_down(dc, str(exc))
                failures.append(str(exc))
                continue
            self._locator.mark_up(dc)
            if dc != previous:
                self._forest_info = None  # whether the DC is a Global Catalog belongs to the DC
                if failures or previous is not None:
                    log.warning("connected to domain controller %s%s", dc.url,
                                f" ({len(failures)} other(s) unreachable)" if failures else "")
            self._dc = dc
            return conn
        if len(failures) == 1:
            raise DirectoryUnavailableError(failures[0])
        raise DirectoryUnavailableError(f"no domain controller of AD_SERVER could be reached: {'; '.join(failures)}")

    def _connect(self, dc: DomainController, port: int | None = None) -> ldap3.Connection:
        """Open and bind a new connection (a fresh Server each time: ldap3 remembers failed addresses) to the
        DC's LDAPS port, or to ``port`` on the same DC (the Global Catalog). Every way of not reaching the DC
        (refused, unreachable, name not resolved, TLS failure, timeout, KDC unreachable) is
        DirectoryUnavailableError."""
        s = self._settings
        where = f"ldaps://{dc.host}:{port or dc.port}"
        server = ldap3.Server(
            dc.host, port=port or dc.port, use_ssl=True, tls=self._tls, get_info=ldap3.NONE,
            connect_timeout=s.connect_timeout,
        )
        credentials: dict[str, Any]
        if s.bind_method == "kerberos":
            # SASL GSSAPI: the service ticket is for ldap/<dc.host>, the name the certificate is checked against.
            credentials = {"authentication": ldap3.SASL, "sasl_mechanism": ldap3.KERBEROS,
                           "user": s.bind_user or None}
            if s.keytab:
                credentials["cred_store"] = {"client_keytab": s.keytab, "ccache": self._ccache}
        else:
            credentials = {"authentication": ldap3.SIMPLE, "user": s.bind_user, "password": s.bind_password}
        conn = ldap3.Connection(
            server,
            auto_bind=False,
            raise_exceptions=False,
            read_only=False,
            receive_timeout=int(max(s.connect_timeout * 3, 10)),  # ldap3 packs it as a C long
            **credentials,
        )
        try:
            conn.open(read_server_info=False)
            bound = conn.bind(read_server_info=False)
        except (LDAPException, OSError) as exc:
            _close_quietly(conn)
            raise DirectoryUnavailableError(self._describe_connect_error(exc, dc, where)) from None
        except Exception as exc:  # the Kerberos library's errors (gssapi.exceptions.GSSError, winkerberos.GSSError)
            _close_quietly(conn)
            if s.bind_method != "kerberos":
                raise
            raise self._kerberos_error(exc, dc, where) from None
        if not bound:
            result = conn.result or {}
            _close_quietly(conn)
            description = str(result.get("description", "no answer"))
            if description == "invalidCredentials":
                # AD's message carries the reason code (data 52e bad password, 533 disabled, 775 locked out...)
                said = str(result.get("message", "")).strip()
                if s.bind_password:
                    said = said.replace(s.bind_password, "***")
                check = ("AD_BIND_USER and AD_KEYTAB" if s.bind_method == "kerberos"
                         else "AD_BIND_USER and AD_BIND_PASSWORD")
                raise InvalidCredentialsError(
                    f"{where} refused the bind of {s.bind_user or 'this service'}: invalid credentials (check {check}; "
                    "is the account disabled, locked out or its password expired?)"
                    + (f" (DC said: {said})" if said else "")
                )
            if description in _UNAVAILABLE_RESULTS:
                raise DirectoryUnavailableError(f"{where} did not accept the bind: {description}")
            raise DirectoryError(
                f"{where} refused the bind of {s.bind_user}: {description}: {result.get('message', '')}".strip()
            )
        return conn

    def _kerberos_error(self, exc: Exception, dc: DomainController, where: str) -> DirectoryError:
        text = " ".join(str(exc).split())
        lowered = text.lower()
        if "cannot contact any kdc" in lowered or "cannot find kdc" in lowered or "timed out" in lowered:
            return DirectoryUnavailableError(f"Kerberos bind to {where}: no KDC of the realm answers ({text})")
        if "server not found in kerberos database" in lowered:
            return DirectoryError(
                f"Kerberos bind to {where}: the KDC knows no service principal ldap/{dc.host} ({text}); AD_SERVER "
                "must name the DC by the host name it is registered under (its FQDN, as DNS SRV gives it)")
        keytab = f" in AD_KEYTAB={self._settings.keytab}" if self._settings.keytab else ""
        return InvalidCredentialsError(
            f"Kerberos bind to {where} as {self._settings.bind_user or 'this service'}{keytab} failed: {text}")

    def _describe_connect_error(self, exc: Exception, dc: DomainController, where: str) -> str:
        text = str(exc)
        if isinstance(exc, LDAPCertificateError) or "doesn't match any name" in text:
            return (
                f"TLS failure with {where}: the DC certificate is not issued for host {dc.host!r} "
                "(use a host name from the certificate in AD_SERVER)"
            )
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
            reason = text.split("certificate verify failed:", 1)[-1].split("(_ssl.c", 1)[0].strip(" :")
            trust = f"AD_CA_FILE={self._settings.ca_file}" if self._settings.ca_file else "the system trust store"
            return (
                f"TLS failure with {where}: the DC certificate could not be validated against {trust} "
                f"({reason or 'certificate verify failed'}); AD_CA_FILE must hold the CA that issued the DC "
                "certificate"
            )
        if "SSL" in text or "TLS" in text:
            return f"TLS failure with {where}: {text}"
        if "timed out" in text or isinstance(exc, LDAPResponseTimeoutError):
            return f"{where} did not answer in time ({text})"
        if "refused" in text:
            return f"{where} refused the connection (is the DC up and LDAPS enabled?): {text}"
        return f"cannot reach {where}: {text}"

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            _close_quietly(conn)
        gc_conn, self._gc_conn = self._gc_conn, None
        if gc_conn is not None:
            _close_quietly(gc_conn)

    def _run(self, what: str, operation: Callable[[ldap3.Connection], T], *, writes: bool = False) -> T:
        """Run ``operation`` on the bound connection; on a dropped connection reconnect once and retry. The retry
        goes to the same DC once the sequence has used it (see ``_open``), so a retried write meets the first
        attempt's result (entryAlreadyExists, noSuchObject), never a DC that has not seen it yet."""
        with self._lock:
            for attempt in (1, 2):
                if self._conn is None or self._conn.closed:
                    self._conn = self._open()
                if writes:
                    self._sticky = True
                try:
                    result = operation(self._conn)
                except (LDAPCommunicationError, LDAPResponseTimeoutError, OSError) as exc:
                    self._drop()
                    if attempt == 2:
                        raise DirectoryUnavailableError(
                            f"{what}: lost the connection to {self._where} twice ({exc})"
                        ) from None
                    log.info("connection to %s dropped during %s (%s); reconnecting", self._where, what, exc)
                    continue
                self._sticky = True
                return result
            raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> Directory:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- reads --------------------------------------------------------------------------------------------
    def _search(
        self,
        conn: ldap3.Connection,
        base: str,
        search_filter: str,
        scope: str,
        attributes: list[str],
        what: str,
        size_limit: int = 0,
    ) -> list[dict[str, Any]]:
        conn.search(base, search_filter, scope, attributes=attributes, size_limit=size_limit)
        result = conn.result or {}
        if result.get("description") not in ("success", "noSuchObject", "sizeLimitExceeded"):
            _raise_for(result, what, base)
        return [r for r in (conn.response or []) if r.get("type") == "searchResEntry"]

    def _naming_contexts(self) -> tuple[str, str]:
        if self._naming is None:
            def read(conn: ldap3.Connection) -> list[dict[str, Any]]:
                return self._search(conn, "", "(objectClass=*)", ldap3.BASE,
                                    ["defaultNamingContext", "configurationNamingContext"], "reading the RootDSE")
            entries = self._run("reading the RootDSE", read)
            raw = _raw(entries[0]) if entries else {}
            default, config = _text(raw, "defaultNamingContext"), _text(raw, "configurationNamingContext")
            if not default or not config:
                raise DirectoryError(f"{self._where} did not return its naming contexts (is it a domain controller?)")
            self._naming = (default, config)
        return self._naming

    def find_guest(self, uid: str) -> AdAccount | None:
        """The user account (a person: never a computer) at CN=<uid> in the guest OU, or None. Whether it is
        guestsync's is for the caller to decide: see ``AdAccount.marked`` and the objectSid join."""
        return self._read_person(guest_dn(uid, self.guest_ou))

    def holder_of(self, uid: str) -> str | None:
        """The DN of whatever object (of any class) holds CN=<uid> in the guest OU, or None."""
        dn = guest_dn(uid, self.guest_ou)
        return dn if self._exists(dn) else None

    def find_by_sid(self, sid: str) -> AdAccount | None:
        """The account with this objectSid inside the managed OUs (survives renames and moves), or None."""
        search_filter = f"(&{PERSON_FILTER}(objectSid={sid_filter_value(sid)}))"
        for ou in self.managed_ous:
            what = f"searching {ou} for {sid}"

            def search(conn: ldap3.Connection, base: str = ou, what: str = what) -> list[dict[str, Any]]:
                return self._search(conn, base, search_filter, ldap3.SUBTREE, READ_ATTRIBUTES, what)

            entries = self._run(what, search)
            if entries:
                return self._account(entries[0])
        return None

    def netbios_domain(self) -> str:
        """The NetBIOS (pre-Windows 2000) domain name, e.g. CONTOSO (for DOMAIN\\sAMAccountName)."""
        if self._netbios is None:
            default_nc, config_nc = self._naming_contexts()
            base = f"CN=Partitions,{config_nc}"
            search_filter = f"(&(objectClass=crossRef)(nCName={escape_filter_value(default_nc)})(nETBIOSName=*))"
            entries = self._run(
                "reading the NetBIOS domain name",
                lambda c: self._search(c, base, search_filter, ldap3.LEVEL, ["nETBIOSName"],
                                       "reading the NetBIOS domain name"),
            )
            name = _text(_raw(entries[0]), "nETBIOSName") if entries else None
            if not name:
                raise DirectoryError(f"no crossRef with a nETBIOSName for {default_nc} under {base}")
            self._netbios = name
        return self._netbios

    def iter_managed_accounts(self, page_size: int = 500) -> Iterator[AdAccount]:
        """Every user object in the managed OUs, read with the simple paged results control (RFC 2696) so
        that the DC's MaxPageSize never truncates the list. The lock is held per page, not across yields."""
        for ou in self.managed_ous:
            cookie: bytes | None = None
            first = True
            while first or cookie:
                page, cookie = self._page(ou, page_size, cookie, retry=first)
                first = False
                for entry in page:
                    yield self._account(entry)

    def _page(
        self, ou: str, page_size: int, cookie: bytes | None, *, retry: bool
    ) -> tuple[list[dict[str, Any]], bytes | None]:
        what = f"listing the accounts in {ou}"

        def fetch(conn: ldap3.Connection) -> tuple[list[dict[str, Any]], bytes | None]:
            conn.search(ou, "(&(objectCategory=person)(objectClass=user))", ldap3.SUBTREE,
                        attributes=READ_ATTRIBUTES, paged_size=page_size, paged_cookie=cookie)
            result = conn.result or {}
            if result.get("description") not in ("success", "noSuchObject"):
                _raise_for(result, what, ou)
            control = (result.get("controls") or {}).get(PAGED_RESULTS_OID) or {}
            next_cookie = (control.get("value") or {}).get("cookie") or None
            entries = [r for r in (conn.response or []) if r.get("type") == "searchResEntry"]
            return entries, next_cookie

        if retry:
            return self._run(what, fetch)
        with self._lock:  # a paged search cannot resume on a new connection: no silent retry mid-way
            if self._conn is None or self._conn.closed:
                raise DirectoryUnavailableError(f"{what}: the connection was lost between pages")
            try:
                return fetch(self._conn)
            except (LDAPCommunicationError, LDAPResponseTimeoutError, OSError) as exc:
                self._drop()
                raise DirectoryUnavailableError(f"{what}: the connection was lost between pages ({exc})") from None

    # --- writes -------------------------------------------------------------------------------------------
    def _require_managed(self, dn: str) -> None:
        if not any(is_within(dn, ou) for ou in self.managed_ous):
            raise OutsideManagedOuError(
                f"refusing to write {dn}: it is not inside the managed OU(s) {'; '.join(self.managed_ous)}"
            )

    def _check_values(self, values: Mapping[str, str | None]) -> None:
        unknown = sorted(set(values) - set(PERSISTENT_ATTRIBUTES))
        if unknown:
            raise ValueError(
                f"attribute(s) {', '.join(unknown)} cannot be written here; only {', '.join(PERSISTENT_ATTRIBUTES)}"
            )
        problems = validate_export(values)
        if problems:
            raise ConstraintError("; ".join(problems))

    def _check_unique(self, dn: str, values: Mapping[str, str | None]) -> None:
        """Refuse a sAMAccountName or userPrincipalName that another account in the forest already answers to,
        explicitly or implicitly, as Windows AD and its KDC see it; the error names the account that holds it.

        A new UPN ``p@s`` clashes with an explicit userPrincipalName ``p@s`` (any case) anywhere in the forest,
        and, when ``s`` is a domain's DNS name or one of the forest's UPN suffixes, with the implicit UPN of an
        account whose sAMAccountName is ``p`` and that has no userPrincipalName (in that domain; for a UPN suffix,
        in any domain). A new sAMAccountName ``x`` clashes with the same sAMAccountName in this domain and with
        an explicit UPN ``x@<this domain's DNS name>``. Samba lets some of these through or reports them as
        something else, so they are caught here, before the add or modify.
        """
        sam, upn = values.get("sAMAccountName"), values.get("userPrincipalName")
        if not sam and not upn:
            return
        forest = self._forest()
        implicit: tuple[str, str] | None = None  # (p, s) when p@s may be someone's implicit UPN
        clauses = []
        if upn:
            clauses.append(f"(userPrincipalName={escape_filter_value(upn)})")
            prefix, _, suffix = upn.rpartition("@")
            if prefix and suffix.lower() in forest.names:
                implicit = (prefix, suffix.lower())
                clauses.append(f"(&(sAMAccountName={escape_filter_value(prefix)})(!(userPrincipalName=*)))")
        if sam:
            clauses.append(f"(sAMAccountName={escape_filter_value(sam)})")
            clauses.append(f"(userPrincipalName={escape_filter_value(f'{sam}@{forest.own.dns_name}')})")
        search_filter = f"(|{''.join(clauses)})"
        for other, raw in self._forest_search(forest, search_filter):
            if same_dn(other, dn):
                continue
            their_sam, their_upn = _text(raw, "sAMAccountName") or "", _text(raw, "userPrincipalName") or ""
            home = forest.domain_of(other)
            if upn and their_upn.casefold() == upn.casefold():
                where = "domain" if home is forest.own else f"forest (domain {home.dns_name if home else '?'})"
                raise ConstraintError(f"userPrincipalName {upn!r} is already used by another account in the "
                                      f"{where} ({other})")
            if implicit and not their_upn and their_sam.casefold() == implicit[0].casefold() and home is not None and (
                    implicit[1] == home.dns_name or implicit[1] in forest.upn_suffixes):
                raise ConstraintError(
                    f"userPrincipalName {upn!r} is already the implicit UPN of {other} (sAMAccountName "
                    f"{their_sam!r} in {home.dns_name}, no userPrincipalName of its own): Kerberos and logons would "
                    "find that account under this name")
            if sam and home is forest.own and their_sam.casefold() == sam.casefold():
                raise ConstraintError(f"sAMAccountName {sam!r} is already in use by another account in the "
                                      f"domain ({other})")
            if sam and their_upn.casefold() == f"{sam}@{forest.own.dns_name}".casefold():
                raise ConstraintError(
                    f"sAMAccountName {sam!r} would give the implicit UPN {sam}@{forest.own.dns_name}, which is the "
                    f"userPrincipalName of {other}")

    def _forest(self) -> Forest:
        """The forest's domains (crossRef dnsRoot and nCName under CN=Partitions), its UPN suffixes (uPNSuffixes
        of CN=Partitions) and whether this DC is a Global Catalog; read once per instance."""
        if self._forest_info is None:
            default_nc, config_nc = self._naming_contexts()
            partitions = f"CN=Partitions,{config_nc}"
            what = "reading the forest's domains and UPN suffixes"

            def read(conn: ldap3.Connection) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
                root = self._search(conn, "", "(objectClass=*)", ldap3.BASE, ["isGlobalCatalogReady"], what)
                top = self._search(conn, partitions, "(objectClass=*)", ldap3.BASE, ["uPNSuffixes"], what)
                refs = self._search(conn, partitions, "(&(objectClass=crossRef)(nETBIOSName=*)(dnsRoot=*))",
                                    ldap3.LEVEL, ["dnsRoot", "nCName"], what)
                return root, top, refs

            root, top, refs = self._run(what, read)
            domains = []
            for entry in refs:
                raw = _raw(entry)
                dns_name, nc = _text(raw, "dnsRoot"), _text(raw, "nCName")
                if dns_name and nc:
                    domains.append(ForestDomain(dns_name.lower().rstrip("."), nc))
            own = next((d for d in domains if same_dn(d.naming_context, default_nc)), None)
            if own is None:
                raise DirectoryError(f"no crossRef with a dnsRoot for {default_nc} under {partitions}")
            suffixes = frozenset(
                bytes(v).decode("utf-8").lower().rstrip(".") if isinstance(v, bytes | bytearray) else str(v).lower()
                for v in (_raw(top[0]).get("upnsuffixes", []) if top else []))
            gc_ready = (_text(_raw(root[0]), "isGlobalCatalogReady") or "").upper() == "TRUE" if root else False
            self._forest_info = Forest(own=own, domains=tuple(domains), upn_suffixes=suffixes,
                                       global_catalog=gc_ready)
        return self._forest_info

    def _forest_search(self, forest: Forest, search_filter: str) -> list[tuple[str, dict[str, list[bytes]]]]:
        """(DN, attributes) of the users matching ``search_filter`` in the whole forest: from the Global Catalog
        (this DC, port 3269 over TLS) when it is one, else from each domain naming context this DC holds (a
        domain it does not hold answers with a referral, which is logged and skipped)."""
        attributes = ["sAMAccountName", "userPrincipalName"]
        what = "checking sAMAccountName/userPrincipalName uniqueness"
        found: list[tuple[str, dict[str, list[bytes]]]] = []
        if forest.global_catalog:
            with self._lock:
                for attempt in (1, 2):
                    try:
                        if self._conn is None or self._conn.closed or self._dc is None:
                            self._conn = self._open()  # the Global Catalog of the DC of this sequence
                        if self._gc_conn is None or self._gc_conn.closed:
                            assert self._dc is not None  # set by _open
                            self._gc_conn = self._connect(self._dc, GLOBAL_CATALOG_TLS_PORT)
                        self._sticky = True
                        entries = self._search(self._gc_conn, "", search_filter, ldap3.SUBTREE, attributes,
                                               f"{what} in the Global Catalog", size_limit=20)
                        break
                    except (LDAPCommunicationError, LDAPResponseTimeoutError, OSError) as exc:
                        conn, self._gc_conn = self._gc_conn, None
                        if conn is not None:
                            _close_quietly(conn)
                        if attempt == 2:
                            raise DirectoryUnavailableError(f"{what}: lost the Global Catalog connection twice "
                                                            f"({exc})") from None
            return [(str(e.get("dn", "")), _raw(e)) for e in entries]
        for domain in forest.domains:
            def search(conn: ldap3.Connection, base: str = domain.naming_context) -> list[dict[str, Any]] | None:
                conn.search(base, search_filter, ldap3.SUBTREE, attributes=attributes, size_limit=20)
                result = conn.result or {}
                if result.get("description") == "referral":
                    return None
                if result.get("description") not in ("success", "noSuchObject", "sizeLimitExceeded"):
                    _raise_for(result, what, base)
                return [r for r in (conn.response or []) if r.get("type") == "searchResEntry"]

            entries_or_none = self._run(what, search)
            if entries_or_none is None:
                log.warning("%s: %s is not held by %s and there is no Global Catalog here; accounts of that "
                            "domain were not checked", what, domain.dns_name, self._where)
                continue
            found.extend((str(e.get("dn", "")), _raw(e)) for e in entries_or_none)
        return found

    def create_guest(
        self, uid: str, attributes: Mapping[str, str | None], password: str, user_account_control: int
    ) -> AdAccount:
        """Create CN=<uid> in the guest OU with its initial password, userAccountControl and guestsync's ownership
        mark, in one add; return it as read back. Raises AccountExistsError if an object is already there: the
        caller decides whether it is guestsync's (the mark) or must be left alone."""
        dn = guest_dn(uid, self.guest_ou)
        self._require_managed(dn)
        if log_enabled(PROTOCOL):
            raise ConfigurationError(
                "ldap3 library logging is at PROTOCOL detail or above, which would write the new account's "
                "password to the log; lower it (ldap3.utils.log.set_library_log_detail_level(BASIC))"
            )
        values = {k: v for k, v in attributes.items() if v is not None and v != ""}
        self._check_values(values)
        self._check_unique(dn, values)
        request: dict[str, Any] = {
            **values,
            "unicodePwd": f'"{password}"'.encode("utf-16-le"),
            "userAccountControl": int(user_account_control),
            OWNERSHIP_ATTRIBUTE: ownership_mark(self._keys[0], uid),
        }

        def add(conn: ldap3.Connection) -> dict[str, Any]:
            conn.add(dn, USER_OBJECT_CLASSES, request)
            return dict(conn.result or {})

        result = self._run(f"creating {dn}", add, writes=True)
        if result.get("description") == "entryAlreadyExists":
            if self._is_sam_clash(result, dn):
                raise ConstraintError(
                    f"sAMAccountName {values.get('sAMAccountName')!r} is already in use by another account in the "
                    "domain"
                )
            raise AccountExistsError(f"{dn} already exists")
        if result.get("description") != "success":
            _raise_for(result, f"creating {dn}", dn, values=values, secret=password)
        log.info("created %s (sAMAccountName %s)", dn, values.get("sAMAccountName"))
        return self._read_back(dn, f"creating {dn}")

    def adopt_guest(
        self, dn: str, uid: str, attributes: Mapping[str, str | None], password: str, user_account_control: int
    ) -> AdAccount:
        """Take over the user account at ``dn`` for guest ``uid`` (an operator's explicit decision, or the
        migration window): in one modify, a fresh password, the initial userAccountControl, guestsync's ownership
        mark and the persistent attributes that differ, so whatever password or flags the object had before
        (a planted known password, MIM's guessable one) stop working at once. Returns it as read back."""
        self._require_managed(dn)
        if uid_from_dn(dn) != uid.lower():
            raise OutsideManagedOuError(f"refusing to adopt {dn} for guest {uid}: its CN is not the guest's id")
        if log_enabled(PROTOCOL):
            raise ConfigurationError("ldap3 library logging is at PROTOCOL detail or above, which would write the "
                                     "adopted account's new password to the log; lower it")
        account = self._read_person(dn)
        if account is None:
            raise AccountNotFoundError(f"cannot adopt {dn}: there is no user account there")
        values = {k: v for k, v in attributes.items() if v is not None and v != ""}
        self._check_values(values)
        changes = {name: value for name, value in values.items() if account.attributes.get(name) != value}
        self._check_unique(dn, changes)
        modification: dict[str, list[tuple[str, list[Any]]]] = {
            name: [(ldap3.MODIFY_REPLACE, [value])] for name, value in changes.items()
        }
        modification["unicodePwd"] = [(ldap3.MODIFY_REPLACE, [f'"{password}"'.encode("utf-16-le")])]
        modification["userAccountControl"] = [(ldap3.MODIFY_REPLACE, [str(int(user_account_control))])]
        modification[OWNERSHIP_ATTRIBUTE] = [(ldap3.MODIFY_REPLACE, [ownership_mark(self._keys[0], uid)])]
        what = f"adopting {dn}"

        def modify(conn: ldap3.Connection) -> dict[str, Any]:
            conn.modify(dn, modification)
            return dict(conn.result or {})

        result = self._run(what, modify, writes=True)
        if result.get("description") != "success":
            _raise_for(result, what, dn, values=changes, secret=password)
        log.warning("AUDIT adopted %s for guest %s (objectSid %s, userAccountControl %s -> %d, created %s): fresh "
                    "password, ownership mark", dn, uid, account.object_sid, account.user_account_control,
                    user_account_control, account.when_created)
        return self._read_back(dn, what)

    def release_upn(self, dn: str) -> None:
        """Remove the userPrincipalName of the archived account at ``dn`` (its guest is gone for good), so that a
        new account may take the name. A delete of every value, not a replace with none: Samba refuses the latter
        for userPrincipalName. Idempotent: an account without one is left as it is."""
        self._require_managed(dn)
        if not self.archive_ou or not is_within(dn, self.archive_ou):
            raise OutsideManagedOuError(f"refusing to release the UPN of {dn}: only archived accounts give it up")
        what = f"releasing the userPrincipalName of {dn}"

        def modify(conn: ldap3.Connection) -> dict[str, Any]:
            conn.modify(dn, {"userPrincipalName": [(ldap3.MODIFY_DELETE, [])]})
            return dict(conn.result or {})

        result = self._run(what, modify, writes=True)
        if result.get("description") not in ("success", "noSuchAttribute"):
            _raise_for(result, what, dn)
        log.info("released the userPrincipalName of %s", dn)

    def mark_owned(self, account: AdAccount, uid: str) -> None:
        """Write the ownership mark on an account joined to guest ``uid`` by objectSid that lacks it (an account
        from before marks, or one whose mark was cleared by hand); the join, not the mark, made it ours."""
        self._require_managed(account.dn)
        what = f"marking {account.dn}"

        def modify(conn: ldap3.Connection) -> dict[str, Any]:
            conn.modify(account.dn, {OWNERSHIP_ATTRIBUTE: [(ldap3.MODIFY_REPLACE, [ownership_mark(self._keys[0],
                                                                                                  uid)])]})
            return dict(conn.result or {})

        result = self._run(what, modify, writes=True)
        if result.get("description") != "success":
            _raise_for(result, what, account.dn)
        log.info("wrote the ownership mark on %s", account.dn)

    def _account(self, entry: Mapping[str, Any]) -> AdAccount:
        account = _account(entry)
        uid = uid_from_dn(account.dn)
        mark = _text(_raw(entry), OWNERSHIP_ATTRIBUTE)
        marked = uid is not None and carries_mark(self._keys, uid, mark)
        return replace(account, marked=marked) if marked else account

    def _is_sam_clash(self, result: Mapping[str, Any], dn: str) -> bool:
        """entryAlreadyExists means either 'this DN exists' or (Windows and Samba) 'sAMAccountName taken'."""
        message = str(result.get("message", "")).lower()
        if "samaccountname" in message or _WIN_USER_EXISTS in message:
            return True
        found = self._run(
            f"reading {dn}", lambda c: self._search(c, dn, "(objectClass=*)", ldap3.BASE, ["cn"], f"reading {dn}")
        )
        return not found

    def update_guest(self, dn: str, changes: Mapping[str, str | None]) -> None:
        """Replace the given persistent attributes; None (or "") clears one. Initial-only attributes
        (unicodePwd, userAccountControl) and anything else are refused with ValueError."""
        self._require_managed(dn)
        if not changes:
            return
        self._check_values(changes)
        self._check_unique(dn, changes)
        modification: dict[str, list[tuple[str, list[str]]]] = {
            # REPLACE with no value removes the attribute if present and is a no-op if not (RFC 4511 4.6),
            # so clearing needs no read first and cannot fail with noSuchAttribute.
            name: [(ldap3.MODIFY_REPLACE, [value] if value else [])]
            for name, value in changes.items()
        }

        def modify(conn: ldap3.Connection) -> dict[str, Any]:
            conn.modify(dn, modification)
            return dict(conn.result or {})

        result = self._run(f"updating {dn}", modify, writes=True)
        if result.get("description") != "success":
            _raise_for(result, f"updating {dn}", dn, values=changes)
        log.info("updated %s: %s", dn, ", ".join(sorted(changes)))

    # --- lifecycle ----------------------------------------------------------------------------------------
    def _read_person(self, dn: str) -> AdAccount | None:
        """The user object (a person, not a computer) at exactly ``dn``, or None."""
        what = f"reading {dn}"
        entries = self._run(
            what, lambda c: self._search(c, dn, PERSON_FILTER, ldap3.BASE, READ_ATTRIBUTES, what)
        )
        return self._account(entries[0]) if entries else None

    def _exists(self, dn: str) -> bool:
        """Whether any object at all is at ``dn`` (a clash is a clash, whatever its class)."""
        what = f"reading {dn}"
        return bool(self._run(
            what, lambda c: self._search(c, dn, "(objectClass=*)", ldap3.BASE, ["objectClass"], what)
        ))

    def _require_archive(self, action: str) -> str:
        if not self.archive_ou:
            raise ConfigurationError(
                f"cannot {action}: setting AD_ARCHIVE_OU is not set (the OU that disabled guest accounts are "
                "moved to, e.g. OU=B2BGuestArchive,DC=contoso,DC=com)"
            )
        return self.archive_ou

    def _placement(self, dn: str, action: str) -> tuple[str, str]:
        """(RDN, OU) of an account to move: it must sit directly in the guest or the archive OU, so that a
        move can only ever go from one of them to the other. Refused before anything is sent."""
        self._require_managed(dn)
        split = _split_dn(dn)
        if split is not None:
            rdn, parent = split
            for ou in (self.guest_ou, self.archive_ou):
                if ou and same_dn(parent, ou):
                    return rdn, ou
        raise OutsideManagedOuError(
            f"refusing to {action} {dn}: only accounts directly in {self.guest_ou} or {self.archive_ou} are moved"
        )

    def _locate(self, dn: str, rdn: str, target_ou: str, action: str) -> AdAccount:
        """The account at ``dn``; if it is gone but its RDN is already in ``target_ou``, that one (a retry
        after a move whose answer was lost: CN=<uid> names the same guest in either OU)."""
        account = self._read_person(dn)
        target = f"{rdn},{target_ou}"
        if account is None and not same_dn(dn, target):
            account = self._read_person(target)
        if account is None:
            where = dn if same_dn(dn, target) else f"{dn} nor at {target}"
            if self._exists(dn):
                raise DirectoryError(f"refusing to {action} {dn}: it is not a user account")
            raise AccountNotFoundError(f"cannot {action} {dn}: there is no user account at {where}")
        return account

    def _set_disabled(self, account: AdAccount, disabled: bool) -> None:
        """Set or clear ACCOUNTDISABLE in userAccountControl, keeping every other bit as read; no-op if it is
        already so. (The read and the write are not atomic: AD offers no compare-and-set for it.)"""
        current = account.user_account_control
        if current is None:
            raise DirectoryError(f"cannot read userAccountControl of {account.dn}: is the read right delegated?")
        wanted = current | UAC_ACCOUNTDISABLE if disabled else current & ~UAC_ACCOUNTDISABLE
        if wanted == current:
            return
        what = f"{'disabling' if disabled else 'enabling'} {account.dn}"

        def modify(conn: ldap3.Connection) -> dict[str, Any]:
            conn.modify(account.dn, {"userAccountControl": [(ldap3.MODIFY_REPLACE, [str(wanted)])]})
            return dict(conn.result or {})

        result = self._run(what, modify, writes=True)
        description = result.get("description")
        if description in ("constraintViolation", "unwillingToPerform"):
            said = str(result.get("message", "")).strip()
            raise ConstraintError(f"{what}: AD refused userAccountControl {wanted} ({description}"
                                  + (f"; DC said: {said})" if said else ")"))
        if description != "success":
            _raise_for(result, what, account.dn)
        log.info("%s %s (userAccountControl %d -> %d)", "disabled" if disabled else "enabled", account.dn,
                 current, wanted)

    def _move(self, dn: str, rdn: str, target_ou: str, action: str) -> str:
        """Move ``dn`` into ``target_ou`` under the same RDN (objectSid and objectGUID stay); the new DN."""
        target = f"{rdn},{target_ou}"
        what = f"moving {dn} to {target_ou}"

        def move(conn: ldap3.Connection) -> dict[str, Any]:
            conn.modify_dn(dn, rdn, new_superior=target_ou)
            return dict(conn.result or {})

        result = self._run(what, move, writes=True)
        description = result.get("description")
        if description == "entryAlreadyExists":
            raise AccountExistsError(
                f"cannot {action} {dn}: {target} already exists (another object with the same name is in "
                f"{target_ou}; remove or rename one of them)"
            )
        if description == "noSuchObject" and self._read_person(target) is not None:
            return target  # the move was done by an attempt whose answer was lost (reconnect and retry)
        if description != "success":
            _raise_for(result, what, dn)
        log.info("moved %s to %s", dn, target_ou)
        return target

    def _read_back(self, dn: str, action: str) -> AdAccount:
        account = self._read_person(dn)
        if account is None:
            raise DirectoryError(f"{action}: {dn} cannot be read back")
        return account

    def disable_and_archive(self, dn: str) -> AdAccount:
        """Disable the guest's account and move it into the archive OU, where it keeps its objectSid (so a
        returning guest gets the same account back) but cannot sign in. Idempotent: a step already done is
        skipped, and if ``dn`` is gone but its RDN is already in the archive OU, that account is the one.
        Disabling comes first, so a failed move leaves a disabled account, never an enabled one.

        Returns the account as read back at its archive DN. Raises ConfigurationError without an archive
        OU, OutsideManagedOuError (nothing sent) unless ``dn`` sits directly in the guest or archive OU,
        AccountExistsError if the archive OU already has an object of that RDN (checked before any write),
        AccountNotFoundError if there is no such account.
        """
        archive_ou = self._require_archive("archive a guest account")
        rdn, _ = self._placement(dn, "archive")
        target = f"{rdn},{archive_ou}"
        with self._lock:  # one thread's steps are not interleaved with another's on this instance
            account = self._locate(dn, rdn, archive_ou, "archive")
            archived = same_dn(account.dn, target)
            if not archived and self._exists(target):
                raise AccountExistsError(
                    f"cannot archive {account.dn}: {target} already exists (another object with the same name is "
                    f"in {archive_ou}; remove or rename one of them)"
                )
            self._set_disabled(account, True)
            final = account.dn if archived else self._move(account.dn, rdn, archive_ou, "archive")
            return self._read_back(final, f"archiving {dn}")

    def restore_guest(self, dn: str) -> AdAccount:
        """The reverse of ``disable_and_archive``, for a guest who is back in scope: move the account from the
        archive OU to the guest OU (same RDN, same objectSid) and clear ACCOUNTDISABLE, keeping the other
        userAccountControl bits. Idempotent in the same way (an account already in the guest OU is only
        enabled). The move comes first, so a failure never leaves an enabled account in the archive OU.

        Returns the account as read back at its guest DN. Raises as ``disable_and_archive`` does
        (AccountExistsError if the guest OU already has an object of that RDN, e.g. a new account).
        """
        self._require_archive("restore a guest account")
        rdn, _ = self._placement(dn, "restore")
        target = f"{rdn},{self.guest_ou}"
        with self._lock:
            account = self._locate(dn, rdn, self.guest_ou, "restore")
            final = account.dn
            if not same_dn(account.dn, target):
                if self._exists(target):
                    raise AccountExistsError(
                        f"cannot restore {account.dn}: {target} already exists (another object with the same name "
                        f"is in {self.guest_ou}; remove or rename one of them)"
                    )
                final = self._move(account.dn, rdn, self.guest_ou, "restore")
            self._set_disabled(account if final == account.dn else self._read_back(final, f"restoring {dn}"), False)
            return self._read_back(final, f"restoring {dn}")

    def delete_guest(self, dn: str) -> None:
        """Delete the user object at ``dn`` (a leaf: no tree delete) for good; its objectSid is never reused.
        Idempotent: if nothing is at ``dn`` any more, that is success (a retry, or an admin was quicker).
        Only ``dn`` is looked at: an account moved elsewhere meanwhile is not followed.

        Raises OutsideManagedOuError (nothing sent) for a DN outside the managed OUs, DirectoryError if the
        object there is not a user account or has child objects.
        """
        self._require_managed(dn)
        what = f"deleting {dn}"
        with self._lock:
            account = self._read_person(dn)
            if account is None:
                if self._exists(dn):
                    raise DirectoryError(f"refusing to delete {dn}: it is not a user account")
                log.info("%s is already gone; nothing to delete", dn)
                return

            def delete(conn: ldap3.Connection) -> dict[str, Any]:
                conn.delete(dn)
                return dict(conn.result or {})

            result = self._run(what, delete, writes=True)
            description = result.get("description")
            if description == "noSuchObject":
                log.info("%s is already gone; nothing to delete", dn)
                return
            if description == "notAllowedOnNonLeaf":
                raise DirectoryError(f"refusing to delete {dn}: it has child objects (only leaf accounts are deleted)")
            if description != "success":
                _raise_for(result, what, dn)
            log.info("deleted %s (objectSid %s)", dn, account.object_sid)

    # --- preflight (guestsync check) ------------------------------------------------------------------------
    def object_exists(self, dn: str) -> bool:
        """Whether an object is at ``dn`` and visible to the service account (connects and binds if needed)."""
        return self._exists(dn)

    def create_probe(self, name: str | None = None) -> AdAccount:
        """Create a probe account ``CN=guestsync-probe-<hex>`` in the guest OU the way ``create_guest`` creates a
        guest (one add with a random password over LDAPS and userAccountControl), so it needs the same rights;
        it is disabled from the start (smart card required as well) and marked by its description.
        Returns it as read back. The caller deletes it (``delete_guest``)."""
        name = name or new_probe_name()
        if not _PROBE_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a probe account name ({PROBE_PREFIX}<12 hex digits>)")
        dn = f"CN={name},{self.guest_ou}"
        self._require_managed(dn)
        if log_enabled(PROTOCOL):
            raise ConfigurationError("ldap3 library logging is at PROTOCOL detail or above, which would write the "
                                     "probe account's password to the log; lower it")
        password = new_password(24, avoid=(name,))
        values = {"sAMAccountName": "gsprobe-" + name[len(PROBE_PREFIX):], "displayName": "guestsync probe",
                  "description": PROBE_DESCRIPTION}
        request: dict[str, Any] = {
            **values,
            "unicodePwd": f'"{password}"'.encode("utf-16-le"),
            "userAccountControl": GUEST_USER_ACCOUNT_CONTROL | UAC_ACCOUNTDISABLE,
        }

        def add(conn: ldap3.Connection) -> dict[str, Any]:
            conn.add(dn, USER_OBJECT_CLASSES, request)
            return dict(conn.result or {})

        result = self._run(f"creating {dn}", add, writes=True)
        if result.get("description") != "success":
            _raise_for(result, f"creating {dn}", dn, values=values, secret=password)
        log.info("created probe account %s", dn)
        return self._read_back(dn, f"creating {dn}")

    def find_probes(self) -> list[str]:
        """DNs of probe accounts (name and description both match) directly in the managed OUs."""
        search_filter = (f"(&{PERSON_FILTER}(cn={PROBE_PREFIX}*)"
                         f"(description={escape_filter_value(PROBE_DESCRIPTION)}))")
        found: list[str] = []
        for ou in self.managed_ous:
            what = f"looking for probe accounts in {ou}"

            def search(conn: ldap3.Connection, base: str = ou, what: str = what) -> list[dict[str, Any]]:
                return self._search(conn, base, search_filter, ldap3.LEVEL, ["cn"], what)

            for entry in self._run(what, search):
                if _PROBE_NAME.fullmatch(_text(_raw(entry), "cn") or ""):
                    found.append(str(entry.get("dn", "")))
        return found


class DirectoryPool:
    """Up to ``size`` Directory instances, each with its own LDAP connection, each lent to one thread at a time.

    One Directory serialises every operation on its connection, so parallel exports sharing one wait for each
    other's round trips; with a lease per export, one guest's searches overlap another's add. Instances are
    built on demand (an instance connects on its first operation) and the most recently returned one is lent
    first, so a quiet worker keeps few connections open. A lent instance is not checked on return: a dropped
    connection is re-opened by the instance itself on its next operation.
    """

    def __init__(self, settings: DirectorySettings, *, archive_ou: str | None = None, size: int | None = None) -> None:
        self.size = settings.connections if size is None else size
        if self.size < 1:
            raise ValueError(f"a directory pool needs at least one connection, not {self.size}")
        self._settings = settings
        self._archive_ou = archive_ou
        # one view of which DCs are down for all connections, so that each does not wait for a dead DC's timeout
        self._locator = DcLocator(parse_ad_server(settings.server))
        first = Directory(settings, archive_ou=archive_ou, locator=self._locator)  # validates the settings now
        self._built: list[Directory] = [first]
        self._idle: list[Directory] = [first]
        self._changed = threading.Condition()
        self._closed = False

    @property
    def built(self) -> int:
        """Instances built so far (never more than ``size``)."""
        with self._changed:
            return len(self._built)

    @property
    def in_use(self) -> int:
        """Instances lent right now."""
        with self._changed:
            return len(self._built) - len(self._idle)

    @contextlib.contextmanager
    def lease(self, timeout: float | None = None) -> Iterator[Directory]:
        """A Directory for this thread alone until the block ends; it goes back to the pool even when the block
        raises. Waits while all ``size`` are lent: DirectoryUnavailableError after ``timeout`` seconds (None:
        no limit), DirectoryError once the pool is closed."""
        directory = self._acquire(timeout)
        try:
            yield directory
        finally:
            self._release(directory)

    @contextlib.contextmanager
    def lease_on_first_use(self, timeout: float | None = None) -> Iterator[LazyLease]:
        """Like ``lease``, but the connection is borrowed only at the first directory call and kept until the
        block ends: work before it (an export's state read) holds no connection, and every call after it goes
        over the same one (one DC, so a read sees the write before it)."""
        lazy = LazyLease(self, timeout)
        try:
            yield lazy
        finally:
            lazy.release()

    def _acquire(self, timeout: float | None) -> Directory:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while True:
                if self._closed:
                    raise DirectoryError("the directory pool is closed")
                if self._idle:
                    return self._idle.pop()
                if len(self._built) < self.size:
                    directory = Directory(self._settings, archive_ou=self._archive_ou, locator=self._locator)
                    self._built.append(directory)
                    return directory
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise DirectoryUnavailableError(
                        f"all {self.size} LDAP connections (GUESTSYNC_LDAP_CONNECTIONS) stayed in use for {timeout} s"
                    )
                self._changed.wait(remaining)

    def _release(self, directory: Directory) -> None:
        directory.end_sequence()  # the borrower's sequence is over: the next one may start on another DC
        with self._changed:
            closed = self._closed
            if not closed:
                self._idle.append(directory)
                self._changed.notify()
        if closed:
            directory.close()

    def close(self) -> None:
        """Close the idle connections now and each lent one when it comes back; later leases are refused.
        (Closing a lent one now would only make its holder reconnect, leaving a connection nobody closes.)"""
        with self._changed:
            self._closed = True
            idle, self._idle = self._idle, []
            self._changed.notify_all()
        for directory in idle:
            directory.close()

    def __enter__(self) -> DirectoryPool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class LazyLease:
    """A pooled Directory borrowed at its first use (see ``DirectoryPool.lease_on_first_use``)."""

    def __init__(self, pool: DirectoryPool, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._directory: Directory | None = None

    @property
    def borrowed(self) -> bool:
        return self._directory is not None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if self._directory is None:
            self._directory = self._pool._acquire(self._timeout)
        return getattr(self._directory, name)

    def release(self) -> None:
        directory, self._directory = self._directory, None
        if directory is not None:
            self._pool._release(directory)


def _require_kerberos_library() -> None:
    """AD_BIND_METHOD=kerberos needs a GSSAPI binding: ldap3 uses ``gssapi`` (MIT or Heimdal Kerberos, Linux) or,
    where that is missing, ``winkerberos`` (SSPI, Windows: the service's own identity, e.g. a gMSA)."""
    import importlib.util

    if importlib.util.find_spec("gssapi") is None and importlib.util.find_spec("winkerberos") is None:
        raise ConfigurationError("setting AD_BIND_METHOD=kerberos needs the Python package gssapi (Linux: pip install "
                                 "gssapi, with the Kerberos libraries installed) or winkerberos (Windows)")


def new_probe_name() -> str:
    return PROBE_PREFIX + secrets.token_hex(6)


def _close_quietly(conn: ldap3.Connection) -> None:
    with contextlib.suppress(LDAPException, OSError):
        conn.unbind()


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


def _raise_for(
    result: Mapping[str, Any],
    what: str,
    dn: str,
    *,
    values: Mapping[str, str | None] | None = None,
    secret: str | None = None,
) -> None:
    """Turn an LDAP result into the matching exception, with a message an operator can act on."""
    description = str(result.get("description", "no answer"))
    message = str(result.get("message", "")).strip()
    if secret:
        message = message.replace(secret, "***")
    lowered = message.lower()
    values = values or {}
    detail = f" (DC said: {message})" if message else ""
    if description == "insufficientAccessRights":
        raise AccessDeniedError(
            f"{what}: access denied; the service account lacks the rights (check the delegation on the OU){detail}"
        )
    if description == "entryAlreadyExists":
        if "samaccountname" in lowered or _WIN_USER_EXISTS in lowered:
            raise ConstraintError(
                f"sAMAccountName {values.get('sAMAccountName')!r} is already in use by another account in the domain"
            )
        raise AccountExistsError(f"{dn} already exists")
    if description in ("constraintViolation", "attributeOrValueExists", "unwillingToPerform",
                       "invalidAttributeSyntax", "objectClassViolation", "namingViolation"):
        if "userprincipalname" in lowered and values.get("userPrincipalName"):
            raise ConstraintError(
                f"userPrincipalName {values['userPrincipalName']!r} is already used by another account in the domain"
            )
        if "samaccountname" in lowered and values.get("sAMAccountName"):
            raise ConstraintError(
                f"sAMAccountName {values['sAMAccountName']!r} was refused (in use, or invalid){detail}"
            )
        if _WIN_PASSWORD_RESTRICTION in lowered or "password" in lowered:
            raise ConstraintError(f"the password was refused by the domain password policy{detail}")
        raise ConstraintError(f"{what}: AD refused the values: {description}{detail}")
    if description == "noSuchObject":
        raise AccountNotFoundError(f"{what}: {dn} (or its OU) does not exist{detail}")
    if description in _UNAVAILABLE_RESULTS:
        raise DirectoryUnavailableError(f"{what}: the DC is unavailable: {description}{detail}")
    raise DirectoryError(f"{what}: {description}{detail}")
