"""Alert rules, pure: deduplication, digests and the per-kind rate limit; and the service over an in-memory
meta store with a recording mailer (the shared fakes in tests/fakes.py; no network)."""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.core.domain import GraphUser, GuestStatus
from shared.core.ports import NoMailer, PoisonMessage
from shared.core.records import GuestRecord
from shared.core.rules import inbound
from shared.services.alerts import (
    Alert,
    AlertKind,
    AlertLog,
    AlertPolicy,
    Alerts,
    excerpt,
    export_alert,
    give_back,
    poison_alert,
    record,
    render,
    take_due,
    watch_poison,
)
from tests.fakes import MemoryGuestStore, MemoryPoisonQueues, RecordingMailer

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
POLICY = AlertPolicy()


def err(key: str, text: str | None = None) -> Alert:
    return Alert(AlertKind.ERROR, key, text or f"guest {key}: boom")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


# ------------------------------------------------------------------------------------------------ pure rules


def test_first_event_is_due_at_once_then_rate_limited_then_digested() -> None:
    log0 = record(AlertLog(), [err("a")], T0)
    log1, digest = take_due(log0, AlertKind.ERROR, T0)
    assert digest is not None and digest.total == 1 and digest.items == ("guest a: boom",)
    assert log1.last_sent == T0 and log1.total == 0 and log1.items == ()

    log2 = record(log1, [err("b"), err("c")], T0 + timedelta(minutes=5))
    log3, none = take_due(log2, AlertKind.ERROR, T0 + timedelta(minutes=29))
    assert none is None and log3 == log2 and log2.total == 2
    _, digest = take_due(log2, AlertKind.ERROR, T0 + timedelta(minutes=30))
    assert digest is not None and digest.total == 2 and digest.since == T0 + timedelta(minutes=5)


def test_nothing_waiting_means_no_mail() -> None:
    assert take_due(AlertLog(), AlertKind.HELD, T0) == (AlertLog(), None)


def test_same_event_is_reported_once_a_day_at_most() -> None:
    log0 = record(AlertLog(), [err("a"), err("a")], T0)
    assert log0.total == 1
    log1, _ = take_due(log0, AlertKind.ERROR, T0)
    assert record(log1, [err("a")], T0 + timedelta(hours=23)).total == 0
    assert record(log1, [err("a")], T0 + timedelta(hours=24, seconds=1)).total == 1
    # Different kinds or keys are different events.
    assert record(log1, [Alert(AlertKind.HELD, "a", "held a"), err("a2")], T0).total == 2


def test_digest_lists_the_first_few_and_counts_the_rest() -> None:
    log0 = record(AlertLog(), [err(str(i)) for i in range(25)], T0)
    assert log0.total == 25 and len(log0.items) == POLICY.max_listed
    _, digest = take_due(log0, AlertKind.ERROR, T0)
    assert digest is not None
    subject, body = render(digest)
    assert subject == "[guestsync] 25 guest(s) could not be exported to Active Directory"
    assert "  - guest 0: boom" in body and "guest 10: boom" not in body
    assert "... and 15 more" in body and "guestsync status" in body


def test_event_text_is_one_clipped_line() -> None:
    log0 = record(AlertLog(), [err("a", "line one\nline two\r\t" + "x" * 1000)], T0)
    (item,) = log0.items
    assert "\n" not in item and "\r" not in item and len(item) == POLICY.max_text and item.endswith("…")


def test_a_failed_mail_gives_its_events_back_for_the_next_interval() -> None:
    log0 = record(AlertLog(), [err("a")], T0)
    log1, digest = take_due(log0, AlertKind.ERROR, T0)
    assert digest is not None
    log2 = record(log1, [err("b")], T0 + timedelta(minutes=1))
    back = give_back(log2, digest)
    assert back.total == 2 and back.items == ("guest a: boom", "guest b: boom") and back.since == T0
    assert back.last_sent == T0  # not retried at every event: once per interval
    assert take_due(back, AlertKind.ERROR, T0 + timedelta(minutes=10))[1] is None
    _, retry = take_due(back, AlertKind.ERROR, T0 + timedelta(minutes=30))
    assert retry is not None and retry.total == 2


