"""Failover between two real Samba DCs of one domain: a second DC joined with ``samba-tool domain join ... DC``.

The pair is the test's own (the session DC runs without the RPC services a join needs). The two DCs hold the
same domain as of the join and do not replicate afterwards (no DNS for their GUID names): an account written on
one is not on the other, which is exactly the situation where a sequence must not continue on the other DC.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.localenv.samba import SambaDC, random_loopback_ip
from shared.adapters.directory import Directory, DirectoryPool
from shared.core.ad_rules import new_password
from shared.core.domain import GUEST_USER_ACCOUNT_CONTROL
from shared.core.errors import DirectoryUnavailableError
from shared.settings import DirectorySettings
from tests.integration.test_directory import guest_values, password_for
from tests.plugins.samba import GUEST_OU_RDN, OWNERSHIP_KEY, SERVICE_ACCOUNT

pytestmark = pytest.mark.integration


@dataclasses.dataclass
class Pair:
    first: SambaDC
    second: SambaDC
    settings: DirectorySettings  # AD_SERVER = first, second


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    workdir = Path(tmp_path_factory.mktemp("two-dcs"))
    first = SambaDC(workdir / "dc1", listen_ip=random_loopback_ip(), server_services="ldap, cldap, kdc, rpc, drepl")
    first.provision()
    first.start()
    second: SambaDC | None = None
    try:
        guest_ou = first.create_ou(f"{GUEST_OU_RDN},{first.base_dn}")
        password = new_password(24, avoid=(SERVICE_ACCOUNT,))
        service_dn = first.create_service_account(SERVICE_ACCOUNT, password, guest_ou)
        second = first.join_dc(workdir / "dc2", random_loopback_ip())  # replicates the OU, account and rights
        bundle = workdir / "ca-bundle.pem"
        bundle.write_bytes(first.ca_file.read_bytes() + second.ca_file.read_bytes())
        settings = DirectorySettings(server=f"{first.ldaps_url}, {second.ldaps_url}", bind_user=service_dn,
                                     bind_password=password, guest_ou=guest_ou, ca_file=str(bundle),
                                     connect_timeout=2, ownership_keys=(OWNERSHIP_KEY,))
        yield Pair(first, second, settings)
    finally:
        if second is not None:
            second.stop()
        first.stop()


def create(directory: Directory) -> tuple[str, str]:
    uid = str(uuid.uuid4())
    values = guest_values(uid)
    return uid, directory.create_guest(uid, values, password_for(values), GUEST_USER_ACCOUNT_CONTROL).dn


def test_both_dcs_serve_the_service_account(pair: Pair) -> None:
    for dc in (pair.first, pair.second):
        with Directory(dataclasses.replace(pair.settings, server=dc.ldaps_url)) as directory:
            assert directory.netbios_domain() == "CONTOSO"


def test_first_dc_down_exports_go_to_the_second(pair: Pair) -> None:
    pair.first.stop()
    try:
        with Directory(pair.settings) as directory:
            uid, dn = create(directory)
            assert directory.domain_controller == pair.second.ldaps_url
            found = directory.find_guest(uid)
            assert found is not None and found.dn == dn and found.marked
            directory.delete_guest(dn)
    finally:
        pair.first.start()


def test_a_dc_lost_mid_sequence_is_reported_not_replaced(pair: Pair) -> None:
    with DirectoryPool(pair.settings, size=1) as pool, pool.lease() as directory:
        uid, dn = create(directory)
        assert directory.domain_controller == pair.first.ldaps_url
        pair.first.stop()
        try:
            # Going on at the second DC would read "no such account": it has not seen the add.
            with pytest.raises(DirectoryUnavailableError, match="not continued on another one"):
                directory.find_guest(uid)
            assert directory.find_guest(uid) is None  # told; now on the second DC, which indeed lacks it
            assert directory.domain_controller == pair.second.ldaps_url
        finally:
            pair.first.start()
    with Directory(dataclasses.replace(pair.settings, server=pair.first.ldaps_url)) as directory:
        directory.delete_guest(dn)
