"""The AD adapter against a real Samba AD DC, bound as the delegated service account over LDAPS.

What Samba 4.17 answers (and the adapter maps): duplicate DN -> entryAlreadyExists (AccountExistsError);
duplicate sAMAccountName -> entryAlreadyExists "samldb: samAccountName ... already in use!" (ConstraintError);
duplicate UPN -> constraintViolation "samldb: userPrincipalName ... is already in use" (ConstraintError);
weak password -> constraintViolation 0000052D (ConstraintError); write outside the delegation ->
insufficientAccessRights (AccessDeniedError).
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ldap3
import pytest
from ldap3.utils.log import BASIC, OFF, PROTOCOL, set_library_log_detail_level

from devtools.localenv.certs import create_local_pki
from shared.adapters.directory import Directory
from shared.core.ad_rules import fit_cosmetic, new_password
from shared.core.domain import GUEST_USER_ACCOUNT_CONTROL, AdAccount, ConfigurationError
from shared.core.errors import (
    AccessDeniedError,
    AccountExistsError,
    AccountNotFoundError,
    ConstraintError,
    DirectoryUnavailableError,
    InvalidCredentialsError,
    OutsideManagedOuError,
)
from shared.settings import DirectorySettings
from tests.plugins.samba import GuestsyncDC, delete_children

pytestmark = pytest.mark.integration

BULK = 1200


def guest_values(uid: str, **overrides: str | None) -> dict[str, str | None]:
    local = f"partner{uid[:8]}"
    values: dict[str, str | None] = {
        "sAMAccountName": uid[:20],
        "givenName": "Alice",
        "sn": "Smith",
        "mail": f"{local}@fabrikam.com",
        "userPrincipalName": f"{local}_fabrikam.com#EXT#@contoso.onmicrosoft.com",
        "displayName": "Alice Smith",
    }
    values.update(overrides)
    return values


def password_for(values: dict[str, str | None]) -> str:
    return new_password(avoid=tuple(v for v in (values["sAMAccountName"], values["displayName"]) if v))


def read_ad(conn: ldap3.Connection, dn: str) -> dict[str, Any]:
    """What AD holds, read as Administrator (not through the adapter under test)."""
    assert conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["*"]), conn.result
    return dict(conn.response[0]["raw_attributes"])


def text(raw: dict[str, Any], name: str) -> str | None:
    values = raw.get(name)
    return values[0].decode("utf-8") if values else None


@pytest.fixture
def directory(directory_settings: DirectorySettings, clean_guest_ou: None) -> Iterator[Directory]:
    with Directory(directory_settings) as d:
        yield d


def create(directory: Directory, **overrides: str | None) -> tuple[str, dict[str, str | None], AdAccount]:
    uid = str(uuid.uuid4())
    values = guest_values(uid, **overrides)
    account = directory.create_guest(uid, values, password_for(values), GUEST_USER_ACCOUNT_CONTROL)
    return uid, values, account


# --- create and read back ------------------------------------------------------------------------------------
def test_create_with_all_attributes_and_read_back(directory: Directory, admin_ldap: ldap3.Connection,
                                                 samba_dc: GuestsyncDC) -> None:
    uid, values, account = create(directory)

    assert account.dn == f"CN={uid},{samba_dc.guest_ou}"
    assert account.sam_account_name == uid[:20]
    assert account.user_account_control == GUEST_USER_ACCOUNT_CONTROL == 262656
    assert account.object_sid is not None and account.object_sid.startswith("S-1-5-21-")
    assert account.attributes == values
    assert directory.find_guest(uid) == account
    assert directory.netbios_domain() == "CONTOSO"

    raw = read_ad(admin_ldap, account.dn)
    assert text(raw, "userPrincipalName") == values["userPrincipalName"]
    assert "#EXT#@contoso.onmicrosoft.com" in (text(raw, "userPrincipalName") or "")
    assert text(raw, "sAMAccountName") == uid[:20]
    assert int(text(raw, "userAccountControl") or 0) == 262656
    assert text(raw, "pwdLastSet") not in (None, "0")  # a password was set at creation


def test_absent_attributes_are_skipped_and_read_back_as_none(directory: Directory) -> None:
    _, _, account = create(directory, givenName=None, sn=None, mail=None)
    assert account.attributes["givenName"] is None
    assert account.attributes["sn"] is None
    assert account.attributes["mail"] is None
    assert account.attributes["displayName"] == "Alice Smith"


def test_find_guest_of_unknown_uid_is_none(directory: Directory) -> None:
    assert directory.find_guest(str(uuid.uuid4())) is None


def test_create_twice_raises_account_exists(directory: Directory) -> None:
    uid, values, _ = create(directory)
    with pytest.raises(AccountExistsError, match=uid):
        directory.create_guest(uid, values, password_for(values), GUEST_USER_ACCOUNT_CONTROL)


def test_hostile_display_name_is_stored_exactly(directory: Directory, admin_ldap: ldap3.Connection) -> None:
    hostile = "Smith, Jr. = *)(uid=*)(\\ \\2a <>;+\"# Zoë 中文 \U0001f600 "
    display = (hostile * 20)[:300]
    fitted, warnings = fit_cosmetic(guest_values("0" * 20, displayName=display, givenName="*)(|(cn=*", sn="a,b=c"))
    assert warnings and "displayName" in warnings[0]
    stored_display = fitted["displayName"]
    assert stored_display is not None and len(stored_display.encode("utf-16-le")) // 2 == 256

    uid, _, account = create(directory, displayName=stored_display, givenName="*)(|(cn=*", sn="a,b=c")
    raw = read_ad(admin_ldap, account.dn)
    assert text(raw, "displayName") == stored_display
    assert text(raw, "givenName") == "*)(|(cn=*"
    assert text(raw, "sn") == "a,b=c"
    assert directory.find_guest(uid) == account


def test_unfitted_display_name_is_refused_before_sending(directory: Directory) -> None:
    with pytest.raises(ConstraintError, match="displayName is 300 characters long; AD allows at most 256"):
        create(directory, displayName="D" * 300)


# --- passwords -----------------------------------------------------------------------------------------------
def test_password_is_never_logged_nor_in_exception_text(directory: Directory, caplog: pytest.LogCaptureFixture,
                                                        directory_settings: DirectorySettings) -> None:
    caplog.set_level(logging.DEBUG)
    set_library_log_detail_level(BASIC)  # ldap3's own logging as well (PROTOCOL+ is refused, see below)
    secrets_seen: list[str] = []
    try:
        uid, values, _ = create(directory)
        weak = "Ab1!"
        secrets_seen.append(weak)
        other = str(uuid.uuid4())
        with pytest.raises(ConstraintError) as refused:
            directory.create_guest(other, guest_values(other), weak, GUEST_USER_ACCOUNT_CONTROL)
        assert "the password was refused by the domain password policy" in str(refused.value)
        strong = password_for(values)
        secrets_seen.append(strong)
        with pytest.raises(AccountExistsError) as exists:
            directory.create_guest(uid, values, strong, GUEST_USER_ACCOUNT_CONTROL)
        with pytest.raises(ConstraintError) as duplicate:
            directory.create_guest(other, guest_values(other, userPrincipalName=values["userPrincipalName"]),
                                   strong, GUEST_USER_ACCOUNT_CONTROL)
    finally:
        set_library_log_detail_level(OFF)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "created" in logged  # the adapter did log
    for secret in (*secrets_seen, directory_settings.bind_password):
        for where in (logged, str(refused.value), str(exists.value), str(duplicate.value), repr(directory_settings)):
            assert secret not in where
            assert secret.encode("utf-16-le").hex() not in where
            assert repr(secret.encode("utf-16-le"))[2:-1] not in where


def test_create_refuses_while_ldap3_protocol_logging_would_dump_the_password(
    directory: Directory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """ldap3 at PROTOCOL detail or above logs the add request with the unicodePwd value (as a bytes repr;
    EXTENDED also dumps it in hex): with such logging live, creating an account must stop before sending."""
    caplog.set_level(logging.DEBUG)
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a request was sent")

    monkeypatch.setattr(ldap3.Connection, "add", no_network)
    set_library_log_detail_level(PROTOCOL)
    try:
        with pytest.raises(ConfigurationError, match="would write the new account's password to the log"):
            create(directory)
    finally:
        set_library_log_detail_level(OFF)


# --- the managed OU guard ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "dn_template",
    [
        "CN=Administrator,CN=Users,{base}",
        "{guest_ou}",  # the OU itself
        "CN=x,OU=B2BGuestEvil,{base}",
        "CN=x\\,OU\\=B2BGuest,{base}",  # an escaped comma fakes nothing
        "CN=x,OU=Elsewhere,{base}",
    ],
)
def test_write_outside_the_managed_ou_is_refused_without_sending(
    directory_settings: DirectorySettings, samba_dc: GuestsyncDC, monkeypatch: pytest.MonkeyPatch, dn_template: str
) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a request was sent")

    monkeypatch.setattr(ldap3.Connection, "modify", no_network)
    monkeypatch.setattr(ldap3.Connection, "add", no_network)
    monkeypatch.setattr(Directory, "_connect", no_network)
    dn = dn_template.format(base=samba_dc.base_dn, guest_ou=samba_dc.guest_ou)
    with Directory(directory_settings) as directory:
        with pytest.raises(OutsideManagedOuError, match="not inside the managed OU"):
            directory.update_guest(dn, {"displayName": "pwned"})
        assert directory._conn is None  # not even connected


def test_archive_ou_is_managed_when_given(directory_settings: DirectorySettings, samba_dc: GuestsyncDC,
                                          admin_ldap: ldap3.Connection, clean_guest_ou: None) -> None:
    with Directory(directory_settings, archive_ou=samba_dc.archive_ou) as directory:
        uid, _, account = create(directory)
        moved = f"CN={uid},{samba_dc.archive_ou}"
        assert admin_ldap.modify_dn(account.dn, f"CN={uid}", new_superior=samba_dc.archive_ou), admin_ldap.result
        directory.update_guest(moved, {"displayName": "Archived Alice"})
        assert account.object_sid is not None
        found = directory.find_by_sid(account.object_sid)
        assert found is not None and found.dn.lower() == moved.lower()
        assert found.attributes["displayName"] == "Archived Alice"
    with Directory(directory_settings) as guest_only, pytest.raises(OutsideManagedOuError):
        guest_only.update_guest(moved, {"displayName": "x"})


def test_real_ad_denies_the_service_account_outside_its_ou(
    directory_settings: DirectorySettings, samba_dc: GuestsyncDC, admin_ldap: ldap3.Connection
) -> None:
    elsewhere = samba_dc.create_ou(f"OU=Elsewhere,{samba_dc.base_dn}")
    uid = str(uuid.uuid4())
    values = guest_values(uid)
    # Layer 1 (ours) stops it before AD sees it ...
    with Directory(directory_settings) as directory, pytest.raises(OutsideManagedOuError):
        directory.update_guest(f"CN={uid},{elsewhere}", {"displayName": "x"})
    # ... layer 2 (AD's ACLs) would stop it too: the same bind, straight ldap3, no guard in between.
    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=directory_settings.ca_file)
    server = ldap3.Server(samba_dc.listen_ip, port=636, use_ssl=True, tls=tls, get_info=ldap3.NONE)
    with ldap3.Connection(server, directory_settings.bind_user, directory_settings.bind_password,
                          auto_bind=True, raise_exceptions=False) as svc:
        assert not svc.add(f"CN={uid},{elsewhere}", ["top", "person", "organizationalPerson", "user"],
                           {"sAMAccountName": uid[:20]})
        assert svc.result["description"] == "insufficientAccessRights"
        assert not svc.modify(samba_dc.admin_dn, {"description": [(ldap3.MODIFY_REPLACE, ["pwned"])]})
        assert svc.result["description"] == "insufficientAccessRights"
    # ... and the adapter maps AD's refusal: point it (misconfigured) at an OU it has no delegation on.
    misconfigured = dataclasses.replace(directory_settings, guest_ou=elsewhere)
    with Directory(misconfigured) as directory, pytest.raises(AccessDeniedError, match="access denied"):
        directory.create_guest(uid, values, password_for(values), GUEST_USER_ACCOUNT_CONTROL)
    assert delete_children(admin_ldap, elsewhere) == 0  # nothing got created


# --- duplicates ----------------------------------------------------------------------------------------------
def test_duplicate_upn_is_a_readable_constraint_error(directory: Directory) -> None:
    _, first, account = create(directory)
    with pytest.raises(ConstraintError) as exc:
        create(directory, userPrincipalName=first["userPrincipalName"])
    assert str(exc.value) == (
        f"userPrincipalName {first['userPrincipalName']!r} is already used by another account in the domain "
        f"({account.dn})"
    )


def test_duplicate_sam_account_name_is_a_readable_constraint_error(directory: Directory,
                                                                    samba_dc: GuestsyncDC) -> None:
    # Windows checks sAMAccountName domain-wide: the clash is with an account outside the guest OU.
    name = f"clash{uuid.uuid4().hex[:8]}"
    other = samba_dc.create_user(name, new_password())
    with pytest.raises(ConstraintError, match=f"sAMAccountName '{name}' is already in use by another account "
                                              f"in the domain \\({other}\\)"):
        create(directory, sAMAccountName=name)


def test_duplicates_found_by_the_dc_itself_are_mapped(directory: Directory, monkeypatch: pytest.MonkeyPatch) -> None:
    """If another writer wins the race after our own check, the DC's answer gives the same kind of error."""
    _, first, _ = create(directory)
    monkeypatch.setattr(directory, "_check_unique", lambda dn, values: None)
    with pytest.raises(ConstraintError, match=r"userPrincipalName .* is already used by another account"):
        create(directory, userPrincipalName=first["userPrincipalName"])
    with pytest.raises(ConstraintError, match=r"sAMAccountName .* is already in use by another account"):
        create(directory, sAMAccountName=first["sAMAccountName"])


