"""Which domain controller to connect to: the DCs of AD_SERVER in order, or the domain's DCs from DNS.

Windows clients locate a DC through the SRV records ``_ldap._tcp.dc._msdcs.<domain>`` (lowest priority first,
weighted at random within a priority, RFC 2782); we do the same with dnspython. The port of those records is
LDAP's (389): guestsync talks LDAPS only, so the port is always 636 and the host name from the record is what
the DC's certificate (and its Kerberos SPN ``ldap/<host>``) must match.

A DC that could not be reached is remembered as down for ``DC_DOWN_SECONDS``: it is tried last (not never:
when every DC is down, all are tried again) so that the connections of a pool do not each wait for the same
dead DC's timeout. The choice is made when a connection is opened, never during an operation: see
``Directory._open`` for why a connection that drops stays on its DC.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from shared.settings import LDAPS_PORT, AdServer, DomainController, parse_ad_server

log = logging.getLogger("guestsync.directory")

#: How long a DC that failed to connect is tried after the others.
DC_DOWN_SECONDS = 60.0
SRV_PREFIX = "_ldap._tcp.dc._msdcs."


@dataclass(frozen=True)
class SrvRecord:
    priority: int
    weight: int
    target: str  # host name, without the trailing dot


class DcLocatorError(Exception):
    """DNS gave no DC for the domain (no such record, no answer, DNS server unreachable)."""


#: The resolver adapter: the SRV records of a DNS name. Tests inject their own; production uses dnspython.
SrvResolver = Callable[[str], Sequence[SrvRecord]]


def dns_srv_records(name: str, timeout: float = 5.0) -> list[SrvRecord]:
    """The SRV records of ``name`` from the system's DNS servers (dnspython reads resolv.conf, or the registry on
    Windows). Raises DcLocatorError with the reason when there are none."""
    import dns.exception
    import dns.resolver

    try:
        answer = dns.resolver.resolve(name, "SRV", lifetime=timeout)
    except dns.resolver.NXDOMAIN:
        raise DcLocatorError(f"DNS has no record {name} (is the domain name right, and does this host use the "
                             "domain's DNS servers?)") from None
    except dns.resolver.NoAnswer:
        raise DcLocatorError(f"DNS has no SRV record at {name}") from None
    except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
        raise DcLocatorError(f"DNS lookup of {name} failed: {exc}") from None
    except dns.exception.DNSException as exc:
        raise DcLocatorError(f"DNS lookup of {name} failed: {exc}") from None
    return [SrvRecord(int(r.priority), int(r.weight), str(r.target).rstrip(".")) for r in answer]


def order_srv(records: Sequence[SrvRecord], rng: random.Random | None = None) -> list[str]:
    """Host names in the order RFC 2782 says to try them: lowest priority first; within a priority, repeatedly a
    weighted random pick (weight-0 records first in the list, a random number in [0, total weight], the first
    record whose running weight reaches it). "." as target means "no such service" and is left out."""
    rng = rng or random.SystemRandom()
    usable = [r for r in records if r.target and r.target != "."]
    ordered: list[str] = []
    for priority in sorted({r.priority for r in usable}):
        group = [r for r in usable if r.priority == priority]
        rng.shuffle(group)
        group.sort(key=lambda r: r.weight != 0)  # stable: zero weights first, otherwise shuffled
        while group:
            pick = rng.randint(0, sum(r.weight for r in group))
            running = 0
            for record in group:
                running += record.weight
                if running >= pick:
                    break
            group.remove(record)
            if record.target.lower() not in {h.lower() for h in ordered}:
                ordered.append(record.target)
    return ordered


class DcLocator:
    """The DCs to try, best first, and which of them failed lately; shared by the Directory instances of a pool."""

    def __init__(self, server: str | AdServer, *, resolver: SrvResolver | None = None,
                 down_seconds: float = DC_DOWN_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.server = parse_ad_server(server) if isinstance(server, str) else server
        self._resolver = resolver or dns_srv_records
        self._down_seconds = down_seconds
        self._clock = clock
        self._down: dict[DomainController, float] = {}  # DC -> until when it is tried last
        self._lock = threading.Lock()

    @property
    def description(self) -> str:
        if self.server.srv_domain:
            return f"the DCs of {self.server.srv_domain} (DNS {SRV_PREFIX}{self.server.srv_domain})"
        return ", ".join(dc.url for dc in self.server.controllers)

    def candidates(self) -> list[DomainController]:
        """Every DC to try, in order: the ones not marked down first (AD_SERVER's order, or DNS's), then the
        ones that are, soonest back first. Raises DcLocatorError when DNS names none."""
        if self.server.srv_domain:
            name = SRV_PREFIX + self.server.srv_domain
            hosts = order_srv(self._resolver(name))
            if not hosts:
                raise DcLocatorError(f"DNS lists no domain controller under {name}")
            found = [DomainController(host, LDAPS_PORT) for host in hosts]
        else:
            found = list(self.server.controllers)
        now = self._clock()
        with self._lock:
            for dc, until in list(self._down.items()):
                if until <= now:
                    del self._down[dc]
            down = dict(self._down)
        up = [dc for dc in found if dc not in down]
        return up + sorted((dc for dc in found if dc in down), key=lambda dc: down[dc])

    def mark_down(self, dc: DomainController, reason: str) -> None:
        with self._lock:
            fresh = dc not in self._down
            self._down[dc] = self._clock() + self._down_seconds
        if fresh:
            log.warning("domain controller %s is unreachable (%s); trying it after the others for %.0f s",
                        dc.url, reason, self._down_seconds)

    def mark_up(self, dc: DomainController) -> None:
        with self._lock:
            was_down = self._down.pop(dc, None) is not None
        if was_down:
            log.info("domain controller %s answers again", dc.url)

    def is_down(self, dc: DomainController) -> bool:
        with self._lock:
            until = self._down.get(dc)
        return until is not None and until > self._clock()
