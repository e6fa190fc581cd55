"""The on-premises agent's own runtime (shared.agent), as real processes of ``python -m shared.cli worker``
against Azurite, the Samba DC and the Graph simulator; the function app (worker mode agent) on the local runner
does the cloud half (webhook, apply) and queues the exports the agents consume."""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.storage.queue import QueueClient

from shared import bootstrap
from shared.agent.health import agents
from shared.agent.lease import lease_status
from shared.core.ad_rules import format_sid
from shared.core.domain import GuestStatus
from tests.plugins.stack import Stack

ROOT = Path(__file__).resolve().parents[2]
AGENT_MODE = {"GUESTSYNC_WORKER_MODE": "agent", "GUESTSYNC_ALERT_SCHEDULE": "0 0 0 1 1 *"}
#: Short leases so a killed agent's messages and timers are taken over within seconds, not minutes.
FAST_AGENT = {
    "GUESTSYNC_AGENT_VISIBILITY_SECONDS": "6",
    "GUESTSYNC_AGENT_LEASE_SECONDS": "6",
    "GUESTSYNC_AGENT_HEARTBEAT_SECONDS": "2",
    "GUESTSYNC_RECONCILE_SCHEDULE": "*/3 * * * * *",  # a reconcile every 3 s: plenty of chances to overlap
}


class AgentProcess:
    """``python -m shared.cli worker`` with the test's settings, logging to a file of its own."""

    def __init__(self, name: str, tmp_path: Path, **settings: str) -> None:
        self.name = name
        self.log_file = tmp_path / f"agent-{name}.log"
        self.console = tmp_path / f"agent-{name}.out"
        env = {**os.environ, **FAST_AGENT, "GUESTSYNC_LOG_FILE": str(self.log_file), **settings}
        with self.console.open("wb") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "shared.cli", "worker"], cwd=ROOT, env=env,
                                            stdout=out, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_file.read_text(encoding="utf-8") if self.log_file.exists() else ""

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Any]:
    started: list[AgentProcess] = []

    def start(name: str, **settings: str) -> AgentProcess:
        agent = AgentProcess(name, tmp_path, **settings)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.close()


def _queue(name: str) -> QueueClient:
    return QueueClient.from_connection_string(str(bootstrap.services().settings.storage.connection_string), name)


def _count(name: str) -> int:
    client = _queue(name)
    try:
        return len(client.peek_messages(max_messages=32))
    except Exception:  # no such queue: nothing was ever sent to it
        return 0
    finally:
        client.close()


def _invite(stack: Stack, count: int, prefix: str) -> list[str]:
    sim: Any = stack.sim
    return [sim.invite_guest(f"{prefix}{i}@fabrikam.com", f"Partner {prefix}{i}", f"Given{i}", f"Sur{i}")["id"]
            for i in range(count)]


def _provisioned(stack: Stack, uids: list[str]) -> int:
    return sum(1 for uid in uids if (r := stack.state.get(uid)) is not None and r.status is GuestStatus.PROVISIONED
               and r.exported_version == r.version)


def _assert_one_account_each(stack: Stack, uids: list[str], logs: str) -> None:
    accounts = stack.ad_accounts()
    assert sorted(accounts) == sorted(uids), "exactly one AD account per guest, none else"
    for uid in uids:
        record = stack.state.get(uid)
        assert record is not None and record.status is GuestStatus.PROVISIONED, (uid, record)
        sid = accounts[uid]["objectSid"]
        assert record.object_sid == format_sid(bytes(sid[0] if isinstance(sid, list) else sid)), uid
    # The directory adapter logs every add; an export that found its account made by an earlier attempt joins it.
    created = {uid: (logs.count(f"created CN={uid},"), logs.count(f"guest {uid}: created")) for uid in uids}
    assert all(adds <= 1 and outcomes <= 1 for adds, outcomes in created.values()), f"created twice: {created}"


