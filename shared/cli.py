"""``guestsync``: the operator's command line.

serve      run the function app locally (HTTP, queue and timer triggers through the app's registrations;
           needs a source checkout: the local runner is dev tooling, devtools/)
worker     the on-premises AD worker agent: polls the export queue, writes to AD over LDAPS
subscribe  create or renew the Graph subscription on /users now
status     counts by state, pending exports, errors, held changes, poison messages, subscription expiry,
           last reconcile (``--json``)
reconcile  compare Entra ID (users/delta), state and the managed OUs now; repair drift
plan       the same comparison as a dry run: what reconcile would do, with reasons (``--json``)
approve    list, release or reject deprovisionings held by the mass-change breaker
check      preflight: settings, Graph sign-in and permissions, webhook handshake, subscription, storage,
           AD (LDAPS, bind, OUs, a write probe); exit code 1 when a check fails (``--json``, ``--no-probe``)
kcd        KCD readiness per guest: account enabled in the guest OU, UPN equal to the Entra UPN, smart card
           required; with a delegation-enabled principal and the app's SPN, a real S4U ticket request per guest
           (``--json``); exit code 1 when a guest is not ready
demo       the whole job on this machine: Azurite, Samba AD DC, Graph simulator, runner (source checkout)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tomllib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from shared.bootstrap import Services
from shared.core.domain import GuestStatus, GuestsyncError, graph_id
from shared.settings import BINDING_DEFAULTS, load_settings

log = logging.getLogger("guestsync.cli")

#: The distribution name (pyproject.toml) whose installed metadata carries the version.
DISTRIBUTION = "guestsync"
#: The package a source checkout has and the installed one has not: the local Functions runner, the Graph
#: simulator, the local environment and the demo (dev tooling stays out of the wheel).
DEV_TOOLING = "devtools"
JSON_HELP = "print the result as JSON (one shape per command) instead of text"
VERBOSE_HELP = "debug logging, and the traceback of a failure"


def _apply_binding_defaults(env: dict[str, str]) -> dict[str, str]:
    for name, value in BINDING_DEFAULTS.items():
        env.setdefault(name, value)
    return env


def _host_json() -> Path:
    """The runner's host options, shipped inside the package: an installed agent has no repository root to
    read the deployment's host.json from. tests/unit/test_packaging.py keeps both queue settings equal."""
    return Path(str(resources.files("shared").joinpath("host_options.json")))


def version() -> str:
    """The installed distribution's version; in a checkout that was never installed, pyproject.toml's."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        pass
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        return f"{tomllib.loads(pyproject.read_text(encoding='utf-8'))['project']['version']} (source checkout)"
    except (OSError, ValueError, KeyError):
        return "unknown (not installed)"


def _services(*, need_directory: bool = False) -> Services:
    """Clients of this command's own (not the process-wide ones: a command runs its own event loop)."""
    return Services(load_settings(need_directory=need_directory))


