"""Settings from the environment (app settings in Azure, ``local.settings.json`` or the shell locally).

Every setting is documented in README.md (Configuration) and set in ``infra/``. Secrets come from the
environment only (in Azure: Key Vault references); none has a default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from shared.domain import ConfigurationError, is_guid

DEFAULT_CHANGE_QUEUE = "guestsync-changes"
DEFAULT_EXPORT_QUEUE = "guestsync-exports"
DEFAULT_STATE_TABLE = "guestsync"

#: App settings that trigger bindings refer to as %NAME%; the host needs them set (infra/ sets them),
#: the local runner fills in these defaults when they are absent.
BINDING_DEFAULTS: dict[str, str] = {
    "GUESTSYNC_CHANGE_QUEUE": DEFAULT_CHANGE_QUEUE,
    "GUESTSYNC_EXPORT_QUEUE": DEFAULT_EXPORT_QUEUE,
    "GUESTSYNC_SUBSCRIPTION_SCHEDULE": "0 0 */6 * * *",
    "GUESTSYNC_RECONCILE_SCHEDULE": "0 30 * * * *",
}

DEPROVISION_ACTIONS = ("archive", "none")


@dataclass(frozen=True)
class GraphSettings:
    """How to reach Microsoft Graph and who we are there."""

    endpoint: str = "https://graph.microsoft.com/v1.0"
    auth: str = "managed_identity"  # managed_identity | client_secret
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    authority_host: str = "https://login.microsoftonline.com"
    scopes: tuple[str, ...] = ("https://graph.microsoft.com/.default",)
    ca_file: str | None = None  # extra CA bundle for Graph and sign-in (TLS-inspecting proxy, simulator)


@dataclass(frozen=True)
class DirectorySettings:
    """How to reach on-premises AD and where guests live there."""

    server: str  # ldaps://dc1.contoso.com[:636]
    bind_user: str
    bind_password: str = field(repr=False)
    guest_ou: str  # OU=B2BGuest,DC=contoso,DC=com
    ca_file: str | None = None  # PEM bundle that signed the DC certificate; None = system store
    validate_certificate: bool = True
    connect_timeout: float = 10.0


@dataclass(frozen=True)
class WebhookSettings:
    client_states: tuple[str, ...] = field(default=(), repr=False)  # current first, then the previous one
    tenant_id: str | None = None  # when set, notifications from another tenant are refused
    notification_url: str | None = None  # public URL of POST /api/graph/notifications
    lifecycle_url: str | None = None  # public URL of POST /api/graph/lifecycle


@dataclass(frozen=True)
class LifecycleSettings:
    """What happens to a guest's account when the guest leaves scope, and the mass-change breaker."""

    deprovision: str = "archive"  # archive (disable + move to archive_ou) | none
    archive_ou: str | None = None  # OU=B2BGuestArchive,DC=contoso,DC=com
    delete_after_days: int | None = None  # delete archived accounts after this many days; None = never
    scope_group_id: str | None = None  # only transitive members of this Entra group are in scope
    breaker_threshold: int = 25  # disables + deletes allowed in one rolling window before holding
    breaker_window_minutes: int = 60


@dataclass(frozen=True)
class Settings:
    storage_connection: str = field(repr=False)
    change_queue: str = DEFAULT_CHANGE_QUEUE
    export_queue: str = DEFAULT_EXPORT_QUEUE
    state_table: str = DEFAULT_STATE_TABLE
    worker_mode: str = "agent"  # agent (on-premises `guestsync worker`) | function (queue trigger in Azure)
    graph: GraphSettings = field(default_factory=GraphSettings)
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    directory: DirectorySettings | None = None
    subscription_minutes: int = 41_760 - 60  # Graph allows at most 41,760 minutes for users
    lifecycle: LifecycleSettings = field(default_factory=LifecycleSettings)

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


def load_lifecycle_settings(env: Mapping[str, str], *, need_archive: bool) -> LifecycleSettings:
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
    return LifecycleSettings(
        deprovision=deprovision,
        archive_ou=archive_ou,
        delete_after_days=delete_after,
        scope_group_id=group.lower() if group else None,
        breaker_threshold=_int(env, "GUESTSYNC_BREAKER_THRESHOLD", 25, 1, 1_000_000) or 25,
        breaker_window_minutes=_int(env, "GUESTSYNC_BREAKER_WINDOW_MINUTES", 60, 1, 525_600) or 60,
    )


