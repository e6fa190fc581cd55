"""The agent as a Windows service: a few lines of pywin32 over the tested loop (``run_agent``).

    python -m shared.agent.service_windows --startup auto install
    sc.exe failure GuestsyncAgent reset= 86400 actions= restart/10000/restart/10000/restart/60000
    python -m shared.agent.service_windows start | stop | remove

Settings come from the service's environment (docs/agent.md). Windows only, imported nowhere else: this shim is
not run by the test suite (which runs ``run_agent`` itself on Linux).
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
import threading
from typing import Any

import servicemanager
import win32service
import win32serviceutil

from shared.agent import run_agent
from shared.agent.logfiles import add_log_file
from shared.settings import load_agent_settings


class GuestsyncAgentService(win32serviceutil.ServiceFramework):  # type: ignore[misc]
    _svc_name_ = "GuestsyncAgent"
    _svc_display_name_ = "guestsync agent"
    _svc_description_ = "Entra B2B guests to on-premises AD shadow accounts (guestsync worker)"

    def __init__(self, args: Any) -> None:
        super().__init__(args)
        self.stop = threading.Event()

    def SvcStop(self) -> None:
        # Ask for time: exports in flight finish (GUESTSYNC_AGENT_STOP_SECONDS) before the service stops.
        self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING, waitHint=90_000)
        self.stop.set()

    def SvcDoRun(self) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        add_log_file(load_agent_settings().log_file)
        event_log = logging.handlers.NTEventLogHandler("guestsync")
        event_log.setLevel(logging.WARNING)  # warnings and errors in the Application event log
        logging.getLogger().addHandler(event_log)
        servicemanager.LogInfoMsg("guestsync agent starting")
        run_agent(self.stop)


if __name__ == "__main__":
    if len(sys.argv) == 1:  # started by the service control manager
        servicemanager.Initialize()
        servicemanager.PrepareToHostSingle(GuestsyncAgentService)
        servicemanager.StartServiceCtrlDispatcher()
    else:
        win32serviceutil.HandleCommandLine(GuestsyncAgentService)