@contextmanager
def _dev_tooling(command: str, what: str, instead: str) -> Iterator[None]:
    """Around the import of devtools/ for ``serve`` and ``demo``: the dev tooling lives in the source checkout,
    never in the installed package, so an installed agent says so in one line instead of a traceback."""
    checkout = Path(__file__).resolve().parent.parent  # an editable install runs from the checkout itself
    if (checkout / DEV_TOOLING / "__init__.py").is_file() and str(checkout) not in sys.path:
        sys.path.append(str(checkout))
    try:
        yield
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != DEV_TOOLING:
            raise
        raise GuestsyncError(f"{command} needs a source checkout ({what} from {DEV_TOOLING}/, which the "
                             f"installed package leaves out): {instead}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    from shared.functions import create_app_from_environment

    with _dev_tooling("serve", "it runs the function app through the local Functions runner",
                      "run `guestsync serve` there, or the app under the Functions host (`func start`)"):
        from devtools.runner import LocalFunctionsHost

    from shared.adapters.storage import probe

    env = _apply_binding_defaults(os.environ)  # type: ignore[arg-type]
    probe(load_settings(env).storage)  # a missing setting or unreachable storage: one line, before the host starts
    # The app function_app.py gives the Functions host, built by the package (function_app.py is not installed).
    host = LocalFunctionsHost(create_app_from_environment(), env=env, host_json=_host_json(), http_port=args.port)
    host.start()
    print(f"guestsync functions listening on {host.base_url}/api (Ctrl+C to stop)", flush=True)
    host.run_forever()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """The on-premises agent (shared.agent): until SIGTERM, Ctrl+C or the service manager stops it."""
    import signal
    import threading

    from shared.agent import run_agent
    from shared.agent.logfiles import add_log_file
    from shared.settings import load_agent_settings

    settings = load_settings(need_directory=True)  # fail fast, naming the missing setting
    agent = load_agent_settings()
    add_log_file(agent.log_file)
    stop = threading.Event()
    for name in ("SIGTERM", "SIGINT", "SIGBREAK"):  # SIGBREAK: Ctrl+Break in a Windows console
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), lambda *_: stop.set())
    print("guestsync worker polling the export queue (Ctrl+C to stop)", flush=True)
    return run_agent(stop, settings, agent)


def cmd_subscribe(args: argparse.Namespace) -> int:
    from shared.services.subscriptions import ensure_subscription, url_without_key

    async def run() -> dict[str, Any]:
        s = _services()
        try:
            sub = await ensure_subscription(s.graph, s.settings, state=s.state)
        finally:
            await s.graph.close()
        return {"id": sub.id, "resource": sub.resource, "expirationDateTime": sub.expiration.isoformat(),
                "notificationUrl": url_without_key(sub.notification_url)}  # never print the Functions key

    sub = asyncio.run(run())
    if args.json:
        print(json.dumps(sub, indent=2))
    else:
        print(f"Graph subscription {sub['id']} on {sub['resource']}: expires {sub['expirationDateTime']}; "
              f"notifications to {sub['notificationUrl']}")
    return 0


def _subscription_status(s: Any) -> list[dict[str, Any]] | dict[str, str]:
    """Our users subscription(s) and when they expire; an error text instead when Graph is unreachable."""
    from shared.services.subscriptions import RENEW_WHEN_LEFT, url_without_key

    async def run() -> list[dict[str, Any]]:
        try:
            subs = await s.graph.list_subscriptions()
        finally:
            await s.graph.close()
        now = datetime.now(UTC)
        return [
            {"id": x.id, "resource": x.resource, "expirationDateTime": x.expiration.isoformat(),
             "hoursLeft": round((x.expiration - now).total_seconds() / 3600, 1),
             "renewDue": x.expiration - now < RENEW_WHEN_LEFT}
            for x in subs
            if not s.settings.webhook.notification_url
            or url_without_key(x.notification_url) == url_without_key(s.settings.webhook.notification_url)
        ]

    try:
        return asyncio.run(run())
    except GuestsyncError as exc:
        return {"error": str(exc)}
    except Exception as exc:  # Graph out of reach must not hide what storage says
        from shared.cli_failures import explain

        return {"error": explain(exc, "status").removeprefix("guestsync status: ")}


