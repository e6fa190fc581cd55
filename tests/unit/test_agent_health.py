"""The agent's health rules, its settings, and the credential its telemetry is sent with."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared import observability
from shared.agent.health import problems
from shared.core.domain import ConfigurationError
from shared.settings import AgentSettings, Settings, StorageSettings, load_agent_settings

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _beat(age_minutes: float) -> dict[str, Any]:
    return {"host": "srv1", "pid": 7, "seenAt": (NOW - timedelta(minutes=age_minutes)).isoformat(),
            "ageSeconds": age_minutes * 60}


def test_a_fresh_heartbeat_and_a_young_queue_are_healthy() -> None:
    assert problems([_beat(30), _beat(1)], ("m1", NOW - timedelta(minutes=9)), NOW) == []


def test_no_agent_for_ten_minutes_warns() -> None:
    (found,) = problems([_beat(12), _beat(45)], None, NOW)
    assert found.kind == "no-agent" and "12 minutes" in found.text and "srv1" in found.text


def test_no_agent_ever_warns() -> None:
    (found,) = problems([], None, NOW)
    assert found.kind == "no-agent" and "ever" in found.text


def test_an_export_message_older_than_ten_minutes_warns() -> None:
    (found,) = problems([_beat(1)], ("m1", NOW - timedelta(minutes=11)), NOW)
    assert found.kind == "export-lag" and found.key == "export-lag:m1" and "11 minutes" in found.text


def test_agent_settings_defaults_and_limits() -> None:
    assert load_agent_settings({}) == AgentSettings()
    assert load_agent_settings({"GUESTSYNC_AGENT_LEASE_SECONDS": "30", "GUESTSYNC_LOG_FILE": "/var/log/g.log"}
                               ) == AgentSettings(lease_seconds=30, log_file="/var/log/g.log")
    with pytest.raises(ConfigurationError, match="GUESTSYNC_AGENT_VISIBILITY_SECONDS"):
        load_agent_settings({"GUESTSYNC_AGENT_VISIBILITY_SECONDS": "1"})


def test_telemetry_is_sent_with_the_agents_entra_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    """Application Insights has local authentication off: configure_azure_monitor gets the credential the
    agent signs in to storage with (here its service principal's client secret)."""
    import azure.monitor.opentelemetry as monitor
    from azure.identity import ClientSecretCredential

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(monitor, "configure_azure_monitor", lambda **kwargs: calls.append(kwargs))
    settings = Settings(
        app_insights="InstrumentationKey=00000000-0000-0000-0000-000000000000;"
                     "IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/",
        storage=StorageSettings(queue_url="https://acct.queue.core.windows.net",
                                table_url="https://acct.table.core.windows.net", credential="clientsecret",
                                tenant_id="11111111-1111-1111-1111-111111111111",
                                client_id="22222222-2222-2222-2222-222222222222", client_secret="not-a-real-secret"))
    assert observability.configure_exporters(settings)
    (call,) = calls
    assert isinstance(call["credential"], ClientSecretCredential)
    assert call["connection_string"] == settings.app_insights


def test_telemetry_with_a_storage_key_has_no_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    import azure.monitor.opentelemetry as monitor

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(monitor, "configure_azure_monitor", lambda **kwargs: calls.append(kwargs))
    observability.configure_exporters(Settings(app_insights="InstrumentationKey=x",
                                               storage=StorageSettings(connection_string="UseDevelopmentStorage=true")))
    assert calls[0]["credential"] is None
