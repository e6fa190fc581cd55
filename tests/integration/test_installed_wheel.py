"""The agent as an AD admin gets it: the wheel built from this source tree, installed (not editable) in a fresh
virtual environment, and its own ``guestsync`` run from outside the checkout against the real Samba AD DC,
Azurite and the Graph simulator.

The wheel is built from a copy of the tree (so the worktree gets no build/ or egg-info of it) and installed
once per module; its dependencies come from the package index or the local pip cache as for any install.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import ldap3
import pytest

from shared.adapters.queues import MessageQueue
from shared.adapters.state import StateStore
from shared.core.domain import GraphUser, GuestStatus
from shared.core.messages import ExportMessage
from shared.core.records import GuestRecord
from shared.core.rules import inbound

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
#: What a source tree has that is not the product (and not worth copying to build it).
NOT_COPIED = (".git", ".venv", ".tools", "build", "dist", "*.egg-info", "__pycache__", ".demo", ".hypothesis",
              ".mypy_cache", ".pytest_cache", ".ruff_cache", "*_env")
PROJECT_VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]


@dataclass(frozen=True)
class InstalledAgent:
    wheel: Path
    venv: Path
    workdir: Path  # outside the checkout: nothing there can be imported by accident

    @property
    def guestsync(self) -> Path:
        return self.venv / "bin" / "guestsync"

    def run(self, *args: str, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.guestsync), *args], cwd=self.workdir, env=env or _base_env(),
                              capture_output=True, text=True, timeout=timeout, check=False)


def _base_env() -> dict[str, str]:
    """The caller's environment minus anything that would put the checkout on the installed agent's path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


