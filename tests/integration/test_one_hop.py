"""Worker mode function: apply exports the guest it changed in the same invocation (one queue hop, not two).

The host runs without its queue listeners, so each queue function runs only when the test says so: an account
that exists right after the apply invocation was created by apply, not by an export function running meanwhile.
In agent mode the export still crosses the export queue (the agent is on-premises), and in function mode an
export that fails in apply goes on the export queue, where the export function's retries take it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import QueueClient

from devtools.runner import LocalFunctionsHost
from shared import bootstrap
from shared.core.domain import GuestStatus
from shared.core.messages import ChangeMessage, ExportMessage
from shared.core.records import utcnow
from shared.functions import create_app
from shared.services import export

pytestmark = pytest.mark.integration

HostFactory = Callable[[str], LocalFunctionsHost]


@pytest.fixture
def make_host(tmp_path: Path, azurite: Any, storage_names: dict[str, str], graph_env: dict[str, str],
              directory_env: dict[str, str], clean_guest_ou: None,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[HostFactory]:
    hosts: list[LocalFunctionsHost] = []
    host_json = tmp_path / "host.json"
    host_json.write_text(json.dumps({"version": "2.0", "extensions": {"queues": {
        "maxPollingInterval": "00:00:00.200", "visibilityTimeout": "00:00:01", "maxDequeueCount": 5}}}))

    def make(mode: str) -> LocalFunctionsHost:
        env = {"AzureWebJobsStorage": azurite.connection_string, **storage_names, **graph_env, **directory_env,
               "GRAPH_CLIENT_STATE": secrets.token_urlsafe(24), "GUESTSYNC_WORKER_MODE": mode,
               "GUESTSYNC_SUBSCRIPTION_SCHEDULE": "0 0 0 1 1 *", "GUESTSYNC_RECONCILE_SCHEDULE": "0 0 0 1 1 *",
               "GUESTSYNC_ALERT_SCHEDULE": "0 0 0 1 1 *"}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        bootstrap.reset()
        host = LocalFunctionsHost(create_app(mode), env=os.environ, host_json=host_json)
        host.start(queues=False)
        hosts.append(host)
        for queue in ("GUESTSYNC_CHANGE_QUEUE", "GUESTSYNC_EXPORT_QUEUE"):
            with contextlib.suppress(ResourceExistsError):
                _queue(queue).create_queue()
        return host

    try:
        yield make
    finally:
        for host in hosts:
            host.stop()
        bootstrap.reset()


def _queue(name: str) -> QueueClient:
    return QueueClient.from_connection_string(os.environ["AzureWebJobsStorage"], os.environ[name])  # noqa: SIM112


def _send_change(uid: str) -> None:
    body = ChangeMessage(uid, "created", utcnow().isoformat()).to_json()
    _queue("GUESTSYNC_CHANGE_QUEUE").send_message(base64.b64encode(body.encode("utf-8")).decode("ascii"))


def _export_messages() -> list[ExportMessage]:
    return [ExportMessage.from_json(base64.b64decode(m.content))
            for m in _queue("GUESTSYNC_EXPORT_QUEUE").peek_messages(max_messages=32)]


def _account(admin_ldap: Any, uid: str) -> bool:
    return bool(admin_ldap.search(os.environ["AD_GUEST_OU"], f"(cn={uid})", attributes=["cn"]))


def test_function_mode_apply_creates_the_account_in_the_same_invocation(make_host: HostFactory, graph: Any,
                                                                        admin_ldap: Any) -> None:
    host = make_host("function")
    uid = graph.invite_guest("ada@fabrikam.com", "Ada Lovelace", "Ada", "Lovelace")["id"]
    _send_change(uid)

    invocation = host.invoke_queue_once("apply_change")

    assert invocation is not None and invocation.outcome == "succeeded", invocation
    assert _account(admin_ldap, uid)
    record = bootstrap.services().state.get(uid)
    assert record is not None and record.status is GuestStatus.PROVISIONED and record.object_sid
    assert _export_messages() == []  # nothing left for the export function


def test_agent_mode_apply_still_queues_the_export_for_the_agent(make_host: HostFactory, graph: Any,
                                                                admin_ldap: Any) -> None:
    host = make_host("agent")
    uid = graph.invite_guest("grace@fabrikam.com", "Grace Hopper", "Grace", "Hopper")["id"]
    _send_change(uid)

    invocation = host.invoke_queue_once("apply_change")

    assert invocation is not None and invocation.outcome == "succeeded", invocation
    assert not _account(admin_ldap, uid)
    assert [m.uid for m in _export_messages()] == [uid]
    record = bootstrap.services().state.get(uid)
    assert record is not None and record.status is GuestStatus.PENDING


def test_an_export_failing_in_apply_goes_to_the_export_function(make_host: HostFactory, graph: Any,
                                                                admin_ldap: Any,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    host = make_host("function")
    uid = graph.invite_guest("edsger@fabrikam.com", "Edsger Dijkstra", "Edsger", "Dijkstra")["id"]
    real_export = export.export_guest
    failures: list[str] = []

    def fail_once(message: ExportMessage, *args: Any, **kwargs: Any) -> Any:
        if not failures:
            failures.append(message.uid)
            raise RuntimeError("injected: the export broke before any write")
        return real_export(message, *args, **kwargs)

    monkeypatch.setattr(export, "export_guest", fail_once)
    _send_change(uid)

    invocation = host.invoke_queue_once("apply_change")

    assert invocation is not None and invocation.outcome == "succeeded", invocation  # state is saved
    assert failures == [uid] and not _account(admin_ldap, uid)
    assert [m.uid for m in _export_messages()] == [uid]
    record = bootstrap.services().state.get(uid)
    assert record is not None and record.status is GuestStatus.PENDING

    retried = host.invoke_queue_once("export_to_ad")

    assert retried is not None and retried.outcome == "succeeded", retried
    assert _account(admin_ldap, uid)
    record = bootstrap.services().state.get(uid)
    assert record is not None and record.status is GuestStatus.PROVISIONED
