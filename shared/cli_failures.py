"""What went wrong in a ``guestsync`` command, as one line naming the cause and the fix (never a traceback
unless ``-v``): storage that cannot be reached or refuses us, a state table that does not exist, the unexpected."""

from __future__ import annotations

from shared.core.failures import fix_for

#: Where storage is set, named in every storage fix.
_STORAGE = "AzureWebJobsStorage (or AzureWebJobsStorage__queueServiceUri and __tableServiceUri)"


def explain(exc: BaseException, command: str) -> str:
    """``guestsync <command>: <cause>; fix: <what to do>`` on one line."""
    from azure.core.exceptions import AzureError, ResourceNotFoundError

    failure, fix = fix_for(exc, "storage")
    if isinstance(exc, ResourceNotFoundError) and "TableNotFound" in str(exc):
        return (f"guestsync {command}: the state table does not exist in this storage account, so nothing has run "
                f"against it; fix: check that {_STORAGE} names the app's storage account (the function app creates "
                "the table on its first run)")
    if isinstance(exc, AzureError):
        what, _, fix = fix.partition(": ")
        if not fix:
            what, fix = "it failed", what
        return f"guestsync {command}: cannot use Azure Storage: {what} ({failure.text}); fix: {fix}"
    return (f"guestsync {command}: unexpected {type(exc).__name__}: {failure.text}; fix: run again with -v for the "
            "traceback and report it with the command line")