#: The machine's CA settings as they were when the tests were collected: the Graph simulator's fixture points
#: SSL_CERT_FILE and REQUESTS_CA_BUNDLE at the test CA for the whole session, which pip must not use.
_MACHINE_CA = {name: os.environ.get(name) for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")}


def _pip(python: Path | str, *args: str, timeout: float = 240) -> None:
    env = _base_env()
    for name, value in _MACHINE_CA.items():
        env.pop(name, None)
        if value is not None:
            env[name] = value
    done = subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", "-q", *args],
                          capture_output=True, text=True, timeout=timeout, check=False, env=env)
    assert done.returncode == 0, f"pip {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> InstalledAgent:
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_COPIED))
    _pip(sys.executable, "wheel", "--no-deps", "--wheel-dir", str(base / "dist"), str(source))
    [wheel] = (base / "dist").glob("guestsync-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    _pip(venv / "bin" / "python", "install", str(wheel))
    workdir = base / "work"
    workdir.mkdir()
    return InstalledAgent(wheel, venv, workdir)


def test_the_wheel_holds_the_product_and_no_dev_tooling(installed: InstalledAgent) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = [n for n in wheel.namelist() if ".dist-info/" not in n]
    top = {name.split("/", 1)[0] for name in names}
    assert top == {"shared"}, f"only the product package belongs in the wheel, not {sorted(top - {'shared'})}"
    for needed in ("shared/services/preflight/__init__.py", "shared/services/preflight/directory.py",
                   "shared/services/export.py", "shared/adapters/directory/__init__.py",
                   "shared/adapters/directory/pool.py", "shared/cli.py", "shared/host_options.json",
                   "shared/agent/runtime.py", "shared/ncrontab.py"):  # ncrontab: the agent's reconcile schedule
        assert needed in names, needed
    dev_tooling = [n for n in names if n.split("/")[-1] in ("runner.py", "demo.py", "server.py", "samba.py")]
    assert not dev_tooling, f"dev tooling (devtools/) in the wheel: {dev_tooling}"
    product = {p.relative_to(ROOT).as_posix() for p in (ROOT / "shared").rglob("*.py")}
    assert product <= set(names), f"modules missing from the wheel: {sorted(product - set(names))}"


def test_installed_agent_prints_its_version_and_imports_nothing_from_the_checkout(
        installed: InstalledAgent) -> None:
    done = installed.run("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"guestsync {PROJECT_VERSION}"
    where = subprocess.run([str(installed.venv / "bin" / "python"), "-c", "import shared; print(shared.__file__)"],
                           cwd=installed.workdir, env=_base_env(), capture_output=True, text=True, check=True)
    assert Path(where.stdout.strip()).is_relative_to(installed.venv), where.stdout


def test_installed_demo_says_it_needs_a_source_checkout(installed: InstalledAgent) -> None:
    done = installed.run("demo")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "demo needs a source checkout" in lines[0] and "make demo" in lines[0]


def test_installed_serve_says_it_needs_a_source_checkout(installed: InstalledAgent) -> None:
    """The local Functions runner is dev tooling (devtools/runner.py): the installed agent cannot run it."""
    done = installed.run("serve", "--port", "0", timeout=30)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "serve needs a source checkout" in lines[0], lines[0]


@pytest.fixture
def agent_env(azurite, storage_names: dict[str, str], graph_env: dict[str, str],
              directory_env: dict[str, str]) -> dict[str, str]:
    """What an admin configures on the agent's server: storage, Graph (for the reconcile) and AD."""
    return {
        **_base_env(),
        "AzureWebJobsStorage": azurite.connection_string,
        **storage_names,
        **graph_env,
        **directory_env,
        "GUESTSYNC_RECONCILE_SCHEDULE": "0 0 0 1 1 *",  # no reconcile of its own during the test
    }


def test_installed_check_passes_against_samba_and_azurite(installed: InstalledAgent,
                                                         agent_env: dict[str, str]) -> None:
    done = installed.run("check", "--json", "--no-probe", env=agent_env, timeout=120)
    report = json.loads(done.stdout or "{}")
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    for name in ("settings", "graph.users", "storage.queues", "storage.table", "ad.ldaps", "ad.bind",
                 "ad.guest_ou", "ad.archive_ou"):
        assert statuses[name] == "pass", (name, report)


@pytest.fixture
def worker(installed: InstalledAgent, agent_env: dict[str, str],
           tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """``guestsync worker`` of the installed package, running until the test ends; yields it and its log file."""
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        process = subprocess.Popen([str(installed.guestsync), "worker"], cwd=installed.workdir, env=agent_env,
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process, log
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_installed_worker_exports_a_guest_to_ad(worker: tuple[subprocess.Popen[bytes], Path],
                                                agent_env: dict[str, str], graph, clean_guest_ou,
                                                admin_ldap: ldap3.Connection) -> None:
    invited = graph.invite_guest("wheel@fabrikam.com", "Wheel Guest", "Wheel", "Guest")
    uid = invited["id"]
    user = GraphUser(id=uid, user_type="Guest", display_name=invited["displayName"], given_name="Wheel",
                     surname="Guest", user_principal_name=invited["userPrincipalName"], mail=invited["mail"])
    state = StateStore.from_connection_string(agent_env["AzureWebJobsStorage"], agent_env["GUESTSYNC_STATE_TABLE"])
    saved = state.save(GuestRecord(uid=uid, entry=inbound(user), notified_at=datetime.now(UTC)))
    queue = MessageQueue.from_connection_string(agent_env["AzureWebJobsStorage"], agent_env["GUESTSYNC_EXPORT_QUEUE"])
    queue.send(ExportMessage(uid, saved.version, "new guest").to_json())

    process, log = worker
    deadline = time.monotonic() + 60
    record = state.get(uid)
    while time.monotonic() < deadline and process.poll() is None:
        record = state.get(uid)
        if record is not None and record.status is not GuestStatus.PENDING:
            break
        time.sleep(0.3)
    assert record is not None and record.status is GuestStatus.PROVISIONED, (
        f"{record}\nworker log:\n{log.read_text(errors='replace')[-4000:]}")
    admin_ldap.search(agent_env["AD_GUEST_OU"], f"(cn={uid})", attributes=["userPrincipalName", "sAMAccountName"])
    [account] = admin_ldap.entries
    assert account.userPrincipalName.value == invited["userPrincipalName"]
    assert record.object_sid and record.exported_version == saved.version
