"""What every benchmark shares: the local stack, the function app in a process of its own (and, in worker mode
agent, the on-premises agent in another), busy-loop background load, a bench host.json, CPU accounting per
process, LDAP helpers, percentiles and the PASS/MISS lines."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import ldap3

from devtools.localenv.azurite import azurite_executable, free_port
from devtools.localenv.stack import LocalStack, local_stack
from shared.core.ad_rules import fit_cosmetic, guest_dn
from shared.core.domain import GraphUser
from shared.core.rules import inbound, outbound_persistent

REPO = Path(__file__).resolve().parent.parent
#: NCRONTAB that never fires during a run (timers are fired on demand through the admin API).
NEVER = "0 0 0 1 1 *"
USER_OBJECT_CLASSES = ["top", "person", "organizationalPerson", "user"]
#: The worker modes (GUESTSYNC_WORKER_MODE): exports by the function app, or by the on-premises agent.
MODES = ("function", "agent")


def say(text: str = "") -> None:
    print(text, flush=True)


def quiet_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("guestsync", "graphsim", "azure"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


# --------------------------------------------------------------------------------------------- reporting
@dataclass
class Outcome:
    """One target of one benchmark: what was measured against what was aimed at."""

    benchmark: str
    label: str
    value: float
    target: float
    at_most: bool = True
    unit: str = ""

    @property
    def ok(self) -> bool:
        return self.value <= self.target if self.at_most else self.value >= self.target

    def line(self) -> str:
        op = "<=" if self.at_most else ">="
        return (f"{'PASS' if self.ok else 'MISS'}  {self.benchmark}: {self.label} = {self.value:.4g}{self.unit} "
                f"(target {op} {self.target:g}{self.unit})")


@dataclass
class Report:
    name: str
    outcomes: list[Outcome] = field(default_factory=list)

    def check(self, label: str, value: float, target: float, *, at_most: bool = True, unit: str = "") -> Outcome:
        outcome = Outcome(self.name, label, value, target, at_most, unit)
        self.outcomes.append(outcome)
        say(outcome.line())
        return outcome


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def describe(values: Sequence[float], unit: str = "ms", scale: float = 1000.0) -> str:
    if not values:
        return "no samples"
    return (f"n={len(values)} p50 {percentile(values, 50) * scale:.1f} {unit}, p90 {percentile(values, 90) * scale:.1f}"
            f" {unit}, p99 {percentile(values, 99) * scale:.1f} {unit}, max {max(values) * scale:.1f} {unit}")


def machine_facts() -> dict[str, str]:
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    samba = subprocess.run(["samba", "--version"], capture_output=True, text=True, check=False)  # noqa: S607
    return {
        "cores": str(os.cpu_count()),
        "ram": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "cpu": model or platform.processor(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "samba": samba.stdout.strip(),
    }


# ------------------------------------------------------------------------------------------------- stack
@dataclass
class BenchStack:
    stack: LocalStack
    workdir: Path
    azurite_log: Path | None = None

    @property
    def env(self) -> dict[str, str]:
        return self.stack.env

    def cpu_meter(self, host: HostProcess | None = None, agent: AgentProcess | None = None,
                  background: BackgroundLoad | None = None,
                  more_hosts: Mapping[str, HostProcess] | None = None) -> CpuMeter:
        """CPU of each process of the run; whatever the machine did besides is the ``OTHERS`` entry.
        ``more_hosts``: further function host processes, by label (the webhook bench's queue host)."""
        processes: dict[str, Callable[[], list[int]]] = {}
        if host is not None:
            processes[HOST] = lambda: [host.pid]
        for label, other in (more_hosts or {}).items():
            processes[label] = lambda other=other: [other.pid]  # type: ignore[misc]
        if agent is not None:
            processes[AGENT] = lambda: [agent.pid]
        processes.update({
            SAMBA: lambda: _group_pids(self.stack.dc.process.pid if self.stack.dc.process else -1),
            AZURITE: lambda: _pids_with_argument(str(self.workdir / "azurite")),
            BENCH: lambda: [os.getpid()],
        })
        if background is not None and background.cores:
            processes[background.label] = lambda: list(background.pids)
        return CpuMeter(processes)


@contextlib.contextmanager
def bench_stack(*, azurite_debug: bool = False) -> Iterator[BenchStack]:
    """The demo's stack (Azurite, Samba AD DC, Graph simulator) in a temporary directory. With
    ``azurite_debug``, Azurite writes its debug log (a line per request it receives) to ``azurite_log``."""
    quiet_logging()
    with tempfile.TemporaryDirectory(prefix="guestsync-bench-") as tmp, contextlib.ExitStack() as patches:
        workdir = Path(tmp)
        azurite_debug_log = workdir / "azurite-debug.log" if azurite_debug else None
        if azurite_debug_log is not None:
            wrapper = workdir / "azurite-debug.sh"
            wrapper.write_text(f'#!/bin/sh\nexec "{azurite_executable()}" "$@" --debug "{azurite_debug_log}"\n')
            wrapper.chmod(0o700)
            patches.enter_context(mock.patch("devtools.localenv.azurite.azurite_executable", return_value=str(wrapper)))
        say("starting the local stack (Azurite, Samba AD DC, Graph simulator)")
        started = time.monotonic()
        with local_stack(workdir) as stack:
            say(f"  stack up in {time.monotonic() - started:.1f} s")
            yield BenchStack(stack, workdir, azurite_debug_log)


def bench_host_json(directory: Path, overrides: Mapping[str, Any] | None = None) -> tuple[Path, list[str]]:
    """The repo's host.json with ``overrides`` (dotted paths, e.g. ``extensions.queues.batchSize``) applied,
    written to ``directory``; returns its path and the list of differences."""
    data = json.loads((REPO / "host.json").read_text())
    changes: list[str] = []
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        before = node.get(leaf, "(absent)")
        if before != value:
            node[leaf] = value
            changes.append(f"{dotted}: {json.dumps(before)} -> {json.dumps(value)}")
    path = directory / "host.json"
    path.write_text(json.dumps(data, indent=2))
    return path, changes


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs from the command line; values are JSON when they parse, else strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def _terminate(process: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM (a graceful stop), then SIGKILL if it is still running after ``timeout``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class HostProcess:
    """``python -m bench.host``: the function app on the local runner in its own process."""

    def __init__(self, bench: BenchStack, host_json: Path, *, queues: bool = True, mode: str = "function",
                 extra_env: Mapping[str, str] | None = None, profile: Path | None = None) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            **bench.env,
            "GUESTSYNC_WORKER_MODE": mode,
            "GUESTSYNC_SUBSCRIPTION_SCHEDULE": NEVER,
            "GUESTSYNC_RECONCILE_SCHEDULE": NEVER,
            "GUESTSYNC_ALERT_SCHEDULE": NEVER,
            "GUESTSYNC_NOTIFICATION_URL": f"{self.base_url}/api/graph/notifications",
            "GUESTSYNC_LIFECYCLE_URL": f"{self.base_url}/api/graph/lifecycle",
            **(extra_env or {}),
        }
        self.stats_file = bench.workdir / f"host-{self.port}.json"
        self.log_file = bench.workdir / f"host-{self.port}.log"
        self.command = [sys.executable, "-m", "bench.host", "--host-json", str(host_json), "--port", str(self.port),
                        "--mode", mode, "--stats", str(self.stats_file)]
        if not queues:
            self.command.append("--no-queues")
        if profile is not None:
            self.command += ["--profile", str(profile)]
        self.process: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid if self.process else -1

    def start(self, timeout: float = 60.0) -> HostProcess:
        log = self.log_file.open("w")
        self.process = subprocess.Popen(self.command, env=self.env, cwd=REPO, stdout=subprocess.PIPE,  # noqa: S603
                                        stderr=log, text=True)
        log.close()
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line.startswith("READY"):
                return self
            if not line and self.process.poll() is not None:
                break
        raise RuntimeError(f"the function host did not start; see {self.log_file}:\n{_tail(self.log_file)}")

    def invoke(self, function: str) -> None:
        """Fire a timer (or queue) function through the host's admin API."""
        request = urllib.request.Request(  # noqa: S310 (our own http:// URL)
            f"{self.base_url}/admin/functions/{function}", data=b'{"input": ""}', method="POST",
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (our own http URL)
            if response.status != 202:
                raise RuntimeError(f"admin invoke of {function} answered {response.status}")

    def stop(self, timeout: float = 60.0) -> dict[str, float]:
        """SIGTERM (the host stops gracefully) and its CPU time and peak RSS."""
        if self.process is None:
            return {}
        _terminate(self.process, timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None
        try:
            return dict(json.loads(self.stats_file.read_text()))
        except (OSError, ValueError):
            return {}

    def __enter__(self) -> HostProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class AgentProcess:
    """``guestsync worker`` (``python -m shared.cli worker``): the on-premises agent in a process of its own,
    with the stack's settings, consuming the export queue as an AD admin would run it (INFO log to a file)."""

    def __init__(self, bench: BenchStack, extra_env: Mapping[str, str] | None = None) -> None:
        self.bench = bench
        name = f"agent-{uuid.uuid4().hex[:8]}"
        self.log_file = bench.workdir / f"{name}.log"
        self.console = bench.workdir / f"{name}.out"
        self.env = {
            **os.environ,
            **bench.env,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])),
            "GUESTSYNC_WORKER_MODE": "agent",
            "GUESTSYNC_RECONCILE_SCHEDULE": NEVER,
            "GUESTSYNC_LOG_FILE": str(self.log_file),
            **(extra_env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid if self.process else -1

    def start(self, timeout: float = 60.0) -> AgentProcess:
        """Start it (in the work directory, so no local.settings.json of the repo is read) and wait for its first
        heartbeat in the state table: then its loop polls the export queue."""
        from shared.adapters.state import StateStore
        from shared.agent.health import agents

        with self.console.open("wb") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "shared.cli", "worker"],
                                            cwd=self.bench.workdir, env=self.env, stdout=out,
                                            stderr=subprocess.STDOUT)
        state = StateStore.from_connection_string(self.bench.env["AzureWebJobsStorage"], "guestsync")

        def running() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the agent exited with {self.process.returncode}; see {self.console}:\n"
                                   f"{_tail(self.console)}")
            return any(a.get("pid") == self.pid and a.get("status") == "running" for a in agents(state))

        wait_until(running, timeout, "the agent's first heartbeat", interval=0.2)
        return self

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM: the agent finishes exports in flight and exits; its exit code."""
        if self.process is None:
            return 0
        _terminate(self.process, timeout)
        code = self.process.returncode
        self.process = None
        return int(code)

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Pipeline:
    """What does the work in one worker mode: the function app (``function``: webhook, apply and export), or the
    function app in worker mode agent (webhook, apply) plus the real on-premises agent (``agent``: export)."""

    def __init__(self, bench: BenchStack, host_json: Path, mode: str, *, queues: bool = True,
                 profile: Path | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"worker mode {mode!r}: choose from {', '.join(MODES)}")
        self.bench, self.mode = bench, mode
        self.host = HostProcess(bench, host_json, queues=queues, mode=mode, profile=profile)
        self.agent = AgentProcess(bench) if mode == "agent" else None
        self.host_stats: dict[str, float] = {}

    def __enter__(self) -> Pipeline:
        self.host.start()
        try:
            if self.agent is not None:
                self.agent.start()
        except BaseException:
            self.host.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.agent is not None and self.agent.process is not None:
            code = self.agent.stop()
            if code != 0:
                say(f"  WARNING: the agent exited with {code}; see {self.agent.console}")
        if self.host.process is not None:
            self.host_stats = self.host.stop()

    def cpu_meter(self, background: BackgroundLoad | None = None) -> CpuMeter:
        return self.bench.cpu_meter(self.host, self.agent, background)

    def describe(self) -> str:
        if self.mode == "agent":
            return ("worker mode agent: function app (webhook, apply) on the local runner + `guestsync worker` "
                    "(export), each a process of its own")
        return "worker mode function: function app (webhook, apply, export) on the local runner, a process of its own"


def add_gap_arguments(parser: argparse.ArgumentParser) -> None:
    """The idle gaps before each isolated change (latency, cost): long enough for every listener to back off."""
    parser.add_argument("--gap-min", type=float, default=1.5,
                        help="shortest idle gap before an isolated change (1.5 s)")
    parser.add_argument("--gap-max", type=float, default=3.0,
                        help="longest idle gap before an isolated change (3 s)")


def add_mode_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=(*MODES, "both"), default="function",
                        help="worker mode: function (the function app exports), agent (the function app in worker "
                             "mode agent plus `guestsync worker` in a process of its own, which exports), or both, "
                             "one after the other in the same stack (default function)")


def chosen_modes(args: argparse.Namespace) -> list[str]:
    return list(MODES) if args.mode == "both" else [str(args.mode)]


# ---------------------------------------------------------------------------------------- background load
def add_background_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--background-load", type=int, nargs="?", const=1, default=0, metavar="CORES",
                        help="keep CORES cores busy during the measured windows (a busy loop per core, each a "
                             "process of its own; CORES defaults to 1); their CPU is reported as 'background load'")


_SPIN = "import os, signal; signal.signal(signal.SIGTERM, lambda *_: os._exit(0))\nwhile True:\n    pass\n"


class BackgroundLoad:
    """``cores`` busy-loop processes (pure CPU, no I/O): load that other software on the machine could put on it,
    so the headroom is measured. Started by ``__enter__``, stopped by ``__exit__``; nothing when cores is 0."""

    def __init__(self, cores: int) -> None:
        self.cores = max(0, int(cores))
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def label(self) -> str:
        return f"background load ({self.cores} busy loop{'s' if self.cores != 1 else ''})"

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def __enter__(self) -> BackgroundLoad:
        for _ in range(self.cores):
            self.processes.append(subprocess.Popen([sys.executable, "-c", _SPIN],  # noqa: S603
                                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
        if self.cores:
            time.sleep(0.2)  # spinning before the measured window starts
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes = []

    def describe(self) -> str:
        return f"{self.label}, started before and stopped after the measured windows" if self.cores else \
            "no background load"


def subscribe(bench: BenchStack, host: HostProcess, timeout: float = 30.0) -> None:
    """Fire maintain_subscription and wait for the simulator to hold the subscription (only this host's: an
    earlier host of the same run, in another worker mode, had its own port)."""
    sim = bench.stack.sim
    with sim.tenant.lock:
        sim.subscriptions.clear()
    host.invoke("maintain_subscription")
    wait_until(lambda: bool(sim.subscriptions), timeout, "the Graph subscription")


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> float:
    """Wait for ``check``; returns the monotonic time it first held. Raises TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------------------------------------------- CPU
