"""``guestsync check``: a preflight of everything guestsync depends on, for go-live and for troubleshooting.

Each check returns a ``CheckResult`` (name, status pass | warn | fail | skip, a detail in plain words, and for
warn and fail a fix). The names and their order are fixed (``CHECKS``): a check that cannot run here says
``skip`` and why, so the JSON output always has every result.

* ``settings``: every setting loads (and the AD settings make a valid ``Directory``); a ConfigurationError is
  the one ``fail``, naming the setting, and every other check is skipped.
* ``graph.signin``: a token for the Graph scope with the app's own credential (managed identity, client
  secret or certificate); AADSTS errors are turned into the setting to fix. ``graph.users``: a read of users
  as the reconcile does it (403 Authorization_RequestDenied = User.Read.All is missing). ``graph.scope_group``:
  with ``GUESTSYNC_SCOPE_GROUP_ID``, the group exists and its transitive members can be read
  (GroupMember.Read.All). ``graph.mail``: with ``GUESTSYNC_MAIL=graph``, Mail.Send must be in the token's
  ``roles`` claim (Entra lists every granted application permission there); ``warn`` when the token does not
  tell.
* ``webhook.notifications`` / ``webhook.lifecycle``: Graph's validation handshake (POST
  ``?validationToken=...``, 200 text/plain echoing the token within 10 s), sent from this machine: Graph must
  reach the URL from the internet as well. Unset: ``warn``.
* ``graph.subscription``: our users subscription exists and is not within 3 days of expiry (``warn``).
* ``storage.queues`` / ``storage.table``: the queues (with their poison queues) and the state table answer;
  missing ones are created, as the app does. Messages in a poison queue are a ``warn``.
* ``ad.*`` (where the AD worker runs, i.e. ``AD_SERVER`` is set): LDAPS with certificate validation, the bind,
  both OUs, then a write probe (unless ``probe=False``): a disabled account ``CN=guestsync-probe-<hex>`` is
  created in the guest OU, modified, archived and restored (moved to the archive OU and back), and deleted,
  through the same adapter methods the worker uses, so each step needs exactly the worker's rights. Whatever
  happens, the probe is deleted at the end; a probe left by a crashed run (recognised by its name and
  description) is deleted by the next check (only reported with ``probe=False``).
* ``entra_connect``: always ``warn``: whether Entra Connect sync excludes the guest and archive OUs cannot be
  seen from Graph or from the service account, and if it does not, Entra Connect may match and take over the
  shadow accounts. The warn is the reminder; it never makes the check fail.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import re
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import httpx

from shared.domain import ConfigurationError
from shared.settings import CLOUDS, Settings, load_settings

if TYPE_CHECKING:  # the adapters are imported where they are used: a check loads only what it needs
    from shared.adapters.directory import Directory
    from shared.adapters.graph import GraphClient

log = logging.getLogger("guestsync.preflight")
T = TypeVar("T")

HANDSHAKE_TIMEOUT = 10.0  # seconds: Graph gives up on a validation request after 10 s
CHECKS = (
    "settings",
    "graph.signin", "graph.users", "graph.scope_group", "graph.mail",
    "webhook.notifications", "webhook.lifecycle", "graph.subscription",
    "storage.queues", "storage.table",
    "ad.ldaps", "ad.bind", "ad.guest_ou", "ad.archive_ou",
    "ad.probe.cleanup", "ad.probe.create", "ad.probe.modify", "ad.probe.move", "ad.probe.delete",
    "entra_connect",
)
CONSENT_HINT = ("in Entra ID > Enterprise applications > the app (or its managed identity) > Permissions, grant the "
                "Microsoft Graph application permission {role} with admin consent (a managed identity: "
                "New-MgServicePrincipalAppRoleAssignment); then run the check again")


class Status(StrEnum):
    PASS = "pass"  # noqa: S105 (a status, not a password)
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str
    fix: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {"name": self.name, "status": self.status.value, "detail": self.detail, "fix": self.fix}


def _result(name: str, status: Status, detail: str, fix: str | None = None) -> CheckResult:
    return CheckResult(name, status, detail, fix)


def _skip(names: tuple[str, ...] | list[str], why: str) -> list[CheckResult]:
    return [CheckResult(name, Status.SKIP, why) for name in names]


# --- orchestration ---------------------------------------------------------------------------------------------
def run_checks(env: Mapping[str, str] | None = None, *, probe: bool = True) -> list[CheckResult]:
    """Every check of ``CHECKS``, in order. Never raises for what it checks: failures are results."""
    env = os.environ if env is None else env
    try:
        settings = load_settings(env)
        directory = _directory(settings)
    except ConfigurationError as exc:
        return [_result("settings", Status.FAIL, str(exc),
                        "set or correct the named setting (README, Configuration), then run the check again"),
                *_skip(CHECKS[1:], "settings did not load")]
    results = [_result("settings", Status.PASS, _settings_summary(settings))]
    results += asyncio.run(_graph_and_webhooks(settings))
    results += check_storage(settings)
    if directory is None:
        results += _skip(["ad.ldaps"], "AD_SERVER is not set: the AD worker does not run here (in agent mode, run "
                         "guestsync check on the agent's server as well)")
        results += _skip([n for n in CHECKS if n.startswith("ad.") and n != "ad.ldaps"], "AD_SERVER is not set")
    else:
        with directory:
            results += check_directory(directory, settings, probe=probe)
    results.append(entra_connect_reminder(settings))
    assert [r.name for r in results] == list(CHECKS), [r.name for r in results]
    return results


def exit_code(results: list[CheckResult]) -> int:
    return 1 if any(r.status is Status.FAIL for r in results) else 0


def summary(results: list[CheckResult]) -> dict[str, int]:
    return {status.value: sum(r.status is status for r in results) for status in Status}


def as_json(results: list[CheckResult]) -> dict[str, Any]:
    return {"ok": exit_code(results) == 0, "summary": summary(results), "checks": [r.as_dict() for r in results]}


def render_text(results: list[CheckResult]) -> str:
    """One line per check: STATUS, name, detail, and for warn/fail the fix; then the counts."""
    width = max(len(r.name) for r in results)
    lines = []
    for r in results:
        fix = f" (fix: {r.fix})" if r.fix and r.status in (Status.WARN, Status.FAIL) else ""
        lines.append(f"{r.status.value.upper():<4}  {r.name:<{width}}  {r.detail}{fix}")
    counts = summary(results)
    lines.append(", ".join(f"{count} {name}" for name, count in counts.items())
                 + (": FAILED" if counts["fail"] else ": OK"))
    return "\n".join(lines)


def _directory(settings: Settings) -> Directory | None:
    """The worker's adapter (its constructor validates the DNs and AD_CA_FILE: configuration errors)."""
    if settings.directory is None:
        return None
    from shared.adapters.directory import Directory

    return Directory(settings.directory, archive_ou=settings.lifecycle.archive_ou)