def _reconcile_runs(stack: Stack) -> list[dict[str, Any]]:
    return list(lease_status(stack.state).get("reconciles", []))


_STARTED = re.compile(r"reconcile started by agent (\S+) at (\S+)")
_FINISHED = re.compile(r"reconcile finished by agent (\S+) at (\S+) \(started (\S+)\)")


def _reconcile_spans(log: str, end_of_log: datetime) -> list[tuple[datetime, datetime, str]]:
    """(start, end, agent) of every reconcile in one agent's log; one still running ends at ``end_of_log``."""
    finished = {(m[1], m[3]): datetime.fromisoformat(m[2]) for m in _FINISHED.finditer(log)}
    return [(datetime.fromisoformat(m[2]), finished.get((m[1], m[2]), end_of_log), m[1])
            for m in _STARTED.finditer(log)]


def _assert_no_overlap(spans: list[tuple[datetime, datetime, str]]) -> None:
    spans = sorted(spans)
    for (s1, e1, h1), (s2, e2, h2) in itertools.pairwise(spans):
        assert e1 <= s2, f"two reconciles at once: {h1} {s1}..{e1} and {h2} {s2}..{e2}"


@pytest.mark.parametrize("stack", [AGENT_MODE], indirect=True)
def test_two_agents_share_a_burst_and_one_killed_loses_nothing(stack: Stack, start_agent: Any) -> None:
    """Two agents on one queue, one SIGKILLed mid-burst: every guest exported exactly once (one account,
    provisioned, nothing in poison), the timers taken over, and never two reconciles at once."""
    a, b = start_agent("a"), start_agent("b")
    stack.wait(lambda: len(agents(stack.state)) == 2, "both agents' heartbeats", 60)
    stack.wait(lambda: len(_reconcile_runs(stack)) >= 2, "the first reconciles", 60)
    uids = _invite(stack, 40, "burst")
    stack.wait(lambda: _provisioned(stack, uids) >= 6, "the burst under way", 120)
    holder = lease_status(stack.state).get("holder", "")
    victim, survivor = (a, b) if holder.endswith(f"-{a.pid}") else (b, a)  # kill the timer lease holder
    assert a.log() and b.log(), "both agents write their rotating log file"
    victim.kill()
    killed_at = datetime.now().astimezone()
    assert _provisioned(stack, uids) < len(uids), "the kill came too late to be mid-burst"
    stack.wait(lambda: _provisioned(stack, uids) == len(uids), "every guest provisioned after the kill", 180)
    # The survivor takes the timer lease over within a few lease lengths and runs the reconcile.
    stack.wait(lambda: any(r["holder"].endswith(f"-{survivor.pid}") and r.get("finishedAt")
                           and datetime.fromisoformat(r["startedAt"]) > killed_at for r in _reconcile_runs(stack)),
               "a reconcile by the survivor after the kill", 60)
    stack.wait(lambda: _count(os.environ["GUESTSYNC_EXPORT_QUEUE"]) == 0, "the export queue drained", 60)
    assert survivor.stop() == 0, survivor.log()[-3000:]
    assert "stopped" in survivor.log()
    logs = a.log() + b.log()
    _assert_one_account_each(stack, uids, logs)
    assert _count(os.environ["GUESTSYNC_EXPORT_QUEUE"] + "-poison") == 0, "nothing in the poison queue"
    spans = _reconcile_spans(victim.log(), killed_at) + _reconcile_spans(survivor.log(), datetime.now().astimezone())
    assert len({h for _, _, h in spans}) == 2, "both agents ran reconciles (one before the kill, one after)"
    _assert_no_overlap(spans)
    # guestsync status shows both agents with their age
    status = stack.cli_json("status", "--json", "--no-graph")
    shown = {x["pid"]: x for x in status["agents"]}
    assert {a.pid, b.pid} <= set(shown)
    assert shown[survivor.pid]["status"] == "stopped" and shown[victim.pid]["status"] == "running"
    assert shown[victim.pid]["ageSeconds"] > shown[survivor.pid]["ageSeconds"]
    assert shown[survivor.pid]["exports"] > 0 and shown[survivor.pid]["version"]
    text = stack.cli_text("status", "--no-graph")
    assert f"-{victim.pid}" in text and "Agents (last heartbeat):" in text


