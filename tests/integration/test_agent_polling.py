"""How often the on-premises agent asks the export queue for messages: what an idle agent costs in storage
transactions, and what an isolated export adds to that (docs/agent.md, "Latency and cost of polling").

The agent runs in this process against Azurite; its receives are counted by a subclass that records each one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import threading
import time
from typing import Any

import pytest
from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import QueueClient, QueueMessage

from shared.agent.runtime import BATCH_SIZE, Agent
from shared.core.messages import ExportMessage
from shared.settings import load_agent_settings, load_settings

pytestmark = pytest.mark.integration


class CountingAgent(Agent):
    """The agent, with the time and size of every receive it makes recorded."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.receives: list[tuple[float, int]] = []

    def _receive(self, count: int) -> list[QueueMessage]:
        got = super()._receive(count)
        self.receives.append((time.monotonic(), len(got)))
        return got


@pytest.fixture
def agent_env(azurite: Any, storage_names: dict[str, str], graph_env: dict[str, str], directory_env: dict[str, str],
              monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {"AzureWebJobsStorage": azurite.connection_string, **storage_names, **graph_env, **directory_env,
           "GRAPH_CLIENT_STATE": secrets.token_urlsafe(24), "GUESTSYNC_WORKER_MODE": "agent",
           "GUESTSYNC_RECONCILE_SCHEDULE": "0 0 0 1 1 *", "GUESTSYNC_AGENT_IDLE_POLL_MS": "1000"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def _run(agent: Agent) -> threading.Thread:
    thread = threading.Thread(target=lambda: asyncio.run(agent.run()), name="agent", daemon=True)
    thread.start()
    return thread


def test_an_isolated_export_costs_no_extra_receives(agent_env: dict[str, str]) -> None:
    stop = threading.Event()
    agent = CountingAgent(load_settings(), load_agent_settings(), stop)
    thread = _run(agent)
    try:
        deadline = time.monotonic() + 10
        while len(agent.receives) < 2 and time.monotonic() < deadline:  # idle: the queue exists, polls go on
            time.sleep(0.05)
        queue = QueueClient.from_connection_string(agent_env["AzureWebJobsStorage"],
                                                   agent_env["GUESTSYNC_EXPORT_QUEUE"])
        # An export of a guest that state does not know: handled (skipped) and deleted, no AD work needed.
        body = ExportMessage("0b9c1d2e-0000-4000-8000-00000000abcd", 1, "polling test", "").to_json()
        queue.send_message(base64.b64encode(body.encode("utf-8")).decode("ascii"))
        while not any(n for _, n in agent.receives) and time.monotonic() < deadline + 10:
            time.sleep(0.02)
        got = next(at for at, n in agent.receives if n)
        time.sleep(1.5)
        after = [at - got for at, _ in agent.receives if at > got]
    finally:
        stop.set()
        thread.join(30)
    # Idle, the agent asks every GUESTSYNC_AGENT_IDLE_POLL_MS (1 s here, ±20 %). A receive that got fewer than a
    # batch emptied the queue: the next one comes after the idle interval, not at once and then 0.1 s, 0.2 s ...
    assert after, "the agent stopped polling after the export"
    assert min(after) >= 0.75, f"receives after the one that found the export, in seconds: {after}"
    assert len([t for t in after if t < 1.3]) <= 1, after
    assert queue.peek_messages() == []  # the export was handled and its message deleted


def test_a_full_batch_is_followed_by_a_receive_at_once(agent_env: dict[str, str]) -> None:
    queue = QueueClient.from_connection_string(agent_env["AzureWebJobsStorage"], agent_env["GUESTSYNC_EXPORT_QUEUE"])
    with contextlib.suppress(ResourceExistsError):  # storage names are fresh per test; Azurite is shared
        queue.create_queue()
    for i in range(BATCH_SIZE + 3):  # a burst: more than one batch waiting
        body = ExportMessage(f"0b9c1d2e-0000-4000-8000-{i:012d}", 1, "polling test", "").to_json()
        queue.send_message(base64.b64encode(body.encode("utf-8")).decode("ascii"))
    stop = threading.Event()
    agent = CountingAgent(load_settings(), load_agent_settings(), stop)
    thread = _run(agent)
    try:
        deadline = time.monotonic() + 20
        while sum(n for _, n in agent.receives) < BATCH_SIZE + 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(30)
    sizes = [n for _, n in agent.receives if n]
    assert sizes[:2] == [BATCH_SIZE, 3], agent.receives
    first, second = (at for at, n in agent.receives if n)
    assert second - first < 0.5, "after a full batch the agent asks again at once, not after its idle interval (1 s)"
