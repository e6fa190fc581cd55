"""Sampling the function host with py-spy (optional: ``PY_SPY=/path/to/py-spy`` or ``py-spy`` on PATH).

``python -m bench throughput --profile-host`` records every thread of the host process (``--idle``: waiting
threads too) while the end-to-end run goes on, then prints what the event loop thread, on which the
runner runs every ``async def`` function, spent its time on.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

_WAIT_LEAVES = ("readinto", "recv", "SSLSocket.read", "select (", "poll (", "Condition.wait", "_worker (")


def py_spy() -> str | None:
    return os.environ.get("PY_SPY") or shutil.which("py-spy")


def start(pid: int, out: Path, seconds: float) -> subprocess.Popen[bytes] | None:
    exe = py_spy()
    if exe is None:
        return None
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--rate", "100", "--idle", "--threads",  # noqa: S603
                             "--format", "raw", "--duration", str(int(seconds)), "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _breakdown(folded: Path, thread: str, title: str, classify: Callable[[str, str, bool], str]) -> list[str]:
    """Shares of the samples of the threads whose name contains ``thread``, by ``classify(stack text, leaf
    frame, waiting)``; ``title`` heads the lines."""
    categories: Counter[str] = Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if thread not in frames[0]:
            continue
        samples = int(count)
        total += samples
        leaf = frames[-1]
        categories[classify(";".join(frames), leaf, any(w in leaf for w in _WAIT_LEAVES))] += samples
    if not total:
        return [f"no samples of the {title}"]
    return [f"{title}, {total} samples:", *(f"  {n / total:6.1%}  {kind}" for kind, n in categories.most_common())]


def event_loop_breakdown(folded: Path) -> list[str]:
    """What the event loop thread was doing (blocking calls on the loop count as busy: nothing else runs on
    the loop meanwhile)."""

    def classify(text: str, leaf: str, waiting: bool) -> str:
        how = "waiting on the network" if waiting else "running Python"
        if "GraphClient.get_user" in text:  # get_user and get_users
            return f"apply: Graph read through msgraph-sdk ({how})"
        if "StateStore" in text:
            return f"apply: state table call, synchronous on the loop ({how})"
        if "MessageQueue.send" in text:
            return f"apply: export queue send, synchronous on the loop ({how})"
        if "_run_loop" in text and ("select" in leaf or "poll" in leaf):
            return "idle (waiting for events)"
        return f"other ({how})"

    return _breakdown(folded, "functions-event-loop", "event loop thread", classify)


def export_threads_breakdown(folded: Path) -> list[str]:
    """What the export threads (``guestsync-export-*``, all together) spent their samples on: waiting for the
    DC, for storage, for a pooled connection, running Python, or idle for want of an export to run."""

    def classify(text: str, leaf: str, waiting: bool) -> str:
        if "_worker (" in leaf or ("_worker" in text and "Queue.get" in text) or "SimpleQueue" in text:
            return "idle thread (no export to run)"
        if "_acquire" in text and "directory" in text and waiting:
            return "waiting for a pooled LDAP connection"
        if "ldap3" in text:
            return "LDAP: " + ("waiting for the DC" if waiting else "ldap3 running Python (BER, TLS)")
        if "azure" in text:
            return "storage: " + ("waiting for Azurite" if waiting else "SDK running Python")
        return "other: " + ("waiting" if waiting else "running Python")

    return _breakdown(folded, "guestsync-export", "export threads", classify)
