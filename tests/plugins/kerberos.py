"""Kerberos on the session DC: the test's own krb5.conf and ccache (never the user's), and an application proxy
set-up for KCD: the app's service account with SPN HTTP/<app>, and a "connector" principal trusted to delegate to
it with protocol transition (TRUSTED_TO_AUTH_FOR_DELEGATION, msDS-AllowedToDelegateTo), as App Proxy's
connector computer account is configured."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shared.core.ad_rules import new_password
from tests.plugins.samba import GuestsyncDC

UAC_TRUSTED_TO_AUTH_FOR_DELEGATION = 0x1000000
UAC_NORMAL_ACCOUNT = 0x200


@pytest.fixture
def krb5_client(samba_dc: GuestsyncDC, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """KRB5_CONFIG: a krb5.conf of the test's own with the session DC as KDC; KRB5CCNAME: a ccache of its own.
    Returns the krb5.conf."""
    conf = samba_dc.write_krb5_conf(tmp_path / "krb5.conf")
    monkeypatch.setenv("KRB5_CONFIG", str(conf))
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{tmp_path / 'ccache'}")
    monkeypatch.delenv("KRB5_CLIENT_KTNAME", raising=False)
    return conf


@dataclass
class KcdApp:
    """An application published through App Proxy with KCD, and the connector principal that delegates to it."""

    spn: str
    connector: str  # principal name, e.g. connector-1a2b@CONTOSO.COM
    keytab: Path
    password: str = field(repr=False)


def add_principal(dc: GuestsyncDC, name: str, *, spn: str | None = None, delegate_to: str | None = None) -> str:
    """A user principal in CN=Users; with ``delegate_to``, trusted to delegate to that SPN with protocol
    transition. Returns its password."""
    password = new_password(24, avoid=(name,))
    attributes: dict[str, object] = {}
    if spn:
        attributes["servicePrincipalName"] = [spn]
    if delegate_to:
        attributes["userAccountControl"] = UAC_NORMAL_ACCOUNT | UAC_TRUSTED_TO_AUTH_FOR_DELEGATION
        attributes["msDS-AllowedToDelegateTo"] = [delegate_to]
    dc.create_user(name, password, attributes=attributes)
    return password


@pytest.fixture(scope="session")
def kcd_app(samba_dc: GuestsyncDC, tmp_path_factory: pytest.TempPathFactory) -> KcdApp:
    suffix = secrets.token_hex(3)
    spn = f"HTTP/app-{suffix}.{samba_dc.realm.lower()}"
    add_principal(samba_dc, f"svc-app-{suffix}", spn=spn)
    name = f"connector-{suffix}"
    # An SPN of its own, as the connector's computer account has (HOST/...): S4U2Self asks a ticket to the
    # connector itself, and a principal without any SPN is no server to the KDC ("Server not found").
    password = add_principal(samba_dc, name, spn=f"HOST/{name}.{samba_dc.realm.lower()}", delegate_to=spn)
    principal = f"{name}@{samba_dc.realm}"
    keytab = samba_dc.export_keytab(Path(tmp_path_factory.mktemp("kcd")) / "connector.keytab", principal)
    return KcdApp(spn, principal, keytab, password)


def kinit_keytab(principal: str, keytab: Path) -> None:
    """``kinit -f`` from a keytab into the ccache of KRB5CCNAME (with the krb5.conf of KRB5_CONFIG)."""
    result = subprocess.run(["kinit", "-f", "-k", "-t", str(keytab), principal], capture_output=True, text=True,
                            timeout=30, env=os.environ)
    assert result.returncode == 0, result.stderr


def s4u(upn: str, spn: str) -> subprocess.CompletedProcess[str]:
    """S4U2Self + S4U2Proxy as the signed-in connector: a service ticket for ``spn`` on behalf of ``upn`` (an
    enterprise name, looked up as is). ``--no-store``: each call asks the KDC, never a ticket cached by an earlier
    one (kvno would otherwise reuse a renamed user's cached S4U2Self ticket)."""
    return subprocess.run(["kvno", "--no-store", "-U", upn, "-P", spn], capture_output=True, text=True, timeout=30,
                          env=os.environ)


@pytest.fixture
def connector_signed_in(kcd_app: KcdApp, krb5_client: Path) -> Iterator[KcdApp]:
    """The connector principal signed in (forwardable TGT) in the test's own ccache."""
    kinit_keytab(kcd_app.connector, kcd_app.keytab)
    yield kcd_app
