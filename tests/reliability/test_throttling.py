"""Graph throttles (429) or is unavailable (503), with Retry-After, while guests are invited: the SDK's retry
handler retries first, then the change queue retries the message; no guest is lost and nothing is poisoned.

Real Azurite, Samba AD DC and Graph simulator (its ``throttle`` answers the next requests with the status);
the function app on the local runner.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.plugins.stack import Stack
from tests.reliability.faults import poisoned
from tests.reliability.invariants import assert_invariants

pytestmark = [pytest.mark.integration, pytest.mark.reliability]
GUESTS = 8
STORM = 40  # more throttled answers in a row than the SDK retries (3) for one request: the queue must retry


@pytest.mark.parametrize("status", [429, 503])
def test_throttling_storm_while_guests_are_invited_loses_nothing(rstack: Stack, status: int,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    stack = rstack
    sim: Any = stack.sim
    sim.throttle(STORM, retry_after=1, status=status)
    uids = [sim.invite_guest(f"storm{i}@fabrikam.com", f"Storm {i}", "Storm", f"Guest{i}")["id"]
            for i in range(GUESTS)]
    stack.wait(lambda: stack.settled(uids), f"every guest through the {status} storm", timeout=120)
    reads = sim.request_count["GET /users/{id}"]
    assert reads >= STORM + GUESTS, f"only {reads} user reads: the storm was not met"
    assert len(sim.deliveries.sent) >= GUESTS and not sim.deliveries.failed  # the webhook answered Graph at once
    messages = [r.getMessage() + (r.exc_text or "") for r in caplog.records]
    assert any(f"Graph answered {status}" in m for m in messages), "no read outlasted the SDK's retries"
    assert any(re.search(r"DequeueCount: [2-9]", m) for m in messages), "the change queue never retried"

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
