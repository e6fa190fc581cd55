"""Run a real Samba AD DC in a temporary directory, for the tests and the local demo.

Why a real DC: the adapter's contract is what Active Directory does (LDAPS with certificate validation,
password policy, access checks, duplicate detection), and a fake would only confirm our own assumptions.

Provisioning takes ~10 s, so a provisioned *template* is cached per (realm, domain, Samba version) under
the system temp directory and copied for every DC (``cp -a`` keeps the tdb/ldb files; only ``smb.conf``
holds absolute paths, and it is rewritten). Every DC listens on one loopback address only (any 127.x.y.z
works on Linux), so DCs of parallel test runs do not collide on port 636. Samba runs in the foreground
(``-i``) in its own process group with its stdin on a pipe from us: ``stop()`` kills the group, and if
this process dies without stopping it, Samba sees EOF on stdin and exits by itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn

from devtools.localenv.certs import LocalPki, create_local_pki
from shared.core.ad_rules import OWNERSHIP_ATTRIBUTE, format_sid, new_password
from shared.core.rules import PERSISTENT_ATTRIBUTES

LDAPS_PORT = 636
#: Bump when the way the template is provisioned changes, so stale caches are not reused.
TEMPLATE_FORMAT = 3
TEMPLATE_READY = "guestsync-template.json"
#: What the guest worker writes on the accounts in the guest and archive OUs after it created them (an LDAP add
#: needs the Create Child right only): the attributes kept in sync (shared.core.rules.PERSISTENT_ATTRIBUTES),
#: userAccountControl (disable, enable, adoption), adminDescription (the ownership mark, written by an
#: adoption) and cn and name (the RDN attribute and name, which AD checks on a modify DN). README's dsacls
#: commands grant exactly these (tests/integration/test_delegation.py compares them).
DELEGATED_WRITE_ATTRIBUTES: tuple[str, ...] = (
    *PERSISTENT_ATTRIBUTES, "userAccountControl", OWNERSHIP_ATTRIBUTE, "cn", "name")
#: The Reset-Password extended right (cn of its controlAccessRight object in CN=Extended-Rights).
RESET_PASSWORD_RIGHT = "User-Force-Change-Password"  # noqa: S105 (the name of a right, not a password)
#: The well-known OWNER RIGHTS SID: an ACE for it replaces the owner's implicit READ_CONTROL and WRITE_DAC.
OWNER_RIGHTS_SID = "S-1-3-4"
#: msDS-KeyCredentialLink and its back link as Windows Server 2016 (schema version 87) defines them: Samba
#: 4.17 provisions the 2012 R2 schema, which lacks them, and the tests must show that the service account
#: cannot write the key credentials of a guest (shadow credentials) on a schema that has them.
_KEY_CREDENTIAL_LINK_SCHEMA: tuple[str, str] = ("""\
dn: CN=ms-DS-Key-Credential-Link,CN=Schema,CN=Configuration,{base_dn}
changetype: add
objectClass: top
objectClass: attributeSchema
cn: ms-DS-Key-Credential-Link
attributeID: 1.2.840.113556.1.4.2328
attributeSyntax: 2.5.5.7
isSingleValued: FALSE
linkID: 2220
showInAdvancedViewOnly: TRUE
adminDisplayName: ms-DS-Key-Credential-Link
oMObjectClass:: KoZIhvcUAQEBCw==
adminDescription: Contains key material and usage.
oMSyntax: 127
searchFlags: 0
lDAPDisplayName: msDS-KeyCredentialLink
schemaIDGUID:: D9ZHW5BgskCfNypN6I8wYw==
attributeSecurityGUID:: pm0CmzwNXEaL7lGZ1xZcug==
systemOnly: FALSE
systemFlags: 16

dn: CN=ms-DS-Key-Credential-Link-BL,CN=Schema,CN=Configuration,{base_dn}
changetype: add
objectClass: top
objectClass: attributeSchema
cn: ms-DS-Key-Credential-Link-BL
attributeID: 1.2.840.113556.1.4.2329
attributeSyntax: 2.5.5.1
isSingleValued: FALSE
linkID: 2221
showInAdvancedViewOnly: TRUE
adminDisplayName: ms-DS-Key-Credential-Link-BL
oMObjectClass:: KwwCh3McAIVK
oMSyntax: 127
searchFlags: 0
lDAPDisplayName: msDS-KeyCredentialLink-BL
schemaIDGUID:: iNeKk18i7k6Tua0koVnh2w==
systemOnly: FALSE
systemFlags: 17

