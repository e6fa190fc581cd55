"""The UPN suffixes a guest may have: the tenant's initial domain (from Graph) plus GUESTSYNC_UPN_SUFFIXES.

Where the rule runs and where its inputs come from:

* The rule itself is pure (``shared.core.ad_rules.guest_upn_problem``). The **export** enforces it, before any LDAP
  call, in both worker modes (the queue-triggered function and the on-premises agent run the same
  ``export_guest``): it is the last step before AD, so nothing that reaches AD escapes it. Apply does not refuse
  on its own: it would only repeat the same check one hop earlier, and one place deciding keeps the error, the
  metric and the alert in one spot.
* The tenant's initial domain is read from Graph (``GET /organization?$select=verifiedDomains``) by **apply**,
  which always has Graph, and kept in the state table's meta partition (``tenant``). It never changes for a
  tenant, so one read a day is plenty; the export reads the meta entity, not Graph, and keeps it in memory for
  a few minutes, so the export path makes no Graph call per guest. Only when the meta entity is missing (an
  export queued before apply ever stored it) does the worker read Graph once itself: both worker modes have
  Graph credentials (the agent runs the reconcile).
* A failed Graph read never blocks apply; the export then knows fewer suffixes and refuses, which is the safe
  way to be wrong (the guest shows the reason; the reconcile retries guests in error).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.core.domain import GuestsyncError
from shared.core.ports import GuestStore, OrganizationReader

log = logging.getLogger("guestsync.tenant")
TENANT_META = "tenant"
#: After this, apply reads the initial domain from Graph again (it does not change; this only catches a
#: state table pointed at another tenant).
GRAPH_REFRESH = timedelta(days=1)
#: How long a process trusts its in-memory copy before reading the meta entity again.
MEMORY_SECONDS = 300.0



class _Cache:
    """Per state store (one per table and process): the initial domain and when it was taken from state."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: weakref.WeakKeyDictionary[GuestStore, tuple[str, datetime, float]] = (
            weakref.WeakKeyDictionary())

    def get(self, state: GuestStore) -> tuple[str, datetime] | None:
        with self._lock:
            found = self._values.get(state)
        if found is None or time.monotonic() - found[2] > MEMORY_SECONDS:
            return None
        return found[0], found[1]

    def put(self, state: GuestStore, domain: str, read_at: datetime) -> None:
        with self._lock:
            self._values[state] = (domain, read_at, time.monotonic())

    def clear(self) -> None:
        with self._lock:
            self._values.clear()


_CACHE = _Cache()


def _from_state(state: GuestStore) -> tuple[str, datetime] | None:
    cached = _CACHE.get(state)
    if cached is not None:
        return cached
    body, _ = state.get_meta(TENANT_META)
    domain, read_at = body.get("initialDomain"), body.get("readAt")
    if not isinstance(domain, str) or not domain or not isinstance(read_at, str):
        return None
    try:
        when = datetime.fromisoformat(read_at)
    except ValueError:
        return None
    _CACHE.put(state, domain, when)
    return domain, when


def remembered_initial_domain(state: GuestStore) -> str | None:
    """The initial domain from this process's memory only (no storage call: safe on the event loop)."""
    found = _CACHE.get(state)
    return found[0] if found else None


def known_initial_domain(state: GuestStore) -> str | None:
    """The initial domain as stored by apply (memory, then the meta entity); None when never stored."""
    found = _from_state(state)
    return found[0] if found else None


_READ_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def _read_lock() -> asyncio.Lock:
    """One Graph read at a time per event loop: a burst of first guests waits for the first read, not one each."""
    loop = asyncio.get_running_loop()
    lock = _READ_LOCKS.get(loop)
    if lock is None:
        lock = _READ_LOCKS[loop] = asyncio.Lock()
    return lock


async def refresh_initial_domain(graph: OrganizationReader, state: GuestStore, *, force: bool = False) -> str:
    """The initial domain, read from Graph and stored when state has none or an old one (or ``force``)."""
    found = await asyncio.to_thread(_from_state, state)
    if found is not None and not force and datetime.now(UTC) - found[1] < GRAPH_REFRESH:
        return found[0]
    async with _read_lock():
        if not force:  # another task may have read it while this one waited
            found = await asyncio.to_thread(_from_state, state)
            if found is not None and datetime.now(UTC) - found[1] < GRAPH_REFRESH:
                return found[0]
        return await _read_and_store(graph, state, found)


async def _read_and_store(graph: OrganizationReader, state: GuestStore, found: tuple[str, datetime] | None) -> str:
    domain = await graph.get_initial_domain()
    now = datetime.now(UTC)
    body: dict[str, Any] = {"initialDomain": domain, "readAt": now.isoformat()}
    await asyncio.to_thread(state.put_meta, TENANT_META, body)  # last writer wins: all write the same value
    _CACHE.put(state, domain, now)
    if found is None or found[0] != domain:
        log.info("tenant initial domain (allowed guest UPN suffix): %s", domain)
    return domain


async def ensure_initial_domain(graph: OrganizationReader, state: GuestStore) -> str | None:
    """``refresh_initial_domain`` for callers that must go on without it (apply, the worker): a Graph failure
    is logged and the stored value (or None) is returned."""
    try:
        return await refresh_initial_domain(graph, state)
    except GuestsyncError as exc:
        known = known_initial_domain(state)
        log.warning("could not read the tenant's initial domain from Graph (%s); guest UPN suffixes allowed: "
                    "%s plus GUESTSYNC_UPN_SUFFIXES (Organization.Read.All granted?)", exc, known or "none")
        return known


def allowed_suffixes(state: GuestStore, configured: Collection[str]) -> frozenset[str]:
    """What a guest's UPN may end in: the stored initial domain plus the configured suffixes."""
    initial = known_initial_domain(state)
    return frozenset({*configured, *((initial,) if initial else ())})


def forget() -> None:
    """Drop the in-memory copies (tests)."""
    _CACHE.clear()