def load_directory_settings(env: Mapping[str, str]) -> DirectorySettings:
    server = _require(env, "AD_SERVER", "the LDAPS URL of a domain controller, e.g. ldaps://dc1.contoso.com")
    if not server.lower().startswith("ldaps://"):
        raise ConfigurationError(
            "setting AD_SERVER must be an ldaps:// URL: passwords are only ever sent over TLS"
        )
    try:
        timeout = float(_get(env, "AD_CONNECT_TIMEOUT", "10") or "10")
    except ValueError as exc:
        raise ConfigurationError("setting AD_CONNECT_TIMEOUT must be a number of seconds") from exc
    return DirectorySettings(
        server=server,
        bind_user=_require(env, "AD_BIND_USER", "the service account that owns the guest OU"),
        bind_password=_require(env, "AD_BIND_PASSWORD", "password of AD_BIND_USER, from Key Vault"),
        guest_ou=_require(env, "AD_GUEST_OU", "DN of the OU for guest accounts, e.g. OU=B2BGuest,DC=contoso,DC=com"),
        ca_file=_get(env, "AD_CA_FILE"),
        validate_certificate=_bool(env, "AD_VALIDATE_CERTIFICATE", True),
        connect_timeout=timeout,
    )


def load_settings(env: Mapping[str, str] | None = None, *, need_directory: bool = False) -> Settings:
    """Read and validate every setting; one ConfigurationError names the first bad one."""
    env = os.environ if env is None else env
    storage = _require(env, "AzureWebJobsStorage", "connection string of the storage account for queues and state")
    graph_auth = _choice(env, "GRAPH_AUTH", "managed_identity", ("managed_identity", "client_secret"))
    graph = GraphSettings(
        endpoint=(_get(env, "GRAPH_ENDPOINT", GraphSettings.endpoint) or GraphSettings.endpoint).rstrip("/"),
        auth=graph_auth,
        tenant_id=_get(env, "GRAPH_TENANT_ID"),
        client_id=_get(env, "GRAPH_CLIENT_ID"),
        client_secret=_get(env, "GRAPH_CLIENT_SECRET"),
        authority_host=_get(env, "GRAPH_AUTHORITY_HOST", GraphSettings.authority_host) or "",
        scopes=(_get(env, "GRAPH_SCOPE", GraphSettings.scopes[0]) or GraphSettings.scopes[0],),
        ca_file=_get(env, "GRAPH_CA_FILE"),
    )
    if graph_auth == "client_secret":
        for name, value in (
            ("GRAPH_TENANT_ID", graph.tenant_id),
            ("GRAPH_CLIENT_ID", graph.client_id),
            ("GRAPH_CLIENT_SECRET", graph.client_secret),
        ):
            if not value:
                raise ConfigurationError(f"setting {name} is required when GRAPH_AUTH=client_secret")
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
    )
    worker_mode = _choice(env, "GUESTSYNC_WORKER_MODE", "agent", ("agent", "function"))
    directory = None
    if need_directory or worker_mode == "function" or _get(env, "AD_SERVER"):
        directory = load_directory_settings(env)
    lifecycle = load_lifecycle_settings(env, need_archive=directory is not None)
    return Settings(
        storage_connection=storage,
        change_queue=_get(env, "GUESTSYNC_CHANGE_QUEUE", DEFAULT_CHANGE_QUEUE) or DEFAULT_CHANGE_QUEUE,
        export_queue=_get(env, "GUESTSYNC_EXPORT_QUEUE", DEFAULT_EXPORT_QUEUE) or DEFAULT_EXPORT_QUEUE,
        state_table=_get(env, "GUESTSYNC_STATE_TABLE", DEFAULT_STATE_TABLE) or DEFAULT_STATE_TABLE,
        worker_mode=worker_mode,
        graph=graph,
        webhook=webhook,
        directory=directory,
        lifecycle=lifecycle,
    )