dn:
changetype: modify
replace: schemaUpdateNow
schemaUpdateNow: 1
""", """\
dn: CN=User,CN=Schema,CN=Configuration,{base_dn}
changetype: modify
add: systemMayContain
systemMayContain: msDS-KeyCredentialLink

dn: CN=Top,CN=Schema,CN=Configuration,{base_dn}
changetype: modify
add: systemMayContain
systemMayContain: msDS-KeyCredentialLink-BL

dn:
changetype: modify
replace: schemaUpdateNow
schemaUpdateNow: 1
""")
#: smb.conf [global] keys we set ourselves; provision's values for them are dropped.
_OWN_KEYS = (
    "interfaces",
    "bind interfaces only",
    "server services",
    "log file",
    "log level",
    "logging",
    "max log size",
    "pid directory",
    "ncalrpc dir",
    "ntp signd socket directory",
    "winbindd socket directory",
    "panic action",
    "tls enabled",
    "tls keyfile",
    "tls certfile",
    "tls cafile",
    "ldap server require strong auth",
)


def _samba_version() -> str:
    try:
        out = subprocess.run(["samba", "--version"], capture_output=True, text=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError("Samba is not installed: run `make deps-samba` (apt-get install samba)") from exc
    return out.stdout.strip()


def template_cache_dir(realm: str, domain: str) -> Path:
    """Where the provisioned template for this realm/domain (and this Samba build) is cached."""
    key = f"{TEMPLATE_FORMAT}|{realm.upper()}|{domain.upper()}|{_samba_version()}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"guestsync-samba-template-{digest}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock across processes (two test runs must not provision the same template at once)."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _ensure_template(realm: str, domain: str) -> tuple[Path, dict[str, str]]:
    """The cached provisioned template and its metadata, provisioning it first if needed (~10 s)."""
    cache = template_cache_dir(realm, domain)
    lock = cache.parent / (cache.name + ".lock")
    with _locked(lock):
        ready = cache / TEMPLATE_READY
        if ready.exists():
            return cache / "dc", json.loads(ready.read_text())
        if cache.exists():  # a provision that died half-way
            subprocess.run(["rm", "-rf", str(cache)], check=True)
        cache.mkdir(mode=0o700)
        target = cache / "dc"
        password = new_password(24, avoid=("Administrator",))
        result = subprocess.run(
            [
                "samba-tool", "domain", "provision",
                f"--realm={realm.upper()}",
                f"--domain={domain.upper()}",
                "--server-role=dc",
                "--dns-backend=NONE",
                "--use-rfc2307",
                f"--adminpass={password}",
                f"--targetdir={target}",
                "--host-name=dc1",
                "--option=interfaces = 127.0.0.1/8",
                "--option=bind interfaces only = yes",
                "--option=server services = ldap, cldap, kdc",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        (cache / "provision.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise RuntimeError(
                f"samba-tool domain provision failed (exit {result.returncode}):\n{_tail(cache / 'provision.log')}"
            )
        _add_key_credential_link(target, realm, cache / "provision.log")
        meta = {"root": str(target), "admin_password": password, "realm": realm.upper(), "domain": domain.upper()}
        ready.write_text(json.dumps(meta))
        os.chmod(ready, 0o600)
        return target, meta


def _add_key_credential_link(target: Path, realm: str, log_file: Path) -> None:
    """Extend the freshly provisioned schema with msDS-KeyCredentialLink (a 2016 forest has it; see above).
    Two steps: the class can name the attribute only once the schema has been reloaded with it."""
    base_dn = ",".join(f"DC={label}" for label in realm.lower().split("."))
    for step, ldif in enumerate(_KEY_CREDENTIAL_LINK_SCHEMA):
        path = target / f"schema-2016-{step}.ldif"
        path.write_text(ldif.format(base_dn=base_dn))
        result = subprocess.run(
            ["ldbmodify", "-H", f"tdb://{target}/private/sam.ldb", f"--configfile={target}/etc/smb.conf",
             "--option=dsdb:schema update allowed=true", str(path)],
            capture_output=True, text=True, timeout=120,
        )
        path.unlink()
        with log_file.open("a") as log:
            log.write(result.stdout + result.stderr)
        if result.returncode != 0:
            raise RuntimeError(f"adding msDS-KeyCredentialLink to the schema failed (exit {result.returncode}):\n"
                               f"{_tail(log_file)}")


def _strong_password() -> str:
    return new_password(24, avoid=("Administrator",))


@dataclass
class SambaDC:
    """One Samba AD DC with LDAPS on ``listen_ip``:636, its data and logs in ``workdir``."""

    workdir: Path
    realm: str = "CONTOSO.COM"
    domain: str = "CONTOSO"
    admin_password: str = field(default_factory=_strong_password, repr=False)
    listen_ip: str = "127.0.0.1"
    pki: LocalPki | None = None
    #: Samba's services; a DC that another DC joins also needs rpc and drepl (the join replicates over DRSUAPI).
    server_services: str = "ldap, cldap, kdc"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _current_admin_password: str | None = field(default=None, repr=False)

    # --- where things are -------------------------------------------------------------------------------
    @property
    def smb_conf(self) -> Path:
        return self.workdir / "etc" / "smb.conf"

    @property
    def sam_ldb(self) -> Path:
        return self.workdir / "private" / "sam.ldb"

    @property
    def log_file(self) -> Path:
        return self.workdir / "samba.stdout.log"

    @property
    def ldaps_url(self) -> str:
        """The URL clients use: the address we bind to (it is in the certificate as an IP SAN)."""
        return f"ldaps://{self.listen_ip}:{LDAPS_PORT}"

    @property
    def ca_file(self) -> Path:
        if self.pki is None:
            raise RuntimeError("SambaDC.provision() has not run yet")
        return self.pki.ca_file

    @property
    def base_dn(self) -> str:
        return ",".join(f"DC={label}" for label in self.realm.lower().split("."))

    @property
    def admin_dn(self) -> str:
        return f"CN=Administrator,CN=Users,{self.base_dn}"

    # --- lifecycle --------------------------------------------------------------------------------------
    def provision(self) -> SambaDC:
        """Copy the cached template into ``workdir`` and write its smb.conf (TLS, address, paths, logs)."""
        template, meta = _ensure_template(self.realm, self.domain)
        self.workdir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", f"{template}/.", f"{self.workdir}/"], check=True)
        if self.pki is None:
            self.pki = create_local_pki(
                self.workdir / "tls", ("localhost", f"dc1.{self.realm.lower()}"), (self.listen_ip,)
            )
        (self.workdir / "run").mkdir(exist_ok=True)
        self._write_smb_conf(meta["root"])
        self._current_admin_password = meta["admin_password"]
        return self

    def _write_smb_conf(self, template_root: str) -> None:
        """Provision wrote absolute paths of the template: point them at our copy and add our settings."""
        root = str(self.workdir)
        text = self.smb_conf.read_text().replace(template_root, root)
        own = {k.lower() for k in _OWN_KEYS}
        kept = [
            line
            for line in text.splitlines()
            if line.split("=", 1)[0].strip().lower() not in own or "=" not in line
        ]
        assert self.pki is not None
        settings = {
            "interfaces": f"{self.listen_ip}/8",  # the /8 form binds exactly this address on lo
            "bind interfaces only": "yes",
            "server services": self.server_services,
            "tls enabled": "yes",
            "tls keyfile": str(self.pki.key_file),
            "tls certfile": str(self.pki.cert_file),
            "tls cafile": str(self.pki.ca_file),
            # Windows AD takes a SASL GSSAPI bind over LDAPS without a security layer (and refuses sealing inside
            # TLS); Samba asks for sign or seal unless told this. ldap3 offers no security layer (AD_BIND_METHOD=
            # kerberos binds over LDAPS only, with channel binding).
            "ldap server require strong auth": "allow_sasl_over_tls",
            "log file": f"{root}/log.%m",
            "log level": "1",
            "logging": "file",
            "max log size": "10000",
            "pid directory": f"{root}/run",
            "ncalrpc dir": f"{root}/run/ncalrpc",
            "ntp signd socket directory": f"{root}/run/ntp_signd",
            "winbindd socket directory": f"{root}/run/winbindd",
            "panic action": "",
        }
        out: list[str] = []
        for line in kept:
            out.append(line)
            if line.strip().lower() == "[global]":
                out.extend(f"\t{key} = {value}" for key, value in settings.items())
        self.smb_conf.write_text("\n".join(out) + "\n")

    def _listening(self) -> bool:
        try:
            with socket.create_connection((self.listen_ip, LDAPS_PORT), timeout=0.5):
                return True
        except OSError:
            return False

    def start(self, timeout: float = 60.0) -> SambaDC:
        """Start Samba and wait until LDAPS accepts a TLS bind as Administrator."""
        if self.process is not None and self.process.poll() is None:
            return self
        if self._current_admin_password is None:
            self.provision()
        if self._listening():
            raise RuntimeError(
                f"something already listens on {self.listen_ip}:{LDAPS_PORT}; pick another listen_ip (127.x.y.z)"
            )
        log = self.log_file.open("ab")
        try:
            self.process = subprocess.Popen(
                ["samba", "-i", "-M", "single", "-s", str(self.smb_conf)],
                stdin=subprocess.PIPE,  # Samba exits on EOF here: it cannot outlive us
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as a whole by stop()
                cwd=self.workdir,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        last_error = "no attempt"
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise RuntimeError(f"samba exited early (exit {code}); log {self.log_file}:\n{_tail(self.log_file)}")
            try:
                self._admin_connection(self._current_admin_password).unbind()
                break
            except LDAPException as exc:
                last_error = str(exc)
                if "certificate" in last_error.lower():  # deterministic: waiting will not help
                    self.stop()
                    raise RuntimeError(
                        f"Samba is up but its TLS certificate does not validate for {self.listen_ip} against "
                        f"{self.ca_file}: {last_error}"
                    ) from None
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"Samba LDAPS did not come up in {timeout:.0f} s ({last_error}); see {self.log_file}"
                )
            time.sleep(0.1)
        if self._current_admin_password != self.admin_password:
            self._reset_admin_password()
        return self

    def stop(self) -> None:
        """Stop Samba and everything in its process group."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # stragglers of the group, if any

    def restart(self, timeout: float = 60.0) -> SambaDC:
        """Stop and start again on the same data (tests of reconnects and outages)."""
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> SambaDC:
        if self._current_admin_password is None:
            self.provision()
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- administration (as Administrator over LDAPS) ------------------------------------------------------
    def _admin_connection(self, password: str | None = None) -> ldap3.Connection:
        tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(self.ca_file), version=ssl.PROTOCOL_TLS_CLIENT)
        server = ldap3.Server(self.listen_ip, port=LDAPS_PORT, use_ssl=True, tls=tls, get_info=ldap3.NONE,
                              connect_timeout=2)
        return ldap3.Connection(server, self.admin_dn, password or self.admin_password, auto_bind=True,
                                receive_timeout=30, raise_exceptions=False)

    def admin_connection(self) -> ldap3.Connection:
        """A new connection bound as Administrator (the caller unbinds it)."""
        return self._admin_connection()

    def _reset_admin_password(self) -> None:
        """Every DC gets its own Administrator password, though copies share the template's at first."""
        conn = self._admin_connection(self._current_admin_password)
        try:
            value = f'"{self.admin_password}"'.encode("utf-16-le")
            if not conn.modify(self.admin_dn, {"unicodePwd": [(ldap3.MODIFY_REPLACE, [value])]}):
                raise RuntimeError(f"could not set the Administrator password: {conn.result['message']}")
        finally:
            conn.unbind()
        self._current_admin_password = self.admin_password

    def _check(self, conn: ldap3.Connection, ok: bool, what: str, tolerate: tuple[str, ...] = ()) -> None:
        if not ok and conn.result["description"] not in tolerate:
            raise RuntimeError(f"{what} failed: {conn.result['description']}: {conn.result['message']}")

    def create_ou(self, dn: str) -> str:
        """Create an organizational unit (no error if it exists)."""
        conn = self.admin_connection()
        try:
            self._check(conn, conn.add(dn, "organizationalUnit"), f"creating {dn}", ("entryAlreadyExists",))
        finally:
            conn.unbind()
        return dn

    def create_user(self, name: str, password: str, container: str | None = None,
                    attributes: dict[str, Any] | None = None) -> str:
        """Create an enabled user (CN=name in ``container``, default CN=Users) and return its DN."""
        dn = f"CN={escape_rdn(name)},{container or 'CN=Users,' + self.base_dn}"
        conn = self.admin_connection()
        try:
            values: dict[str, Any] = {
                "sAMAccountName": name,
                "userPrincipalName": f"{name}@{self.realm.lower()}",
                "unicodePwd": f'"{password}"'.encode("utf-16-le"),
                "userAccountControl": 0x200,  # NORMAL_ACCOUNT, enabled
                **(attributes or {}),
            }
            self._check(conn, conn.add(dn, ["top", "person", "organizationalPerson", "user"], values),
                        f"creating user {name}")
        finally:
            conn.unbind()
        return dn

    def object_sid(self, dn: str) -> str:
        conn = self.admin_connection()
        try:
            conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["objectSid"])
            if not conn.entries:
                raise RuntimeError(f"{dn} not found")
            return format_sid(bytes(conn.entries[0].objectSid.raw_values[0]))
        finally:
            conn.unbind()

    def security_descriptor(self, dn: str) -> str:
        """The security descriptor of ``dn`` in SDDL, read from the local sam.ldb (as the system)."""
        result = subprocess.run(
            ["samba-tool", "dsacl", "get", "-H", f"tdb://{self.sam_ldb}", "-s", str(self.smb_conf),
             f"--objectdn={dn}"],
            capture_output=True, text=True, timeout=120,
        )
        sddl = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
        if result.returncode != 0 or not sddl.startswith("O:"):
            raise RuntimeError(f"samba-tool dsacl get on {dn} failed: {result.stderr.strip()[-800:]}")
        return sddl

    def schema_guids(self, names: Sequence[str]) -> dict[str, str]:
        """schemaIDGUID of each attribute or class (by lDAPDisplayName), read from this DC's own schema, so that
        the delegation names exactly what this forest defines (a name it does not define is an error)."""
        schema = f"CN=Schema,CN=Configuration,{self.base_dn}"
        wanted = "".join(f"(lDAPDisplayName={escape_filter_chars(name)})" for name in names)
        conn = self.admin_connection()
        try:
            conn.search(schema, f"(|{wanted})", ldap3.LEVEL, attributes=["lDAPDisplayName", "schemaIDGUID"])
            found = {
                bytes(e["raw_attributes"]["lDAPDisplayName"][0]).decode().lower():
                    str(uuid.UUID(bytes_le=bytes(e["raw_attributes"]["schemaIDGUID"][0])))
                for e in conn.response or [] if e.get("type") == "searchResEntry"
            }
        finally:
            conn.unbind()
        missing = [name for name in names if name.lower() not in found]
        if missing:
            raise RuntimeError(f"not in the schema of {self.realm}: {', '.join(missing)}")
        return {name: found[name.lower()] for name in names}

    def extended_right_guid(self, cn: str) -> str:
        """rightsGuid of an extended right (controlAccessRight ``cn`` in CN=Extended-Rights)."""
        dn = f"CN={escape_rdn(cn)},CN=Extended-Rights,CN=Configuration,{self.base_dn}"
        conn = self.admin_connection()
        try:
            conn.search(dn, "(objectClass=controlAccessRight)", ldap3.BASE, attributes=["rightsGuid"])
            if not conn.entries:
                raise RuntimeError(f"extended right {cn} not found in {self.realm}")
            return bytes(conn.entries[0].rightsGuid.raw_values[0]).decode().lower()
        finally:
            conn.unbind()

    def delegation_sddl(self, trustee_sid: str) -> str:
        """The ACEs ``delegate_user_admin`` adds to an OU (README's dsacls commands, in SDDL)."""
        guids = self.schema_guids(["user", *DELEGATED_WRITE_ATTRIBUTES])
        user = guids.pop("user")
        reset_password = self.extended_right_guid(RESET_PASSWORD_RIGHT)
        return "".join([
            # on the OU: create and delete user objects (also what a move between the OUs needs)
            f"(OA;;CCDC;{user};;{trustee_sid})",
            # on the users below it: read all properties, list, read the security descriptor, delete
            f"(OA;CIIO;RPLCLORCSD;;{user};{trustee_sid})",
            # ... reset the password (adoption sets a fresh one)
            f"(OA;CIIO;CR;{reset_password};{user};{trustee_sid})",
            # ... write exactly the attributes guestsync writes, one ACE each (no property sets)
            *(f"(OA;CIIO;WP;{guid};{user};{trustee_sid})" for guid in guids.values()),
            # ... and the owner (the service account owns what it creates) gets read control only: no implicit
            # WRITE_DAC, with which it could grant itself any other right on its accounts
            f"(OA;CIIO;RC;;{user};{OWNER_RIGHTS_SID})",
        ])

    def delegate_user_admin(self, trustee_sid: str, ou_dn: str) -> None:
        """Grant ``trustee_sid``, on ``ou_dn`` only, what the guest worker needs and nothing more (README's
        dsacls commands): create and delete user objects in the OU; on the users below it read all properties,
        delete, reset the password and write the attributes in DELEGATED_WRITE_ATTRIBUTES, none other (not
        msDS-KeyCredentialLink, altSecurityIdentities, servicePrincipalName, ...); and take the owner's implicit
        right to rewrite the DACL away (OWNER RIGHTS), since the service account owns the accounts it creates.

        Delegated on both the guest and the archive OU, this is also all that archiving and restoring need:
        disabling writes userAccountControl, and moving an account from one OU to the other needs Delete on the
        account (or Delete Child on its OU), Create Child user on the other OU, and write property on its name
        and cn, all of them granted here and nowhere else.
        """
        sddl = self.delegation_sddl(trustee_sid)
        # samba-tool on the local sam.ldb (as the system, like an admin on the DC console): LDAP cannot take
        # SDDL, and this keeps the admin password off command lines.
        result = subprocess.run(
            ["samba-tool", "dsacl", "set", "-H", f"tdb://{self.sam_ldb}", "-s", str(self.smb_conf),
             f"--objectdn={ou_dn}", f"--sddl={sddl}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(f"samba-tool dsacl set on {ou_dn} failed: {result.stderr.strip()[-800:]}")

    # --- a second DC ------------------------------------------------------------------------------------------
    def join_dc(self, workdir: Path, listen_ip: str, name: str = "DC2") -> SambaDC:
        """A second DC of this domain in ``workdir`` on ``listen_ip``: ``samba-tool domain join <realm> DC`` against
        this one (which must run with ``rpc, drepl`` in its server_services), started and returned. It holds a
        full replica as of the join (accounts, OUs, ACLs, passwords). Without DNS (no SRV or CNAME records for
        the DCs' GUID names) the two do not replicate afterwards: writes on one are not seen on the other,
        which is what failover tests want to show anyway (a DC that has not replicated yet)."""
        workdir.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["samba-tool", "domain", "join", self.realm.lower(), "DC", f"--server={self.listen_ip}",
             "-U", f"{self.domain}\\Administrator", f"--realm={self.realm}", f"--workgroup={self.domain}",
             f"--targetdir={workdir}", "--dns-backend=NONE", "--use-kerberos=off",
             f"--option=netbios name = {name}", f"--option=interfaces = {listen_ip}/8",
             "--option=bind interfaces only = yes", "--option=server services = ldap, cldap, kdc"],
            input=f"{self.admin_password}\n", capture_output=True, text=True, timeout=600,
            env={**os.environ, "PASSWD": self.admin_password},
        )
        (workdir / "join.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise RuntimeError(f"samba-tool domain join failed (exit {result.returncode}):\n"
                               f"{_tail(workdir / 'join.log')}")
        other = SambaDC(workdir, realm=self.realm, domain=self.domain, admin_password=self.admin_password,
                        listen_ip=listen_ip)
        other.pki = create_local_pki(workdir / "tls", ("localhost", f"{name.lower()}.{self.realm.lower()}"),
                                     (listen_ip,))
        (workdir / "run").mkdir(exist_ok=True)
        other._write_smb_conf(str(workdir))
        other._current_admin_password = self.admin_password
        return other.start()

    # --- Kerberos ----------------------------------------------------------------------------------------------
    @property
    def host_name(self) -> str:
        """The DC's DNS host name (provisioned as dc1): its SPNs are ldap/<this>, host/<this>, ..."""
        return f"dc1.{self.realm.lower()}"

    def _samba_tool(self, *args: str, what: str) -> str:
        """samba-tool on this DC's own sam.ldb and smb.conf (as the system, like an admin on the DC console)."""
        result = subprocess.run(["samba-tool", *args, "-s", str(self.smb_conf)], capture_output=True, text=True,
                                timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{what} failed: {(result.stderr or result.stdout).strip()[-800:]}")
        return result.stdout

    def export_keytab(self, path: Path, principal: str) -> Path:
        """Write the Kerberos keys of ``principal`` (e.g. svc-guestsync@CONTOSO.COM) to a keytab at ``path``
        (mode 0600), as an admin exports one for the agent's service account."""
        path.unlink(missing_ok=True)
        self._samba_tool("domain", "exportkeytab", str(path), f"--principal={principal}",
                         what=f"exporting the keytab of {principal}")
        os.chmod(path, 0o600)
        return path

    def add_ldap_spn(self, host: str) -> str:
        """Register ``ldap/<host>`` on the DC's computer account (what the DC's LDAPS clients ask a ticket for when
        they name it ``host``, e.g. the loopback address its certificate is issued for). Idempotent."""
        spn = f"ldap/{host}"
        listed = self._samba_tool("spn", "list", "DC1$", "-H", f"tdb://{self.sam_ldb}", what="listing SPNs")
        if spn.lower() not in listed.lower():
            self._samba_tool("spn", "add", spn, "DC1$", "-H", f"tdb://{self.sam_ldb}", what=f"adding SPN {spn}")
        return spn

    def write_krb5_conf(self, path: Path) -> Path:
        """A krb5.conf of its own (KRB5_CONFIG) with this DC as the KDC of its realm, over TCP, no DNS lookups and
        no host name canonicalisation (the service principal is ldap/<the host in AD_SERVER>, as written)."""
        path.write_text(
            "[libdefaults]\n"
            f"    default_realm = {self.realm}\n"
            "    dns_lookup_kdc = false\n    dns_lookup_realm = false\n"
            "    dns_canonicalize_hostname = false\n    rdns = false\n"
            "    udp_preference_limit = 1\n    forwardable = true\n"
            "[realms]\n"
            f"    {self.realm} = {{\n        kdc = {self.listen_ip}:88\n    }}\n"
            "[domain_realm]\n"
            f"    .{self.realm.lower()} = {self.realm}\n    {self.realm.lower()} = {self.realm}\n"
        )
        return path

    def create_service_account(self, name: str, password: str, ou_dn: str | Sequence[str]) -> str:
        """A least-privilege service account: a plain user with rights delegated on ``ou_dn`` (one or several
        OUs) only. Returns its DN (the bind user)."""
        dn = self.create_user(name, password, attributes={"description": "guestsync AD worker (delegated)"})
        sid = self.object_sid(dn)
        for ou in [ou_dn] if isinstance(ou_dn, str) else list(ou_dn):
            self.delegate_user_admin(sid, ou)
        return dn


def random_loopback_ip() -> str:
    """A 127.x.y.z that is neither 127.0.0.0/16 (127.0.0.1, Debian's 127.0.1.1) nor a network/broadcast."""
    rng = random.SystemRandom()
    return f"127.{rng.randint(1, 254)}.{rng.randint(0, 255)}.{rng.randint(2, 254)}"
