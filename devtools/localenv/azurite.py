"""Start Azurite (the Azure Storage emulator from npm) for tests and the demo."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Azurite's documented well-known development account (public, not a secret).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def azurite_executable() -> str:
    local = REPO_ROOT / ".tools" / "node_modules" / ".bin" / "azurite"
    if local.exists():
        return str(local)
    found = shutil.which("azurite")
    if found:
        return found
    raise RuntimeError("Azurite is not installed: run `make deps-azurite` (npm install azurite)")


@dataclass
class Azurite:
    """A running Azurite with blob, queue and table endpoints on free loopback ports."""

    workdir: Path
    blob_port: int = 0
    queue_port: int = 0
    table_port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def connection_string(self) -> str:
        return (
            "DefaultEndpointsProtocol=http;"
            f"AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.blob_port}/{ACCOUNT};"
            f"QueueEndpoint=http://127.0.0.1:{self.queue_port}/{ACCOUNT};"
            f"TableEndpoint=http://127.0.0.1:{self.table_port}/{ACCOUNT};"
        )

    def start(self, timeout: float = 30.0, *, keep_ports: bool = False) -> Azurite:
        """Start Azurite with its data in ``workdir`` (on disk: it survives a stop). New free ports unless
        ``keep_ports`` (a restart: connection strings handed out before stay valid)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not (keep_ports and self.blob_port and self.queue_port and self.table_port):
            self.blob_port, self.queue_port, self.table_port = free_port(), free_port(), free_port()
        log = (self.workdir / "azurite.log").open("ab")
        self.process = subprocess.Popen(
            [
                azurite_executable(),
                "--silent",
                "--loose",
                "--disableTelemetry",
                "--skipApiVersionCheck",
                "--disableProductStyleUrl",
                "--blobHost", "127.0.0.1", "--blobPort", str(self.blob_port),
                "--queueHost", "127.0.0.1", "--queuePort", str(self.queue_port),
                "--tableHost", "127.0.0.1", "--tablePort", str(self.table_port),
                "--location", str(self.workdir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        for port in (self.blob_port, self.queue_port, self.table_port):
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"Azurite exited early; see {self.workdir / 'azurite.log'}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError("Azurite did not start in time") from None
                    time.sleep(0.1)
        return self

    def restart(self, timeout: float = 30.0) -> Azurite:
        """Stop (gracefully: Azurite saves its data on SIGTERM, not on SIGKILL) and start again on the same ports
        and data, as a storage account that was unreachable for a while (tests of outages)."""
        self.stop()
        return self.start(timeout, keep_ports=True)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