# --- update --------------------------------------------------------------------------------------------------
def test_update_replaces_and_clears(directory: Directory, admin_ldap: ldap3.Connection) -> None:
    uid, _, account = create(directory, sn=None)
    directory.update_guest(account.dn, {"givenName": "Alicia", "displayName": "Alicia Smith", "mail": None,
                                        "sn": None})  # sn was absent already: clearing it is fine
    raw = read_ad(admin_ldap, account.dn)
    assert text(raw, "givenName") == "Alicia"
    assert text(raw, "displayName") == "Alicia Smith"
    assert "mail" not in raw and "sn" not in raw
    again = directory.find_guest(uid)
    assert again is not None and again.attributes["mail"] is None and again.object_sid == account.object_sid
    directory.update_guest(account.dn, {})  # nothing to do


def test_update_can_rename_sam_and_upn_of_the_same_account(directory: Directory) -> None:
    uid, values, account = create(directory)
    upn = values["userPrincipalName"]
    directory.update_guest(account.dn, {"sAMAccountName": uid[:20].upper(), "userPrincipalName": upn})
    again = directory.find_guest(uid)
    assert again is not None and again.sam_account_name == uid[:20].upper()


def test_update_of_a_vanished_account_is_not_found(directory: Directory, admin_ldap: ldap3.Connection) -> None:
    _, _, account = create(directory)
    assert admin_ldap.delete(account.dn)
    with pytest.raises(AccountNotFoundError, match="does not exist"):
        directory.update_guest(account.dn, {"displayName": "x"})


