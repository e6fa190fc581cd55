"""Throughput: N new guests end to end vs raw ldap3 LDAPS adds of N equivalent accounts, same DC, same run.

End to end: the simulator invites N guests at once; each change notification goes to the webhook of the
function app (local runner, worker mode ``function``, a process of its own), then apply (Graph read, state),
the export queue and the export function, which creates the account over LDAPS. The clock runs from the first
invite until all N accounts are in the guest OU (base-object reads of the accounts still missing, in invite
order, every 0.1 s: cheap for the DC, unlike counting the OU).

Raw: one ldap3 connection bound as the same service account adds N accounts with the same attributes, a
password (unicodePwd) and userAccountControl 262656, one after the other (the worker has one connection too);
half of them before the end-to-end run and half after, so that a drift of the machine's load (other work on
it) affects both sides alike.

Diagnostic (not a target): the Directory adapter's LDAP work for one new guest (find_guest, then
create_guest: uniqueness search, add, read back), sequentially for ``--adapter-sample`` accounts, to show how
much of the gap is LDAP round trips rather than queues, state and Graph.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import profile
from bench.common import (
    USER_OBJECT_CLASSES,
    BenchStack,
    HostProcess,
    Report,
    account_exists,
    ad_values,
    bench_host_json,
    bench_stack,
    count_accounts,
    guest_account_dn,
    guest_user,
    invite,
    parse_overrides,
    run_benchmark,
    say,
    service_connection,
    subscribe,
    wait_until,
)
from shared.adapters.directory import Directory
from shared.adapters.state import StateStore
from shared.core.ad_rules import new_password
from shared.core.rules import initial_user_account_control
from shared.settings import load_settings

NAME = "throughput"
#: A warm-up burst (not timed) big enough to open the worker's LDAP connection pool (GUESTSYNC_LDAP_CONNECTIONS,
#: 8 by default), as the raw side's one connection is open before its clock starts.
WARMUP = 24


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--guests", type=int, default=1000, help="guests (and raw accounts) to create (1000)")
    parser.add_argument("--adapter-sample", type=int, default=100,
                        help="accounts for the Directory adapter diagnostic (100; 0 skips it)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a host.json value, e.g. extensions.queues.batchSize=32 (repeatable)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the end-to-end run")
    parser.add_argument("--profile-host", action="store_true",
                        help="sample the function host with py-spy (PY_SPY or on PATH) during the first 30 s of the "
                             "end-to-end run and print what its event loop thread did")


def _e2e(bench: BenchStack, host: HostProcess, guests: int, timeout: float,
         profile_to: Path | None = None) -> tuple[float, list[str]]:
    sim, ou = bench.stack.sim, bench.stack.guest_ou
    admin = bench.stack.dc.admin_connection()
    try:
        # Warm up (Graph token, queues and table created, NetBIOS name cached, connections open); not timed.
        warm = [invite(sim, "warm", i)["id"] for i in range(WARMUP)]
        wait_until(lambda: all(account_exists(admin, guest_account_dn(u, ou)) for u in warm), 120, "warm-up guests")
        base = count_accounts(admin, ou)
        spy = profile.start(host.pid, profile_to, 30) if profile_to is not None else None
        meter = bench.cpu_meter(host).start()
        wall_start = datetime.now(UTC)
        started = time.monotonic()
        dns = [guest_account_dn(invite(sim, "tp", i)["id"], ou) for i in range(guests)]
        invited = time.monotonic() - started
        found = 0

        def done() -> bool:
            # Cheap for the DC: base-object reads of the next missing accounts in invite order, not a scan.
            nonlocal found
            while found < len(dns) and account_exists(admin, dns[found]):
                found += 1
            return found == len(dns)

        expected = guests + WARMUP
        delivered_at = 0.0
        while len(sim.deliveries.sent) + len(sim.deliveries.failed) < expected:
            time.sleep(0.05)
        delivered_at = time.monotonic() - started
        finished = wait_until(done, timeout, f"{guests} accounts in AD", interval=0.1)
        meter.stop()
        if count_accounts(admin, ou) != base + guests:
            raise RuntimeError("the guest OU does not hold the expected number of accounts")
        elapsed = finished - started
        notes = [f"invites issued in {invited:.2f} s; all {len(sim.deliveries.sent)} notifications delivered to the "
                 f"webhook after {delivered_at:.2f} s ({len(sim.deliveries.failed)} failed)",
                 *_stages(bench, wall_start),
                 *meter.lines()]
        if spy is not None and profile_to is not None:
            spy.wait(120)
            notes += ([*profile.event_loop_breakdown(profile_to), *profile.export_threads_breakdown(profile_to)]
                      if profile_to.exists() else ["py-spy wrote nothing"])
        elif profile_to is not None:
            notes.append("py-spy not found (set PY_SPY): no profile")
        return elapsed, notes
    finally:
        admin.unbind()


def _stages(bench: BenchStack, wall_start: datetime) -> list[str]:
    """When each stage handled the guests of the run, from the state records: the webhook's receipt
    (exported_at - latency_ms), apply's Graph read (graph_read_at) and the export's start (exported_at).
    A stage whose span is close to the whole run is the one that set the pace."""
    state = StateStore.from_connection_string(bench.env["AzureWebJobsStorage"], "guestsync")
    received, applied, exported = [], [], []
    for record in state:
        if record.exported_at is None or record.graph_read_at is None or record.exported_at < wall_start:
            continue
        exported.append((record.exported_at - wall_start).total_seconds())
        applied.append((record.graph_read_at - wall_start).total_seconds())
        if record.latency_ms is not None:
            received.append(exported[-1] - record.latency_ms / 1000)
    lines = []
    for name, values in (("webhook received", received), ("apply read Graph", applied),
                         ("export started", exported)):
        if values:
            values.sort()
            p10, p90 = values[len(values) // 10], values[len(values) * 9 // 10]
            rate = (len(values) * 0.8) / (p90 - p10) if p90 > p10 else float("inf")
            lines.append(f"stage '{name}': first {values[0]:.2f} s, last {values[-1]:.2f} s after the first invite; "
                         f"{rate:.1f} guests/s between its 10th and 90th percentile")
    return lines


def _raw(bench: BenchStack, guests: int, tag: str) -> tuple[float, list[str]]:
    env, ou = bench.env, bench.stack.guest_ou
    users = [guest_user(bench.stack.sim.tenant_domain, tag, i) for i in range(guests)]
    requests = []
    for user in users:
        values = ad_values(user)
        password = new_password(avoid=(values["sAMAccountName"], values.get("displayName", "")))
        requests.append((guest_account_dn(user.id, ou), {
            **values,
            "unicodePwd": f'"{password}"'.encode("utf-16-le"),
            "userAccountControl": initial_user_account_control(),
        }))
    conn = service_connection(env)
    try:
        meter = bench.cpu_meter().start()
        started = time.monotonic()
        for dn, attributes in requests:
            if not conn.add(dn, USER_OBJECT_CLASSES, attributes):
                raise RuntimeError(f"raw add of {dn} failed: {conn.result}")
        elapsed = time.monotonic() - started
        meter.stop()
    finally:
        conn.unbind()
    return elapsed, meter.lines()


def _adapter(bench: BenchStack, count: int) -> float:
    """Sequential find_guest + create_guest through the Directory adapter (what export does in AD)."""
    settings = load_settings(bench.env, need_directory=True)
    assert settings.directory is not None
    users = [guest_user(bench.stack.sim.tenant_domain, "adp", i) for i in range(count)]
    with Directory(settings.directory, archive_ou=settings.deprovisioning.archive_ou) as directory:
        directory.netbios_domain()  # cached per worker after its first export
        started = time.monotonic()
        for user in users:
            values = ad_values(user)
            if directory.find_guest(user.id) is not None:
                raise RuntimeError("unexpected existing account")
            directory.create_guest(user.id, dict(values), new_password(avoid=(values["sAMAccountName"],)),
                                   initial_user_account_control())
        return time.monotonic() - started


def run(args: argparse.Namespace) -> Report:
    report = Report(NAME)
    guests = int(args.guests)
    with bench_stack() as bench:
        host_json, changes = bench_host_json(bench.workdir, parse_overrides(args.set))
        say(f"host.json: the repo's, {'with ' + '; '.join(changes) if changes else 'unchanged'}")
        first, second = guests // 2, guests - guests // 2
        say(f"raw, first half: {first} ldap3 adds over LDAPS as the service account, one connection")
        raw1_s, raw_notes = _raw(bench, first, "rawa")
        for note in raw_notes:
            say(f"  {note}")
        with HostProcess(bench, host_json) as host:
            subscribe(bench, host)
            say(f"end to end: inviting {guests} guests (notification -> webhook -> apply -> export -> AD)")
            e2e_s, notes = _e2e(bench, host, guests, args.timeout,
                                bench.workdir / "host.folded" if args.profile_host else None)
            host_stats = host.stop()
        for note in notes:
            say(f"  {note}")
        if host_stats:
            say(f"  function host total: {host_stats['cpu_user_s'] + host_stats['cpu_system_s']:.1f} CPU-s, "
                f"peak RSS {host_stats['maxrss_kb'] / 1024:.0f} MB")
        say(f"raw, second half: {second} adds")
        raw2_s, raw_notes = _raw(bench, second, "rawb")
        for note in raw_notes:
            say(f"  {note}")
        say(f"  raw halves: {first / raw1_s:.1f} and {second / raw2_s:.1f} accounts/s")
        raw_s = raw1_s + raw2_s
        adapter_s = _adapter(bench, args.adapter_sample) if args.adapter_sample > 0 else None
        admin = bench.stack.dc.admin_connection()
        try:
            total = count_accounts(admin, bench.stack.guest_ou)
        finally:
            admin.unbind()
    e2e_rate, raw_rate = guests / e2e_s, guests / raw_s
    say(f"end to end: {guests} accounts in {e2e_s:.2f} s = {e2e_rate:.1f} accounts/s")
    say(f"raw ldap3:  {guests} accounts in {raw_s:.2f} s = {raw_rate:.1f} accounts/s")
    if adapter_s is not None:
        say(f"diagnostic: Directory adapter find_guest + create_guest, sequential: "
            f"{args.adapter_sample / adapter_s:.1f} accounts/s ({adapter_s / args.adapter_sample * 1000:.1f} ms each "
            f"vs {raw_s / guests * 1000:.1f} ms per raw add)")
    say(f"accounts in the guest OU at the end: {total} (expected {guests * 2 + WARMUP + args.adapter_sample})")
    report.check("e2e/raw accounts per second", e2e_rate / raw_rate, 0.8, at_most=False)
    return report


def main(argv: list[str] | None = None) -> Report:
    return run_benchmark(NAME, __doc__, add_arguments, run, argv)

