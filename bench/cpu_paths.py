"""CPU per call of each step a provisioned guest costs the function host, against the real components.

Each step runs ``--calls`` times in this process through the same adapters and clients the function app builds
(settings from the local stack's environment), and its CPU time is taken with ``time.thread_time()`` of the
calling thread: the SDKs' synchronous clients, ldap3 and the Graph client's event loop all run on it, so the
Graph simulator and Azurite, which run elsewhere, do not count. Wall time per call is printed beside it.

Steps: the state table (insert, replace, read), the queues (send; receive of a batch of 16, per message;
delete), the Graph read through msgraph-sdk (``get_user``, ``get_users`` of 15, per user), the Directory
adapter's create path (uniqueness search, add, read back, as one ``create_guest``), the record and message
JSON of one guest, and the log lines of one guest (at INFO: formatted, scrubbed, written to a null stream; at
WARNING: skipped). The local runner's own receive and delete use the queue client the runner builds.

This is a measurement for finding where a guest's CPU goes, not a target: no PASS/MISS line.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from bench.common import BenchStack, Report, ad_values, bench_stack, guest_user, run_benchmark, say
from shared import observability
from shared.adapters.directory import Directory
from shared.adapters.graph import GraphClient
from shared.adapters.queues import MessageQueue
from shared.adapters.state import StateStore
from shared.core.ad_rules import new_password
from shared.core.domain import MetaverseEntry
from shared.core.messages import ChangeMessage, ExportMessage
from shared.core.records import GuestRecord
from shared.core.rules import inbound, initial_user_account_control, outbound_persistent
from shared.settings import Settings, load_settings

NAME = "cpu_paths"
BATCH = 16  # the host's queue batchSize (host.json)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=200, help="calls of each step (200)")
    parser.add_argument("--only", action="append", default=[], metavar="STEP",
                        help="run only the steps whose name contains STEP (repeatable)")
    parser.add_argument("--transports", type=int, default=0, metavar="ROUNDS",
                        help="instead of the steps: the storage calls through azure-core's RequestsTransport (what "
                             "the SDK builds itself) and through Urllib3Transport, alternating, ROUNDS times each")


class _Table:
    """The CPU-ms and wall-ms per call of each step, printed as one table at the end."""

    def __init__(self, only: list[str]) -> None:
        self.rows: list[tuple[str, float, float, int]] = []
        self._only = only

    def wanted(self, step: str) -> bool:
        return not self._only or any(o in step for o in self._only)

    @contextmanager
    def measure(self, step: str, calls: int) -> Iterator[None]:
        cpu, wall = time.thread_time(), time.perf_counter()
        yield
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
        self.rows.append((step, cpu * 1000 / calls, wall * 1000 / calls, calls))
        say(f"  {step:<52} {cpu * 1000 / calls:7.3f} CPU-ms  {wall * 1000 / calls:7.3f} wall-ms  ({calls} calls)")

    def lines(self) -> list[str]:
        return [f"| {step} | {cpu:.3f} | {wall:.3f} | {calls} |" for step, cpu, wall, calls in self.rows]


def _record(uid: str, tenant_domain: str) -> GuestRecord:
    user = guest_user(tenant_domain, "cpu", 0, user_id=uid)
    return GuestRecord(uid=uid, entry=inbound(user), graph_read_at=datetime.now(UTC),
                       notified_at=datetime.now(UTC), reason="new guest")


def _state_steps(table: _Table, settings: Settings, calls: int, tenant_domain: str) -> None:
    state = StateStore.from_settings(settings.storage, settings.state_table)
    records = [_record(str(uuid.uuid4()), tenant_domain) for _ in range(calls + 1)]
    state.save(records[-1])  # warm: connection open
    saved: list[GuestRecord] = []
    if table.wanted("state insert"):
        with table.measure("state insert (StateStore.save, new)", calls):
            saved = [state.save(record) for record in records[:calls]]
    else:
        saved = [state.save(record) for record in records[:calls]]
    if table.wanted("state replace"):
        with table.measure("state replace (StateStore.save, ETag)", calls):
            for record in saved:
                state.save(record.evolve(version=2))
    if table.wanted("state read"):
        with table.measure("state read (StateStore.get)", calls):
            for record in saved:
                state.get(record.uid)


def _queue_steps(table: _Table, settings: Settings, calls: int) -> None:
    from devtools.runner import _StorageEndpoint  # the client the local runner's queue listener uses

    name = f"cpu-{uuid.uuid4().hex[:10]}"
    queue = MessageQueue.from_settings(settings.storage, name)
    queue.send("warm")
    body = ExportMessage(uid=str(uuid.uuid4()), version=1, reason="new guest",
                         correlation_id=uuid.uuid4().hex).to_json()
    if table.wanted("queue send"):
        with table.measure("queue send (MessageQueue.send)", calls):
            for _ in range(calls):
                queue.send(body)
    else:
        for _ in range(calls):
            queue.send(body)
    storage = settings.storage
    assert storage.connection_string is not None
    runner_client = _StorageEndpoint("AzureWebJobsStorage", connection_string=storage.connection_string) \
        .queue_client(name)
    received: list[Any] = []
    rounds = max(1, calls // BATCH)
    with table.measure(f"queue receive, batch of {BATCH} (runner), per message", rounds * BATCH) \
            if table.wanted("queue receive") else _nothing():
        for _ in range(rounds):
            page = next(runner_client.receive_messages(messages_per_page=BATCH, visibility_timeout=60).by_page())
            received.extend(page)
    if table.wanted("queue delete"):
        with table.measure("queue delete (runner)", len(received)):
            for message in received:
                runner_client.delete_message(message.id, message.pop_receipt)
    runner_client.delete_queue()


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _graph_steps(table: _Table, bench: BenchStack, settings: Settings, calls: int) -> None:
    sim = bench.stack.sim
    ids = [sim.invite_guest(f"cpu{i}@partner.example", f"Cpu Guest {i}", "Cpu", f"g{i}")["id"] for i in range(calls)]

    async def run() -> None:
        async with GraphClient(settings.graph) as graph:
            await graph.get_user(ids[0])  # warm: token, connection
            if table.wanted("graph get_user"):
                with table.measure("graph get_user (msgraph-sdk, one user)", calls):
                    for uid in ids:
                        await graph.get_user(uid)
            if table.wanted("graph get_users"):
                chunks = [ids[i:i + 15] for i in range(0, len(ids) - len(ids) % 15 or len(ids), 15)]
                with table.measure("graph get_users (15 per request), per user", sum(map(len, chunks))):
                    for chunk in chunks:
                        await graph.get_users(chunk)

    asyncio.run(run())


def _directory_steps(table: _Table, bench: BenchStack, settings: Settings, calls: int) -> None:
    assert settings.directory is not None
    users = [guest_user(bench.stack.sim.tenant_domain, "cpud", i) for i in range(calls + 1)]
    work = [(u.id, ad_values(u)) for u in users]
    passwords = [new_password(avoid=(v["sAMAccountName"],)) for _, v in work]
    with Directory(settings.directory, archive_ou=settings.deprovisioning.archive_ou) as directory:
        directory.netbios_domain()
        uid, values = work[-1]
        directory.create_guest(uid, dict(values), passwords[-1], initial_user_account_control())  # warm: forest, GC
        if table.wanted("directory create"):
            with table.measure("directory create_guest (unique search, add, read back)", calls):
                for (uid, values), password in zip(work[:calls], passwords, strict=False):
                    directory.create_guest(uid, dict(values), password, initial_user_account_control())
        if table.wanted("directory find"):
            with table.measure("directory find_guest (base read)", calls):
                for uid, _ in work[:calls]:
                    directory.find_guest(uid)


def _json_steps(table: _Table, calls: int, tenant_domain: str) -> None:
    record = _record(str(uuid.uuid4()), tenant_domain).evolve(etag='W/"datetime\'2026-11-23T21%3A05%3A00Z\'"')
    if table.wanted("json record"):
        with table.measure("json record to_entity + from_entity", calls):
            for _ in range(calls):
                entity = record.to_entity()
                GuestRecord._from_fields(entity, record.etag)
    if table.wanted("json export"):
        with table.measure("json export message to_json + from_json + snapshot", calls):
            for _ in range(calls):
                text = ExportMessage(record.uid, record.version, "new guest", "c" * 32, record.to_snapshot()).to_json()
                message = ExportMessage.from_json(text)
                GuestRecord.from_snapshot(message.snapshot)
    if table.wanted("json change"):
        with table.measure("json change message to_json + from_json", calls):
            for _ in range(calls):
                ChangeMessage.from_json(ChangeMessage(record.uid, "updated", "2026-11-23T21:05:00+00:00").to_json())
    if table.wanted("json entry"):
        with table.measure("json metaverse entry rules (inbound + outbound)", calls):
            for _ in range(calls):
                outbound_persistent(MetaverseEntry.from_dict(record.entry.as_dict()))


def _logging_steps(table: _Table, calls: int) -> None:
    """The log lines one guest writes on its way (apply's decision, the export's outcome, the runner's two
    Executing/Executed lines per function, twice)."""
    logger = logging.getLogger("guestsync.cpu_paths")
    runner = logging.getLogger("guestsync.runner")
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    handlers, root.handlers = root.handlers, [handler]  # only the null stream: the bench's stderr stays quiet

    def one_guest(uid: str) -> None:
        with observability.guest_context(uid):
            for _ in range(2):
                runner.info("Executing 'Functions.%s' (Reason='%s', Id=%s)", "apply_change", "New queue message", uid)
                runner.info("Trigger Details: %s", f"MessageId: {uid}, DequeueCount: 1, InsertedOn: now")
            logger.info("guest %s: %s (%s)", uid, "create", "new guest")
            logger.info("guest %s: %s (%s)", uid, "created", "account created")
            for _ in range(2):
                runner.info("Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%dms)", "apply_change", uid, 12)

    uids = [str(uuid.uuid4()) for _ in range(calls)]
    try:
        for level, label in ((logging.INFO, "INFO: formatted, scrubbed"), (logging.WARNING, "WARNING: skipped")):
            for name in (logger, runner):
                name.setLevel(level)
            handler.stream = io.StringIO()
            if table.wanted("logging"):
                with table.measure(f"logging, one guest's 8 lines at {label}", calls):
                    for uid in uids:
                        one_guest(uid)
    finally:
        root.handlers = handlers


def _cpu_per_call(totals: dict[tuple[str, str], list[float]], name: str, kind: str, step: Any,
                  items: list[Any]) -> str:
    """Run ``step`` on each item; keep this thread's CPU-ms per call under (name, kind) and say it."""
    cpu = time.thread_time()
    for item in items:
        step(item)
    per_call = (time.thread_time() - cpu) * 1000 / max(1, len(items))
    totals.setdefault((name, kind), []).append(per_call)
    return f"{name} {per_call:.3f}"


