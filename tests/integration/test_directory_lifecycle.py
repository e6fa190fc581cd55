"""Lifecycle of a guest's shadow account (disable and archive, restore, delete) against the real Samba AD DC,
bound as the delegated service account (rights on the guest and archive OUs only), never as Administrator.

What Samba 4.17 answers: a move onto an existing RDN -> entryAlreadyExists; a move or delete outside the
delegation -> insufficientAccessRights; a delete of a missing object -> noSuchObject. Every test makes its
own guest (a fresh GUID), so they share one DC, one adapter and one connection, and need no cleanup.
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import ldap3
import pytest
from ldap3.core.exceptions import LDAPCommunicationError

from shared.adapters.directory import Directory
from shared.core.ad_rules import new_password
from shared.core.domain import (
    GUEST_USER_ACCOUNT_CONTROL,
    UAC_ACCOUNTDISABLE,
    UAC_NORMAL_ACCOUNT,
    UAC_SMARTCARD_REQUIRED,
    AdAccount,
    ConfigurationError,
)
from shared.core.errors import AccountExistsError, AccountNotFoundError, DirectoryError, OutsideManagedOuError
from shared.settings import DirectorySettings
from tests.plugins.samba import GuestsyncDC

pytestmark = pytest.mark.integration

UAC_DONT_EXPIRE_PASSWORD = 0x10000
WRITES = ("add", "modify", "modify_dn", "delete")


@pytest.fixture(scope="module")
def directory(archiving_directory: Directory, directory_settings: DirectorySettings,
              samba_dc: GuestsyncDC) -> Directory:
    assert directory_settings.bind_user == samba_dc.service_dn != samba_dc.admin_dn  # the delegated account
    return archiving_directory


@pytest.fixture(scope="module")
def admin(samba_dc: GuestsyncDC) -> Iterator[ldap3.Connection]:
    """Administrator, to look behind the adapter's back (module-wide, unlike the plugin's admin_ldap)."""
    conn = samba_dc.admin_connection()
    yield conn
    conn.unbind()


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The LDAP write operations sent from now on (they still go through)."""
    sent: list[str] = []
    for name in WRITES:
        original = getattr(ldap3.Connection, name)

        def spy(self: ldap3.Connection, *args: Any, _name: str = name, _original: Any = original,
                **kwargs: Any) -> Any:
            sent.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(ldap3.Connection, name, spy)
    return sent


def create(directory: Directory, uid: str | None = None, sam: str | None = None) -> AdAccount:
    uid = uid or str(uuid.uuid4())
    local = f"partner{uuid.uuid4().hex[:8]}"
    values: dict[str, str | None] = {
        "sAMAccountName": sam or uid[:20],
        "givenName": "Alice",
        "sn": "Smith",
        "mail": f"{local}@fabrikam.com",
        "userPrincipalName": f"{local}_fabrikam.com#EXT#@contoso.onmicrosoft.com",
        "displayName": "Alice Smith",
    }
    password = new_password(avoid=(values["sAMAccountName"] or "", "Alice Smith"))
    return directory.create_guest(uid, values, password, GUEST_USER_ACCOUNT_CONTROL)


def uid_of(account: AdAccount) -> str:
    return account.dn.split(",", 1)[0].split("=", 1)[1]


def in_ad(conn: ldap3.Connection, dn: str) -> dict[str, bytes] | None:
    """The object at ``dn`` as Administrator reads it (not through the adapter), or None."""
    conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["userAccountControl", "objectSid", "whenChanged"])
    if conn.result["description"] == "noSuchObject":
        return None
    assert conn.result["description"] == "success", conn.result
    return {name: values[0] for name, values in conn.response[0]["raw_attributes"].items() if values}


def set_uac(conn: ldap3.Connection, dn: str, value: int) -> None:
    assert conn.modify(dn, {"userAccountControl": [(ldap3.MODIFY_REPLACE, [str(value)])]}), conn.result


def same(a: str, b: str) -> bool:
    return a.lower() == b.lower()


