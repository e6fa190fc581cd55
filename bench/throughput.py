"""Throughput: N new guests end to end vs raw ldap3 LDAPS adds of N equivalent accounts, same DC, same run,
``--runs`` times in one invocation, in the chosen worker mode(s); and the CPU each process spends per guest.

End to end: the simulator invites N guests at once; each change notification goes to the webhook of the
function app (local runner, a process of its own), then apply (Graph read, state) and the export, which creates
the account over LDAPS: in worker mode ``function`` the function app exports, in worker mode ``agent`` the real
on-premises agent (``guestsync worker``, another process) consumes the export queue. The clock runs from the
first invite until all N accounts are in the guest OU (base-object reads of the accounts still missing, in
invite order, every 0.1 s: cheap for the DC, unlike counting the OU). The function app (and agent) keeps running
from one run to the next, so each run starts from its idle polling, as a burst in production would. An untimed
warm-up burst per worker mode opens the LDAP connection pool first.

Raw: one ldap3 connection bound as the same service account adds N accounts with the same attributes, a
password (unicodePwd) and userAccountControl 262656, one after the other; half of them just before each
end-to-end run and half just after, so that a drift of the machine's load (other work on it) affects both sides
alike. Each run's ratio is e2e accounts/s over raw accounts/s; the target is checked on the median of the runs.

CPU: every measured window prints the CPU of each process (function host, agent, Samba, Azurite, the bench with
the Graph simulator, ``--background-load``) and of the rest of the machine. Per provisioned guest: each process's
CPU-ms over the end-to-end windows divided by the guests they provisioned; the function host's is checked
against a third of 16 CPU-ms (issue 14, goal 6; in worker mode agent the agent's is shown alongside).

Diagnostic (not a target): the Directory adapter's LDAP work for one new guest (find_guest, then
create_guest: uniqueness search, add, read back), sequentially for ``--adapter-sample`` accounts, to show how
much of the gap is LDAP round trips rather than queues, state and Graph.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench import profile
from bench.common import (
    AGENT,
    AZURITE,
    HOST,
    PER_ITEM,
    SAMBA,
    USER_OBJECT_CLASSES,
    BackgroundLoad,
    BenchStack,
    CpuMeter,
    Pipeline,
    Report,
    account_exists,
    ad_values,
    add_background_argument,
    add_mode_argument,
    bench_host_json,
    bench_stack,
    chosen_modes,
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
#: Issue 14, goal 6: the function host's CPU per provisioned guest at most a third of the ~16 CPU-ms measured
#: in the second round (1000-guest run, worker mode function).
HOST_CPU_MS_BEFORE = 16.0
TARGET_RATIO = 0.9


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--guests", type=int, default=1000, help="guests (and raw accounts) per run (1000)")
    parser.add_argument("--runs", type=int, default=3,
                        help="end-to-end runs per worker mode, each between two raw halves (3); the target is "
                             "checked on the median")
    add_mode_argument(parser)
    add_background_argument(parser)
    parser.add_argument("--adapter-sample", type=int, default=100,
                        help="accounts for the Directory adapter diagnostic (100; 0 skips it)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a host.json value, e.g. extensions.queues.batchSize=32 (repeatable)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for one end-to-end run")
    parser.add_argument("--profile-host", action="store_true",
                        help="sample the function host with py-spy (PY_SPY or on PATH) during the first 30 s of the "
                             "first end-to-end run and print what its event loop thread did")


@dataclass
class RunResult:
    e2e_s: float
    raw_s: float
    guests: int
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return (self.guests / self.e2e_s) / (self.guests / self.raw_s)


def _warm_up(bench: BenchStack, tag: str) -> None:
    """Graph token, queues and table created, NetBIOS name cached, the LDAP pool open; not timed."""
    sim, ou = bench.stack.sim, bench.stack.guest_ou
    admin = bench.stack.dc.admin_connection()
    try:
        warm = [invite(sim, tag, i)["id"] for i in range(WARMUP)]
        wait_until(lambda: all(account_exists(admin, guest_account_dn(u, ou)) for u in warm), 120, "warm-up guests")
    finally:
        admin.unbind()


def _e2e(bench: BenchStack, pipe: Pipeline, guests: int, tag: str, timeout: float, background: BackgroundLoad,
         profile_to: Path | None = None) -> tuple[float, CpuMeter, list[str]]:
    sim, ou = bench.stack.sim, bench.stack.guest_ou
    admin = bench.stack.dc.admin_connection()
    try:
        base = count_accounts(admin, ou)
        delivered_before = len(sim.deliveries.sent) + len(sim.deliveries.failed)
        spy = profile.start(pipe.host.pid, profile_to, 30) if profile_to is not None else None
        meter = pipe.cpu_meter(background).start(sample_every=0.5)
        wall_start = datetime.now(UTC)
        started = time.monotonic()
        dns = [guest_account_dn(invite(sim, tag, i)["id"], ou) for i in range(guests)]
        invited = time.monotonic() - started
        found = 0

        def done() -> bool:
            # Cheap for the DC: base-object reads of the next missing accounts in invite order, not a scan.
            nonlocal found
            while found < len(dns) and account_exists(admin, dns[found]):
                found += 1
            return found == len(dns)

        while len(sim.deliveries.sent) + len(sim.deliveries.failed) < delivered_before + guests:
            time.sleep(0.05)
        delivered_at = time.monotonic() - started
        finished = wait_until(done, timeout, f"{guests} accounts in AD", interval=0.1)
        meter.stop()
        if count_accounts(admin, ou) != base + guests:
            raise RuntimeError("the guest OU does not hold the expected number of accounts")
        elapsed = finished - started
        stages, last_apply = _stages(bench, wall_start)
        notes = [f"invites issued in {invited:.2f} s; all notifications delivered to the webhook after "
                 f"{delivered_at:.2f} s ({len(sim.deliveries.failed)} failed in all)", *stages]
        if last_apply is not None:
            notes.append(_samba_while_applying(meter, last_apply, elapsed))
        if spy is not None and profile_to is not None:
            spy.wait(120)
            notes += ([*profile.event_loop_breakdown(profile_to), *profile.export_threads_breakdown(profile_to)]
                      if profile_to.exists() else ["py-spy wrote nothing"])
        elif profile_to is not None:
            notes.append("py-spy not found (set PY_SPY): no profile")
        return elapsed, meter, notes
    finally:
        admin.unbind()


def _samba_while_applying(meter: CpuMeter, last_apply: float, elapsed: float) -> str:
    """How busy the DC was kept while apply still read guests from Graph, and after: the two halves show whether
    the run lost time to the DC waiting for work or to the machine's cores being taken by the rest of the stack."""
    def window(since: float, until: float) -> str:
        parts = [f"{name} {share:.0%}" for name in (SAMBA, HOST, AGENT, AZURITE)
                 if name in meter.result and (share := meter.share(name, since, until)) is not None]
        return ", ".join(parts) or "too short to sample"
    return (f"share of a core while apply still read Graph (0-{last_apply:.1f} s): {window(0.0, last_apply)}; "
            f"after it ({last_apply:.1f}-{elapsed:.1f} s): {window(last_apply, elapsed)}")


