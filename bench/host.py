"""The function app on the local runner, in a process of its own (as the Functions worker runs it).

Started by the benchmarks with the stack's settings in the environment::

    python -m bench.host --host-json PATH --port N [--no-queues] [--stats FILE] [--profile FILE]

It prints ``READY <base_url>`` once it serves, runs until SIGTERM, then writes its CPU time and peak RSS
(and, with ``--profile``, a cProfile dump of every thread's work) to the given files.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import os
import pstats
import resource
import sys
import threading
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.host")
    parser.add_argument("--host-json", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", default="function", choices=("function", "agent"))
    parser.add_argument("--no-queues", action="store_true", help="HTTP (and timers on demand) only")
    parser.add_argument("--stats", type=Path)
    parser.add_argument("--profile", type=Path)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)

    profiles = _profile_all_threads() if args.profile else None

    from devtools.runner import LocalFunctionsHost
    from shared.functions import create_app

    host = LocalFunctionsHost(create_app(args.mode), env=os.environ, host_json=args.host_json, http_port=args.port)
    host.start(queues=not args.no_queues)
    print(f"READY {host.base_url}", flush=True)
    started = time.monotonic()
    host.run_forever()  # until SIGTERM / SIGINT, then a graceful stop
    if profiles is not None and args.profile:
        _dump_profiles(profiles, args.profile)
    if args.stats:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        args.stats.write_text(json.dumps({
            "cpu_user_s": usage.ru_utime,
            "cpu_system_s": usage.ru_stime,
            "maxrss_kb": usage.ru_maxrss,
            "wall_s": time.monotonic() - started,
        }))
    return 0


def _profile_all_threads() -> list[cProfile.Profile]:
    """cProfile sees only the thread that enabled it: give this thread and every thread started from now on a
    profiler of its own (merged by ``_dump_profiles``)."""
    main_profile = cProfile.Profile()
    profiles = [main_profile]

    def boot(frame: object, event: str, arg: object) -> None:
        sys.setprofile(None)
        profile = cProfile.Profile()
        profiles.append(profile)
        profile.enable()

    threading.setprofile(boot)
    main_profile.enable()
    return profiles


def _dump_profiles(profiles: list[cProfile.Profile], path: Path) -> None:
    for profile in profiles:
        profile.disable()
    stats: pstats.Stats | None = None
    for profile in profiles:
        try:
            stats = pstats.Stats(profile) if stats is None else stats.add(profile)
        except TypeError:  # a thread that recorded nothing
            continue
    if stats is not None:
        stats.dump_stats(str(path))


if __name__ == "__main__":
    raise SystemExit(main())
