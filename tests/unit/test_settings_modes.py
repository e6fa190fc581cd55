"""Configuration modes (Graph identity, national cloud, storage, mail, worker) and every bad combination:
each gives one ConfigurationError that names the setting, never a stack trace."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from shared import cli
from shared.core.domain import ConfigurationError
from shared.settings import CLOUDS, load_settings

TENANT = "84bd8158-6d4d-4958-8b9f-9d6445542f95"
CLIENT = "9d2f1c0e-5b8a-4a63-9c1e-1d4f2a7b8c90"
BASE = {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}
AD = {"AD_SERVER": "ldaps://dc1.contoso.com", "AD_BIND_USER": "svc@contoso.com", "AD_BIND_PASSWORD": "pw-123456",
      "AD_GUEST_OU": "OU=B2BGuest,DC=contoso,DC=com", "AD_ARCHIVE_OU": "OU=B2BGuestArchive,DC=contoso,DC=com",
      "GUESTSYNC_OWNERSHIP_KEY": "a-test-ownership-key-of-32-chars-or-more"}


def fails(env: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_settings({**BASE, **env})
    assert setting in str(info.value)
    assert "\n" not in str(info.value)


# --- Graph identity -------------------------------------------------------------------------------------------

def test_managed_identity_is_the_default_system_or_user_assigned() -> None:
    assert load_settings(BASE).graph.auth == "managed_identity"
    assert load_settings({**BASE, "GRAPH_CLIENT_ID": CLIENT}).graph.client_id == CLIENT


@pytest.mark.parametrize("missing", ["GRAPH_TENANT_ID", "GRAPH_CLIENT_ID", "GRAPH_CLIENT_SECRET"])
def test_client_secret_needs_tenant_client_and_secret(missing: str) -> None:
    env = {"GRAPH_AUTH": "client_secret", "GRAPH_TENANT_ID": TENANT, "GRAPH_CLIENT_ID": CLIENT,
           "GRAPH_CLIENT_SECRET": "s3cret-value"}
    assert load_settings({**BASE, **env}).graph.auth == "client_secret"
    fails({**env, missing: ""}, missing)


def test_certificate_from_a_file_or_from_key_vault(tmp_path: Path) -> None:
    pem = tmp_path / "app.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n...\n")
    env = {"GRAPH_AUTH": "certificate", "GRAPH_TENANT_ID": TENANT, "GRAPH_CLIENT_ID": CLIENT}
    graph = load_settings({**BASE, **env, "GRAPH_CLIENT_CERTIFICATE_PATH": str(pem)}).graph
    assert graph.certificate_path == str(pem) and graph.certificate_data is None
    data = base64.b64encode(b"pfx bytes").decode()
    graph = load_settings({**BASE, **env, "GRAPH_CLIENT_CERTIFICATE": data}).graph
    assert graph.certificate_data == b"pfx bytes"


@pytest.mark.parametrize(("extra", "setting"), [
    ({}, "GRAPH_CLIENT_CERTIFICATE_PATH"),  # neither
    ({"GRAPH_CLIENT_CERTIFICATE_PATH": "/nonexistent/app.pem"}, "GRAPH_CLIENT_CERTIFICATE_PATH"),
    ({"GRAPH_CLIENT_CERTIFICATE": "not base64!"}, "GRAPH_CLIENT_CERTIFICATE"),
    ({"GRAPH_CLIENT_CERTIFICATE": "YQ==", "GRAPH_TENANT_ID": ""}, "GRAPH_TENANT_ID"),
    ({"GRAPH_CLIENT_CERTIFICATE": "YQ==", "GRAPH_CLIENT_SECRET": "leftover"}, "GRAPH_CLIENT_SECRET"),
])
def test_certificate_bad_combinations(extra: dict[str, str], setting: str) -> None:
    fails({"GRAPH_AUTH": "certificate", "GRAPH_TENANT_ID": TENANT, "GRAPH_CLIENT_ID": CLIENT, **extra}, setting)


def test_both_certificate_sources_is_ambiguous(tmp_path: Path) -> None:
    pem = tmp_path / "app.pem"
    pem.write_text("x")
    fails({"GRAPH_AUTH": "certificate", "GRAPH_TENANT_ID": TENANT, "GRAPH_CLIENT_ID": CLIENT,
           "GRAPH_CLIENT_CERTIFICATE_PATH": str(pem), "GRAPH_CLIENT_CERTIFICATE": "YQ=="}, "GRAPH_CLIENT_CERTIFICATE")


@pytest.mark.parametrize(("env", "setting"), [
    ({"GRAPH_AUTH": "password"}, "GRAPH_AUTH"),
    ({"GRAPH_CLIENT_SECRET": "stray"}, "GRAPH_CLIENT_SECRET"),  # a secret with managed identity
    ({"GRAPH_CLIENT_CERTIFICATE": "YQ=="}, "GRAPH_CLIENT_CERTIFICATE"),
    ({"GRAPH_ENDPOINT": "http://graph.microsoft.com/v1.0"}, "GRAPH_ENDPOINT"),
])
def test_graph_identity_mismatches(env: dict[str, str], setting: str) -> None:
    fails(env, setting)


# --- national clouds ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("cloud", "graph_host", "login_host"), [
    ("global", "graph.microsoft.com", "login.microsoftonline.com"),
    ("usgov", "graph.microsoft.us", "login.microsoftonline.us"),
    ("usgovdod", "dod-graph.microsoft.us", "login.microsoftonline.us"),
    ("china", "microsoftgraph.chinacloudapi.cn", "login.chinacloudapi.cn"),
])
def test_cloud_sets_graph_host_scope_and_authority(cloud: str, graph_host: str, login_host: str) -> None:
    graph = load_settings({**BASE, "GRAPH_CLOUD": cloud}).graph
    assert graph.endpoint == f"https://{graph_host}/v1.0"
    assert graph.scopes == (f"https://{graph_host}/.default",)
    assert graph.authority_host == f"https://{login_host}"
    assert set(CLOUDS) == {"global", "usgov", "usgovdod", "china"}


def test_unknown_cloud_and_explicit_overrides() -> None:
    fails({"GRAPH_CLOUD": "germany"}, "GRAPH_CLOUD")
    graph = load_settings({**BASE, "GRAPH_CLOUD": "usgov", "GRAPH_ENDPOINT": "https://proxy.contoso.com/v1.0/"}).graph
    assert graph.endpoint == "https://proxy.contoso.com/v1.0" and graph.authority_host.endswith(".us")


# --- storage ------------------------------------------------------------------------------------------------

def test_keyless_storage_by_account_name_per_cloud() -> None:
    env = {"AzureWebJobsStorage__accountName": "guestsyncst", "AzureWebJobsStorage__credential": "managedidentity",
           "AzureWebJobsStorage__clientId": CLIENT}
    storage = load_settings(env).storage
    assert storage.connection_string is None
    assert storage.queue_url == "https://guestsyncst.queue.core.windows.net"
    assert storage.table_url == "https://guestsyncst.table.core.windows.net"
    assert storage.client_id == CLIENT
    # GRAPH_CLOUD is the tenant's cloud, not the storage account's: the account name alone is commercial Azure,
    # and another cloud's account comes with its explicit endpoints (as infra passes them)
    gcc_high_tenant = load_settings({**env, "GRAPH_CLOUD": "usgov"}).storage
    assert gcc_high_tenant.table_url == "https://guestsyncst.table.core.windows.net"
    china = load_settings({**env, "AzureWebJobsStorage__queueServiceUri": "https://st.queue.core.chinacloudapi.cn/",
                           "AzureWebJobsStorage__tableServiceUri": "https://st.table.core.chinacloudapi.cn/"}).storage
    assert china.table_url == "https://st.table.core.chinacloudapi.cn"


def test_keyless_storage_for_an_agent_with_a_service_principal() -> None:
    env = {"AzureWebJobsStorage__queueServiceUri": "https://st.queue.core.windows.net",
           "AzureWebJobsStorage__tableServiceUri": "https://st.table.core.windows.net",
           "AzureWebJobsStorage__credential": "clientsecret", "AzureWebJobsStorage__tenantId": TENANT,
           "AzureWebJobsStorage__clientId": CLIENT, "AzureWebJobsStorage__clientSecret": "agent-secret"}
    assert load_settings(env).storage.credential == "clientsecret"
    with pytest.raises(ConfigurationError, match="AzureWebJobsStorage__clientSecret"):
        load_settings({**env, "AzureWebJobsStorage__clientSecret": ""})
    with pytest.raises(ConfigurationError, match="AzureWebJobsStorage__credential"):
        load_settings({**env, "AzureWebJobsStorage__credential": "accountkey"})


def test_no_storage_at_all_names_the_setting() -> None:
    with pytest.raises(ConfigurationError, match="AzureWebJobsStorage"):
        load_settings({})
    with pytest.raises(ConfigurationError, match="AzureWebJobsStorage"):  # queue endpoint without table
        load_settings({"AzureWebJobsStorage__queueServiceUri": "https://st.queue.core.windows.net"})


# --- mail ---------------------------------------------------------------------------------------------------

def test_mail_modes() -> None:
    assert load_settings(BASE).mail.mode == "none"
    graph = load_settings({**BASE, "GUESTSYNC_MAIL": "graph", "GUESTSYNC_MAIL_TO": "idm@contoso.com, sec@contoso.com",
                           "GUESTSYNC_MAIL_FROM": "guestsync@contoso.com"}).mail
    assert graph.to == ("idm@contoso.com", "sec@contoso.com") and graph.sender == "guestsync@contoso.com"
    smtp = load_settings({**BASE, "GUESTSYNC_MAIL": "smtp", "GUESTSYNC_MAIL_TO": "idm@contoso.com",
                          "GUESTSYNC_MAIL_FROM": "guestsync@contoso.com", "SMTP_HOST": "smtp.contoso.com"}).mail
    assert (smtp.smtp_port, smtp.smtp_security) == (587, "starttls")
    implicit = load_settings({**BASE, "GUESTSYNC_MAIL": "smtp", "GUESTSYNC_MAIL_TO": "idm@contoso.com",
                              "GUESTSYNC_MAIL_FROM": "g@contoso.com", "SMTP_HOST": "smtp.contoso.com",
                              "SMTP_SECURITY": "tls"}).mail
    assert implicit.smtp_port == 465


SMTP = {"GUESTSYNC_MAIL": "smtp", "GUESTSYNC_MAIL_TO": "idm@contoso.com", "GUESTSYNC_MAIL_FROM": "g@contoso.com",
        "SMTP_HOST": "smtp.contoso.com"}


@pytest.mark.parametrize(("env", "setting"), [
    ({"GUESTSYNC_MAIL": "sendgrid"}, "GUESTSYNC_MAIL"),
    ({"GUESTSYNC_MAIL": "graph", "GUESTSYNC_MAIL_FROM": "g@contoso.com"}, "GUESTSYNC_MAIL_TO"),
    ({"GUESTSYNC_MAIL": "graph", "GUESTSYNC_MAIL_TO": "idm@contoso.com"}, "GUESTSYNC_MAIL_FROM"),
    ({"GUESTSYNC_MAIL": "graph", "GUESTSYNC_MAIL_TO": "not-an-address", "GUESTSYNC_MAIL_FROM": "g@c.com"},
     "GUESTSYNC_MAIL_TO"),
    ({**SMTP, "SMTP_HOST": ""}, "SMTP_HOST"),
    ({**SMTP, "SMTP_PORT": "70000"}, "SMTP_PORT"),
    ({**SMTP, "SMTP_PORT": "smtp"}, "SMTP_PORT"),
    ({**SMTP, "SMTP_USERNAME": "relay"}, "SMTP_PASSWORD"),
    ({**SMTP, "SMTP_USERNAME": "relay", "SMTP_PASSWORD": "pw", "SMTP_SECURITY": "none"}, "SMTP_PASSWORD"),
    ({**SMTP, "SMTP_SECURITY": "ssl3"}, "SMTP_SECURITY"),
])
def test_mail_bad_combinations(env: dict[str, str], setting: str) -> None:
    fails(env, setting)


# --- worker mode and AD -----------------------------------------------------------------------------------------

def test_function_worker_mode_needs_the_ad_settings() -> None:
    fails({"GUESTSYNC_WORKER_MODE": "function"}, "AD_SERVER")
    settings = load_settings({**BASE, **AD, "GUESTSYNC_WORKER_MODE": "function"})
    assert settings.directory is not None and settings.deprovisioning.archive_ou == AD["AD_ARCHIVE_OU"]
    fails({**AD, "AD_SERVER": "ldap://dc1.contoso.com"}, "AD_SERVER")
    fails({**AD, "GUESTSYNC_WORKER_MODE": "cloud"}, "GUESTSYNC_WORKER_MODE")


@pytest.mark.parametrize(("value", "expected"), [(None, 8), ("", 8), (" 1 ", 1), ("4", 4), ("32", 32)])
def test_ldap_connections(value: str | None, expected: int) -> None:
    env = {**BASE, **AD} if value is None else {**BASE, **AD, "GUESTSYNC_LDAP_CONNECTIONS": value}
    directory = load_settings(env).directory
    assert directory is not None and directory.connections == expected


@pytest.mark.parametrize("value", ["0", "-1", "33", "1000", "four", "2.5"])
def test_ldap_connections_out_of_range(value: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_settings({**BASE, **AD, "GUESTSYNC_LDAP_CONNECTIONS": value})
    message = str(info.value)
    assert message.startswith("setting GUESTSYNC_LDAP_CONNECTIONS must be ")
    assert value in message  # the value that was refused
    assert "\n" not in message


def test_the_cli_prints_one_line_naming_the_setting(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    for name in list(__import__("os").environ):
        if name.startswith(("GRAPH_", "GUESTSYNC_", "AD_", "SMTP_", "AzureWebJobs")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AzureWebJobsStorage", "UseDevelopmentStorage=true")
    monkeypatch.setenv("GRAPH_AUTH", "client_secret")
    assert cli.main(["status", "--no-graph"]) == 2
    err = capsys.readouterr().err
    assert "GRAPH_TENANT_ID" in err and "Traceback" not in err and err.count("\n") == 1
    monkeypatch.setenv("GUESTSYNC_LOG_FORMAT", "xml")
    assert cli.main(["status"]) == 2
    assert "GUESTSYNC_LOG_FORMAT" in capsys.readouterr().err


# --- AD: DCs and the Kerberos bind -----------------------------------------------------------------------------
def test_ad_server_takes_several_dcs_or_a_dns_domain() -> None:
    several = load_settings({**BASE, **AD, "AD_SERVER": "ldaps://dc1.contoso.com,ldaps://dc2.contoso.com"})
    assert several.directory is not None and several.directory.server == "ldaps://dc1.contoso.com,ldaps://dc2.contoso.com"
    assert load_settings({**BASE, **AD, "AD_SERVER": "dns:contoso.com"}).directory is not None
    fails({**AD, "AD_SERVER": "ldaps://dc1.contoso.com, ldap://dc2.contoso.com"}, "AD_SERVER")
    fails({**AD, "AD_SERVER": "dns:"}, "AD_SERVER")


def test_kerberos_bind_needs_no_password_and_refuses_a_stray_one(tmp_path: Path) -> None:
    keytab = tmp_path / "svc.keytab"
    keytab.write_bytes(b"\x05\x02")
    kerberos = {**{k: v for k, v in AD.items() if k != "AD_BIND_PASSWORD"}, "AD_BIND_METHOD": "kerberos",
                "AD_BIND_USER": "svc-guestsync@CONTOSO.COM", "AD_KEYTAB": str(keytab)}
    directory = load_settings({**BASE, **kerberos}).directory
    assert directory is not None and directory.bind_method == "kerberos" and directory.keytab == str(keytab)
    assert directory.bind_password == ""
    # Windows service identity (gMSA) or the process's own tickets: neither user nor keytab
    own = {k: v for k, v in kerberos.items() if k not in ("AD_BIND_USER", "AD_KEYTAB")}
    assert load_settings({**BASE, **own}).directory.bind_user == ""  # type: ignore[union-attr]
    fails({**kerberos, "AD_BIND_PASSWORD": "pw-123456"}, "AD_BIND_PASSWORD")
    fails({**kerberos, "AD_KEYTAB": str(tmp_path / "missing.keytab")}, "AD_KEYTAB")
    fails({**kerberos, "AD_BIND_USER": "CN=svc,CN=Users,DC=contoso,DC=com"}, "AD_BIND_USER")
    fails({**kerberos, "AD_BIND_METHOD": "ntlm"}, "AD_BIND_METHOD")
    fails({**AD, "AD_KEYTAB": str(keytab)}, "AD_KEYTAB")  # a keytab with the password method: one of them is wrong
    fails({k: v for k, v in AD.items() if k != "AD_BIND_PASSWORD"}, "AD_BIND_PASSWORD")


def test_keyless_storage_for_an_agent_with_a_certificate(tmp_path: Path) -> None:
    certificate = tmp_path / "agent.pem"
    certificate.write_text("-----BEGIN CERTIFICATE-----\n")
    env = {"AzureWebJobsStorage__accountName": "guestsyncst", "AzureWebJobsStorage__credential": "clientcertificate",
           "AzureWebJobsStorage__tenantId": TENANT, "AzureWebJobsStorage__clientId": CLIENT,
           "AzureWebJobsStorage__clientCertificatePath": str(certificate)}
    storage = load_settings(env).storage
    assert storage.credential == "clientcertificate" and storage.certificate_path == str(certificate)
    # the storage principal signs in where the storage account lives, whatever the tenant's GRAPH_CLOUD
    assert load_settings({**env, "GRAPH_CLOUD": "usgov"}).storage.authority_host == "https://login.microsoftonline.com"
    usgov = {**env, "AzureWebJobsStorage__queueServiceUri": "https://st.queue.core.usgovcloudapi.net",
             "AzureWebJobsStorage__tableServiceUri": "https://st.table.core.usgovcloudapi.net"}
    assert load_settings(usgov).storage.authority_host == "https://login.microsoftonline.us"
    for missing in ("AzureWebJobsStorage__tenantId", "AzureWebJobsStorage__clientCertificatePath"):
        with pytest.raises(ConfigurationError, match=missing):
            load_settings({**env, missing: ""})
    with pytest.raises(ConfigurationError, match="no such file"):
        load_settings({**env, "AzureWebJobsStorage__clientCertificatePath": str(tmp_path / "gone.pem")})
    with pytest.raises(ConfigurationError, match="AzureWebJobsStorage__clientSecret"):  # a stray secret
        load_settings({**env, "AzureWebJobsStorage__clientSecret": "left-over"})
