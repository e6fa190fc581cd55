"""Log scrubbing, guest tagging, JSON log lines and metrics (no servers)."""

from __future__ import annotations

import base64
import json
import logging
import re
import urllib.parse

import pytest
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from shared import observability
from shared.observability import REDACTED, JsonFormatter, guest_context, redact, register_secrets
from shared.settings import load_settings

GUEST = "6ea91a8d-e32e-41a1-b7bd-d2d185eed0e0"


@pytest.fixture(scope="module")
def metric_reader() -> InMemoryMetricReader:
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    return reader


def test_registered_secret_values_are_scrubbed_from_records(caplog: pytest.LogCaptureFixture) -> None:
    observability.install()
    register_secrets(["Sup3r-S3cret-Bind!"])
    with caplog.at_level(logging.DEBUG, logger="anything"):
        logging.getLogger("anything").warning("bind failed for %s with %s", "svc", "Sup3r-S3cret-Bind!")
        try:
            raise ValueError("Sup3r-S3cret-Bind! in an exception")
        except ValueError:
            logging.getLogger("anything").exception("boom")
    text = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "Sup3r-S3cret-Bind!" not in caplog.text
    assert "Sup3r-S3cret-Bind!" not in text.replace(REDACTED, "")
    assert REDACTED in caplog.records[0].getMessage()


@pytest.mark.parametrize(("raw", "kept"), [
    ("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=abc123+/==;EndpointSuffix=x", "AccountName=acct"),
    ("grant_type=client_credentials&client_secret=s3cr3tvalue&scope=x", "grant_type=client_credentials"),
    ('{"clientState": "my-client-state-value", "id": 1}', '"id": 1'),
    ("Authorization: Bearer eyJ0eXAiOiJKV1QiLCJhbGciOi.J9.abc", "Authorization:"),
    ("modify unicodePwd: \"Pa55word!\"", "modify"),
    # The webhook's Functions key, in a URL, URL-encoded inside another URL, and as the header.
    ("POST https://app.example/api/graph/notifications?code=abc123-fnkey&validationToken=t HTTP/1.1",
     "validationToken=t"),
    ("notificationUrl=https%3A%2F%2Fapp.example%2Fapi%2Fgraph%2Fnotifications%3Fcode%3Ds3cr3tvalue", "notificationUrl"),
    ("x-functions-key: Pa55word-key", "x-functions-key"),
])
def test_secret_shapes_are_scrubbed_whatever_their_value(raw: str, kept: str) -> None:
    out = redact(raw)
    assert REDACTED in out and kept in out
    for secret in ("abc123", "s3cr3tvalue", "my-client-state-value", "eyJ0eXAi", "Pa55word"):
        assert secret not in out


def test_status_codes_stay_readable() -> None:
    assert redact("Graph answered status code: 503 (error code=Throttled)") == (
        "Graph answered status code: 503 (error code=Throttled)")


#: A registered secret with characters that every encoding below changes (space, quote, slash, plus, backslash,
#: non-ASCII).
ENCODED_SECRET = 'Bind Pa55 "w/o+r\\d" \u00e9t\u00e9!'
_UTF16 = ENCODED_SECRET.encode("utf-16-le")


@pytest.mark.parametrize(("form", "text"), [
    ("UTF-16LE, raw", _UTF16.decode("latin-1")),
    ("UTF-16LE, as repr(bytes) writes it (the quoted unicodePwd value)",
     "modify " + repr(('"' + ENCODED_SECRET + '"').encode("utf-16-le")) + " done"),
    ("URL-encoded, quote", "password=" + urllib.parse.quote(ENCODED_SECRET, safe="") + "&x=1"),
    ("URL-encoded, quote_plus", "q=" + urllib.parse.quote_plus(ENCODED_SECRET) + "&x=1"),
    ("URL-encoded, lower-case hex", "q=" + re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(),
                                                   urllib.parse.quote(ENCODED_SECRET, safe=""))),
    ("base64 of UTF-8", base64.b64encode(ENCODED_SECRET.encode()).decode()),
    ("base64, one byte before it", base64.b64encode(b"x" + ENCODED_SECRET.encode()).decode()),
    ("base64, two bytes before it", base64.b64encode(b"xy" + ENCODED_SECRET.encode() + b"tail").decode()),
    ("base64url", base64.urlsafe_b64encode(b"xy" + ENCODED_SECRET.encode()).decode()),
    ("base64 of UTF-16LE", base64.b64encode(b"\"\x00" + _UTF16).decode()),
    ("JSON-escaped", json.dumps({"secret": ENCODED_SECRET})),
    ("JSON-escaped, ensure_ascii=False", json.dumps({"secret": ENCODED_SECRET}, ensure_ascii=False)),
])
def test_registered_secrets_are_scrubbed_in_their_encoded_forms(form: str, text: str) -> None:
    register_secrets([ENCODED_SECRET])
    assert ENCODED_SECRET not in text  # each case is the encoded form only
    out = redact(text)
    assert REDACTED in out, form
    if form.startswith("base64"):
        # Only the characters that mix the secret's bits with its neighbours' may stay: at most 3 before it,
        # and after it at most 3 plus the encoded tail.
        before, after = out.split(REDACTED)
        assert len(before) <= 3 and len(after) <= (3 + 8 if "tail" in text or "two bytes" in form else 3), (form, out)
    else:
        assert not any(encoded in out for encoded in observability.encoded_forms(ENCODED_SECRET)), (form, out)