def test_remembered_events_are_bounded_and_the_singleton_stays_small() -> None:
    policy = AlertPolicy()
    log0 = AlertLog()
    for i in range(2000):
        log0 = record(log0, [err(f"{i:036d}", "e" * 1000)], T0 + timedelta(seconds=i), policy)
    assert len(log0.seen) == policy.max_remembered
    assert log0.total == 2000 and len(log0.items) == policy.max_listed
    text = json.dumps(log0.to_body(), ensure_ascii=False)
    assert len(text) < 32_000  # Table Storage: 64 KiB (32K UTF-16 characters) per string property
    # The newest are the ones remembered.
    assert record(log0, [err(f"{1999:036d}")], T0 + timedelta(hours=1), policy).total == 2000


def test_log_round_trips_through_the_meta_body() -> None:
    log0, _ = take_due(record(AlertLog(), [err("a")], T0), AlertKind.ERROR, T0)
    log1 = record(log0, [err("b")], T0 + timedelta(minutes=1))
    assert AlertLog.from_body(json.loads(json.dumps(log1.to_body()))) == log1
    assert AlertLog.from_body({}) == AlertLog()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 600), st.integers(0, 12), st.booleans()), max_size=60))
def test_at_most_one_mail_per_interval_and_no_event_lost(steps: list[tuple[int, int, bool]]) -> None:
    """Random events (minute, key) and timer ticks: mails of a kind are at least one interval apart, and every
    fresh event is either mailed or still waiting."""
    log0, mails, fresh = AlertLog(), [], 0
    minute = 0
    seen_at: dict[int, int] = {}
    for delta, key, tick in steps:
        minute += delta
        now = T0 + timedelta(minutes=minute)
        events = [] if tick else [err(str(key))]
        if events and (key not in seen_at or minute - seen_at[key] >= 24 * 60):  # remembered for a day
            fresh += 1
            seen_at[key] = minute
        log0, digest = take_due(record(log0, events, now), AlertKind.ERROR, now)
        if digest is not None:
            mails.append((now, digest.total))
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(mails)]
    assert all(gap >= POLICY.interval for gap in gaps)
    assert sum(total for _, total in mails) + log0.total == fresh


def test_held_mail_says_how_to_approve_and_poison_mail_where_the_messages_are() -> None:
    _, held = take_due(record(AlertLog(), [Alert(AlertKind.HELD, "u", "u (x): deleted")], T0), AlertKind.HELD, T0)
    assert held is not None
    subject, body = render(held)
    assert "held by the mass-change breaker" in subject
    assert "guestsync approve --all" in body and "guestsync approve --reject" in body
    message = PoisonMessage("guestsync-exports-poison", "m-1", T0, b'{"uid": "abc", "version": 2}')
    _, poison = take_due(record(AlertLog(), [poison_alert(message)], T0), AlertKind.POISON, T0)
    assert poison is not None
    subject, body = render(poison)
    assert subject == "[guestsync] 1 message(s) parked in a poison queue"
    assert 'guestsync-exports-poison: message m-1, parked 2025-03-01 12:00 UTC: {"uid":"abc","version":2}' in body
    assert "stay" in body


def test_excerpt_masks_secrets_and_stays_short() -> None:
    body = json.dumps({"uid": "u1", "clientState": "s3cret-state", "nested": {"password": "hunter2",
                       "note": "token=abc123 and key: xyz"}, "list": [{"client_secret": "cs"}]}).encode()
    text = excerpt(body)
    for secret in ("s3cret-state", "hunter2", "abc123", "xyz", '"cs"'):
        assert secret not in text
    assert '"uid":"u1"' in text and '"clientState":"***"' in text
    plain = excerpt(b"not json; password=hunter2 \x00\x01 " + b"a" * 500)
    assert "hunter2" not in plain and "password=***" in plain and "\x00" not in plain
    assert len(plain) == 200
    assert excerpt(b"\xff\xfe binary").startswith("\ufffd")


def _record(status: GuestStatus = GuestStatus.ERROR, **changes: Any) -> GuestRecord:
    entry = inbound(GraphUser(id="3f1c7a9e-0000-4000-8000-000000000001", user_type="Guest", display_name="Ann",
                              given_name="Ann", surname="Lee",
                              user_principal_name="ann_fabrikam.com#EXT#@contoso.onmicrosoft.com",
                              mail="ann@fabrikam.com", mobile_phone=None, account_enabled=True))
    return GuestRecord(uid=entry.uid, entry=entry, status=status, **changes)


