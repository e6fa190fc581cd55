"""Webhook: response times of ``POST /api/graph/notifications`` at a steady rate, open loop, on loopback, with
the queue functions running (worker mode ``function``) on the work those notifications cause.

The function app runs on the local runner in a process of its own; an open-loop generator
(``bench.loadgen``, another process) sends one-item change notifications with the right clientState and tenant
at ``--rate`` requests/s for ``--duration`` s after a ``--warmup`` that is not counted. Each request's time runs
from when it was due to the end of the answer. Each notification names a guest that exists in the Graph
simulator (``--users`` guests, created before the run without notifications; by default one per request, so
every notification is a new guest), so every accepted POST puts a message on the change queue, and the queue
functions do the real work meanwhile: apply reads the guest from Graph and saves it, the export creates its
account in AD. Graph reads and accounts created during the notification window are printed as evidence.
``--no-queues`` runs the HTTP listener only (the webhook's floor without that competition).

``--layout`` says where the queue functions run. ``flex`` (default): in a host process of their own, as the
Flex Consumption plan that ``infra/`` deploys runs them (the HTTP functions scale as one group on instances of
their own, every queue-triggered function on others: per-function scaling), so the webhook shares the machine's
CPU with apply and export but not its process. ``shared``: in the webhook's process, as one instance of a
Premium or Dedicated plan runs every function of the app.

Floors, in the same run against the same server, before the notifications (the queues are idle then): the
subscription validation handshake (``?validationToken=...``, answered with the token, no queue write) and the
host's ``POST /admin/host/ping`` (an empty 200 without invoking a function), at the same rate.

Every window prints the CPU of each process and of the rest of the machine, which includes the load
generator; ``--background-load`` keeps that many cores busy (busy-loop processes) during the windows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from bench.common import (
    REPO,
    BackgroundLoad,
    BenchStack,
    CpuMeter,
    HostProcess,
    Report,
    add_background_argument,
    bench_host_json,
    bench_stack,
    count_accounts,
    describe,
    parse_overrides,
    percentile,
    run_benchmark,
    say,
)

NAME = "webhook"
QUEUE_HOST = "queue host (apply, export)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second (200)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds at the same rate before (2)")
    parser.add_argument("--layout", choices=("flex", "shared"), default="flex",
                        help="flex: the queue functions in a host process of their own, as Flex Consumption's "
                             "per-function scaling runs them (default); shared: in the webhook's process")
    parser.add_argument("--users", type=int, default=0,
                        help="guests the notifications name in turn (default: one per request, warm-up included)")
    parser.add_argument("--no-queues", action="store_true",
                        help="HTTP listener only: the queue functions do not run (the changes stay queued)")
    add_background_argument(parser)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a host.json value")


def notification(bench: BenchStack, user_id: str) -> bytes:
    """One change notification for one user, as Graph sends it (clientState and tenant of this app)."""
    sim = bench.stack.sim
    item = {
        "subscriptionId": str(uuid.uuid4()),
        "subscriptionExpirationDateTime": "2099-01-01T00:00:00Z",
        "clientState": bench.env["GRAPH_CLIENT_STATE"],
        "changeType": "updated",
        "resource": f"Users/{user_id}",
        "tenantId": sim.tenant_id,
        "resourceData": {"@odata.type": "#Microsoft.Graph.User", "@odata.id": f"Users/{user_id}", "id": user_id,
                         "organizationId": sim.tenant_id},
    }
    return json.dumps({"value": [item]}).encode()


def _guests(bench: BenchStack, count: int) -> list[str]:
    """``count`` guests in the simulator, as an invitation makes them; no subscription exists yet, so no
    notification is sent for them: the load generator's are the only ones."""
    sim = bench.stack.sim
    if sim.subscriptions:
        raise RuntimeError("the simulator holds a subscription: it would notify the guests a second time")
    ids = []
    for i in range(count):
        email = f"hook{i}@partner{i % 97}.example"
        ids.append(sim.add_user(userType="Guest", mail=email, displayName=f"Webhook Guest {i}", givenName="Webhook",
                                surname=str(i), userPrincipalName=f"{email.replace('@', '_')}#EXT#@"
                                                                  f"{sim.tenant_domain}")["id"])
    return ids


def _load(url: str, bodies_file: Path | None, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.loadgen", "--url", url, "--rate", str(args.rate),
               "--duration", str(args.duration), "--warmup", str(args.warmup)]
    if bodies_file is not None:
        command += ["--bodies-file", str(bodies_file)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True,  # noqa: S603
                            timeout=args.duration + args.warmup + 120)
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def _show(what: str, data: dict[str, Any], meter: CpuMeter) -> None:
    latencies = data["latencies_s"]
    say(f"  {what}: {describe(latencies)}; statuses {data['statuses']}; achieved {data['achieved_rate']:.1f} req/s; "
        f"send lateness p99 {data['send_lateness_p99_s'] * 1000:.1f} ms; connections {data['connections_opened']}")
    for line in meter.lines():
        say(f"    {line}")


