"""Blocking calls off the event loop, on thread pools of our own.

The Functions worker runs every ``async def`` function on one event loop, and ``asyncio.to_thread`` shares
the loop's default executor (``min(32, cores + 4)`` threads: 6 on a 2-core plan). Exports hold a thread through
their LDAP round trips and apply through its storage calls; on one shared pool each starves the other and the
LDAP connection pool cannot be used in full. So each step gets its own threads.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

T = TypeVar("T")


async def run_blocking(executor: Executor, call: Callable[[], T]) -> T:
    """``call()`` on ``executor``, with the caller's context variables (the guest and correlation id that tag
    log records), as ``asyncio.to_thread`` would carry them."""
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(executor, context.run, call)
