"""One unit of work for every change to state: read, decide, save under the ETag, and on a conflict read again and
decide again.

Every instance (the function app's, each agent's) may change the same guest at once; Table Storage's ETag makes the
second writer fail instead of overwriting. Services write a *decision* (a pure-ish function of what was read) and
leave the loop to :func:`change_guest` (a guest's record) or :func:`change_meta` (the small singleton documents:
the breaker window, alert digests, the catch-up marker). A decision may raise ``ConcurrencyError`` itself to ask
for a fresh read (e.g. an export planned from a snapshot that must not be trusted for what it found).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from shared.core.ports import MetaStore, RecordStore
from shared.core.records import ConcurrencyError, GuestRecord

T = TypeVar("T")




class _Read:
    """The first attempt reads the record (the default)."""


READ = _Read()


@dataclass(frozen=True)
class Change(Generic[T]):
    """What to do with the record (save ``record``, ``delete`` it, or neither) and what the caller gets back."""

    result: T
    record: GuestRecord | None = None
    delete: bool = False


@dataclass(frozen=True)
class Committed(Generic[T]):
    """The change that was written, and the record as saved (with its new ETag; None if nothing was saved)."""

    result: T
    saved: GuestRecord | None
    deleted: bool


def change_guest(
    store: RecordStore,
    uid: str,
    decide: Callable[[GuestRecord | None], Change[T]],
    *,
    start: GuestRecord | _Read | None = READ,
    attempts: int = 8,
) -> Committed[T]:
    """Read guest ``uid`` (or, on the first attempt only, take ``start``: a record carried by a message, or None
    to insert without reading), decide, write; on ``ConcurrencyError`` read again and decide again."""
    for attempt in range(attempts):
        record = store.get(uid) if attempt or isinstance(start, _Read) else start
        try:
            change = decide(record)
            if change.delete:
                store.delete(uid)
                return Committed(change.result, None, True)
            saved = store.save(change.record) if change.record is not None else None
        except ConcurrencyError:
            continue  # someone else wrote this guest (or the decision wants fresh state): decide again
        return Committed(change.result, saved, False)
    raise ConcurrencyError(f"guest {uid}: state kept changing under {attempts} attempts")


def change_meta(
    store: MetaStore,
    name: str,
    decide: Callable[[dict[str, Any]], tuple[dict[str, Any] | None, T]],
    *,
    attempts: int = 8,
) -> T:
    """Read the meta document ``name``, decide (a new body, or None to write nothing), write under its ETag; on a
    conflict read again and decide again. Only the writer that won gets its result."""
    for _ in range(attempts):
        body, etag = store.get_meta(name)
        new, result = decide(body)
        if new is None:
            return result
        try:
            store.save_meta(name, new, etag)
        except ConcurrencyError:
            continue
        return result
    raise ConcurrencyError(f"{name} kept changing under {attempts} attempts")