# --- disable and archive -----------------------------------------------------------------------------------
def test_disable_and_archive_moves_a_disabled_account_that_keeps_its_sid(
    directory: Directory, samba_dc: GuestsyncDC, admin: ldap3.Connection
) -> None:
    account = create(directory)
    assert not account.disabled

    archived = directory.disable_and_archive(account.dn)

    uid = uid_of(account)
    assert same(archived.dn, f"CN={uid},{samba_dc.archive_ou}")
    assert archived.user_account_control == GUEST_USER_ACCOUNT_CONTROL | UAC_ACCOUNTDISABLE
    assert archived.user_account_control & UAC_SMARTCARD_REQUIRED and archived.user_account_control & 0x40000
    assert archived.disabled
    assert archived.object_sid == account.object_sid
    assert archived.sam_account_name == account.sam_account_name
    assert archived.attributes == account.attributes
    assert account.object_sid is not None and directory.find_by_sid(account.object_sid) == archived
    assert directory.find_guest(uid) is None
    assert in_ad(admin, account.dn) is None
    raw = in_ad(admin, archived.dn)
    assert raw is not None and int(raw["userAccountControl"]) == GUEST_USER_ACCOUNT_CONTROL | UAC_ACCOUNTDISABLE


def test_disable_and_archive_twice_sends_nothing_the_second_time(directory: Directory, writes: list[str]) -> None:
    account = create(directory)
    writes.clear()
    archived = directory.disable_and_archive(account.dn)
    assert writes == ["modify", "modify_dn"]  # disable first, then move

    writes.clear()
    assert directory.disable_and_archive(archived.dn) == archived
    # a retry with the DN it had before the move (the first answer was lost): same account, nothing sent
    assert directory.disable_and_archive(account.dn) == archived
    assert writes == []


def test_an_already_disabled_account_is_only_moved(directory: Directory, admin: ldap3.Connection,
                                                   writes: list[str]) -> None:
    account = create(directory)
    set_uac(admin, account.dn, GUEST_USER_ACCOUNT_CONTROL | UAC_ACCOUNTDISABLE)
    writes.clear()
    archived = directory.disable_and_archive(account.dn)
    assert writes == ["modify_dn"]
    assert archived.user_account_control == GUEST_USER_ACCOUNT_CONTROL | UAC_ACCOUNTDISABLE


def test_an_account_already_in_the_archive_ou_is_only_disabled(
    directory: Directory, samba_dc: GuestsyncDC, admin: ldap3.Connection, writes: list[str]
) -> None:
    account = create(directory)
    rdn = account.dn.split(",", 1)[0]
    assert admin.modify_dn(account.dn, rdn, new_superior=samba_dc.archive_ou), admin.result
    writes.clear()
    archived = directory.disable_and_archive(f"{rdn},{samba_dc.archive_ou}")
    assert writes == ["modify"]
    assert archived.disabled and archived.object_sid == account.object_sid


def test_other_user_account_control_bits_are_kept(directory: Directory, admin: ldap3.Connection) -> None:
    account = create(directory)
    others = UAC_NORMAL_ACCOUNT | UAC_SMARTCARD_REQUIRED | UAC_DONT_EXPIRE_PASSWORD  # set by an admin meanwhile
    set_uac(admin, account.dn, others)

    archived = directory.disable_and_archive(account.dn)
    assert archived.user_account_control == others | UAC_ACCOUNTDISABLE
    restored = directory.restore_guest(archived.dn)
    assert restored.user_account_control == others


