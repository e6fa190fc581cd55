"""``GET /organization``: the one tenant, with its verified domains (``Tenant.verified_domains``)."""

from __future__ import annotations

from typing import Any

from devtools.graphsim.state import CONTEXT, Tenant, select

ORGANIZATION_PROPERTIES = ("id", "displayName", "verifiedDomains")


class Organization:
    def __init__(self, tenant: Tenant) -> None:
        self._tenant = tenant

    def list_organization(self, params: dict[str, str]) -> dict[str, Any]:
        """A collection of the one tenant (``$select`` of id, displayName, verifiedDomains; Graph's shape, see
        organization-list in the docs)."""
        selected = select(params, ORGANIZATION_PROPERTIES, ORGANIZATION_PROPERTIES, "microsoft.graph.organization")
        with self._tenant.lock:
            org = {"id": self._tenant.tenant_id, "displayName": "Contoso",
                   "verifiedDomains": [dict(d) for d in self._tenant.verified_domains]}
        context = (f"{CONTEXT}#organization" if selected == ORGANIZATION_PROPERTIES
                   else f"{CONTEXT}#organization({','.join(selected)})")
        return {"@odata.context": context, "value": [{k: org[k] for k in selected}]}