def _transport_rounds(settings: Settings, calls: int, rounds: int) -> None:
    """The same table and queue calls through each HTTP transport in turn, in this process, so that the
    machine's drift hits both alike; the ratio per call is what the transport changes."""
    from azure.core.pipeline.transport import RequestsTransport

    from shared.adapters.storage import QUEUE_TIMEOUTS, client_options, queue_client, table_service

    storage = settings.storage
    ours = client_options({}).get("transport")
    if ours is None:
        raise RuntimeError("a proxy variable is set: the storage clients keep the SDK's transport; nothing to compare")
    verify = ours.connection_config.verify

    def requests_transport(timeouts: dict[str, Any]) -> Any:
        return RequestsTransport(use_env_settings=False, connection_verify=verify, **timeouts)

    def urllib3_transport(timeouts: dict[str, Any]) -> Any:
        return client_options({}, timeouts=timeouts)["transport"]

    makers = {"requests": requests_transport, "urllib3": urllib3_transport}
    totals: dict[tuple[str, str], list[float]] = {}
    for round_no in range(1, rounds + 1):
        for kind, make in makers.items():
            table_client = table_service(storage, transport=make({})) \
                .create_table_if_not_exists(f"cpu{uuid.uuid4().hex[:10]}")
            queue = queue_client(storage, f"cpu-{uuid.uuid4().hex[:10]}", transport=make(QUEUE_TIMEOUTS))
            queue.create_queue()
            entities = [_record(str(uuid.uuid4()), "contoso.onmicrosoft.com").to_entity() for _ in range(calls)]
            for entity in entities[:5]:
                table_client.upsert_entity(entity)  # warm: connection open
            line = [_cpu_per_call(totals, name, kind, step, items) for name, step, items in (
                ("table insert", table_client.create_entity, entities[5:]),
                ("table replace", table_client.upsert_entity, entities),
                ("table read", lambda e, t=table_client: t.get_entity(e["PartitionKey"], e["RowKey"]), entities),
                ("queue send", lambda e, q=queue: q.send_message(e["RowKey"]), entities))]
            received = [m for _ in range(max(1, calls // BATCH))
                        for m in next(queue.receive_messages(messages_per_page=BATCH, visibility_timeout=60).by_page())]
            line.append(_cpu_per_call(totals, "queue delete", kind,
                                      lambda m, q=queue: q.delete_message(m.id, m.pop_receipt), received))
            say(f"  round {round_no} {kind:<8} CPU-ms per call: {', '.join(line)}")
            queue.delete_queue()
            table_client.delete_table()
    say("\n| call | RequestsTransport CPU-ms | Urllib3Transport CPU-ms | ratio |\n|---|---|---|---|")
    for name in ("table insert", "table replace", "table read", "queue send", "queue delete"):
        old, new = (statistics.median(totals[(name, kind)]) for kind in ("requests", "urllib3"))
        say(f"| {name} | {old:.3f} | {new:.3f} | {new / old:.2f} |")


def run(args: argparse.Namespace) -> Report:
    report = Report(NAME)
    calls = int(args.calls)
    table = _Table(list(args.only))
    if args.transports:
        with bench_stack() as bench:
            settings = load_settings(bench.env, need_directory=True)
            say(f"storage calls through each transport, {calls} calls per call kind, medians of "
                f"{args.transports} rounds:")
            meter = bench.cpu_meter().start()
            _transport_rounds(settings, calls, int(args.transports))
            meter.stop()
            say("CPU while the rounds ran: " + meter.summary())
        return report
    with bench_stack() as bench:
        settings = load_settings(bench.env, need_directory=True)
        observability.install(settings)  # as the function app does: every log record is scrubbed
        tenant = bench.stack.sim.tenant_domain
        say(f"CPU (this thread) and wall time per call, {calls} calls per step:")
        _state_steps(table, settings, calls, tenant)
        _queue_steps(table, settings, calls)
        if any(table.wanted(s) for s in ("graph get_user", "graph get_users")):
            _graph_steps(table, bench, settings, calls)
        if any(table.wanted(s) for s in ("directory create", "directory find")):
            _directory_steps(table, bench, settings, calls)
        _json_steps(table, calls, tenant)
        _logging_steps(table, calls)
    say("\n| step | CPU-ms per call | wall-ms per call | calls |\n|---|---|---|---|")
    for line in table.lines():
        say(line)
    return report


def main(argv: list[str] | None = None) -> Report:
    return run_benchmark(NAME, __doc__, add_arguments, run, argv)
