"""Logs and metrics an operator can follow one guest through, and that never carry a secret.

* Every log line written while a guest is being handled carries ``guest`` (its Graph id) and
  ``correlation_id`` (minted when the notification arrives, or by the reconcile, and passed along in the
  queue messages), as attributes of the log record: Application Insights shows them as custom dimensions,
  and ``GUESTSYNC_LOG_FORMAT=json`` prints them as JSON lines for the on-premises agent.
* Metrics go through the OpenTelemetry API (no-ops until a provider is configured): with
  ``APPLICATIONINSIGHTS_CONNECTION_STRING`` set they are exported to Application Insights.
* Secrets are scrubbed from every log record in the process, ours and the libraries', before any handler
  sees it: the values of secret settings, and anything shaped like a password, account key or token. A value
  is masked in the forms a library may log it in too: UTF-16LE (how AD takes a password, raw or as Python
  writes bytes), URL-encoded (form bodies, query strings), base64 (at any alignment inside a longer base64
  text, standard and URL-safe alphabet) and JSON-escaped.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import json
import logging
import re
import threading
import urllib.parse
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from opentelemetry import metrics

from shared.settings import Settings

log = logging.getLogger("guestsync.observability")
REDACTED = "[REDACTED]"

_guest: contextvars.ContextVar[str | None] = contextvars.ContextVar("guest", default=None)
_correlation: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)


def new_correlation_id() -> str:
    return uuid.uuid4().hex


@contextlib.contextmanager
def guest_context(uid: str | None, correlation_id: str | None = None) -> Iterator[str]:
    """Tag every log record written inside with this guest and correlation id (minted if None)."""
    cid = correlation_id or _correlation.get() or new_correlation_id()
    tokens = (_guest.set(uid), _correlation.set(cid))
    try:
        yield cid
    finally:
        _guest.reset(tokens[0])
        _correlation.reset(tokens[1])


def current_correlation_id() -> str | None:
    return _correlation.get()


# --- secret scrubbing ------------------------------------------------------------------------------------

#: Shapes of secrets whatever their value: key=value pairs of connection strings and forms, bearer tokens,
#: and the LDAP password attribute.
_SECRET_PATTERNS = [
    re.compile(r"(?i)\b(AccountKey|SharedAccessSignature|sig|client_secret|client_assertion|password|pwd|"
               r"unicodePwd|clientState|access_token|refresh_token)(\"?\s*[=:]\s*\"?)([^;&\s\"',}]+)"),
    re.compile(r"(?i)\bBearer\s+[A-Za-z0-9\-._~+/]+=*"),
    # A Functions key: the ``code`` query parameter of a URL (plain or URL-encoded inside another URL) and the
    # x-functions-key header. Only in URL form: "status code: 500" is no secret.
    re.compile(r"(?i)((?:[?&]|%3F|%26)code)(=|%3D)([^&#\s\"'<>]+)"),
    re.compile(r"(?i)\b(x-functions-key)(\"?\s*[=:]\s*\"?)([^;&\s\"',}]+)"),
]
_secrets: list[str] = []
_lock = threading.Lock()
_installed = False
_FORMATTER = logging.Formatter()


def _base64_cores(data: bytes) -> set[str]:
    """The base64 characters that ``data`` alone decides wherever it starts inside a longer base64 text (three
    alignments), in the standard and the URL-safe alphabet: what a search for it in encoded text must look for.
    """
    cores: set[str] = set()
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + data).decode("ascii")
        core = encoded[-(-8 * offset // 6): 8 * (offset + len(data)) // 6]
        cores |= {core, core.replace("+", "-").replace("/", "_")}
    return cores


def encoded_forms(value: str) -> set[str]:
    """``value`` and the encodings it may be logged in: UTF-16LE (raw, and as ``repr(bytes)`` writes it),
    URL-encoded (``%20`` and ``+`` for spaces, both hex cases), base64 of its UTF-8 and UTF-16LE bytes, and
    JSON-escaped (with and without ``ensure_ascii``)."""
    utf16 = value.encode("utf-16-le")
    forms = {value, utf16.decode("latin-1"), repr(utf16)[2:-1],
             json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
    for quoted in (urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value, safe="")):
        forms |= {quoted, re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quoted)}
    forms |= _base64_cores(value.encode("utf-8")) | _base64_cores(utf16)
    return {form for form in forms if len(form) >= 6}


def register_secrets(values: Iterable[str | None]) -> None:
    """Values never to appear in a log (settings' secrets, generated passwords), in any of their
    ``encoded_forms``."""
    with _lock:
        for value in values:
            if not value or len(value) < 6:
                continue
            for form in encoded_forms(value):
                if form not in _secrets:
                    _secrets.append(form)
        _secrets.sort(key=len, reverse=True)


def redact(text: str) -> str:
    for value in _secrets:
        if value in text:
            text = text.replace(value, REDACTED)
    for pattern in _SECRET_PATTERNS:
        if pattern.groups >= 3:
            text = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
        else:
            text = pattern.sub(f"Bearer {REDACTED}", text)
    return text


def settings_secrets(settings: Settings) -> list[str | None]:
    """Every secret a settings object holds."""
    values: list[str | None] = [settings.graph.client_secret, settings.graph.certificate_password,
                                settings.storage.client_secret, settings.mail.smtp_password, settings.app_insights,
                                settings.webhook.function_key, *settings.webhook.client_states]
    if settings.directory is not None:
        values.append(settings.directory.bind_password)
    if settings.storage.connection_string:
        key = re.search(r"AccountKey=([^;]+)", settings.storage.connection_string)
        values.append(key.group(1) if key else None)
    return values


def install(settings: Settings | None = None) -> None:
    """Scrub every log record of this process and tag it with the guest context (idempotent)."""
    global _installed
    if settings is not None:
        register_secrets(settings_secrets(settings))
    with _lock:
        if _installed:
            return
        _installed = True
        previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: keep the raw text, still scrubbed
            message = str(record.msg)
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = _FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        if not hasattr(record, "guest"):
            record.guest = _guest.get()
        if not hasattr(record, "correlation_id"):
            record.correlation_id = _correlation.get()
        return record

    logging.setLogRecordFactory(factory)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the guest and correlation id (``GUESTSYNC_LOG_FORMAT=json``)."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ("guest", "correlation_id", "outcome", "action"):
            value = getattr(record, name, None)
            if value is not None:
                body[name] = value
        if record.exc_info:
            body["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(body, ensure_ascii=False)


_exporters_configured = False


def configure_exporters_once(settings: Settings) -> bool:
    """configure_exporters, at most once per process (the provider is global)."""
    global _exporters_configured
    with _lock:
        if _exporters_configured:
            return False
        _exporters_configured = configure_exporters(settings)
        return _exporters_configured


def configure_exporters(settings: Settings) -> bool:
    """Send logs, traces and metrics to Application Insights when a connection string is set."""
    if not settings.app_insights:
        return False
    try:
        from azure.monitor.opentelemetry import configure_azure_monitor
    except ImportError:  # pragma: no cover - it is in requirements.txt
        log.warning("azure-monitor-opentelemetry is not installed; metrics stay local")
        return False
    configure_azure_monitor(connection_string=settings.app_insights, logger_name="guestsync",
                            credential=telemetry_credential(settings))
    return True


def telemetry_credential(settings: Settings) -> Any:
    """The Entra credential telemetry is sent with (Application Insights has local authentication off): the one
    the storage connection signs in with (managed identity in Azure, the agent's service principal on-premises);
    None with a storage connection string, where no identity is configured."""
    from shared.adapters.storage import credential

    return credential(settings.storage)


# --- metrics -----------------------------------------------------------------------------------------------

_meter = metrics.get_meter("guestsync")
LATENCY = _meter.create_histogram(
    "guestsync.provisioning.latency", unit="ms",
    description="Notification (invite or change) to AD account written",
)
EXPORTS = _meter.create_counter("guestsync.exports", description="AD exports by outcome")
EXPORT_ERRORS = _meter.create_counter("guestsync.export.errors", description="Exports that ended in a guest error")
HELD = _meter.create_counter("guestsync.deprovisioning.held", description="Disables/deletes held by the breaker")
SECURITY_FINDINGS = _meter.create_counter(
    "guestsync.security.findings", description="Changes refused by a security rule (planted objects, foreign UPNs)"
)
RECONCILE_FINDINGS = _meter.create_counter("guestsync.reconcile.findings", description="Drift found by reconcile")


def record_export(action: str, latency_ms: int | None = None) -> None:
    EXPORTS.add(1, {"outcome": action})
    if action == "error":
        EXPORT_ERRORS.add(1)
    elif action == "held":
        HELD.add(1)
    if latency_ms is not None and action in ("created", "adopted", "updated", "restored"):
        LATENCY.record(latency_ms)
