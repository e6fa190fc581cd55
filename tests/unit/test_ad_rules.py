"""AD limits, DN containment, escaping, passwords and SIDs (shared/core/ad_rules.py): pure, no DC needed."""

import re
import string
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.core.ad_rules import (
    MAX_LENGTHS,
    escape_filter_value,
    fit_cosmetic,
    format_sid,
    guest_dn,
    is_within,
    new_password,
    parse_sid,
    same_dn,
    sid_filter_value,
    utf16_length,
    validate_export,
)

UID = "6ea91a8d-e32e-41a1-b7bd-d2d185eed0e0"
OU = "OU=B2BGuest,DC=contoso,DC=com"
GOOD = {
    "sAMAccountName": UID[:20],
    "givenName": "Alice",
    "sn": "Smith",
    "mail": "alice@fabrikam.com",
    "userPrincipalName": "alice_fabrikam.com#EXT#@contoso.onmicrosoft.com",
    "displayName": "Alice Smith",
}


# --- validate_export -----------------------------------------------------------------------------------------
def test_good_values_pass() -> None:
    assert validate_export(GOOD) == []


def test_none_and_empty_values_are_not_checked() -> None:
    assert validate_export({**GOOD, "givenName": None, "sn": ""}) == []


@pytest.mark.parametrize(
    ("name", "limit"),
    [("sAMAccountName", 20), ("userPrincipalName", 1024), ("displayName", 256), ("givenName", 64), ("sn", 64),
     ("mail", 256), ("cn", 64)],
)
def test_each_length_limit_is_enforced_and_named(name: str, limit: int) -> None:
    at_limit = "a" * (limit - len("@x.com")) + "@x.com" if name in ("userPrincipalName", "mail") else "a" * limit
    assert validate_export({name: at_limit}) == []
    problems = validate_export({name: at_limit + "b"})
    assert len(problems) == 1
    assert name in problems[0] and str(limit) in problems[0]


def test_length_counts_utf16_code_units() -> None:
    emoji = "\U0001f600"  # outside the BMP: 2 code units in AD
    assert utf16_length(emoji) == 2
    assert validate_export({"givenName": emoji * 32}) == []
    assert validate_export({"givenName": emoji * 32 + "x"}) != []


@pytest.mark.parametrize("char", list('"/\\[]:;|=,+*?<>@'))
def test_sam_account_name_forbidden_characters(char: str) -> None:
    problems = validate_export({"sAMAccountName": f"ab{char}cd"})
    assert problems and "sAMAccountName" in problems[0] and char in problems[0]


@pytest.mark.parametrize("sam", ["...", "   ", ". ."])
def test_sam_account_name_only_dots_and_spaces(sam: str) -> None:
    assert any("dots and spaces" in p for p in validate_export({"sAMAccountName": sam}))


def test_sam_account_name_of_21_characters_is_refused_though_samba_would_take_it() -> None:
    problems = validate_export({"sAMAccountName": UID[:21]})
    assert problems == ["sAMAccountName is 21 characters long; AD allows at most 20"]


@pytest.mark.parametrize("upn", ["nobody", "a@b@c.com", "@contoso.com", "alice@"])
def test_upn_needs_exactly_one_at_with_both_sides(upn: str) -> None:
    problems = validate_export({"userPrincipalName": upn})
    assert problems and "userPrincipalName" in problems[0]


@pytest.mark.parametrize("bad", ["a\x00b", "line\nbreak", "tab\there", "del\x7f", "\x1f"])
def test_control_characters_refused_in_any_attribute(bad: str) -> None:
    for name in ("displayName", "mail", "sn"):
        problems = validate_export({name: bad})
        assert any(name in p and "control character" in p for p in problems)


@pytest.mark.parametrize("bad", ["half \ud800 a pair", "\udfff", "x" * 300 + "\udc00"])
def test_unpaired_surrogates_are_refused_not_raised(bad: str) -> None:
    """A JSON string may carry half a surrogate pair; it is no Unicode text and cannot go over LDAP."""
    for name in ("displayName", "mail", "userPrincipalName"):
        problems = validate_export({name: bad})
        assert any(name in p and "surrogate" in p for p in problems)
    fitted, _ = fit_cosmetic({"displayName": bad})  # counted, never raised
    assert fitted["displayName"] is not None and utf16_length(fitted["displayName"]) <= 256


def test_several_problems_are_all_reported() -> None:
    problems = validate_export({**GOOD, "sAMAccountName": "a" * 21, "mail": "m" * 300})
    assert len(problems) == 2


