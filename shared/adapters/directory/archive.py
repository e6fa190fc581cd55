"""Deprovisioning of a guest account: disable and archive, restore, delete. Only ever moves an account between
the guest OU and the archive OU; each step is idempotent, and disabling comes before the move out,
enabling after the move back."""

from __future__ import annotations

import logging
from typing import Any

import ldap3

from shared.adapters.directory.entries import _split_dn
from shared.adapters.directory.errors import _raise_for
from shared.adapters.directory.reads import DirectoryReads
from shared.core.ad_rules import same_dn
from shared.core.domain import UAC_ACCOUNTDISABLE, AdAccount, ConfigurationError
from shared.core.errors import (
    AccountExistsError,
    AccountNotFoundError,
    ConstraintError,
    DirectoryError,
    OutsideManagedOuError,
)

log = logging.getLogger("guestsync.directory")


class GuestArchive(DirectoryReads):
    """Disable and archive, restore, delete: moves between the guest OU and the archive OU only."""

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
