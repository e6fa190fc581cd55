"""No secret or password ever reaches a log, and one guest can be followed through the logs.

Runs the whole pipeline with every logger at DEBUG (ours and the SDKs': azure-core, azure-identity, msal,
httpx, the Functions runner) and greps what was captured for every secret in play: the AD bind password,
the Graph client secret, the webhook clientState, the storage account key, and each password generated for
a new AD account.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest

from shared import bootstrap
from shared.functions import QUIET_LOGGERS
from shared.services import export
from tests.plugins.stack import Stack

pytestmark = pytest.mark.integration


def test_no_secret_in_any_log_and_guest_correlation(stack: Stack, caplog: pytest.LogCaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    generated: list[str] = []
    original = export.new_password

    def recording_password(*args: Any, **kwargs: Any) -> str:
        value = original(*args, **kwargs)
        generated.append(value)
        return value

    monkeypatch.setattr(export, "new_password", recording_password)
    settings = bootstrap.services().settings
    assert settings.directory is not None and settings.storage.connection_string
    account_key = re.search(r"AccountKey=([^;]+)", settings.storage.connection_string)
    assert account_key is not None
    secrets = {
        "AD bind password": settings.directory.bind_password,
        "Graph client secret": settings.graph.client_secret,
        "clientState": settings.webhook.client_states[0],
        "storage account key": account_key.group(1),
    }
    sim: Any = stack.sim
    caplog.set_level(logging.DEBUG)
    for quietened in QUIET_LOGGERS:  # the app turns these down to WARNING; here they must speak too
        caplog.set_level(logging.DEBUG, logger=quietened)
    guests = [sim.invite_guest(f"log{i}@fabrikam.com", f"Log Guest {i}", "Log", f"Guest{i}") for i in range(3)]
    uids = [g["id"] for g in guests]
    stack.wait(lambda: stack.settled(uids), "the accounts")
    sim.update_user(uids[0], givenName="Changed")
    sim.delete_user(uids[1])
    stack.reconcile()
    stack.cli_text("plan")
    stack.drain()

    assert len(generated) == 3
    secrets.update({f"generated password {i}": p for i, p in enumerate(generated)})
    records = caplog.records
    assert len(records) > 50  # the SDKs' debug output was captured too
    for record in records:
        text = record.getMessage() + (record.exc_text or "") + (record.stack_info or "")
        for name, value in secrets.items():
            assert value and value not in text, f"{name} leaked in a {record.name} log record"

    # One guest, followed from the notification through apply and export with one correlation id.
    ours = [r for r in records if getattr(r, "guest", None) == uids[2]]
    by_logger = {r.name for r in ours}
    assert {"guestsync.apply", "guestsync.export"} <= by_logger
    first = {r.name: getattr(r, "correlation_id", None) for r in ours}
    assert first["guestsync.apply"] and first["guestsync.apply"] == first["guestsync.export"]
