"""The whole stack for end-to-end tests: the function app (worker mode function) on the local runner, with
Azurite, the Samba AD DC and the Graph simulator. Tests may override settings with
``@pytest.mark.parametrize("stack", [{...settings...}], indirect=True)``."""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ldap3
import pytest

from devtools.runner import LocalFunctionsHost
from shared import bootstrap
from shared.adapters.state import StateStore
from shared.core.domain import GuestStatus
from shared.functions import create_app

GUEST_ATTRIBUTES = ["sAMAccountName", "givenName", "sn", "mail", "userPrincipalName", "displayName",
                    "userAccountControl", "objectSid", "cn"]


@dataclass
class Stack:
    host: LocalFunctionsHost
    sim: object
    state: StateStore
    admin: ldap3.Connection
    guest_ou: str
    archive_ou: str
    monkeypatch: pytest.MonkeyPatch

    def wait(self, check: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; status: {self.summary()}")

    def drain(self, timeout: float = 60.0) -> None:
        """Wait until both queues are empty and nothing is in flight."""
        self.host.drain(timeout=timeout)

    def configure(self, **settings: str) -> None:
        """Change app settings from now on (the services are rebuilt from the environment)."""
        for name, value in settings.items():
            self.monkeypatch.setenv(name, value)
        bootstrap.reset()

    def reconcile(self) -> dict[str, Any]:
        """Fire the reconcile timer, wait for it, and return the report it stored."""
        from shared.services.reconcile import last_report

        result = self.host.trigger_timer("reconcile", timeout=120)
        assert result.succeeded, result.error
        report = last_report(self.state)
        assert report is not None
        return report

    def cli_text(self, *args: str) -> str:
        """Run ``guestsync <args>`` in this process (same settings) and return what it printed."""
        from shared import cli

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli.main(list(args))
        assert code == 0, out.getvalue()
        return out.getvalue()

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli_text(*args))

    def host_queue_count(self) -> int:
        """Messages waiting in the change and export queues."""
        s = bootstrap.services()
        return s.change_queue.approximate_count() + s.export_queue.approximate_count()

    def summary(self) -> dict[str, int]:
        return dict(self.state.counts())

    def settled(self, uids: list[str]) -> bool:
        """Every guest either provisioned at its current version or parked with an error."""
        for uid in uids:
            record = self.state.get(uid)
            if record is None:
                return False
            if record.status is GuestStatus.ERROR:
                continue
            if record.status is not GuestStatus.PROVISIONED or record.exported_version != record.version:
                return False
        return True

    def ad_accounts(self) -> dict[str, dict[str, object]]:
        self.admin.search(self.guest_ou, "(objectClass=user)", attributes=GUEST_ATTRIBUTES)
        return {str(e.cn): e.entry_attributes_as_dict for e in self.admin.entries}


@pytest.fixture
def stack(request: pytest.FixtureRequest, tmp_path: Path, azurite, storage_names, graph, graph_env, directory_env,
          clean_guest_ou, admin_ldap, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    env = {
        "AzureWebJobsStorage": azurite.connection_string,
        **storage_names,
        **graph_env,
        **directory_env,
        "GRAPH_CLIENT_STATE": secrets.token_urlsafe(24),
        "GUESTSYNC_WEBHOOK_KEY": secrets.token_urlsafe(32),  # the Functions key both endpoints demand
        "GUESTSYNC_WORKER_MODE": "function",
        "GUESTSYNC_SUBSCRIPTION_SCHEDULE": "0 0 0 1 1 *",  # timers fire only when a test triggers them
        "GUESTSYNC_RECONCILE_SCHEDULE": "0 0 0 1 1 *",
        **getattr(request, "param", {}),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    host_json = tmp_path / "host.json"
    host_json.write_text(json.dumps({
        "version": "2.0",
        "extensions": {"queues": {"maxPollingInterval": "00:00:00.200", "visibilityTimeout": "00:00:01",
                                  "batchSize": 16, "maxDequeueCount": 5}},
    }))
    bootstrap.reset()
    # worker mode agent: the host runs the cloud half only, and the test runs agents of its own
    host = LocalFunctionsHost(create_app(env["GUESTSYNC_WORKER_MODE"]), env=os.environ, host_json=host_json)
    host.start()
    try:
        monkeypatch.setenv("GUESTSYNC_NOTIFICATION_URL", f"{host.base_url}/api/graph/notifications")
        monkeypatch.setenv("GUESTSYNC_LIFECYCLE_URL", f"{host.base_url}/api/graph/lifecycle")
        bootstrap.reset()
        host.trigger_timer("maintain_subscription")
        s = Stack(host, graph, bootstrap.services().state, admin_ldap, env["AD_GUEST_OU"], env["AD_ARCHIVE_OU"],
                  monkeypatch)
        s.wait(lambda: len(graph.subscriptions) == 1, "the Graph subscription", 20)
        yield s
    finally:
        host.stop()
        bootstrap.reset()


