"""The agent loop: the export queue consumed with azure-storage-queue, the reconcile under a lease, heartbeats.

Queue semantics are the Functions host's (so both worker modes behave alike): base64 messages, batches of 16
fetched when 8 or fewer are in flight, a message invisible while its export runs (renewed at half its
visibility), deleted after success, retried after 10 s on failure, moved to ``<queue>-poison`` when it fails
with dequeue count 5 or is received with a dequeue count above 5. One difference, on purpose: an unreachable
directory (``DirectoryUnavailableError``) does not count. The message is sent again as a fresh message (dequeue
count 0) delayed by a back-off that doubles up to GUESTSYNC_AGENT_OUTAGE_BACKOFF_SECONDS, and the original is
deleted, so a DC outage never poisons exports.

Polling: at once after a full batch (a burst), otherwise every GUESTSYNC_AGENT_IDLE_POLL_MS (250 ms), so an
isolated change waits 125 ms on average for the agent, at 4 receives a second (345,600 per idle day;
docs/agent.md states what that costs).

A stop (SIGTERM, Ctrl+C, the service manager) stops receiving, releases messages whose
export has not started (visible again at once) and waits up to GUESTSYNC_AGENT_STOP_SECONDS for exports that
have: an export is never cut off half-way by the loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import QueueMessage

from shared import ncrontab
from shared.adapters.storage import queue_client
from shared.agent import health
from shared.agent.lease import TimerLease
from shared.bootstrap import Services
from shared.core.messages import newer_versions_seen
from shared.core.records import utcnow
from shared.settings import AgentSettings, Settings, load_agent_settings, load_settings

log = logging.getLogger("guestsync.agent")

BATCH_SIZE = 16  # host.json batchSize
NEW_BATCH_THRESHOLD = 8  # host.json newBatchThreshold
MAX_DEQUEUE_COUNT = 5  # host.json maxDequeueCount
RETRY_VISIBILITY_SECONDS = 10  # host.json visibilityTimeout: the wait before a failed export is retried
#: host.json functionTimeout: a message whose export runs longer is no longer kept invisible, so another agent
#: (or this one) tries again while the stuck attempt's later writes are refused by its stale ETag.
EXPORT_TIMEOUT_SECONDS = 300
MIN_POLL = 0.1
FIRST_OUTAGE_BACKOFF = 1.0


def _directory_unavailable(exc: BaseException) -> bool:
    from shared.core.errors import DirectoryUnavailableError

    return isinstance(exc, DirectoryUnavailableError)


@dataclass
class _Held:
    """A received message this agent holds: its current pop receipt, and whether its export has started."""

    message: QueueMessage
    pop_receipt: str
    renew_at: float
    received_at: float = field(default_factory=time.monotonic)
    started: bool = False
    settled: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Agent:
    """One agent process: ``run()`` until ``stop`` is set."""

    def __init__(self, settings: Settings, agent: AgentSettings, stop: threading.Event,
                 services: Services | None = None) -> None:
        self.settings, self.config, self.stop = settings, agent, stop
        self.services = services or Services(settings)
        self.agent_id = f"{socket.gethostname()}-{os.getpid()}"
        self.started_at = utcnow()
        self.schedule = ncrontab.parse(agent.reconcile_schedule)
        self._queue = queue_client(settings.storage, settings.export_queue)
        self._poison = queue_client(settings.storage, settings.export_poison_queue)
        self._held: dict[str, _Held] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(max(1, 2 * (settings.directory.connections if settings.directory else 8)))
        self._outage_since: float | None = None
        self.lease = TimerLease(self.services.state, self.agent_id, agent.lease_seconds)
        self.last_export_at: datetime | None = None
        self.exports = 0
        self.last_reconcile: dict[str, Any] = {}
        self._reconcile: _ReconcileRun | None = None

    # --------------------------------------------------------------------------------------------- storage calls

    async def _io(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    def _ensure_queues(self) -> None:
        for client in (self._queue, self._poison):
            with contextlib.suppress(ResourceExistsError):
                client.create_queue()

    def _receive(self, count: int) -> list[QueueMessage]:
        pages = self._queue.receive_messages(messages_per_page=count,
                                             visibility_timeout=self.config.visibility_seconds).by_page()
        page = next(pages, None)  # one request per poll
        return list(page) if page is not None else []

    # ------------------------------------------------------------------------------------------------ the loop

    async def run(self) -> None:
        await self._io(self._ensure_queues)
        log.info("guestsync agent %s (version %s) polling queue %s; reconcile schedule %s", self.agent_id,
                 health.agent_version(), self.settings.export_queue, self.schedule)
        side = [asyncio.create_task(coro) for coro in (self._renew_loop(), self._heartbeat_loop(),
                                                       self._timer_loop())]
        try:
            await self._poll_loop()
            await self._drain()
        finally:
            for task in side:
                task.cancel()
            await asyncio.gather(*side, return_exceptions=True)
            if await self._io(self._end_reconcile):
                await self._io(self.lease.release)  # the next agent need not wait for the lease to expire
            await self._write_heartbeat("stopped")
            with contextlib.suppress(Exception):
                await self.services.graph.close()
            for client in (self._queue, self._poison):
                client.close()
            log.info("guestsync agent %s stopped", self.agent_id)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, waking early when the agent is asked to stop."""
        deadline = time.monotonic() + seconds
        while not self.stop.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    @property
    def _idle_poll(self) -> float:
        return max(MIN_POLL, self.config.idle_poll_ms / 1000)

    async def _poll_loop(self) -> None:
        while not self.stop.is_set():
            if len(self._held) > NEW_BATCH_THRESHOLD:
                await self._sleep(0.05)
                continue
            try:
                messages = await self._io(self._receive, BATCH_SIZE)
            except Exception as exc:
                log.warning("receiving from queue %s failed: %s", self.settings.export_queue, exc)
                messages = []
            for message in messages:
                held = _Held(message, str(message.pop_receipt or ""),
                             time.monotonic() + self.config.visibility_seconds / 2)
                self._held[str(message.id)] = held
                task = asyncio.create_task(self._handle(held))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if len(messages) == BATCH_SIZE:  # a full batch: more may be waiting, ask again at once
                continue
            # Fewer than a batch: this receive emptied the queue, so asking again sooner than when idle would mostly
            # find nothing (about two receives more per isolated export); bursts fill batches and skip this wait.
            await self._sleep(self._idle_poll * random.uniform(0.8, 1.2))

    async def _drain(self) -> None:
        """After a stop: exports that started finish (up to stop_seconds), the others are released."""
        if not self._tasks:
            return
        log.info("stopping: waiting for %d export(s) in flight (at most %d s)", len(self._tasks),
                 self.config.stop_seconds)
        _, pending = await asyncio.wait(set(self._tasks), timeout=self.config.stop_seconds)
        if pending:
            log.error("stopping with %d export(s) still running after %d s: their messages come back when their "
                      "visibility (%d s) ends and the exports run again (they are idempotent)", len(pending),
                      self.config.stop_seconds, self.config.visibility_seconds)

    # ------------------------------------------------------------------------------------------- one message

    async def _handle(self, held: _Held) -> None:
        message = held.message
        try:
            raw = message.content if isinstance(message.content, str) else ""
            try:
                body = base64.b64decode("".join(raw.split()), validate=True)
            except (ValueError, binascii.Error):
                log.warning("message %s on queue %s is not valid base64; moving it to %s", message.id,
                            self.settings.export_queue, self.settings.export_poison_queue)
                await self._settle(held, self._poison_it, raw.encode("utf-8"))
                return
            dequeue_count = int(message.dequeue_count or 1)
            if dequeue_count > MAX_DEQUEUE_COUNT:  # dequeued too often without being settled (agents died)
                await self._settle(held, self._poison_it, body)
                return
            async with contextlib.AsyncExitStack() as stack:
                acquired = await self._acquire_slot()
                if not acquired:  # stopping before the export started: hand it back untouched
                    await self._settle(held, self._release)
                    return
                stack.callback(self._slots.release)
                held.started = True
                try:
                    await self._export(body)
                except Exception as exc:
                    if _directory_unavailable(exc):
                        await self._settle(held, self._defer, body, exc)
                    elif dequeue_count >= MAX_DEQUEUE_COUNT:
                        log.error("export message %s failed %d times (%s); moving it to %s", message.id,
                                  dequeue_count, exc, self.settings.export_poison_queue)
                        await self._settle(held, self._poison_it, body)
                    else:
                        log.warning("export message %s failed (attempt %d of %d), retried in %d s: %s", message.id,
                                    dequeue_count, MAX_DEQUEUE_COUNT, RETRY_VISIBILITY_SECONDS, exc)
                        await self._settle(held, self._retry)
                    return
                self._outage_since = None
                await self._settle(held, self._delete)
        except Exception as exc:  # settling failed: the message comes back when its visibility ends
            log.warning("could not settle message %s on queue %s: %s", message.id, self.settings.export_queue, exc)
        finally:
            self._held.pop(str(message.id), None)

    async def _acquire_slot(self) -> bool:
        while not self.stop.is_set():
            try:
                await asyncio.wait_for(self._slots.acquire(), timeout=0.1)
                return True
            except TimeoutError:
                continue
        return False

    async def _export(self, body: bytes) -> None:
        """What the ``export_to_ad`` function does with a message (shared.functions), here in the agent; an
        unreachable directory propagates to ``_handle``, which releases the message without counting it."""
        if await self.services.handle_export_message(body) is None:
            return  # left for a newer agent: not an export of ours
        self.last_export_at = utcnow()
        self.exports += 1

    async def _settle(self, held: _Held, how: Callable[..., Awaitable[None]], *args: Any) -> None:
        async with held.lock:  # never with a renewal in between (it changes the pop receipt)
            held.settled = True
            await how(held, *args)

    async def _delete(self, held: _Held) -> None:
        await self._io(self._queue.delete_message, held.message.id, held.pop_receipt)

    async def _retry(self, held: _Held) -> None:
        await self._io(self._queue.update_message, held.message.id, held.pop_receipt,
                       visibility_timeout=RETRY_VISIBILITY_SECONDS)

    async def _release(self, held: _Held) -> None:
        await self._io(self._queue.update_message, held.message.id, held.pop_receipt, visibility_timeout=0)

    async def _poison_it(self, held: _Held, payload: bytes) -> None:
        await self._io(self._poison.send_message, base64.b64encode(payload).decode("ascii"))
        await self._io(self._queue.delete_message, held.message.id, held.pop_receipt)

    def outage_backoff(self) -> int:
        """Seconds before a message released for a directory outage comes back: 1 s at first, then about the
        outage's length so far (so it doubles), at most GUESTSYNC_AGENT_OUTAGE_BACKOFF_SECONDS."""
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since = now
        elapsed = now - self._outage_since
        return int(min(self.config.outage_backoff_seconds, max(FIRST_OUTAGE_BACKOFF, elapsed)))

    async def _defer(self, held: _Held, body: bytes, exc: BaseException) -> None:
        """A fresh copy (dequeue count 0) after the back-off, then the original deleted: an outage never counts
        toward poison. Sent first: a crash in between leaves a duplicate, which the idempotent export absorbs."""
        delay = self.outage_backoff()
        log.warning("directory unavailable; export message %s released for %d s (not counted toward poison): %s",
                    held.message.id, delay, exc)
        await self._io(self._queue.send_message, base64.b64encode(body).decode("ascii"), visibility_timeout=delay)
        await self._io(self._queue.delete_message, held.message.id, held.pop_receipt)

    async def _renew_loop(self) -> None:
        """Keep the messages of running exports invisible to other agents."""
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for held in [h for h in self._held.values() if h.renew_at <= now]:
                async with held.lock:
                    if held.settled:
                        continue
                    if now - held.received_at > EXPORT_TIMEOUT_SECONDS:
                        log.error("export of message %s has run for more than %d s; no longer holding it (it "
                                  "comes back for another attempt)", held.message.id, EXPORT_TIMEOUT_SECONDS)
                        held.renew_at = float("inf")
                        continue
                    try:
                        receipt = await self._io(self._queue.update_message, held.message.id, held.pop_receipt,
                                                 visibility_timeout=self.config.visibility_seconds)
                        held.pop_receipt = str(receipt.pop_receipt)
                        held.renew_at = now + self.config.visibility_seconds / 2
                    except Exception as exc:
                        log.warning("could not extend the visibility of message %s: %s", held.message.id, exc)
                        held.renew_at = now + 1

    # ----------------------------------------------------------------------------------- heartbeat and timers

    def _queue_lag(self) -> dict[str, Any]:
        oldest = health.oldest_message(self._queue)
        count = int(self._queue.get_queue_properties().approximate_message_count or 0)
        age = None if oldest is None else round((utcnow() - oldest[1]).total_seconds(), 1)
        return {"oldestMessageAgeSeconds": age, "approximateCount": count}

    async def _write_heartbeat(self, status: str) -> None:
        try:
            lag = await self._io(self._queue_lag)
        except Exception as exc:
            lag = {"error": str(exc)}
        body = {
            "agentId": self.agent_id, "host": socket.gethostname(), "pid": os.getpid(),
            "version": health.agent_version(), "status": status, "startedAt": self.started_at.isoformat(),
            "seenAt": utcnow().isoformat(), "lastExportAt": self.last_export_at.isoformat()
            if self.last_export_at else None, "exports": self.exports, "holdsTimerLease": self.lease.held,
            "lastReconcile": self.last_reconcile or None, "queueLag": lag, "inFlight": len(self._held),
            "newerSchemaSeen": newer_versions_seen(),  # set: messages wait for an upgraded agent
        }
        try:
            await self._io(self.services.state.put_meta, health.heartbeat_row(self.agent_id), body)
        except Exception as exc:
            log.warning("could not write the heartbeat: %s", exc)

    async def _heartbeat_loop(self) -> None:
        while True:
            await self._write_heartbeat("stopping" if self.stop.is_set() else "running")
            if self.lease.held:
                with contextlib.suppress(Exception):
                    await self._io(health.forget_old, self.services.state)
            await asyncio.sleep(self.config.heartbeat_seconds)

    def _next_reconcile(self) -> datetime:
        body = self.lease.body or {}
        last = body.get("reconcileStartedAt") or body.get("acquiredAt")
        return self.schedule.next_after(datetime.fromisoformat(last) if last else utcnow())

    async def _timer_loop(self) -> None:
        """Hold the timer lease when no live agent does; run the reconcile at its schedule while holding it."""
        self._reconcile = running = None
        last_try = float("-inf")
        while True:
            if time.monotonic() - last_try >= self.lease.seconds / 3:
                last_try = time.monotonic()
                try:
                    await self._io(self.lease.try_acquire)
                except Exception as exc:
                    log.warning("could not renew the timer lease: %s", exc)
            held = self.lease.held
            if running is not None and not held:
                log.error("timer lease lost during the reconcile; cancelling it (another agent takes over)")
                running.cancel()
            if running is not None and running.done:
                await self._reconcile_done(running)
                running = None
            if running is None and held and not self.stop.is_set() and utcnow() >= self._next_reconcile():
                self._reconcile = running = await self._start_reconcile()
            await asyncio.sleep(0.5)

    def _end_reconcile(self) -> bool:
        """On stop: cancel a running reconcile and wait for it; False if it is still running (then the lease is
        left to expire, so no other agent starts one meanwhile)."""
        run = self._reconcile
        if run is None or run.done:
            return True
        run.cancel()
        run.join(self.config.stop_seconds)
        if not run.done:
            log.error("the reconcile did not stop within %d s; the timer lease is left to expire",
                      self.config.stop_seconds)
        return run.done

    async def _start_reconcile(self) -> _ReconcileRun | None:
        started = utcnow()
        if not await self._io(self.lease.reconcile_started, started):
            return None
        log.info("reconcile started by agent %s at %s", self.agent_id, started.isoformat())
        self.last_reconcile = {"startedAt": started.isoformat()}
        s = self.services

        async def reconcile() -> str:
            from shared.services.reconcile import Reconciler

            try:
                report = await Reconciler(s.graph, s.state, s.export_queue.send, s.settings.deprovisioning,
                                          directory=s.directory).run()
            finally:
                await s.graph.close()
            return str(dict(report.actions) or "no drift")

        return _ReconcileRun(started, reconcile)

    async def _reconcile_done(self, run: _ReconcileRun) -> None:
        finished = utcnow()
        outcome = run.outcome
        log.info("reconcile finished by agent %s at %s (started %s): %s", self.agent_id, finished.isoformat(),
                 run.started.isoformat(), outcome)
        self.last_reconcile = {"startedAt": run.started.isoformat(), "finishedAt": finished.isoformat(),
                               "outcome": outcome}
        try:
            await self._io(self.lease.reconcile_finished, run.started, finished, outcome)
        except Exception as exc:
            log.warning("could not record the reconcile's end in the timer lease: %s", exc)