def _settings_summary(settings: Settings) -> str:
    parts = [f"Graph {settings.graph.auth} at {settings.graph.endpoint}", f"worker mode {settings.worker_mode}",
             f"deprovision {settings.lifecycle.deprovision}"]
    if settings.lifecycle.scope_group_id:
        parts.append(f"scoping group {settings.lifecycle.scope_group_id}")
    parts.append(f"mail {settings.mail.mode}")
    parts.append(f"AD {settings.directory.server}" if settings.directory else "no AD here")
    return "all settings valid: " + ", ".join(parts)


# --- Graph -----------------------------------------------------------------------------------------------------
_SIGNIN_ERRORS: tuple[tuple[str, str, str], ...] = (
    ("AADSTS7000215", "the client secret is wrong",
     "set GRAPH_CLIENT_SECRET to the Value (not the Secret ID) of a current client secret of the app registration "
     "GRAPH_CLIENT_ID"),
    ("AADSTS7000222", "the client secret has expired",
     "create a new client secret for the app registration, store it in Key Vault and point GRAPH_CLIENT_SECRET at it"),
    ("AADSTS700016", "the application GRAPH_CLIENT_ID is not known in tenant GRAPH_TENANT_ID",
     "check GRAPH_CLIENT_ID (the Application (client) ID) and GRAPH_TENANT_ID"),
    ("AADSTS90002", "tenant GRAPH_TENANT_ID does not exist", "check GRAPH_TENANT_ID (the Directory (tenant) ID)"),
    ("AADSTS900023", "GRAPH_TENANT_ID is not a valid tenant", "check GRAPH_TENANT_ID (the Directory (tenant) ID)"),
    ("AADSTS700027", "the certificate is not registered on the app, or the signature is not valid",
     "upload the certificate's public part to the app registration (Certificates & secrets) and check that "
     "GRAPH_CLIENT_CERTIFICATE(_PATH) holds the matching private key"),
    ("AADSTS700024", "the client assertion is outside its valid time range", "correct this machine's clock"),
)


