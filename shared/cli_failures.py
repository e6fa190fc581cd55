"""What went wrong in a ``guestsync`` command, as one line naming the cause and the fix (never a traceback
unless ``-v``): storage that cannot be reached or refuses us, a state table that does not exist, the unexpected."""

from __future__ import annotations

from shared.core.failures import Cause, classify

#: Where storage is set, named in every storage fix.
_STORAGE = "AzureWebJobsStorage (or AzureWebJobsStorage__queueServiceUri and __tableServiceUri)"

_STORAGE_FIXES: dict[Cause, tuple[str, str]] = {
    Cause.DNS: ("the storage host name does not resolve",
                f"check the account name or endpoints in {_STORAGE} and DNS from here (a private endpoint needs its "
                "private DNS zone)"),
    Cause.REFUSED: ("the connection was refused",
                    f"check the endpoint in {_STORAGE} and that the storage account (locally: Azurite) is running and "
                    "accepts connections from this network"),
    Cause.TIMEOUT: ("no answer in time",
                    "check outbound HTTPS (443) from here to the storage account, its firewall (public network "
                    "access, private endpoint) and any proxy"),
    Cause.CERTIFICATE: ("its TLS certificate is not trusted here",
                        "trust the CA that signs it (a TLS-inspecting proxy's CA: REQUESTS_CA_BUNDLE), or correct "
                        f"the endpoint in {_STORAGE}"),
    Cause.CREDENTIALS: ("it refused our credentials",
                        "check the account key in AzureWebJobsStorage, or give the identity (AzureWebJobsStorage__"
                        "clientId) the Storage Queue Data Contributor and Storage Table Data Contributor roles"),
}


def explain(exc: BaseException, command: str) -> str:
    """``guestsync <command>: <cause>; fix: <what to do>`` on one line."""
    from azure.core.exceptions import AzureError, ResourceNotFoundError

    failure = classify(exc)
    if isinstance(exc, ResourceNotFoundError) and "TableNotFound" in str(exc):
        return (f"guestsync {command}: the state table does not exist in this storage account, so nothing has run "
                f"against it; fix: check that {_STORAGE} names the app's storage account (the function app creates "
                "the table on its first run)")
    if isinstance(exc, AzureError):
        what, fix = _STORAGE_FIXES.get(failure.cause, (
            "it failed", f"check {_STORAGE} and the storage account's health; run again with -v for the details"))
        return f"guestsync {command}: cannot use Azure Storage: {what} ({failure.text}); fix: {fix}"
    return (f"guestsync {command}: unexpected {type(exc).__name__}: {failure.text}; fix: run again with -v for the "
            "traceback and report it with the command line")
