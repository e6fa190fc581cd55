"""Guest accounts: create (one add with password and ownership mark), adopt, update, mark, release the UPN,
and the forest-wide sAMAccountName/userPrincipalName uniqueness check each write makes first."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import ldap3
from ldap3.core.exceptions import LDAPCommunicationError, LDAPResponseTimeoutError
from ldap3.utils.log import PROTOCOL, log_enabled

from shared.adapters.directory.connection import _close_quietly
from shared.adapters.directory.entries import _raw, _text
from shared.adapters.directory.errors import _WIN_USER_EXISTS, _raise_for
from shared.adapters.directory.forest import GLOBAL_CATALOG_TLS_PORT, Forest, ForestDomain
from shared.adapters.directory.reads import DirectoryReads
from shared.core.ad_rules import (
    OWNERSHIP_ATTRIBUTE,
    escape_filter_value,
    guest_dn,
    is_within,
    new_password,
    ownership_mark,
    same_dn,
    uid_from_dn,
    validate_export,
)
from shared.core.domain import AdAccount, ConfigurationError
from shared.core.errors import (
    AccountExistsError,
    AccountNotFoundError,
    ConstraintError,
    DirectoryError,
    DirectoryUnavailableError,
    OutsideManagedOuError,
)
from shared.core.rules import PERSISTENT_ATTRIBUTES

log = logging.getLogger("guestsync.directory")


class GuestAccounts(DirectoryReads):
    """Create, adopt, update, mark and release guest accounts; each write is checked for forest-wide
    sAMAccountName and userPrincipalName uniqueness first."""

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
        self._refuse_password_logging("the new account's")
        values = {k: v for k, v in attributes.items() if v is not None and v != ""}
        self._check_values(values)
        self._check_unique(dn, values)
        result = self._add_user(dn, {**values, OWNERSHIP_ATTRIBUTE: ownership_mark(self._keys[0], uid)}, password,
                                user_account_control)
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
        migration window): in one modify, a password, the initial userAccountControl, guestsync's ownership mark
        and the persistent attributes that differ, then a second reset to the fresh password, so whatever password
        or flags the object had before (a planted known password, MIM's guessable one) stop working at once.
        Returns it as read back."""
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
        # Two resets: DCs keep accepting the previous password for a while after a reset (Samba's "old password
        # allowed period", Windows' OldPasswordAllowedPeriod for NTLM), so the object's old password (MIM's
        # guessable one, a planted one) must be two generations back, not one, to stop working at once.
        avoid = tuple(v for v in (values.get("sAMAccountName"), values.get("displayName")) if v)
        between = new_password(max(len(password), 24), avoid=avoid)
        modification["unicodePwd"] = [(ldap3.MODIFY_REPLACE, [f'"{between}"'.encode("utf-16-le")])]
        modification["userAccountControl"] = [(ldap3.MODIFY_REPLACE, [str(int(user_account_control))])]
        modification[OWNERSHIP_ATTRIBUTE] = [(ldap3.MODIFY_REPLACE, [ownership_mark(self._keys[0], uid)])]
        final = {"unicodePwd": [(ldap3.MODIFY_REPLACE, [f'"{password}"'.encode("utf-16-le")])]}
        what = f"adopting {dn}"

        def modify(conn: ldap3.Connection) -> dict[str, Any]:
            conn.modify(dn, modification)
            if (conn.result or {}).get("description") == "success":
                conn.modify(dn, final)
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