def _signin_failure(exc: BaseException, settings: Settings) -> CheckResult:
    text = " ".join(str(exc).split())
    answer = re.search(r"AADSTS\d+:.*", text.split(" Content: ", 1)[0])  # Entra's words, not azure-identity's
    if answer:
        text = answer.group(0).rstrip("' ")
    if len(text) > 400:
        text = text[:400] + "..."
    for code, meaning, fix in _SIGNIN_ERRORS:
        if code in text:
            return _result("graph.signin", Status.FAIL, f"sign-in refused: {meaning} ({text})", fix)
    name = type(exc).__name__
    if name == "CredentialUnavailableError" or (settings.graph.auth == "managed_identity"
                                                and "managed" in text.lower()):
        return _result("graph.signin", Status.FAIL, f"no managed identity is available here ({text})",
                       "on-premises (the agent) use GRAPH_AUTH=client_secret or certificate; in Azure, assign the "
                       "identity to the function app (and set GRAPH_CLIENT_ID for a user-assigned one)")
    return _result("graph.signin", Status.FAIL,
                   f"sign-in to {settings.graph.authority_host} failed ({name}: {text})",
                   "check GRAPH_AUTH and its credential settings, GRAPH_AUTHORITY_HOST, and outbound HTTPS to it "
                   "(GRAPH_CA_FILE behind a TLS-inspecting proxy)")


def token_roles(access_token: str) -> list[str] | None:
    """The ``roles`` claim (granted application permissions) of a JWT access token; [] when the claim is absent
    (Entra leaves it out when no permission is granted); None when the token is not a readable JWT."""
    parts = access_token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(claims, dict):
        return None
    roles = claims.get("roles", [])
    return [str(r) for r in roles] if isinstance(roles, list) else None


async def _first(items: AsyncIterator[T]) -> T | None:
    """The first item (or None), closing the generator so no page request is left pending."""
    try:
        async for item in items:
            return item
        return None
    finally:
        close = getattr(items, "aclose", None)
        if close is not None:
            await close()


def _graph_failure(name: str, exc: Exception, *, role: str, what: str) -> CheckResult:
    from shared.adapters.graph import GraphError, GraphNotFoundError

    if isinstance(exc, GraphError) and exc.status == 403:
        return _result(name, Status.FAIL,
                       f"the app lacks the Graph application permission {role} (admin consent): {what} was refused "
                       f"({exc})", CONSENT_HINT.format(role=role))
    if isinstance(exc, GraphNotFoundError):
        return _result(name, Status.FAIL, f"{what}: not found ({exc})", None)
    if isinstance(exc, GraphError):
        return _result(name, Status.FAIL, f"{what} failed: {exc}", "see the Graph error; retry later if throttled")
    return _result(name, Status.FAIL, f"{what} failed: {type(exc).__name__}: {exc}",
                   "check GRAPH_ENDPOINT and outbound HTTPS to it (GRAPH_CA_FILE behind a TLS-inspecting proxy)")


async def _graph_and_webhooks(settings: Settings) -> list[CheckResult]:
    """graph.signin, graph.users, graph.scope_group, graph.mail, webhook.*, graph.subscription (in order)."""
    from shared.adapters.graph import GraphClient

    signin, roles = await _signin(settings)
    after = ["graph.users", "graph.scope_group", "graph.mail"]
    if signin.status is Status.FAIL:
        results = [signin, *_skip(after, "Graph sign-in failed")]
        webhooks = await check_webhooks(settings)
        return results + webhooks + _skip(["graph.subscription"], "Graph sign-in failed")
    results = [signin]
    async with GraphClient(settings.graph) as client:
        try:
            await _first(client.list_guests(page_size=1))
            results.append(_result("graph.users", Status.PASS,
                                   "users can be read (GET /users, as the reconcile does): User.Read.All is granted"))
        except Exception as exc:
            results.append(_graph_failure("graph.users", exc, role="User.Read.All", what="reading users"))
        results.append(await _check_scope_group(client, settings))
        results.append(_check_mail(settings, roles))
        results += await check_webhooks(settings)
        results.append(await _check_subscription(client, settings))
    return results


async def _signin(settings: Settings) -> tuple[CheckResult, list[str] | None]:
    from shared.adapters.graph import credential as graph_credential  # built as the app builds it

    g = settings.graph
    who = f"app {g.client_id}" if g.client_id else "the system-assigned managed identity"
    try:
        credential = graph_credential(g)
    except Exception as exc:  # e.g. an unreadable certificate file
        return _signin_failure(exc, settings), None
    try:
        token = await credential.get_token(*g.scopes)
    except Exception as exc:
        return _signin_failure(exc, settings), None
    finally:
        await credential.close()
    roles = token_roles(token.token)
    granted = (f"; application permissions in the token: {', '.join(sorted(roles)) or 'none'}"
               if roles is not None else "")
    return _result("graph.signin", Status.PASS,
                   f"signed in as {who} ({g.auth}) at {g.authority_host} for {', '.join(g.scopes)}{granted}"), roles


