"""What a check returns (``CheckResult``, ``Status``) and the fixed names and order of all checks (``CHECKS``)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

CHECKS = (
    "settings",
    "graph.signin", "graph.users", "graph.scope_group", "graph.mail",
    "webhook.notifications", "webhook.lifecycle", "graph.subscription",
    "storage.queues", "storage.table",
    "ad.ldaps", "ad.bind", "ad.guest_ou", "ad.archive_ou",
    "ad.probe.cleanup", "ad.probe.create", "ad.probe.modify", "ad.probe.move", "ad.probe.delete",
    "entra_connect",
)


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
