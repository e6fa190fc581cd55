"""Reads of a ``Directory``: accounts by CN, by objectSid and all of them (paged), the naming contexts and
NetBIOS name, and the checks every write makes before anything is sent."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

import ldap3
from ldap3.core.exceptions import LDAPCommunicationError, LDAPResponseTimeoutError
from ldap3.utils.log import PROTOCOL, log_enabled

from shared.adapters.directory.connection import DirectoryConnection
from shared.adapters.directory.entries import (
    PAGED_RESULTS_OID,
    PERSON_FILTER,
    READ_ATTRIBUTES,
    USER_OBJECT_CLASSES,
    _account,
    _raw,
    _text,
)
from shared.adapters.directory.errors import _raise_for
from shared.core.ad_rules import (
    OWNERSHIP_ATTRIBUTE,
    carries_mark,
    escape_filter_value,
    guest_dn,
    is_within,
    sid_filter_value,
    uid_from_dn,
)
from shared.core.domain import AdAccount, ConfigurationError
from shared.core.errors import DirectoryError, DirectoryUnavailableError, OutsideManagedOuError


class DirectoryReads(DirectoryConnection):
    """Reads of the guest and archive OUs, and the checks every write makes first."""

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

    def _require_managed(self, dn: str) -> None:
        if not any(is_within(dn, ou) for ou in self.managed_ous):
            raise OutsideManagedOuError(
                f"refusing to write {dn}: it is not inside the managed OU(s) {'; '.join(self.managed_ous)}"
            )

    def _account(self, entry: Mapping[str, Any]) -> AdAccount:
        account = _account(entry)
        uid = uid_from_dn(account.dn)
        mark = _text(_raw(entry), OWNERSHIP_ATTRIBUTE)
        marked = uid is not None and carries_mark(self._keys, uid, mark)
        return replace(account, marked=marked) if marked else account

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

    def _refuse_password_logging(self, whose: str) -> None:
        """ldap3 at PROTOCOL detail logs an add request with its unicodePwd: refuse before one is built."""
        if log_enabled(PROTOCOL):
            raise ConfigurationError(
                f"ldap3 library logging is at PROTOCOL detail or above, which would write {whose} password to the "
                "log; lower it (ldap3.utils.log.set_library_log_detail_level(BASIC))"
            )

    def _add_user(self, dn: str, attributes: Mapping[str, Any], password: str,
                  user_account_control: int) -> dict[str, Any]:
        """One LDAP add of a user object with its initial password and userAccountControl (a guest and the
        check's probe are created alike, so the probe needs the same rights); the DC's result, for the caller
        to interpret."""
        request: dict[str, Any] = {
            **attributes,
            "unicodePwd": f'"{password}"'.encode("utf-16-le"),
            "userAccountControl": int(user_account_control),
        }

        def add(conn: ldap3.Connection) -> dict[str, Any]:
            conn.add(dn, USER_OBJECT_CLASSES, request)
            return dict(conn.result or {})

        return self._run(f"creating {dn}", add, writes=True)

    def _read_back(self, dn: str, action: str) -> AdAccount:
        account = self._read_person(dn)
        if account is None:
            raise DirectoryError(f"{action}: {dn} cannot be read back")
        return account