async def _check_scope_group(client: GraphClient, settings: Settings) -> CheckResult:
    group = settings.lifecycle.scope_group_id
    if not group:
        return _result("graph.scope_group", Status.SKIP, "no scoping group (GUESTSYNC_SCOPE_GROUP_ID is not set): "
                       "every guest is in scope")
    from shared.adapters.graph import GraphNotFoundError

    try:
        await _first(client.iter_group_member_ids(group, page_size=1))
    except GraphNotFoundError as exc:
        return _result("graph.scope_group", Status.FAIL,
                       f"the scoping group {group} does not exist in the tenant ({exc})",
                       "set GUESTSYNC_SCOPE_GROUP_ID to the Object ID of an existing Entra group")
    except Exception as exc:
        return _graph_failure("graph.scope_group", exc, role="GroupMember.Read.All",
                              what=f"reading the members of the scoping group {group}")
    return _result("graph.scope_group", Status.PASS,
                   f"the scoping group {group} exists and its transitive members can be read (GroupMember.Read.All)")


def _check_mail(settings: Settings, roles: list[str] | None) -> CheckResult:
    mail = settings.mail
    if mail.mode != "graph":
        return _result("graph.mail", Status.SKIP, f"GUESTSYNC_MAIL={mail.mode}: alerts are not sent through Graph"
                       + (" (the SMTP relay is not tested)" if mail.mode == "smtp" else ""))
    if roles is None:
        return _result("graph.mail", Status.WARN,
                       f"GUESTSYNC_MAIL=graph needs the Graph application permission Mail.Send (to send as "
                       f"{mail.sender}); it cannot be verified here (the token does not list the app's permissions)",
                       CONSENT_HINT.format(role="Mail.Send"))
    if "Mail.Send" not in roles:
        return _result("graph.mail", Status.FAIL,
                       "the app lacks the Graph application permission Mail.Send (admin consent), needed for "
                       f"GUESTSYNC_MAIL=graph to send as {mail.sender}", CONSENT_HINT.format(role="Mail.Send"))
    return _result("graph.mail", Status.PASS,
                   f"Mail.Send is granted (alerts sent as {mail.sender}; an Exchange application access policy may "
                   "still limit the mailboxes it can send as; no mail is sent by this check)")


def _trust(settings: Settings) -> ssl.SSLContext:
    """The system trust store plus GRAPH_CA_FILE (a TLS-inspecting proxy, the local simulator)."""
    context = ssl.create_default_context()
    if settings.graph.ca_file:
        context.load_verify_locations(cafile=settings.graph.ca_file)
    return context


async def check_webhooks(settings: Settings) -> list[CheckResult]:
    real_graph = settings.graph.endpoint in {cloud.graph_endpoint for cloud in CLOUDS.values()}
    results = []
    async with httpx.AsyncClient(verify=_trust(settings), timeout=HANDSHAKE_TIMEOUT, follow_redirects=False) as http:
        for name, setting, url, endpoint in (
            ("webhook.notifications", "GUESTSYNC_NOTIFICATION_URL", settings.webhook.notification_url,
             "/api/graph/notifications"),
            ("webhook.lifecycle", "GUESTSYNC_LIFECYCLE_URL", settings.webhook.lifecycle_url, "/api/graph/lifecycle"),
        ):
            if not url:
                effect = ("no Graph subscription can be created: changes reach AD only through the reconcile"
                          if name == "webhook.notifications" else
                          "Graph cannot report missed notifications or a removed subscription (lifecycle events)")
                results.append(_result(name, Status.WARN, f"{setting} is not set: {effect}",
                                       f"set {setting} to the public URL of POST {endpoint} of the function app"))
                continue
            results.append(await _handshake(http, name, setting, url, https_required=real_graph,
                                            key=settings.webhook.function_key))
    return results


