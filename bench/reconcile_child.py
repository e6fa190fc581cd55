"""One measured reconcile (or floor) in a process of its own, so that its time and memory are its own.

    python -m bench.reconcile_child full|incremental|floor|floor-incremental|graph-raw [--tracemalloc]

Settings come from the environment (the stack's). Prints one JSON object: wall time per phase, counts, and
memory (peak RSS, VmHWM, before and after the run, in KiB; with ``--tracemalloc`` also the traced peak, which makes
the run much slower, so its time is not comparable).

* ``full`` / ``incremental``: ``shared.services.reconcile.reconcile`` with the directory, ``full=True`` or from
  the stored deltaLink; export messages it queues are counted (a no-op queues none).
* ``floor``: users/delta full pass through the msgraph-sdk adapter (GraphClient.delta), then the paged scan
  of the managed OUs (Directory.iter_managed_accounts), nothing else.
* ``floor-incremental``: the same with the stored deltaLink instead of a full pass.
* ``graph-raw``: users/delta full pass with plain httpx and json (no SDK), to separate the simulator's own
  cost from the SDK's parsing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
import tracemalloc
from typing import Any

from shared.settings import Settings, load_settings


def _rss_kb() -> int:
    """This process's peak resident set size in KiB: VmHWM, the high-water mark of its own address space.
    ru_maxrss is not that: execve keeps the larger of it and the RSS of the address space it replaces, which
    for a child that subprocess starts with vfork is the parent's (the bench, holding the Graph simulator's
    100,000 users: 360 MB), so every child would report at least that."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


async def _floor(settings: Settings, incremental: bool) -> dict[str, Any]:
    from shared.adapters.directory import Directory
    from shared.adapters.graph import GraphClient
    from shared.adapters.state import StateStore
    from shared.services.reconcile import DELTA_META

    link = None
    if incremental:
        state = StateStore.from_settings(settings.storage, settings.state_table)
        link = state.get_meta(DELTA_META)[0].get("link")
        if not link:
            raise SystemExit("no stored deltaLink: run a full reconcile first")
    assert settings.directory is not None
    async with GraphClient(settings.graph) as graph:
        with Directory(settings.directory, archive_ou=settings.deprovisioning.archive_ou) as directory:
            rss_before = _rss_kb()
            started = time.monotonic()
            users = pages = 0
            async for page in graph.delta(link):
                users += len(page.users) + len(page.removed)
                pages += 1
            graph_s = time.monotonic() - started
            accounts = sum(1 for _ in directory.iter_managed_accounts())
            total = time.monotonic() - started
    return {"graph_s": graph_s, "ad_s": total - graph_s, "total_s": total, "graph_users": users,
            "graph_pages": pages, "ad_accounts": accounts, "rss_before_kb": rss_before, "rss_after_kb": _rss_kb()}


async def _graph_raw(settings: Settings) -> dict[str, Any]:
    """users/delta over plain httpx (token from the same authority), pages followed until the deltaLink."""
    import httpx

    from shared.core.domain import GRAPH_USER_SELECT

    verify: Any = settings.graph.ca_file or True
    async with httpx.AsyncClient(verify=verify, timeout=120) as client:
        token = await client.post(
            f"{settings.graph.authority_host}/{settings.graph.tenant_id}/oauth2/v2.0/token",
            data={"grant_type": "client_credentials", "client_id": settings.graph.client_id,
                  "client_secret": settings.graph.client_secret, "scope": settings.graph.scopes[0]})
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        started = time.monotonic()
        url: str | None = f"{settings.graph.endpoint}/users/delta?$select={','.join(GRAPH_USER_SELECT)}"
        users = pages = 0
        while url:
            response = await client.get(url, headers=headers)
            body = response.json()
            users += len(body.get("value", []))
            pages += 1
            url = body.get("@odata.nextLink")
        return {"graph_s": time.monotonic() - started, "graph_users": users, "graph_pages": pages}


async def _reconcile(settings: Settings, full: bool) -> dict[str, Any]:
    from shared.adapters.directory import Directory
    from shared.adapters.graph import GraphClient
    from shared.adapters.queues import MessageQueue
    from shared.adapters.state import StateStore
    from shared.services.reconcile import Reconciler

    state = StateStore.from_settings(settings.storage, settings.state_table)
    queue = MessageQueue.from_settings(settings.storage, settings.export_queue)
    exports = 0

    def send(text: str) -> None:
        nonlocal exports
        exports += 1
        queue.send(text)

    marks: dict[str, list[float]] = {}

    def progress(phase: str, _count: int) -> None:
        now = time.monotonic()
        marks.setdefault(phase, [now, now])[1] = now

    assert settings.directory is not None
    async with GraphClient(settings.graph) as graph:
        with Directory(settings.directory, archive_ou=settings.deprovisioning.archive_ou) as directory:
            rss_before = _rss_kb()
            started = time.monotonic()
            report = await Reconciler(graph, state, send, settings.deprovisioning, directory=directory,
                                      progress=progress).run(full=full)
            total = time.monotonic() - started
    phases: dict[str, float] = {}
    previous = started
    for phase in ("state", "graph", "ad"):
        if phase in marks:
            phases[phase] = marks[phase][1] - previous
            previous = marks[phase][1]
    phases["after"] = started + total - previous
    body = report.as_dict()
    return {"total_s": total, "phases_s": phases, "exports_queued": exports, "delta_mode": body["deltaMode"],
            "graph_users": body["graphUsers"], "ad_accounts": body["adAccounts"],
            "guests_in_state": body["guestsInState"], "actions": body["actions"],
            "rss_before_kb": rss_before, "rss_after_kb": _rss_kb()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reconcile_child")
    parser.add_argument("mode", choices=("full", "incremental", "floor", "floor-incremental", "graph-raw"))
    parser.add_argument("--tracemalloc", action="store_true")
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    settings = load_settings(need_directory=True)
    if args.tracemalloc:
        tracemalloc.start()
    if args.mode in ("full", "incremental"):
        result = asyncio.run(_reconcile(settings, args.mode == "full"))
    elif args.mode == "graph-raw":
        result = asyncio.run(_graph_raw(settings))
    else:
        result = asyncio.run(_floor(settings, args.mode == "floor-incremental"))
    if args.tracemalloc:
        result["tracemalloc_peak_kb"] = tracemalloc.get_traced_memory()[1] // 1024
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
