"""Reconcile: a no-op reconcile of N guests already in sync vs the floor of the same data.

Seeding (not timed as part of the benchmark, but printed), the fastest honest way found:

* Graph: N guests added to the simulator with ``sim.add_user`` before any subscription exists (no
  notifications). ``--page-size`` sets the simulator's users/delta page size (Graph decides it; 999 here
  by default, because the simulator re-projects every user on every page it serves, see RESULTS.md).
* AD: the DC is stopped and the N accounts (what an export writes at creation: sAMAccountName, givenName, sn,
  mail, userPrincipalName, displayName, userAccountControl 262656 and the ownership mark; no password, which
  the reconcile never reads) are added to its sam.ldb through Samba's DSDB module stack in ldb's batch mode
  (``bench/seed_ad.py``, ``bench/seed_samba.py``: objectSid from the RID pool, inherited ACLs and indexes as
  for an LDAP add, linear in N), then it is started; a sample is read back as the service account and one more
  guest is created over LDAP (and deleted) to show the RID pool moved on. The seeded database is kept (per N,
  DC template and Samba version; ``--no-seed-cache`` to seed afresh), and a later run copies it into its DC
  with the same guest ids and ownership key: seconds instead of minutes.
* State: one PROVISIONED record per guest, joined on that objectSid, written as batch table transactions
  (100 entities per transaction, one partition) from ``--table-threads`` threads.

Then, each in a process of its own (``bench.reconcile_child``; time and peak RSS are that process's):
the floor (users/delta full pass through the msgraph-sdk adapter + paged LDAP scan of the OUs,
``Directory.iter_managed_accounts``), ``reconcile(full=True)``, ``reconcile`` from the stored deltaLink, the
floor again with ``--floor-runs 2`` (the ratio then uses the mean), and the incremental floor (one delta round
from the stored link + the scan), against which the incremental reconcile is measured. The reconcile runs must
be no-ops (no findings, no exports). Memory is each process's peak RSS (VmHWM; ru_maxrss would include the bench
process's, see reconcile_child.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from azure.data.tables import TableServiceClient

from bench.common import (
    OTHERS,
    REPO,
    BenchStack,
    Report,
    ad_values,
    bench_stack,
    guest_account_dn,
    guest_user,
    run_benchmark,
    say,
)
from bench.seed_ad import restore_seed, seed_accounts, seed_cache_dir, verify_seeded
from shared.core.domain import GuestStatus
from shared.core.records import GuestRecord
from shared.core.rules import inbound
from shared.settings import load_settings

NAME = "reconcile"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--guests", type=int, default=100_000, help="guests already in sync (100000)")
    parser.add_argument("--page-size", type=int, default=999, help="the simulator's users/delta page size (999)")
    parser.add_argument("--seed-batch", type=int, default=10000, help="adds per sam.ldb transaction (10000)")
    parser.add_argument("--seed-cache", action=argparse.BooleanOptionalAction, default=True,
                        help="keep the seeded AD database for the next run of this size, and use a kept one (on)")
    parser.add_argument("--table-threads", type=int, default=4, help="threads writing state batches (4)")
    parser.add_argument("--floor-runs", type=int, default=1, choices=(1, 2),
                        help="floor runs: 1 (before the reconciles) or 2 (also after; the ratio uses the mean)")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="one more full reconcile under tracemalloc for its traced peak (slow; not timed)")


def _seed(bench: BenchStack, guests: int, args: argparse.Namespace) -> dict[str, float]:
    """Seed Graph, AD and state; return how long each took (printed with the results)."""
    stack = bench.stack
    sim, dc, ou = stack.sim, stack.dc, stack.guest_ou
    times: dict[str, float] = {}
    cache = seed_cache_dir(bench, guests) if args.seed_cache else None
    restored = restore_seed(bench, cache) if cache is not None else None
    ids = restored[0] if restored else [str(uuid.uuid4()) for _ in range(guests)]
    started = time.monotonic()
    users = [guest_user(sim.tenant_domain, "rc", i, ids[i]) for i in range(guests)]
    for user in users:
        sim.add_user(id=user.id, userType=user.user_type, displayName=user.display_name, givenName=user.given_name,
                     surname=user.surname, userPrincipalName=user.user_principal_name, mail=user.mail,
                     accountEnabled=True)
    times["Graph simulator"] = time.monotonic() - started
    say(f"  Graph: {guests} guests added to the simulator in {times['Graph simulator']:.1f} s")
    seeded = restored[1] if restored else seed_accounts(bench, users, args.seed_batch, cache)
    for line in seeded.log:
        say(line)
    if cache is not None:
        _prune_other_seeds(cache)
    if seeded.from_cache:
        times["AD (copy of the cached seed, start)"] = seeded.seconds
        say(f"  AD: {len(seeded.sids)} accounts from the cached seed (whose adds took {seeded.adds_seconds:.1f} s), "
            f"DC restarted, in {seeded.seconds:.1f} s")
    else:
        times["AD (sam.ldb adds)"] = seeded.adds_seconds
        times["AD (stop, adds, start)"] = seeded.seconds
        say(f"  AD: {len(seeded.sids)} accounts in sam.ldb, DC restarted, in {seeded.seconds:.1f} s")
    started = time.monotonic()
    say(f"  AD check: {verify_seeded(bench, users, seeded.sids)}")
    times["AD check"] = time.monotonic() - started
    sids = seeded.sids
    started = time.monotonic()
    settings = load_settings(bench.env)
    table = TableServiceClient.from_connection_string(bench.env["AzureWebJobsStorage"]).create_table_if_not_exists(
        settings.state_table)
    now = datetime.now(UTC)
    entities = []
    for user in users:
        values = ad_values(user)
        record = GuestRecord(uid=user.id, entry=inbound(user), status=GuestStatus.PROVISIONED, version=1,
                             exported_version=1, reason="guest is in scope", object_sid=sids[user.id.lower()],
                             dn=guest_account_dn(user.id, ou), sam_account_name=values["sAMAccountName"],
                             domain=dc.domain, graph_read_at=now, exported_at=now)
        entities.append(record.to_entity())
    chunks = [entities[i:i + 100] for i in range(0, len(entities), 100)]

    def submit(chunk: list[dict[str, Any]]) -> None:
        table.submit_transaction([("create", e) for e in chunk])

    with ThreadPoolExecutor(args.table_threads) as pool:
        list(pool.map(submit, chunks))
    times["state (Azurite)"] = time.monotonic() - started
    say(f"  state: {len(entities)} records in {len(chunks)} batch transactions in {times['state (Azurite)']:.1f} s")
    return times


def _prune_other_seeds(keep: Path) -> None:
    """Seeds of the same size under other keys (older code, another DC template) are about 1.2 GB each at 100,000
    accounts and will not be used again: remove them."""
    prefix = keep.name.rsplit("-", 1)[0] + "-"
    for other in keep.parent.glob(prefix + "*"):
        if other.is_dir() and other != keep:
            shutil.rmtree(other, ignore_errors=True)
            other.with_name(other.name + ".lock").unlink(missing_ok=True)


def _child(bench: BenchStack, mode: str, *extra: str) -> dict[str, Any]:
    """One measured run in a process of its own, with the CPU each part of the machine spent meanwhile: the
    child's own (its rusage, from RUSAGE_CHILDREN) is taken out of "everything else"."""
    meter = bench.cpu_meter().start()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run([sys.executable, "-m", "bench.reconcile_child", mode, *extra],  # noqa: S603
                            cwd=REPO, env=_child_env(bench), capture_output=True, text=True, timeout=7200)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = meter.stop()
    if result.returncode != 0:
        raise RuntimeError(f"reconcile_child {mode} failed:\n{result.stderr[-3000:]}")
    data: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    child = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    cpu[OTHERS] -= child
    cpu = {"measured process": child, **cpu}
    wall = max(meter.wall, 1e-9)
    data["cpu"] = ", ".join(f"{name} {seconds:.1f} CPU-s ({seconds / wall:.0%} of a core)"
                            for name, seconds in cpu.items())
    return data