# --- fit_cosmetic --------------------------------------------------------------------------------------------
def test_fit_cosmetic_truncates_only_cosmetic_attributes_with_warnings() -> None:
    values = {**GOOD, "displayName": "D" * 300, "givenName": "G" * 65, "sn": "S" * 64, "mail": "m" * 300 + "@x"}
    fitted, warnings = fit_cosmetic(values)
    assert fitted["displayName"] == "D" * 256
    assert fitted["givenName"] == "G" * 64
    assert fitted["sn"] == "S" * 64
    assert fitted["mail"] == values["mail"]  # identity-bearing: never cut ...
    assert [p for p in validate_export(fitted) if "mail" in p]  # ... reported instead
    assert len(warnings) == 2
    assert any("displayName" in w and "300" in w and "256" in w for w in warnings)
    assert values["displayName"] == "D" * 300  # input untouched


def test_fit_cosmetic_never_touches_identity_attributes() -> None:
    values = {"sAMAccountName": "s" * 40, "userPrincipalName": "u" * 2000 + "@x", "mail": "m" * 400}
    fitted, warnings = fit_cosmetic(values)
    assert fitted == values and warnings == []


def test_fit_cosmetic_does_not_split_a_surrogate_pair() -> None:
    fitted, _ = fit_cosmetic({"givenName": "x" + "\U0001f600" * 40})
    value = fitted["givenName"]
    assert value is not None
    assert utf16_length(value) == 63  # 1 + 31 * 2; a 32nd emoji would need 65
    assert value.encode("utf-16-le").decode("utf-16-le") == value


def test_fit_cosmetic_keeps_none() -> None:
    fitted, warnings = fit_cosmetic({"displayName": None})
    assert fitted == {"displayName": None} and warnings == []


# --- DNs -----------------------------------------------------------------------------------------------------
def test_guest_dn() -> None:
    assert guest_dn(UID, OU) == f"CN={UID},{OU}"


@pytest.mark.parametrize("uid", ["", "alice", f"{UID},OU=Admins", "x,CN=y", f"{UID}\n", UID[:-1] + "g"])
def test_guest_dn_refuses_non_guid(uid: str) -> None:
    with pytest.raises(ValueError, match="not a GUID"):
        guest_dn(uid, OU)


@pytest.mark.parametrize(
    "dn",
    [
        f"CN=x,{OU}",
        "CN=x,ou=b2bguest,dc=CONTOSO,dc=com",
        f"CN=x,OU=Sub,{OU}",
        f"CN=a\\,b,{OU}",
        "CN=x,OU=B2B\\47uest,DC=contoso,DC=com",  # \47 is 'G': same OU, escaped differently
    ],
)
def test_is_within_accepts_descendants(dn: str) -> None:
    assert is_within(dn, OU)


@pytest.mark.parametrize(
    "dn",
    [
        OU,  # the OU itself is not within itself
        "ou=b2bguest,dc=contoso,dc=com",
        "CN=x,OU=B2BGuestEvil,DC=contoso,DC=com",
        "CN=x,OU=EvilB2BGuest,DC=contoso,DC=com",
        "CN=x,OU=B2BGuest,DC=contoso,DC=org",
        "CN=x,OU=B2BGuest,DC=evil,DC=contoso,DC=com",
        "CN=x\\,OU\\=B2BGuest,DC=contoso,DC=com",  # escaped comma: one CN, directly under the domain
        "CN=x\\2COU\\3DB2BGuest,DC=contoso,DC=com",  # same, hex-escaped
        "CN=Administrator,CN=Users,DC=contoso,DC=com",
        "DC=contoso,DC=com",
        "",
        "garbage",
        "CN=x,OU=B2BGuest, DC=contoso,DC=com",  # does not parse strictly: fail closed
    ],
)
def test_is_within_refuses_everything_else(dn: str) -> None:
    assert not is_within(dn, OU)


def test_is_within_with_unparseable_ou_is_false() -> None:
    assert not is_within(f"CN=x,{OU}", "not a dn")


def test_multivalued_rdn_compares_as_a_set() -> None:
    assert is_within("CN=x,OU=a+L=b,DC=c", "L=b+OU=a,DC=c")
    assert not is_within("CN=x,OU=a+L=b,DC=c", "OU=a,DC=c")