def test_settings_secrets_are_registered_by_install() -> None:
    env = {"AzureWebJobsStorage": "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=QWNjb3VudEtleVZhbHVl;",
           "GRAPH_AUTH": "client_secret", "GRAPH_TENANT_ID": GUEST, "GRAPH_CLIENT_ID": GUEST,
           "GRAPH_CLIENT_SECRET": "graph-client-secret-1", "GRAPH_CLIENT_STATE": "client-state-value-2",
           "GUESTSYNC_WEBHOOK_KEY": "webhook-function-key-3"}
    observability.install(load_settings(env))
    for secret in ("graph-client-secret-1", "client-state-value-2", "QWNjb3VudEtleVZhbHVl", "webhook-function-key-3"):
        assert secret not in redact(f"value {secret} leaked")


def test_records_carry_guest_and_correlation_id_and_json_lines(caplog: pytest.LogCaptureFixture) -> None:
    observability.install()
    logger = logging.getLogger("guestsync.test")
    with caplog.at_level(logging.INFO, logger="guestsync.test"):
        with guest_context(GUEST, "corr-1") as cid:
            logger.info("exporting")
        logger.info("outside")
    inside, outside = caplog.records
    assert cid == "corr-1" and inside.guest == GUEST and inside.correlation_id == "corr-1"  # type: ignore[attr-defined]
    assert outside.guest is None  # type: ignore[attr-defined]
    line = json.loads(JsonFormatter().format(inside))
    assert line["guest"] == GUEST and line["correlation_id"] == "corr-1" and line["message"] == "exporting"
    assert line["level"] == "INFO" and line["logger"] == "guestsync.test"


def test_nested_context_keeps_the_outer_correlation_id() -> None:
    with guest_context(GUEST) as outer, guest_context(GUEST) as inner:
        assert inner == outer


def test_export_metrics(metric_reader: InMemoryMetricReader) -> None:
    observability.record_export("created", 1234)
    observability.record_export("error")
    observability.record_export("held")
    observability.record_export("unchanged", 5)
    data = metric_reader.get_metrics_data()
    assert data is not None
    points: dict[str, list[object]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points[metric.name] = list(metric.data.data_points)
    latency = points["guestsync.provisioning.latency"]
    assert sum(p.count for p in latency) == 1 and sum(p.sum for p in latency) == 1234  # type: ignore[attr-defined]
    exports = {p.attributes["outcome"]: p.value for p in points["guestsync.exports"]}  # type: ignore[attr-defined]
    assert exports == {"created": 1, "error": 1, "held": 1, "unchanged": 1}
    assert sum(p.value for p in points["guestsync.export.errors"]) == 1  # type: ignore[attr-defined]
    assert sum(p.value for p in points["guestsync.deprovisioning.held"]) == 1  # type: ignore[attr-defined]


def test_the_function_app_quietens_per_request_sdk_logs(caplog: pytest.LogCaptureFixture) -> None:
    """The Functions worker logs at Information: azure-core's per-request header dumps and httpx's per-call
    lines must not become records (each would be scrubbed and shipped), while their warnings still do."""
    from shared.functions import QUIET_LOGGERS, create_app

    caplog.set_level(logging.INFO)  # as the worker runs
    caplog.set_level(logging.INFO, logger="guestsync")  # whatever an earlier test left
    for name in QUIET_LOGGERS:
        caplog.set_level(logging.NOTSET, logger=name)  # as in a fresh worker: restored after the test
    create_app("function", mail_alerts=False)
    for name in QUIET_LOGGERS:
        assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
        assert logging.getLogger(name).isEnabledFor(logging.WARNING), name
    assert logging.getLogger("guestsync.apply").isEnabledFor(logging.INFO)  # ours still speak
