"""The connection of a ``Directory``: settings, TLS, the bind (password or Kerberos), DC selection with
failover (``shared.adapters.dc_locator``) and ``_run``, which reconnects once on a dropped connection."""

from __future__ import annotations

import contextlib
import logging
import secrets
import ssl
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self, TypeVar

import ldap3
from ldap3.core.exceptions import (
    LDAPCertificateError,
    LDAPCommunicationError,
    LDAPException,
    LDAPResponseTimeoutError,
    LDAPSSLConfigurationError,
)

from shared.adapters.dc_locator import DcLocator, DcLocatorError
from shared.adapters.directory.entries import _valid_dn
from shared.adapters.directory.errors import _UNAVAILABLE_RESULTS
from shared.adapters.directory.forest import Forest
from shared.core.ad_rules import is_within, same_dn
from shared.core.domain import ConfigurationError
from shared.core.errors import DirectoryError, DirectoryUnavailableError, InvalidCredentialsError
from shared.settings import DirectorySettings, DomainController, parse_ad_server

log = logging.getLogger("guestsync.directory")
T = TypeVar("T")


class DirectoryConnection:
    """The settings, the one LDAP connection of an instance and the choice of its DC; the base of ``Directory``."""

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

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _require_kerberos_library() -> None:
    """AD_BIND_METHOD=kerberos needs a GSSAPI binding: ldap3 uses ``gssapi`` (MIT or Heimdal Kerberos, Linux) or,
    where that is missing, ``winkerberos`` (SSPI, Windows: the service's own identity, e.g. a gMSA)."""
    import importlib.util

    if importlib.util.find_spec("gssapi") is None and importlib.util.find_spec("winkerberos") is None:
        raise ConfigurationError("setting AD_BIND_METHOD=kerberos needs the Python package gssapi (Linux: pip install "
                                 "gssapi, with the Kerberos libraries installed) or winkerberos (Windows)")


def _close_quietly(conn: ldap3.Connection) -> None:
    with contextlib.suppress(LDAPException, OSError):
        conn.unbind()