def test_a_lost_answer_to_the_move_is_taken_for_what_it_did(
    directory: Directory, samba_dc: GuestsyncDC, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DC moved the account, then the connection dropped before its answer: the adapter reconnects,
    repeats the move, gets noSuchObject, and finds the account where it was to go."""
    account = create(directory)
    original = ldap3.Connection.modify_dn
    calls: list[str] = []

    def move_then_drop(self: ldap3.Connection, dn: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(dn)
        result = original(self, dn, *args, **kwargs)
        if len(calls) == 1:
            raise LDAPCommunicationError("connection reset while reading the answer")
        return result

    monkeypatch.setattr(ldap3.Connection, "modify_dn", move_then_drop)
    archived = directory.disable_and_archive(account.dn)
    assert len(calls) == 2
    assert same(archived.dn, f"{account.dn.split(',', 1)[0]},{samba_dc.archive_ou}") and archived.disabled


def test_a_name_clash_in_the_archive_ou_is_refused_before_any_write(
    directory: Directory, samba_dc: GuestsyncDC, admin: ldap3.Connection, writes: list[str]
) -> None:
    account = create(directory)
    uid = uid_of(account)
    squatter = f"CN={uid},{samba_dc.archive_ou}"
    assert admin.add(squatter, ["top", "person", "organizationalPerson", "user"],
                     {"sAMAccountName": f"sq{uuid.uuid4().hex[:12]}"}), admin.result
    writes.clear()

    with pytest.raises(AccountExistsError) as exc:
        directory.disable_and_archive(account.dn)

    assert str(exc.value) == (
        f"cannot archive {account.dn}: {squatter} already exists (another object with the same name is in "
        f"{samba_dc.archive_ou}; remove or rename one of them)"
    )
    assert writes == []
    assert directory.find_guest(uid) == account  # still in the guest OU, still enabled


def test_a_clash_found_by_the_dc_itself_is_mapped(
    directory: Directory, samba_dc: GuestsyncDC, admin: ldap3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the clashing object appears after our own check, the DC's entryAlreadyExists gives the same error."""
    account = create(directory)
    uid = uid_of(account)
    assert admin.add(f"CN={uid},{samba_dc.archive_ou}", ["top", "person", "organizationalPerson", "user"],
                     {"sAMAccountName": f"sq{uuid.uuid4().hex[:12]}"}), admin.result
    monkeypatch.setattr(directory, "_exists", lambda dn: False)
    with pytest.raises(AccountExistsError, match=f"CN={uid},{samba_dc.archive_ou} already exists"):
        directory.disable_and_archive(account.dn)
    left = directory.find_guest(uid)
    assert left is not None and left.disabled  # disabled, not moved: the safe half


def test_archiving_a_missing_account_is_not_found(directory: Directory, samba_dc: GuestsyncDC) -> None:
    dn = f"CN={uuid.uuid4()},{samba_dc.guest_ou}"
    with pytest.raises(AccountNotFoundError, match="there is no user account at"):
        directory.disable_and_archive(dn)
    with pytest.raises(AccountNotFoundError, match="there is no user account at"):
        directory.restore_guest(dn)


def test_lifecycle_needs_the_archive_ou(directory_settings: DirectorySettings, samba_dc: GuestsyncDC,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Directory, "_connect", lambda self: pytest.fail("connected"))
    with Directory(directory_settings) as guest_only:
        with pytest.raises(ConfigurationError, match="AD_ARCHIVE_OU is not set"):
            guest_only.disable_and_archive(f"CN={uuid.uuid4()},{samba_dc.guest_ou}")
        with pytest.raises(ConfigurationError, match="AD_ARCHIVE_OU is not set"):
            guest_only.restore_guest(f"CN={uuid.uuid4()},{samba_dc.archive_ou}")
    for overlapping in (samba_dc.guest_ou, f"OU=Archive,{samba_dc.guest_ou}", samba_dc.base_dn):
        with pytest.raises(ConfigurationError, match=r"AD_ARCHIVE_OU .* must be an OU of its own"):
            Directory(directory_settings, archive_ou=overlapping)


# --- restore -------------------------------------------------------------------------------------------------
def test_restore_moves_back_and_enables_with_the_same_sid(directory: Directory, samba_dc: GuestsyncDC,
                                                          admin: ldap3.Connection, writes: list[str]) -> None:
    account = create(directory)
    archived = directory.disable_and_archive(account.dn)
    writes.clear()

    restored = directory.restore_guest(archived.dn)

    assert writes == ["modify_dn", "modify"]  # move back first, then enable
    assert same(restored.dn, account.dn)
    assert restored.user_account_control == GUEST_USER_ACCOUNT_CONTROL
    assert not restored.disabled
    assert restored.object_sid == account.object_sid
    assert directory.find_guest(uid_of(account)) == restored
    assert in_ad(admin, archived.dn) is None
    raw = in_ad(admin, account.dn)
    assert raw is not None and int(raw["userAccountControl"]) == GUEST_USER_ACCOUNT_CONTROL

    writes.clear()
    assert directory.restore_guest(restored.dn) == restored
    assert directory.restore_guest(archived.dn) == restored  # a retry with the archive DN
    assert writes == []


def test_restore_in_place_only_enables(directory: Directory, admin: ldap3.Connection, writes: list[str]) -> None:
    account = create(directory)
    set_uac(admin, account.dn, GUEST_USER_ACCOUNT_CONTROL | UAC_ACCOUNTDISABLE)
    writes.clear()
    restored = directory.restore_guest(account.dn)
    assert writes == ["modify"]
    assert same(restored.dn, account.dn) and restored.user_account_control == GUEST_USER_ACCOUNT_CONTROL


def test_restore_refuses_when_the_guest_ou_has_the_name_already(
    directory: Directory, samba_dc: GuestsyncDC, writes: list[str]
) -> None:
    """The guest came back and got a new account before the old one was restored: both stay as they are."""
    account = create(directory)
    uid = uid_of(account)
    archived = directory.disable_and_archive(account.dn)
    newcomer = create(directory, uid=uid, sam=f"n{uuid.uuid4().hex[:12]}")
    writes.clear()

    with pytest.raises(AccountExistsError, match=f"cannot restore {archived.dn}: {newcomer.dn} already exists"):
        directory.restore_guest(archived.dn)

    assert writes == []
    assert archived.object_sid is not None and directory.find_by_sid(archived.object_sid) == archived
    assert directory.find_guest(uid) == newcomer


# --- delete --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("archive_first", [True, False], ids=["archived", "in-guest-ou"])
def test_delete_removes_the_account_and_a_second_delete_is_fine(
    directory: Directory, admin: ldap3.Connection, writes: list[str], archive_first: bool
) -> None:
    account = create(directory)
    dn = directory.disable_and_archive(account.dn).dn if archive_first else account.dn
    writes.clear()

    directory.delete_guest(dn)

    assert writes == ["delete"]
    assert in_ad(admin, dn) is None
    assert account.object_sid is not None and directory.find_by_sid(account.object_sid) is None
    directory.delete_guest(dn)  # gone is success
    assert writes == ["delete"]


def test_delete_refuses_an_object_that_is_not_a_user(directory: Directory, samba_dc: GuestsyncDC,
                                                     admin: ldap3.Connection) -> None:
    contact = f"CN={uuid.uuid4()},{samba_dc.guest_ou}"
    assert admin.add(contact, ["top", "person", "organizationalPerson", "contact"]), admin.result
    try:
        with pytest.raises(DirectoryError, match="it is not a user account"):
            directory.delete_guest(contact)
        with pytest.raises(DirectoryError, match="it is not a user account"):
            directory.disable_and_archive(contact)
        assert in_ad(admin, contact) is not None
    finally:
        admin.delete(contact)


# --- the managed OU guard ------------------------------------------------------------------------------------
Lifecycle = Callable[[Directory, str], object]
OPERATIONS: dict[str, Lifecycle] = {
    "disable_and_archive": Directory.disable_and_archive,
    "restore_guest": Directory.restore_guest,
    "delete_guest": Directory.delete_guest,
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
@pytest.mark.parametrize(
    "dn_template",
    [
        "CN=Administrator,CN=Users,{base}",
        "{guest_ou}",  # the OUs themselves
        "{archive_ou}",
        "CN=x,OU=B2BGuestEvil,{base}",
        "CN=x\\,OU\\=B2BGuest,{base}",  # an escaped comma fakes nothing
        "not a DN",
    ],
)
def test_lifecycle_outside_the_managed_ous_is_refused_without_sending(
    directory_settings: DirectorySettings, samba_dc: GuestsyncDC, monkeypatch: pytest.MonkeyPatch,
    operation: str, dn_template: str
) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a request was sent")

    monkeypatch.setattr(Directory, "_connect", no_network)
    dn = dn_template.format(base=samba_dc.base_dn, guest_ou=samba_dc.guest_ou, archive_ou=samba_dc.archive_ou)
    with Directory(directory_settings, archive_ou=samba_dc.archive_ou) as directory:
        with pytest.raises(OutsideManagedOuError, match="refusing to"):
            OPERATIONS[operation](directory, dn)
        assert directory._conn is None  # not even connected


@pytest.mark.parametrize("operation", ["disable_and_archive", "restore_guest"])
def test_only_direct_children_of_the_two_ous_are_moved(directory_settings: DirectorySettings,
                                                       samba_dc: GuestsyncDC, operation: str) -> None:
    nested = f"CN={uuid.uuid4()},OU=Sub,{samba_dc.guest_ou}"
    with Directory(directory_settings, archive_ou=samba_dc.archive_ou) as directory:
        with pytest.raises(OutsideManagedOuError, match="only accounts directly in"):
            OPERATIONS[operation](directory, nested)
        assert directory._conn is None


def test_the_administrator_is_left_untouched(directory: Directory, samba_dc: GuestsyncDC,
                                             admin: ldap3.Connection) -> None:
    before = in_ad(admin, samba_dc.admin_dn)
    for operation in OPERATIONS.values():
        with pytest.raises(OutsideManagedOuError):
            operation(directory, samba_dc.admin_dn)
    assert in_ad(admin, samba_dc.admin_dn) == before
    assert in_ad(admin, f"CN=Administrator,{samba_dc.archive_ou}") is None


def test_real_ad_denies_the_service_account_lifecycle_writes_outside_its_ous(
    directory: Directory, directory_settings: DirectorySettings, samba_dc: GuestsyncDC, admin: ldap3.Connection
) -> None:
    """Behind our guard, AD's ACLs hold too: the same bind with straight ldap3 cannot disable, move or delete
    the Administrator, nor move a guest out of the two OUs."""
    account = create(directory)
    before = in_ad(admin, samba_dc.admin_dn)
    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=directory_settings.ca_file)
    server = ldap3.Server(samba_dc.listen_ip, port=636, use_ssl=True, tls=tls, get_info=ldap3.NONE)
    with ldap3.Connection(server, directory_settings.bind_user, directory_settings.bind_password,
                          auto_bind=True, raise_exceptions=False) as svc:
        assert not svc.modify(samba_dc.admin_dn, {"userAccountControl": [(ldap3.MODIFY_REPLACE, ["514"])]})
        assert svc.result["description"] == "insufficientAccessRights"
        assert not svc.modify_dn(samba_dc.admin_dn, "CN=Administrator", new_superior=samba_dc.archive_ou)
        assert svc.result["description"] == "insufficientAccessRights"
        assert not svc.delete(samba_dc.admin_dn)
        assert svc.result["description"] == "insufficientAccessRights"
        assert not svc.modify_dn(account.dn, account.dn.split(",", 1)[0], new_superior=f"CN=Users,{samba_dc.base_dn}")
        assert svc.result["description"] == "insufficientAccessRights"
        assert not svc.delete(samba_dc.archive_ou)
        assert svc.result["description"] == "insufficientAccessRights"
    assert in_ad(admin, samba_dc.admin_dn) == before
    assert directory.find_guest(uid_of(account)) == account


# --- reads cover both OUs ------------------------------------------------------------------------------------
def test_find_by_sid_and_iter_managed_accounts_cover_both_ous(directory: Directory) -> None:
    active = create(directory)
    archived = directory.disable_and_archive(create(directory).dn)
    assert active.object_sid is not None and archived.object_sid is not None
    assert directory.find_by_sid(active.object_sid) == active
    assert directory.find_by_sid(archived.object_sid) == archived

    listed = {a.object_sid: a for a in directory.iter_managed_accounts(page_size=2)}
    assert listed[active.object_sid] == active
    assert listed[archived.object_sid] == archived
    assert all(a.user_account_control is not None for a in listed.values())