def _stages(bench: BenchStack, wall_start: datetime) -> tuple[list[str], float | None]:
    """When each stage handled the guests of the run, from the state records: the webhook's receipt
    (exported_at - latency_ms), apply's Graph read (graph_read_at) and the export's start (exported_at).
    A stage whose span is close to the whole run is the one that set the pace. Also: when apply read its last
    guest (seconds after the first invite)."""
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
    return lines, (max(applied) if applied else None)


def _raw(bench: BenchStack, pipe: Pipeline, guests: int, tag: str, background: BackgroundLoad, when: str) -> float:
    """``guests`` raw adds; prints the window's CPU (the function host and agent idle meanwhile)."""
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
        meter = pipe.cpu_meter(background).start()
        started = time.monotonic()
        for dn, attributes in requests:
            if not conn.add(dn, USER_OBJECT_CLASSES, attributes):
                raise RuntimeError(f"raw add of {dn} failed: {conn.result}")
        elapsed = time.monotonic() - started
        meter.stop()
    finally:
        conn.unbind()
    say(f"    raw ({when}): {guests} adds in {elapsed:.2f} s = {guests / elapsed:.1f} accounts/s; "
        f"CPU: {meter.summary()}")
    return elapsed


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


def _mode(bench: BenchStack, host_json: Path, mode: str, args: argparse.Namespace,
          background: BackgroundLoad) -> list[RunResult]:
    guests = int(args.guests)
    first, second = guests // 2, guests - guests // 2
    results: list[RunResult] = []
    profile_to = bench.workdir / f"host-{mode}.folded" if args.profile_host else None
    with Pipeline(bench, host_json, mode) as pipe:
        say(f"\n--- {pipe.describe()}")
        subscribe(bench, pipe.host)
        _warm_up(bench, f"warm{mode[0]}")
        for n in range(1, args.runs + 1):
            say(f"run {n} of {args.runs} ({mode}): {first} raw adds, {guests} guests end to end "
                f"(notification -> webhook -> apply -> export -> AD), {second} raw adds")
            raw1 = _raw(bench, pipe, first, f"r{mode[0]}{n}a", background, "before")
            e2e_s, meter, notes = _e2e(bench, pipe, guests, f"t{mode[0]}{n}", args.timeout, background,
                                       profile_to if n == 1 else None)
            for note in notes:
                say(f"    {note}")
            say(f"    end to end: {guests} accounts in {e2e_s:.2f} s = {guests / e2e_s:.1f} accounts/s; CPU:")
            for line in meter.lines():
                say(f"      {line}")
            say(f"    {meter.per_item(guests, 'provisioned guest')}")
            raw2 = _raw(bench, pipe, second, f"r{mode[0]}{n}b", background, "after")
            result = RunResult(e2e_s, raw1 + raw2, guests, dict(meter.result))
            results.append(result)
            say(f"    run {n}: e2e {guests / e2e_s:.1f} / raw {guests / result.raw_s:.1f} accounts/s "
                f"= {result.ratio:.3f}")
    stats = pipe.host_stats
    if stats:
        say(f"  function host over its whole life: {stats['cpu_user_s'] + stats['cpu_system_s']:.1f} CPU-s, "
            f"peak RSS {stats['maxrss_kb'] / 1024:.0f} MB")
    return results


