"""The mapping of an LDAP result onto the directory port's exceptions (``_raise_for``; the exceptions are in
shared.core.errors)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.core.errors import (
    AccessDeniedError,
    AccountExistsError,
    AccountNotFoundError,
    ConstraintError,
    DirectoryError,
    DirectoryUnavailableError,
)

#: Windows error codes in the diagnostic message that identify the cause.
_WIN_PASSWORD_RESTRICTION = "0000052d"  # noqa: S105 (ERROR_PASSWORD_RESTRICTION, an error code)
_WIN_USER_EXISTS = "00000524"  # ERROR_USER_EXISTS (duplicate sAMAccountName on Windows)
_UNAVAILABLE_RESULTS = frozenset({"busy", "unavailable", "timeLimitExceeded", "adminLimitExceeded", "other"})



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
