"""Lifecycle settings: deprovisioning policy, grace period, scoping group and the mass-change breaker."""

from datetime import UTC, datetime

import pytest

from shared.core.deprovisioning import ExportAction, breaker_admit, plan_export
from shared.core.domain import (
    GUEST_USER_ACCOUNT_CONTROL,
    UAC_ACCOUNTDISABLE,
    AdAccount,
    ConfigurationError,
    GuestStatus,
)
from shared.settings import DeprovisioningSettings, load_deprovisioning_settings, load_settings

ARCHIVE_OU = "OU=B2BGuestArchive,DC=contoso,DC=com"
GROUP_ID = "0A1B2C3D-4E5F-4A6B-8C7D-9E0F1A2B3C4D"

BASE: dict[str, str] = {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}
AD: dict[str, str] = {
    "AD_SERVER": "ldaps://dc1.contoso.com",
    "AD_BIND_USER": "CN=svc-guestsync,OU=Service,DC=contoso,DC=com",
    "AD_BIND_PASSWORD": "not-a-real-password",
    "AD_GUEST_OU": "OU=B2BGuest,DC=contoso,DC=com",
    "GUESTSYNC_OWNERSHIP_KEY": "a-test-ownership-key-of-32-chars-or-more",
}


def env(*parts: dict[str, str], **extra: str) -> dict[str, str]:
    values = dict(BASE)
    for part in parts:
        values.update(part)
    values.update(extra)
    return values


def test_defaults_without_ad() -> None:
    lifecycle = load_settings(env()).deprovisioning
    assert lifecycle == DeprovisioningSettings()
    assert lifecycle.deprovision == "archive"
    assert lifecycle.archive_ou is None
    assert lifecycle.breaker_threshold == 25
    assert lifecycle.breaker_window_minutes == 60
    assert lifecycle.delete_after_days is None
    assert lifecycle.scope_group_id is None


def test_defaults_with_ad() -> None:
    settings = load_settings(env(AD, AD_ARCHIVE_OU=ARCHIVE_OU))
    assert settings.directory is not None
    assert settings.deprovisioning == DeprovisioningSettings(archive_ou=ARCHIVE_OU)


def test_blank_values_mean_default() -> None:
    lifecycle = load_deprovisioning_settings(
        {"GUESTSYNC_DEPROVISION": " ", "GUESTSYNC_BREAKER_THRESHOLD": "", "GUESTSYNC_DELETE_AFTER_DAYS": ""},
        need_archive=False,
    )
    assert lifecycle == DeprovisioningSettings()


def test_lifecycle_defaults_direct() -> None:
    assert load_deprovisioning_settings({}, need_archive=False) == DeprovisioningSettings()


@pytest.mark.parametrize("extra", [{}, {"GUESTSYNC_DEPROVISION": "archive"}])
def test_ad_without_archive_ou_is_refused(extra: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError, match="AD_ARCHIVE_OU"):
        load_settings(env(AD, extra))


def test_need_directory_without_archive_ou_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="AD_ARCHIVE_OU"):
        load_settings(env(AD), need_directory=True)


def test_need_archive_without_archive_ou_is_refused_direct() -> None:
    with pytest.raises(ConfigurationError, match="AD_ARCHIVE_OU"):
        load_deprovisioning_settings({}, need_archive=True)


@pytest.mark.parametrize("value", ["none", "NONE", " None "])
def test_deprovision_none_needs_no_archive_ou(value: str) -> None:
    settings = load_settings(env(AD, GUESTSYNC_DEPROVISION=value))
    assert settings.deprovisioning.deprovision == "none"
    assert settings.deprovisioning.archive_ou is None


@pytest.mark.parametrize("value", ["delete", "disable", "archive,none", "0"])
def test_bad_deprovision_value(value: str) -> None:
    with pytest.raises(ConfigurationError, match="GUESTSYNC_DEPROVISION"):
        load_settings(env(AD, AD_ARCHIVE_OU=ARCHIVE_OU, GUESTSYNC_DEPROVISION=value))


def test_delete_after_days() -> None:
    lifecycle = load_settings(env(AD, AD_ARCHIVE_OU=ARCHIVE_OU, GUESTSYNC_DELETE_AFTER_DAYS="90")).deprovisioning
    assert lifecycle.delete_after_days == 90


