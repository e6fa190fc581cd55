"""Wiring: build the adapters once per process from settings (ports-and-adapters composition root)."""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import cached_property, partial
from typing import TYPE_CHECKING, cast

from shared import observability
from shared.adapters.queues import MessageQueue, leave_for_newer_reader
from shared.adapters.state import StateStore
from shared.concurrency import run_blocking
from shared.core.messages import ExportMessage, NewerSchemaError
from shared.observability import guest_context
from shared.settings import DirectorySettings, Settings, load_settings

log = logging.getLogger("guestsync.bootstrap")

if TYPE_CHECKING:
    from shared.adapters.directory import Directory, DirectoryPool
    from shared.adapters.graph import GraphClient
    from shared.core.ports import GuestDirectory, Mailer
    from shared.services.export import ExportOutcome
    from shared.services.webhook import GroupCommit


class Services:
    """Lazily created clients; each is built on first use so a function only pays for what it needs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        observability.install(settings)
        observability.configure_exporters_once(settings)
        self._graph_lock = threading.Lock()
        self._export_lock = threading.Lock()  # builds what exports need once, whichever thread comes first
        self._graphs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, GraphClient] = weakref.WeakKeyDictionary()

    @cached_property
    def state(self) -> StateStore:
        return StateStore.from_settings(self.settings.storage, self.settings.state_table)

    @cached_property
    def change_queue(self) -> MessageQueue:
        return MessageQueue.from_settings(self.settings.storage, self.settings.change_queue)

    @cached_property
    def webhook_queue(self) -> MessageQueue:
        """The change queue as the webhook sends to it: failing fast (see MessageQueue.from_settings)."""
        return MessageQueue.from_settings(self.settings.storage, self.settings.change_queue, fail_fast=True)

    @cached_property
    def change_commit(self) -> GroupCommit:
        """The webhook's way to the change queue: POSTs that arrive together are queued together."""
        from shared.services.webhook import GroupCommit

        queue = self.webhook_queue
        return GroupCommit(lambda body: queue.send(body))  # looked up per send: a test may wrap the queue's send

    @cached_property
    def export_queue(self) -> MessageQueue:
        return MessageQueue.from_settings(self.settings.storage, self.settings.export_queue)

    @property
    def graph(self) -> GraphClient:
        """One Graph client per event loop: its HTTP session belongs to the loop it was made on, and one
        process may run several loops (an agent and the ingest app side by side, a CLI command)."""
        from shared.adapters.graph import GraphClient

        loop = asyncio.get_running_loop()
        with self._graph_lock:
            client = self._graphs.get(loop)
            if client is None:
                client = self._graphs[loop] = GraphClient(self.settings.graph)
            return client

    @property
    def mailer(self) -> Mailer:
        """The operator alert mailer of GUESTSYNC_MAIL (none, graph, smtp). Ask for it inside the coroutine that
        sends: in graph mode it uses the Graph client of the running event loop."""
        from shared.adapters.mail import mailer_from_settings

        mail = self.settings.mail
        return mailer_from_settings(mail, self.graph if mail.mode == "graph" else None)

    def _directory_settings(self) -> DirectorySettings:
        from shared.core.domain import ConfigurationError

        if self.settings.directory is None:
            raise ConfigurationError("setting AD_SERVER is required where the AD worker runs")
        return self.settings.directory

    @cached_property
    def directory(self) -> Directory:
        """One directory (one connection) for single-threaded work: the reconcile's scan, CLI commands."""
        from shared.adapters.directory import Directory

        return Directory(self._directory_settings(), archive_ou=self.settings.deprovisioning.archive_ou)

    @cached_property
    def directory_pool(self) -> DirectoryPool:
        """Directories for the exports, one per export in flight, up to GUESTSYNC_LDAP_CONNECTIONS."""
        from shared.adapters.directory import DirectoryPool

        return DirectoryPool(self._directory_settings(), archive_ou=self.settings.deprovisioning.archive_ou)

    @cached_property
    def export_threads(self) -> ThreadPoolExecutor:
        """Two threads per pooled LDAP connection, whatever the host's default thread count (see
        shared.concurrency): an export borrows its connection at its first LDAP call, so while some exports
        read or write state, others use the connections."""
        return ThreadPoolExecutor(max_workers=2 * self._directory_settings().connections,
                                  thread_name_prefix="guestsync-export")

    async def run_export(self, message: ExportMessage) -> ExportOutcome:
        """``export_guest`` on the export threads, off the event loop (LDAP and storage calls block)."""
        from shared.services import tenant

        if tenant.remembered_initial_domain(self.state) is None and await run_blocking(
                self.export_threads, partial(tenant.known_initial_domain, self.state)) is None:
            # Apply stores it before it queues an export; a message from before that reads it here, once.
            try:
                await tenant.ensure_initial_domain(self.graph, self.state)
            except Exception as exc:  # no Graph credentials here: the export refuses what it cannot check
                log.warning("cannot read the tenant's initial domain from Graph here (%s): only "
                            "GUESTSYNC_UPN_SUFFIXES are allowed as guest UPN suffixes", exc)
        return await run_blocking(self.export_threads, partial(self.export_guest, message))

    async def handle_export_message(
        self, body: str | bytes, on_outage: Callable[[ExportMessage, Exception], None] | None = None
    ) -> ExportOutcome | None:
        """One export message as the export function and the agent both handle it: a message of a newer schema is
        left for a newer agent (None), the export runs in the guest's log context, and an error or a held
        deprovisioning is mailed. An unreachable directory is ``on_outage``'s to handle (function mode sends the
        message back with a delay); without one it propagates (the agent releases the message itself)."""
        from shared.core.errors import DirectoryUnavailableError
        from shared.services import alerts

        try:
            message = ExportMessage.from_json(body)
        except NewerSchemaError as newer:  # written by a newer app: a newer agent applies it (never poison)
            await asyncio.to_thread(leave_for_newer_reader, self.export_queue, body, newer)
            return None
        with guest_context(message.uid, message.correlation_id or None):
            try:
                outcome = await self.run_export(message)
            except DirectoryUnavailableError as exc:
                if on_outage is None:
                    raise
                on_outage(message, exc)
                return None
            # The guest's state is saved: mail the operators about an error or a held deprovisioning (never raises).
            await alerts.report_export(outcome.uid, outcome.action, outcome.detail, self.state, self.mailer)
            return outcome

    def send_export_back(self, message: ExportMessage, exc: Exception) -> None:
        """An export the directory could not take (DC unreachable): a fresh copy of its message goes (back) on
        the export queue with a growing delay, 2 s doubling to a minute with jitter, as apply does for Graph
        throttling. A fresh copy, so that an outage never spends the dequeues that would poison it."""
        from shared.services.apply import deferral_delay

        delay = deferral_delay(message.deferrals)
        self.export_queue.send(replace(message, deferrals=message.deferrals + 1).to_json(), delay_seconds=delay)
        log.warning("directory unavailable; export of %s queued for %d s (deferral %d, not counted toward "
                    "poison): %s", message.uid, delay, message.deferrals + 1, exc)

    async def export_in_process(self, body: str) -> ExportOutcome | None:
        """Worker mode function: run an export apply has just decided here and now instead of queueing it. What
        cannot finish here goes on the export queue, whose function retries it as it would have: a DC outage
        with a delay (``send_export_back``), any other failure at once (its dequeues, then poison, as before).
        Raises only when that send fails too; the change message is then retried, and apply, finding the guest
        still pending, exports it again."""
        try:
            return await self.handle_export_message(body, on_outage=self.send_export_back)
        except Exception as exc:
            log.warning("export in process failed (%s: %s); queued for the export function", type(exc).__name__, exc)
            await asyncio.to_thread(self.export_queue.send, body)
            return None

    def upn_suffixes(self) -> frozenset[str]:
        """The UPN suffixes guests may have: GUESTSYNC_UPN_SUFFIXES and the tenant's initial domain (from state)."""
        from shared.services.tenant import allowed_suffixes

        return allowed_suffixes(self.state, self.settings.upn_suffixes)

    def export_guest(self, message: ExportMessage) -> ExportOutcome:
        """Run one export with a directory lent by the pool for its duration (returned even when the export
        raises), so exports in parallel threads do not queue on one connection. Blocking: call it in a thread."""
        from shared.services.export import export_guest

        with self._export_lock:  # cached_property alone does not stop two threads building a second pool
            pool, state = self.directory_pool, self.state
        with pool.lease_on_first_use() as directory:  # a state read before the first LDAP call holds none
            return export_guest(message, state, cast("GuestDirectory", directory), self.settings.deprovisioning,
                                upn_suffixes=self.upn_suffixes())


_lock = threading.Lock()
_services: Services | None = None


def services() -> Services:
    """The process-wide services, built from the environment on first use."""
    global _services
    with _lock:
        if _services is None:
            _services = Services(load_settings())
        return _services


def reset() -> None:
    """Forget the services (tests and the local runner change settings between runs)."""
    global _services
    with _lock:
        _services = None
