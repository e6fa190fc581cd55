"""Security groups: ``/groups/{id}``, ``/groups/{id}/transitiveMembers[/<cast>]`` and
``POST /users/{id}/checkMemberGroups``.

Members are users or groups (nesting); transitive queries expand nested groups breadth first, each object
once, so membership cycles stay finite. A soft-deleted user keeps its memberships (a restore brings them back,
as in Entra) but is neither listed nor found while deleted. Membership changes send no change notification,
as in Graph (guestsync subscribes to users only).
"""

from __future__ import annotations

import json
import re
import uuid
from collections import deque
from typing import Any

from devtools.graphsim.state import (
    CONTEXT,
    DEFAULT_SELECT,
    USER_PROPERTIES,
    GraphHttpError,
    Tenant,
    context,
    not_found,
    now,
    select,
)

GROUP_PROPERTIES = (
    "id", "createdDateTime", "description", "displayName", "groupTypes", "mail", "mailEnabled", "mailNickname",
    "securityEnabled", "visibility",
)
DIRECTORY_OBJECT_PROPERTIES = tuple(dict.fromkeys(USER_PROPERTIES + GROUP_PROPERTIES))
MAX_CHECK_MEMBER_GROUPS = 20
# OData casts on transitiveMembers: Graph accepts the namespace and its alias ("graph", which msgraph-sdk sends)
_MEMBER_CASTS = {"microsoft.graph.user": "user", "graph.user": "user",
                 "microsoft.graph.group": "group", "graph.group": "group"}
_UNSUPPORTED_MEMBER_QUERY = ("$filter", "$search", "$orderby", "$count", "$expand", "$skip")


