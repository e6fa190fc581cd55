"""The Graph simulator over HTTPS (local CA), with the real msgraph-sdk and azure-identity pointed at it."""

import json
import os
import secrets
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from devtools.graphsim.server import GraphSimulator
from devtools.localenv.certs import LocalPki
from shared.settings import GraphSettings


@pytest.fixture(scope="session")
def graph_sim(local_pki: LocalPki) -> Iterator[GraphSimulator]:
    saved = {k: os.environ.get(k) for k in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")}
    os.environ["SSL_CERT_FILE"] = os.environ["REQUESTS_CA_BUNDLE"] = str(local_pki.ca_file)
    sim = GraphSimulator(local_pki.cert_file, local_pki.key_file, client_secret=secrets.token_urlsafe(24)).start()
    yield sim
    sim.stop()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def graph(graph_sim: GraphSimulator) -> Iterator[GraphSimulator]:
    graph_sim.reset()
    yield graph_sim
    graph_sim.reset()


@pytest.fixture
def graph_settings(graph: GraphSimulator) -> GraphSettings:
    return GraphSettings(endpoint=graph.graph_url, auth="client_secret", tenant_id=graph.tenant_id,
                         client_id=graph.client_id, client_secret=graph.client_secret,
                         authority_host=graph.base_url, ca_file=os.environ["SSL_CERT_FILE"])


@pytest.fixture
def graph_env(graph: GraphSimulator) -> dict[str, str]:
    return {
        "GRAPH_ENDPOINT": graph.graph_url,
        "GRAPH_AUTH": "client_secret",
        "GRAPH_TENANT_ID": graph.tenant_id,
        "GRAPH_CLIENT_ID": graph.client_id,
        "GRAPH_CLIENT_SECRET": graph.client_secret,
        "GRAPH_AUTHORITY_HOST": graph.base_url,
        "GRAPH_CA_FILE": os.environ["SSL_CERT_FILE"],
    }


def raw_request(graph: GraphSimulator, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    """A token from the client secret, then one request straight into the simulator's handler (status and
    JSON body, errors included): for checking the simulator's own answers without an SDK in between."""
    from devtools.graphsim.server import GraphHttpError

    status, token, _ = graph.handle("POST", f"/{graph.tenant_id}/oauth2/v2.0/token", {}, {},
                                    urllib.parse.urlencode({"grant_type": "client_credentials",
                                                            "client_id": graph.client_id,
                                                            "client_secret": graph.client_secret}).encode())
    assert status == 200 and token is not None
    split = urllib.parse.urlsplit(path)
    data = b"" if body is None else json.dumps(body).encode()
    try:
        status, payload, _ = graph.handle(method, split.path, dict(urllib.parse.parse_qsl(split.query)),
                                          {"Authorization": f"Bearer {token['access_token']}"}, data)
    except GraphHttpError as exc:
        return exc.status, exc.body()
    return status, payload or {}
