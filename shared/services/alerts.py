"""Operator alerts by mail: what to send and when, without flooding the admins' mailboxes.

Three kinds of event are mailed (through the mailer of GUESTSYNC_MAIL):

* ``error``: a guest's export ended in a readable AD error (uid, UPN, the error);
* ``held``: the mass-change breaker held a guest's disable/delete (uid, why it left scope, how to approve);
* ``poison``: a message sits in a poison queue (queue, message id, a body excerpt with secrets masked).

Rules, per kind, kept in one state-table meta singleton per kind (``alerts-error``, ``alerts-held``,
``alerts-poison``) and updated with its ETag, so any number of workers agree:

* The first event after a quiet period is mailed at once. Events within ``AlertPolicy.interval`` of the last
  mail are collected and go out as **one digest** (counts and the first few events) when the interval is over:
  with the next event, or from the ``alerts`` timer, whichever comes first. So at most one mail per kind per
  interval.
* The same event (the same guest with the same error, the same held guest, the same poison message) is
  reported once, and again at most once a day while it lasts (reconciles retry guests in error every hour).
* A mail that cannot be sent is logged and its events go back into the next digest; a failure here never
  breaks the export that raised the event (its state is saved before alerts run).

Poison messages are watched by the ``alerts`` timer, which only *peeks* the poison queues: the messages stay
there for the operator.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from shared.core.ports import GuestStore, Mailer, MetaStore, NoMailer, PoisonMessage, PoisonQueues
from shared.core.records import GuestRecord, utcnow
from shared.core.unit_of_work import change_meta

log = logging.getLogger("guestsync.alerts")
META_PREFIX = "alerts-"
MAX_ATTEMPTS = 8
EXCERPT_CHARS = 200
_SECRET_KEY = re.compile(r"secret|passw|pwd|token|clientstate|credential|authorization|signature|sig$|key$",
                         re.IGNORECASE)
_SECRET_TEXT = re.compile(r"(?i)\b(password|passwd|pwd|secret|token|clientstate|client_state|sig|key)"
                          r"(\"?\s*[=:]\s*\"?)([^\s\"&,;}]+)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


class AlertKind(StrEnum):
    ERROR = "error"
    HELD = "held"
    POISON = "poison"
    AGENT = "agent"  # no on-premises agent seen, or the export queue lagging (shared.agent.health)


@dataclass(frozen=True)
class Alert:
    kind: AlertKind
    key: str  # what makes two alerts the same event (deduplicated)
    text: str  # one line in the mail


@dataclass(frozen=True)
class AlertPolicy:
    interval: timedelta = timedelta(minutes=30)  # at most one mail per kind per interval
    max_listed: int = 10  # events listed in one mail; the rest are counted
    remember: timedelta = timedelta(hours=24)  # the same event is reported again after this at the earliest
    max_remembered: int = 500  # bounded, so the singleton stays far below Table Storage's 64 KiB per property
    max_text: int = 300  # characters per listed event


@dataclass(frozen=True)
class Digest:
    kind: AlertKind
    items: tuple[str, ...]
    total: int
    since: datetime


@dataclass(frozen=True)
class AlertLog:
    """One kind's singleton: when the last mail went out, what waits for the next one, what was reported."""

    last_sent: datetime | None = None
    items: tuple[str, ...] = ()  # the first ``max_listed`` events waiting for the next mail
    total: int = 0  # events waiting, listed or not
    since: datetime | None = None  # the first waiting event
    seen: Mapping[str, int] = field(default_factory=dict)  # fingerprint of an event key -> epoch seconds

    def to_body(self) -> dict[str, Any]:
        return {
            "lastSent": self.last_sent.isoformat() if self.last_sent else None,
            "items": list(self.items),
            "total": self.total,
            "since": self.since.isoformat() if self.since else None,
            "seen": dict(self.seen),
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> AlertLog:
        def when(name: str) -> datetime | None:
            value = body.get(name)
            return datetime.fromisoformat(value) if isinstance(value, str) and value else None

        seen = body.get("seen")
        return cls(
            last_sent=when("lastSent"),
            items=tuple(str(i) for i in body.get("items") or ()),
            total=int(body.get("total") or 0),
            since=when("since"),
            seen={str(k): int(v) for k, v in seen.items()} if isinstance(seen, dict) else {},
        )


# ---------------------------------------------------------------------------------------------- pure rules


def fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def _clip(text: str, limit: int) -> str:
    text = _CONTROL.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def record(log_: AlertLog, alerts: Iterable[Alert], now: datetime, policy: AlertPolicy = AlertPolicy()) -> AlertLog:
    """Add the events not reported within ``policy.remember`` to what waits for the next mail."""
    stamp = int(now.timestamp())
    horizon = stamp - int(policy.remember.total_seconds())
    seen = {k: t for k, t in log_.seen.items() if t > horizon}
    items, total, since = list(log_.items), log_.total, log_.since
    for alert in alerts:
        mark = fingerprint(f"{alert.kind}:{alert.key}")
        if mark in seen:
            continue
        seen[mark] = stamp
        total += 1
        since = since or now
        if len(items) < policy.max_listed:
            items.append(_clip(alert.text, policy.max_text))
    if len(seen) > policy.max_remembered:  # forget the oldest first
        seen = dict(sorted(seen.items(), key=lambda kv: kv[1])[-policy.max_remembered:])
    return AlertLog(log_.last_sent, tuple(items), total, since, seen)


def take_due(log_: AlertLog, kind: AlertKind, now: datetime, policy: AlertPolicy = AlertPolicy()
             ) -> tuple[AlertLog, Digest | None]:
    """The digest to mail now, if events wait and the last mail of this kind is at least ``interval`` old."""
    if log_.total == 0 or (log_.last_sent is not None and now - log_.last_sent < policy.interval):
        return log_, None
    digest = Digest(kind, log_.items, log_.total, log_.since or now)
    return AlertLog(last_sent=now, seen=log_.seen), digest


def give_back(log_: AlertLog, digest: Digest, policy: AlertPolicy = AlertPolicy()) -> AlertLog:
    """A digest that could not be sent: its events wait again, ahead of newer ones (last_sent stays, so the
    next try is one interval later, not at every event)."""
    items = (digest.items + log_.items)[: policy.max_listed]
    since = min(digest.since, log_.since) if log_.since else digest.since
    return replace(log_, items=items, total=log_.total + digest.total, since=since)


_HEADLINES = {
    AlertKind.ERROR: ("{n} guest(s) could not be exported to Active Directory",
                      "guestsync could not create or update the shadow AD account of these guests"),
    AlertKind.HELD: ("{n} deprovisioning(s) held by the mass-change breaker",
                     "The mass-change breaker held the disable/delete of these guests' accounts; nothing was "
                     "changed in AD for them"),
    AlertKind.POISON: ("{n} message(s) parked in a poison queue",
                       "These queue messages failed 5 times and were moved to a poison queue, where they stay"),
    AlertKind.AGENT: ("{n} warning(s) about the on-premises agents",
                      "The on-premises agents (`guestsync worker`) look unhealthy"),
}
_ADVICE = {
    AlertKind.ERROR: "Fix the cause (in AD, or the guest's attributes in Entra ID); every reconcile retries guests "
                     "in error. `guestsync status` lists all guests in error with their error.",
    AlertKind.HELD: "Check why so many guests left scope at once (a bulk delete in Entra ID? the scoping group "
                    "emptied?). Then release them with `guestsync approve --all` (or `guestsync approve <id> ...`), "
                    "or keep their accounts with `guestsync approve --reject <id> ...`; `guestsync approve` lists "
                    "them.",
    AlertKind.POISON: "Find the cause (an unreachable domain controller: DNS, firewall TCP 636, certificate; see "
                      "the function logs), fix it, then move the messages back to the queue named without "
                      "'-poison'. `guestsync status` shows the queues.",
    AlertKind.AGENT: "Check the agent servers: the service (systemd `guestsync-agent`, Windows `GuestsyncAgent`), "
                     "its log file, outbound HTTPS 443 to the storage account, Graph and sign-in, and LDAPS 636 to "
                     "the DCs. `guestsync status` lists the agents with the age of their last heartbeat.",
}


def render(digest: Digest, policy: AlertPolicy = AlertPolicy()) -> tuple[str, str]:
    """(subject, plain-text body) of one digest mail."""
    title, intro = _HEADLINES[digest.kind]
    subject = "[guestsync] " + title.format(n=digest.total)
    lines = [f"{intro} (since {digest.since.astimezone(UTC):%Y-%m-%d %H:%M} UTC):", ""]
    lines += [f"  - {item}" for item in digest.items]
    if digest.total > len(digest.items):
        lines.append(f"  ... and {digest.total - len(digest.items)} more")
    minutes = int(policy.interval.total_seconds() // 60)
    lines += ["", _ADVICE[digest.kind], "", "-- ",
              f"guestsync sends at most one mail of this kind every {minutes} minutes and reports the same event "
              "again after a day at the earliest."]
    return subject, "\n".join(lines) + "\n"


def export_alert(uid: str, action: str, detail: str, record_: GuestRecord | None) -> Alert | None:
    """The alert for an export outcome (``error`` or ``held``), None for any other outcome."""
    upn = (record_.entry.user_principal_name if record_ else None) or "UPN unknown"
    if action == "error":
        error = detail or (record_.error if record_ else None) or "unknown error"
        return Alert(AlertKind.ERROR, f"{uid}:{error}", f"{uid} ({upn}): {error}")
    if action == "held":
        why = (record_.reason if record_ else None) or "left scope"
        return Alert(AlertKind.HELD, uid, f"{uid} ({upn}): {why}; {detail}")
    return None


def excerpt(body: bytes, limit: int = EXCERPT_CHARS) -> str:
    """A readable start of a queue message with values of secret-looking keys masked."""
    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict | list):
        text = json.dumps(_mask(data), ensure_ascii=False, separators=(",", ":"))
    else:
        text = _SECRET_TEXT.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    return _clip(text, limit)


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "***" if _SECRET_KEY.search(str(k)) else _mask(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    if isinstance(value, str):
        return _SECRET_TEXT.sub(lambda m: f"{m.group(1)}{m.group(2)}***", value)
    return value


# ----------------------------------------------------------------------------------------------- poison queues


def poison_alert(message: PoisonMessage) -> Alert:
    when = f", parked {message.inserted_on.astimezone(UTC):%Y-%m-%d %H:%M} UTC" if message.inserted_on else ""
    return Alert(AlertKind.POISON, f"{message.queue}:{message.id}",
                 f"{message.queue}: message {message.id}{when}: {excerpt(message.body)}")


# --------------------------------------------------------------------------------------------------- service



class Alerts:
    """Records events and mails digests. Never raises: a failure is logged (alerts must not break exports)."""

    def __init__(self, state: MetaStore, mailer: Mailer, policy: AlertPolicy | None = None,
                 now: Callable[[], datetime] = utcnow) -> None:
        self._state, self._mailer, self._policy, self._now = state, mailer, policy or AlertPolicy(), now

    @property
    def enabled(self) -> bool:
        return not isinstance(self._mailer, NoMailer)

    async def notify(self, alerts: Sequence[Alert]) -> int:
        """Record events (deduplicated) and mail each kind whose interval is over; returns mails sent."""
        if not self.enabled:
            return 0
        sent = 0
        for kind in AlertKind:
            batch = [a for a in alerts if a.kind is kind]
            if batch:
                sent += await self._run(kind, batch)
        return sent

    async def flush(self) -> int:
        """Mail the digests that are due (events collected during the interval); returns mails sent."""
        if not self.enabled:
            return 0
        sent = 0
        for kind in AlertKind:
            sent += await self._run(kind, [])
        return sent

    async def _run(self, kind: AlertKind, alerts: list[Alert]) -> int:
        try:
            digest = self._update(kind, lambda log_, now: take_due(record(log_, alerts, now, self._policy), kind,
                                                                   now, self._policy))
        except Exception as exc:
            log.error("alerts (%s): could not record %d event(s) in the state table: %s", kind, len(alerts), exc)
            return 0
        if digest is None:
            return 0
        subject, body = render(digest, self._policy)
        try:
            await self._mailer.send(subject, body)
        except Exception as exc:
            log.error("alerts (%s): could not send the mail %r: %s", kind, subject, exc)
            try:
                self._update(kind, lambda log_, _: (give_back(log_, digest, self._policy), None))
            except Exception as again:
                log.error("alerts (%s): could not keep the unsent events for the next mail: %s", kind, again)
            return 0
        log.info("alerts (%s): mailed %r", kind, subject)
        return 1

    def _update(self, kind: AlertKind,
                change: Callable[[AlertLog, datetime], tuple[AlertLog, Digest | None]]) -> Digest | None:
        """Read-modify-write of the kind's singleton under its ETag; only the winning writer gets the digest."""
        def decide(body: dict[str, Any]) -> tuple[dict[str, Any] | None, Digest | None]:
            current = AlertLog.from_body(body)
            new, digest = change(current, self._now())
            return (None if new == current else new.to_body()), digest

        return change_meta(self._state, META_PREFIX + kind.value, decide, attempts=MAX_ATTEMPTS)


async def report_export(uid: str, action: str, detail: str, state: GuestStore, mailer: Mailer) -> None:
    """After an export: alert on ``error`` and ``held``. Never raises."""
    if action not in ("error", "held") or isinstance(mailer, NoMailer):
        return
    try:
        alert = export_alert(uid, action, detail, state.get(uid))
    except Exception as exc:
        log.error("alerts: could not read guest %s for its alert: %s", uid, exc)
        alert = export_alert(uid, action, detail, None)
    if alert is not None:
        await Alerts(state, mailer).notify([alert])


async def watch_poison(state: MetaStore, mailer: Mailer, queues: PoisonQueues, names: Sequence[str]) -> int:
    """The alerts timer: report poison messages not reported yet (peeked, left in place) and send due
    digests. Returns mails sent. Never raises."""
    service = Alerts(state, mailer)
    if not service.enabled:
        return 0
    found: list[Alert] = []
    for name in names:
        try:
            found += [poison_alert(m) for m in queues.peek(name)]
        except Exception as exc:
            log.error("alerts: could not peek poison queue %s: %s", name, exc)
    sent = await service.notify(found) if found else 0
    return sent + await service.flush()
