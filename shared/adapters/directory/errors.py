"""The directory adapter's exceptions, and the mapping of an LDAP result onto them (``_raise_for``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.core.domain import GuestsyncError

#: Windows error codes in the diagnostic message that identify the cause.
_WIN_PASSWORD_RESTRICTION = "0000052d"  # noqa: S105 (ERROR_PASSWORD_RESTRICTION, an error code)
_WIN_USER_EXISTS = "00000524"  # ERROR_USER_EXISTS (duplicate sAMAccountName on Windows)
_UNAVAILABLE_RESULTS = frozenset({"busy", "unavailable", "timeLimitExceeded", "adminLimitExceeded", "other"})


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
