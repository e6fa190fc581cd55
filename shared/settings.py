"""Settings from the environment (app settings in Azure, ``local.settings.json`` or the shell locally).

Every setting is documented in docs/configuration.md and set in ``infra/``. Secrets come from the
environment only (in Azure: Key Vault references); none has a default.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

from shared.core.ad_rules import normalise_dns_name
from shared.core.domain import ConfigurationError, is_guid

EMAIL_RE = re.compile(r"[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>]+")
DEFAULT_CHANGE_QUEUE = "guestsync-changes"
DEFAULT_EXPORT_QUEUE = "guestsync-exports"
DEFAULT_STATE_TABLE = "guestsync"
#: The export worker's LDAP connections: enough for one guest's searches to overlap another's add; more only
#: adds load on the DC (every connection is a bind as the service account).
DEFAULT_LDAP_CONNECTIONS = 8
MAX_LDAP_CONNECTIONS = 32

#: App settings that trigger bindings refer to as %NAME%; the host needs them set (infra/ sets them),
#: the local runner fills in these defaults when they are absent.
BINDING_DEFAULTS: dict[str, str] = {
    "GUESTSYNC_CHANGE_QUEUE": DEFAULT_CHANGE_QUEUE,
    "GUESTSYNC_EXPORT_QUEUE": DEFAULT_EXPORT_QUEUE,
    "GUESTSYNC_SUBSCRIPTION_SCHEDULE": "0 0 */6 * * *",
    "GUESTSYNC_RECONCILE_SCHEDULE": "0 30 * * * *",
    "GUESTSYNC_ALERT_SCHEDULE": "0 */5 * * * *",
}

DEPROVISION_ACTIONS = ("archive", "none")
GRAPH_AUTH_MODES = ("managed_identity", "client_secret", "certificate")
MAIL_MODES = ("none", "graph", "smtp")
SMTP_SECURITY = ("starttls", "tls", "none")


@dataclass(frozen=True)
class Cloud:
    """A national cloud: where Graph and sign-in live (Graph docs, 'National cloud deployments')."""

    graph_endpoint: str
    authority_host: str

    @property
    def scope(self) -> str:
        return self.graph_endpoint.rsplit("/", 1)[0] + "/.default"


CLOUDS: dict[str, Cloud] = {
    "global": Cloud("https://graph.microsoft.com/v1.0", "https://login.microsoftonline.com"),
    "usgov": Cloud("https://graph.microsoft.us/v1.0", "https://login.microsoftonline.us"),  # GCC High
    "usgovdod": Cloud("https://dod-graph.microsoft.us/v1.0", "https://login.microsoftonline.us"),
    "china": Cloud("https://microsoftgraph.chinacloudapi.cn/v1.0", "https://login.chinacloudapi.cn"),  # 21Vianet
}
STORAGE_SUFFIX = {"global": "core.windows.net", "usgov": "core.usgovcloudapi.net",
                  "usgovdod": "core.usgovcloudapi.net", "china": "core.chinacloudapi.cn"}


@dataclass(frozen=True)
class GraphSettings:
    """How to reach Microsoft Graph and who we are there."""

    endpoint: str = "https://graph.microsoft.com/v1.0"
    auth: str = "managed_identity"  # managed_identity | client_secret | certificate
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    certificate_path: str | None = None  # PEM (certificate + private key) or PFX file
    certificate_data: bytes | None = field(default=None, repr=False)  # the same, from Key Vault (base64 setting)
    certificate_password: str | None = field(default=None, repr=False)
    cloud: str = "global"
    authority_host: str = "https://login.microsoftonline.com"
    scopes: tuple[str, ...] = ("https://graph.microsoft.com/.default",)
    ca_file: str | None = None  # extra CA bundle for Graph and sign-in (TLS-inspecting proxy, simulator)


@dataclass(frozen=True)
class DirectorySettings:
    """How to reach on-premises AD and where guests live there."""

    #: AD_SERVER: ldaps://dc1.contoso.com[:636], several of them (comma or space separated, tried in order), or
    #: dns:contoso.com (the domain's DCs from DNS SRV records); see ``parse_ad_server``.
    server: str
    bind_user: str  # password: DN or UPN of the service account; kerberos: its principal (svc@REALM), or "" (own)
    bind_password: str = field(repr=False)
    guest_ou: str  # OU=B2BGuest,DC=contoso,DC=com
    ca_file: str | None = None  # PEM bundle that signed the DC certificate; None = system store
    validate_certificate: bool = True
    connect_timeout: float = 10.0
    connections: int = DEFAULT_LDAP_CONNECTIONS  # LDAP connections the export worker may hold at once
    #: HMAC keys of the ownership mark (GUESTSYNC_OWNERSHIP_KEY, then GUESTSYNC_OWNERSHIP_KEY_PREVIOUS): new marks
    #: use the first, marks under either are recognised (rotation).
    ownership_keys: tuple[str, ...] = field(default=(), repr=False)
    bind_method: str = "password"  # password (simple bind) | kerberos (SASL GSSAPI over LDAPS)
    keytab: str | None = None  # kerberos on Linux: the service account's keytab (AD_KEYTAB)


#: LDAPS is always port 636 for a DC found through DNS (its SRV record names the LDAP port, 389).
LDAPS_PORT = 636
BIND_METHODS = ("password", "kerberos")
_DNS_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


@dataclass(frozen=True)
class DomainController:
    """One DC to try: the host name that its certificate (and its Kerberos SPN ldap/<host>) must match."""

    host: str
    port: int = LDAPS_PORT

    @property
    def url(self) -> str:
        return f"ldaps://{self.host}:{self.port}"


@dataclass(frozen=True)
class AdServer:
    """AD_SERVER parsed: a fixed list of DCs (tried in the order written) or a domain located through DNS."""

    controllers: tuple[DomainController, ...] = ()
    srv_domain: str | None = None  # dns:<domain>: the DCs of _ldap._tcp.dc._msdcs.<domain>


def parse_ad_server(value: str) -> AdServer:
    """``ldaps://dc1.contoso.com, ldaps://dc2.contoso.com:636`` (comma or space separated) or ``dns:contoso.com``.
    Plain ldap:// is refused: passwords (and the initial password of every account) only ever travel over TLS."""
    text = value.strip()
    if text.lower().startswith("dns:"):
        domain = text[4:].strip().strip("/").rstrip(".").lower()
        if not domain or "." not in domain or not all(_DNS_LABEL.fullmatch(p) for p in domain.split(".")):
            raise ConfigurationError(f"setting AD_SERVER: {text!r} does not name a DNS domain (write dns:contoso.com)")
        return AdServer(srv_domain=domain)
    controllers: list[DomainController] = []
    for item in re.split(r"[\s,]+", text):
        if not item:
            continue
        if not item.lower().startswith("ldaps://"):
            raise ConfigurationError(
                f"setting AD_SERVER: {item!r} is not an ldaps:// URL (passwords are only ever sent over TLS); write "
                "ldaps://dc1.contoso.com, several of them separated by commas, or dns:contoso.com"
            )
        url = urlsplit(item)
        try:
            port = url.port or LDAPS_PORT
        except ValueError:
            raise ConfigurationError(f"setting AD_SERVER: {item!r} has an invalid port") from None
        if not url.hostname or url.path.strip("/") or url.query:
            raise ConfigurationError(f"setting AD_SERVER: {item!r} must be ldaps://<host>[:port], nothing more")
        controllers.append(DomainController(url.hostname, port))
    if not controllers:
        raise ConfigurationError("setting AD_SERVER is empty")
    return AdServer(controllers=tuple(dict.fromkeys(controllers)))


