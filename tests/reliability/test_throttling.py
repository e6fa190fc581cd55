"""Graph throttles (429) or is unavailable (503), with Retry-After, while guests are invited: the SDK's retry
handler retries first, then apply queues the change again with a delay (throttling does not spend the
message's dequeues); no guest is lost and nothing is poisoned.

Real Azurite, Samba AD DC and Graph simulator (its ``throttle`` answers the next requests with the status);
the function app on the local runner.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from shared.services import apply
from tests.plugins.stack import Stack
from tests.reliability.faults import poisoned
from tests.reliability.invariants import assert_invariants

pytestmark = [pytest.mark.integration, pytest.mark.reliability]
GUESTS = 8
#: Ten times more throttled answers in a row than the SDK retries for one request (1 + 3): the change is deferred
#: again and again, more often than the queue's five dequeues would allow, and must still not be poisoned.
STORM = 40


@pytest.mark.parametrize("status", [429, 503])
def test_throttling_storm_while_guests_are_invited_loses_nothing(rstack: Stack, status: int,
                                                                caplog: pytest.LogCaptureFixture,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    stack = rstack
    sim: Any = stack.sim
    monkeypatch.setattr(apply, "MAX_DEFERRAL_SECONDS", 2)  # keep the test short; the schedule is unit-tested
    sim.throttle(STORM, retry_after=1, status=status)
    uids = [sim.invite_guest(f"storm{i}@fabrikam.com", f"Storm {i}", "Storm", f"Guest{i}")["id"]
            for i in range(GUESTS)]
    stack.wait(lambda: stack.settled(uids), f"every guest through the {status} storm", timeout=120)
    # Guests delivered together are read together (GET /users?$filter=id in …), one at a time otherwise.
    reads = sim.request_count["GET /users/{id}"] + sim.request_count["GET /users"]
    assert reads > STORM, f"only {reads} user reads: the storm was not met"
    assert len(sim.deliveries.sent) >= GUESTS and not sim.deliveries.failed  # the webhook answered Graph at once
    messages = [r.getMessage() + (r.exc_text or "") for r in caplog.records]
    assert any(f"Graph answered {status}" in m for m in messages), "no read outlasted the SDK's retries"
    assert any(re.search(r"read again in \d+ s \(deferral 1 of", m) for m in messages), "no change was deferred"

    # A shorter storm during the reconcile is absorbed by the SDK's retries (3 per request).
    sim.update_user(uids[0], givenName="AfterStorm")
    stack.wait(lambda: stack.state.get(uids[0]).entry.given_name == "AfterStorm", "the change")  # type: ignore[union-attr]
    sim.throttle(3, retry_after=1, status=status)
    report = stack.reconcile()
    assert report["graphUsers"] >= GUESTS
    stack.wait(lambda: stack.settled(uids), "convergence")
    stack.drain()
    assert stack.ad_accounts()[uids[0]]["givenName"] == ["AfterStorm"]
    assert poisoned() == {"changes": 0, "exports": 0}
    assert_invariants(stack, uids)
