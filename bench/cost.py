"""Cost: Graph requests and storage transactions per guest change (isolated changes and bursts), per member
notification, and what idle polling costs, in the chosen worker mode(s).

Counting: Graph requests are the simulator's ``request_count`` (every ``/v1.0`` request; sign-in token requests
are not Graph requests and are not counted). Storage transactions are the requests Azurite *receives*: it runs
with ``--debug <file>`` and writes one ``RequestMethod=... RequestURL=...`` line per request, which this
benchmark counts and classifies (the server's view: every client is counted, the queue listeners' and the
agent's polling, heartbeat and timer lease included, and nothing the bench itself does touches storage while
counting).

Worker mode ``function``: the function app (local runner, own process) runs webhook, apply and export. Worker
mode ``agent``: the function app in worker mode agent (webhook, apply) plus the real on-premises agent
(``guestsync worker``, own process) consuming the export queue. Scenarios, one after another in each mode:

* idle (``--idle`` s, after the pipeline is quiet): the storage requests of an idle system per second, by kind,
  with the polling rate of each queue listener (receives of that queue) per second and per day;
* ``--isolated`` new guests invited one at a time and then the same guests renamed one at a time (givenName),
  each after the previous change reached AD and a random idle gap (uniform ``--gap-min``..``--gap-max`` s, so the
  listeners are back at their idle polling): the cost of a change that has the system to itself. Target: <= 8
  storage transactions per change net of idle polling (issue 14, goal 7);
* ``--guests`` new guests invited at once (one notification each) until all accounts are in AD; then the same
  guests renamed (one notification each) until AD has the new name: bursts;
* ``--members`` new members (userType Member, one notification each), which must get nothing;
* ``--member-repeats``: that many notifications for ``--members // 10`` members (10 changes each), to see
  whether repeated changes of one user are coalesced.

Each window runs until the last AD change (or Graph read) is seen and then no storage request other than
queue polling arrives for 2 s. Per change = window total / changes; "net of idle polling" subtracts the idle
rate (every kind of idle request) times the window length.
"""

from __future__ import annotations

import argparse
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import ldap3

