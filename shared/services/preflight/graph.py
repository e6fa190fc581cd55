"""The Graph checks: sign-in (AADSTS errors turned into the setting to fix), users, the scoping group, Mail.Send."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, TypeVar

from shared.services.preflight.results import CheckResult, Status, _result
from shared.settings import Settings

if TYPE_CHECKING:  # the adapters are imported where they are used: a check loads only what it needs
    from shared.adapters.graph import GraphClient

T = TypeVar("T")

CONSENT_HINT = ("in Entra ID > Enterprise applications > the app (or its managed identity) > Permissions, grant the "
                "Microsoft Graph application permission {role} with admin consent (a managed identity: "
                "New-MgServicePrincipalAppRoleAssignment); then run the check again")


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
    from shared.core.failures import Cause, fix_for

    failure, fix = fix_for(exc, "graph")
    if failure.cause is Cause.OTHER:
        fix = ("check GRAPH_AUTH and its credential settings, GRAPH_AUTHORITY_HOST, and outbound HTTPS to it "
               "(GRAPH_CA_FILE behind a TLS-inspecting proxy)")
    return _result("graph.signin", Status.FAIL,
                   f"sign-in to {settings.graph.authority_host} failed ({name}: {text})", fix)


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
    from shared.core.errors import GraphError, GraphNotFoundError

    if isinstance(exc, GraphError) and exc.status == 403:
        return _result(name, Status.FAIL,
                       f"the app lacks the Graph application permission {role} (admin consent): {what} was refused "
                       f"({exc})", CONSENT_HINT.format(role=role))
    if isinstance(exc, GraphNotFoundError):
        return _result(name, Status.FAIL, f"{what}: not found ({exc})", None)
    if isinstance(exc, GraphError):
        return _result(name, Status.FAIL, f"{what} failed: {exc}", "see the Graph error; retry later if throttled")
    from shared.core.failures import fix_for

    return _result(name, Status.FAIL, f"{what} failed: {type(exc).__name__}: {exc}", fix_for(exc, "graph")[1])


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
    group = settings.deprovisioning.scope_group_id
    if not group:
        return _result("graph.scope_group", Status.SKIP, "no scoping group (GUESTSYNC_SCOPE_GROUP_ID is not set): "
                       "every guest is in scope")
    from shared.core.errors import GraphNotFoundError

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
