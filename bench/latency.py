"""Latency: invite -> account readable in AD, at a steady rate of new guests.

The simulator invites one guest every 1/``--rate`` s on a fixed schedule for ``--duration`` s (open loop);
each invite makes Graph's change notification at once, which goes to the function app (local runner, worker
mode ``function``, a process of its own). A watcher polls AD over LDAPS for the accounts still expected
(a base-object search for each of the 50 oldest pending guests per round, ``--poll-interval`` s between
rounds; accounts appear roughly in invite order); a guest's latency runs from
just before its invite to the watcher's first successful read of ``CN=<id>`` in the guest OU. The watcher's
round time is printed: it bounds the measurement error.

Why not only the state's ``latency_ms``: the export computes it from the webhook's receipt of the
notification to the *start* of the export (before the LDAP searches and the add), so it leaves out the
notification delivery and the AD work. It is printed too, for the same guests.

Floor, same run: the path's raw components, sequentially: one Graph GET of a user through the msgraph-sdk
adapter (as apply reads it) and one raw ldap3 add of an equivalent account (password, userAccountControl)
as the service account.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time

import ldap3

from bench.common import (
    USER_OBJECT_CLASSES,
    BenchStack,
    HostProcess,
    Report,
    account_exists,
    ad_values,
    bench_host_json,
    bench_stack,
    describe,
    guest_account_dn,
    guest_user,
    invite,
    parse_overrides,
    percentile,
    run_benchmark,
    say,
    service_connection,
    subscribe,
    wait_until,
)
from shared.adapters.graph import GraphClient
from shared.adapters.state import StateStore
from shared.core.ad_rules import new_password
from shared.core.rules import initial_user_account_control
from shared.settings import load_settings

NAME = "latency"
#: Base-object reads per watcher round at most: the DC must not be loaded by the watcher when a backlog builds.
MAX_CHECKS = 50


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=float, default=20.0, help="invites per second (20)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of invites (30)")
    parser.add_argument("--poll-interval", type=float, default=0.01, help="pause between watcher rounds (0.01 s)")
    parser.add_argument("--floor-samples", type=int, default=100, help="samples of the raw components (100)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a host.json value")


class Watcher(threading.Thread):
    """Polls AD for the accounts of guests invited and not yet seen."""

    def __init__(self, conn: ldap3.Connection, guest_ou: str, interval: float) -> None:
        super().__init__(name="ad-watcher", daemon=True)
        self.conn, self.guest_ou, self.interval = conn, guest_ou, interval
        self.lock = threading.Lock()
        self.pending: dict[str, float] = {}
        self.seen: dict[str, float] = {}
        self.rounds: list[float] = []
        self.stop_event = threading.Event()

    def expect(self, uid: str, since: float) -> None:
        with self.lock:
            self.pending[uid] = since

    def run(self) -> None:
        while not self.stop_event.is_set():
            started = time.monotonic()
            with self.lock:
                uids = list(self.pending)[:MAX_CHECKS]  # the oldest first (accounts come roughly in order)
            for uid in uids:
                if account_exists(self.conn, guest_account_dn(uid, self.guest_ou)):
                    now = time.monotonic()
                    with self.lock:
                        self.seen[uid] = now - self.pending.pop(uid)
            if uids:
                self.rounds.append(time.monotonic() - started)
            self.stop_event.wait(self.interval)

    def outstanding(self) -> int:
        with self.lock:
            return len(self.pending)


def _steady(bench: BenchStack, rate: float, duration: float, interval: float) -> tuple[Watcher, list[float]]:
    sim, ou = bench.stack.sim, bench.stack.guest_ou
    conn = bench.stack.dc.admin_connection()
    watcher = Watcher(conn, ou, interval)
    watcher.start()
    lateness: list[float] = []
    count = int(rate * duration)
    start = time.monotonic() + 0.1
    for i in range(count):
        due = start + i / rate
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        before = time.monotonic()
        lateness.append(before - due)
        user = invite(sim, "lat", i)
        watcher.expect(user["id"], before)
    wait_until(lambda: watcher.outstanding() == 0, 120, "every invited guest's account")
    watcher.stop_event.set()
    watcher.join(5)
    conn.unbind()
    return watcher, lateness


def _floor(bench: BenchStack, samples: int, user_ids: list[str]) -> tuple[list[float], list[float], list[float]]:
    settings = load_settings(bench.env)
    ou = bench.stack.guest_ou

    async def graph_reads() -> list[float]:
        out = []
        async with GraphClient(settings.graph) as graph:
            await graph.get_user(user_ids[0])  # token and connection, not timed
            for i in range(samples):
                started = time.monotonic()
                user = await graph.get_user(user_ids[i % len(user_ids)])
                out.append(time.monotonic() - started)
                assert user is not None
        return out

    gets = asyncio.run(graph_reads())
    conn = service_connection(bench.env)
    adds = []
    try:
        for i in range(samples):
            user = guest_user(bench.stack.sim.tenant_domain, "floor", i)
            values = ad_values(user)
            attributes = {**values, "userAccountControl": initial_user_account_control(),
                          "unicodePwd": f'"{new_password(avoid=(values["sAMAccountName"],))}"'.encode("utf-16-le")}
            started = time.monotonic()
            if not conn.add(guest_account_dn(user.id, ou), USER_OBJECT_CLASSES, attributes):
                raise RuntimeError(f"raw add failed: {conn.result}")
            adds.append(time.monotonic() - started)
    finally:
        conn.unbind()
    return gets, adds, [g + a for g, a in zip(gets, adds, strict=True)]


def run(args: argparse.Namespace) -> Report:
    report = Report(NAME)
    with bench_stack() as bench:
        host_json, changes = bench_host_json(bench.workdir, parse_overrides(args.set))
        say(f"host.json: the repo's, {'with ' + '; '.join(changes) if changes else 'unchanged'}")
        with HostProcess(bench, host_json) as host:
            subscribe(bench, host)
            admin = bench.stack.dc.admin_connection()
            warm = [invite(bench.stack.sim, "warm", i)["id"] for i in range(3)]
            wait_until(lambda: all(account_exists(admin, guest_account_dn(u, bench.stack.guest_ou)) for u in warm),
                       120, "warm-up guests")
            admin.unbind()
            say(f"steady load: {args.rate:g} invites/s for {args.duration:g} s")
            meter = bench.cpu_meter(host).start()
            watcher, lateness = _steady(bench, args.rate, args.duration, args.poll_interval)
            meter.stop()
        latencies = list(watcher.seen.values())
        say(f"  invite -> account readable in AD: {describe(latencies)}")
        say(f"  invite schedule lateness: p99 {percentile(lateness, 99) * 1000:.1f} ms, "
            f"max {max(lateness) * 1000:.1f} ms")
        say(f"  watcher round (measurement resolution): {describe(watcher.rounds)} + {args.poll_interval * 1000:.0f} "
            f"ms pause")
        for line in meter.lines():
            say(f"  {line}")
        state = StateStore.from_connection_string(bench.env["AzureWebJobsStorage"], "guestsync")
        recorded = [r.latency_ms / 1000 for r in (state.get(uid) for uid in watcher.seen)
                    if r is not None and r.latency_ms is not None]
        say(f"  state latency_ms (webhook receipt -> export start) of the same guests: {describe(recorded)}")
        say(f"floor: {args.floor_samples} x (Graph GET via the msgraph-sdk adapter + raw ldap3 add)")
        gets, adds, sums = _floor(bench, args.floor_samples, list(watcher.seen))
        say(f"  Graph GET /users/{{id}}: {describe(gets)}")
        say(f"  LDAP add:               {describe(adds)}")
        say(f"  sum:                    {describe(sums)}")
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    say(f"  end to end vs floor: p50 {p50 / percentile(sums, 50):.1f}x, p99 {p99 / percentile(sums, 99):.1f}x")
    report.check("invite->AD p50", p50, 0.5, unit=" s")
    report.check("invite->AD p99", p99, 2.0, unit=" s")
    return report


def main(argv: list[str] | None = None) -> Report:
    return run_benchmark(NAME, __doc__, add_arguments, run, argv)
