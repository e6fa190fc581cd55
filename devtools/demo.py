"""`make demo`: the whole job on one machine, with real components.

Starts Azurite, a Samba AD DC (CONTOSO.COM, OU=B2BGuest), the Graph simulator seeded with members, and the
function app through the local runner (webhook, apply, subscription upkeep) plus the AD worker agent.
Then it invites guests, changes one, and prints the AD accounts as read back over LDAPS with the
invite-to-account latency. Everything it starts is stopped at the end.
"""

from __future__ import annotations

import logging
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import ldap3

from devtools.graphsim.server import GraphSimulator
from devtools.localenv.azurite import Azurite
from devtools.localenv.certs import create_local_pki
from devtools.localenv.samba import SambaDC, random_loopback_ip
from shared.adapters.state import StateStore
from shared.core.domain import GuestStatus
from shared.settings import BINDING_DEFAULTS

GUEST_OU_RDN = "OU=B2BGuest"
ARCHIVE_OU_RDN = "OU=B2BGuestArchive"
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


def say(text: str) -> None:
    print(text, flush=True)


@dataclass
class LocalStack:
    env: dict[str, str]
    sim: GraphSimulator
    dc: SambaDC
    guest_ou: str


@contextmanager
def local_stack(workdir: Path) -> Iterator[LocalStack]:
    """Start the real components and yield the settings (environment) that point guestsync at them."""
    with ExitStack() as stack:
        pki = create_local_pki(workdir / "pki", ("localhost", "dc1.contoso.com"))
        say("- starting Azurite (queues, tables)")
        azurite = Azurite(workdir / "azurite").start()
        stack.callback(azurite.stop)
        say("- starting Samba AD DC for CONTOSO.COM (LDAPS with certificate validation)")
        dc = SambaDC(workdir / "samba", listen_ip=random_loopback_ip())
        dc.provision()
        dc.start()
        stack.callback(dc.stop)
        guest_ou = f"{GUEST_OU_RDN},{dc.base_dn}"
        archive_ou = f"{ARCHIVE_OU_RDN},{dc.base_dn}"
        dc.create_ou(guest_ou)
        dc.create_ou(archive_ou)
        service_password = "Svc-" + secrets.token_urlsafe(18) + "9!"
        service_dn = dc.create_service_account("svc-guestsync", service_password, (guest_ou, archive_ou))
        say("- starting the Graph simulator (HTTPS)")
        client_secret = secrets.token_urlsafe(24)
        sim = GraphSimulator(
            cert_file=pki.cert_file,
            key_file=pki.key_file,
            tenant_id="84bd8158-6d4d-4958-8b9f-9d6445542f95",
            tenant_domain="contoso.onmicrosoft.com",
            client_id="9d2f1c0e-5b8a-4a63-9c1e-1d4f2a7b8c90",
            client_secret=client_secret,
        )
        sim.start()
        stack.callback(sim.stop)
        env: dict[str, str] = {
            "AzureWebJobsStorage": azurite.connection_string,
            "GRAPH_ENDPOINT": sim.graph_url,
            "GRAPH_AUTH": "client_secret",
            "GRAPH_TENANT_ID": sim.tenant_id,
            "GRAPH_CLIENT_ID": sim.client_id,
            "GRAPH_CLIENT_SECRET": client_secret,
            "GRAPH_AUTHORITY_HOST": sim.base_url,
            "GRAPH_CLIENT_STATE": secrets.token_urlsafe(32),
            "GUESTSYNC_WEBHOOK_KEY": secrets.token_urlsafe(32),  # the Functions key of the webhook endpoints
            "AD_SERVER": dc.ldaps_url,
            "AD_BIND_USER": service_dn,
            "AD_BIND_PASSWORD": service_password,
            "AD_GUEST_OU": guest_ou,
            "AD_ARCHIVE_OU": archive_ou,
            "AD_CA_FILE": str(dc.ca_file),
            "GUESTSYNC_OWNERSHIP_KEY": secrets.token_urlsafe(36),
            "GRAPH_CA_FILE": str(pki.ca_file),
            **BINDING_DEFAULTS,
        }
        yield LocalStack(env, sim, dc, guest_ou)


def read_accounts(dc: SambaDC, guest_ou: str) -> list[dict[str, object]]:
    """What AD really holds, read back over LDAPS as the domain admin."""
    import ssl

    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(dc.ca_file))
    server = ldap3.Server(dc.ldaps_url, use_ssl=True, tls=tls, get_info=ldap3.NONE)
    with ldap3.Connection(server, dc.admin_dn, dc.admin_password, auto_bind=True) as conn:
        conn.search(
            guest_ou,
            "(objectClass=user)",
            attributes=["sAMAccountName", "userPrincipalName", "displayName", "givenName", "userAccountControl",
                        "objectSid"],
        )
        return [
            {
                "dn": e.entry_dn,
                "sAMAccountName": str(e.sAMAccountName),
                "userPrincipalName": str(e.userPrincipalName),
                "displayName": str(e.displayName),
                "givenName": str(e.givenName),
                "userAccountControl": int(e.userAccountControl.value),
            }
            for e in conn.entries
        ]


def run_demo(guests: int = 10, members: int = 5) -> int:
    from shared import bootstrap
    from shared.functions import create_app
    from devtools.runner import LocalFunctionsHost

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
            plan = _plan_lines()
            for line in plan:
                say(f"  {line}")
            _plan_lines("reconcile")  # `guestsync reconcile`: what the agent's reconcile timer runs, on demand
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


def _plan_lines(command: str = "plan") -> list[str]:
    """`guestsync plan` (or another command) in this process, as an operator would run it."""
    import contextlib
    import io

    from shared import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli.main([command])
    return out.getvalue().splitlines()


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
