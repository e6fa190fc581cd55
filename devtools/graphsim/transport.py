"""The HTTPS front: a threading HTTP server that hands every request to one ``handle`` function.

Errors raised as ``GraphHttpError`` become Graph's JSON error answer; any other exception is a bug in the
simulator and shows as a 500, like a Graph outage.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import ssl
import urllib.parse
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from devtools.graphsim.state import GraphHttpError

log = logging.getLogger("graphsim")

#: (method, path, query parameters, headers, body) -> (status, JSON body or None, extra headers)
Handle = Callable[[str, str, dict[str, str], Any, bytes], tuple[int, dict[str, Any] | None, dict[str, str]]]


class _GraphHTTPServer(ThreadingHTTPServer):
    request_queue_size = 128  # listen backlog for bursts of requests


def https_server(host: str, port: int, cert_file: str | Path, key_file: str | Path,
                 handle: Handle) -> ThreadingHTTPServer:
    """Bound (not yet serving) on ``host:port`` with TLS, so azure-identity and msgraph-sdk run unmodified."""
    server = _GraphHTTPServer((host, port), _handler_for(handle))
    server.daemon_threads = True
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert_file), str(key_file))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    return server


def _handler_for(handle: Handle) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def setup(self) -> None:
            super().setup()
            # Headers and body are two writes: without TCP_NODELAY, Nagle holds the body until the client's
            # delayed ACK (about 40 ms per request on loopback), which no real Graph answer pays.
            with contextlib.suppress(OSError):
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

        def _serve(self) -> None:
            parsed = urllib.parse.urlsplit(self.path)
            params = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            try:
                status, payload, headers = handle(self.command, parsed.path, params, self.headers, body)
            except GraphHttpError as exc:
                status, payload, headers = exc.status, exc.body(), exc.headers
            except Exception as exc:  # a bug in the simulator must show as a 500, like a Graph outage
                log.exception("graphsim failed")
                err = GraphHttpError(500, "generalException", str(exc))
                status, payload, headers = 500, err.body(), {}
            data = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            if payload is not None:
                self.send_header("Content-Type", "application/json;odata.metadata=minimal;charset=utf-8")
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("request-id", str(uuid.uuid4()))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = _serve

    return Handler
