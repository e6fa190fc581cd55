"""``guestsync``: the operator's command line.

serve      run the function app locally (HTTP, queue and timer triggers through the app's registrations)
worker     the on-premises AD worker agent: polls the export queue, writes to AD over LDAPS
subscribe  create or renew the Graph subscription on /users now
status     counts by state, pending exports, per-guest errors, poison messages (``--json``)
demo       the whole job on this machine: Azurite, Samba AD DC, Graph simulator, runner
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.domain import GuestStatus, GuestsyncError
from shared.settings import BINDING_DEFAULTS

REPO_ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("guestsync.cli")


def _apply_binding_defaults(env: dict[str, str]) -> dict[str, str]:
    for name, value in BINDING_DEFAULTS.items():
        env.setdefault(name, value)
    return env


def _host_json() -> Path:
    return REPO_ROOT / "host.json"


def cmd_serve(args: argparse.Namespace) -> int:
    from shared.runner import LocalFunctionsHost

    env = _apply_binding_defaults(os.environ)  # type: ignore[arg-type]
    import function_app

    host = LocalFunctionsHost(function_app.app, env=env, host_json=_host_json(), http_port=args.port)
    host.start()
    print(f"guestsync functions listening on {host.base_url}/api (Ctrl+C to stop)", flush=True)
    host.run_forever()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import azure.functions as func

    from shared.functions import make_worker_blueprint
    from shared.runner import LocalFunctionsHost
    from shared.settings import load_settings

    load_settings(need_directory=True)  # fail fast, naming the missing setting
    env = _apply_binding_defaults(os.environ)  # type: ignore[arg-type]
    app = func.FunctionApp()
    app.register_functions(make_worker_blueprint())
    host = LocalFunctionsHost(app, env=env, host_json=_host_json(), http_port=None)
    host.start()
    print("guestsync worker polling the export queue (Ctrl+C to stop)", flush=True)
    host.run_forever()
    return 0


def cmd_subscribe(args: argparse.Namespace) -> int:
    from shared.bootstrap import services
    from shared.services.subscriptions import ensure_subscription

    async def run() -> dict[str, Any]:
        s = services()
        try:
            sub = await ensure_subscription(s.graph, s.settings)
        finally:
            await s.graph.close()
        return {"id": sub.id, "resource": sub.resource, "expirationDateTime": sub.expiration.isoformat(),
                "notificationUrl": sub.notification_url}

    print(json.dumps(asyncio.run(run()), indent=2))
    return 0


def collect_status() -> dict[str, Any]:
    from shared.adapters.queues import MessageQueue
    from shared.bootstrap import services

    s = services()
    counts = s.state.counts()
    errors = [
        {"uid": r.uid, "userPrincipalName": r.entry.user_principal_name, "error": r.error}
        for r in s.state
        if r.status is GuestStatus.ERROR
    ]
    conn = s.settings.storage_connection
    queues = {
        name: MessageQueue.from_connection_string(conn, name).approximate_count()
        for name in (
            s.settings.change_queue,
            s.settings.export_queue,
            s.settings.change_poison_queue,
            s.settings.export_poison_queue,
        )
    }
    return {"guests": dict(sorted(counts.items())), "queues": queues, "errors": errors}


def cmd_status(args: argparse.Namespace) -> int:
    status = collect_status()
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print("Guests by state:")
    for name in GuestStatus:
        print(f"  {name.value:<14} {status['guests'].get(name.value, 0)}")
    print("Queues (approximate messages):")
    for name, count in status["queues"].items():
        print(f"  {name:<32} {count}")
    if status["errors"]:
        print("Guests with errors:")
        for err in status["errors"]:
            print(f"  {err['uid']}  {err['userPrincipalName']}: {err['error']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from localenv.demo import run_demo

    return run_demo(guests=args.guests, members=args.members)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="guestsync", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the function app locally")
    serve.add_argument("--port", type=int, default=7071)
    serve.set_defaults(func=cmd_serve)
    sub.add_parser("worker", help="run the on-premises AD worker agent").set_defaults(func=cmd_worker)
    sub.add_parser("subscribe", help="create or renew the Graph subscription now").set_defaults(func=cmd_subscribe)
    status = sub.add_parser("status", help="counts, queues and per-guest errors")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
    demo = sub.add_parser("demo", help="run the whole job locally")
    demo.add_argument("--guests", type=int, default=10)
    demo.add_argument("--members", type=int, default=5)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("azure", "httpx", "urllib3", "msal"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except GuestsyncError as exc:
        print(f"guestsync: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
