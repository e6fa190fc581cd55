"""The storage checks: the queues (with their poison queues) and the state table answer; missing ones are created."""

from __future__ import annotations

from shared.core.failures import fix_for
from shared.services.preflight.results import DEFAULT_TIMEOUT, CheckResult, Status, _result, bounded
from shared.settings import Settings


def _storage_failure(name: str, what: str, exc: Exception) -> CheckResult:
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

    text = " ".join(str(exc).split())[:400]
    if isinstance(exc, HttpResponseError) and exc.status_code == 403:
        return _result(name, Status.FAIL, f"{what}: access denied ({text})",
                       "keyless: give the identity Storage Queue Data Contributor and Storage Table Data Contributor "
                       "on the account; with a connection string, check its key")
    if isinstance(exc, ClientAuthenticationError):
        return _result(name, Status.FAIL, f"{what}: sign-in for storage failed ({text})",
                       "check the AzureWebJobsStorage__* identity settings")
    if isinstance(exc, ServiceRequestError | TimeoutError):
        return _result(name, Status.FAIL, f"{what}: cannot reach the storage account ({text})",
                       fix_for(exc, "storage")[1])
    return _result(name, Status.FAIL, f"{what}: {type(exc).__name__}: {text}", "check AzureWebJobsStorage")


def check_storage(settings: Settings, timeout: float = DEFAULT_TIMEOUT) -> list[CheckResult]:
    """storage.queues and storage.table, with few retries so an unreachable account fails in seconds, each
    within ``timeout`` seconds."""
    from azure.storage.queue import ExponentialRetry

    from shared.adapters.queues import MessageQueue

    names = (settings.change_queue, settings.export_queue, settings.change_poison_queue,
             settings.export_poison_queue)
    counts: dict[str, int] = {}
    results: list[CheckResult] = []
    def count_all() -> None:
        for name in names:
            queue = MessageQueue.from_settings(
                settings.storage, name, connection_timeout=min(10, timeout), read_timeout=min(20, timeout),
                retry_policy=ExponentialRetry(initial_backoff=1, increment_base=1, retry_total=1))
            counts[name] = queue.approximate_count()  # creates the queue if it is missing

    name = names[0]
    try:
        bounded(count_all, timeout)
    except Exception as exc:
        name = next((n for n in names if n not in counts), name)
        results.append(_storage_failure("storage.queues", f"queue {name}", exc))
    else:
        listed = ", ".join(f"{n} ({c})" for n, c in counts.items())
        poisoned = {n: c for n, c in counts.items() if n.endswith("-poison") and c}
        if poisoned:
            results.append(_result("storage.queues", Status.WARN, f"queues reachable (messages): {listed}; "
                                   f"{sum(poisoned.values())} message(s) in poison queue(s)",
                                   "see `guestsync status`; fix the cause, then move the messages back"))
        else:
            results.append(_result("storage.queues", Status.PASS, f"queues reachable (messages): {listed}"))
    try:
        results.append(bounded(lambda: _check_table(settings, timeout), timeout))
    except TimeoutError as exc:
        results.append(_storage_failure("storage.table", f"table {settings.state_table}", exc))
    return results


def _check_table(settings: Settings, timeout: float) -> CheckResult:
    from shared.adapters.state import StateStore
    from shared.adapters.storage import table_service

    try:
        service = table_service(settings.storage, retry_total=1, retry_backoff_factor=0.5,
                                connection_timeout=min(10, timeout), read_timeout=min(20, timeout))
        StateStore(service.create_table_if_not_exists(settings.state_table)).get_meta("preflight")
    except Exception as exc:
        return _storage_failure("storage.table", f"table {settings.state_table}", exc)
    return _result("storage.table", Status.PASS, f"state table {settings.state_table} reachable (created if missing)")
