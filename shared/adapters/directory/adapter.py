"""``Directory``: the adapter, one class composed of one part per concern over the connection."""

from __future__ import annotations

from shared.adapters.directory.accounts import GuestAccounts
from shared.adapters.directory.archive import GuestArchive
from shared.adapters.directory.probe import ProbeAccounts


class Directory(GuestAccounts, GuestArchive, ProbeAccounts):
    """Guest shadow accounts in the guest OU (and, if given, the archive OU) of one AD domain.

    The connection and DC selection (``connection``), reads (``reads``), account writes (``accounts``),
    deprovisioning moves (``archive``) and the check's probe (``probe``) each live in a module of their own."""