_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _cpu_seconds(pid: int) -> float:
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14, 15 of stat)


def _group_pids(pgid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[2]) == pgid:  # field 5: pgrp
                out.append(int(entry.name))
    return out


def _pids_with_argument(argument: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if argument.encode() in (entry / "cmdline").read_bytes().split(b"\0"):
                    out.append(int(entry.name))
    return out


HOST = "function host"
AGENT = "agent (guestsync worker)"
SAMBA = "samba"
AZURITE = "azurite"
BENCH = "bench process (incl. Graph simulator)"
OTHERS = "rest of the machine (everything else)"
#: The processes whose CPU is work for the guests (per-guest figures).
PER_ITEM = (HOST, AGENT, SAMBA, AZURITE, BENCH)


def _machine_busy_seconds() -> float:
    """CPU time all cores spent not idle since boot (/proc/stat)."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values[:8]) - idle) / _TICKS


class CpuMeter:
    """CPU seconds (user + system) each process spent between ``start()`` and ``stop()``."""

    def __init__(self, processes: Mapping[str, Callable[[], list[int]]]) -> None:
        self._processes = processes
        self._pids: dict[str, list[int]] = {}
        self._start: dict[str, float] = {}
        self._wall = 0.0
        self.result: dict[str, float] = {}
        self.wall = 0.0
        #: (seconds since start, CPU seconds of each process so far) every ``sample_every`` s, when asked
        self.timeline: list[tuple[float, dict[str, float]]] = []
        self._sampler: threading.Thread | None = None
        self._stopped = threading.Event()

    def _read(self) -> dict[str, float]:
        out = {name: sum(_cpu_seconds(pid) for pid in self._pids[name]) for name in self._processes}
        out[OTHERS] = _machine_busy_seconds() - sum(out.values())
        return out

    def start(self, sample_every: float | None = None) -> CpuMeter:
        """Start; with ``sample_every``, also keep a timeline of each process's CPU (``share``)."""
        self._pids = {name: find() for name, find in self._processes.items()}
        self._start = self._read()
        self._wall = time.monotonic()
        if sample_every is not None:
            self.timeline = [(0.0, dict(self._start))]
            self._stopped.clear()
            self._sampler = threading.Thread(target=self._sample, args=(sample_every,), daemon=True)
            self._sampler.start()
        return self

    def _sample(self, every: float) -> None:
        while not self._stopped.wait(every):
            self.timeline.append((time.monotonic() - self._wall, self._read()))

    def share(self, name: str, since: float, until: float) -> float | None:
        """The share of one core ``name`` used between two moments of the timeline (seconds since start; the
        samples nearest inside them), or None when fewer than two samples fall between them."""
        inside = [(t, cpu) for t, cpu in self.timeline if since - 1e-9 <= t <= until + 1e-9]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        (t0, first), (t1, last) = inside[0], inside[-1]
        return (last[name] - first[name]) / (t1 - t0)

    def stop(self) -> dict[str, float]:
        if self._sampler is not None:
            self._stopped.set()
            self._sampler.join()
            self._sampler = None
        end = self._read()
        self.wall = time.monotonic() - self._wall
        self.result = {name: end[name] - self._start[name] for name in end}
        return self.result

    def lines(self) -> list[str]:
        wall = max(self.wall, 1e-9)
        return [f"{name}: {cpu:.1f} CPU-s ({cpu / wall:.0%} of one core)" for name, cpu in self.result.items()]

    def summary(self) -> str:
        """The lines on one line, for short windows."""
        wall = max(self.wall, 1e-9)
        return "; ".join(f"{name} {cpu:.1f} CPU-s ({cpu / wall:.0%})" for name, cpu in self.result.items())

    def per_item(self, count: int, what: str) -> str:
        """CPU-ms each process of the product and its stack spent per item (e.g. per provisioned guest) over the
        window (not the background load nor the rest of the machine, which do not work for the items)."""
        parts = [f"{name} {cpu / max(count, 1) * 1000:.2f}" for name, cpu in self.result.items()
                 if name in PER_ITEM]
        return f"CPU-ms per {what} ({count}): " + ", ".join(parts)


# --------------------------------------------------------------------------------------------------- LDAP
def service_connection(env: Mapping[str, str]) -> ldap3.Connection:
    """A connection bound as guestsync's delegated service account, over LDAPS with validation (as the
    Directory adapter opens it)."""
    url = env["AD_SERVER"].removeprefix("ldaps://")
    host, _, port = url.partition(":")
    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=env["AD_CA_FILE"], version=ssl.PROTOCOL_TLS_CLIENT)
    server = ldap3.Server(host, port=int(port or 636), use_ssl=True, tls=tls, get_info=ldap3.NONE,
                          connect_timeout=10)
    return ldap3.Connection(server, user=env["AD_BIND_USER"], password=env["AD_BIND_PASSWORD"],
                            authentication=ldap3.SIMPLE, auto_bind=True, raise_exceptions=False,
                            receive_timeout=60)


