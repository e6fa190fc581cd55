"""DC failover against the real Samba DC: AD_SERVER with several DCs or a DNS SRV domain, a dead first DC, every
way of not reaching a DC raising DirectoryUnavailableError, and one operation sequence staying on one DC.

The other "DC" of the sequence tests is the same Samba DC behind a TLS relay on another loopback address (see
``Relay``): a DC that can be killed at any moment without touching the session DC, and whose connections die
with it as a DC's do.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.localenv.certs import create_local_pki
from devtools.localenv.samba import random_loopback_ip
from shared.adapters.dc_locator import DcLocator, DcLocatorError, SrvRecord
from shared.adapters.directory import Directory, DirectoryPool
from shared.core.domain import GUEST_USER_ACCOUNT_CONTROL, GuestStatus
from shared.core.errors import DirectoryUnavailableError
from shared.settings import DirectorySettings, parse_ad_server
from tests.integration.test_directory import guest_values, password_for
from tests.plugins.samba import GuestsyncDC
from tests.plugins.stack import Stack

pytestmark = pytest.mark.integration


def dead_address() -> str:
    """A loopback address and port where nothing listens: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"ldaps://localhost:{port}"


class Relay:
    """A second "DC": a TLS relay on its own loopback address (LDAPS 636 and the Global Catalog 3269) to the Samba
    DC, with a certificate for that address from a CA of its own. ``kill()`` closes the listeners and every
    relayed connection, which is what a client sees of a DC that dies."""

    def __init__(self, dc: GuestsyncDC, workdir: Path) -> None:
        self.ip = random_loopback_ip()
        pki = create_local_pki(workdir, ("localhost",), (self.ip,))
        self.ca_bundle = workdir / "ca-bundle.pem"  # AD_CA_FILE for both DCs
        self.ca_bundle.write_bytes(dc.ca_file.read_bytes() + pki.ca_file.read_bytes())
        self._serve = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._serve.load_cert_chain(pki.cert_file, pki.key_file)
        self._upstream = ssl.create_default_context(cafile=str(dc.ca_file))
        self._dc_ip = dc.listen_ip
        self._loop = asyncio.new_event_loop()
        self._writers: list[asyncio.StreamWriter] = []
        self._servers: list[asyncio.Server] = []
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        for port in (636, 3269):
            asyncio.run_coroutine_threadsafe(self._listen(port), self._loop).result(10)

    @property
    def url(self) -> str:
        return f"ldaps://{self.ip}:636"

    async def _listen(self, port: int) -> None:
        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection(self._dc_ip, port, ssl=self._upstream)
            self._writers += [writer, up_writer]
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

        self._servers.append(await asyncio.start_server(relay, self.ip, port, ssl=self._serve))

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ssl.SSLError, ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    def kill(self) -> None:
        async def kill() -> None:
            for server in self._servers:
                server.close()
            for writer in self._writers:
                writer.transport.abort()

        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(kill(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)


@pytest.fixture
def relay(samba_dc: GuestsyncDC, tmp_path: Path) -> Iterator[Relay]:
    relay = Relay(samba_dc, tmp_path / "relay")
    yield relay
    relay.kill()


def settings_for(directory_settings: DirectorySettings, *urls: str, relay: Relay | None = None) -> DirectorySettings:
    settings = dataclasses.replace(directory_settings, server=", ".join(urls), connect_timeout=2)
    return dataclasses.replace(settings, ca_file=str(relay.ca_bundle)) if relay else settings


def create(directory: Directory) -> tuple[str, str]:
    uid = str(uuid.uuid4())
    values = guest_values(uid)
    account = directory.create_guest(uid, values, password_for(values), GUEST_USER_ACCOUNT_CONTROL)
    return uid, account.dn


def test_first_dc_dead_the_next_one_does_the_export(directory_settings: DirectorySettings, samba_dc: GuestsyncDC,
                                                     clean_guest_ou: None) -> None:
    settings = settings_for(directory_settings, dead_address(), samba_dc.ldaps_url)
    with Directory(settings) as directory:
        uid, dn = create(directory)
        assert directory.domain_controller == samba_dc.ldaps_url
        found = directory.find_guest(uid)
        assert found is not None and found.dn == dn and found.object_sid
        directory.delete_guest(dn)
        assert directory.find_guest(uid) is None


def test_dns_srv_domain_lowest_priority_first_dead_one_skipped(directory_settings: DirectorySettings,
                                                               samba_dc: GuestsyncDC, clean_guest_ou: None) -> None:
    asked: list[str] = []
    dead_ip = "127.0.0.2"  # a loopback address where no DC listens on 636 (test DCs use 127.1+.x.y)

    def resolver(name: str) -> list[SrvRecord]:
        asked.append(name)
        return [SrvRecord(20, 100, "dc9.contoso.com."), SrvRecord(0, 0, dead_ip), SrvRecord(5, 100, samba_dc.listen_ip)]

    settings = dataclasses.replace(directory_settings, server="dns:contoso.com", connect_timeout=2)
    locator = DcLocator(parse_ad_server(settings.server), resolver=resolver)
    with Directory(settings, locator=locator) as directory:
        uid, dn = create(directory)
        assert directory.domain_controller == f"ldaps://{samba_dc.listen_ip}:636"  # LDAPS port, not the SRV's
        assert directory.find_guest(uid) is not None
        directory.delete_guest(dn)
    assert asked == ["_ldap._tcp.dc._msdcs.contoso.com"]
    assert locator.candidates()[-1].host == dead_ip  # remembered as down: tried last now


def test_export_pipeline_with_a_dead_first_dc(stack: Stack, samba_dc: GuestsyncDC) -> None:
    """AD_SERVER as an admin writes it, through the app: the exports all land, nothing is poisoned."""
    stack.configure(AD_SERVER=f"{dead_address()} {samba_dc.ldaps_url}", AD_CONNECT_TIMEOUT="2")
    guests = [stack.sim.invite_guest(f"failover{i}@fabrikam.com", f"Failover {i}")  # type: ignore[attr-defined]
              for i in range(5)]
    uids = [g["id"] for g in guests]
    stack.wait(lambda: stack.settled(uids), "5 guest accounts through the second DC")
    assert set(stack.ad_accounts()) == set(uids)
    assert all(stack.state.get(u).status is GuestStatus.PROVISIONED for u in uids)  # type: ignore[union-attr]


class Silent:
    """Accepts TCP connections and never answers (a DC hung, or a firewall that swallows the TLS handshake)."""

    def __init__(self, close_at_once: bool = False) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._held: list[socket.socket] = []
        self._close = close_at_once
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            if self._close:
                conn.close()
            else:
                self._held.append(conn)

    def stop(self) -> None:
        self._listener.close()
        for conn in self._held:
            conn.close()


@pytest.mark.parametrize("way", ["refused", "hangs", "closes", "unknown host", "srv nxdomain", "srv empty",
                                 "all of several"])
def test_every_way_a_dc_is_unreachable_is_unavailable(directory_settings: DirectorySettings, way: str) -> None:
    silent = Silent(close_at_once=way == "closes")
    locator = None
    try:
        server = {"refused": dead_address(), "hangs": f"ldaps://localhost:{silent.port}",
                  "closes": f"ldaps://localhost:{silent.port}", "unknown host": "ldaps://dc1.guestsync.invalid",
                  "srv nxdomain": "dns:contoso.com", "srv empty": "dns:contoso.com",
                  "all of several": f"{dead_address()}, ldaps://localhost:{silent.port}"}[way]
        if way.startswith("srv"):
            def resolver(name: str) -> list[SrvRecord]:
                if way == "srv nxdomain":
                    raise DcLocatorError(f"DNS has no record {name}")
                return [SrvRecord(0, 0, ".")]  # "no such service here"
            locator = DcLocator(parse_ad_server(server), resolver=resolver)
        settings = dataclasses.replace(directory_settings, server=server, connect_timeout=1)
        started = time.monotonic()
        with Directory(settings, locator=locator) as directory, pytest.raises(DirectoryUnavailableError) as info:
            directory.find_guest(str(uuid.uuid4()))
        assert time.monotonic() - started < 15
        if way == "all of several":
            assert "no domain controller of AD_SERVER could be reached" in str(info.value)
        if way.startswith("srv"):
            assert "_ldap._tcp.dc._msdcs.contoso.com" in str(info.value)
    finally:
        silent.stop()


def test_dc_stopped_under_an_open_connection_is_unavailable(directory_settings: DirectorySettings,
                                                            samba_dc: GuestsyncDC) -> None:
    with Directory(dataclasses.replace(directory_settings, connect_timeout=2)) as directory:
        directory.find_guest(str(uuid.uuid4()))  # connected and bound
        samba_dc.stop()
        try:
            with pytest.raises(DirectoryUnavailableError):
                directory.find_guest(str(uuid.uuid4()))
            with pytest.raises(DirectoryUnavailableError):  # and again, now without an open connection
                directory.netbios_domain()
        finally:
            samba_dc.start()
        assert directory.find_guest(str(uuid.uuid4())) is None  # back by itself once the DC is


def test_a_sequence_never_moves_to_another_dc_silently(directory_settings: DirectorySettings, samba_dc: GuestsyncDC,
                                                       relay: Relay, clean_guest_ou: None) -> None:
    settings = settings_for(directory_settings, relay.url, samba_dc.ldaps_url, relay=relay)
    with DirectoryPool(settings, size=1) as pool:
        with pool.lease() as directory:
            uid, dn = create(directory)  # uniqueness check, add, read-back: all on the first DC
            assert directory.domain_controller == relay.url
            relay.kill()  # the DC dies between two calls of the sequence
            with pytest.raises(DirectoryUnavailableError, match="not continued on another one"):
                directory.find_guest(uid)
            # the caller was told; what it does next is a new start, which may use the other DC
            assert directory.find_guest(uid) is not None
            assert directory.domain_controller == samba_dc.ldaps_url
        directory.delete_guest(dn)


def test_first_call_of_a_lease_fails_over_when_the_idle_connection_died(
        directory_settings: DirectorySettings, samba_dc: GuestsyncDC, relay: Relay, clean_guest_ou: None) -> None:
    settings = settings_for(directory_settings, relay.url, samba_dc.ldaps_url, relay=relay)
    with DirectoryPool(settings, size=1) as pool:
        with pool.lease() as directory:
            uid, dn = create(directory)
            assert directory.domain_controller == relay.url
        relay.kill()  # while the connection sits idle in the pool
        with pool.lease() as directory:  # a new export: nothing done yet, so another DC is fine
            found = directory.find_guest(uid)
            assert found is not None and found.dn == dn
            assert directory.domain_controller == samba_dc.ldaps_url
            directory.delete_guest(dn)
