"""Scoping groups: the simulator's group endpoints and GraphClient's membership calls, over the real msgraph-sdk.

The documented response bodies below are copied from Microsoft's Graph docs (microsoftgraph/
microsoft-graph-docs-contrib, api-reference/v1.0/api/directoryobject-checkmembergroups.md and
group-list-transitivemembers.md); ``tests/reference/graph-examples`` has no group examples.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any

import pytest

from devtools.graphsim.server import GraphSimulator
from shared.adapters.graph import GraphClient
from shared.core.errors import GraphError, GraphNotFoundError, GraphThrottledError
from shared.settings import GraphSettings
from tests.plugins.graph import raw_request

pytestmark = pytest.mark.integration

UNKNOWN = "00000000-0000-4000-8000-000000000000"

# directoryobject-checkmembergroups.md, Example 2 (response)
DOC_CHECK_MEMBER_GROUPS = {
    "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(Edm.String)",
    "value": ["fee2c45b-915a-4a64-b130-f4eb9e75525e"],
}
# group-list-transitivemembers.md, Example 1 (transitiveMembers, no cast; the doc's body is truncated)
DOC_TRANSITIVE_MEMBERS = {
    "value": [{"@odata.type": "#microsoft.graph.user", "id": "11111111-2222-3333-4444-555555555555",
               "mail": "group1@contoso.com"}],
}
# group-list-transitivemembers.md, Example 4 (cast to microsoft.graph.user, $select=displayName,id; without
# the @odata.count that $count=true adds)
DOC_TRANSITIVE_USERS_SELECT = {
    "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users(displayName,id)",
    "value": [{"displayName": "Joseph Price", "id": "11111111-2222-3333-4444-555555555555"}],
}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def raw(graph: GraphSimulator, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    """One request straight into the simulator's handler (status and JSON body, errors included)."""
    return raw_request(graph, method, path, body)


def link_path(link: str) -> str:
    split = urllib.parse.urlsplit(link)
    return f"{split.path}?{split.query}"


def nested(graph: GraphSimulator) -> dict[str, str]:
    """scope ⊃ {team, g2}; team ⊃ {sub, g1}; sub ⊃ {team (a cycle), m1}; outsider g3 is in no group."""
    ids = {name: graph.invite_guest(f"{name}@fabrikam.com", name.upper())["id"] for name in ("g1", "g2", "g3")}
    ids["m1"] = graph.add_user(displayName="M1", userPrincipalName=f"m1@{graph.tenant_domain}")["id"]
    for name in ("scope", "team", "sub"):
        ids[name] = graph.add_group(name.title())["id"]
    for group, member in (("scope", "team"), ("scope", "g2"), ("team", "sub"), ("team", "g1"),
                          ("sub", "team"), ("sub", "m1")):
        graph.add_group_member(ids[group], ids[member])
    return ids


def test_is_group_member_is_transitive(graph: GraphSimulator, graph_settings: GraphSettings) -> None:
    ids = nested(graph)
    g1_upn = next(u["userPrincipalName"] for u in graph.users if u["id"] == ids["g1"])

    async def go() -> dict[str, bool | None]:
        async with GraphClient(graph_settings) as client:
            return {
                "g1 in scope (via team)": await client.is_group_member(ids["g1"], ids["scope"]),
                "m1 in scope (via team, sub)": await client.is_group_member(ids["m1"], ids["scope"]),
                "g2 in scope (direct)": await client.is_group_member(ids["g2"], ids["scope"]),
                "g2 in team": await client.is_group_member(ids["g2"], ids["team"]),
                "g3 in scope": await client.is_group_member(ids["g3"], ids["scope"]),
                "g1 in unknown group": await client.is_group_member(ids["g1"], UNKNOWN),
                "g1 by UPN": await client.is_group_member(g1_upn, ids["scope"]),
                "unknown user": await client.is_group_member(UNKNOWN, ids["scope"]),
            }

    assert run(go()) == {
        "g1 in scope (via team)": True,
        "m1 in scope (via team, sub)": True,
        "g2 in scope (direct)": True,
        "g2 in team": False,
        "g3 in scope": False,
        "g1 in unknown group": False,
        "g1 by UPN": True,
        "unknown user": None,
    }
    assert graph.request_count["POST /users/{id}/checkMemberGroups"] == 7  # + 1 by UPN, not counted as {id}


