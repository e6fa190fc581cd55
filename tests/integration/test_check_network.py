"""``guestsync check`` against peers that fail the way networks fail: a server that accepts TCP and never
answers (Graph sign-in, storage and the DC all pointed at it), a closed port, a name that does not resolve.
Each check ends within its timeout, the fix names the cause, and a terminal sees a line per check."""

from __future__ import annotations

import base64
import json
import os
import pty
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.localenv.azurite import free_port
from devtools.localenv.certs import LocalPki

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFMGOtLMi2SZ03oWo3u1rI8Dw=="


@pytest.fixture
def silent_port() -> Iterator[int]:
    """127.0.0.1:<port> accepts every connection and never sends a byte (closed when the test ends)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                held.append(conn)
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


def _env(host_port: str, local_pki: LocalPki) -> dict[str, str]:
    """Graph sign-in, Graph, storage and the DC all at ``host_port``."""
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("GRAPH_", "GUESTSYNC_", "AD_", "SMTP_", "AzureWebJobs"))}
    storage = f"http://{host_port}/devstoreaccount1"
    return {**keep, "PYTHONPATH": str(ROOT),
            "GRAPH_AUTH": "client_secret", "GRAPH_TENANT_ID": "11111111-1111-1111-1111-111111111111",
            "GRAPH_CLIENT_ID": "22222222-2222-2222-2222-222222222222", "GRAPH_CLIENT_SECRET": "not-a-secret",
            "GRAPH_AUTHORITY_HOST": f"https://{host_port}", "GRAPH_ENDPOINT": f"https://{host_port}/v1.0",
            "AzureWebJobsStorage": (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={DEV_KEY};"
                                    f"QueueEndpoint={storage};TableEndpoint={storage};BlobEndpoint={storage};"),
            "AD_SERVER": f"ldaps://{host_port}", "AD_BIND_USER": "svc-guestsync@example.test",
            "AD_BIND_PASSWORD": "not-a-password", "AD_GUEST_OU": "OU=Guests,DC=example,DC=test",
            "AD_ARCHIVE_OU": "OU=Archive,DC=example,DC=test", "AD_CA_FILE": str(local_pki.ca_file),
            "GUESTSYNC_OWNERSHIP_KEY": base64.b64encode(b"k" * 32).decode()}


def check(env: dict[str, str], *args: str) -> tuple[int, dict[str, dict[str, Any]], float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "shared.cli", "check", "--json", "--no-probe", *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert "Traceback" not in done.stderr, done.stderr
    report = json.loads(done.stdout)
    return done.returncode, {c["name"]: c for c in report["checks"]}, time.monotonic() - started


def test_a_peer_that_never_answers_fails_each_check_within_its_timeout(silent_port: int,
                                                                       local_pki: LocalPki) -> None:
    code, checks, took = check(_env(f"127.0.0.1:{silent_port}", local_pki), "--timeout", "2")
    assert code == 1
    assert took < 40, f"the check took {took:.0f} s"
    for name in ("graph.signin", "storage.queues", "storage.table", "ad.ldaps"):
        assert checks[name]["status"] == "fail", checks[name]
    assert "no answer within 2 s" in checks["graph.signin"]["detail"]
    assert "in time" in checks["graph.signin"]["fix"] and "AD_CA_FILE" not in checks["graph.signin"]["fix"]
    assert "no answer in time" in checks["storage.queues"]["fix"]
    assert "no answer within 2 s" in checks["ad.ldaps"]["detail"]
    assert checks["ad.ldaps"]["fix"].startswith("the DC accepted no connection or gave no answer in time")


def test_a_closed_port_and_an_unknown_name_get_their_own_fixes(local_pki: LocalPki) -> None:
    _, refused, _ = check(_env(f"127.0.0.1:{free_port()}", local_pki), "--timeout", "10")
    assert refused["graph.signin"]["fix"].startswith("nothing accepts connections there"), refused["graph.signin"]
    assert refused["storage.queues"]["fix"].startswith("the connection was refused"), refused["storage.queues"]
    assert refused["ad.ldaps"]["fix"].startswith("nothing accepts LDAPS there"), refused["ad.ldaps"]
    _, unknown, _ = check(_env("guestsync-no-such-host.invalid:443", local_pki), "--timeout", "10")
    assert unknown["graph.signin"]["fix"].startswith("the host name does not resolve"), unknown["graph.signin"]
    assert unknown["storage.queues"]["fix"].startswith("the storage host name does not resolve")
    assert unknown["ad.ldaps"]["fix"].startswith("the DC's name does not resolve"), unknown["ad.ldaps"]


def test_a_terminal_sees_a_line_per_check_and_a_pipe_does_not(silent_port: int, local_pki: LocalPki) -> None:
    env = _env(f"127.0.0.1:{silent_port}", local_pki)
    command = [sys.executable, "-m", "shared.cli", "check", "--no-probe", "--timeout", "1"]
    primary, secondary = pty.openpty()
    with subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=secondary) as process:
        os.close(secondary)
        seen = b""
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        process.wait(60)
    os.close(primary)
    text = seen.decode()
    assert "check: Graph sign-in, permissions and the webhook ..." in text
    for name in ("settings", "graph.signin", "storage.queues", "ad.ldaps", "entra_connect"):
        assert f"check: {name}: " in text, text
    piped = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert "check: " not in piped.stderr
