"""Fixtures of the reliability suite: the whole stack (tests/plugins/stack.py), watched by the invariants."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from ldap3.core.exceptions import LDAPException

from tests.plugins.samba import GuestsyncDC
from tests.plugins.stack import Stack
from tests.reliability import invariants


@pytest.fixture
def rstack(stack: Stack, samba_dc: GuestsyncDC, caplog: pytest.LogCaptureFixture,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """The stack, with the domain outside the managed OUs snapshotted, DEBUG logs captured and generated
    passwords recorded, for ``invariants.assert_invariants``. A scenario may replace ``stack.host`` (a new host
    after a kill) and ``stack.admin`` (after a DC restart); they are stopped and unbound here."""
    host, admin = stack.host, stack.admin
    invariants.watch(stack, samba_dc, caplog, monkeypatch)
    try:
        yield stack
    finally:
        invariants.unwatch(stack)
        if stack.host is not host:  # a new host replaced a killed one
            stack.host.stop()
        if stack.admin is not admin:  # bound again after a DC restart
            with contextlib.suppress(LDAPException):
                stack.admin.unbind()