class _ReconcileRun:
    """The reconcile on a thread and event loop of its own: its LDAP scan blocks, and the agent's loop must keep
    renewing message visibility and the lease meanwhile. ``cancel()`` stops it at its next await."""

    def __init__(self, started: datetime, make: Callable[[], Awaitable[str]]) -> None:
        self.started = started
        self.outcome = "running"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(make,), name="guestsync-reconcile", daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _run(self, make: Callable[[], Awaitable[str]]) -> None:
        async def main() -> None:
            self._task = asyncio.current_task()
            self._loop = asyncio.get_running_loop()
            self._ready.set()
            self.outcome = await make()

        try:
            asyncio.run(main())
        except asyncio.CancelledError:
            self.outcome = "cancelled"
        except Exception as exc:
            log.error("reconcile failed: %s", exc, exc_info=True)
            self.outcome = f"failed: {exc}"
        finally:
            self._ready.set()

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def cancel(self) -> None:
        if self._loop is not None and self._task is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._task.cancel)


def run_agent(stop: threading.Event, settings: Settings | None = None, agent: AgentSettings | None = None) -> int:
    """The agent until ``stop`` is set: what ``guestsync worker``, the systemd unit and the Windows service run."""
    settings = settings or load_settings(need_directory=True)
    agent = agent or load_agent_settings()
    asyncio.run(Agent(settings, agent, stop).run())
    return 0
