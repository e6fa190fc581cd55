"""What a check returns (``CheckResult``, ``Status``) and the fixed names and order of all checks (``CHECKS``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from shared.core.failures import FIXES, Cause

T = TypeVar("T")

#: Seconds each check may take before it fails as a timeout (``guestsync check --timeout``).
DEFAULT_TIMEOUT = 20.0

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


def _timed_out(name: str, what: str, system: str, timeout: float) -> CheckResult:
    return CheckResult(name, Status.FAIL, f"{what}: no answer within {timeout:g} s", FIXES[system][Cause.TIMEOUT])


def bounded(call: Callable[[], T], timeout: float) -> T:
    """``call()`` in a daemon thread, at most ``timeout`` seconds: a peer that accepts TCP and never answers
    cannot hold the check (the abandoned thread ends with the process). TimeoutError when it took longer."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=run, name="guestsync-check", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise TimeoutError(f"no answer within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]
