"""Users: what an admin does in Entra (invite, update, delete, restore) and ``GET /users[/{id | upn}]``.

Every change goes to the delta log and notifies the subscriptions, under the tenant's lock, so a delta query or
a notification never sees half of it. ``/users`` supports ``$select``, ``$top`` paging and two ``$filter``
forms: ``userType eq '…'`` and ``id in ('…', …)`` (at most 15 values, as Graph without advanced queries).
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from devtools.graphsim.delta import Delta
from devtools.graphsim.notifications import Notifications
from devtools.graphsim.state import GraphHttpError, Tenant, context, select

_FILTER_USER_TYPE = re.compile(r"^\s*userType\s+eq\s+'(?P<value>[^']*)'\s*$", re.IGNORECASE)
#: ``id in ('…', '…')``: Graph allows at most 15 values in an ``in`` clause without advanced queries.
_FILTER_ID_IN = re.compile(r"^id in \((?P<ids>\s*'[^']*'(?:\s*,\s*'[^']*')*\s*)\)$", re.IGNORECASE)
MAX_IN_VALUES = 15


class Users:
    def __init__(self, tenant: Tenant, delta: Delta, notifications: Notifications) -> None:
        self._tenant = tenant
        self._delta = delta
        self._notifications = notifications

    # -- control API (what an admin does in Entra) ------------------------------------------------------
    def _changed(self, user_id: str, removed: str | None, change_type: str) -> None:
        """Log the change for users/delta and notify the subscriptions. Call with the lock held."""
        self._delta.record(user_id, removed)
        self._notifications.user_changed(user_id, change_type)

    def add_user(self, **props: Any) -> dict[str, Any]:
        with self._tenant.lock:
            user: dict[str, Any] = {
                "id": props.pop("id", None) or str(uuid.uuid4()),
                "businessPhones": [],
                "userType": "Member",
                "accountEnabled": True,
            }
            user.update(props)
            user.setdefault("displayName", user.get("userPrincipalName"))
            self._tenant.users[user["id"]] = user
            self._changed(user["id"], None, "updated")
            return dict(user)

    def invite_guest(
        self, email: str, display_name: str, given_name: str | None = None, surname: str | None = None
    ) -> dict[str, Any]:
        """What Entra does on a B2B invitation: a Guest whose UPN is <mail with _>#EXT#@<tenant>."""
        upn = f"{email.replace('@', '_')}#EXT#@{self._tenant.tenant_domain}"
        return self.add_user(
            userType="Guest", mail=email, displayName=display_name, givenName=given_name, surname=surname,
            userPrincipalName=upn,
        )

    def update_user(self, user_id: str, **props: Any) -> dict[str, Any]:
        with self._tenant.lock:
            user = self._tenant.users[user_id]
            user.update(props)
            self._changed(user_id, None, "updated")
            return dict(user)

    def delete_user(self, user_id: str) -> None:
        """Soft delete (to deleted items): users/delta reports @removed reason 'changed'."""
        with self._tenant.lock:
            self._tenant.deleted[user_id] = self._tenant.users.pop(user_id)
            self._changed(user_id, "changed", "updated")

    def restore_user(self, user_id: str) -> None:
        with self._tenant.lock:
            self._tenant.users[user_id] = self._tenant.deleted.pop(user_id)
            self._changed(user_id, None, "updated")

    def hard_delete_user(self, user_id: str) -> None:
        with self._tenant.lock:
            self._tenant.users.pop(user_id, None)
            self._tenant.deleted.pop(user_id, None)
            for members in self._tenant.members.values():
                members.pop(user_id, None)
            self._changed(user_id, "deleted", "deleted")

    # A soft-deleted user keeps its memberships (a restore brings them back, as in Entra) but is neither
    # listed by transitiveMembers nor found by checkMemberGroups while deleted.

    @property
    def users(self) -> list[dict[str, Any]]:
        with self._tenant.lock:
            return [dict(u) for u in self._tenant.users.values()]

    def seed(self, guests: int = 0, members: int = 0) -> None:
        domain = self._tenant.tenant_domain
        for i in range(members):
            self.add_user(displayName=f"Member {i + 1}", userPrincipalName=f"member{i + 1}@{domain}",
                          mail=f"member{i + 1}@{domain}", givenName="Member", surname=str(i + 1))
        for i in range(guests):
            self.invite_guest(f"guest{i + 1}@fabrikam.com", f"Guest {i + 1}", "Guest", str(i + 1))

    # -- requests ---------------------------------------------------------------------------------------
    def list_users(self, params: dict[str, str]) -> dict[str, Any]:
        selected = select(params)
        with self._tenant.lock:
            users = list(self._tenant.users.values())
        flt = params.get("$filter")
        if flt:
            match = _FILTER_USER_TYPE.match(flt)
            ids = _FILTER_ID_IN.match(flt)
            if match:
                users = [u for u in users if u.get("userType") == match.group("value")]
            elif ids:
                wanted = {v.strip().strip("'").lower() for v in ids.group("ids").split(",")}
                if len(wanted) > MAX_IN_VALUES:
                    raise GraphHttpError(400, "Request_UnsupportedQuery",
                                         f"Too many values in the 'in' clause: {len(wanted)}; at most {MAX_IN_VALUES}.")
                users = [u for u in users if str(u["id"]).lower() in wanted]
            else:
                raise GraphHttpError(400, "Request_UnsupportedQuery", f"Unsupported query: {flt}")
        return self._tenant.paged("/users", params, context(selected),
                                  [self._tenant.project(u, selected) for u in users])

    def get_user(self, user_id: str, params: dict[str, str]) -> dict[str, Any]:
        selected = select(params)
        user = self._tenant.find_user(user_id)
        return {"@odata.context": f"{context(selected)}/$entity"} | self._tenant.project(user, selected)
