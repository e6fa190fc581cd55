"""Cost: Graph requests and storage transactions per guest change, and per burst of member notifications.

Counting: Graph requests are the simulator's ``request_count`` (every ``/v1.0`` request; sign-in token requests
are not Graph requests and are not counted). Storage transactions are the requests Azurite *receives*: it runs
with ``--debug <file>`` and writes one ``RequestMethod=... RequestURL=...`` line per request, which this
benchmark counts and classifies (the server's view: every client is counted, the queue listeners' polling
included, and nothing the bench itself does touches storage while counting).

Scenarios, one after another on the function app (local runner, worker mode ``function``, own process):

* idle: the listeners' polling of the empty queues, per second (host.json maxPollingInterval);
* ``--guests`` new guests invited (one notification each) until all accounts are in AD;
* the same guests renamed in Entra (givenName; one notification each) until AD has the new name;
* ``--trickle`` of those guests renamed again one at a time, each waiting for AD: a change that has the
  queues to itself (no batching, every queue message received on its own);
* ``--members`` new members (userType Member, one notification each), which must get nothing;
* ``--member-repeats``: that many notifications for ``--members // 10`` members (10 changes each), to see
  whether repeated changes of one user are coalesced.

Each window runs until the last AD change (or Graph read) is seen and then no storage request other than
queue polling arrives for 2 s. Per change = window total / changes; "net of idle polling" also subtracts the
idle polling rate times the window length.
"""

from __future__ import annotations

import argparse
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import ldap3

from bench.common import (
    BenchStack,
    HostProcess,
    Report,
    account_exists,
    bench_host_json,
    bench_stack,
    count_accounts,
    guest_account_dn,
    invite,
    parse_overrides,
    run_benchmark,
    say,
    subscribe,
    wait_until,
)
from devtools.graphsim.server import GraphSimulator

NAME = "cost"
_REQUEST = re.compile(r"info: (Queue|Table)StorageContextMiddleware: RequestMethod=(\w+) RequestURL=(\S+)")
POLL = "queue receive (GET messages)"
Costs = tuple[float, float, float]  # Graph reads, storage transactions (gross), storage net of idle polling


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--guests", type=int, default=100, help="new guests, then renamed (100)")
    parser.add_argument("--trickle", type=int, default=20, help="guest updates one at a time (20; 0 skips)")
    parser.add_argument("--members", type=int, default=1000, help="member notifications, one per new member (1000)")
    parser.add_argument("--member-repeats", type=int, default=1000,
                        help="member notifications over members/10 members, 10 each (1000; 0 skips)")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle polling measured (10)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a host.json value")


def classify(service: str, method: str, url: str) -> str:
    path = url.split("/", 4)[-1] if url.count("/") >= 4 else url  # after http://host/account/
    if service == "Queue":
        parts = path.split("/")
        queue = parts[0]
        if len(parts) == 1:
            return f"queue {'create' if method == 'PUT' else 'properties' if method == 'GET' else method} ({queue})"
        if len(parts) == 2:
            op = {"POST": "queue send (POST messages)", "GET": POLL, "DELETE": "queue clear"}.get(method, method)
            return op if op == POLL else f"{op} ({queue})"
        op = {"DELETE": "queue delete message", "PUT": "queue update message"}.get(method, method)
        return f"{op} ({queue})"
    if path == "Tables":
        return "table create" if method == "POST" else "table list"
    if path == "$batch":
        return "table batch"
    if "(" in path and "PartitionKey" in path:
        op = {"GET": "table get entity", "PUT": "table replace entity", "MERGE": "table merge entity",
              "PATCH": "table merge entity", "DELETE": "table delete entity"}.get(method, method)
        return op
    return {"POST": "table insert entity", "GET": "table query"}.get(method, f"table {method}")


class AzuriteLog:
    """Reads Azurite's debug log as it grows and counts requests by kind."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.counts: Counter[str] = Counter()
        self.last_activity = time.monotonic()

    def read(self) -> Counter[str]:
        if not self.path.exists():
            return self.counts
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        for line in data[:end].decode("utf-8", "replace").splitlines():
            match = _REQUEST.search(line)
            if match:
                kind = classify(*match.groups())
                self.counts[kind] += 1
                if kind != POLL:
                    self.last_activity = time.monotonic()
        return self.counts

    def snapshot(self) -> Counter[str]:
        return Counter(self.read())

    def settle(self, quiet: float = 2.0, timeout: float = 120.0) -> None:
        """Wait until no request but queue polling has arrived for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.read()
            if time.monotonic() - self.last_activity >= quiet:
                return
            time.sleep(0.2)
        raise TimeoutError("storage requests did not settle")


class Window:
    def __init__(self, name: str, changes: int, log: AzuriteLog, sim: GraphSimulator) -> None:
        self.name, self.changes, self.log, self.sim = name, changes, log, sim
        self.storage: Counter[str] = Counter()
        self.graph: Counter[str] = Counter()
        self.seconds = 0.0

    def __enter__(self) -> Window:
        self._storage0 = self.log.snapshot()
        self._graph0 = Counter(self.sim.request_count)
        self._t0 = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.log.settle()
        self.seconds = time.monotonic() - self._t0
        self.storage = self.log.snapshot() - self._storage0
        self.graph = Counter(self.sim.request_count) - self._graph0

    def show(self, idle_rate: float) -> tuple[float, float, float]:
        total = sum(self.storage.values())
        polls = self.storage[POLL]
        graph_reads = sum(v for k, v in self.graph.items() if k.startswith("GET"))
        net = (total - idle_rate * self.seconds) / self.changes
        say(f"{self.name}: {self.changes} changes in {self.seconds:.1f} s (window until storage is quiet)")
        say(f"  Graph: {dict(self.graph)} -> {graph_reads / self.changes:.2f} reads per change")
        say(f"  storage: {total} requests -> {total / self.changes:.2f} per change "
            f"({(total - polls) / self.changes:.2f} without queue polling, {net:.2f} net of idle polling)")
        for kind, count in sorted(self.storage.items(), key=lambda kv: -kv[1]):
            say(f"    {count / self.changes:6.2f}  {kind} ({count})")
        return graph_reads / self.changes, total / self.changes, net


