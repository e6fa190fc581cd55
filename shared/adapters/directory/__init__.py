"""On-premises Active Directory adapter: guest shadow accounts over LDAPS (ldap3), nothing else.

Design points:

* LDAPS only, with certificate validation (unless explicitly turned off): the initial password travels
  in the add request.
* Every write is checked against the managed OU(s) *before* anything is sent, so a bug upstream (or a
  forged DN) cannot make us touch an object elsewhere, even if the service account had the rights.
* Windows AD enforces sAMAccountName uniqueness domain-wide, and UPN uniqueness (2012 R2+); we look for
  clashes ourselves first, so the error names the other account, and map the DC's answer as well.
* LDAP results become the exceptions below; ``str()`` of each says in plain words what failed and never
  contains a password.
* One connection per instance, guarded by a lock (ldap3's sync strategy is not thread-safe); a dropped
  connection is re-opened once per operation. ``DirectoryPool`` lends instances to one thread at a time, so
  exports running in parallel each have a connection of their own instead of queueing on one.
* Deprovisioning (disable and archive, restore, delete) only ever moves an account between the guest OU and
  the archive OU, and each operation is idempotent: a retry after a lost answer finds the work done.
  Disabling comes before the move out, enabling after the move back, so a half-done step leaves the
  account disabled, never enabled in the wrong place.
"""

from shared.adapters.directory.adapter import Directory
from shared.adapters.directory.forest import GLOBAL_CATALOG_TLS_PORT, Forest, ForestDomain
from shared.adapters.directory.pool import DirectoryPool, LazyLease
from shared.adapters.directory.probe import PROBE_DESCRIPTION, PROBE_PREFIX, new_probe_name

__all__ = [
    "GLOBAL_CATALOG_TLS_PORT",
    "PROBE_DESCRIPTION",
    "PROBE_PREFIX",
    "Directory",
    "DirectoryPool",
    "Forest",
    "ForestDomain",
    "LazyLease",
    "new_probe_name",
]