@pytest.mark.parametrize("name", ["unicodePwd", "userAccountControl", "description", "memberOf"])
def test_update_refuses_other_attributes(directory: Directory, name: str) -> None:
    _, _, account = create(directory)
    with pytest.raises(ValueError, match=name) as exc:
        directory.update_guest(account.dn, {name: "Secret-Passw0rd!"})
    assert "Secret-Passw0rd!" not in str(exc.value)


def test_update_checks_limits_and_duplicates(directory: Directory) -> None:
    _, first, _ = create(directory)
    _, _, second = create(directory)
    with pytest.raises(ConstraintError, match="sAMAccountName is 21 characters long"):
        directory.update_guest(second.dn, {"sAMAccountName": "a" * 21})
    with pytest.raises(ConstraintError, match="is already used by another account"):
        directory.update_guest(second.dn, {"userPrincipalName": first["userPrincipalName"]})


# --- lookups -------------------------------------------------------------------------------------------------
def test_find_by_sid(directory: Directory, samba_dc: GuestsyncDC) -> None:
    _, _, account = create(directory)
    assert account.object_sid is not None
    assert directory.find_by_sid(account.object_sid) == account
    assert directory.find_by_sid(account.object_sid.rsplit("-", 1)[0] + "-999999") is None
    # the Administrator exists, but outside the managed OUs: not ours
    assert directory.find_by_sid(samba_dc.object_sid(samba_dc.admin_dn)) is None


