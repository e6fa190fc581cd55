"""MetaverseEntry's stored form (a guest record's ``Entry``) is written and read through one table."""

from __future__ import annotations

import pytest

from shared.core.domain import MetaverseEntry

ENTRY = MetaverseEntry(uid="0f3c", cn="0f3c", account_name="0f3c", employee_type="Guest", display_name="Ada",
                       given_name="Ada", sn="Lovelace", user_principal_name="ada@contoso.com", mail="ada@fabrikam.com",
                       mobile_phone=None)


def test_the_stored_form_keeps_its_metaverse_names_and_round_trips() -> None:
    assert list(ENTRY.as_dict()) == ["uid", "cn", "accountName", "employeeType", "displayName", "givenName", "sn",
                                     "userPrincipalName", "mail", "mobilePhone"]
    assert MetaverseEntry.from_dict(ENTRY.as_dict()) == ENTRY


def test_optional_attributes_may_be_absent_the_keys_may_not() -> None:
    assert MetaverseEntry.from_dict({"uid": "u", "cn": "u", "accountName": "u"}).mail is None
    with pytest.raises(KeyError):
        MetaverseEntry.from_dict({"uid": "u", "cn": "u"})
