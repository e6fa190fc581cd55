"""``run_checks``: every check of ``CHECKS``, in order; failures are results, never exceptions."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from shared.core.domain import ConfigurationError
from shared.services.preflight.directory import check_directory, entra_connect_reminder
from shared.services.preflight.graph import _check_mail, _check_scope_group, _first, _graph_failure, _signin
from shared.services.preflight.results import (
    CHECKS,
    DEFAULT_TIMEOUT,
    CheckResult,
    Status,
    _result,
    _skip,
    _timed_out,
    bounded,
)
from shared.services.preflight.settings import _directory, _settings_summary
from shared.services.preflight.storage import check_storage
from shared.services.preflight.webhook import _check_subscription, check_webhooks
from shared.settings import Settings, load_settings

if TYPE_CHECKING:
    from shared.adapters.directory import Directory


#: Told each result as soon as it is known, and before each group of checks what is being checked now (so a
#: check that waits is visible on a terminal).
Progress = Callable[[str, CheckResult | None], None]


def _quiet(_: str, __: CheckResult | None) -> None:
    return None


def run_checks(env: Mapping[str, str] | None = None, *, probe: bool = True, timeout: float = DEFAULT_TIMEOUT,
               progress: Progress = _quiet) -> list[CheckResult]:
    """Every check of ``CHECKS``, in order, each within ``timeout`` seconds. Never raises for what it checks:
    failures are results."""
    env = os.environ if env is None else env
    results: list[CheckResult] = []

    def add(found: list[CheckResult]) -> None:
        for result in found:
            results.append(result)
            progress(result.name, result)

    progress("settings", None)
    try:
        settings = load_settings(env)
        directory = _directory(settings)
    except ConfigurationError as exc:
        add([_result("settings", Status.FAIL, str(exc),
                     "set or correct the named setting (docs/configuration.md), then run the check again"),
             *_skip(CHECKS[1:], "settings did not load")])
        return results
    add([_result("settings", Status.PASS, _settings_summary(settings))])
    progress("Graph sign-in, permissions and the webhook", None)
    add(asyncio.run(_graph_and_webhooks(settings, timeout)))
    progress("storage", None)
    add(check_storage(settings, timeout))
    if directory is None:
        add(_skip(["ad.ldaps"], "AD_SERVER is not set: the AD worker does not run here (in agent mode, run "
                  "guestsync check on the agent's server as well)"))
        add(_skip([n for n in CHECKS if n.startswith("ad.") and n != "ad.ldaps"], "AD_SERVER is not set"))
    else:
        progress(f"AD at {settings.directory.server if settings.directory else ''}", None)
        with directory:
            add(_ad_checks(directory, settings, probe=probe, timeout=timeout))
    add([entra_connect_reminder(settings)])
    assert [r.name for r in results] == list(CHECKS), [r.name for r in results]
    return results


def _ad_checks(directory: Directory, settings: Settings, *, probe: bool, timeout: float) -> list[CheckResult]:
    """The first contact (LDAPS and the bind) within ``timeout``: a DC that accepts TCP and never answers fails
    ad.ldaps as a timeout instead of holding the check; the steps after it have the adapter's own timeouts."""
    try:
        bounded(directory.netbios_domain, timeout)
    except TimeoutError:
        rest = [n for n in CHECKS if n.startswith("ad.") and n != "ad.ldaps"]
        assert settings.directory is not None
        return [_timed_out("ad.ldaps", f"{settings.directory.server}: LDAPS connection and bind", "ad", timeout),
                *_skip(rest, "no LDAPS connection")]
    except Exception:  # noqa: S110 (check_directory reports it, with the fix for its cause)
        pass
    return check_directory(directory, settings, probe=probe)


async def _within(name: str, what: str, timeout: float, check: Awaitable[CheckResult]) -> CheckResult:
    try:
        return await asyncio.wait_for(check, timeout)
    except TimeoutError:
        return _timed_out(name, what, "graph", timeout)


async def _graph_and_webhooks(settings: Settings, timeout: float) -> list[CheckResult]:
    """graph.signin, graph.users, graph.scope_group, graph.mail, webhook.*, graph.subscription (in order), each
    within ``timeout`` seconds."""
    from shared.adapters.graph import GraphClient

    try:
        signin, roles = await asyncio.wait_for(_signin(settings), timeout)
    except TimeoutError:
        signin, roles = _timed_out("graph.signin", f"sign-in at {settings.graph.authority_host}", "graph",
                                   timeout), None
    after = ["graph.users", "graph.scope_group", "graph.mail"]
    if signin.status is Status.FAIL:
        results = [signin, *_skip(after, "Graph sign-in failed")]
        webhooks = await check_webhooks(settings)
        return results + webhooks + _skip(["graph.subscription"], "Graph sign-in failed")
    results = [signin]
    async with GraphClient(settings.graph) as client:
        try:
            await asyncio.wait_for(_first(client.list_guests(page_size=1)), timeout)
            results.append(_result("graph.users", Status.PASS,
                                   "users can be read (GET /users, as the reconcile does): User.Read.All is granted"))
        except TimeoutError:
            results.append(_timed_out("graph.users", f"reading users at {settings.graph.endpoint}", "graph", timeout))
        except Exception as exc:
            results.append(_graph_failure("graph.users", exc, role="User.Read.All", what="reading users"))
        results.append(await _within("graph.scope_group", "reading the scoping group", timeout,
                                     _check_scope_group(client, settings)))
        results.append(_check_mail(settings, roles))
        results += await check_webhooks(settings)
        results.append(await _within("graph.subscription", "listing subscriptions", timeout,
                                     _check_subscription(client, settings)))
    return results