def test_same_dn() -> None:
    assert same_dn(f"CN={UID},{OU}", f"cn={UID.upper()},ou=b2bguest,dc=contoso,dc=com")
    assert not same_dn(f"CN=a,{OU}", f"CN=b,{OU}")
    assert not same_dn("garbage", "garbage")


# --- passwords -----------------------------------------------------------------------------------------------
def _complex(password: str) -> bool:
    return (
        any(c.isupper() for c in password)
        and any(c.islower() for c in password)
        and any(c.isdigit() for c in password)
        and any(c in string.punctuation for c in password)
    )


def test_new_password_is_complex_and_random() -> None:
    passwords = {new_password() for _ in range(200)}
    assert len(passwords) == 200
    for password in passwords:
        assert len(password) == 24
        assert _complex(password)
        assert '"' not in password and "\\" not in password and " " not in password


def test_new_password_length() -> None:
    assert len(new_password(64)) == 64
    with pytest.raises(ValueError):
        new_password(7)


def test_new_password_avoids_name_tokens() -> None:
    # With a tiny alphabet the tokens would show up constantly; the generator must keep drawing.
    sam, display = "abcdefghijklmnopqrst", "Xyz Qrs-Tuv, Wab.Cde_Fgh#Ijk"
    tokens = ["abcdefghijklmnopqrst", "xyz", "qrs", "tuv", "wab", "cde", "fgh", "ijk"]
    for _ in range(300):
        folded = new_password(24, avoid=(sam, display)).casefold()
        assert not any(t in folded for t in tokens)


def test_new_password_ignores_short_tokens() -> None:
    # Two-character tokens are not checked by AD; they must not make generation impossible.
    assert _complex(new_password(24, avoid=("ab", "x y")))


# --- SIDs ----------------------------------------------------------------------------------------------------
def _sid_bytes(authority: int, *subs: int) -> bytes:
    return bytes([1, len(subs)]) + authority.to_bytes(6, "big") + struct.pack(f"<{len(subs)}I", *subs)


def test_format_sid_domain_user() -> None:
    raw = _sid_bytes(5, 21, 2778405917, 1770648894, 1924962231, 1105)
    assert format_sid(raw) == "S-1-5-21-2778405917-1770648894-1924962231-1105"


def test_format_sid_well_known() -> None:
    assert format_sid(_sid_bytes(5, 32, 544)) == "S-1-5-32-544"
    assert format_sid(_sid_bytes(1, 0)) == "S-1-1-0"


@pytest.mark.parametrize("raw", [b"", b"\x01\x05", _sid_bytes(5, 21, 1)[:-1]])
def test_format_sid_refuses_malformed(raw: bytes) -> None:
    with pytest.raises(ValueError):
        format_sid(raw)


@given(
    authority=st.integers(min_value=0, max_value=(1 << 48) - 1),
    subs=st.lists(st.integers(min_value=0, max_value=0xFFFFFFFF), max_size=15),
)
def test_sid_round_trip(authority: int, subs: list[int]) -> None:
    raw = _sid_bytes(authority, *subs)
    assert parse_sid(format_sid(raw)) == raw


@pytest.mark.parametrize("sid", ["", "S-1", "X-1-5-21", "S-1-5-21-abc", "S-1-5-21-4294967296", "S-1--5"])
def test_parse_sid_refuses_malformed(sid: str) -> None:
    with pytest.raises(ValueError):
        parse_sid(sid)


def test_sid_filter_value_escapes_every_byte() -> None:
    value = sid_filter_value("S-1-5-21-1-2-3-500")
    assert re.fullmatch(r"(\\[0-9a-f]{2})+", value)
    assert value.startswith("\\01\\05\\00\\00\\00\\00\\00\\05\\15\\00\\00\\00")
    assert value.endswith("\\f4\\01\\00\\00")  # 500 little-endian


# --- filters -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "escaped"),
    [("a*", "a\\2a"), ("x)(uid=*", "x\\29\\28uid=\\2a"), ("back\\slash", "back\\5cslash"), ("nul\x00", "nul\\00"),
     ("plain@fabrikam.com", "plain@fabrikam.com"), ("José", "José")],
)
def test_escape_filter_value(value: str, escaped: str) -> None:
    assert escape_filter_value(value) == escaped


def test_limits_table_matches_windows_schema() -> None:
    assert MAX_LENGTHS == {"sAMAccountName": 20, "userPrincipalName": 1024, "displayName": 256, "givenName": 64,
                           "sn": 64, "mail": 256, "cn": 64}