@dataclass(frozen=True)
class WebhookSettings:
    client_states: tuple[str, ...] = field(default=(), repr=False)  # current first, then the previous one
    tenant_id: str | None = None  # when set, notifications from another tenant are refused
    notification_url: str | None = None  # public URL of POST /api/graph/notifications
    lifecycle_url: str | None = None  # public URL of POST /api/graph/lifecycle
    #: The Functions key both endpoints demand (auth level FUNCTION); the subscription URLs carry it as ?code=.
    function_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class DeprovisioningSettings:
    """What happens to a guest's account when the guest leaves scope, and the mass-change breaker."""

    deprovision: str = "archive"  # archive (disable + move to archive_ou) | none
    archive_ou: str | None = None  # OU=B2BGuestArchive,DC=contoso,DC=com
    delete_after_days: int | None = None  # delete archived accounts after this many days; None = never
    scope_group_id: str | None = None  # only transitive members of this Entra group are in scope
    breaker_threshold: int = 25  # disables + deletes allowed in one rolling window before holding
    breaker_window_minutes: int = 60
    #: Until when an unmarked CN=<uid> (a MIM-era account) is adopted without an operator's `guestsync adopt`.
    adopt_until: datetime | None = None


@dataclass(frozen=True)
class StorageSettings:
    """The storage account of the queues and the state table: a connection string (Azurite, an agent with a
    key) or keyless, identity-based (the host's ``AzureWebJobsStorage__*`` settings)."""

    connection_string: str | None = field(default=None, repr=False)
    queue_url: str | None = None
    table_url: str | None = None
    credential: str = "managedidentity"  # managedidentity | clientsecret | clientcertificate (an on-premises agent)
    client_id: str | None = None
    tenant_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    certificate_path: str | None = None  # clientcertificate: PEM (certificate + private key) or PFX file
    certificate_password: str | None = field(default=None, repr=False)  # of a protected PFX or key
    authority_host: str = "https://login.microsoftonline.com"  # sign-in of the service principal (GRAPH_CLOUD)