class Groups:
    def __init__(self, tenant: Tenant) -> None:
        self._tenant = tenant

    # -- control API ------------------------------------------------------------------------------------
    def add_group(self, display_name: str, group_id: str | None = None) -> dict[str, Any]:
        """A security group (no change notification: guestsync subscribes to users only)."""
        tenant = self._tenant
        with tenant.lock:
            gid = group_id or str(uuid.uuid4())
            if gid in tenant.groups or gid in tenant.users or gid in tenant.deleted:
                raise ValueError(f"object {gid} exists already")
            nickname = re.sub(r"[^A-Za-z0-9]", "", display_name) or "group"
            group: dict[str, Any] = {
                "id": gid,
                "createdDateTime": now().strftime("%Y-%m-%dT%H:%M:%SZ"),
                "description": None,
                "displayName": display_name,
                "groupTypes": [],
                "mail": None,
                "mailEnabled": False,
                "mailNickname": nickname,
                "securityEnabled": True,
                "visibility": None,
            }
            tenant.groups[gid] = group
            tenant.members[gid] = {}
            return dict(group)

    def add_group_member(self, group_id: str, member_id: str) -> None:
        """Add a user or a group (nesting) as a direct member; adding an existing member is a no-op.

        KeyError for an unknown group or member, ValueError for a group added to itself (Graph refuses both).
        Cycles through several groups are accepted; the transitive queries stay finite.
        """
        tenant = self._tenant
        with tenant.lock:
            if group_id not in tenant.groups:
                raise KeyError(f"no group {group_id}")
            if member_id not in tenant.users and member_id not in tenant.groups:
                raise KeyError(f"no user or group {member_id}")
            if member_id == group_id:
                raise ValueError("a group cannot be a member of itself")
            tenant.members[group_id][member_id] = None

    def remove_group_member(self, group_id: str, member_id: str) -> None:
        """KeyError when the group is unknown or the object is not a direct member."""
        with self._tenant.lock:
            if group_id not in self._tenant.groups:
                raise KeyError(f"no group {group_id}")
            del self._tenant.members[group_id][member_id]

    def delete_group(self, group_id: str) -> None:
        tenant = self._tenant
        with tenant.lock:
            del tenant.groups[group_id]
            tenant.members.pop(group_id, None)
            for members in tenant.members.values():
                members.pop(group_id, None)

    @property
    def groups(self) -> list[dict[str, Any]]:
        with self._tenant.lock:
            return [dict(g) for g in self._tenant.groups.values()]

    def transitive_user_ids(self, group_id: str) -> list[str]:
        """The ids transitiveMembers/microsoft.graph.user returns, in its order (for tests)."""
        with self._tenant.lock:
            return [obj["id"] for kind, obj in self._transitive_members(group_id) if kind == "user"]

    def _transitive_members(self, group_id: str) -> list[tuple[str, dict[str, Any]]]:
        """(kind, object) for every member of the group, nested groups expanded breadth first, each once.

        Direct members come first, in the order they were added. Call with the lock held.
        """
        tenant = self._tenant
        result: list[tuple[str, dict[str, Any]]] = []
        seen = {group_id}
        pending = deque([group_id])
        while pending:
            for member_id in tenant.members.get(pending.popleft(), {}):
                if member_id in seen:
                    continue
                if member_id in tenant.groups:
                    seen.add(member_id)
                    result.append(("group", tenant.groups[member_id]))
                    pending.append(member_id)
                elif member_id in tenant.users:  # soft-deleted users drop out until restored
                    seen.add(member_id)
                    result.append(("user", tenant.users[member_id]))
        return result

    # -- requests ---------------------------------------------------------------------------------------
    def _find_group(self, group_id: str) -> dict[str, Any]:
        with self._tenant.lock:
            group = self._tenant.groups.get(group_id)
        if group is None:
            raise not_found(group_id)
        return group

    def get_group(self, group_id: str, params: dict[str, str]) -> dict[str, Any]:
        selected = select(params, GROUP_PROPERTIES, GROUP_PROPERTIES, "microsoft.graph.group")
        group = self._find_group(group_id)
        group_context = context(selected, "groups", GROUP_PROPERTIES)
        return {"@odata.context": f"{group_context}/$entity"} | self._tenant.project(group, selected)

    def transitive_members_page(self, route: str, group_id: str, cast: str | None,
                                params: dict[str, str]) -> dict[str, Any]:
        """groups/{id}/transitiveMembers[/microsoft.graph.user|group]: a flat, paged list of nested members."""
        kind = None
        if cast is not None:
            kind = _MEMBER_CASTS.get(cast.lower())
            if kind is None:
                raise GraphHttpError(400, "Request_UnsupportedQuery",
                                     f"The OData cast '{cast}' is not supported by the simulator.")
        unsupported = [p for p in _UNSUPPORTED_MEMBER_QUERY if p in params]
        if unsupported:
            raise GraphHttpError(400, "Request_UnsupportedQuery",
                                 f"Query option '{unsupported[0]}' on transitiveMembers is not supported by the "
                                 "simulator.")
        if kind == "user":
            selected = select(params)
            page_context = context(selected)
        elif kind == "group":
            selected = select(params, GROUP_PROPERTIES, GROUP_PROPERTIES, "microsoft.graph.group")
            page_context = context(selected, "groups", GROUP_PROPERTIES)
        else:
            selected = select(params, DIRECTORY_OBJECT_PROPERTIES, (), "microsoft.graph.directoryObject")
            page_context = f"{CONTEXT}#directoryObjects"
        self._find_group(group_id)
        with self._tenant.lock:
            members = [(k, dict(o)) for k, o in self._transitive_members(group_id) if kind in (None, k)]
        items: list[dict[str, Any]] = []
        for member_kind, obj in members:
            if kind is not None:
                items.append(self._tenant.project(obj, selected))
                continue
            own = selected or (DEFAULT_SELECT if member_kind == "user" else GROUP_PROPERTIES)
            items.append({"@odata.type": f"#microsoft.graph.{member_kind}"} | self._tenant.project(obj, own))
        return self._tenant.paged(route, params, page_context, items)

    def check_member_groups(self, user_id: str, body: bytes) -> dict[str, Any]:
        """The groupIds (from the request, in its order) the user is a direct or transitive member of."""
        try:
            group_ids = json.loads(body or b"null")["groupIds"]
        except (KeyError, TypeError, ValueError):
            raise GraphHttpError(400, "Request_BadRequest",
                                 "The request body must be a JSON object with a groupIds collection.") from None
        if not isinstance(group_ids, list) or not all(isinstance(g, str) for g in group_ids):
            raise GraphHttpError(400, "Request_BadRequest", "groupIds must be a collection of strings.")
        if len(group_ids) > MAX_CHECK_MEMBER_GROUPS:
            raise GraphHttpError(400, "Request_BadRequest",
                                 f"Up to {MAX_CHECK_MEMBER_GROUPS} groups may be specified in groupIds.")
        user = self._tenant.find_user(user_id)
        with self._tenant.lock:
            found = [gid for gid in dict.fromkeys(group_ids) if gid in self._tenant.groups and any(
                kind == "user" and obj["id"] == user["id"] for kind, obj in self._transitive_members(gid))]
        return {"@odata.context": f"{CONTEXT}#Collection(Edm.String)", "value": found}
