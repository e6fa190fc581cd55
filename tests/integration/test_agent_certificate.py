"""The agent's storage credential from a certificate (AzureWebJobsStorage__credential=clientcertificate): the real
azure-identity CertificateCredential signs a client assertion that the Graph simulator's token endpoint checks
against the certificate registered on the app, as Entra ID does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from azure.core.exceptions import ClientAuthenticationError

from devtools.graphsim.server import GraphSimulator
from shared.adapters.storage import credential
from shared.settings import load_storage_settings
from tests.integration.test_graphsim import _certificate_pem

pytestmark = pytest.mark.integration


def test_storage_token_from_the_agents_certificate(graph: GraphSimulator, tmp_path: Path) -> None:
    registered, cert_pem = _certificate_pem(tmp_path, "guestsync-agent")
    unknown, _ = _certificate_pem(tmp_path, "not-registered")
    graph.register_certificate(cert_pem)

    def token(path: Path) -> str:
        storage = load_storage_settings({
            "AzureWebJobsStorage__accountName": "guestsyncst", "AzureWebJobsStorage__credential": "clientcertificate",
            "AzureWebJobsStorage__tenantId": graph.tenant_id, "AzureWebJobsStorage__clientId": graph.client_id,
            "AzureWebJobsStorage__clientCertificatePath": str(path), "GRAPH_AUTHORITY_HOST": graph.base_url,
        })
        assert os.environ.get("SSL_CERT_FILE")  # the simulator's CA (graph fixture)
        return str(credential(storage).get_token("https://storage.azure.com/.default").token)

    assert token(registered).count(".") == 2  # a JWT from the token endpoint
    with pytest.raises(ClientAuthenticationError, match="AADSTS700027"):
        token(unknown)
