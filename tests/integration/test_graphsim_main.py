"""``python -m devtools.graphsim``: the simulator as an admin starts it by hand. It prints the settings to
export; with them (and Azurite) guestsync reads its guests; Ctrl+C stops it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.localenv.azurite import Azurite

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_the_simulator_prints_its_settings_and_guestsync_runs_against_them(
        azurite: Azurite, storage_names: dict[str, str], tmp_path: Path) -> None:
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("GRAPH_", "GUESTSYNC_", "AD_", "SMTP_", "AzureWebJobs", "SSL_CERT", "REQUESTS_CA"))}
    base = {**keep, "PYTHONPATH": str(ROOT)}
    sim = subprocess.Popen([sys.executable, "-m", "devtools.graphsim", "--guests", "3", "--members", "1"],
                           env=base, cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        assert sim.stdout is not None
        lines = []
        for line in sim.stdout:
            lines.append(line)
            if line.startswith("Running until Ctrl+C"):
                break
        exports = dict(re.findall(r"^export (\w+)='([^']*)'$", "".join(lines), re.MULTILINE))
        assert set(exports) == {"GRAPH_AUTH", "GRAPH_ENDPOINT", "GRAPH_AUTHORITY_HOST", "GRAPH_TENANT_ID",
                                "GRAPH_CLIENT_ID", "GRAPH_CLIENT_SECRET", "GRAPH_CA_FILE"}, lines
        assert Path(exports["GRAPH_CA_FILE"]).is_file()
        env = {**base, **exports, **storage_names, "AzureWebJobsStorage": azurite.connection_string}
        plan = subprocess.run([sys.executable, "-m", "shared.cli", "plan", "--no-ad"], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120, check=False)
        assert plan.returncode == 0, plan.stderr
        assert "4 Graph users" in plan.stdout, plan.stdout  # 3 guests and 1 member
        assert plan.stdout.count("  create ") == 3, plan.stdout
    finally:
        sim.send_signal(signal.SIGINT)
        assert sim.wait(20) == 0
    assert not Path(exports["GRAPH_CA_FILE"]).exists()  # its certificate went with it