def test_membership_changes_and_deleted_users(graph: GraphSimulator, graph_settings: GraphSettings) -> None:
    ids = nested(graph)

    async def go() -> list[Any]:
        async with GraphClient(graph_settings) as client:
            delta = [p async for p in client.delta()][-1].delta_link
            results: list[Any] = []
            graph.remove_group_member(ids["team"], ids["sub"])
            results.append(await client.is_group_member(ids["m1"], ids["scope"]))  # sub no longer nested
            graph.add_group_member(ids["team"], ids["g3"])
            results.append(await client.is_group_member(ids["g3"], ids["scope"]))
            # membership changes are not user changes: no change notification, nothing in users/delta
            results.append([p async for p in client.delta(delta)][-1])
            graph.delete_user(ids["g1"])  # soft delete: gone until restored, memberships kept
            results.append(await client.is_group_member(ids["g1"], ids["scope"]))
            results.append([u async for u in client.iter_group_member_ids(ids["scope"])])
            graph.restore_user(ids["g1"])
            results.append(await client.is_group_member(ids["g1"], ids["scope"]))
            return results

    no_sub, g3_in, delta_page, deleted, members_while_deleted, restored = run(go())
    assert (no_sub, g3_in, deleted, restored) == (False, True, None, True)
    assert delta_page.users == [] and delta_page.removed == []
    assert members_while_deleted == [ids["g2"], ids["g3"]]
    graph.hard_delete_user(ids["g1"])  # gone for good, and so are its memberships
    assert graph.transitive_user_ids(ids["scope"]) == [ids["g2"], ids["g3"]]
    with pytest.raises(KeyError):
        graph.remove_group_member(ids["team"], ids["g1"])


def test_control_api_refuses_what_graph_refuses(graph: GraphSimulator) -> None:
    group = graph.add_group("Scope", group_id="11111111-2222-3333-4444-555555555555")
    assert group["id"] == "11111111-2222-3333-4444-555555555555" and group["securityEnabled"] is True
    with pytest.raises(ValueError):
        graph.add_group("Again", group_id=group["id"])
    with pytest.raises(ValueError):
        graph.add_group_member(group["id"], group["id"])
    with pytest.raises(KeyError):
        graph.add_group_member(group["id"], UNKNOWN)
    with pytest.raises(KeyError):
        graph.add_group_member(UNKNOWN, group["id"])
    with pytest.raises(KeyError):
        graph.remove_group_member(group["id"], UNKNOWN)
    inner = graph.add_group("Inner")["id"]
    guest = graph.invite_guest("x@fabrikam.com", "X")["id"]
    graph.add_group_member(group["id"], inner)
    graph.add_group_member(group["id"], inner)  # already a member: no-op
    graph.add_group_member(inner, guest)
    assert graph.transitive_user_ids(group["id"]) == [guest]
    graph.delete_group(inner)
    assert graph.transitive_user_ids(group["id"]) == [] and [g["id"] for g in graph.groups] == [group["id"]]
    graph.reset()
    assert graph.groups == []


def test_iter_group_member_ids_pages_and_expands(graph: GraphSimulator, graph_settings: GraphSettings) -> None:
    graph.seed(guests=11, members=2)
    users = graph.users
    scope, left, right = (graph.add_group(n)["id"] for n in ("Scope", "Left", "Right"))
    graph.add_group_member(scope, left)
    graph.add_group_member(scope, right)
    graph.add_group_member(right, left)  # left is reachable twice: listed once
    for i, user in enumerate(users):
        graph.add_group_member((scope, left, right)[i % 3], user["id"])
    graph.add_group_member(left, users[1]["id"])  # a user reachable twice: listed once

    async def go() -> list[str]:
        async with GraphClient(graph_settings) as client:
            return [u async for u in client.iter_group_member_ids(scope, page_size=4)]

    ids = run(go())
    assert sorted(ids) == sorted(u["id"] for u in users) and len(ids) == len(users) == 13
    assert ids == graph.transitive_user_ids(scope)
    # msgraph-sdk writes the cast with Graph's namespace alias: transitiveMembers/graph.user
    assert graph.request_count["GET /groups/{id}/transitiveMembers/graph.user"] == 4  # 4 + 4 + 4 + 1


