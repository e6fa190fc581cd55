"""``DirectoryPool``: Directory instances lent to one thread at a time, so parallel exports each have a
connection of their own; ``LazyLease`` borrows one only at its first use."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from shared.adapters.dc_locator import DcLocator
from shared.adapters.directory.adapter import Directory
from shared.core.errors import DirectoryError, DirectoryUnavailableError
from shared.settings import DirectorySettings, parse_ad_server


class DirectoryPool:
    """Up to ``size`` Directory instances, each with its own LDAP connection, each lent to one thread at a time.

    One Directory serialises every operation on its connection, so parallel exports sharing one wait for each
    other's round trips; with a lease per export, one guest's searches overlap another's add. Instances are
    built on demand (an instance connects on its first operation) and the most recently returned one is lent
    first, so a quiet worker keeps few connections open. A lent instance is not checked on return: a dropped
    connection is re-opened by the instance itself on its next operation.
    """

    def __init__(self, settings: DirectorySettings, *, archive_ou: str | None = None, size: int | None = None) -> None:
        self.size = settings.connections if size is None else size
        if self.size < 1:
            raise ValueError(f"a directory pool needs at least one connection, not {self.size}")
        self._settings = settings
        self._archive_ou = archive_ou
        # one view of which DCs are down for all connections, so that each does not wait for a dead DC's timeout
        self._locator = DcLocator(parse_ad_server(settings.server))
        first = Directory(settings, archive_ou=archive_ou, locator=self._locator)  # validates the settings now
        self._built: list[Directory] = [first]
        self._idle: list[Directory] = [first]
        self._changed = threading.Condition()
        self._closed = False

    @property
    def built(self) -> int:
        """Instances built so far (never more than ``size``)."""
        with self._changed:
            return len(self._built)

    @property
    def in_use(self) -> int:
        """Instances lent right now."""
        with self._changed:
            return len(self._built) - len(self._idle)

    @contextlib.contextmanager
    def lease(self, timeout: float | None = None) -> Iterator[Directory]:
        """A Directory for this thread alone until the block ends; it goes back to the pool even when the block
        raises. Waits while all ``size`` are lent: DirectoryUnavailableError after ``timeout`` seconds (None:
        no limit), DirectoryError once the pool is closed."""
        directory = self._acquire(timeout)
        try:
            yield directory
        finally:
            self._release(directory)

    @contextlib.contextmanager
    def lease_on_first_use(self, timeout: float | None = None) -> Iterator[LazyLease]:
        """Like ``lease``, but the connection is borrowed only at the first directory call and kept until the
        block ends: work before it (an export's state read) holds no connection, and every call after it goes
        over the same one (one DC, so a read sees the write before it)."""
        lazy = LazyLease(self, timeout)
        try:
            yield lazy
        finally:
            lazy.release()

    def _acquire(self, timeout: float | None) -> Directory:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while True:
                if self._closed:
                    raise DirectoryError("the directory pool is closed")
                if self._idle:
                    return self._idle.pop()
                if len(self._built) < self.size:
                    directory = Directory(self._settings, archive_ou=self._archive_ou, locator=self._locator)
                    self._built.append(directory)
                    return directory
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise DirectoryUnavailableError(
                        f"all {self.size} LDAP connections (GUESTSYNC_LDAP_CONNECTIONS) stayed in use for {timeout} s"
                    )
                self._changed.wait(remaining)

    def _release(self, directory: Directory) -> None:
        directory.end_sequence()  # the borrower's sequence is over: the next one may start on another DC
        with self._changed:
            closed = self._closed
            if not closed:
                self._idle.append(directory)
                self._changed.notify()
        if closed:
            directory.close()

    def close(self) -> None:
        """Close the idle connections now and each lent one when it comes back; later leases are refused.
        (Closing a lent one now would only make its holder reconnect, leaving a connection nobody closes.)"""
        with self._changed:
            self._closed = True
            idle, self._idle = self._idle, []
            self._changed.notify_all()
        for directory in idle:
            directory.close()

    def __enter__(self) -> DirectoryPool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class LazyLease:
    """A pooled Directory borrowed at its first use (see ``DirectoryPool.lease_on_first_use``)."""

    def __init__(self, pool: DirectoryPool, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._directory: Directory | None = None

    @property
    def borrowed(self) -> bool:
        return self._directory is not None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if self._directory is None:
            self._directory = self._pool._acquire(self._timeout)
        return getattr(self._directory, name)

    def release(self) -> None:
        directory, self._directory = self._directory, None
        if directory is not None:
            self._pool._release(directory)
