"""DirectoryPool bookkeeping without a DC: a Directory connects only on its first operation, so leases, limits,
waiting, returns and closing can be checked offline. tests/integration/test_directory_pool.py does LDAP."""

from __future__ import annotations

import threading
import time

import pytest

from shared.adapters.directory import Directory, DirectoryPool
from shared.core.domain import ConfigurationError
from shared.core.errors import DirectoryError, DirectoryUnavailableError
from shared.settings import DirectorySettings

SETTINGS = DirectorySettings(server="ldaps://dc1.contoso.com", bind_user="svc@contoso.com",
                             bind_password="pw-123456", guest_ou="OU=B2BGuest,DC=contoso,DC=com", connections=2,
                             ownership_keys=("k" * 32,))


def test_size_comes_from_the_settings_and_instances_are_built_on_demand() -> None:
    with DirectoryPool(SETTINGS) as pool:
        assert (pool.size, pool.built, pool.in_use) == (2, 1, 0)
        with pool.lease() as first:
            assert (pool.built, pool.in_use) == (1, 1)
            with pool.lease() as second:
                assert first is not second
                assert (pool.built, pool.in_use) == (2, 2)
        assert pool.in_use == 0  # second went back first, then first
        with pool.lease() as again:
            assert again is first  # the most recently returned one: a quiet worker keeps few connections
        assert pool.built == 2


def test_bad_settings_fail_when_the_pool_is_built() -> None:
    with pytest.raises(ConfigurationError, match="AD_ARCHIVE_OU"):
        DirectoryPool(SETTINGS, archive_ou="OU=Old,OU=B2BGuest,DC=contoso,DC=com")
    with pytest.raises(ValueError, match="at least one"):
        DirectoryPool(SETTINGS, size=0)


def test_a_lease_is_returned_when_the_block_raises() -> None:
    with DirectoryPool(SETTINGS, size=1) as pool:
        with pytest.raises(RuntimeError), pool.lease():
            raise RuntimeError("export failed")
        assert pool.in_use == 0
        with pool.lease(timeout=0):
            pass


def test_a_full_pool_waits_then_times_out() -> None:
    with DirectoryPool(SETTINGS) as pool, pool.lease(), pool.lease():
        started = time.monotonic()
        with pytest.raises(DirectoryUnavailableError, match="GUESTSYNC_LDAP_CONNECTIONS"), pool.lease(timeout=0.2):
            pass
        assert time.monotonic() - started >= 0.2
        assert pool.built == 2


def test_a_waiting_thread_gets_the_returned_instance() -> None:
    got: list[Directory] = []
    with DirectoryPool(SETTINGS, size=1) as pool:
        lease = pool.lease()
        held = lease.__enter__()

        def wait() -> None:
            with pool.lease(timeout=10) as directory:
                got.append(directory)

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.1)
        assert not got  # still waiting
        lease.__exit__(None, None, None)
        waiter.join(5)
        assert got == [held]
        assert pool.built == 1


def test_close_refuses_leases_and_closes_lent_instances_on_return() -> None:
    pool = DirectoryPool(SETTINGS)
    closed: list[Directory] = []
    with pool.lease() as lent:
        for directory in pool._built:
            original = directory.close
            directory.close = lambda d=directory, f=original: (closed.append(d), f())[1]  # type: ignore[method-assign]
        pool.close()
        assert lent not in closed  # its holder is still working with it
        assert len(closed) == pool.built - 1
        with pytest.raises(DirectoryError, match="closed"), pool.lease():
            pass
    assert lent in closed


def test_lease_on_first_use_borrows_at_the_first_call_and_keeps_one_instance_until_the_end() -> None:
    with DirectoryPool(SETTINGS, size=1) as pool:
        with pool.lease_on_first_use() as lazy:
            assert not lazy.borrowed and pool.in_use == 0  # e.g. an export reading state holds no connection
            guest_ou = lazy.guest_ou
            assert lazy.borrowed and pool.in_use == 1
            first = lazy._directory
            assert lazy.guest_ou == guest_ou and lazy._directory is first  # the same connection throughout
            with pytest.raises(DirectoryUnavailableError), pool.lease(timeout=0.05):
                pass
        assert pool.in_use == 0
        with pytest.raises(RuntimeError), pool.lease_on_first_use() as lazy:
            _ = lazy.guest_ou
            raise RuntimeError("export failed")
        assert pool.in_use == 0
        with pool.lease_on_first_use():  # never used: nothing borrowed, nothing to give back
            pass
        assert (pool.built, pool.in_use) == (1, 0)