def test_delete_after_zero_days_is_allowed() -> None:
    lifecycle = load_settings(env(AD, AD_ARCHIVE_OU=ARCHIVE_OU, GUESTSYNC_DELETE_AFTER_DAYS="0")).deprovisioning
    assert lifecycle.delete_after_days == 0


@pytest.mark.parametrize("value", ["ninety", "1.5", "30d", "-1", "-30"])
def test_bad_delete_after_days(value: str) -> None:
    with pytest.raises(ConfigurationError, match="GUESTSYNC_DELETE_AFTER_DAYS"):
        load_settings(env(AD, AD_ARCHIVE_OU=ARCHIVE_OU, GUESTSYNC_DELETE_AFTER_DAYS=value))


def test_delete_after_days_with_deprovision_none() -> None:
    with pytest.raises(ConfigurationError, match="GUESTSYNC_DELETE_AFTER_DAYS"):
        load_settings(env(AD, GUESTSYNC_DEPROVISION="none", GUESTSYNC_DELETE_AFTER_DAYS="30"))


def test_scope_group_id_is_lower_cased() -> None:
    lifecycle = load_settings(env(GUESTSYNC_SCOPE_GROUP_ID=f" {GROUP_ID} ")).deprovisioning
    assert lifecycle.scope_group_id == GROUP_ID.lower()


@pytest.mark.parametrize("value", ["guests", f"{{{GROUP_ID}}}", GROUP_ID[:-1], f"{GROUP_ID}x", "' or 1=1"])
def test_scope_group_id_must_be_a_guid(value: str) -> None:
    with pytest.raises(ConfigurationError, match="GUESTSYNC_SCOPE_GROUP_ID"):
        load_settings(env(GUESTSYNC_SCOPE_GROUP_ID=value))


def test_breaker_settings() -> None:
    lifecycle = load_settings(
        env(GUESTSYNC_BREAKER_THRESHOLD="5", GUESTSYNC_BREAKER_WINDOW_MINUTES="15")
    ).deprovisioning
    assert lifecycle.breaker_threshold == 5
    assert lifecycle.breaker_window_minutes == 15


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_bad_breaker_threshold(value: str) -> None:
    with pytest.raises(ConfigurationError, match="GUESTSYNC_BREAKER_THRESHOLD"):
        load_settings(env(GUESTSYNC_BREAKER_THRESHOLD=value))


@pytest.mark.parametrize("value", ["0", "-5", "hour"])
def test_bad_breaker_window(value: str) -> None:
    with pytest.raises(ConfigurationError, match="GUESTSYNC_BREAKER_WINDOW_MINUTES"):
        load_settings(env(GUESTSYNC_BREAKER_WINDOW_MINUTES=value))


# --- values so large the date arithmetic overflows -------------------------------------------------------------

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
GUEST_ID = "6ea91a8d-e32e-41a1-b7bd-d2d185eed0e0"


def test_huge_delete_after_days_is_refused_or_harmless() -> None:
    try:
        policy = load_deprovisioning_settings(
            {"AD_ARCHIVE_OU": ARCHIVE_OU, "GUESTSYNC_DELETE_AFTER_DAYS": "3000000"}, need_archive=True
        )
    except ConfigurationError as exc:
        assert "GUESTSYNC_DELETE_AFTER_DAYS" in str(exc)
        return
    account = AdAccount(f"CN={GUEST_ID},{ARCHIVE_OU}", "S-1-5-21-1-2-3-1104", GUEST_ID[:20],
                        GUEST_USER_ACCOUNT_CONTROL | UAC_ACCOUNTDISABLE, {})
    plan = plan_export(status=GuestStatus.ARCHIVED, reason="gone", approval=None, archived_at=NOW, account=account,
                       desired={}, policy=policy, now=NOW)
    assert plan.action is ExportAction.NONE


def test_huge_breaker_window_is_refused_or_harmless() -> None:
    try:
        policy = load_deprovisioning_settings({"GUESTSYNC_BREAKER_WINDOW_MINUTES": "2000000000"}, need_archive=False)
    except ConfigurationError as exc:
        assert "GUESTSYNC_BREAKER_WINDOW_MINUTES" in str(exc)
        return
    verdict = breaker_admit((), NOW, threshold=policy.breaker_threshold,
                            window_minutes=policy.breaker_window_minutes)
    assert verdict.allowed
