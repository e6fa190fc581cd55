"""The guest UPN rule (pure) and its setting: only UPNs of the kind Entra gives guests, in an allowed suffix."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.core.ad_rules import GUEST_UPN_MARKER, guest_upn_problem
from shared.core.domain import ConfigurationError
from shared.settings import load_upn_suffixes

ALLOWED = ("contoso.onmicrosoft.com",)
#: What Entra leaves of an invited address before #EXT# (it replaces the '@' with '_'); no '#' of its own.
LOCAL = st.text(alphabet=string.ascii_letters + string.digits + "._-'!^~", min_size=1, max_size=60)
LABEL = st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=12)
SUFFIX = st.lists(LABEL, min_size=2, max_size=4).map(".".join)


@given(LOCAL)
def test_an_entra_guest_upn_in_the_initial_domain_passes(local: str) -> None:
    assert guest_upn_problem(f"{local}{GUEST_UPN_MARKER}@contoso.onmicrosoft.com", ALLOWED) is None


@given(LOCAL, st.sampled_from(["contoso.onmicrosoft.com", "CONTOSO.onmicrosoft.COM", "Contoso.OnMicrosoft.com"]))
def test_suffixes_compare_without_case(local: str, suffix: str) -> None:
    assert guest_upn_problem(f"{local}#EXT#@{suffix}", ("Contoso.onmicrosoft.com",)) is None


@given(LOCAL, SUFFIX)
def test_any_upn_without_the_marker_is_refused_even_in_an_allowed_suffix(local: str, suffix: str) -> None:
    upn = f"{local}@{suffix}"
    problem = guest_upn_problem(upn, (suffix, *ALLOWED))
    assert problem is not None and repr(upn) in problem and "#EXT#" in problem


@given(LOCAL, SUFFIX)
def test_a_suffix_outside_the_list_is_refused_and_named(local: str, suffix: str) -> None:
    problem = guest_upn_problem(f"{local}#EXT#@{suffix}", ALLOWED)
    if suffix in ALLOWED:
        assert problem is None
        return
    assert problem is not None and repr(suffix) in problem and "contoso.onmicrosoft.com" in problem
    assert "GUESTSYNC_UPN_SUFFIXES" in problem


@given(LOCAL, LABEL)
def test_a_subdomain_of_an_allowed_suffix_is_not_allowed(local: str, label: str) -> None:
    assert guest_upn_problem(f"{local}#EXT#@{label}.contoso.onmicrosoft.com", ALLOWED) is not None


@pytest.mark.parametrize("upn", [
    "Administrator@contoso.com", "administrator@contoso.onmicrosoft.com", "#EXT#@contoso.onmicrosoft.com",
    "a#EXT#x@contoso.onmicrosoft.com", "a#EXT#@contoso.onmicrosoft.com.", "a#EXT#@@contoso.onmicrosoft.com",
    "a@b#EXT#@contoso.onmicrosoft.com", "", None,
])
def test_what_entra_never_gives_a_guest_is_refused(upn: str | None) -> None:
    assert guest_upn_problem(upn, ALLOWED) is not None


def test_with_no_suffix_known_every_upn_is_refused_and_the_message_says_why() -> None:
    problem = guest_upn_problem("a#EXT#@contoso.onmicrosoft.com", ())
    assert problem is not None and "initial domain is not known" in problem


def test_the_setting_lists_dns_names_lower_case_without_repeats() -> None:
    env = {"GUESTSYNC_UPN_SUFFIXES": " Fabrikam.com, @partners.contoso.com ,fabrikam.com,, "}
    assert load_upn_suffixes(env) == ("fabrikam.com", "partners.contoso.com")
    assert load_upn_suffixes({}) == ()


@pytest.mark.parametrize("value", ["fabrikam", "a b.com", "x@y.com", "-bad.com", "*.contoso.com"])
def test_the_setting_refuses_what_is_not_a_domain_name(value: str) -> None:
    with pytest.raises(ConfigurationError, match="GUESTSYNC_UPN_SUFFIXES"):
        load_upn_suffixes({"GUESTSYNC_UPN_SUFFIXES": value})