@pytest.mark.parametrize("stack", [AGENT_MODE], indirect=True)
def test_sigterm_finishes_or_releases_exports_in_flight(stack: Stack, start_agent: Any) -> None:
    """SIGTERM mid-burst: the agent exits 0 after exports in flight finished; what it held but had not started
    is visible again at once (a new agent finishes the burst long before the 120 s visibility would end)."""
    first = start_agent("first", GUESTSYNC_AGENT_VISIBILITY_SECONDS="120", GUESTSYNC_LDAP_CONNECTIONS="1")
    stack.wait(lambda: len(agents(stack.state)) == 1, "the agent's heartbeat", 60)
    uids = _invite(stack, 30, "term")
    stack.wait(lambda: _provisioned(stack, uids) >= 3, "the burst under way", 120)
    stopped_at = time.monotonic()
    assert first.stop(60) == 0, first.log()[-3000:]
    assert time.monotonic() - stopped_at < 30
    log = first.log()
    assert "stopping: waiting for" in log and "stopped" in log
    done = _provisioned(stack, uids)
    assert done < len(uids), "the stop came too late to be mid-burst"
    second = start_agent("second", GUESTSYNC_AGENT_VISIBILITY_SECONDS="120")
    started = time.monotonic()
    stack.wait(lambda: _provisioned(stack, uids) == len(uids), "the rest of the burst by the second agent", 60)
    assert time.monotonic() - started < 60  # released messages did not wait out their 120 s visibility
    assert second.stop() == 0
    _assert_one_account_each(stack, uids, first.log() + second.log())
    assert _count(os.environ["GUESTSYNC_EXPORT_QUEUE"] + "-poison") == 0


@pytest.mark.parametrize("stack", [AGENT_MODE], indirect=True)
def test_unreachable_directory_releases_exports_without_poisoning_them(stack: Stack, start_agent: Any) -> None:
    """With the DC out of reach, each export is released again and again with back-off (far more than the 5
    dequeues that poison a message) and none reaches the poison queue; once AD is back, all are exported."""
    uids = _invite(stack, 3, "outage")
    export_queue = os.environ["GUESTSYNC_EXPORT_QUEUE"]
    stack.wait(lambda: _count(export_queue) >= 3, "the exports queued", 60)
    dead = start_agent("dead", AD_SERVER="ldaps://127.0.0.1:1", AD_CONNECT_TIMEOUT="1",
                       GUESTSYNC_AGENT_OUTAGE_BACKOFF_SECONDS="1")
    stack.wait(lambda: dead.log().count("directory unavailable; export message") >= 3 * 7,
               "seven releases of each export", 120)
    assert dead.stop() == 0
    assert _count(export_queue + "-poison") == 0, "a directory outage poisoned exports"
    assert _provisioned(stack, uids) == 0
    alive = start_agent("alive")
    stack.wait(lambda: _provisioned(stack, uids) == len(uids), "the exports once AD is back", 60)
    assert alive.stop() == 0
    _assert_one_account_each(stack, uids, alive.log())
    assert _count(export_queue + "-poison") == 0


