"""An azure-core HTTP transport straight on urllib3, for the Table and Queue Storage clients.

azure-core's own transport sends through a ``requests`` session, whose per-request machinery (settings merged
again, cookies, hooks, a response object rebuilt) is about a third of a table or queue call's CPU in this
process (bench/RESULTS.md, "Storage requests straight on urllib3": 0.63-0.71 of the CPU per call with this
transport, side by side). The storage clients use none of it: they sign, retry, redirect
and log in their own pipeline, and table and queue bodies are small. So this transport hands the request to a
urllib3 pool (the library under ``requests``) and gives the pipeline azure-core's own response class back, with
the body read, as ``requests`` does for a call that does not stream.

It trusts what ``requests`` trusts: certifi's bundle by default, or the bundle or directory given as
``connection_verify``; its errors are azure-core's, so the SDK's retry policy retries what it always did. It
takes no proxy: where a proxy is configured, ``shared.adapters.storage`` leaves the SDK's own transport in place.
"""

from __future__ import annotations

import http.client
import os
from collections.abc import Iterator
from typing import Any

import certifi
import urllib3
from azure.core.configuration import ConnectionConfiguration
from azure.core.exceptions import (
    DecodeError,
    IncompleteReadError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest import HttpRequest
from azure.core.rest._http_response_impl import HttpResponseImpl
from azure.core.utils import CaseInsensitiveDict
from urllib3 import exceptions as u3

#: Connections kept per endpoint, as ``requests``' default adapter keeps (more are opened when needed and
#: closed after use).
POOL_SIZE = 10


class Urllib3TransportResponse(HttpResponseImpl):
    """azure-core's response over a urllib3 response whose body has been read.

    The body is always read before the pipeline sees the response (table and queue bodies are small), so a
    streamed read (``iter_bytes``, ``iter_raw``, the batch response's ``parts``) serves it from memory."""

    def __init__(self, request: HttpRequest, response: urllib3.BaseHTTPResponse, block_size: int) -> None:
        headers = CaseInsensitiveDict({name: response.headers[name] for name in response.headers})
        super().__init__(request=request, internal_response=response, block_size=block_size,
                         status_code=response.status, reason=response.reason or "", headers=headers,
                         content_type=headers.get("content-type"), stream_download_generator=_in_blocks)
        self._content = response.data


def _in_blocks(pipeline: Any, response: Urllib3TransportResponse, **_: Any) -> Iterator[bytes]:
    """A streamed read of a body already in memory (this transport asks for no content coding, so the raw
    bytes and the decoded bytes are the same)."""
    content, size = response.content, response._block_size
    for start in range(0, len(content), size):
        yield content[start:start + size]


class Urllib3Transport(HttpTransport[HttpRequest, Urllib3TransportResponse]):
    """Sends azure-core requests through a urllib3 pool manager.

    :keyword connection_timeout: seconds to connect (azure-core's ``ConnectionConfiguration`` default: 300).
    :keyword read_timeout: seconds to wait for data once connected (default: 300).
    :keyword connection_verify: True (certifi's bundle, as ``requests``), False, or a CA bundle file or
        directory.
    :keyword connection_cert: a client certificate file, or a (certificate, key) pair of files.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.connection_config = ConnectionConfiguration(**kwargs)
        # Made here, not on first use, so that threads sending at once share one pool manager.
        self._pool = urllib3.PoolManager(num_pools=POOL_SIZE, maxsize=POOL_SIZE,
                                         **_tls(self.connection_config.verify, self.connection_config.cert))

    def __enter__(self) -> Urllib3Transport:
        return self

    def __exit__(self, *args: object) -> None:
        self.close()

    def open(self) -> None:
        """Nothing to do: connections are opened by the pool as requests need them."""

    def close(self) -> None:
        """Close every pooled connection (a later request opens a new one)."""
        self._pool.clear()

    def send(self, request: HttpRequest, **kwargs: Any) -> Urllib3TransportResponse:
        """Send one request; the body is read before this returns, whatever ``stream`` says."""
        stream = kwargs.pop("stream", False)
        for option, configured in (("connection_verify", self.connection_config.verify),
                                   ("connection_cert", self.connection_config.cert)):
            if kwargs.pop(option, configured) != configured:
                raise ValueError(f"{option} is set once, when the transport is built, not per request")
        if kwargs.pop("proxies", None):
            raise ValueError("Urllib3Transport sends no request through a proxy; use the SDK's own transport")
        if request.files:
            raise ValueError("Urllib3Transport sends no multipart form (files); the storage clients send none")
        connect = kwargs.pop("connection_timeout", self.connection_config.timeout)
        read = kwargs.pop("read_timeout", self.connection_config.read_timeout)
        body = request.data
        if isinstance(body, str):
            body = body.encode("utf-8")
        try:
            response = self._pool.urlopen(
                request.method, request.url, body=body, headers=dict(request.headers),
                timeout=urllib3.Timeout(connect=connect, read=read), retries=False, redirect=False,
                preload_content=True)
        except u3.NewConnectionError as err:  # refused, unreachable, name not resolved
            raise ServiceRequestError(err, error=err) from err
        except u3.ConnectTimeoutError as err:
            raise ServiceRequestTimeoutError(err, error=err) from err
        except u3.ReadTimeoutError as err:
            raise ServiceResponseTimeoutError(err, error=err) from err
        except u3.SSLError as err:  # TLS failed (the handshake, as a rule), mapped as azure-core maps it
            raise ServiceRequestError(err, error=err) from err
        except u3.ProtocolError as err:  # the connection broke before the whole answer came
            if any(isinstance(arg, http.client.IncompleteRead) for arg in err.args):
                raise IncompleteReadError(err, error=err) from err
            raise ServiceResponseError(err, error=err) from err
        except u3.DecodeError as err:
            raise DecodeError(err, error=err) from err
        except u3.HTTPError as err:
            raise ServiceResponseError(err, error=err) from err
        answer = Urllib3TransportResponse(request, response, self.connection_config.data_block_size)
        if not stream:  # as azure-core's own transports leave a response that was not streamed: read, closed
            answer.read()
            answer.close()
        return answer


def _tls(verify: bool | str, cert: str | tuple[str, str] | None) -> dict[str, Any]:
    """urllib3's certificate options for ``requests``' meaning of verify and cert."""
    options: dict[str, Any] = {}
    if verify is False:
        options["cert_reqs"] = "CERT_NONE"
    else:
        bundle = certifi.where() if verify is True else verify
        options["cert_reqs"] = "CERT_REQUIRED"
        options["ca_cert_dir" if os.path.isdir(bundle) else "ca_certs"] = bundle
    if isinstance(cert, str):
        options["cert_file"] = cert
    elif cert is not None:
        options["cert_file"], options["key_file"] = cert
    return options
