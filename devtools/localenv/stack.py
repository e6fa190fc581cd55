"""The local environment wired together: Azurite, a Samba AD DC (CONTOSO.COM, OU=B2BGuest and its archive OU,
a delegated service account) and the Graph simulator over HTTPS, with the settings (environment) that point
guestsync at them. The demo and the benchmarks run on it."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import ldap3

from devtools.graphsim.server import GraphSimulator
from devtools.localenv.azurite import Azurite
from devtools.localenv.certs import create_local_pki
from devtools.localenv.samba import SambaDC, random_loopback_ip
from shared.settings import BINDING_DEFAULTS

GUEST_OU_RDN = "OU=B2BGuest"
ARCHIVE_OU_RDN = "OU=B2BGuestArchive"
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