@pytest.mark.parametrize("stack", [AGENT_MODE], indirect=True)
def test_failing_export_is_poisoned_after_five_dequeues_like_the_host(stack: Stack, start_agent: Any) -> None:
    """A message that fails every time goes to ``<queue>-poison`` after 5 dequeues, as the Functions host does."""
    queue = _queue(os.environ["GUESTSYNC_EXPORT_QUEUE"])
    queue.create_queue()
    queue.send_message(base64.b64encode(json.dumps({"uid": 42}).encode()).decode())  # no valid export message
    agent = start_agent("poison")
    poison = os.environ["GUESTSYNC_EXPORT_QUEUE"] + "-poison"
    stack.wait(lambda: _count(poison) == 1, "the message in the poison queue", 120)
    assert agent.log().count("failed (attempt") == 4 and "failed 5 times" in agent.log()
    assert agent.stop() == 0
    parked = _queue(poison).peek_messages()[0]
    assert json.loads(base64.b64decode(parked.content)) == {"uid": 42}
    bootstrap.reset()


SENDER = "guestsync-alerts@contoso.onmicrosoft.com"
AGENT_MODE_WITH_MAIL = AGENT_MODE | {"GUESTSYNC_MAIL": "graph", "GUESTSYNC_MAIL_TO": "admin@contoso.com",
                                     "GUESTSYNC_MAIL_FROM": SENDER}


@pytest.mark.parametrize("stack", [AGENT_MODE_WITH_MAIL], indirect=True)
def test_azure_side_warns_when_no_agent_was_seen_for_ten_minutes(stack: Stack, start_agent: Any,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """The function app's agent_health timer (worker mode agent): silent while an agent's heartbeat is fresh;
    a warning and one mail once the newest heartbeat is older than 10 minutes."""
    sim: Any = stack.sim
    sim.add_user(userPrincipalName=SENDER, mail=SENDER, displayName="guestsync alerts")
    agent = start_agent("health")
    stack.wait(lambda: len(agents(stack.state)) == 1, "the agent's heartbeat", 60)
    caplog.clear()
    assert stack.host.trigger_timer("agent_health").succeeded
    assert not [r for r in caplog.records if r.name == "guestsync.agent.health"], "a live agent raised a warning"
    assert sim.sent_mail == []
    assert agent.stop() == 0
    # The agent's last heartbeat, as if it had gone quiet 11 minutes ago (a dead server writes nothing more).
    (name, body), = bootstrap.services().state.list_meta("agent-hb-")
    seen = datetime.fromisoformat(body["seenAt"]) - timedelta(minutes=11)
    bootstrap.services().state.put_meta(name, {**body, "seenAt": seen.isoformat()})
    assert stack.host.trigger_timer("agent_health").succeeded
    warnings = [r.getMessage() for r in caplog.records if r.name == "guestsync.agent.health"]
    assert any("no guestsync agent has been seen for 11 minutes" in w for w in warnings), warnings
    (mail,) = sim.sent_mail
    assert "on-premises agents" in mail["subject"] and "11 minutes" in mail["content"]
    assert stack.host.trigger_timer("agent_health").succeeded
    assert len(sim.sent_mail) == 1, "the same silence is mailed once"


def test_timer_lease_has_one_holder_and_expires(azurite: Any, storage_names: dict[str, str]) -> None:
    """The ETag-guarded lease row in Azurite: one holder at a time; another takes it only once it expired; the old
    holder then finds it lost (its guarded writes are refused) instead of running on."""
    from shared.adapters.state import StateStore
    from shared.agent.lease import TimerLease

    state = StateStore.from_connection_string(azurite.connection_string, storage_names["GUESTSYNC_STATE_TABLE"])
    first, second = TimerLease(state, "srv1-1", 3), TimerLease(state, "srv2-2", 3)
    assert first.try_acquire() and first.held
    assert not second.try_acquire() and not second.held
    assert first.try_acquire(), "the holder renews"
    time.sleep(3.2)
    assert not first.held, "a holder whose renewal is older than the lease no longer counts itself the holder"
    assert second.try_acquire() and second.held
    assert not first.update(note="stale") and lease_status(state)["holder"] == "srv2-2"
    assert second.reconcile_started(datetime.now().astimezone())
    second.release()
    assert first.try_acquire(), "a released lease is free at once"
    assert lease_status(state)["reconciles"][0]["holder"] == "srv2-2"