@pytest.fixture(scope="module")
def bulk_ou(samba_dc: GuestsyncDC) -> str:
    """1200 users in an OU of their own, made once (creating and deleting them costs ~10 s each way)."""
    ou = samba_dc.create_ou(f"OU=Bulk,{samba_dc.base_dn}")
    conn = samba_dc.admin_connection()
    try:
        for i in range(BULK):
            assert conn.add(f"CN=bulk{i:04d},{ou}", ["top", "person", "organizationalPerson", "user"],
                            {"sAMAccountName": f"bulk{i:04d}", "userAccountControl": 0x202}), conn.result
    finally:
        conn.unbind()
    return ou


def test_iter_managed_accounts_pages_through_1200(directory_settings: DirectorySettings, bulk_ou: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    requests: list[int | None] = []
    original = ldap3.Connection.search

    def spy(self: ldap3.Connection, *args: Any, **kwargs: Any) -> Any:
        requests.append(kwargs.get("paged_size"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ldap3.Connection, "search", spy)
    with Directory(dataclasses.replace(directory_settings, guest_ou=bulk_ou)) as directory:
        accounts = list(directory.iter_managed_accounts(page_size=500))
    assert len(accounts) == BULK
    assert len({a.dn for a in accounts}) == BULK
    assert {a.sam_account_name for a in accounts} == {f"bulk{i:04d}" for i in range(BULK)}
    assert all(a.object_sid and a.object_sid.startswith("S-1-5-21-") for a in accounts)
    assert requests == [500, 500, 500]  # three pages: 500 + 500 + 200


def test_iter_managed_accounts_covers_guest_and_archive_ou(directory_settings: DirectorySettings,
                                                           samba_dc: GuestsyncDC, clean_guest_ou: None) -> None:
    with Directory(directory_settings, archive_ou=samba_dc.archive_ou) as directory:
        _, _, a = create(directory)
        _, _, b = create(directory)
        conn = samba_dc.admin_connection()
        assert conn.modify_dn(b.dn, b.dn.split(",", 1)[0], new_superior=samba_dc.archive_ou)
        conn.unbind()
        found = {x.object_sid for x in directory.iter_managed_accounts(page_size=1)}
    assert found == {a.object_sid, b.object_sid}


# --- connection failures -------------------------------------------------------------------------------------
def test_wrong_ca_fails_with_a_clear_message(directory_settings: DirectorySettings, tmp_path: Path) -> None:
    other_ca = create_local_pki(tmp_path / "other", ("localhost",)).ca_file
    settings = dataclasses.replace(directory_settings, ca_file=str(other_ca))
    with Directory(settings) as directory, pytest.raises(DirectoryUnavailableError) as exc:
        directory.find_guest(str(uuid.uuid4()))
    message = str(exc.value)
    assert "TLS failure" in message and "could not be validated" in message
    assert str(other_ca) in message
    assert settings.bind_password not in message


def test_certificate_check_can_be_turned_off_explicitly(directory_settings: DirectorySettings,
                                                        tmp_path: Path) -> None:
    other_ca = create_local_pki(tmp_path / "other", ("localhost",)).ca_file
    settings = dataclasses.replace(directory_settings, ca_file=str(other_ca), validate_certificate=False)
    with Directory(settings) as directory:
        assert directory.netbios_domain() == "CONTOSO"


def test_missing_ca_file_is_a_configuration_error(directory_settings: DirectorySettings, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="AD_CA_FILE"):
        Directory(dataclasses.replace(directory_settings, ca_file=str(tmp_path / "nope.pem")))


def test_connection_refused_is_unavailable(directory_settings: DirectorySettings, samba_dc: GuestsyncDC) -> None:
    settings = dataclasses.replace(directory_settings, server=f"ldaps://{samba_dc.listen_ip}:1636",
                                   connect_timeout=2)
    with Directory(settings) as directory, pytest.raises(DirectoryUnavailableError, match="refused the connection"):
        directory.find_guest(str(uuid.uuid4()))


def test_wrong_password_is_invalid_credentials(directory_settings: DirectorySettings) -> None:
    settings = dataclasses.replace(directory_settings, bind_password="Wrong-Passw0rd!")
    with Directory(settings) as directory, pytest.raises(InvalidCredentialsError, match="invalid credentials") as exc:
        directory.netbios_domain()
    assert "Wrong-Passw0rd!" not in str(exc.value)


def test_reconnects_once_after_the_dc_restarts(directory: Directory, samba_dc: GuestsyncDC) -> None:
    uid, _, account = create(directory)
    samba_dc.restart()
    assert directory.find_guest(uid) == account  # the old connection is dead: reconnected transparently