def test_export_outcomes_become_alerts() -> None:
    rec = _record(error="userPrincipalName … is already used")
    alert = export_alert(rec.uid, "error", "userPrincipalName … is already used", rec)
    assert alert is not None and alert.kind is AlertKind.ERROR
    upn = "ann_fabrikam.com#EXT#@contoso.onmicrosoft.com"
    assert alert.text == f"{rec.uid} ({upn}): userPrincipalName … is already used"
    held = export_alert(rec.uid, "held", "held by the mass-change breaker: …", _record(GuestStatus.HELD,
                                                                                      reason="deleted in Entra ID"))
    assert held is not None and held.kind is AlertKind.HELD and held.key == rec.uid
    assert "deleted in Entra ID" in held.text and "mass-change breaker" in held.text
    assert export_alert("x", "error", "", None) == Alert(AlertKind.ERROR, "x:unknown error",
                                                         "x (UPN unknown): unknown error")
    for action in ("created", "updated", "unchanged", "disabled", "skipped"):
        assert export_alert(rec.uid, action, "", rec) is None


# ------------------------------------------------------------------------------------------------- service


def test_service_mails_first_then_digests_on_flush() -> None:
    store, outbox, clock = MemoryGuestStore(), RecordingMailer(), Clock()
    alerts = Alerts(store, outbox, now=clock)
    assert asyncio.run(alerts.notify([err("a")])) == 1
    assert asyncio.run(alerts.notify([err("b")])) == 0
    assert asyncio.run(alerts.notify([err("a")])) == 0  # the same event again
    assert asyncio.run(alerts.flush()) == 0
    clock.now += timedelta(minutes=31)
    assert asyncio.run(alerts.flush()) == 1
    assert asyncio.run(alerts.flush()) == 0
    assert [s for s, _ in outbox.sent] == ["[guestsync] 1 guest(s) could not be exported to Active Directory"] * 2
    assert "guest b: boom" in outbox.sent[1][1]


def test_service_retries_lost_races_and_sends_one_mail() -> None:
    store, outbox = MemoryGuestStore(), RecordingMailer()
    asyncio.run(Alerts(store, outbox).notify([err("a")]))
    store.conflicts = 3
    asyncio.run(Alerts(store, outbox).notify([Alert(AlertKind.HELD, "h", "held h")]))
    assert len(outbox.sent) == 2


def test_service_gives_up_quietly_when_the_store_keeps_changing(caplog: pytest.LogCaptureFixture) -> None:
    store, outbox = MemoryGuestStore(), RecordingMailer()
    store.conflicts = 100
    assert asyncio.run(Alerts(store, outbox).notify([err("a")])) == 0
    assert outbox.sent == [] and "could not record" in caplog.text


def test_a_failing_mailer_never_raises_and_keeps_the_events(caplog: pytest.LogCaptureFixture) -> None:
    store, clock = MemoryGuestStore(), Clock()
    assert asyncio.run(Alerts(store, RecordingMailer(fail=True), now=clock).notify([err("a")])) == 0
    assert "could not send the mail" in caplog.text and "smtp.invalid" in caplog.text
    body, _ = store.get_meta("alerts-error")
    assert AlertLog.from_body(body).total == 1
    outbox = RecordingMailer()
    assert asyncio.run(Alerts(store, outbox, now=clock).notify([err("b")])) == 0  # within the interval
    clock.now += timedelta(minutes=30)
    assert asyncio.run(Alerts(store, outbox, now=clock).flush()) == 1
    assert "[guestsync] 2 guest(s)" in outbox.sent[0][0]


def test_no_mailer_touches_nothing() -> None:
    store = MemoryGuestStore()
    assert asyncio.run(Alerts(store, NoMailer()).notify([err("a")])) == 0
    assert asyncio.run(watch_poison(store, NoMailer(), MemoryPoisonQueues([]), ["q-poison"])) == 0
    assert not store.meta_calls  # not even a read


def test_poison_messages_are_reported_once_and_left_alone() -> None:
    store, outbox = MemoryGuestStore(), RecordingMailer()
    queues = MemoryPoisonQueues([PoisonMessage("x-poison", f"id{i}", T0, b"{}") for i in range(3)])
    assert asyncio.run(watch_poison(store, outbox, queues, ["x-poison", "y-poison"])) == 1
    assert "3 message(s)" in outbox.sent[0][0]
    assert asyncio.run(watch_poison(store, outbox, queues, ["x-poison", "y-poison"])) == 0
    assert len(queues.messages) == 3 and queues.peeked == 4
