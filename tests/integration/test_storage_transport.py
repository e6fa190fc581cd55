"""The storage clients and the process environment, against real Table and Queue Storage (Azurite).

Where no proxy variable is set, the clients send through ``Urllib3Transport``, which does not look at the
environment for each request (that lookup cost a seventh of a table insert's CPU), and a CA bundle variable is
still trusted; where a proxy variable is set, they keep the SDK's own transport and honour the environment per
request as before.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from azure.core.exceptions import HttpResponseError, ServiceRequestError

from shared.adapters.queues import MessageQueue
from shared.adapters.state import StateStore
from shared.adapters.storage import QUEUE_TIMEOUTS, client_options, queue_client, table_service
from shared.adapters.urllib3_transport import Urllib3Transport
from shared.settings import StorageSettings

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
                   "NO_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


@pytest.fixture
def dead_proxy() -> Iterator[str]:
    """A proxy URL on which nothing listens: a request sent through it fails at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    yield f"http://127.0.0.1:{port}"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _transport(options: dict) -> Urllib3Transport:
    transport = options["transport"]
    assert isinstance(transport, Urllib3Transport)
    return transport


def _storage(azurite) -> StorageSettings:
    return StorageSettings(connection_string=azurite.connection_string)


def test_without_proxy_settings_the_environment_is_read_once_not_per_request(
        azurite, storage_names, clean_env: pytest.MonkeyPatch, dead_proxy: str) -> None:
    assert set(client_options({})) == {"transport"}
    state = StateStore.from_settings(_storage(azurite), storage_names["GUESTSYNC_STATE_TABLE"])
    queue = MessageQueue.from_settings(_storage(azurite), storage_names["GUESTSYNC_CHANGE_QUEUE"],
                                       retry_total=0)
    clean_env.setenv("HTTP_PROXY", dead_proxy)  # after the clients were built: they no longer look
    state.put_meta("transport-check", {"ok": True})
    queue.send("hello")
    assert state.get_meta("transport-check")[0] == {"ok": True}
    assert "hello" in queue.peek()


def test_a_proxy_in_the_environment_is_still_honoured(
        azurite, storage_names, clean_env: pytest.MonkeyPatch, dead_proxy: str) -> None:
    clean_env.setenv("HTTP_PROXY", dead_proxy)
    assert client_options({}) == {}  # the SDK's own transport reads the environment per request, as it always did
    assert client_options({"retry_total": 0}, timeouts=QUEUE_TIMEOUTS) == {"retry_total": 0, **QUEUE_TIMEOUTS}
    queue = MessageQueue.from_settings(_storage(azurite), storage_names["GUESTSYNC_CHANGE_QUEUE"],
                                       retry_total=0)
    with pytest.raises(ServiceRequestError):
        queue.send("through the proxy")
    clean_env.setenv("NO_PROXY", "127.0.0.1")  # read per request, so it applies at once
    queue.send("past the proxy")


def _https_storage(graph_sim) -> StorageSettings:
    """A storage endpoint served over HTTPS by a certificate of the local test CA (the Graph simulator's): what
    it answers does not matter, only whether the TLS handshake is trusted."""
    key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
    return StorageSettings(connection_string=(
        f"DefaultEndpointsProtocol=https;AccountName=devstoreaccount1;AccountKey={key};"
        f"TableEndpoint={graph_sim.base_url}/devstoreaccount1;"))


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_a_ca_bundle_variable_is_trusted_without_reading_the_environment_per_request(
        graph_sim, local_pki, clean_env: pytest.MonkeyPatch, variable: str) -> None:
    storage = _https_storage(graph_sim)
    with pytest.raises(ServiceRequestError, match="CERTIFICATE_VERIFY_FAILED"):  # the local CA is not trusted
        table_service(storage, retry_total=0).get_service_properties()
    clean_env.setenv(variable, str(local_pki.ca_file))
    assert _transport(client_options({})).connection_config.verify == str(local_pki.ca_file)
    client = table_service(storage, retry_total=0)
    clean_env.delenv(variable)  # after the client was built: it was given the bundle, it does not look again
    with pytest.raises(HttpResponseError) as answered:  # the handshake was trusted: the server answered
        client.get_service_properties()
    assert not isinstance(answered.value, ServiceRequestError)


def test_requests_ca_bundle_wins_over_curl_ca_bundle_as_in_requests(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CURL_CA_BUNDLE", "/curl.pem")
    clean_env.setenv("REQUESTS_CA_BUNDLE", "")  # empty: requests skips it
    assert _transport(client_options({})).connection_config.verify == "/curl.pem"
    clean_env.setenv("REQUESTS_CA_BUNDLE", "/requests.pem")
    assert _transport(client_options({})).connection_config.verify == "/requests.pem"


def test_connection_options_go_to_the_transport_with_the_queue_sdks_timeouts_as_defaults(
        clean_env: pytest.MonkeyPatch) -> None:
    options = client_options({"retry_total": 0, "read_timeout": 7}, timeouts=QUEUE_TIMEOUTS)
    config = _transport(options).connection_config
    assert (config.timeout, config.read_timeout, config.verify) == (20, 7, True)
    assert {k: v for k, v in options.items() if k != "transport"} == {"retry_total": 0}
    config = _transport(client_options({})).connection_config  # a table client: azure-core's defaults
    assert (config.timeout, config.read_timeout) == (300, 300)
    own = object()
    assert client_options({"transport": own}) == {"transport": own}  # a caller's own transport is kept


def test_the_clients_built_from_settings_send_through_urllib3(azurite, clean_env: pytest.MonkeyPatch) -> None:
    storage = _storage(azurite)
    assert isinstance(table_service(storage)._client._client._pipeline._transport, Urllib3Transport)
    queue = queue_client(storage, "transport-kind")
    assert isinstance(queue._pipeline._transport, Urllib3Transport)
    config = queue._pipeline._transport.connection_config
    assert (config.timeout, config.read_timeout) == (20, 60)
