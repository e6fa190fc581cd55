"""A real Samba AD DC (CONTOSO.COM) for the whole test session, with the guest OUs and a delegated account.

The DC listens on a random 127.x.y.z so that test runs of several people on one machine never collide
on port 636. guestsync binds as ``svc-guestsync``, which has rights on the two guest OUs only, exactly as
in production; tests that need to look behind its back use ``admin_ldap``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import ldap3
import pytest

from devtools.localenv.samba import SambaDC, random_loopback_ip
from shared.adapters.directory import Directory
from shared.core.ad_rules import new_password
from shared.settings import DirectorySettings

GUEST_OU_RDN = "OU=B2BGuest"
ARCHIVE_OU_RDN = "OU=B2BGuestArchive"
SERVICE_ACCOUNT = "svc-guestsync"
TREE_DELETE_OID = "1.2.840.113556.1.4.805"
#: The test session's ownership key (GUESTSYNC_OWNERSHIP_KEY): random per session, like a Key Vault secret.
OWNERSHIP_KEY = secrets.token_urlsafe(36)


@dataclass
class GuestsyncDC(SambaDC):
    """The session DC plus what the tests set up in it."""

    guest_ou: str = ""
    archive_ou: str = ""
    service_dn: str = ""
    service_password: str = field(default="", repr=False)


@pytest.fixture(scope="session")
def samba_dc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuestsyncDC]:
    workdir = Path(tmp_path_factory.mktemp("samba"))
    dc: GuestsyncDC | None = None
    for attempt in range(5):
        candidate = GuestsyncDC(workdir / f"dc{attempt}", listen_ip=random_loopback_ip())
        candidate.provision()
        try:
            candidate.start()
        except RuntimeError as exc:
            if "already listens" not in str(exc):
                raise
            continue
        dc = candidate
        break
    if dc is None:
        raise RuntimeError("no free 127.x.y.z:636 found for the Samba DC")
    try:
        dc.guest_ou = dc.create_ou(f"{GUEST_OU_RDN},{dc.base_dn}")
        dc.archive_ou = dc.create_ou(f"{ARCHIVE_OU_RDN},{dc.base_dn}")
        dc.service_password = new_password(24, avoid=(SERVICE_ACCOUNT,))
        dc.service_dn = dc.create_service_account(SERVICE_ACCOUNT, dc.service_password, (dc.guest_ou, dc.archive_ou))
        yield dc
    finally:
        dc.stop()


@pytest.fixture(scope="session")
def directory_settings(samba_dc: GuestsyncDC) -> DirectorySettings:
    """Settings for the delegated service account (LDAPS to the address in the certificate, our CA)."""
    return DirectorySettings(
        server=samba_dc.ldaps_url,
        bind_user=samba_dc.service_dn,
        bind_password=samba_dc.service_password,
        guest_ou=samba_dc.guest_ou,
        ca_file=str(samba_dc.ca_file),
        ownership_keys=(OWNERSHIP_KEY,),
    )


@pytest.fixture(scope="session")
def directory_env(directory_settings: DirectorySettings, samba_dc: GuestsyncDC) -> dict[str, str]:
    """The same settings as environment variables (names from shared/settings.py)."""
    return {
        "AD_SERVER": directory_settings.server,
        "AD_BIND_USER": directory_settings.bind_user,
        "AD_BIND_PASSWORD": directory_settings.bind_password,
        "AD_GUEST_OU": directory_settings.guest_ou,
        "AD_ARCHIVE_OU": samba_dc.archive_ou,
        "AD_CA_FILE": str(directory_settings.ca_file),
        "GUESTSYNC_OWNERSHIP_KEY": directory_settings.ownership_keys[0],
    }


@pytest.fixture(scope="module")
def archiving_directory(directory_settings: DirectorySettings, samba_dc: GuestsyncDC) -> Iterator[Directory]:
    """The adapter as the worker runs it with a lifecycle policy: bound as the delegated service account,
    managing the guest OU and the archive OU. One connection per test module (it reconnects by itself)."""
    with Directory(directory_settings, archive_ou=samba_dc.archive_ou) as directory:
        yield directory


@pytest.fixture
def admin_ldap(samba_dc: GuestsyncDC) -> Iterator[ldap3.Connection]:
    """A connection bound as Administrator, to inspect or tamper with AD behind guestsync's back."""
    conn = samba_dc.admin_connection()
    yield conn
    conn.unbind()


def delete_children(conn: ldap3.Connection, ou: str) -> int:
    """Delete everything below ``ou`` (each child with the tree-delete control) and return how many."""
    conn.search(ou, "(objectClass=*)", ldap3.LEVEL, attributes=["objectClass"])
    children = [e.entry_dn for e in conn.entries]
    for dn in children:
        if not conn.delete(dn, controls=[(TREE_DELETE_OID, True, None)]):
            raise RuntimeError(f"could not delete {dn}: {conn.result['description']}: {conn.result['message']}")
    return len(children)


@pytest.fixture
def clean_guest_ou(samba_dc: GuestsyncDC) -> Iterator[None]:
    """Start the test with empty guest and archive OUs."""
    conn = samba_dc.admin_connection()
    try:
        for ou in (samba_dc.guest_ou, samba_dc.archive_ou):
            delete_children(conn, ou)
    finally:
        conn.unbind()
    yield
