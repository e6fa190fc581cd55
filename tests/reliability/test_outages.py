"""Processes die and components go away while guests are being provisioned: the worker is killed mid-batch,
the AD DC and the storage account restart. Afterwards every guest has exactly one account (or a readable
error), nothing was written outside the managed OUs, and no password is anywhere.

Real Azurite, Samba AD DC and Graph simulator; the function app on the local runner (worker mode function).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from devtools.localenv.azurite import Azurite
from shared.core.domain import GuestStatus
from tests.plugins.samba import GuestsyncDC
from tests.plugins.stack import Stack
from tests.reliability.faults import Killer, new_host, notification, poisoned, port_of, post, short_leases
from tests.reliability.invariants import assert_invariants

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


def _invite(stack: Stack, count: int, prefix: str) -> list[str]:
    sim: Any = stack.sim
    return [sim.invite_guest(f"{prefix}{i}@fabrikam.com", f"Guest {prefix}{i}", "Given", f"Sur{i}")["id"]
            for i in range(count)]


def test_worker_killed_mid_batch_a_new_host_finishes_the_work(rstack: Stack, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    stack = rstack
    short_leases(monkeypatch, 4)
    killer = Killer(monkeypatch)
    old = stack.host
    port = port_of(old)
    killer.arm(old, after_creates=10)  # right after the 10th account is created, before its join is saved
    uids = _invite(stack, 30, "kill")
    assert killer.wait_dead(60), f"no 10 accounts in 60 s: {stack.summary()}"
    joined = {r.uid for r in stack.state if r.object_sid}
    in_ad = set(stack.ad_accounts())
    assert in_ad - joined, f"the kill left no account without its join in state (refused: {killer.refused})"
    assert len(joined) < 30, "every export had finished before the kill; the scenario proves nothing"

    new_host(stack, tmp_path, port)  # the same queues, state and webhook address
    stack.wait(lambda: stack.settled(uids), "all 30 guests after the restart", timeout=90)
    stack.drain()
    assert all(stack.state.get(u).status is GuestStatus.PROVISIONED for u in uids)  # type: ignore[union-attr]
    assert poisoned() == {"changes": 0, "exports": 0}
    assert_invariants(stack, uids)


def test_dc_down_during_exports_poisons_nothing_and_exports_resume(rstack: Stack, samba_dc: GuestsyncDC,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A DC that goes away (Samba stopped in the middle of a burst) must not poison exports: an unreachable
    directory sends each message back with a growing delay instead of spending the host's 5 dequeues, and the
    exports finish by themselves once the DC is back, with no reconcile."""
    from shared.services import apply

    monkeypatch.setattr(apply, "deferral_delay", lambda deferrals: 1)  # the outage's back-off, shortened
    stack = rstack
    first = _invite(stack, 5, "before")
    stack.wait(lambda: stack.settled(first), "the first accounts")
    # The DC comes back on the same address (a fixed 127.x.y.z:636, in its certificate): AD_SERVER stays valid.
    url = samba_dc.ldaps_url
    during = _invite(stack, 10, "during")
    samba_dc.stop()  # in the middle of the burst
    try:
        # More rounds than the host's 5 dequeues: every message was sent back at least 6 times, none poisoned.
        stack.wait(lambda: "(deferral 6, not counted toward poison)" in caplog.text, "six deferrals", timeout=90)
        assert poisoned() == {"changes": 0, "exports": 0}
    finally:
        samba_dc.start()
    assert samba_dc.ldaps_url == url
    after = _invite(stack, 5, "after")
    stack.wait(lambda: stack.settled(first + during + after), "every export once the DC is back")
    stack.drain()
    assert poisoned() == {"changes": 0, "exports": 0}
    assert_invariants(stack, first + during + after)


def test_storage_restart_while_notifications_arrive_loses_nothing(rstack: Stack, azurite: Azurite,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    stack = rstack
    sim: Any = stack.sim
    short_leases(monkeypatch, 5)  # a message whose settle failed while storage was away: redelivered soon
    first = _invite(stack, 5, "stored")
    stack.wait(lambda: stack.settled(first), "the first accounts")
    before = {u: stack.state.get(u) for u in first}
    azurite.stop()
    try:
        during = _invite(stack, 5, "outage")
        sim.update_user(first[0], givenName="Renamed")
        time.sleep(4)  # notifications arrive and the webhook tries to queue them while storage is away
    finally:
        azurite.start(keep_ports=True)
    after = _invite(stack, 3, "back")
    # Storage kept what it had acknowledged: queues and the state table survive the restart.
    for uid in first:
        record = stack.state.get(uid)
        assert record is not None and before[uid] is not None
        assert record.object_sid == before[uid].object_sid  # type: ignore[union-attr]
    stack.wait(lambda: stack.settled(first + after), "the guests notified around the outage")
    sim.wait_for_deliveries()
    # Graph retries a delivery that failed for hours; the simulator does not, so the reconcile stands in.
    stack.reconcile()
    stack.wait(lambda: stack.settled(first + during + after)
               and stack.state.get(first[0]).entry.given_name == "Renamed", "every guest")  # type: ignore[union-attr]
    stack.drain()
    assert stack.ad_accounts()[first[0]]["givenName"] == ["Renamed"]
    assert poisoned() == {"changes": 0, "exports": 0}
    assert_invariants(stack, first + during + after)


def test_webhook_answers_graph_within_3_seconds_while_storage_is_down(rstack: Stack, azurite: Azurite) -> None:
    stack = rstack
    sim: Any = stack.sim
    azurite.stop()
    try:
        # Graph's own delivery meets the outage too: answered 503, it is delivered again with back-off.
        uid = sim.invite_guest("blocked@fabrikam.com", "Blocked Guest", "Blocked", "Guest")["id"]
        started = time.monotonic()
        try:
            status: int | None = post(stack, {"value": [notification(stack, uid)]}, timeout=3.5)[0]
        except OSError:  # timed out
            status = None
        elapsed = time.monotonic() - started
    finally:
        azurite.start(keep_ports=True)
    # Nothing is lost: the webhook answered 503 at once and Graph delivers the notification again.
    stack.wait(lambda: stack.settled([uid]), "the guest notified during the outage")
    stack.drain()
    assert_invariants(stack, [uid])
    assert status is not None and status >= 500 and elapsed < 3.0, f"answered {status} after {elapsed:.1f} s"