def test_transitive_members_default_page_size(graph: GraphSimulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(graph, "page_size", 2)
    graph.seed(guests=5)
    scope, inner = graph.add_group("Scope")["id"], graph.add_group("Inner")["id"]
    graph.add_group_member(scope, inner)
    for user in graph.users:
        graph.add_group_member(inner, user["id"])
    pages: list[dict[str, Any]] = []
    path: str | None = f"/v1.0/groups/{scope}/transitiveMembers/microsoft.graph.user?$select=id,userType"
    while path:
        status, page = raw(graph, "GET", path)
        assert status == 200
        pages.append(page)
        path = link_path(page["@odata.nextLink"]) if "@odata.nextLink" in page else None
    assert [len(p["value"]) for p in pages] == [2, 2, 1]
    assert [list(p) for p in pages] == [["@odata.context", "@odata.nextLink", "value"]] * 2 + [
        ["@odata.context", "value"]]
    assert pages[0]["@odata.nextLink"].startswith(
        f"{graph.graph_url}/groups/{scope}/transitiveMembers/microsoft.graph.user?")
    assert {u["userType"] for p in pages for u in p["value"]} == {"Guest"}


def test_unknown_group_and_throttling(graph: GraphSimulator, graph_settings: GraphSettings) -> None:
    guest = graph.invite_guest("t@fabrikam.com", "T")
    scope = graph.add_group("Scope")["id"]
    graph.add_group_member(scope, guest["id"])

    async def go() -> tuple[Any, Any]:
        async with GraphClient(graph_settings) as client:
            with pytest.raises(GraphNotFoundError) as missing:
                _ = [u async for u in client.iter_group_member_ids(UNKNOWN)]
            graph.throttle(2, retry_after=0)  # retried by the SDK's middleware, the POST action too
            member = await client.is_group_member(guest["id"], scope)
            listed = [u async for u in client.iter_group_member_ids(scope)]
            graph.throttle(10, retry_after=0, status=503)  # more than the SDK retries (each retry takes seconds)
            with pytest.raises(GraphThrottledError):
                _ = [u async for u in client.iter_group_member_ids(scope)]
            graph.reset()
            return missing.value, (member, listed)

    missing, answers = run(go())
    assert isinstance(missing, GraphError) and (missing.status, missing.code) == (404, "Request_ResourceNotFound")
    assert answers == (True, [guest["id"]])


def test_group_shapes_follow_the_docs(graph: GraphSimulator) -> None:
    guest = graph.invite_guest("alice@fabrikam.com", "Alice")
    scope, inner = graph.add_group("Scope")["id"], graph.add_group("Inner")["id"]
    graph.add_group_member(scope, inner)
    graph.add_group_member(inner, guest["id"])

    status, checked = raw(graph, "POST", f"/v1.0/users/{guest['id']}/checkMemberGroups",
                          {"groupIds": [UNKNOWN, scope, inner]})
    assert status == 200 and list(checked) == list(DOC_CHECK_MEMBER_GROUPS)
    assert checked["@odata.context"] == DOC_CHECK_MEMBER_GROUPS["@odata.context"]
    assert checked["value"] == [scope, inner]  # the request's order, unknown ids left out

    status, users = raw(graph, "GET", f"/v1.0/groups/{scope}/transitiveMembers/microsoft.graph.user"
                                      "?$select=displayName,id")
    assert status == 200 and list(users) == list(DOC_TRANSITIVE_USERS_SELECT)
    assert users["@odata.context"] == DOC_TRANSITIVE_USERS_SELECT["@odata.context"]
    assert users["value"] == [{"displayName": "Alice", "id": guest["id"]}]

    status, everything = raw(graph, "GET", f"/v1.0/groups/{scope}/transitiveMembers?$select=mail,id")
    doc_item = DOC_TRANSITIVE_MEMBERS["value"][0]
    assert status == 200 and set(DOC_TRANSITIVE_MEMBERS) <= set(everything)
    assert [m["@odata.type"] for m in everything["value"]] == ["#microsoft.graph.group", "#microsoft.graph.user"]
    assert set(everything["value"][1]) == set(doc_item)
    assert everything["value"][1]["mail"] == "alice@fabrikam.com"
    status, groups = raw(graph, "GET", f"/v1.0/groups/{scope}/transitiveMembers/microsoft.graph.group")
    assert status == 200 and [g["id"] for g in groups["value"]] == [inner]

    status, group = raw(graph, "GET", f"/v1.0/groups/{scope}")
    assert status == 200 and group["@odata.context"].endswith("$metadata#groups/$entity")
    assert (group["id"], group["displayName"], group["groupTypes"]) == (scope, "Scope", [])

    # errors: same body shape as the user 404; what the docs say Graph refuses, refused
    status, user_404 = raw(graph, "GET", f"/v1.0/users/{UNKNOWN}")
    assert status == 404
    for method, path, body in (("POST", f"/v1.0/users/{UNKNOWN}/checkMemberGroups", {"groupIds": [scope]}),
                               ("GET", f"/v1.0/groups/{UNKNOWN}/transitiveMembers/microsoft.graph.user", None),
                               ("GET", f"/v1.0/groups/{UNKNOWN}", None)):
        status, error = raw(graph, method, path, body)
        assert status == 404 and error["error"]["code"] == user_404["error"]["code"] == "Request_ResourceNotFound"
        assert set(error["error"]) == set(user_404["error"])
        assert set(error["error"]["innerError"]) == set(user_404["error"]["innerError"])
    status, error = raw(graph, "POST", f"/v1.0/users/{guest['id']}/checkMemberGroups",
                        {"groupIds": [scope] * 21})
    assert status == 400 and "20" in error["error"]["message"]
    status, error = raw(graph, "GET", f"/v1.0/groups/{scope}/transitiveMembers/microsoft.graph.device")
    assert status == 400 and error["error"]["code"] == "Request_UnsupportedQuery"
    status, error = raw(graph, "GET", f"/v1.0/groups/{scope}/transitiveMembers/microsoft.graph.user?$select=nope")
    assert status == 400 and "nope" in error["error"]["message"]
    assert graph.request_count["GET /groups/{id}/transitiveMembers/microsoft.graph.user"] == 3
