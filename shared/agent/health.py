"""Agent heartbeats in the state table, and the Azure side's watch over them.

Each agent writes one meta row ``agent-<host>-<pid>`` about every minute: host, pid, version, start time, last
export, last reconcile, and the export queue's lag (age of the oldest visible message and approximate count).
``guestsync status`` lists them with their age; the function app's ``agent_health`` timer (worker mode agent)
warns when no agent has been seen for 10 minutes or the oldest export message is older than 10 minutes: a log
record at warning, the ``guestsync.agent.problems`` metric, and a mail when mail is on.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from opentelemetry import metrics

from shared.adapters.state import StateStore
from shared.core.records import utcnow
from shared.services.alerts import Alert, AlertKind, Alerts

log = logging.getLogger("guestsync.agent.health")
HEARTBEAT_PREFIX = "agent-hb-"
#: No agent seen for this long, or an export message waiting this long: the Azure side warns.
STALE_AFTER = timedelta(minutes=10)
#: Heartbeats of agents gone for this long are removed (a restarted agent writes a row of its own).
FORGET_AFTER = timedelta(days=7)

_meter = metrics.get_meter("guestsync")
AGENT_PROBLEMS = _meter.create_counter(
    "guestsync.agent.problems", description="Agent health warnings: no agent seen, export queue lagging")
EXPORT_QUEUE_AGE = _meter.create_histogram(
    "guestsync.export.queue.age", unit="s", description="Age of the oldest visible export message")


def agent_version() -> str:
    try:
        return importlib.metadata.version("guestsync")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def heartbeat_row(agent_id: str) -> str:
    return HEARTBEAT_PREFIX + agent_id


def agents(state: StateStore, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every agent's last heartbeat with its age in seconds, newest first."""
    now = now or utcnow()
    found = []
    for _, body in state.list_meta(HEARTBEAT_PREFIX):
        seen = body.get("seenAt")
        age = (now - datetime.fromisoformat(seen)).total_seconds() if isinstance(seen, str) else None
        found.append({**body, "ageSeconds": None if age is None else round(age, 1)})
    return sorted(found, key=lambda a: a["ageSeconds"] if a["ageSeconds"] is not None else float("inf"))


def forget_old(state: StateStore, now: datetime | None = None) -> int:
    """Remove heartbeats older than FORGET_AFTER; returns how many."""
    now = now or utcnow()
    gone = 0
    for name, body in list(state.list_meta(HEARTBEAT_PREFIX)):
        seen = body.get("seenAt")
        if isinstance(seen, str) and now - datetime.fromisoformat(seen) > FORGET_AFTER:
            state.delete_meta(name)
            gone += 1
    return gone


@dataclass(frozen=True)
class HealthProblem:
    kind: str  # no-agent | export-lag
    key: str  # what makes two warnings the same event (mail deduplication)
    text: str


def problems(heartbeats: Sequence[dict[str, Any]], oldest_export: tuple[str, datetime] | None,
             now: datetime) -> list[HealthProblem]:
    """What the Azure side warns about: no heartbeat for STALE_AFTER; an export message older than STALE_AFTER
    (``oldest_export``: id and insertion time of the oldest visible one)."""
    found: list[HealthProblem] = []
    ages = [a for a in heartbeats if a.get("ageSeconds") is not None]
    newest = min(ages, key=lambda a: a["ageSeconds"]) if ages else None
    if newest is None:
        found.append(HealthProblem("no-agent", "no-agent:never",
                                   "no guestsync agent has ever reported (is `guestsync worker` installed and "
                                   "running on-premises?)"))
    elif newest["ageSeconds"] > STALE_AFTER.total_seconds():
        minutes = int(newest["ageSeconds"] // 60)
        found.append(HealthProblem(
            "no-agent", f"no-agent:{newest.get('seenAt')}",
            f"no guestsync agent has been seen for {minutes} minutes (last: {newest.get('host')} pid "
            f"{newest.get('pid')} at {newest.get('seenAt')}); exports wait and the reconcile does not run"))
    if oldest_export is not None:
        message_id, inserted = oldest_export
        age = now - inserted
        if age > STALE_AFTER:
            found.append(HealthProblem(
                "export-lag", f"export-lag:{message_id}",
                f"the oldest export message has waited {int(age.total_seconds() // 60)} minutes (message "
                f"{message_id}, queued {inserted.isoformat()}): the agents do not keep up or cannot reach AD"))
    return found


def oldest_message(queue_client: Any) -> tuple[str, datetime] | None:
    """Id and insertion time of the first visible message of a queue (one peek), None when it is empty."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        peeked = list(queue_client.peek_messages(max_messages=1))
    except ResourceNotFoundError:
        return None
    if not peeked or peeked[0].inserted_on is None:
        return None
    return str(peeked[0].id), peeked[0].inserted_on


async def watch_agents(state: StateStore, export_queue_client: Any, mailer: Any) -> list[HealthProblem]:
    """The function app's ``agent_health`` timer (worker mode agent): warn, count, and mail (when mail is on)."""
    now = utcnow()
    oldest = oldest_message(export_queue_client)
    if oldest is not None:
        EXPORT_QUEUE_AGE.record((now - oldest[1]).total_seconds())
    found = problems(agents(state, now), oldest, now)
    for problem in found:
        log.warning("agent health: %s", problem.text)
        AGENT_PROBLEMS.add(1, {"problem": problem.kind})
    if found:
        await Alerts(state, mailer).notify([Alert(AlertKind.AGENT, p.key, p.text) for p in found])
    return found
