"""DirectoryPool against the real Samba AD DC: each lease is a connection of its own (a TCP connection bound as
the delegated service account), two leases work at the same time, a lease goes back after an error, the pool
never opens more connections than its size, and closing it closes them."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ldap3
import pytest

from shared.adapters.directory import Directory, DirectoryPool
from shared.core.ad_rules import new_password
from shared.core.domain import GUEST_USER_ACCOUNT_CONTROL, AdAccount
from shared.core.errors import AccountExistsError, DirectoryUnavailableError
from shared.settings import DirectorySettings

pytestmark = pytest.mark.integration

WAIT = 30.0  # seconds: a thread waiting longer than this means the two leases did not run side by side


def _create(directory: Directory, uid: str | None = None) -> AdAccount:
    uid = uid or str(uuid.uuid4())
    local = f"pool{uid[:8]}"
    values: dict[str, str | None] = {
        "sAMAccountName": uid[:20], "givenName": "Pat", "sn": "Pool", "mail": f"{local}@fabrikam.com",
        "userPrincipalName": f"{local}_fabrikam.com#EXT#@contoso.onmicrosoft.com", "displayName": "Pat Pool",
    }
    return directory.create_guest(uid, values, new_password(avoid=(uid[:20], "Pat Pool")),
                                  GUEST_USER_ACCOUNT_CONTROL)


def _local_port(directory: Directory) -> int:
    """The client port of the instance's open TCP connection to the DC (which connection it is)."""
    conn = directory._conn
    assert conn is not None and not conn.closed
    return int(conn.socket.getsockname()[1])


@pytest.fixture
def pool(directory_settings: DirectorySettings, clean_guest_ou: None) -> Any:
    with DirectoryPool(directory_settings, size=2) as p:
        yield p


def test_two_leases_use_two_connections_side_by_side(pool: DirectoryPool, admin_ldap: ldap3.Connection) -> None:
    # A holds its connection inside an LDAP operation (a real search, then waiting) until B, with the other
    # lease, has searched, created an account and read it back. One shared connection (one lock) would leave
    # B waiting for A and A waiting for B: both time out and the test fails.
    b_done = threading.Event()
    ports: dict[str, int] = {}

    def a() -> AdAccount | None:
        with pool.lease() as directory:
            def search_then_wait(conn: ldap3.Connection) -> bool:
                conn.search(directory.guest_ou, "(objectClass=user)", ldap3.LEVEL, attributes=["cn"])
                ports["a"] = int(conn.socket.getsockname()[1])
                return b_done.wait(WAIT)

            assert directory._run("holding the connection", search_then_wait), "B did not get through while A held"
            return directory.find_guest(str(uuid.uuid4()))

    def b() -> AdAccount:
        try:
            with pool.lease(timeout=WAIT) as directory:
                assert directory.netbios_domain() == "CONTOSO"
                account = _create(directory)
                ports["b"] = _local_port(directory)
                return account
        finally:
            b_done.set()

    with ThreadPoolExecutor(2) as threads:
        first = threads.submit(a)
        second = threads.submit(b)
        assert first.result(WAIT * 2) is None
        created = second.result(WAIT * 2)

    assert ports["a"] != ports["b"]  # two TCP connections
    assert pool.built == 2 and pool.in_use == 0
    assert admin_ldap.search(created.dn, "(objectClass=user)", ldap3.BASE, attributes=["objectSid"])


def test_a_lease_goes_back_after_an_ad_error_and_still_works(pool: DirectoryPool) -> None:
    with pool.lease() as directory:
        account = _create(directory)
    uid = account.dn.split(",", 1)[0][len("CN="):]
    with pytest.raises(AccountExistsError), pool.lease() as failing:
        _create(failing, uid)  # CN=<uid> is taken: AD says entryAlreadyExists
    assert pool.in_use == 0
    with pool.lease() as again:
        assert again is failing  # the same instance, back in the pool, its connection still usable
        assert again.find_guest(uid) == account
    assert pool.built == 1  # sequential leases never needed a second connection


def test_never_more_connections_than_its_size(pool: DirectoryPool) -> None:
    ports: set[int] = set()
    busiest = 0
    lock = threading.Lock()

    def export_like(_: int) -> None:
        nonlocal busiest
        with pool.lease(timeout=WAIT) as directory:
            with lock:
                busiest = max(busiest, pool.in_use)
            account = _create(directory)
            assert directory.find_guest(account.dn.split(",", 1)[0][len("CN="):]) == account
            with lock:
                ports.add(_local_port(directory))

    with ThreadPoolExecutor(6) as threads:
        list(threads.map(export_like, range(18)))

    assert busiest <= 2 and pool.built <= 2
    assert 1 <= len(ports) <= 2
    with pool.lease(), pool.lease(), pytest.raises(DirectoryUnavailableError), pool.lease(timeout=0.2):
        pass  # both lent: a third waits, it is not opened


def test_close_closes_every_connection(directory_settings: DirectorySettings, clean_guest_ou: None) -> None:
    pool = DirectoryPool(directory_settings, size=2)
    with pool.lease() as one, pool.lease() as two:
        one.find_guest(str(uuid.uuid4()))
        two.find_guest(str(uuid.uuid4()))
        pool.close()
        assert two.find_guest(str(uuid.uuid4())) is None  # a lent one keeps working until it is returned
    assert one._conn is None and two._conn is None