@dataclass(frozen=True)
class MailSettings:
    """Where operator alerts go (errors, held deprovisionings, poison messages)."""

    mode: str = "none"  # none | graph (sendMail as a mailbox) | smtp
    to: tuple[str, ...] = ()
    sender: str | None = None  # graph: the mailbox (UPN or id) that sends; smtp: the From address
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_security: str = "starttls"  # starttls | tls | none
    smtp_username: str | None = None
    smtp_password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Settings:
    storage_connection: str | None = field(default=None, repr=False)
    change_queue: str = DEFAULT_CHANGE_QUEUE
    export_queue: str = DEFAULT_EXPORT_QUEUE
    state_table: str = DEFAULT_STATE_TABLE
    worker_mode: str = "agent"  # agent (on-premises `guestsync worker`) | function (queue trigger in Azure)
    graph: GraphSettings = field(default_factory=GraphSettings)
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    directory: DirectorySettings | None = None
    subscription_minutes: int = 41_760 - 60  # Graph allows at most 41,760 minutes for users
    deprovisioning: DeprovisioningSettings = field(default_factory=DeprovisioningSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    mail: MailSettings = field(default_factory=MailSettings)
    app_insights: str | None = field(default=None, repr=False)  # APPLICATIONINSIGHTS_CONNECTION_STRING
    #: UPN suffixes allowed for guests besides the tenant's initial domain (GUESTSYNC_UPN_SUFFIXES), lower case.
    upn_suffixes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.storage_connection and not self.storage.connection_string:
            object.__setattr__(self, "storage", StorageSettings(connection_string=self.storage_connection))
    @property
    def export_poison_queue(self) -> str:
        return f"{self.export_queue}-poison"

    @property
    def change_poison_queue(self) -> str:
        return f"{self.change_queue}-poison"


def _get(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip()


def _require(env: Mapping[str, str], name: str, why: str) -> str:
    value = _get(env, name)
    if value is None:
        raise ConfigurationError(f"setting {name} is required ({why})")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = _get(env, name)
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"setting {name} must be true or false, not {value!r}")


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = (_get(env, name, default) or default).lower()
    if value not in allowed:
        raise ConfigurationError(f"setting {name} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def _int(env: Mapping[str, str], name: str, default: int | None, minimum: int, maximum: int) -> int | None:
    value = _get(env, name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigurationError(f"setting {name} must be a whole number, not {value!r}") from None
    if not minimum <= number <= maximum:
        raise ConfigurationError(f"setting {name} must be between {minimum} and {maximum}, not {number}")
    return number


def load_deprovisioning_settings(env: Mapping[str, str], *, need_archive: bool) -> DeprovisioningSettings:
    """Deprovisioning policy, scoping group and breaker; ``need_archive`` where the AD worker runs."""
    deprovision = _choice(env, "GUESTSYNC_DEPROVISION", "archive", DEPROVISION_ACTIONS)
    archive_ou = _get(env, "AD_ARCHIVE_OU")
    if deprovision == "archive" and need_archive and archive_ou is None:
        raise ConfigurationError(
            "setting AD_ARCHIVE_OU is required when GUESTSYNC_DEPROVISION=archive (the default): the OU that "
            "disabled guest accounts are moved to, e.g. OU=B2BGuestArchive,DC=contoso,DC=com"
        )
    delete_after = _int(env, "GUESTSYNC_DELETE_AFTER_DAYS", None, 0, 36_500)
    if delete_after is not None and deprovision != "archive":
        raise ConfigurationError("setting GUESTSYNC_DELETE_AFTER_DAYS needs GUESTSYNC_DEPROVISION=archive")
    group = _get(env, "GUESTSYNC_SCOPE_GROUP_ID")
    if group is not None and not is_guid(group):
        raise ConfigurationError(f"setting GUESTSYNC_SCOPE_GROUP_ID must be an Entra group object id, not {group!r}")
    return DeprovisioningSettings(
        deprovision=deprovision,
        archive_ou=archive_ou,
        delete_after_days=delete_after,
        scope_group_id=group.lower() if group else None,
        breaker_threshold=_int(env, "GUESTSYNC_BREAKER_THRESHOLD", 25, 1, 1_000_000) or 25,
        breaker_window_minutes=_int(env, "GUESTSYNC_BREAKER_WINDOW_MINUTES", 60, 1, 525_600) or 60,
        adopt_until=_instant(_get(env, "GUESTSYNC_ADOPT_UNTIL"), "GUESTSYNC_ADOPT_UNTIL"),
    )


def _instant(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigurationError(f"setting {name} must be an ISO 8601 date and time, e.g. 2026-12-31T18:00:00Z, "
                                 f"not {value!r}") from None
    if when.tzinfo is None:
        raise ConfigurationError(f"setting {name} needs a time zone (e.g. 2026-12-31T18:00:00Z), not {value!r}")
    return when


#: The shortest ownership key accepted: 256 bits of randomness as 32 or more characters (e.g. a base64 secret).
MIN_OWNERSHIP_KEY = 32


def _ownership_keys(env: Mapping[str, str]) -> tuple[str, ...]:
    keys = [_require(env, "GUESTSYNC_OWNERSHIP_KEY",
                     "the secret that marks the AD accounts guestsync creates; from Key Vault, e.g. 48 random "
                     "base64 characters (openssl rand -base64 36)")]
    previous = _get(env, "GUESTSYNC_OWNERSHIP_KEY_PREVIOUS")
    if previous is not None:
        keys.append(previous)
    for name, key in zip(("GUESTSYNC_OWNERSHIP_KEY", "GUESTSYNC_OWNERSHIP_KEY_PREVIOUS"), keys, strict=False):
        if len(key) < MIN_OWNERSHIP_KEY:
            raise ConfigurationError(f"setting {name} must be at least {MIN_OWNERSHIP_KEY} characters of random "
                                     "secret (e.g. openssl rand -base64 36)")
    return tuple(keys)


def load_directory_settings(env: Mapping[str, str]) -> DirectorySettings:
    server = _require(env, "AD_SERVER", "the LDAPS URL of a domain controller, e.g. ldaps://dc1.contoso.com, several "
                                        "of them, or dns:contoso.com")
    parse_ad_server(server)
    try:
        timeout = float(_get(env, "AD_CONNECT_TIMEOUT", "10") or "10")
    except ValueError as exc:
        raise ConfigurationError("setting AD_CONNECT_TIMEOUT must be a number of seconds") from exc
    method = _choice(env, "AD_BIND_METHOD", "password", BIND_METHODS)
    keytab = _get(env, "AD_KEYTAB")
    if method == "password":
        bind_user = _require(env, "AD_BIND_USER", "the service account that owns the guest OU")
        password = _require(env, "AD_BIND_PASSWORD", "password of AD_BIND_USER, from Key Vault")
        if keytab is not None:
            raise ConfigurationError("setting AD_KEYTAB is only used with AD_BIND_METHOD=kerberos; remove it")
    else:
        # Linux: the principal in AD_KEYTAB (both set), or the tickets of the process (kinit, KRB5CCNAME); Windows:
        # the service's own identity (a gMSA), neither set.
        bind_user = _get(env, "AD_BIND_USER") or ""
        password = ""
        if _get(env, "AD_BIND_PASSWORD") is not None:
            raise ConfigurationError("setting AD_BIND_PASSWORD is not used with AD_BIND_METHOD=kerberos; remove it so "
                                     "no unused secret lingers")
        if keytab is not None:
            if not bind_user or "@" not in bind_user or "=" in bind_user:
                raise ConfigurationError("setting AD_BIND_USER must be the Kerberos principal in AD_KEYTAB (e.g. "
                                         "svc-guestsync@CONTOSO.COM) when AD_BIND_METHOD=kerberos")
            if not os.path.isfile(keytab):
                raise ConfigurationError(f"setting AD_KEYTAB: no such file {keytab!r}")
    return DirectorySettings(
        server=server,
        bind_user=bind_user,
        bind_password=password,
        guest_ou=_require(env, "AD_GUEST_OU", "DN of the OU for guest accounts, e.g. OU=B2BGuest,DC=contoso,DC=com"),
        ca_file=_get(env, "AD_CA_FILE"),
        validate_certificate=_bool(env, "AD_VALIDATE_CERTIFICATE", True),
        connect_timeout=timeout,
        connections=_int(env, "GUESTSYNC_LDAP_CONNECTIONS", DEFAULT_LDAP_CONNECTIONS, 1, MAX_LDAP_CONNECTIONS)
        or DEFAULT_LDAP_CONNECTIONS,
        ownership_keys=_ownership_keys(env),
        bind_method=method,
        keytab=keytab,
    )


def _storage_cloud(url: str) -> str:
    """The cloud of a storage endpoint, from its host name (the commercial cloud for any other host)."""
    host = (urlsplit(url).hostname or "").lower()
    return next((name for name, suffix in STORAGE_SUFFIX.items() if host.endswith("." + suffix)), "global")


def load_storage_settings(env: Mapping[str, str]) -> StorageSettings:
    """``AzureWebJobsStorage`` (a connection string), else the keyless ``AzureWebJobsStorage__*`` settings.
    The storage account's cloud is its endpoints', never GRAPH_CLOUD's: a GCC High tenant's app may run in
    commercial Azure (infra passes both endpoints; an account name alone means the commercial cloud, as it does
    for the Functions host)."""
    connection = _get(env, "AzureWebJobsStorage")
    if connection is not None:
        return StorageSettings(connection_string=connection)
    prefix = "AzureWebJobsStorage__"
    account = _get(env, prefix + "accountName")
    suffix = STORAGE_SUFFIX["global"]
    queue_url = _get(env, prefix + "queueServiceUri") or (f"https://{account}.queue.{suffix}" if account else None)
    table_url = _get(env, prefix + "tableServiceUri") or (f"https://{account}.table.{suffix}" if account else None)
    if queue_url is None or table_url is None:
        raise ConfigurationError(
            "setting AzureWebJobsStorage is required: a connection string, or keyless "
            "AzureWebJobsStorage__accountName (or AzureWebJobsStorage__queueServiceUri and __tableServiceUri) "
            "with AzureWebJobsStorage__credential=managedidentity"
        )
    credential = (_get(env, prefix + "credential", "managedidentity") or "managedidentity").lower()
    cloud = _storage_cloud(table_url)
    storage = StorageSettings(
        queue_url=queue_url.rstrip("/"), table_url=table_url.rstrip("/"), credential=credential,
        client_id=_get(env, prefix + "clientId"),
        tenant_id=_get(env, prefix + "tenantId"), client_secret=_get(env, prefix + "clientSecret"),
        certificate_path=_get(env, prefix + "clientCertificatePath"),
        certificate_password=_get(env, prefix + "clientCertificatePassword"),
        authority_host=(_get(env, "GRAPH_AUTHORITY_HOST", CLOUDS[cloud].authority_host)
                        or CLOUDS[cloud].authority_host).rstrip("/"),
    )
    needs = {"clientsecret": (("tenantId", storage.tenant_id), ("clientId", storage.client_id),
                              ("clientSecret", storage.client_secret)),
             "clientcertificate": (("tenantId", storage.tenant_id), ("clientId", storage.client_id),
                                   ("clientCertificatePath", storage.certificate_path))}
    if credential not in ("managedidentity", *needs):
        raise ConfigurationError(f"setting {prefix}credential must be managedidentity, clientsecret or "
                                 f"clientcertificate, not {credential!r}")
    for name, value in needs.get(credential, ()):
        if not value:
            raise ConfigurationError(f"setting {prefix}{name} is required when {prefix}credential={credential}")
    if credential != "clientsecret" and storage.client_secret is not None:
        raise ConfigurationError(f"setting {prefix}clientSecret is only used with {prefix}credential=clientsecret; "
                                 "remove it so no unused secret lingers")
    if credential != "clientcertificate" and storage.certificate_path is not None:
        raise ConfigurationError(f"setting {prefix}clientCertificatePath is only used with "
                                 f"{prefix}credential=clientcertificate")
    if storage.certificate_path is not None and not os.path.isfile(storage.certificate_path):
        raise ConfigurationError(f"setting {prefix}clientCertificatePath: no such file {storage.certificate_path!r}")
    return storage


def load_graph_settings(env: Mapping[str, str]) -> GraphSettings:
    """Identity (managed identity, client secret, certificate) and cloud of the Graph connection."""
    cloud_name = _choice(env, "GRAPH_CLOUD", "global", tuple(CLOUDS))
    cloud = CLOUDS[cloud_name]
    graph_auth = _choice(env, "GRAPH_AUTH", "managed_identity", GRAPH_AUTH_MODES)
    certificate_data: bytes | None = None
    encoded = _get(env, "GRAPH_CLIENT_CERTIFICATE")
    if encoded is not None:
        try:
            certificate_data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigurationError("setting GRAPH_CLIENT_CERTIFICATE must be a base64 PFX or PEM (as Key Vault "
                                     "returns a certificate's secret)") from None
    endpoint = _get(env, "GRAPH_ENDPOINT", cloud.graph_endpoint) or cloud.graph_endpoint
    graph = GraphSettings(
        endpoint=endpoint.rstrip("/"),
        auth=graph_auth,
        tenant_id=_get(env, "GRAPH_TENANT_ID"),
        client_id=_get(env, "GRAPH_CLIENT_ID"),
        client_secret=_get(env, "GRAPH_CLIENT_SECRET"),
        certificate_path=_get(env, "GRAPH_CLIENT_CERTIFICATE_PATH"),
        certificate_data=certificate_data,
        certificate_password=_get(env, "GRAPH_CLIENT_CERTIFICATE_PASSWORD"),
        cloud=cloud_name,
        authority_host=(_get(env, "GRAPH_AUTHORITY_HOST", cloud.authority_host) or cloud.authority_host).rstrip("/"),
        scopes=(_get(env, "GRAPH_SCOPE", cloud.scope) or cloud.scope,),
        ca_file=_get(env, "GRAPH_CA_FILE"),
    )
    if not graph.endpoint.lower().startswith("https://"):
        raise ConfigurationError(f"setting GRAPH_ENDPOINT must be an https:// URL, not {graph.endpoint!r}")
    needs = {"client_secret": ("GRAPH_TENANT_ID", "GRAPH_CLIENT_ID", "GRAPH_CLIENT_SECRET"),
             "certificate": ("GRAPH_TENANT_ID", "GRAPH_CLIENT_ID")}.get(graph_auth, ())
    values = {"GRAPH_TENANT_ID": graph.tenant_id, "GRAPH_CLIENT_ID": graph.client_id,
              "GRAPH_CLIENT_SECRET": graph.client_secret}
    for name in needs:
        if not values[name]:
            raise ConfigurationError(f"setting {name} is required when GRAPH_AUTH={graph_auth}")
    if graph_auth == "certificate":
        if (graph.certificate_path is None) == (graph.certificate_data is None):
            raise ConfigurationError("GRAPH_AUTH=certificate needs exactly one of the settings "
                                     "GRAPH_CLIENT_CERTIFICATE_PATH (a file) or GRAPH_CLIENT_CERTIFICATE (base64)")
        if graph.certificate_path is not None and not os.path.isfile(graph.certificate_path):
            raise ConfigurationError(f"setting GRAPH_CLIENT_CERTIFICATE_PATH: no such file {graph.certificate_path!r}")
    else:
        for name in ("GRAPH_CLIENT_CERTIFICATE", "GRAPH_CLIENT_CERTIFICATE_PATH"):
            if _get(env, name) is not None:
                raise ConfigurationError(f"setting {name} is only used with GRAPH_AUTH=certificate "
                                         f"(GRAPH_AUTH is {graph_auth}); remove one of them")
    if graph_auth != "client_secret" and graph.client_secret is not None:
        raise ConfigurationError(f"setting GRAPH_CLIENT_SECRET is only used with GRAPH_AUTH=client_secret "
                                 f"(GRAPH_AUTH is {graph_auth}); remove it so no unused secret lingers")
    return graph


def load_upn_suffixes(env: Mapping[str, str]) -> tuple[str, ...]:
    """GUESTSYNC_UPN_SUFFIXES: comma-separated DNS names a guest's UPN may end in besides the tenant's initial
    domain (for guests moved to a verified custom domain in Entra)."""
    suffixes: list[str] = []
    for item in (_get(env, "GUESTSYNC_UPN_SUFFIXES") or "").split(","):
        if not item.strip():
            continue
        name = normalise_dns_name(item.strip().removeprefix("@"))
        if name is None or "." not in name:
            raise ConfigurationError(f"setting GUESTSYNC_UPN_SUFFIXES: {item.strip()!r} is not a DNS domain name "
                                     "(write them like fabrikam.com,contoso.onmicrosoft.com)")
        suffixes.append(name)
    return tuple(dict.fromkeys(suffixes))


def load_mail_settings(env: Mapping[str, str]) -> MailSettings:
    mode = _choice(env, "GUESTSYNC_MAIL", "none", MAIL_MODES)
    to = tuple(a.strip() for a in (_get(env, "GUESTSYNC_MAIL_TO") or "").split(",") if a.strip())
    if mode == "none":
        return MailSettings()
    if not to:
        raise ConfigurationError(f"setting GUESTSYNC_MAIL_TO is required when GUESTSYNC_MAIL={mode} "
                                 "(comma-separated admin addresses)")
    for address in to:
        if not EMAIL_RE.fullmatch(address):
            raise ConfigurationError(f"setting GUESTSYNC_MAIL_TO: {address!r} is not an email address")
    sender = _require(env, "GUESTSYNC_MAIL_FROM", "graph: the mailbox that sends (UPN); smtp: the From address")
    if mode == "graph":
        return MailSettings(mode=mode, to=to, sender=sender)
    security = _choice(env, "SMTP_SECURITY", "starttls", SMTP_SECURITY)
    port = _int(env, "SMTP_PORT", {"starttls": 587, "tls": 465, "none": 25}[security], 1, 65_535)
    username, password = _get(env, "SMTP_USERNAME"), _get(env, "SMTP_PASSWORD")
    if (username is None) != (password is None):
        raise ConfigurationError("settings SMTP_USERNAME and SMTP_PASSWORD go together: set both or neither")
    if password is not None and security == "none":
        raise ConfigurationError("setting SMTP_PASSWORD needs SMTP_SECURITY=starttls or tls: a password is never "
                                 "sent in clear text")
    return MailSettings(mode=mode, to=to, sender=sender,
                        smtp_host=_require(env, "SMTP_HOST", "the SMTP relay, e.g. smtp.contoso.com"),
                        smtp_port=port or 587, smtp_security=security, smtp_username=username,
                        smtp_password=password)


def log_format(env: Mapping[str, str] | None = None) -> str:
    """``text`` (default) or ``json`` lines with guest and correlation id, for the on-premises agent."""
    return _choice(os.environ if env is None else env, "GUESTSYNC_LOG_FORMAT", "text", ("text", "json"))


#: How an App Service Key Vault reference looks when the platform could not resolve it: the literal reaches us.
KEY_VAULT_REFERENCE = "@microsoft.keyvault("


def _refuse_key_vault_references(env: Mapping[str, str]) -> None:
    for name, value in sorted(env.items()):
        if value.strip().lower().startswith(KEY_VAULT_REFERENCE):
            raise ConfigurationError(f"setting {name} holds an unresolved Key Vault reference: the app's identity "
                                     "cannot read the secret or the reference is wrong (see the app's Environment "
                                     "variables blade: the reference's status says which)")


def apply_local_settings(path: str = "local.settings.json", environ: MutableMapping[str, str] | None = None) -> int:
    """The Functions convention for a local run: the ``Values`` of ``local.settings.json`` in the current
    directory become settings, and what the environment already has wins. The number of settings taken."""
    environ = os.environ if environ is None else environ
    try:
        with open(path, encoding="utf-8-sig") as file:
            document = json.load(file)
    except FileNotFoundError:
        return 0
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"{path} cannot be read as JSON ({exc}): fix the file or remove it") from None
    if not isinstance(document, dict) or not isinstance(document.get("Values", {}), dict):
        raise ConfigurationError(f"{path} must be an object with a \"Values\" object of settings")
    if document.get("IsEncrypted"):
        raise ConfigurationError(f"{path} is encrypted (IsEncrypted: true): decrypt it with `func settings decrypt`")
    taken = 0
    for name, value in document.get("Values", {}).items():
        if not isinstance(value, str | int | float | bool):
            raise ConfigurationError(f"{path}: Values.{name} must be a string, not {type(value).__name__}")
        if name not in environ:
            environ[name] = str(value).lower() if isinstance(value, bool) else str(value)
            taken += 1
    return taken


def load_settings(env: Mapping[str, str] | None = None, *, need_directory: bool = False) -> Settings:
    """Read and validate every setting; one ConfigurationError names the first bad one."""
    env = os.environ if env is None else env
    graph = load_graph_settings(env)
    _refuse_key_vault_references(env)
    storage = load_storage_settings(env)
    states = tuple(
        s
        for s in (_get(env, "GRAPH_CLIENT_STATE"), _get(env, "GRAPH_CLIENT_STATE_PREVIOUS"))
        if s is not None
    )
    webhook = WebhookSettings(
        client_states=states,
        tenant_id=_get(env, "GRAPH_TENANT_ID"),
        notification_url=_get(env, "GUESTSYNC_NOTIFICATION_URL"),
        lifecycle_url=_get(env, "GUESTSYNC_LIFECYCLE_URL"),
        function_key=_get(env, "GUESTSYNC_WEBHOOK_KEY"),
    )
    worker_mode = _choice(env, "GUESTSYNC_WORKER_MODE", "agent", ("agent", "function"))
    directory = None
    if need_directory or worker_mode == "function" or _get(env, "AD_SERVER"):
        directory = load_directory_settings(env)
    deprovisioning = load_deprovisioning_settings(env, need_archive=directory is not None)
    return Settings(
        storage_connection=storage.connection_string,
        storage=storage,
        mail=load_mail_settings(env),
        app_insights=_get(env, "APPLICATIONINSIGHTS_CONNECTION_STRING"),
        change_queue=_get(env, "GUESTSYNC_CHANGE_QUEUE", DEFAULT_CHANGE_QUEUE) or DEFAULT_CHANGE_QUEUE,
        export_queue=_get(env, "GUESTSYNC_EXPORT_QUEUE", DEFAULT_EXPORT_QUEUE) or DEFAULT_EXPORT_QUEUE,
        state_table=_get(env, "GUESTSYNC_STATE_TABLE", DEFAULT_STATE_TABLE) or DEFAULT_STATE_TABLE,
        worker_mode=worker_mode,
        graph=graph,
        webhook=webhook,
        directory=directory,
        deprovisioning=deprovisioning,
        upn_suffixes=load_upn_suffixes(env),
    )


@dataclass(frozen=True)
class AgentSettings:
    """The on-premises agent's own runtime (``guestsync worker``): message leases, the timer lease, heartbeats,
    log file. None of these apply to the function app."""

    #: How long a received export message stays invisible to other agents; renewed at half while it runs, so a
    #: crashed agent's messages come back after at most this long.
    visibility_seconds: int = 60
    #: The timer lease (reconcile): renewed every third of it; a dead holder's lease is taken over after it.
    lease_seconds: int = 60
    heartbeat_seconds: int = 60
    #: Longest back-off of an export released because the directory is unreachable (it doubles up to this).
    outage_backoff_seconds: int = 60
    #: How long a stop waits for exports in flight before it exits (their messages come back after the lease).
    stop_seconds: int = 60
    #: Wait between two receives (none after a full batch: a burst): what an idle agent costs (1000 / this
    #: receives a second) against how long an isolated change waits for it (half of this on average).
    idle_poll_ms: int = 250
    reconcile_schedule: str = BINDING_DEFAULTS["GUESTSYNC_RECONCILE_SCHEDULE"]
    log_file: str | None = None  # rotating log file (10 MB x 5)


def load_agent_settings(env: Mapping[str, str] | None = None) -> AgentSettings:
    """The agent runtime's settings (GUESTSYNC_AGENT_*, GUESTSYNC_LOG_FILE, GUESTSYNC_RECONCILE_SCHEDULE)."""
    env = os.environ if env is None else env
    defaults = AgentSettings()
    return AgentSettings(
        visibility_seconds=_int(env, "GUESTSYNC_AGENT_VISIBILITY_SECONDS", defaults.visibility_seconds, 2, 3600)
        or defaults.visibility_seconds,
        lease_seconds=_int(env, "GUESTSYNC_AGENT_LEASE_SECONDS", defaults.lease_seconds, 3, 900)
        or defaults.lease_seconds,
        heartbeat_seconds=_int(env, "GUESTSYNC_AGENT_HEARTBEAT_SECONDS", defaults.heartbeat_seconds, 1, 300)
        or defaults.heartbeat_seconds,
        outage_backoff_seconds=_int(env, "GUESTSYNC_AGENT_OUTAGE_BACKOFF_SECONDS", defaults.outage_backoff_seconds,
                                    1, 900) or defaults.outage_backoff_seconds,
        stop_seconds=_int(env, "GUESTSYNC_AGENT_STOP_SECONDS", defaults.stop_seconds, 1, 3600)
        or defaults.stop_seconds,
        idle_poll_ms=_int(env, "GUESTSYNC_AGENT_IDLE_POLL_MS", defaults.idle_poll_ms, 100, 60_000)
        or defaults.idle_poll_ms,
        reconcile_schedule=_get(env, "GUESTSYNC_RECONCILE_SCHEDULE", defaults.reconcile_schedule)
        or defaults.reconcile_schedule,
        log_file=_get(env, "GUESTSYNC_LOG_FILE"),
    )
