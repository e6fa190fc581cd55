"""Passwordless bind: SASL GSSAPI (Kerberos) over LDAPS against the Samba KDC, as the delegated service account
with a keytab exported by samba-tool, the way an agent on Linux runs (AD_BIND_METHOD=kerberos, AD_KEYTAB)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.adapters.directory import Directory
from shared.core.domain import GUEST_USER_ACCOUNT_CONTROL
from shared.core.errors import InvalidCredentialsError
from shared.settings import DirectorySettings, load_directory_settings
from tests.integration.test_directory import guest_values, password_for
from tests.plugins.samba import SERVICE_ACCOUNT, GuestsyncDC

pytestmark = pytest.mark.integration


@pytest.fixture
def kerberos(samba_dc: GuestsyncDC, tmp_path: Path, krb5_client: Path) -> Iterator[Path]:
    """The test's own krb5.conf (KRB5_CONFIG) and ccache (krb5_client), an SPN ldap/<address in AD_SERVER> on the
    DC, and the service account's keytab. Yields the keytab."""
    samba_dc.add_ldap_spn(samba_dc.listen_ip)
    yield samba_dc.export_keytab(tmp_path / "svc.keytab", f"{SERVICE_ACCOUNT}@{samba_dc.realm}")


def kerberos_settings(directory_settings: DirectorySettings, samba_dc: GuestsyncDC, keytab: Path) -> DirectorySettings:
    env = {"AD_SERVER": samba_dc.ldaps_url, "AD_BIND_METHOD": "kerberos", "AD_KEYTAB": str(keytab),
           "AD_BIND_USER": f"{SERVICE_ACCOUNT}@{samba_dc.realm}", "AD_GUEST_OU": samba_dc.guest_ou,
           "AD_CA_FILE": str(samba_dc.ca_file), "GUESTSYNC_OWNERSHIP_KEY": directory_settings.ownership_keys[0]}
    return load_directory_settings(env)


def test_kerberos_bind_from_a_keytab_creates_reads_and_deletes_a_guest(
        directory_settings: DirectorySettings, samba_dc: GuestsyncDC, kerberos: Path, clean_guest_ou: None) -> None:
    settings = kerberos_settings(directory_settings, samba_dc, kerberos)
    assert settings.bind_method == "kerberos" and settings.bind_password == ""  # no password anywhere
    uid = str(uuid.uuid4())
    values = guest_values(uid)
    with Directory(settings, archive_ou=samba_dc.archive_ou) as directory:
        created = directory.create_guest(uid, values, password_for(values), GUEST_USER_ACCOUNT_CONTROL)
        found = directory.find_guest(uid)
        assert found is not None and found.object_sid == created.object_sid and found.marked
        archived = directory.disable_and_archive(created.dn)  # the delegated rights, as the Kerberos identity
        directory.delete_guest(archived.dn)
        assert directory.find_guest(uid) is None
    conn = samba_dc.admin_connection()
    try:  # behind its back: nothing left in either OU
        for ou in (samba_dc.guest_ou, samba_dc.archive_ou):
            conn.search(ou, f"(cn={uid})", attributes=["cn"])
            assert conn.entries == []
    finally:
        conn.unbind()


def test_kerberos_bind_with_a_keytab_of_another_principal_is_refused(
        directory_settings: DirectorySettings, samba_dc: GuestsyncDC, kerberos: Path, tmp_path: Path) -> None:
    settings = dataclasses.replace(kerberos_settings(directory_settings, samba_dc, kerberos),
                                   bind_user=f"someone-else@{samba_dc.realm}")
    with Directory(settings) as directory, pytest.raises(InvalidCredentialsError, match="AD_KEYTAB") as info:
        directory.find_guest(str(uuid.uuid4()))
    assert "someone-else" in str(info.value)
