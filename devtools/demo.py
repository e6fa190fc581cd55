"""`make demo`: the whole job on one machine, with real components.

Starts the local environment (devtools.localenv.stack: Azurite, a Samba AD DC with OU=B2BGuest, the Graph
simulator), seeds members, and runs the function app through the local runner (webhook, apply, subscription
upkeep) plus the AD worker agent. Then it invites guests, changes, deletes and restores them, loses a
notification on purpose and lets the reconcile service find and repair it, and prints the AD accounts as read
back over LDAPS with the invite-to-account latency. Everything it starts is stopped at the end.

It drives the product through its services (shared.services, shared.agent), never through the CLI's output.
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from devtools.localenv.stack import local_stack, read_accounts, say
from shared.adapters.state import StateStore
from shared.bootstrap import Services
from shared.core.domain import GuestStatus
from shared.services.reconcile import Reconciler, ReconcileReport
from shared.settings import load_settings

DEMO_PARTNERS = [
    ("alice", "fabrikam.com", "Alice", "Smith"),
    ("bob", "trey-research.com", "Bob", "Jones"),
    ("chen", "woodgrove.com", "Chen", "Wei"),
    ("dana", "adatum.com", "Dana", "O'Neil"),
    ("emre", "litware.com", "Emre", "Yilmaz"),
    ("fatima", "tailspintoys.com", "Fatima", "Khan"),
    ("gus", "northwindtraders.com", "Gus", "Ortega"),
    ("hana", "wingtiptoys.com", "Hana", "Sato"),
    ("ivan", "proseware.com", "Ivan", "Petrov"),
    ("jo", "fourthcoffee.com", "Jo", "Brown, Jr."),
]


def run_demo(guests: int = 10, members: int = 5) -> int:
    from devtools.runner import LocalFunctionsHost
    from shared import bootstrap
    from shared.functions import create_app

    repo = Path(__file__).resolve().parent.parent
    # Keep the demo's output to what it shows; the runner's per-invocation lines are for `guestsync serve`.
    for name in ("guestsync", "graphsim"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # The Graph client lives on the runner's event loop for the life of the process, like in the Functions
    # worker; aiohttp complains about its session at interpreter exit, which says nothing about the demo.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="guestsync-demo-") as tmp, local_stack(Path(tmp)) as stack:
        sim = stack.sim
        os.environ.update(stack.env)
        bootstrap.reset()
        say("- starting the function app through the local runner (webhook, apply, subscription upkeep)")
        with ExitStack() as hosts:
            ingest = LocalFunctionsHost(create_app("agent"), env=os.environ, host_json=repo / "host.json")
            ingest.start()
            hosts.callback(ingest.stop)
            os.environ["GUESTSYNC_NOTIFICATION_URL"] = f"{ingest.base_url}/api/graph/notifications"
            os.environ["GUESTSYNC_LIFECYCLE_URL"] = f"{ingest.base_url}/api/graph/lifecycle"
            bootstrap.reset()
            say("- starting the AD worker agent (`guestsync worker`)")
            import threading

            from shared.agent import run_agent

            stop = threading.Event()
            worker = threading.Thread(target=run_agent, args=(stop,), name="guestsync-agent", daemon=True)
            worker.start()
            hosts.callback(worker.join, 90)
            hosts.callback(stop.set)
            say("- subscribing to Graph change notifications on /users (validation handshake)")
            ingest.trigger_timer("maintain_subscription")
            _wait(lambda: bool(sim.subscriptions), 20, "the Graph subscription")
            for i in range(members):
                sim.add_user(displayName=f"Member {i + 1}", userType="Member",
                             userPrincipalName=f"member{i + 1}@contoso.com", mail=f"member{i + 1}@contoso.com")
            say(f"- inviting {guests} guests (and {members} members who must get no account)")
            invited = []
            for i in range(guests):
                local, domain, given, surname = DEMO_PARTNERS[i % len(DEMO_PARTNERS)]
                suffix = "" if i < len(DEMO_PARTNERS) else str(i)
                user = sim.invite_guest(f"{local}{suffix}@{domain}", f"{given} {surname}", given, surname)
                invited.append(user["id"])
            state = bootstrap.services().state
            _wait(lambda: _provisioned(state, invited), 120, "all guest accounts")
            first = invited[0]
            say("- renaming one guest in Entra (givenName 'Alice' -> 'Alicia')")
            before = state.get(first)
            version = before.version if before else 0
            sim.update_user(first, givenName="Alicia", displayName="Alicia Smith")
            _wait(lambda: _exported_after(state, first, version), 60, "the update")
            leaver = invited[-1]
            say("- deleting one guest in Entra: its account is disabled and moved to the archive OU")
            sim.delete_user(leaver)
            _wait(lambda: _has_status(state, leaver, GuestStatus.ARCHIVED), 60, "the archive")
            archived = read_accounts(stack.dc, stack.env["AD_ARCHIVE_OU"])
            say(f"  archive OU holds {len(archived)} account(s), userAccountControl "
                f"{', '.join(str(a['userAccountControl']) for a in archived)} (0x2 = disabled)")
            say("- restoring it in Entra (within 30 days): the same account is enabled and moved back")
            sim.restore_user(leaver)
            _wait(lambda: _has_status(state, leaver, GuestStatus.PROVISIONED), 60, "the restore")
            say("- a notification lost on purpose, then `guestsync plan` and `guestsync reconcile`")
            sim.drop_next_notifications(1)
            late = sim.invite_guest("late@contoso-partner.com", "Lena Late", "Lena", "Late")
            invited.append(late["id"])
            for line in _plan_lines(asyncio.run(_reconcile(dry_run=True))):  # what `guestsync plan` shows
                say(f"  {line}")
            asyncio.run(_reconcile(dry_run=False))  # `guestsync reconcile`: the agent's reconcile timer, on demand
            _wait(lambda: _provisioned(state, invited), 60, "the reconcile")
            accounts = read_accounts(stack.dc, stack.guest_ou)
            latencies = [r.latency_ms for r in state if r.latency_ms is not None]
        say("")
        say(f"AD accounts in {stack.guest_ou} (read back over LDAPS):")
        say(f"  {'sAMAccountName':<21} {'UAC':>6}  {'givenName':<10} {'displayName':<18} userPrincipalName")
        for a in sorted(accounts, key=lambda a: str(a["userPrincipalName"])):
            say(f"  {a['sAMAccountName']!s:<21} {a['userAccountControl']:>6}  {a['givenName']!s:<10} "
                f"{a['displayName']!s:<18} {a['userPrincipalName']}")
        say("")
        say(f"{len(accounts)} accounts for {guests + 1} guests; members given an account: "
            f"{sum(1 for a in accounts if 'member' in str(a['userPrincipalName']))}")
        if latencies:
            say(f"invite/change -> AD account latency: p50 {statistics.median(latencies):.0f} ms, "
                f"max {max(latencies)} ms")
        ok = len(accounts) == guests + 1
        say("demo finished: " + ("OK" if ok else "UNEXPECTED RESULT"))
        return 0 if ok else 1


def _provisioned(state: StateStore, uids: list[str]) -> bool:
    records = [state.get(u) for u in uids]
    done = [r for r in records if r is not None and r.status in (GuestStatus.PROVISIONED, GuestStatus.ERROR)]
    return len(done) == len(uids)


def _has_status(state: StateStore, uid: str, status: GuestStatus) -> bool:
    record = state.get(uid)
    return record is not None and record.status is status


async def _reconcile(*, dry_run: bool) -> ReconcileReport:
    """The reconcile service as `guestsync plan` (dry run) and `guestsync reconcile` run it: Entra ID, state and
    the managed OUs compared, with clients of its own (it runs on an event loop of its own)."""
    services = Services(load_settings(need_directory=True))
    try:
        return await Reconciler(services.graph, services.state, services.export_queue.send,
                                services.settings.deprovisioning, directory=services.directory, dry_run=dry_run).run()
    finally:
        await services.graph.close()


def _plan_lines(plan: ReconcileReport) -> list[str]:
    """A plan as an operator reads it: what was compared, each finding with its reason, the totals."""
    lines = [f"Plan ({plan.delta_mode} delta): {plan.graph_users} Graph users, {plan.ad_accounts} AD accounts, "
             f"{plan.guests_in_state} guests in state"]
    lines += [f"  {f.action:<9} {f.uid}  {f.user_principal_name or f.dn or ''}: {f.reason}" for f in plan.findings]
    if plan.actions:
        lines.append("would do: " + ", ".join(f"{k} {v}" for k, v in sorted(plan.actions.items())))
    else:
        lines.append("Nothing to do: Entra ID, state and AD agree.")
    return lines


def _exported_after(state: StateStore, uid: str, version: int) -> bool:
    record = state.get(uid)
    return bool(record and record.version > version and record.exported_version == record.version)


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    print(f"timed out waiting for {what}", file=sys.stderr)
    raise SystemExit(1)
