"""Webhook: response times of ``POST /api/graph/notifications`` at a steady rate, open loop, on loopback.

The function app runs on the local runner in a process of its own; an open-loop generator
(``bench.loadgen``, another process) sends a valid one-item change notification with the right clientState
and tenant at ``--rate`` requests/s for ``--duration`` s after a ``--warmup`` that is not counted. Each
request's time runs from when it was due to the end of the answer. Every accepted POST puts one message on
the change queue (Azurite).

Floor, in the same run against the same server: the subscription validation handshake
(``?validationToken=...``, answered with the token and no queue write) at the same rate. For reference also
the host's ``POST /admin/host/ping`` (an empty 200 without invoking a function): the runner writes a reply's
headers and its body in two ``send`` calls, and a reply with a body then waits for the client's delayed ACK
(Nagle), about 40 ms on Linux loopback; the validation reply has a body, the 202 of a notification has none.
"Everything else on the machine" includes the load generator.

By default only the HTTP listener runs (``--with-queues``: the queue functions run too, so apply reads
every queued change from Graph and the state table meanwhile, competing for the same two cores).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from bench.common import (
    REPO,
    BenchStack,
    HostProcess,
    Report,
    bench_host_json,
    bench_stack,
    describe,
    parse_overrides,
    percentile,
    run_benchmark,
    say,
)

NAME = "webhook"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second (200)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds at the same rate before (2)")
    parser.add_argument("--with-queues", action="store_true", help="run the queue functions as well")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a host.json value")


def notification_body(bench: BenchStack) -> bytes:
    """One change notification for one user, as Graph sends it (clientState and tenant of this app)."""
    sim, user_id = bench.stack.sim, str(uuid.uuid4())
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


def _load(url: str, body_file: Path | None, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.loadgen", "--url", url, "--rate", str(args.rate),
               "--duration", str(args.duration), "--warmup", str(args.warmup)]
    if body_file is not None:
        command += ["--body-file", str(body_file)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True,  # noqa: S603
                            timeout=args.duration + args.warmup + 120)
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def _show(what: str, data: dict[str, Any]) -> None:
    latencies = data["latencies_s"]
    say(f"  {what}: {describe(latencies)}; statuses {data['statuses']}; achieved {data['achieved_rate']:.1f} req/s; "
        f"send lateness p99 {data['send_lateness_p99_s'] * 1000:.1f} ms; connections {data['connections_opened']}")


def run(args: argparse.Namespace) -> Report:
    report = Report(NAME)
    with bench_stack() as bench:
        host_json, changes = bench_host_json(bench.workdir, parse_overrides(args.set))
        say(f"host.json: the repo's, {'with ' + '; '.join(changes) if changes else 'unchanged'}; queue functions "
            f"{'running' if args.with_queues else 'off (HTTP only)'}")
        body_file = bench.workdir / "notification.json"
        body_file.write_bytes(notification_body(bench))
        with HostProcess(bench, host_json, queues=args.with_queues) as host:
            url = f"{host.base_url}/api/graph/notifications?" + urlencode({"code": bench.env["GUESTSYNC_WEBHOOK_KEY"]})
            say(f"open loop, {args.rate:g} req/s for {args.duration:g} s (+{args.warmup:g} s warm-up), loopback")
            meter = bench.cpu_meter(host).start()
            floor = _load(url + "&validationToken=bench-validation-token", None, args)
            meter.stop()
            _show("floor (validation handshake)", floor)
            for line in meter.lines():
                say(f"    {line}")
            meter = bench.cpu_meter(host).start()
            notes = _load(url, body_file, args)
            meter.stop()
            _show("notifications (1 item, queued)", notes)
            for line in meter.lines():
                say(f"    {line}")
            meter = bench.cpu_meter(host).start()
            ping = _load(f"{host.base_url}/admin/host/ping", None, args)
            meter.stop()
            _show("reference: admin ping (empty 200, no function)", ping)
            queued = _queue_length(bench)
        say(f"  change queue holds {queued} messages afterwards")
    ok_floor = set(floor["statuses"]) == {"200"}
    ok_notes = set(notes["statuses"]) == {"202"}
    if not (ok_floor and ok_notes):
        say(f"  WARNING: unexpected statuses (floor {floor['statuses']}, notifications {notes['statuses']})")
    p99, floor_p99 = percentile(notes["latencies_s"], 99), percentile(floor["latencies_s"], 99)
    say(f"  p99 notifications {p99 * 1000:.1f} ms vs floor {floor_p99 * 1000:.1f} ms "
        f"(ratio {p99 / floor_p99:.2f})")
    report.check("notification p99", p99 * 1000, 100, unit=" ms")
    return report


def _queue_length(bench: BenchStack) -> int:
    from shared.adapters.queues import MessageQueue

    queue = MessageQueue.from_connection_string(bench.env["AzureWebJobsStorage"], bench.env["GUESTSYNC_CHANGE_QUEUE"])
    return queue.approximate_count()


def main(argv: list[str] | None = None) -> Report:
    return run_benchmark(NAME, __doc__, add_arguments, run, argv)