async def _handshake(http: httpx.AsyncClient, name: str, setting: str, url: str, *,
                     https_required: bool, key: str | None) -> CheckResult:
    """Graph's validation request: POST url?code=<key>&validationToken=<token> (the URL guestsync subscribes
    with); 200 text/plain with the token, within 10 s."""
    from shared.services.subscriptions import keyed_url

    token = f"Validation: Testing client application reachability for subscription Request-Id: {secrets.token_hex(8)}"
    try:
        target = httpx.URL(keyed_url(url, key) if key else url).copy_merge_params({"validationToken": token})
    except (httpx.InvalidURL, ValueError) as exc:
        return _result(name, Status.FAIL, f"{setting} is not a URL ({exc})", f"correct {setting}")
    started = time.monotonic()
    try:
        response = await http.post(target, content=b"", headers={"Content-Type": "text/plain; charset=utf-8"})
    except httpx.TimeoutException:
        return _result(name, Status.FAIL, f"{url} did not answer the validation handshake within "
                       f"{HANDSHAKE_TIMEOUT:.0f} s (Graph gives up after 10 s)",
                       "make sure the function app is running and not cold-starting for that long (Flex Consumption "
                       "always-ready instances, or a Premium plan)")
    except httpx.HTTPError as exc:
        return _result(name, Status.FAIL, f"cannot reach {url}: {type(exc).__name__}: {exc or 'no answer'}",
                       f"check {setting} (host, port, path) and that the function app is running and reachable")
    elapsed = (time.monotonic() - started) * 1000
    content_type = response.headers.get("content-type", "")
    problem = None
    if response.status_code != 200:
        problem = f"answered {response.status_code} instead of 200"
        if response.status_code in (401, 403):
            problem += (" (GUESTSYNC_WEBHOOK_KEY is not set: the endpoints need a Functions key)" if not key else
                        " (GUESTSYNC_WEBHOOK_KEY is not one of the app's function or host keys)")
        elif response.status_code == 404:
            problem += " (wrong path?)"
    elif not content_type.lower().startswith("text/plain"):
        problem = f"answered with Content-Type {content_type or 'none'}; Graph expects text/plain"
    elif response.text != token:
        problem = "did not echo the validationToken exactly"
    if problem:
        return _result(name, Status.FAIL, f"{url} {problem}",
                       f"point {setting} at guestsync's POST {urlsplit(url).path or '/'} endpoint (the function app's "
                       "public URL)")
    if https_required and urlsplit(url).scheme != "https":
        return _result(name, Status.WARN, f"{url} answered the handshake, but Graph only accepts https:// URLs",
                       f"use the function app's https:// URL in {setting}")
    return _result(name, Status.PASS, f"{url} answered the validation handshake in {elapsed:.0f} ms (from this "
                   "machine; Graph must reach it from the internet)")


async def _check_subscription(client: GraphClient, settings: Settings) -> CheckResult:
    from shared.services.subscriptions import RENEW_WHEN_LEFT

    url = settings.webhook.notification_url
    if not url:
        return _result("graph.subscription", Status.SKIP, "GUESTSYNC_NOTIFICATION_URL is not set: no subscription")
    try:
        subscriptions = await client.list_subscriptions()
    except Exception as exc:
        return _graph_failure("graph.subscription", exc, role="User.Read.All", what="listing subscriptions")
    from shared.services.subscriptions import url_key, url_without_key

    ours = [s for s in subscriptions
            if url_without_key(s.notification_url) == url_without_key(url) and s.resource.strip("/").lower() == "users"]
    if not ours:
        return _result("graph.subscription", Status.WARN,
                       f"no Graph subscription on users for {url} ({len(subscriptions)} other subscription(s) of the "
                       "app): changes reach AD only through the reconcile",
                       "run `guestsync subscribe` (the maintain_subscription timer also creates it, every 6 h)")
    sub = min(ours, key=lambda s: s.expiration)
    left = sub.expiration - datetime.now(UTC)
    hours = left.total_seconds() / 3600
    when = f"{sub.expiration.isoformat(timespec='seconds')} (in {hours / 24:.1f} days)" if hours >= 48 else (
        f"{sub.expiration.isoformat(timespec='seconds')} (in {hours:.1f} h)")
    if left < RENEW_WHEN_LEFT:
        return _result("graph.subscription", Status.WARN, f"subscription {sub.id} expires {when}",
                       "run `guestsync subscribe` to renew it now; check that the maintain_subscription timer runs")
    if url_key(sub.notification_url) != settings.webhook.function_key:
        return _result("graph.subscription", Status.WARN,
                       f"subscription {sub.id} (expires {when}) is for another webhook key than GUESTSYNC_WEBHOOK_KEY "
                       "(rotated?): Graph's deliveries will be refused",
                       "run `guestsync subscribe`: it replaces the subscription with one for the current key")
    if url_without_key(sub.lifecycle_url or "") != url_without_key(settings.webhook.lifecycle_url or ""):
        return _result("graph.subscription", Status.WARN,
                       f"subscription {sub.id} (expires {when}) has lifecycle URL {sub.lifecycle_url or 'none'}, the "
                       f"settings say {settings.webhook.lifecycle_url or 'none'}",
                       "Graph cannot change it: delete the subscription and run `guestsync subscribe`")
    return _result("graph.subscription", Status.PASS, f"subscription {sub.id} on users expires {when}")


