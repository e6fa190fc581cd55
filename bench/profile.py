"""Sampling the function host with py-spy (optional: ``PY_SPY=/path/to/py-spy`` or ``py-spy`` on PATH).

``python -m bench throughput --profile-host`` records every thread of the host process (``--idle``: waiting
threads too) while the end-to-end run goes on, then prints what the event loop thread, on which the
runner runs every ``async def`` function, spent its time on.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import Counter
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


def event_loop_breakdown(folded: Path) -> list[str]:
    """Shares of the event loop thread's samples by what it was doing (blocking calls on the loop count as
    busy: nothing else runs on the loop meanwhile)."""
    categories: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        samples = int(count)
        name = re.sub(r"\d+", "#", frames[0])
        leaf = frames[-1]
        waiting = any(w in leaf for w in _WAIT_LEAVES)
        threads[name] += 0 if waiting else samples
        if "functions-event-loop" not in frames[0]:
            continue
        total += samples
        text = ";".join(frames)
        how = "waiting on the network" if waiting else "running Python"
        if "GraphClient.get_user" in text:
            kind = f"apply: Graph read through msgraph-sdk ({how})"
        elif "StateStore" in text:
            kind = f"apply: state table call, synchronous on the loop ({how})"
        elif "MessageQueue.send" in text:
            kind = f"apply: export queue send, synchronous on the loop ({how})"
        elif "_run_loop" in text and ("select" in leaf or "poll" in leaf):
            kind = "idle (waiting for events)"
        else:
            kind = f"other ({how})"
        categories[kind] += samples
    if not total:
        return ["no samples of the event loop thread"]
    lines = [f"event loop thread, {total} samples:"]
    lines += [f"  {count / total:6.1%}  {kind}" for kind, count in categories.most_common()]
    return lines


def export_threads_breakdown(folded: Path) -> list[str]:
    """What the export threads (``guestsync-export-*``) spent their samples on: waiting for the DC, for storage,
    for a pooled connection, or running Python; and how many of them were busy at all."""
    categories: Counter[str] = Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if "guestsync-export" not in frames[0]:
            continue
        samples = int(count)
        total += samples
        text = ";".join(frames)
        leaf = frames[-1]
        waiting = any(w in leaf for w in _WAIT_LEAVES)
        if "_worker (" in leaf or ("_worker" in text and "Queue.get" in text) or "SimpleQueue" in text:
            kind = "idle thread (no export to run)"
        elif "_acquire" in text and "directory" in text and waiting:
            kind = "waiting for a pooled LDAP connection"
        elif "ldap3" in text:
            kind = "LDAP: " + ("waiting for the DC" if waiting else "ldap3 running Python (BER, TLS)")
        elif "azure" in text:
            kind = "storage: " + ("waiting for Azurite" if waiting else "SDK running Python")
        else:
            kind = "other: " + ("waiting" if waiting else "running Python")
        categories[kind] += samples
    if not total:
        return ["no samples of export threads"]
    lines = [f"export threads, {total} samples (all threads together):"]
    lines += [f"  {count / total:6.1%}  {kind}" for kind, count in categories.most_common()]
    return lines
