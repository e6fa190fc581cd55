"""DC selection without a network: AD_SERVER parsing, RFC 2782 ordering of SRV records, the injected resolver,
and DCs remembered as down (tried last, then first again once the time is up)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from shared.adapters.dc_locator import DcLocator, DcLocatorError, SrvRecord, order_srv
from shared.core.domain import ConfigurationError
from shared.settings import DomainController, parse_ad_server


def test_ad_server_forms() -> None:
    assert parse_ad_server("ldaps://dc1.contoso.com").controllers == (DomainController("dc1.contoso.com", 636),)
    several = parse_ad_server("ldaps://dc1.contoso.com, ldaps://dc2.contoso.com:1636 ldaps://DC1.contoso.com")
    assert [dc.url for dc in several.controllers] == [
        "ldaps://dc1.contoso.com:636", "ldaps://dc2.contoso.com:1636"]  # host names compare case-insensitively
    assert parse_ad_server("dns:Contoso.COM.").srv_domain == "contoso.com"
    for bad, why in [("ldap://dc1.contoso.com", "not an ldaps:// URL"), ("ldaps://dc1, ldap://dc2", "ldap://dc2"),
                     ("dns:contoso", "does not name a DNS domain"), ("dns:-x.com", "does not name a DNS domain"),
                     ("ldaps://dc1.contoso.com/dc=contoso", "nothing more"), ("contoso.com", "not an ldaps://"),
                     ("ldaps://dc1:99999", "invalid port"), (" , ", "is empty")]:
        with pytest.raises(ConfigurationError, match="AD_SERVER") as info:
            parse_ad_server(bad)
        assert why in str(info.value), (bad, str(info.value))


def test_srv_order_priority_first_then_by_weight() -> None:
    records = [SrvRecord(10, 0, "backup.contoso.com."), SrvRecord(0, 90, "big.contoso.com"),
               SrvRecord(0, 10, "small.contoso.com"), SrvRecord(5, 50, "mid.contoso.com")]
    rng = random.Random(7)
    firsts = Counter(order_srv(records, rng)[0] for _ in range(2000))
    assert set(firsts) == {"big.contoso.com", "small.contoso.com"}  # priority 0 always before 5 and 10
    assert 0.85 < firsts["big.contoso.com"] / 2000 < 0.95  # weight 90 of 100
    for _ in range(50):
        order = order_srv(records, rng)
        assert order[2:] == ["mid.contoso.com", "backup.contoso.com."]  # as the resolver gave it
        assert sorted(order[:2]) == ["big.contoso.com", "small.contoso.com"]


def test_srv_all_zero_weights_shuffled_and_dot_means_none() -> None:
    records = [SrvRecord(0, 0, f"dc{i}.contoso.com") for i in range(4)]
    assert {order_srv(records, random.Random(seed))[0] for seed in range(40)} == {r.target for r in records}
    assert order_srv([SrvRecord(0, 0, ".")]) == []


def test_locator_resolves_each_time_and_puts_down_dcs_last() -> None:
    now = [1000.0]
    asked: list[str] = []
    answer = [SrvRecord(0, 100, "dc1.contoso.com"), SrvRecord(1, 100, "dc2.contoso.com")]

    def resolver(name: str) -> list[SrvRecord]:
        asked.append(name)
        return answer

    locator = DcLocator(parse_ad_server("dns:contoso.com"), resolver=resolver, down_seconds=60, clock=lambda: now[0])
    dc1, dc2 = DomainController("dc1.contoso.com"), DomainController("dc2.contoso.com")
    assert locator.candidates() == [dc1, dc2]
    locator.mark_down(dc1, "refused")
    assert locator.candidates() == [dc2, dc1]  # still tried, last
    now[0] += 61
    assert locator.candidates() == [dc1, dc2]  # down time over
    locator.mark_down(dc2, "timeout")
    now[0] += 5
    locator.mark_down(dc1, "timeout")
    assert locator.candidates() == [dc2, dc1]  # both down: the one back soonest first
    locator.mark_up(dc1)
    assert locator.candidates() == [dc1, dc2]
    assert asked == ["_ldap._tcp.dc._msdcs.contoso.com"] * 5


def test_locator_fixed_list_and_no_records() -> None:
    locator = DcLocator(parse_ad_server("ldaps://b.contoso.com, ldaps://a.contoso.com"))
    assert [dc.host for dc in locator.candidates()] == ["b.contoso.com", "a.contoso.com"]  # as written
    empty = DcLocator(parse_ad_server("dns:contoso.com"), resolver=lambda name: [])
    with pytest.raises(DcLocatorError, match=r"_ldap\._tcp\.dc\._msdcs\.contoso\.com"):
        empty.candidates()
