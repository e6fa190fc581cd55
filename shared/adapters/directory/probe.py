"""The write probe of ``guestsync check`` (``shared.services.preflight``): a disabled account
``CN=guestsync-probe-<hex>``, created with the rights a guest's creation needs, found again if left behind."""

from __future__ import annotations

import logging
import re
import secrets
from typing import Any

import ldap3

from shared.adapters.directory.entries import PERSON_FILTER, _raw, _text
from shared.adapters.directory.errors import _raise_for
from shared.adapters.directory.reads import DirectoryReads
from shared.core.ad_rules import escape_filter_value, new_password
from shared.core.domain import GUEST_USER_ACCOUNT_CONTROL, UAC_ACCOUNTDISABLE, AdAccount

log = logging.getLogger("guestsync.directory")

#: The probe account of ``guestsync check``: CN=guestsync-probe-<12 hex> with this description, so that a
#: probe left behind by a crashed run is recognised (both must match) and removed by the next check.
PROBE_PREFIX = "guestsync-probe-"
PROBE_DESCRIPTION = "guestsync check probe account (created and deleted by guestsync check; safe to delete)"
_PROBE_NAME = re.compile(r"guestsync-probe-[0-9a-f]{12}")


class ProbeAccounts(DirectoryReads):
    """The probe account of ``guestsync check``, created as a guest account is."""

    def object_exists(self, dn: str) -> bool:
        """Whether an object is at ``dn`` and visible to the service account (connects and binds if needed)."""
        return self._exists(dn)

    def create_probe(self, name: str | None = None) -> AdAccount:
        """Create a probe account ``CN=guestsync-probe-<hex>`` in the guest OU the way ``create_guest`` creates a
        guest (one add with a random password over LDAPS and userAccountControl), so it needs the same rights;
        it is disabled from the start (smart card required as well) and marked by its description.
        Returns it as read back. The caller deletes it (``delete_guest``)."""
        name = name or new_probe_name()
        if not _PROBE_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a probe account name ({PROBE_PREFIX}<12 hex digits>)")
        dn = f"CN={name},{self.guest_ou}"
        self._require_managed(dn)
        self._refuse_password_logging("the probe account's")
        password = new_password(24, avoid=(name,))
        values = {"sAMAccountName": "gsprobe-" + name[len(PROBE_PREFIX):], "displayName": "guestsync probe",
                  "description": PROBE_DESCRIPTION}
        result = self._add_user(dn, values, password, GUEST_USER_ACCOUNT_CONTROL | UAC_ACCOUNTDISABLE)
        if result.get("description") != "success":
            _raise_for(result, f"creating {dn}", dn, values=values, secret=password)
        log.info("created probe account %s", dn)
        return self._read_back(dn, f"creating {dn}")

    def find_probes(self) -> list[str]:
        """DNs of probe accounts (name and description both match) directly in the managed OUs."""
        search_filter = (f"(&{PERSON_FILTER}(cn={PROBE_PREFIX}*)"
                         f"(description={escape_filter_value(PROBE_DESCRIPTION)}))")
        found: list[str] = []
        for ou in self.managed_ous:
            what = f"looking for probe accounts in {ou}"

            def search(conn: ldap3.Connection, base: str = ou, what: str = what) -> list[dict[str, Any]]:
                return self._search(conn, base, search_filter, ldap3.LEVEL, ["cn"], what)

            for entry in self._run(what, search):
                if _PROBE_NAME.fullmatch(_text(_raw(entry), "cn") or ""):
                    found.append(str(entry.get("dn", "")))
        return found


def new_probe_name() -> str:
    return PROBE_PREFIX + secrets.token_hex(6)
