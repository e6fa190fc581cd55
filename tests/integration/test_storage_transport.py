"""The storage clients and the process environment, against real Table and Queue Storage (Azurite).

Where no proxy (and no CA bundle) variable is set, the clients do not look at the environment again for each
request (that lookup cost a seventh of a table insert's CPU); where one is set, they honour it as before.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from azure.core.exceptions import ServiceRequestError

from shared.adapters.queues import MessageQueue
from shared.adapters.state import StateStore
from shared.adapters.storage import transport_options
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


def _storage(azurite) -> StorageSettings:
    return StorageSettings(connection_string=azurite.connection_string)


def test_without_proxy_settings_the_environment_is_read_once_not_per_request(
        azurite, storage_names, clean_env: pytest.MonkeyPatch, dead_proxy: str) -> None:
    assert transport_options() == {"use_env_settings": False}
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
    assert transport_options() == {}  # the SDK reads the environment per request, as it always did
    queue = MessageQueue.from_settings(_storage(azurite), storage_names["GUESTSYNC_CHANGE_QUEUE"],
                                       retry_total=0)
    with pytest.raises(ServiceRequestError):
        queue.send("through the proxy")
    clean_env.setenv("NO_PROXY", "127.0.0.1")  # read per request, so it applies at once
    queue.send("past the proxy")


def test_a_ca_bundle_variable_keeps_the_environment_in_use(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    assert transport_options() == {}
