"""The report of ``guestsync check``: the exit code, the counts, the JSON and the text rendering."""

from __future__ import annotations

from typing import Any

from shared.services.preflight.results import CheckResult, Status


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
