"""``run_checks``: every check of ``CHECKS``, in order; failures are results, never exceptions."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

from shared.core.domain import ConfigurationError
from shared.services.preflight.directory import check_directory, entra_connect_reminder
from shared.services.preflight.graph import _check_mail, _check_scope_group, _first, _graph_failure, _signin
from shared.services.preflight.results import CHECKS, CheckResult, Status, _result, _skip
from shared.services.preflight.settings import _directory, _settings_summary
from shared.services.preflight.storage import check_storage
from shared.services.preflight.webhook import _check_subscription, check_webhooks
from shared.settings import Settings, load_settings


def run_checks(env: Mapping[str, str] | None = None, *, probe: bool = True) -> list[CheckResult]:
    """Every check of ``CHECKS``, in order. Never raises for what it checks: failures are results."""
    env = os.environ if env is None else env
    try:
        settings = load_settings(env)
        directory = _directory(settings)
    except ConfigurationError as exc:
        return [_result("settings", Status.FAIL, str(exc),
                        "set or correct the named setting (docs/configuration.md), then run the check again"),
                *_skip(CHECKS[1:], "settings did not load")]
    results = [_result("settings", Status.PASS, _settings_summary(settings))]
    results += asyncio.run(_graph_and_webhooks(settings))
    results += check_storage(settings)
    if directory is None:
        results += _skip(["ad.ldaps"], "AD_SERVER is not set: the AD worker does not run here (in agent mode, run "
                         "guestsync check on the agent's server as well)")
        results += _skip([n for n in CHECKS if n.startswith("ad.") and n != "ad.ldaps"], "AD_SERVER is not set")
    else:
        with directory:
            results += check_directory(directory, settings, probe=probe)
    results.append(entra_connect_reminder(settings))
    assert [r.name for r in results] == list(CHECKS), [r.name for r in results]
    return results


async def _graph_and_webhooks(settings: Settings) -> list[CheckResult]:
    """graph.signin, graph.users, graph.scope_group, graph.mail, webhook.*, graph.subscription (in order)."""
    from shared.adapters.graph import GraphClient

    signin, roles = await _signin(settings)
    after = ["graph.users", "graph.scope_group", "graph.mail"]
    if signin.status is Status.FAIL:
        results = [signin, *_skip(after, "Graph sign-in failed")]
        webhooks = await check_webhooks(settings)
        return results + webhooks + _skip(["graph.subscription"], "Graph sign-in failed")
    results = [signin]
    async with GraphClient(settings.graph) as client:
        try:
            await _first(client.list_guests(page_size=1))
            results.append(_result("graph.users", Status.PASS,
                                   "users can be read (GET /users, as the reconcile does): User.Read.All is granted"))
        except Exception as exc:
            results.append(_graph_failure("graph.users", exc, role="User.Read.All", what="reading users"))
        results.append(await _check_scope_group(client, settings))
        results.append(_check_mail(settings, roles))
        results += await check_webhooks(settings)
        results.append(await _check_subscription(client, settings))
    return results