def collect_status(*, graph: bool = True) -> dict[str, Any]:
    """Everything an operator checks first, read-only: state counts, queues, errors, held changes,
    poison messages, subscription expiry and the last reconcile."""
    from shared.adapters.queues import MessageQueue
    from shared.adapters.state import StateStore
    from shared.agent import health as agent_health
    from shared.agent.lease import lease_status
    from shared.services.reconcile import delta_status, last_report

    s = _services()
    # read-only: status never creates the table or a queue (a missing one is reported, or counts as empty)
    state = StateStore.reader(s.settings.storage, s.settings.state_table)
    counts = state.counts()
    error_records = list(state.with_status(GuestStatus.ERROR))
    errors = [
        {"uid": r.uid, "userPrincipalName": r.entry.user_principal_name, "error": r.error}
        for r in error_records
    ]
    security = [_adoptable_item(r) for r in error_records if r.security is not None]
    held = [_held_item(r) for r in state.with_status(GuestStatus.HELD)]
    names = (s.settings.change_queue, s.settings.export_queue, s.settings.change_poison_queue,
             s.settings.export_poison_queue)
    queues = {name: MessageQueue.from_settings(s.settings.storage, name, read_only=True) for name in names}
    poison = {
        name: queues[name].peek(10)
        for name in (s.settings.change_poison_queue, s.settings.export_poison_queue)
    }
    depths = {name: q.approximate_count() for name, q in queues.items()}
    return {
        "guests": {status.value: counts.get(status.value, 0) for status in GuestStatus},
        "pendingExports": depths[s.settings.export_queue],
        "queues": depths,
        "errors": errors,
        "securityFindings": security,
        "held": held,
        "poisonMessages": {name: bodies for name, bodies in poison.items() if bodies},
        "subscriptions": _subscription_status(s) if graph else {"error": "not checked (--no-graph)"},
        "lastReconcile": _reconcile_summary(last_report(state)),
        "agents": agent_health.agents(state),
        "timerLease": lease_status(state),
        "delta": delta_status(state),
    }


def _held_item(record: Any) -> dict[str, Any]:
    """A held deprovisioning as status and approve list it: why the guest left, and why it is held."""
    return {"uid": record.uid, "userPrincipalName": record.entry.user_principal_name, "reason": record.reason,
            "held": record.error}


def _reconcile_summary(report: dict[str, Any] | None) -> dict[str, Any] | None:
    if not report:
        return None
    return {k: report.get(k) for k in ("startedAt", "finishedAt", "deltaMode", "graphUsers", "adAccounts",
                                       "guestsInState", "actions")}


def cmd_status(args: argparse.Namespace) -> int:
    status = collect_status(graph=not args.no_graph)
    if args.json:
        print(json.dumps(status, indent=2, default=str))
        return 0
    print("Guests by state:")
    for name, count in status["guests"].items():
        print(f"  {name:<14} {count}")
    print(f"Pending exports: {status['pendingExports']}")
    print("Queues (approximate messages):")
    for name, count in status["queues"].items():
        print(f"  {name:<32} {count}")
    subs = status["subscriptions"]
    if isinstance(subs, dict):
        print(f"Graph subscription: unknown ({subs['error']})")
    elif not subs:
        print("Graph subscription: NONE (run `guestsync subscribe`)")
    for sub in subs if isinstance(subs, list) else []:
        due = "  renewal due" if sub["renewDue"] else ""
        print(f"Graph subscription {sub['id']}: expires {sub['expirationDateTime']} ({sub['hoursLeft']} h){due}")
    rec = status["lastReconcile"]
    if rec:
        actions = ", ".join(f"{k} {v}" for k, v in (rec["actions"] or {}).items()) or "no drift"
        print(f"Last reconcile: {rec['finishedAt']} ({rec['deltaMode']}): {actions}")
    else:
        print("Last reconcile: never")
    _print_agents(status["agents"], status["timerLease"])
    if status["held"]:
        print("Held by the mass-change breaker (`guestsync approve --all` or `--reject`):")
        for item in status["held"]:
            print(f"  {item['uid']}  {item['userPrincipalName']}: {item['reason']}")
    if status["securityFindings"]:
        print("SECURITY: changes refused (nothing was written; see `guestsync adopt` for objects to take over):")
        for item in status["securityFindings"]:
            print(f"  {item['uid']}  {item['userPrincipalName']} [{item['finding']}]: {item['error']}")
    if status["errors"]:
        print("Guests with errors:")
        for err in status["errors"]:
            print(f"  {err['uid']}  {err['userPrincipalName']}: {err['error']}")
    for name, bodies in status["poisonMessages"].items():
        print(f"Poison messages in {name} (first {len(bodies)}):")
        for body in bodies:
            print(f"  {body}")
    return 0


