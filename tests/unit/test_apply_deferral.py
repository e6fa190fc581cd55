"""A change that Graph keeps throttling is queued again with a growing delay, without spending its dequeues."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from shared.core.errors import GraphError, GraphThrottledError
from shared.core.messages import ChangeMessage
from shared.services import apply
from tests.fakes import MemoryGraph, MemoryGuestStore

USER = "6ea91a8d-e32e-41a1-b7bd-d2d185eed0e0"


def test_deferral_delay_doubles_up_to_a_minute_with_jitter() -> None:
    middle = [apply.deferral_delay(n, rand=lambda: 0.5) for n in range(8)]
    assert middle == [2, 4, 8, 16, 32, 60, 60, 60]
    assert apply.deferral_delay(3, rand=lambda: 0.0) == 12 and apply.deferral_delay(3, rand=lambda: 1.0) == 20
    assert all(1 <= apply.deferral_delay(n, rand=lambda: 0.999) <= apply.MAX_DEFERRAL_SECONDS for n in range(50))


def _throttled(error: Exception) -> MemoryGraph:
    graph = MemoryGraph()
    graph.fail_with = error
    return graph


def _run(message: ChangeMessage, graph: MemoryGraph, requeued: list[tuple[str, int]]) -> list[Any]:
    state = MemoryGuestStore()
    try:
        return asyncio.run(apply.apply_or_defer(message, graph, state, lambda _: None,
                                                lambda body, delay: requeued.append((body, delay))))
    finally:
        assert not state.calls and graph.reads == 1  # never reached: the read fails first


def test_a_throttled_batch_is_queued_again_whole_with_one_more_deferral() -> None:
    requeued: list[tuple[str, int]] = []
    message = ChangeMessage(USER, "updated", "2026-11-23T00:00:00+00:00", correlation_id="c",
                            more_user_ids=("a", "b"), deferrals=1)
    assert _run(message, _throttled(GraphThrottledError(429, "TooManyRequests", "slow down")), requeued) == []
    [(text, delay)] = requeued
    again = ChangeMessage.from_json(text)
    assert again.user_ids == message.user_ids and again.correlation_id == "c" and again.deferrals == 2
    assert 3 <= delay <= 5
    assert json.loads(text)["received_at"] == message.received_at  # latency still counts from the first receipt


def test_the_deferral_budget_ends_in_the_queues_own_retries() -> None:
    requeued: list[tuple[str, int]] = []
    message = ChangeMessage(USER, "updated", "", deferrals=apply.MAX_DEFERRALS)
    with pytest.raises(GraphThrottledError):
        _run(message, _throttled(GraphThrottledError(503, None, "unavailable")), requeued)
    assert requeued == []


def test_other_graph_errors_are_not_deferred() -> None:
    requeued: list[tuple[str, int]] = []
    with pytest.raises(GraphError):
        _run(ChangeMessage(USER, "updated", ""), _throttled(GraphError(500, None, "boom")), requeued)
    assert requeued == []
