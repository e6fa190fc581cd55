"""The webhook checks (Graph's validation handshake, sent from this machine) and our Graph subscription."""

from __future__ import annotations

import secrets
import ssl
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx

from shared.services.preflight.graph import _graph_failure
from shared.services.preflight.results import CheckResult, Status, _result
from shared.settings import CLOUDS, Settings

if TYPE_CHECKING:  # the adapters are imported where they are used: a check loads only what it needs
    from shared.adapters.graph import GraphClient

HANDSHAKE_TIMEOUT = 10.0  # seconds: Graph gives up on a validation request after 10 s


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