# --- storage ---------------------------------------------------------------------------------------------------
def _storage_failure(name: str, what: str, exc: Exception) -> CheckResult:
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

    text = " ".join(str(exc).split())[:400]
    if isinstance(exc, HttpResponseError) and exc.status_code == 403:
        return _result(name, Status.FAIL, f"{what}: access denied ({text})",
                       "keyless: give the identity Storage Queue Data Contributor and Storage Table Data Contributor "
                       "on the account; with a connection string, check its key")
    if isinstance(exc, ClientAuthenticationError):
        return _result(name, Status.FAIL, f"{what}: sign-in for storage failed ({text})",
                       "check the AzureWebJobsStorage__* identity settings")
    if isinstance(exc, ServiceRequestError):
        return _result(name, Status.FAIL, f"{what}: cannot reach the storage account ({text})",
                       "check AzureWebJobsStorage (account, endpoints) and outbound HTTPS to it")
    return _result(name, Status.FAIL, f"{what}: {type(exc).__name__}: {text}", "check AzureWebJobsStorage")


def check_storage(settings: Settings) -> list[CheckResult]:
    """storage.queues and storage.table, with few retries so an unreachable account fails in seconds."""
    from azure.storage.queue import ExponentialRetry

    from shared.adapters.queues import MessageQueue

    names = (settings.change_queue, settings.export_queue, settings.change_poison_queue,
             settings.export_poison_queue)
    counts: dict[str, int] = {}
    results: list[CheckResult] = []
    try:
        for name in names:
            queue = MessageQueue.from_settings(
                settings.storage, name, connection_timeout=10, read_timeout=20,
                retry_policy=ExponentialRetry(initial_backoff=1, increment_base=1, retry_total=1))
            counts[name] = queue.approximate_count()  # creates the queue if it is missing
    except Exception as exc:
        results.append(_storage_failure("storage.queues", f"queue {name}", exc))
    else:
        listed = ", ".join(f"{n} ({c})" for n, c in counts.items())
        poisoned = {n: c for n, c in counts.items() if n.endswith("-poison") and c}
        if poisoned:
            results.append(_result("storage.queues", Status.WARN, f"queues reachable (messages): {listed}; "
                                   f"{sum(poisoned.values())} message(s) in poison queue(s)",
                                   "see `guestsync status`; fix the cause, then move the messages back"))
        else:
            results.append(_result("storage.queues", Status.PASS, f"queues reachable (messages): {listed}"))
    results.append(_check_table(settings))
    return results


def _check_table(settings: Settings) -> CheckResult:
    from shared.adapters.state import StateStore
    from shared.adapters.storage import table_service

    try:
        service = table_service(settings.storage, retry_total=1, retry_backoff_factor=0.5, connection_timeout=10,
                                read_timeout=20)
        StateStore(service.create_table_if_not_exists(settings.state_table)).get_meta("preflight")
    except Exception as exc:
        return _storage_failure("storage.table", f"table {settings.state_table}", exc)
    return _result("storage.table", Status.PASS, f"state table {settings.state_table} reachable (created if missing)")


# --- Active Directory ------------------------------------------------------------------------------------------
_RIGHTS_FIX = ("delegate to the service account, on the guest OU and the archive OU, the rights listed in README, "
               "Deployment step 2: create and delete user objects, read, write only the listed attributes, reset "
               "password (never write all properties)")


def check_directory(directory: Directory, settings: Settings, *, probe: bool) -> list[CheckResult]:
    """ad.ldaps, ad.bind, ad.guest_ou, ad.archive_ou, ad.probe.* (in order)."""
    from shared.adapters.directory import DirectoryError, DirectoryUnavailableError, InvalidCredentialsError

    assert settings.directory is not None
    ad = settings.directory
    trust = f"AD_CA_FILE={ad.ca_file}" if ad.ca_file else "the system trust store"
    probe_names = ["ad.probe.cleanup", "ad.probe.create", "ad.probe.modify", "ad.probe.move", "ad.probe.delete"]
    try:
        netbios = directory.netbios_domain()  # connects (TLS) and binds
    except DirectoryUnavailableError as exc:
        return [_result("ad.ldaps", Status.FAIL, str(exc),
                        "set AD_CA_FILE to the CA that issued the DC certificate and use a name from the certificate "
                        "in AD_SERVER; check DNS and TCP 636 from here"),
                *_skip(["ad.bind", "ad.guest_ou", "ad.archive_ou", *probe_names], "no LDAPS connection")]
    except InvalidCredentialsError as exc:
        return [_ldaps_ok(ad.server, trust, ad.validate_certificate),
                _result("ad.bind", Status.FAIL, str(exc), "check AD_BIND_USER and AD_KEYTAB" if ad.bind_method ==
                        "kerberos" else "check AD_BIND_USER and AD_BIND_PASSWORD"),
                *_skip(["ad.guest_ou", "ad.archive_ou", *probe_names], "the bind failed")]
    except DirectoryError as exc:
        return [_ldaps_ok(ad.server, trust, ad.validate_certificate),
                _result("ad.bind", Status.FAIL, str(exc), "check AD_SERVER (a domain controller) and AD_BIND_USER"),
                *_skip(["ad.guest_ou", "ad.archive_ou", *probe_names], "the bind failed")]
    who = ad.bind_user or "the service's own identity"
    how = "Kerberos" if ad.bind_method == "kerberos" else "password"
    results = [_ldaps_ok(directory.domain_controller or ad.server, trust, ad.validate_certificate),
               _result("ad.bind", Status.PASS, f"bound as {who} ({how}; domain {netbios})")]
    guest_ok = _check_ou(results, directory, "ad.guest_ou", "AD_GUEST_OU", directory.guest_ou)
    archive_ok: bool | None = None
    if directory.archive_ou is None:
        results.append(_result("ad.archive_ou", Status.SKIP, "GUESTSYNC_DEPROVISION=none: no archive OU"))
    else:
        archive_ok = _check_ou(results, directory, "ad.archive_ou", "AD_ARCHIVE_OU", directory.archive_ou)
    if not guest_ok:
        return results + _skip(probe_names, "the guest OU is missing")
    results += _probe(directory, probe=probe, archive_ok=archive_ok)
    return results