def _print_agents(agents: list[dict[str, Any]], lease: dict[str, Any]) -> None:
    if not agents:
        print("Agents: none has reported (worker mode agent: is `guestsync worker` running?)")
    else:
        print("Agents (last heartbeat):")
    for a in agents:
        lag = a.get("queueLag") or {}
        timers = "  holds the timer lease" if a.get("holdsTimerLease") else ""
        print(f"  {a.get('agentId')}  version {a.get('version')}  {a.get('status')}  seen {a.get('ageSeconds')} s ago"
              f"  started {a.get('startedAt')}  last export {a.get('lastExportAt') or 'never'}  exports "
              f"{a.get('exports')}  oldest export message {lag.get('oldestMessageAgeSeconds')} s{timers}")
    if lease.get("holder"):
        print(f"Timer lease: {lease['holder']} until {lease.get('expiresAt')}; last reconcile started "
              f"{lease.get('reconcileStartedAt') or 'never'}")


class _Progress:
    """A one-line progress display on a terminal (stderr); silent when redirected."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.counts: dict[str, int] = {}

    def __call__(self, phase: str, count: int) -> None:
        if not self.enabled:
            return
        self.counts[phase] = count
        text = " | ".join(f"{name} {value:,}" for name, value in self.counts.items())
        sys.stderr.write(f"\rreconcile: {text} ")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self.counts:
            sys.stderr.write("\n")


def _run_reconcile(args: argparse.Namespace, *, dry_run: bool) -> int:
    from shared.services.reconcile import Finding, Reconciler

    s = _services(need_directory=not args.no_ad)
    findings: list[Finding] = []
    progress = _Progress(sys.stderr.isatty() and not args.json)

    def found(finding: Finding) -> None:
        findings.append(finding)

    async def run() -> Any:
        try:
            return await Reconciler(s.graph, s.state, s.export_queue.send, s.settings.deprovisioning,
                                    directory=None if args.no_ad else s.directory, dry_run=dry_run,
                                    on_finding=found, progress=progress).run(full=args.full)
        finally:
            await s.graph.close()

    report = asyncio.run(run())
    progress.done()
    if args.json:
        body = report.as_dict()
        body["findings"] = [f.as_dict() for f in findings]
        print(json.dumps(body, indent=2, default=str))
        return 0
    verb = "would do" if dry_run else "queued"
    print(f"{'Plan' if dry_run else 'Reconcile'} ({report.delta_mode} delta): {report.graph_users} Graph users, "
          f"{report.ad_accounts} AD accounts, {report.guests_in_state} guests in state")
    if not findings:
        print("Nothing to do: Entra ID, state and AD agree.")
    for f in findings:
        who = f.user_principal_name or f.dn or ""
        print(f"  {f.action:<9} {f.uid}  {who}: {f.reason}")
    if findings:
        summary = ", ".join(f"{k} {v}" for k, v in sorted(report.actions.items()))
        print(f"{verb}: {summary}")
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    return _run_reconcile(args, dry_run=False)


def cmd_plan(args: argparse.Namespace) -> int:
    return _run_reconcile(args, dry_run=True)


def _operator_decision(
    args: argparse.Namespace,
    waiting: Callable[[], list[Any]],
    listing: tuple[str, Callable[[Any], dict[str, Any]], str, str, Callable[[Any], str]],
    decide: Callable[[list[str]], list[Any]],
    done: frozenset[str],
) -> int:
    """What ``approve`` and ``adopt`` share: without ids (and without --all) list what waits for an operator;
    with them, decide each and print one line per guest. ``listing``: (the JSON key, one item as JSON, the line
    when nothing waits, the heading, one item as text). ``--json`` has one shape either way: {key: what still
    waits, "answers": one per guest decided (none when only listing)}."""
    key, as_json, nothing, heading, as_text = listing
    found = waiting() if args.all or not args.uid else []
    uids = [r.uid for r in found] if args.all else list(args.uid)
    if not uids:
        if args.json:
            print(json.dumps({key: [as_json(r) for r in found], "answers": []}, indent=2))
        elif not found:
            print(nothing)
        else:
            print(heading)
            for r in found:
                print(as_text(r))
        return 0
    answers = decide(uids)
    if args.json:
        print(json.dumps({key: [as_json(r) for r in waiting()], "answers": [a.__dict__ for a in answers]},
                         indent=2))
    else:
        for a in answers:
            print(f"  {a.outcome:<13} {a.uid}  {a.detail}")
    return 0 if all(a.outcome in done for a in answers) else 1


def cmd_approve(args: argparse.Namespace) -> int:
    from shared.services import approvals

    s = _services()
    return _operator_decision(
        args, lambda: list(approvals.held(s.state)),
        ("held", _held_item, "Nothing is held by the mass-change breaker.",
         "Held deprovisionings (approve: guestsync approve --all | UID...; reject: add --reject):",
         lambda r: f"  {r.uid}  {r.entry.user_principal_name}: {r.reason}\n      {r.error}"),
        lambda uids: approvals.answer(s.state, uids, s.export_queue.send, approve=not args.reject),
        frozenset({"approved", "rejected"}))


def _adoptable_item(record: Any) -> dict[str, Any]:
    return {"uid": record.uid, "userPrincipalName": record.entry.user_principal_name,
            "finding": record.security.value if record.security else None, "error": record.error}


def cmd_adopt(args: argparse.Namespace) -> int:
    from shared.services import approvals

    s = _services()
    return _operator_decision(
        args, lambda: list(approvals.adoptable(s.state)),
        ("adoptable", _adoptable_item,
         "No guest has an object to take over. (`guestsync plan` lists CN=<uid> objects without the mark.)",
         "Objects guestsync did not create, at guests' CN=<uid> (take over: guestsync adopt --all | UID...):",
         lambda r: f"  {r.uid}  {r.entry.user_principal_name}\n      {r.error}"),
        lambda uids: approvals.adopt(s.state, uids, s.export_queue.send),
        frozenset({"adopting"}))


def cmd_check(args: argparse.Namespace) -> int:
    from shared.services import preflight

    # the probe's log lines and azure-identity's sign-in warning would only repeat the report
    quiet = {name: logging.getLogger(name) for name in ("guestsync.directory", "azure.identity")}
    levels = {name: logger.level for name, logger in quiet.items()}
    if not args.verbose:
        for logger in quiet.values():
            logger.setLevel(logging.ERROR)
    try:
        results = preflight.run_checks(probe=not args.no_probe, timeout=args.timeout,
                                       progress=_check_progress(sys.stderr.isatty()))
    finally:
        for name, logger in quiet.items():
            logger.setLevel(levels[name])
    print(json.dumps(preflight.as_json(results), indent=2) if args.json else preflight.render_text(results))
    return preflight.exit_code(results)


def _check_progress(enabled: bool) -> Callable[[str, Any], None]:
    """On a terminal (stderr): what is being checked now, then one line per check as its result arrives."""

    def show(name: str, result: Any) -> None:
        if enabled:
            sys.stderr.write(f"check: {name} ...\n" if result is None else
                             f"check: {name}: {result.status.value}\n")
            sys.stderr.flush()

    return show


def cmd_kcd(args: argparse.Namespace) -> int:
    """Would application proxy get a Kerberos ticket for each guest? Directory checks, and with a connector
    principal the KDC's own answer (S4U2Self + S4U2Proxy through kinit/kvno)."""
    from contextlib import nullcontext

    from shared.adapters.kerberos import KvnoDelegationTester
    from shared.core.domain import ConfigurationError
    from shared.services.kcd import check_guests, render_line

    if bool(args.connector) != bool(args.spn):
        raise ConfigurationError("kcd: --connector and --spn go together (the delegation-enabled principal and "
                                 "the app's SPN, e.g. --connector 'CONNECTOR$@CONTOSO.COM' --spn HTTP/app.contoso.com)")
    if args.connector and bool(args.keytab) == bool(args.password_stdin):
        raise ConfigurationError("kcd: --connector needs exactly one of --keytab FILE or --password-stdin")
    if not args.connector and (args.keytab or args.password_stdin):
        raise ConfigurationError("kcd: --keytab and --password-stdin need --connector and --spn")
    password = sys.stdin.readline().rstrip("\r\n") if args.password_stdin else None
    s = _services(need_directory=True)
    directory = s.settings.directory
    assert directory is not None  # need_directory
    tester = (KvnoDelegationTester(args.connector, args.spn, keytab=args.keytab, password=password)
              if args.connector else None)
    with tester if tester is not None else nullcontext(), s.directory as ad:
        results = list(check_guests(s.state, s.state, ad, directory.guest_ou, list(args.guest or []), tester))
    ready = sum(r.ready for r in results)
    if args.json:
        print(json.dumps({"spn": args.spn, "connector": args.connector, "kdcAsked": tester is not None,
                          "ready": ready, "notReady": len(results) - ready,
                          "guests": [r.as_dict() for r in results]}, indent=2))
    elif not results:
        print("No guests to check (none provisioned yet; name one with --guest UID|UPN).")
    else:
        for r in results:
            print(render_line(r, args.spn))
        print(f"{ready} of {len(results)} guest(s) ready for KCD")
    return 0 if ready == len(results) else 1


