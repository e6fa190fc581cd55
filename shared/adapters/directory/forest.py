"""What the forest-wide name uniqueness check knows about the forest (no I/O; read by ``accounts``)."""

from __future__ import annotations

from dataclasses import dataclass

from shared.core.ad_rules import is_within

#: The Global Catalog over TLS (LDAPS to the GC): the whole forest, with the attributes uniqueness needs.
GLOBAL_CATALOG_TLS_PORT = 3269


@dataclass(frozen=True)
class ForestDomain:
    dns_name: str  # lower case, e.g. contoso.com
    naming_context: str  # DC=contoso,DC=com


@dataclass(frozen=True)
class Forest:
    """What name uniqueness needs to know about the forest (read from CN=Partitions)."""

    own: ForestDomain  # the domain of the guest OU
    domains: tuple[ForestDomain, ...]
    upn_suffixes: frozenset[str]  # extra UPN suffixes of the forest, lower case
    global_catalog: bool  # whether the DC we talk to is a Global Catalog

    @property
    def names(self) -> frozenset[str]:
        """Every suffix an implicit or explicit UPN of this forest can end in."""
        return frozenset({d.dns_name for d in self.domains} | self.upn_suffixes)

    def domain_of(self, dn: str) -> ForestDomain | None:
        """The domain whose naming context holds ``dn`` (the deepest one, for child domains)."""
        holders = [d for d in self.domains if is_within(dn, d.naming_context)]
        return max(holders, key=lambda d: len(d.naming_context), default=None)