def _ldaps_ok(server: str, trust: str, validated: bool) -> CheckResult:
    if not validated:
        return _result("ad.ldaps", Status.WARN, f"{server}: TLS connected WITHOUT certificate validation "
                       "(AD_VALIDATE_CERTIFICATE=false)", "set AD_CA_FILE and turn AD_VALIDATE_CERTIFICATE back on")
    return _result("ad.ldaps", Status.PASS, f"{server}: TLS with the DC certificate validated against {trust}")


def _check_ou(results: list[CheckResult], directory: Directory, name: str, setting: str, dn: str) -> bool:
    from shared.adapters.directory import DirectoryError

    try:
        exists = directory.object_exists(dn)
    except DirectoryError as exc:
        results.append(_result(name, Status.FAIL, f"cannot read {dn}: {exc}", _RIGHTS_FIX))
        return False
    if not exists:
        results.append(_result(name, Status.FAIL, f"{dn} does not exist (or the service account cannot see it)",
                               f"create the OU, or correct {setting}"))
        return False
    results.append(_result(name, Status.PASS, f"{dn} exists"))
    return True


def _probe(directory: Directory, *, probe: bool, archive_ok: bool | None) -> list[CheckResult]:
    """ad.probe.cleanup, .create, .modify, .move, .delete. The probe never outlives this function unless AD
    refuses its deletion (then it is left disabled and reported, and the next check deletes it)."""
    from shared.adapters.directory import DirectoryError, new_probe_name

    results: list[CheckResult] = []
    try:
        leftovers = directory.find_probes()
    except DirectoryError as exc:
        return [_result("ad.probe.cleanup", Status.FAIL, f"cannot look for probe accounts: {exc}", _RIGHTS_FIX),
                *_skip(["ad.probe.create", "ad.probe.modify", "ad.probe.move", "ad.probe.delete"],
                       "the managed OUs cannot be searched")]
    steps = ["ad.probe.create", "ad.probe.modify", "ad.probe.move", "ad.probe.delete"]
    if not probe:
        if leftovers:
            results.append(_result("ad.probe.cleanup", Status.WARN,
                                   f"{len(leftovers)} probe account(s) left by an interrupted check: "
                                   f"{'; '.join(leftovers)}",
                                   "run guestsync check without --no-probe to delete them, or delete them by hand"))
        else:
            results.append(_result("ad.probe.cleanup", Status.PASS, "no probe accounts left by earlier checks"))
        return results + _skip(steps, "--no-probe: nothing is written to AD")
    removed, failed = _delete_probes(directory, leftovers)
    if failed:
        results.append(_result("ad.probe.cleanup", Status.FAIL,
                               f"cannot delete probe account(s) left by an interrupted check: {'; '.join(failed)}",
                               _RIGHTS_FIX + "; or delete them by hand"))
    elif removed:
        results.append(_result("ad.probe.cleanup", Status.PASS,
                               f"deleted {len(removed)} probe account(s) left by an interrupted check: "
                               f"{'; '.join(removed)}"))
    else:
        results.append(_result("ad.probe.cleanup", Status.PASS, "no probe accounts left by earlier checks"))

    name = new_probe_name()
    try:
        account = directory.create_probe(name)
    except DirectoryError as exc:
        results.append(_result("ad.probe.create", Status.FAIL, f"the service account cannot create a user in "
                               f"{directory.guest_ou}: {exc}", _RIGHTS_FIX))
        return results + _skip(steps[1:], "the probe account could not be created")
    done = False
    try:
        dn = account.dn
        results.append(_result("ad.probe.create", Status.PASS,
                               f"created {dn} (disabled, random password) as a guest account is created"))
        try:
            directory.update_guest(dn, {"displayName": "guestsync probe (modified)"})
            results.append(_result("ad.probe.modify", Status.PASS, "changed its displayName"))
        except DirectoryError as exc:
            results.append(_result("ad.probe.modify", Status.FAIL, f"cannot modify {dn}: {exc}", _RIGHTS_FIX))
        if directory.archive_ou is None:
            results.append(_result("ad.probe.move", Status.SKIP, "GUESTSYNC_DEPROVISION=none: accounts are never "
                                   "moved"))
        elif not archive_ok:
            results.append(_result("ad.probe.move", Status.SKIP, "the archive OU is missing"))
        else:
            try:
                archived = directory.disable_and_archive(dn)
                restored = directory.restore_guest(archived.dn)
                results.append(_result("ad.probe.move", Status.PASS,
                                       f"moved to {directory.archive_ou} and back (archive: disable and move; "
                                       f"restore: move back and enable), as the lifecycle does: {restored.dn}"))
            except DirectoryError as exc:
                results.append(_result("ad.probe.move", Status.FAIL,
                                       f"cannot archive and restore the probe between {directory.guest_ou} and "
                                       f"{directory.archive_ou}: {exc}", _RIGHTS_FIX))
        results.append(_delete_step(directory, name))
        done = True
    finally:
        if not done:  # an unexpected error or an interrupt: still leave nothing behind
            with contextlib.suppress(DirectoryError):
                _delete_probes(directory, _probes_named(directory, name))
    return results


