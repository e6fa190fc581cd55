"""Urllib3Transport: what the storage clients get back and what they see when the network fails.

Against Azurite for the calls guestsync makes (entities with any Unicode, a batch transaction, a conditional
write that loses, queue messages), and against small local sockets for the failures a real network has: a
refused connection, a server that never answers, an answer cut short, a redirect. Each failure must arrive as
the azure-core error the SDK's retry policy expects, as it did through ``requests``.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import (
    IncompleteReadError,
    ResourceModifiedError,
    ServiceRequestError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.rest import HttpRequest
from azure.data.tables import UpdateMode

from shared.adapters.storage import client_options, queue_client, table_service
from shared.adapters.urllib3_transport import Urllib3Transport
from shared.settings import StorageSettings

pytestmark = pytest.mark.integration


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_table_calls_round_trip_unicode_batches_and_conditional_writes(azurite, no_proxy: None) -> None:
    service = table_service(StorageSettings(connection_string=azurite.connection_string))
    assert isinstance(service._client._client._pipeline._transport, Urllib3Transport)
    table = service.create_table_if_not_exists(f"u3{uuid.uuid4().hex[:10]}")
    name = "Zoë Ægir-Øster 日本 \U0001f600 \"quoted\" \\ back"
    table.create_entity({"PartitionKey": "p", "RowKey": "1", "name": name, "n": 1})
    entity = table.get_entity("p", "1")
    assert entity["name"] == name
    table.update_entity({"PartitionKey": "p", "RowKey": "1", "name": "second", "n": 2}, mode=UpdateMode.REPLACE,
                        etag=entity.metadata["etag"], match_condition=MatchConditions.IfNotModified)
    with pytest.raises(ResourceModifiedError):  # the 412 of a stale ETag reaches the caller as before
        table.update_entity({"PartitionKey": "p", "RowKey": "1", "n": 3}, mode=UpdateMode.REPLACE,
                            etag=entity.metadata["etag"], match_condition=MatchConditions.IfNotModified)
    results = table.submit_transaction([("create", {"PartitionKey": "p", "RowKey": str(i), "name": name * 20})
                                        for i in range(2, 40)])
    assert len(results) == 38 and all(r.get("etag") for r in results)  # a multipart answer, parsed
    assert sorted(int(e["RowKey"]) for e in table.query_entities("PartitionKey eq 'p'")) == list(range(1, 40))


def test_queue_messages_round_trip(azurite, no_proxy: None) -> None:
    queue = queue_client(StorageSettings(connection_string=azurite.connection_string), f"u3{uuid.uuid4().hex[:10]}")
    queue.create_queue()
    for text in ("plain", "Zoë 日本 \U0001f600", "<xml & entities>", "x" * 30_000):
        queue.send_message(text)
    received = list(queue.receive_messages(messages_per_page=16))
    assert [m.content for m in received] == ["plain", "Zoë 日本 \U0001f600", "<xml & entities>", "x" * 30_000]
    for message in received:
        queue.delete_message(message)
    assert queue.get_queue_properties().approximate_message_count == 0


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[socket.socket], None]], str]]:
    """A one-connection-at-a-time TCP server on 127.0.0.1 that runs ``handle`` on each connection."""
    servers: list[socket.socket] = []

    def start(handle: Callable[[socket.socket], None]) -> str:
        server = socket.create_server(("127.0.0.1", 0))
        servers.append(server)

        def serve() -> None:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                with conn:
                    handle(conn)

        threading.Thread(target=serve, daemon=True).start()
        return f"http://127.0.0.1:{server.getsockname()[1]}"

    yield start
    for server in servers:
        server.close()


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_a_refused_connection_is_a_request_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once the socket is closed
    with Urllib3Transport(connection_timeout=2) as transport, pytest.raises(ServiceRequestError):
        transport.send(HttpRequest("GET", f"http://127.0.0.1:{port}/"))


def test_a_server_that_never_answers_is_a_response_timeout_after_the_read_timeout(raw_server) -> None:
    release = threading.Event()
    url = raw_server(lambda conn: (_read_request(conn), release.wait(10)))
    started = time.monotonic()
    with Urllib3Transport(read_timeout=0.5) as transport, pytest.raises(ServiceResponseTimeoutError):
        transport.send(HttpRequest("GET", url))
    release.set()
    assert 0.4 < time.monotonic() - started < 5


def test_an_answer_cut_short_is_an_incomplete_read_and_a_dropped_connection_a_response_error(raw_server) -> None:
    def short(conn: socket.socket) -> None:
        _read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nContent-Type: application/json\r\n\r\n{\"a\":")

    with Urllib3Transport() as transport, pytest.raises(IncompleteReadError):
        transport.send(HttpRequest("GET", raw_server(short)))

    def dropped(conn: socket.socket) -> None:
        _read_request(conn)

    with Urllib3Transport() as transport, pytest.raises(ServiceResponseError):
        transport.send(HttpRequest("GET", raw_server(dropped)))


def test_the_request_goes_out_as_built_and_a_redirect_is_left_to_the_pipeline(raw_server) -> None:
    seen: list[bytes] = []

    def redirect(conn: socket.socket) -> None:
        request = _read_request(conn)
        head, _, body = request.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(
            b"content-length"))
        while len(body) < length:
            body += conn.recv(65536)
        seen.append(head + b"\r\n\r\n" + body)
        conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: http://elsewhere.invalid/\r\nContent-Length: 0\r\n\r\n")

    url = raw_server(redirect)
    with Urllib3Transport() as transport:
        response = transport.send(HttpRequest("PUT", f"{url}/t?x=1", headers={"x-ms-version": "2019-02-02"},
                                              json={"name": "Zoë"}))
    assert response.status_code == 302 and response.headers["location"] == "http://elsewhere.invalid/"
    assert response.is_closed and response.read() == b""
    head, _, body = seen[0].partition(b"\r\n\r\n")
    assert head.startswith(b"PUT /t?x=1 HTTP/1.1\r\n")
    assert b"x-ms-version: 2019-02-02" in head
    assert body == b'{"name": "Zo\\u00eb"}'  # azure-core's JSON, byte for byte


def test_per_request_tls_options_and_proxies_are_refused_not_ignored() -> None:
    with Urllib3Transport() as transport:
        for option in ({"connection_verify": False}, {"connection_cert": "/client.pem"},
                       {"proxies": {"https": "http://proxy.invalid:3128"}}):
            with pytest.raises(ValueError, match="transport"):
                transport.send(HttpRequest("GET", "http://127.0.0.1:9/"), **option)


def test_without_proxies_client_options_give_every_client_its_own_transport(no_proxy: None) -> None:
    first, second = client_options({}), client_options({})
    assert first["transport"] is not second["transport"]
