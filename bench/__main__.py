"""``python -m bench`` runs every benchmark at its default size; ``python -m bench <name> [flags]`` one."""

from __future__ import annotations

import sys
from types import ModuleType

from bench import cost, cpu_paths, latency, reconcile, throughput, webhook
from bench.common import Report, machine_facts, say

BENCHMARKS: dict[str, ModuleType] = {m.NAME: m for m in (throughput, latency, webhook, reconcile, cost, cpu_paths)}


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        say(__doc__ or "")
        say("benchmarks: " + ", ".join(BENCHMARKS) + " (python -m bench <name> --help for its flags)")
        return 0
    facts = machine_facts()
    say("machine: " + ", ".join(f"{k} {v}" for k, v in facts.items()))
    if argv:
        name, rest = argv[0], argv[1:]
        if name not in BENCHMARKS:
            say(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
            return 2
        reports: list[Report] = [BENCHMARKS[name].main(rest)]
    else:
        reports = []
        for module in BENCHMARKS.values():
            say(f"\n=== {module.NAME} ===")
            reports.append(module.main([]))
    say("\nsummary:")
    for report in reports:
        for outcome in report.outcomes:
            say("  " + outcome.line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
