"""The webhook's group commit: POSTs that arrive while a send is in flight are queued together, each POST is
answered only once its own users are on the queue, and a failed send fails exactly the POSTs it carried."""

from __future__ import annotations

import threading
import time

import pytest

from shared.core.messages import ChangeMessage
from shared.services.webhook import USERS_PER_MESSAGE, GroupCommit


class SlowQueue:
    """A change queue whose sends take ``seconds`` and fail while ``failing`` is set."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.failing = threading.Event()
        self.sent: list[ChangeMessage] = []
        self.lock = threading.Lock()

    def send(self, body: str) -> None:
        time.sleep(self.seconds)
        if self.failing.is_set():
            raise ConnectionError("storage is away")
        with self.lock:
            self.sent.append(ChangeMessage.from_json(body))

    def users(self) -> list[str]:
        with self.lock:
            return [u for m in self.sent for u in m.user_ids]


def _post_concurrently(commit: GroupCommit, queue: SlowQueue, posts: int) -> tuple[dict[int, float], dict[int, str]]:
    """``posts`` POSTs of one user each at once; when each returned, and who saw its user on the queue then."""
    returned: dict[int, float] = {}
    errors: dict[int, str] = {}
    start = threading.Barrier(posts)

    def post(i: int) -> None:
        start.wait()
        try:
            commit.enqueue([(f"user-{i}", "updated")], f"2026-11-30T07:00:00.{i:06d}+00:00")
            assert f"user-{i}" in queue.users(), f"POST {i} answered before its user was queued"
            returned[i] = time.monotonic()
        except Exception as exc:
            errors[i] = repr(exc)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(posts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return returned, errors


def test_concurrent_posts_share_sends_and_each_waits_for_its_own() -> None:
    queue = SlowQueue(0.02)
    commit = GroupCommit(queue.send)

    returned, errors = _post_concurrently(commit, queue, 60)

    assert errors == {} and len(returned) == 60
    assert sorted(queue.users()) == sorted(f"user-{i}" for i in range(60))  # every user once
    assert len(queue.sent) < 60 / 3, f"{len(queue.sent)} sends for 60 concurrent POSTs: not grouped"
    assert all(len(m.user_ids) <= USERS_PER_MESSAGE for m in queue.sent)
    # A grouped message carries the earliest receipt of its POSTs (latency is measured from the first).
    assert all(m.received_at.endswith("+00:00") for m in queue.sent)


def test_an_idle_webhook_sends_at_once() -> None:
    queue = SlowQueue(0.0)
    commit = GroupCommit(queue.send)
    for i in range(3):
        commit.enqueue([(f"user-{i}", "updated"), (f"user-{i}", "updated")], "2026-11-30T07:00:00+00:00")
        assert [m.user_ids for m in queue.sent][-1] == (f"user-{i}",)  # sent before enqueue returned, once
    assert len(queue.sent) == 3


def test_a_failed_send_fails_the_posts_it_carried_and_the_next_ones_succeed() -> None:
    queue = SlowQueue(0.02)
    commit = GroupCommit(queue.send)
    queue.failing.set()

    returned, errors = _post_concurrently(commit, queue, 20)

    assert returned == {} and len(errors) == 20  # every POST is answered 503: Graph delivers them again
    assert all("storage is away" in e for e in errors.values())
    queue.failing.clear()
    commit.enqueue([("user-late", "updated")], "2026-11-30T07:00:01+00:00")
    assert queue.users() == ["user-late"]


def test_a_post_stuck_behind_a_hung_send_gives_up_and_is_not_sent_later() -> None:
    release = threading.Event()
    sent: list[str] = []

    def hung(body: str) -> None:
        release.wait(10)
        sent.extend(ChangeMessage.from_json(body).user_ids)

    commit = GroupCommit(hung, wait_seconds=0.2)
    first = threading.Thread(target=commit.enqueue, args=([("user-first", "updated")], "2026-11-30T07:00:00+00:00"))
    first.start()
    time.sleep(0.05)
    with pytest.raises(TimeoutError):
        commit.enqueue([("user-stuck", "updated")], "2026-11-30T07:00:00+00:00")
    release.set()
    first.join(10)
    time.sleep(0.1)
    assert sent == ["user-first"]  # the POST that gave up (answered 503) is not queued behind its back