def _probes_named(directory: Directory, name: str) -> list[str]:
    """Where the probe ``name`` is now (guest or archive OU, wherever a failed move left it)."""
    rdn = f"cn={name},".lower()
    return [dn for dn in directory.find_probes() if dn.lower().startswith(rdn)]


def _delete_probes(directory: Directory, dns: list[str]) -> tuple[list[str], list[str]]:
    """Delete these probe accounts; (deleted, 'dn: why not' for the others). A probe that cannot be deleted is
    at least disabled (archived), so nothing usable is left behind."""
    from shared.adapters.directory import DirectoryError

    deleted, failed = [], []
    for dn in dns:
        try:
            directory.delete_guest(dn)
            deleted.append(dn)
        except DirectoryError as exc:
            failed.append(f"{dn}: {exc}")
            log.warning("cannot delete probe account %s: %s", dn, exc)
            try:
                if directory.archive_ou:
                    directory.disable_and_archive(dn)
            except DirectoryError as again:
                log.warning("cannot disable probe account %s either: %s", dn, again)
    return deleted, failed


def _delete_step(directory: Directory, name: str) -> CheckResult:
    from shared.adapters.directory import DirectoryError

    try:
        where = _probes_named(directory, name)
        deleted, failed = _delete_probes(directory, where)
        left = _probes_named(directory, name)
    except DirectoryError as exc:
        return _result("ad.probe.delete", Status.FAIL, f"cannot delete the probe {name}: {exc}", _RIGHTS_FIX)
    if failed or left:
        return _result("ad.probe.delete", Status.FAIL,
                       f"cannot delete the probe account: {'; '.join(failed) or '; '.join(left)} (left disabled; the "
                       "next check deletes it)", _RIGHTS_FIX + "; or delete it by hand")
    if not deleted:
        return _result("ad.probe.delete", Status.FAIL, f"the probe account {name} was not found to delete",
                       "look for it in the guest and archive OUs")
    return _result("ad.probe.delete", Status.PASS, f"deleted {deleted[0]}; nothing is left behind")


# --- Entra Connect ---------------------------------------------------------------------------------------------
def entra_connect_reminder(settings: Settings) -> CheckResult:
    """Always a warn: Entra Connect's OU filter is not visible to guestsync (neither in Graph nor in AD)."""
    ous = [ou for ou in ((settings.directory.guest_ou if settings.directory else None),
                         settings.lifecycle.archive_ou) if ou]
    which = " and ".join(ous) if ous else "the guest OU (AD_GUEST_OU) and the archive OU (AD_ARCHIVE_OU)"
    return _result("entra_connect", Status.WARN,
                   f"cannot be verified from here: exclude {which} from Entra Connect sync (otherwise Entra Connect "
                   "may match and take over the shadow accounts)",
                   "Entra Connect: Synchronization Service Manager > Connectors > the AD connector > Configure "
                   "Directory Partitions > Containers: clear both OUs (Cloud Sync: scope the configuration to other "
                   "OUs)")
