"""KCD tested for real: MIT Kerberos client tools (kinit, kvno) as a delegation-enabled principal, S4U2Self +
S4U2Proxy on behalf of a user named by its UPN (kvno -U parses it as an enterprise name, so
``alice_fabrikam.com#EXT#@contoso.onmicrosoft.com`` is looked up as is). krb5.conf comes from the environment
(KRB5_CONFIG or the system's); the credentials go to a private ccache that is removed afterwards, never the
admin's own."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from shared.core.domain import ConfigurationError, GuestsyncError
from shared.core.ports import DelegationTicket

TOOLS = ("kinit", "kvno")
TOOLS_MISSING = ("the KCD test needs the MIT Kerberos client tools kinit and kvno on PATH (Debian/Ubuntu: "
                 "apt install krb5-user; RHEL: dnf install krb5-workstation)")
TIMEOUT_SECONDS = 30


class KerberosToolError(GuestsyncError):
    """kinit or kvno could not run, or the connector principal could not sign in."""


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


class KvnoDelegationTester:
    """Signs ``principal`` in once (``kinit -f``, from ``keytab`` or ``password``) into a private ccache, then asks
    ``kvno -U <UPN> -P <spn>`` per user. Use it as a context manager: the ccache is removed on exit."""

    def __init__(self, principal: str, spn: str, *, keytab: str | None = None, password: str | None = None) -> None:
        if (keytab is None) == (password is None):
            raise ConfigurationError("the KCD test needs the connector's keytab or its password, exactly one")
        self.principal, self.spn = principal, spn
        self._keytab, self._password = keytab, password
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._env: dict[str, str] = {}

    def __enter__(self) -> KvnoDelegationTester:
        missing = [tool for tool in TOOLS if shutil.which(tool) is None]
        if missing:
            raise KerberosToolError(f"{', '.join(missing)} not found: {TOOLS_MISSING}")
        if self._keytab is not None and not Path(self._keytab).is_file():
            raise ConfigurationError(f"--keytab {self._keytab}: no such file")
        self._dir = tempfile.TemporaryDirectory(prefix="guestsync-kcd-")
        self._env = {**os.environ, "KRB5CCNAME": f"FILE:{Path(self._dir.name) / 'ccache'}"}
        self._env.pop("KRB5_CLIENT_KTNAME", None)
        try:
            self._kinit()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def _run(self, args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        try:
            # the program is kinit or kvno, the arguments are separate argv items (no shell): names stay data
            return subprocess.run(  # noqa: S603
                args, input=stdin, capture_output=True, text=True, env=self._env, timeout=TIMEOUT_SECONDS,
                check=False)
        except subprocess.TimeoutExpired:
            raise KerberosToolError(f"{args[0]} did not answer within {TIMEOUT_SECONDS} s: is the KDC in "
                                    "krb5.conf (KRB5_CONFIG) reachable?") from None

    def _kinit(self) -> None:
        if self._keytab is not None:
            result = self._run(["kinit", "-f", "-k", "-t", self._keytab, self.principal])
        else:
            result = self._run(["kinit", "-f", self.principal], stdin=f"{self._password}\n")
        if result.returncode != 0:
            raise KerberosToolError(f"kinit as the connector principal {self.principal} failed: "
                                    f"{_last_line(result.stderr or result.stdout)}")

    def ticket_for(self, user_principal_name: str) -> DelegationTicket:
        """S4U2Self + S4U2Proxy: a service ticket for ``spn`` on behalf of the user, or the KDC's refusal. Nothing is
        stored, so every answer is the KDC's now, not a ticket cached by an earlier request."""
        if self._dir is None:
            raise RuntimeError("KvnoDelegationTester is used outside its with-block")
        result = self._run(["kvno", "--no-store", "-U", user_principal_name, "-P", self.spn])
        if result.returncode == 0:
            return DelegationTicket(user_principal_name, True, _last_line(result.stdout))
        detail = _last_line(result.stderr or result.stdout).removeprefix("kvno: ")
        return DelegationTicket(user_principal_name, False, detail)
