"""The errors the ports raise: what a service may catch of an external system without importing its adapter.
``str()`` of each is a readable message that names the object or the setting, never a secret."""

from __future__ import annotations

from shared.core.domain import GuestsyncError

# --- on-premises AD (the directory port) ----------------------------------------------------------------------

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


# --- Microsoft Graph ------------------------------------------------------------------------------------------

class GraphError(GuestsyncError):
    def __init__(self, status: int | None, code: str | None, message: str) -> None:
        super().__init__(f"Graph answered {status} {code or ''}: {message}".strip())
        self.status, self.code = status, code


class GraphThrottledError(GraphError):
    """Still throttled after the SDK's retries: let the queue try again later."""


class DeltaExpiredError(GraphError):
    """410 Gone on a deltaLink: the sync state expired; start a full round again."""


class SubscriptionConflictError(GraphError):
    """409: a subscription for this resource and URL exists already."""


class GraphNotFoundError(GraphError):
    """404 where a missing object is an error, e.g. the scoping group does not exist (or is not visible)."""