def _wait_ad(check: Callable[[], bool], what: str) -> None:
    wait_until(check, 300, what, interval=0.25)


def run(args: argparse.Namespace) -> Report:
    report = Report(NAME)
    with bench_stack(azurite_debug=True) as bench:
        assert bench.azurite_log is not None
        host_json, changes = bench_host_json(bench.workdir, parse_overrides(args.set))
        say(f"host.json: the repo's, {'with ' + '; '.join(changes) if changes else 'unchanged'}")
        log = AzuriteLog(bench.azurite_log)
        with HostProcess(bench, host_json) as host:
            subscribe(bench, host)
            results = _scenarios(bench, log, args)
    idle_rate, new, update, trickle, members, repeats = results
    say("")
    say(f"idle polling: {idle_rate:.2f} storage requests/s")
    report.check("Graph reads per new guest", new[0], 1)
    report.check("storage transactions per new guest (gross)", new[1], 8)
    report.check("Graph reads per guest update", update[0], 1)
    report.check("storage transactions per guest update (gross)", update[1], 8)
    if trickle is not None:
        report.check("storage transactions per guest update one at a time (net of idle polling)", trickle[2], 8)
    report.check(f"Graph reads per 1000 member notifications ({args.members} new members)", members[0] * 1000, 999)
    if repeats is not None:
        report.check(f"Graph reads per 1000 member notifications (10 per member, {args.member_repeats} in all)",
                     repeats[0] * 1000, 999)
    return report


def _scenarios(bench: BenchStack, log: AzuriteLog,
               args: argparse.Namespace) -> tuple[float, Costs, Costs, Costs | None, Costs, Costs | None]:
    sim, ou = bench.stack.sim, bench.stack.guest_ou
    admin = bench.stack.dc.admin_connection()
    try:
        warm = [invite(sim, "warm", i)["id"] for i in range(3)]
        wait_until(lambda: all(account_exists(admin, guest_account_dn(u, ou)) for u in warm), 120, "warm-up guests")
        log.settle(quiet=3.0)
        say(f"idle: {args.idle:g} s")
        before = log.snapshot()
        time.sleep(args.idle)
        idle_rate = sum((log.snapshot() - before).values()) / args.idle
        say(f"  {idle_rate:.2f} storage requests/s ({dict(log.snapshot() - before)})")

        base = count_accounts(admin, ou)
        with Window("new guests", args.guests, log, sim) as new:
            uids = [invite(sim, "cost", i)["id"] for i in range(args.guests)]
            _wait_ad(lambda: count_accounts(admin, ou) >= base + args.guests, "the new guests' accounts")
        new_result = new.show(idle_rate)

        def renamed() -> bool:
            admin.search(ou, "(givenName=Renamed)", ldap3.LEVEL, attributes=["1.1"])
            return len(admin.entries) >= len(uids)

        with Window("guest updates (givenName)", args.guests, log, sim) as update:
            for uid in uids:
                sim.update_user(uid, givenName="Renamed")
            _wait_ad(renamed, "the renamed guests")
        update_result = update.show(idle_rate)

        trickle_result = None
        if args.trickle:
            def has_name(uid: str, name: str) -> Callable[[], bool]:
                def check() -> bool:
                    admin.search(guest_account_dn(uid, ou), f"(givenName={name})", ldap3.BASE, attributes=["1.1"])
                    return bool(admin.entries)
                return check

            with Window(f"guest updates one at a time ({args.trickle})", args.trickle, log, sim) as trickle:
                for n, uid in enumerate(uids[:args.trickle]):
                    sim.update_user(uid, givenName=f"Single{n}")
                    _wait_ad(has_name(uid, f"Single{n}"), "the single update")
            trickle_result = trickle.show(idle_rate)

        with Window(f"member notifications ({args.members} new members)", args.members, log, sim) as members:
            for i in range(args.members):
                sim.add_user(displayName=f"Member {i}", userType="Member", userPrincipalName=f"m{i}@contoso.com",
                             mail=f"m{i}@contoso.com", givenName="Member", surname=str(i))
            _settle_members(members)
        members_result = members.show(idle_rate)

        repeats_result = None
        if args.member_repeats:
            people = max(1, args.members // 10)
            ids = [sim.add_user(displayName=f"Repeat {i}", userType="Member", userPrincipalName=f"r{i}@contoso.com")
                   ["id"] for i in range(people)]
            sim.wait_for_deliveries(60)
            log.settle()
            with Window(f"member notifications ({args.member_repeats} for {people} members)", args.member_repeats,
                        log, sim) as repeats:
                for n in range(args.member_repeats):
                    sim.update_user(ids[n % people], jobTitle=f"title {n}")
                _settle_members(repeats)
            repeats_result = repeats.show(idle_rate)
        return idle_rate, new_result, update_result, trickle_result, members_result, repeats_result
    finally:
        admin.unbind()


def _settle_members(window: Window) -> None:
    """Members get no account: wait until every notification is delivered; the window then waits until storage
    is quiet (apply reads each member's state row, so the last apply ends the activity). How many Graph reads
    that took is the measure, so it cannot be the stop condition."""
    window.sim.wait_for_deliveries(300)


def main(argv: list[str] | None = None) -> Report:
    return run_benchmark(NAME, __doc__, add_arguments, run, argv)

