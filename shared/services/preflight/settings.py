"""The ``settings`` check: every setting loads, and the AD settings make a valid ``Directory``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.settings import Settings

if TYPE_CHECKING:  # the adapters are imported where they are used: a check loads only what it needs
    from shared.adapters.directory import Directory


def _directory(settings: Settings) -> Directory | None:
    """The worker's adapter (its constructor validates the DNs and AD_CA_FILE: configuration errors)."""
    if settings.directory is None:
        return None
    from shared.adapters.directory import Directory

    return Directory(settings.directory, archive_ou=settings.deprovisioning.archive_ou)


def _settings_summary(settings: Settings) -> str:
    parts = [f"Graph {settings.graph.auth} at {settings.graph.endpoint}", f"worker mode {settings.worker_mode}",
             f"deprovision {settings.deprovisioning.deprovision}"]
    if settings.deprovisioning.scope_group_id:
        parts.append(f"scoping group {settings.deprovisioning.scope_group_id}")
    parts.append(f"mail {settings.mail.mode}")
    parts.append(f"AD {settings.directory.server}" if settings.directory else "no AD here")
    return "all settings valid: " + ", ".join(parts)