def cmd_demo(args: argparse.Namespace) -> int:
    with _dev_tooling("the demo", "it starts Azurite, Samba and the Graph simulator", "run `make demo` there"):
        from devtools.demo import run_demo

    return run_demo(guests=args.guests, members=args.members)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="guestsync", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the function app locally")
    serve.add_argument("--port", type=int, default=7071, help="the local HTTP port of the webhook (default 7071)")
    serve.set_defaults(func=cmd_serve)
    sub.add_parser("worker", help="run the on-premises AD worker agent").set_defaults(func=cmd_worker)
    subscribe = sub.add_parser("subscribe", help="create or renew the Graph subscription now")
    subscribe.add_argument("--json", action="store_true", help=JSON_HELP)
    subscribe.set_defaults(func=cmd_subscribe)
    status = sub.add_parser("status", help="counts, queues, errors, held changes, subscription, last reconcile")
    status.add_argument("--json", action="store_true", help=JSON_HELP)
    status.add_argument("--no-graph", action="store_true", help="do not ask Graph for the subscription expiry")
    status.set_defaults(func=cmd_status)
    for name, handler, text in (
        ("reconcile", cmd_reconcile, "compare Entra ID, state and AD now and repair drift"),
        ("plan", cmd_plan, "dry run of reconcile: what it would create, update, disable, delete, restore"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--json", action="store_true", help=JSON_HELP)
        cmd.add_argument("--full", action="store_true", help="ignore the stored deltaLink: read every user")
        cmd.add_argument("--no-ad", action="store_true", help="Graph side only (where AD is out of reach)")
        cmd.set_defaults(func=handler)
    approve = sub.add_parser("approve", help="list, release or reject deprovisionings held by the breaker")
    approve.add_argument("uid", nargs="*", type=graph_id,
                         help="guest object ids (Graph id, any letter case); none: list what is held")
    approve.add_argument("--all", action="store_true", help="every held guest")
    approve.add_argument("--reject", action="store_true", help="keep the accounts instead of deprovisioning")
    approve.add_argument("--json", action="store_true", help=JSON_HELP + ': {"held": [...], "answers": [...]}')
    approve.set_defaults(func=cmd_approve)
    adopt = sub.add_parser("adopt", help="take over objects at guests' CN=<uid> that guestsync did not create "
                                         "(fresh password, userAccountControl 262656, ownership mark)")
    adopt.add_argument("uid", nargs="*", help="guest object ids (Graph id); none: list what can be taken over")
    adopt.add_argument("--all", action="store_true", help="every guest whose CN=<uid> holds an unmarked object")
    adopt.add_argument("--json", action="store_true", help=JSON_HELP + ': {"adoptable": [...], "answers": [...]}')
    adopt.set_defaults(func=cmd_adopt)
    check = sub.add_parser("check", help="preflight: settings, Graph, webhook, subscription, storage, AD")
    check.add_argument("--json", action="store_true", help=JSON_HELP)
    check.add_argument("--no-probe", action="store_true", help="no AD writes (skip the probe account)")
    check.add_argument("--timeout", type=float, default=20.0, metavar="SECONDS",
                       help="how long each check may wait for an answer before it fails (default 20)")
    check.set_defaults(func=cmd_check)
    kcd = sub.add_parser("kcd", help="KCD readiness per guest; with a connector principal, a real S4U test",
                         description="Would application proxy (KCD, Delegated Login Identity = UPN) get a Kerberos "
                         "ticket for each guest? Checks the account (in the guest OU, enabled, UPN equal to the "
                         "Entra UPN, smart card required); with --connector and --spn, asks the KDC for a service "
                         "ticket on behalf of each guest (kinit + kvno -U -P, MIT Kerberos client tools; krb5.conf "
                         "from KRB5_CONFIG or the system's; a private credential cache). Exit code 1 when a guest "
                         "is not ready.")
    kcd.add_argument("--guest", action="append", metavar="UID|UPN",
                     help="a guest by object id or Entra UPN (repeatable); default: every guest expected to sign in")
    kcd.add_argument("--connector", metavar="PRINCIPAL",
                     help="a principal trusted to delegate to --spn with protocol transition, e.g. the connector's "
                          "computer account CONNECTOR$@CONTOSO.COM")
    kcd.add_argument("--keytab", metavar="FILE", help="the connector principal's keytab")
    kcd.add_argument("--password-stdin", action="store_true", help="read the connector principal's password "
                                                                   "from the first line of standard input")
    kcd.add_argument("--spn", metavar="SPN",
                     help="the application's SPN as App Proxy has it, e.g. HTTP/app.contoso.com")
    kcd.add_argument("--json", action="store_true", help="one JSON document: spn, connector, kdcAsked, ready, "
                                                         "notReady, guests[]")
    kcd.set_defaults(func=cmd_kcd)
    demo = sub.add_parser("demo", help="run the whole job locally")
    demo.add_argument("--guests", type=int, default=10, help="guests the simulated tenant starts with (default 10)")
    demo.add_argument("--members", type=int, default=5, help="members (never provisioned) it starts with (default 5)")
    demo.set_defaults(func=cmd_demo)
    _every_command(sub)
    return parser


def _every_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Each subcommand's --help opens with what it does (its one-line help), and takes ``-v`` after it as
    well as before it (SUPPRESS: a ``-v`` given before the subcommand is not reset)."""
    helps = {action.dest: action.help for action in sub._choices_actions}
    for name, command in sub.choices.items():
        if not command.description:
            command.description = helps.get(name)
        if "--verbose" not in command._option_string_actions:
            command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                                 help=VERBOSE_HELP)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from shared import observability
    from shared.settings import apply_local_settings, log_format

    observability.install()
    try:
        apply_local_settings()  # ./local.settings.json's Values, as the Functions host reads them; the environment wins
        json_logs = log_format() == "json"
    except GuestsyncError as exc:
        print(f"guestsync: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if json_logs:
        for handler in logging.getLogger().handlers:
            handler.setFormatter(observability.JsonFormatter())
    for noisy in ("azure", "httpx", "urllib3", "msal"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except GuestsyncError as exc:
        print(f"guestsync: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # storage out of reach, or a bug: one line with the fix; the traceback with -v
        from shared.cli_failures import explain

        if args.verbose:
            log.exception("guestsync %s failed", args.command)
        print(explain(exc, args.command), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
