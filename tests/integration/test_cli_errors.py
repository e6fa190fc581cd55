"""Every ``guestsync`` command, run as an admin runs it (a process of its own), with storage out of reach or a
setting missing: one line on stderr naming the cause and the fix, a non-zero exit code, never a traceback unless
``-v``. Unreachable storage is a closed port on 127.0.0.1; Graph is the simulator."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from azure.data.tables import TableServiceClient

from devtools.localenv.azurite import Azurite, free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
#: Azurite's well-known development key (public, not a secret).
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFMGOtLMi2SZ03oWo3u1rI8Dw=="


def closed_storage() -> str:
    """A connection string whose endpoints are a port nothing listens on."""
    port = free_port()
    base = f"http://127.0.0.1:{port}/devstoreaccount1"
    return (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={DEV_KEY};"
            f"BlobEndpoint={base};QueueEndpoint={base};TableEndpoint={base};")


def _port(connection_string: str) -> str:
    return connection_string.split("http://127.0.0.1:")[1].split("/")[0]


def guestsync(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture
def cli_env(graph_env: dict[str, str], storage_names: dict[str, str]) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("GRAPH_", "GUESTSYNC_", "AD_", "SMTP_", "AzureWebJobs"))}
    return {**keep, **graph_env, **storage_names, "PYTHONPATH": str(ROOT), "AzureWebJobsStorage": closed_storage()}


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    err = result.stderr.strip()
    assert "Traceback" not in result.stderr, result.stderr
    assert err.count("\n") == 0, result.stderr
    return err


@pytest.mark.parametrize("args", [
    ["status"], ["status", "--json"], ["status", "--no-graph"], ["plan", "--no-ad"], ["plan", "--no-ad", "--json"],
    ["reconcile", "--no-ad"], ["approve"], ["approve", "--json"], ["approve", "--all"], ["adopt"],
    ["adopt", "--json"], ["subscribe"], ["serve"],
])
def test_unreachable_storage_is_one_line_with_the_fix(args: list[str], cli_env: dict[str, str],
                                                      tmp_path: Path) -> None:
    if args == ["serve"]:
        args = ["serve", "--port", str(free_port())]
    result = guestsync(args, cli_env, tmp_path)
    line = one_line(result)
    assert result.returncode == 1, result.stderr
    assert line.startswith(f"guestsync {args[0]}: cannot use Azure Storage: the connection was refused"), line
    assert "fix: check the endpoint in AzureWebJobsStorage" in line
    assert "{" not in result.stdout  # no half-written JSON


def test_verbose_after_the_subcommand_shows_the_traceback(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = guestsync(["status", "-v"], cli_env, tmp_path)
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("guestsync status: cannot use Azure Storage")


def test_serve_without_storage_setting_names_it(cli_env: dict[str, str], tmp_path: Path) -> None:
    env = {k: v for k, v in cli_env.items() if k != "AzureWebJobsStorage"}
    result = guestsync(["serve", "--port", str(free_port())], env, tmp_path)
    line = one_line(result)
    assert result.returncode == 2
    assert line.startswith("guestsync: setting AzureWebJobsStorage is required"), line


def test_status_never_creates_the_table(cli_env: dict[str, str], azurite: Azurite, tmp_path: Path) -> None:
    env = {**cli_env, "AzureWebJobsStorage": azurite.connection_string}
    result = guestsync(["status", "--no-graph"], env, tmp_path)
    line = one_line(result)
    assert result.returncode == 1
    assert "the state table does not exist in this storage account" in line and "fix:" in line
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    assert env["GUESTSYNC_STATE_TABLE"] not in {t.name for t in service.list_tables()}


def test_local_settings_json_is_read_and_the_environment_wins(cli_env: dict[str, str], tmp_path: Path) -> None:
    env = {k: v for k, v in cli_env.items() if k != "AzureWebJobsStorage"}
    from_file = closed_storage()
    (tmp_path / "local.settings.json").write_text(f'{{"Values": {{"AzureWebJobsStorage": "{from_file}"}}}}')
    line = one_line(guestsync(["status", "--no-graph"], env, tmp_path))
    assert "connection was refused" in line and f"port={_port(from_file)})" in line
    from_environment = closed_storage()
    line = one_line(guestsync(["status", "--no-graph"], {**env, "AzureWebJobsStorage": from_environment}, tmp_path))
    assert f"port={_port(from_environment)})" in line


def test_an_unresolved_key_vault_reference_stops_every_command(cli_env: dict[str, str], tmp_path: Path) -> None:
    env = {**cli_env, "GRAPH_CLIENT_SECRET": "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/x/)"}
    for command in (["status"], ["serve", "--port", str(free_port())], ["worker"], ["subscribe"]):
        result = guestsync(command, env, tmp_path)
        assert result.returncode == 2, (command, result.stderr)
        assert one_line(result).startswith("guestsync: setting GRAPH_CLIENT_SECRET holds an unresolved Key Vault "
                                           "reference"), result.stderr