def run(args: argparse.Namespace) -> Report:
    report = Report(NAME)
    modes = chosen_modes(args)
    by_mode: dict[str, list[RunResult]] = {}
    with bench_stack() as bench:
        host_json, changes = bench_host_json(bench.workdir, parse_overrides(args.set))
        say(f"host.json: the repo's, {'with ' + '; '.join(changes) if changes else 'unchanged'}")
        with BackgroundLoad(args.background_load) as background:
            say(background.describe())
            for mode in modes:
                by_mode[mode] = _mode(bench, host_json, mode, args, background)
        adapter_s = _adapter(bench, args.adapter_sample) if args.adapter_sample > 0 else None
        admin = bench.stack.dc.admin_connection()
        try:
            total = count_accounts(admin, bench.stack.guest_ou)
        finally:
            admin.unbind()
    guests = int(args.guests)
    if adapter_s is not None:
        say(f"diagnostic: Directory adapter find_guest + create_guest, sequential: "
            f"{args.adapter_sample / adapter_s:.1f} accounts/s ({adapter_s / args.adapter_sample * 1000:.1f} ms each)")
    expected = len(modes) * (WARMUP + 2 * guests * args.runs) + args.adapter_sample
    say(f"accounts in the guest OU at the end: {total} (expected {expected})")
    say("")
    for mode, results in by_mode.items():
        ratios = [r.ratio for r in results]
        say(f"{mode}: e2e/raw per run " + ", ".join(f"{x:.3f}" for x in ratios)
            + f"; median {statistics.median(ratios):.3f}")
        provisioned = sum(r.guests for r in results)
        cpu = {name: sum(r.cpu.get(name, 0.0) for r in results) for name in results[0].cpu}
        wall = sum(r.e2e_s for r in results)
        per_guest = {name: seconds / provisioned * 1000 for name, seconds in cpu.items()}
        say(f"{mode}: CPU-ms per provisioned guest over the e2e windows ({provisioned} guests): "
            + ", ".join(f"{name} {per_guest[name]:.2f}" for name in PER_ITEM if name in per_guest)
            + "; the same windows: " + ", ".join(f"{name} {cpu[name] / wall:.0%} of one core"
                                                 for name in cpu if name not in PER_ITEM))
    for mode, results in by_mode.items():
        report.check(f"{mode}: e2e/raw accounts per second, median of {len(results)}",
                     statistics.median(r.ratio for r in results), TARGET_RATIO, at_most=False)
    for mode, results in by_mode.items():
        provisioned = sum(r.guests for r in results)
        host_ms = sum(r.cpu.get(HOST, 0.0) for r in results) / provisioned * 1000
        agent_ms = sum(r.cpu.get(AGENT, 0.0) for r in results) / provisioned * 1000
        label = f"{mode}: function host CPU per provisioned guest"
        if mode == "agent":
            label += f" (agent alongside: {agent_ms:.2f} ms)"
        report.check(label, host_ms, round(HOST_CPU_MS_BEFORE / 3, 2), unit=" ms")
    return report


def main(argv: list[str] | None = None) -> Report:
    return run_benchmark(NAME, __doc__, add_arguments, run, argv)