from bench.common import (
    BenchStack,
    Pipeline,
    Report,
    account_exists,
    add_gap_arguments,
    add_mode_argument,
    bench_host_json,
    bench_stack,
    chosen_modes,
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
    parser.add_argument("--isolated", type=int, default=20,
                        help="new guests one at a time, then renamed one at a time, after idle gaps (20; 0 skips)")
    add_gap_arguments(parser)
    parser.add_argument("--guests", type=int, default=100, help="new guests in a burst, then renamed (100; 0 skips)")
    parser.add_argument("--members", type=int, default=1000,
                        help="member notifications, one per new member (1000; 0 skips)")
    parser.add_argument("--member-repeats", type=int, default=1000,
                        help="member notifications over members/10 members, 10 each (1000; 0 skips)")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle polling measured (30)")
    add_mode_argument(parser)
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
            return f"{op} ({queue})"
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
                if not kind.startswith(POLL):
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
        polls = sum(v for k, v in self.storage.items() if k.startswith(POLL))
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


@dataclass
class ModeCosts:
    """One worker mode's results: the idle requests and each scenario's (Graph reads, gross, net) per change."""

    idle_rate: float = 0.0
    idle: Counter[str] = field(default_factory=Counter)
    idle_seconds: float = 0.0
    scenarios: dict[str, Costs] = field(default_factory=dict)


def run(args: argparse.Namespace) -> Report:
    report = Report(NAME)
    by_mode: dict[str, ModeCosts] = {}
    with bench_stack(azurite_debug=True) as bench:
        assert bench.azurite_log is not None
        host_json, changes = bench_host_json(bench.workdir, parse_overrides(args.set))
        say(f"host.json: the repo's, {'with ' + '; '.join(changes) if changes else 'unchanged'}")
        log = AzuriteLog(bench.azurite_log)
        export_queue = bench.env["GUESTSYNC_EXPORT_QUEUE"]
        for mode in chosen_modes(args):
            with Pipeline(bench, host_json, mode) as pipe:
                say(f"\n--- {pipe.describe()}")
                subscribe(bench, pipe.host)
                meter = pipe.cpu_meter().start()
                by_mode[mode] = _scenarios(bench, log, args, mode)
                meter.stop()
                say(f"CPU over all of {mode}'s scenarios ({meter.wall:.0f} s):")
                for line in meter.lines():
                    say(f"    {line}")
    say("")
    for mode, costs in by_mode.items():
        receives = {k: v for k, v in costs.idle.items() if k.startswith(POLL)}
        say(f"{mode}: idle {costs.idle_rate:.2f} storage requests/s = {costs.idle_rate * 86400:,.0f} per idle day; "
            "polling per listener: " + ", ".join(f"{_listener(k, mode, export_queue)} {v / costs.idle_seconds:.2f}/s "
                                                 f"({v / costs.idle_seconds * 86400:,.0f}/day)"
                                                 for k, v in sorted(receives.items())))
    for mode, costs in by_mode.items():
        found = costs.scenarios
        for key, label in (("isolated new", "new guest one at a time"),
                           ("isolated update", "guest update one at a time")):
            if key in found:
                report.check(f"{mode}: storage transactions per {label} (net of idle polling)", found[key][2], 8)
        if "isolated new" in found:
            report.check(f"{mode}: Graph reads per new guest one at a time", found["isolated new"][0], 1)
        if "burst new" in found:
            report.check(f"{mode}: Graph reads per new guest (burst)", found["burst new"][0], 1)
            report.check(f"{mode}: storage transactions per new guest (burst, gross)", found["burst new"][1], 8)
            report.check(f"{mode}: Graph reads per guest update (burst)", found["burst update"][0], 1)
            report.check(f"{mode}: storage transactions per guest update (burst, gross)", found["burst update"][1], 8)
        if "members" in found:
            report.check(f"{mode}: Graph reads per 1000 member notifications ({args.members} new members)",
                         found["members"][0] * 1000, 999)
        if "member repeats" in found:
            report.check(f"{mode}: Graph reads per 1000 member notifications (10 per member, "
                         f"{args.member_repeats} in all)", found["member repeats"][0] * 1000, 999)
    return report


def _listener(kind: str, mode: str, export_queue: str) -> str:
    """Who polls the queue of a receive count: the export queue is the agent's in worker mode agent."""
    queue = kind.removeprefix(POLL).strip(" ()")
    who = "agent" if mode == "agent" and queue == export_queue else "function host"
    return f"{queue} ({who})"


def _idle(log: AzuriteLog, seconds: float, mode: str) -> ModeCosts:
    """The storage requests of the idle pipeline over ``seconds``, after it went quiet."""
    log.settle(quiet=5.0)  # past the listeners' back-off after the last work
    before = log.snapshot()
    time.sleep(seconds)
    idle = log.snapshot() - before
    rate = sum(idle.values()) / seconds
    pollers = {"function": "function host", "agent": "function host (change queue), agent (export queue)"}[mode]
    say(f"idle ({mode}): {seconds:g} s, {sum(idle.values())} storage requests = {rate:.2f}/s "
        f"= {rate * 86400:,.0f} per idle day (pollers: {pollers})")
    for kind, count in sorted(idle.items(), key=lambda kv: -kv[1]):
        per_s = count / seconds
        say(f"    {per_s:6.2f}/s  {per_s * 86400:>9,.0f}/day  {kind}")
    return ModeCosts(rate, idle, seconds)


def _one_at_a_time(log: AzuriteLog, sim: GraphSimulator, name: str, count: int, gap: tuple[float, float],
                   change: Callable[[int], Callable[[], bool]]) -> Window:
    """``count`` changes, each after an idle gap and each waiting until AD shows it (``change(i)`` makes change
    ``i`` and returns the check that it arrived)."""
    rng = random.Random(7)  # the same gaps in every run
    with Window(name, count, log, sim) as window:
        for i in range(count):
            time.sleep(rng.uniform(*gap))
            wait_until(change(i), 60, f"{name}: change {i} in AD", interval=0.05)
    return window


def _scenarios(bench: BenchStack, log: AzuriteLog, args: argparse.Namespace, mode: str) -> ModeCosts:
    sim, ou = bench.stack.sim, bench.stack.guest_ou
    gap = (float(args.gap_min), float(args.gap_max))
    tag = mode[0]
    admin = bench.stack.dc.admin_connection()
    try:
        warm = [invite(sim, f"warm{tag}", i)["id"] for i in range(3)]
        wait_until(lambda: all(account_exists(admin, guest_account_dn(u, ou)) for u in warm), 120, "warm-up guests")
        costs = _idle(log, args.idle, mode)

        def has_name(uid: str, name: str) -> Callable[[], bool]:
            def check() -> bool:
                admin.search(guest_account_dn(uid, ou), f"(givenName={name})", ldap3.BASE, attributes=["1.1"])
                return bool(admin.entries)
            return check

        if args.isolated:
            isolated: list[str] = []

            def new_guest(i: int) -> Callable[[], bool]:
                isolated.append(invite(sim, f"iso{tag}", i)["id"])
                dn = guest_account_dn(isolated[-1], ou)
                return lambda: account_exists(admin, dn)

            def rename(i: int) -> Callable[[], bool]:
                sim.update_user(isolated[i], givenName=f"Single{i}")
                return has_name(isolated[i], f"Single{i}")

            for key, label, change in (("isolated new", "new guests", new_guest),
                                       ("isolated update", "guest updates (givenName)", rename)):
                window = _one_at_a_time(log, sim, f"{label} one at a time, {gap[0]:g}-{gap[1]:g} s apart ({mode})",
                                        args.isolated, gap, change)
                costs.scenarios[key] = window.show(costs.idle_rate)

        if args.guests:
            base = count_accounts(admin, ou)
            with Window(f"new guests, burst ({mode})", args.guests, log, sim) as new:
                uids = [invite(sim, f"cost{tag}", i)["id"] for i in range(args.guests)]
                _wait_ad(lambda: count_accounts(admin, ou) >= base + args.guests, "the new guests' accounts")
            costs.scenarios["burst new"] = new.show(costs.idle_rate)

            def renamed() -> bool:
                admin.search(ou, f"(givenName=Renamed{tag})", ldap3.LEVEL, attributes=["1.1"])
                return len(admin.entries) >= len(uids)

            with Window(f"guest updates (givenName), burst ({mode})", args.guests, log, sim) as update:
                for uid in uids:
                    sim.update_user(uid, givenName=f"Renamed{tag}")
                _wait_ad(renamed, "the renamed guests")
            costs.scenarios["burst update"] = update.show(costs.idle_rate)

        if args.members:
            with Window(f"member notifications ({args.members} new members, {mode})", args.members, log,
                        sim) as members:
                for i in range(args.members):
                    sim.add_user(displayName=f"Member {i}", userType="Member",
                                 userPrincipalName=f"m{tag}{i}@contoso.com", mail=f"m{tag}{i}@contoso.com",
                                 givenName="Member", surname=str(i))
                _settle_members(members)
            costs.scenarios["members"] = members.show(costs.idle_rate)

        if args.member_repeats:
            people = max(1, args.members // 10)
            ids = [sim.add_user(displayName=f"Repeat {i}", userType="Member",
                                userPrincipalName=f"r{tag}{i}@contoso.com")["id"] for i in range(people)]
            sim.wait_for_deliveries(60)
            log.settle()
            with Window(f"member notifications ({args.member_repeats} for {people} members, {mode})",
                        args.member_repeats, log, sim) as repeats:
                for n in range(args.member_repeats):
                    sim.update_user(ids[n % people], jobTitle=f"title {n}")
                _settle_members(repeats)
            costs.scenarios["member repeats"] = repeats.show(costs.idle_rate)
        return costs
    finally:
        admin.unbind()


def _settle_members(window: Window) -> None:
    """Members get no account: wait until every notification is delivered; the window then waits until storage
    is quiet (apply reads each member's state row, so the last apply ends the activity). How many Graph reads
    that took is the measure, so it cannot be the stop condition."""
    window.sim.wait_for_deliveries(300)


def main(argv: list[str] | None = None) -> Report:
    return run_benchmark(NAME, __doc__, add_arguments, run, argv)

