"""One DN splitter: comparisons (``same_dn``, ``is_within``) and moves (the first RDN and the parent) share it."""

from __future__ import annotations

import pytest

from shared.adapters.directory.entries import _split_dn
from shared.core.ad_rules import join_rdns, same_dn, split_rdns


@pytest.mark.parametrize(("dn", "first", "parent"), [
    ("CN=a\\,b+sn=x,OU=Guests,DC=c", "CN=a\\,b+sn=x", "OU=Guests,DC=c"),
    ("CN=0f3c,OU=B2B Guests,DC=contoso,DC=com", "CN=0f3c", "OU=B2B Guests,DC=contoso,DC=com"),
])
def test_the_first_rdn_and_the_parent_are_split_as_written(dn: str, first: str, parent: str) -> None:
    assert _split_dn(dn) == (first, parent)
    rdns = split_rdns(dn)
    assert rdns is not None and join_rdns(rdns) == dn
    assert same_dn(f"{first},{parent}", dn.lower())


@pytest.mark.parametrize("dn", ["CN=alone", "not a dn"])
def test_a_dn_without_parent_or_syntax_does_not_split(dn: str) -> None:
    assert _split_dn(dn) is None