def run(args: argparse.Namespace) -> Report:
    report = Report(NAME)
    queues = not args.no_queues
    requests = int(args.rate * (args.duration + args.warmup))
    with bench_stack() as bench:
        host_json, changes = bench_host_json(bench.workdir, parse_overrides(args.set))
        apart = queues and args.layout == "flex"
        where = "in a host process of their own (Flex Consumption layout)" if apart else "in the webhook's process"
        say(f"host.json: the repo's, {'with ' + '; '.join(changes) if changes else 'unchanged'}; queue functions "
            f"{'running (worker mode function) ' + where if queues else 'off (HTTP only)'}")
        users = _guests(bench, args.users or requests)
        bodies_file = bench.workdir / "notifications.jsonl"
        bodies_file.write_bytes(b"\n".join(notification(bench, uid) for uid in users) + b"\n")
        say(f"{len(users)} guests in the Graph simulator; {requests} notifications name them in turn")
        admin = bench.stack.dc.admin_connection()
        with HostProcess(bench, host_json, queues=queues and not apart) as host, \
                contextlib.ExitStack() as workers, BackgroundLoad(args.background_load) as background:
            more = {QUEUE_HOST: workers.enter_context(HostProcess(bench, host_json))} if apart else {}
            say(background.describe())
            url = f"{host.base_url}/api/graph/notifications?" + urlencode({"code": bench.env["GUESTSYNC_WEBHOOK_KEY"]})
            say(f"open loop, {args.rate:g} req/s for {args.duration:g} s (+{args.warmup:g} s warm-up), loopback")
            meter = bench.cpu_meter(host, background=background, more_hosts=more).start()
            floor = _load(url + "&validationToken=bench-validation-token", None, args)
            meter.stop()
            _show("floor (validation handshake)", floor, meter)
            meter = bench.cpu_meter(host, background=background, more_hosts=more).start()
            ping = _load(f"{host.base_url}/admin/host/ping", None, args)
            meter.stop()
            _show("reference: admin ping (empty 200, no function)", ping, meter)
            accounts_before = count_accounts(admin, bench.stack.guest_ou)
            graph_before = Counter(bench.stack.sim.request_count)
            meter = bench.cpu_meter(host, background=background, more_hosts=more).start()
            notes = _load(url, bodies_file, args)
            meter.stop()
            graph = Counter(bench.stack.sim.request_count) - graph_before
            created = count_accounts(admin, bench.stack.guest_ou) - accounts_before
            _show("notifications (1 item each, queued)", notes, meter)
            say(f"    queue work during the notifications ({meter.wall:.1f} s): Graph {dict(graph)}; "
                f"{created} accounts created in AD")
            queued = _queue_length(bench, bench.env["GUESTSYNC_CHANGE_QUEUE"])
            exports = _queue_length(bench, bench.env["GUESTSYNC_EXPORT_QUEUE"])
        admin.unbind()
        say(f"  afterwards: change queue ~{queued} messages, export queue ~{exports}")
    ok_floor = set(floor["statuses"]) == {"200"}
    ok_notes = set(notes["statuses"]) == {"202"}
    if not (ok_floor and ok_notes):
        say(f"  WARNING: unexpected statuses (floor {floor['statuses']}, notifications {notes['statuses']})")
    p99, floor_p99 = percentile(notes["latencies_s"], 99), percentile(floor["latencies_s"], 99)
    say(f"  p99 notifications {p99 * 1000:.1f} ms vs floor {floor_p99 * 1000:.1f} ms "
        f"(ratio {p99 / floor_p99:.2f})")
    what = (f"with the queue functions running, {'apart' if apart else 'in the same process'}" if queues
            else "HTTP only")
    if args.background_load:
        what += f", {args.background_load} core(s) of background load"
    report.check(f"notification p99 at {args.rate:g} req/s ({what})", p99 * 1000, 100, unit=" ms")
    return report


def _queue_length(bench: BenchStack, name: str) -> int:
    from shared.adapters.queues import MessageQueue

    queue = MessageQueue.from_connection_string(bench.env["AzureWebJobsStorage"], name)
    return queue.approximate_count()


def main(argv: list[str] | None = None) -> Report:
    return run_benchmark(NAME, __doc__, add_arguments, run, argv)
