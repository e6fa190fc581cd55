"""An export message of a newer schema than the worker knows: left on the queue for a newer agent, unchanged,
never poison however often it comes round, and applied as soon as a reader of that schema takes it.

Real Azurite, Samba AD DC and Graph simulator; the worker's registration on the local runner (``stack``).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueClient, TextBase64DecodePolicy

from devtools.runner import LocalFunctionsHost
from shared import bootstrap
from shared.adapters import queues
from shared.core import messages
from shared.core.domain import GraphUser, GuestStatus
from shared.core.messages import SCHEMA_VERSION, ExportMessage
from shared.core.records import GuestRecord
from shared.core.rules import inbound
from shared.functions import create_app
from tests.plugins.stack import Stack

pytestmark = pytest.mark.integration

NEWER_TEXT = f"message schema v{SCHEMA_VERSION + 1} is newer than this agent (v{SCHEMA_VERSION}): upgrade the agent"


def _pending_guest(stack: Stack, email: str) -> GuestRecord:
    """A guest saved in state but not exported yet; not in the simulator, so no notification exports it."""
    upn = f"{email.replace('@', '_')}#EXT#@{stack.sim.tenant_domain}"  # type: ignore[attr-defined]
    user = GraphUser(id=str(uuid.uuid4()), user_type="Guest", display_name=email.split("@")[0].title(),
                     given_name="Given", surname="Sur", user_principal_name=upn, mail=email)
    return stack.state.save(GuestRecord(uid=user.id, entry=inbound(user), notified_at=datetime.now(UTC)))


def _queue(name: str) -> QueueClient:
    return QueueClient.from_connection_string(bootstrap.services().settings.storage.connection_string or "", name,
                                              message_decode_policy=TextBase64DecodePolicy())


def _peek(name: str) -> list[str]:
    """The visible messages of a queue; none if it does not exist (nothing was ever sent to it)."""
    try:
        return [str(m.content) for m in _queue(name).peek_messages(max_messages=32)]
    except ResourceNotFoundError:
        return []


def test_newer_export_is_left_for_a_newer_agent_not_poisoned(stack: Stack, monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture,
                                                              tmp_path: Path) -> None:
    monkeypatch.setattr(messages, "_newest_seen", None)
    monkeypatch.setattr(queues, "NEWER_SCHEMA_DELAY_SECONDS", 1)  # come round fast: 1 s instead of minutes
    caplog.set_level(logging.WARNING, logger="guestsync.queues")
    s = bootstrap.services()
    newer, current = _pending_guest(stack, "future@fabrikam.com"), _pending_guest(stack, "today@fabrikam.com")
    body = json.dumps({**json.loads(ExportMessage(newer.uid, newer.version, "new guest").to_json()),
                       "v": SCHEMA_VERSION + 1, "field_of_the_future": [1, 2]})
    s.export_queue.send(body)
    s.export_queue.send(ExportMessage(current.uid, current.version, "new guest").to_json())

    def warnings() -> int:
        return sum(NEWER_TEXT in r.getMessage() for r in caplog.records)

    # Read and put back more often than maxDequeueCount (5): a poison-bound message would be gone by now.
    stack.wait(lambda: warnings() >= 7, "the newer message to come round 7 times", 60)
    stack.wait(lambda: stack.settled([current.uid]), "the current message's export")
    assert set(stack.ad_accounts()) == {current.uid}  # the newer one is not guessed at
    record = stack.state.get(newer.uid)
    assert record is not None and record.status is GuestStatus.PENDING and record.error is None
    assert messages.newer_versions_seen() == SCHEMA_VERSION + 1  # what the heartbeat reports
    assert _peek(s.export_queue.name + "-poison") == []

    stack.host.stop()  # the old agent goes away: the message it put back becomes visible and stays so
    stack.wait(lambda: _peek(s.export_queue.name) == [body], "the newer message, visible again", 20)
    [waiting] = _queue(s.export_queue.name).peek_messages(max_messages=32)
    assert waiting.content == body  # byte for byte: not even the field it does not know is lost
    assert waiting.dequeue_count == 0  # put back as a new message: none of its retries are used up

    # A newer agent (this code, taught the next schema) takes it and applies it.
    monkeypatch.setattr(messages, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    host_json = tmp_path / "newer-agent-host.json"
    host_json.write_text(json.dumps({"version": "2.0", "extensions": {"queues": {
        "maxPollingInterval": "00:00:00.200", "visibilityTimeout": "00:00:01", "maxDequeueCount": 5}}}))
    newer_agent = LocalFunctionsHost(create_app("function"), env=os.environ, host_json=host_json)
    newer_agent.start(http=False, timers=False)
    try:
        stack.wait(lambda: stack.settled([newer.uid]), "the newer message's export by a newer agent")
    finally:
        newer_agent.stop()
    assert set(stack.ad_accounts()) == {current.uid, newer.uid}