def _child_env(bench: BenchStack) -> dict[str, str]:
    return {**os.environ, **bench.env}


def _mb(kb: float) -> str:
    return f"{kb / 1024:.0f} MB"


def run(args: argparse.Namespace) -> Report:
    report = Report(NAME)
    guests = int(args.guests)
    with bench_stack() as bench:
        bench.stack.sim.page_size = args.page_size
        say(f"seeding {guests} guests in sync (simulator users/delta page size {args.page_size})")
        seeding = _seed(bench, guests, args)
        runs: dict[str, dict[str, Any]] = {}
        plan = [("floor", "floor1"), ("full", "full"), ("incremental", "incremental")]
        if args.floor_runs == 2:
            plan.append(("floor", "floor2"))
        plan += [("floor-incremental", "floor-incremental"), ("graph-raw", "graph-raw")]
        for mode, key in plan:
            say(f"running {key} ...")
            runs[key] = data = _child(bench, mode)
            say(f"  {key}: {json.dumps({k: v for k, v in data.items() if k != 'cpu'})}")
            say(f"  {key} CPU: {data['cpu']}")
        if args.tracemalloc:
            runs["traced"] = _child(bench, "full", "--tracemalloc")
            say(f"  full under tracemalloc: peak {_mb(runs['traced']['tracemalloc_peak_kb'])} "
                f"(time {runs['traced']['total_s']:.1f} s, not comparable)")
    say("seeding: " + "; ".join(f"{what} {seconds:.1f} s" for what, seconds in seeding.items()))
    floor_runs = [runs[k] for k in ("floor1", "floor2") if k in runs]
    floor = sum(r["total_s"] for r in floor_runs) / len(floor_runs)
    for key in ("full", "incremental"):
        data = runs[key]
        if data["actions"] or data["exports_queued"]:
            say(f"  WARNING: the {key} reconcile was not a no-op: {data['actions']}, "
                f"{data['exports_queued']} exports queued")
    for r in floor_runs:
        say(f"floor: users/delta {r['graph_s']:.1f} s + LDAP scan {r['ad_s']:.1f} s = {r['total_s']:.1f} s "
            f"({r['graph_pages']} delta pages, {r['graph_users']} users, {r['ad_accounts']} accounts)")
    say(f"  of which the simulator + HTTP alone (users/delta over plain httpx, no SDK): "
        f"{runs['graph-raw']['graph_s']:.1f} s")
    say(f"incremental floor: one delta round from the stored link {runs['floor-incremental']['graph_s']:.2f} s + "
        f"LDAP scan {runs['floor-incremental']['ad_s']:.1f} s = {runs['floor-incremental']['total_s']:.1f} s")
    for key in ("full", "incremental"):
        data = runs[key]
        phases = ", ".join(f"{k} {v:.1f} s" for k, v in data["phases_s"].items())
        rss = data["rss_after_kb"] - data["rss_before_kb"]
        say(f"reconcile {key} ({data['delta_mode']} delta): {data['total_s']:.1f} s ({phases}); "
            f"{data['guests_in_state']} in state, {data['graph_users']} from Graph, {data['ad_accounts']} in AD; "
            f"peak RSS {_mb(data['rss_before_kb'])} before the run -> {_mb(data['rss_after_kb'])} (+{_mb(rss)})")
    say(f"floor process's peak RSS: {_mb(runs['floor1']['rss_after_kb'])}")
    for key in ("floor1", "floor2", "full", "incremental"):
        if key in runs:
            say(f"CPU during {key}: {runs[key]['cpu']}")
    floors = {"full": floor, "incremental": runs["floor-incremental"]["total_s"]}
    for key in ("full", "incremental"):
        data = runs[key]
        report.check(f"{key} reconcile / {key} floor time", data["total_s"] / floors[key], 1.5)
        report.check(f"{key} reconcile peak memory (peak RSS of its process)", data["rss_after_kb"] / 1024, 300,
                     unit=" MB")
    say(f"(incremental reconcile / full floor: {runs['incremental']['total_s'] / floor:.2f})")
    return report


def main(argv: list[str] | None = None) -> Report:
    return run_benchmark(NAME, __doc__, add_arguments, run, argv)

