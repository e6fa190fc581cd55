"""Azure Storage clients from settings: a connection string, or keyless with an Entra identity.

In Azure the app uses its user-assigned managed identity with RBAC roles on the account (no key exists in
any setting); an on-premises agent uses a connection string or a service principal (with a client secret, or
with a certificate so that no shared secret exists), like the Functions host's ``AzureWebJobsStorage__*``
identity-based connection settings.
"""

from __future__ import annotations

import os
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from azure.data.tables import TableServiceClient
from azure.storage.queue import QueueClient

from shared.adapters.urllib3_transport import Urllib3Transport
from shared.settings import StorageSettings


def credential(storage: StorageSettings) -> Any:
    """The token credential of a keyless connection (None for a connection string)."""
    if storage.connection_string is not None:
        return None
    if storage.credential == "clientsecret":
        from azure.identity import ClientSecretCredential

        return ClientSecretCredential(str(storage.tenant_id), str(storage.client_id), str(storage.client_secret),
                                      authority=storage.authority_host, **_discovery(storage))
    if storage.credential == "clientcertificate":
        from azure.identity import CertificateCredential

        return CertificateCredential(str(storage.tenant_id), str(storage.client_id),
                                     certificate_path=storage.certificate_path,
                                     password=storage.certificate_password, authority=storage.authority_host,
                                     **_discovery(storage))
    from azure.identity import ManagedIdentityCredential

    return ManagedIdentityCredential(client_id=storage.client_id) if storage.client_id else ManagedIdentityCredential()


def _discovery(storage: StorageSettings) -> dict[str, Any]:
    """Instance discovery asks Microsoft's sign-in about the authority: only for Microsoft's own hosts."""
    from shared.adapters.graph import MICROSOFT_LOGIN_HOSTS

    host = urlsplit(storage.authority_host).hostname or ""
    return {"disable_instance_discovery": host not in MICROSOFT_LOGIN_HOSTS}


#: Environment variables through which ``requests`` changes a request when it trusts the environment (besides
#: the proxy variables, which ``urllib.request.getproxies`` reads with the platform's own proxy settings).
_REQUESTS_ENVIRONMENT = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")

#: Client options that belong to the HTTP transport, not to the client's pipeline.
_CONNECTION_OPTIONS = ("connection_timeout", "read_timeout", "connection_verify", "connection_cert",
                       "connection_data_block_size")

#: The timeouts the queue SDK gives the transport it builds itself (connect, then read), kept with ours.
QUEUE_TIMEOUTS = {"connection_timeout": 20, "read_timeout": 60}


def client_options(options: dict[str, Any], *, timeouts: dict[str, Any] | None = None) -> dict[str, Any]:
    """A storage client's options with the HTTP transport that spares every request what it does not need.

    Where no proxy variable is set, which is the usual case in Azure and on-premises alike, the client gets a
    ``Urllib3Transport``: about a third less CPU per call than the SDK's ``requests`` transport, and no scan of the
    environment per request (with ``requests``, that scan of every variable of the process, lower-cased, twice,
    plus NO_PROXY and a .netrc file, cost a seventh of a table insert in a Functions worker, whose environment
    holds every app setting). A CA bundle variable (REQUESTS_CA_BUNDLE, else CURL_CA_BUNDLE, as ``requests``
    reads them) is read once and trusted exactly as before. The connection options (timeouts, verify, cert)
    go to the transport, with ``timeouts`` as the defaults. Where a proxy variable is set, the options are left
    as they are: the SDK's own transport reads the environment per request, so proxies and NO_PROXY behave
    exactly as without this. A ``transport`` given in ``options`` is kept."""
    if "transport" in options or any(scheme != "no" for scheme in urllib.request.getproxies()):
        return {**(timeouts or {}), **options}  # a caller's own transport, or the SDK's for a proxy
    connection = dict(timeouts or {})
    bundle = next((value for value in map(os.environ.get, _REQUESTS_ENVIRONMENT) if value), None)
    if bundle:
        connection["connection_verify"] = bundle
    client = dict(options)
    for name in _CONNECTION_OPTIONS:
        if name in client:
            connection[name] = client.pop(name)
    return {**client, "transport": Urllib3Transport(**connection)}


def table_service(storage: StorageSettings, **options: Any) -> TableServiceClient:
    options = client_options(options)
    if storage.connection_string is not None:
        return TableServiceClient.from_connection_string(storage.connection_string, **options)
    return TableServiceClient(str(storage.table_url), credential=credential(storage), **options)


def queue_client(storage: StorageSettings, name: str, **options: Any) -> QueueClient:
    options = client_options(options, timeouts=QUEUE_TIMEOUTS)
    if storage.connection_string is not None:
        return QueueClient.from_connection_string(storage.connection_string, name, **options)
    return QueueClient(str(storage.queue_url), name, credential=credential(storage), **options)


def probe(storage: StorageSettings, *, timeout: float = 5) -> None:
    """One read of the table service, without retries and with short timeouts: a command that needs storage
    (``guestsync serve``) fails at once with the SDK's error instead of logging retries from every trigger."""
    service = table_service(storage, retry_total=0, connection_timeout=timeout, read_timeout=timeout)
    with service:
        next(iter(service.list_tables(results_per_page=1)), None)
