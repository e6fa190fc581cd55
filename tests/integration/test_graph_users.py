"""Reading several users in one request (``$filter=id in (...)``): the simulator and GraphClient.get_users, over
the real msgraph-sdk. Graph accepts at most 15 values in an ``in`` clause without advanced query parameters."""

from __future__ import annotations

import asyncio
import urllib.parse

import pytest

from devtools.graphsim.server import GraphSimulator
from shared.adapters.graph import GraphClient
from shared.core.domain import MAX_IN_VALUES, GraphUser
from shared.settings import GraphSettings
from tests.plugins.graph import raw_request

pytestmark = pytest.mark.integration

UNKNOWN = "00000000-0000-4000-8000-000000000000"


def test_get_users_reads_fifteen_per_request_and_maps_missing_ones_to_none(
        graph: GraphSimulator, graph_settings: GraphSettings) -> None:
    guests = [graph.invite_guest(f"batch{i}@fabrikam.com", f"Batch {i}", "Batch", f"G{i}")["id"] for i in range(18)]
    member = graph.add_user(displayName="Member", userPrincipalName=f"member@{graph.tenant_domain}")["id"]
    gone = guests.pop()
    graph.hard_delete_user(gone)
    asked = [*guests, member, gone, UNKNOWN, "not-a-guid", guests[0]]
    before = graph.request_count["GET /users"]

    async def read() -> dict[str, GraphUser | None]:
        async with GraphClient(graph_settings) as client:
            return dict(await client.get_users(asked))

    found = asyncio.run(read())
    assert graph.request_count["GET /users"] - before == 2  # 20 distinct well-formed ids: 15 + 5
    assert set(found) == set(asked)
    assert found[gone] is None and found[UNKNOWN] is None and found["not-a-guid"] is None
    users = {uid: user for uid, user in found.items() if user is not None}
    assert set(users) == {*guests, member}
    assert users[member].user_type == "Member"
    assert users[guests[3]].given_name == "Batch" and users[guests[3]].user_type == "Guest"


def test_simulator_refuses_more_than_fifteen_values_like_graph(graph: GraphSimulator) -> None:
    ids = ",".join(f"'{UNKNOWN[:-2]}{n:02d}'" for n in range(MAX_IN_VALUES + 1))
    status, body = raw_request(graph, "GET", "/v1.0/users?$filter=" + urllib.parse.quote(f"id in ({ids})"))
    assert status == 400 and body["error"]["code"] == "Request_UnsupportedQuery"
    ok = ",".join(f"'{UNKNOWN[:-2]}{n:02d}'" for n in range(MAX_IN_VALUES))
    status, body = raw_request(graph, "GET", "/v1.0/users?$filter=" + urllib.parse.quote(f"id in ({ok})"))
    assert status == 200 and body["value"] == []


def test_list_guests_follows_next_links_and_maps_like_get_user(
        graph: GraphSimulator, graph_settings: GraphSettings) -> None:
    """Every page of the guest listing is read, and each guest is mapped as a single read maps it."""
    guests = [graph.invite_guest(f"page{i}@fabrikam.com", f"Page {i}", "Page", f"P{i}")["id"] for i in range(5)]
    graph.add_user(displayName="Member", userPrincipalName=f"pagemember@{graph.tenant_domain}")
    before = graph.request_count["GET /users"]

    async def read() -> tuple[list[GraphUser], list[GraphUser | None]]:
        async with GraphClient(graph_settings) as client:
            listed = [u async for u in client.list_guests(page_size=2)]
            return listed, [await client.get_user(g) for g in guests]

    listed, single = asyncio.run(read())
    assert graph.request_count["GET /users"] - before >= 3  # five guests or more, two per page
    by_id = {u.id: u for u in listed}
    assert all(u.user_type == "Guest" for u in listed)
    assert [by_id[g] for g in guests] == single