def count_accounts(conn: ldap3.Connection, ou: str) -> int:
    """User objects directly in ``ou`` (a paged search that returns no attributes)."""
    entries = conn.extend.standard.paged_search(ou, "(objectClass=user)", ldap3.LEVEL, attributes=["1.1"],
                                                paged_size=1000, generator=True)
    return sum(1 for e in entries if e.get("type") == "searchResEntry")


def account_exists(conn: ldap3.Connection, dn: str) -> bool:
    conn.search(dn, "(objectClass=user)", ldap3.BASE, attributes=["1.1"])
    return bool(conn.entries) or any(r.get("type") == "searchResEntry" for r in conn.response or [])


def guest_user(tenant_domain: str, tag: str, i: int, user_id: str | None = None) -> GraphUser:
    """A guest as the simulator's invite_guest creates it (same UPN rule), for raw adds."""
    email = f"{tag}{i}@partner{i % 97}.example"
    return GraphUser(
        id=user_id or str(uuid.uuid4()),
        user_type="Guest",
        display_name=f"Bench Guest {tag} {i}",
        given_name="Bench",
        surname=f"{tag}{i}",
        user_principal_name=f"{email.replace('@', '_')}#EXT#@{tenant_domain}",
        mail=email,
        account_enabled=True,
    )


def invite(sim: Any, tag: str, i: int) -> dict[str, Any]:
    """Invite guest ``i`` in the simulator (a change notification follows)."""
    email = f"{tag}{i}@partner{i % 97}.example"
    result: dict[str, Any] = sim.invite_guest(email, f"Bench Guest {tag} {i}", "Bench", f"{tag}{i}")
    return result


def ad_values(user: GraphUser) -> dict[str, str]:
    """The persistent attributes guestsync writes for this user (inbound flow, outbound flow, AD limits)."""
    desired, _ = fit_cosmetic(outbound_persistent(inbound(user)))
    return {k: v for k, v in desired.items() if v}


def guest_account_dn(uid: str, guest_ou: str) -> str:
    return guest_dn(uid, guest_ou)


def run_benchmark(
    name: str,
    doc: str | None,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], Report],
    argv: list[str] | None,
) -> Report:
    """The command line of one benchmark (``python -m bench <name> [flags]``)."""
    parser = argparse.ArgumentParser(prog=f"python -m bench {name}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))
