"""Open-loop HTTP/1.1 load generator (asyncio, keep-alive connections), run as a process of its own.

Request ``i`` is due at ``start + i / rate`` whatever happened to the earlier ones (a fixed schedule, so a
slow server cannot slow the generator down and hide its own queueing: "coordinated omission"). Its latency
is measured from the moment it was *due* to the last byte of the answer. A request finds an idle
keep-alive connection or opens a new one. Prints one JSON object: per-request latencies after the warm-up,
status counts, how late the sends were, and the achieved rate.

    python -m bench.loadgen --url http://127.0.0.1:7071/api/graph/notifications --rate 200 --duration 10 \\
        [--warmup 2] [--body-file body.json | --bodies-file bodies.jsonl]

``--bodies-file``: one body per line; request ``i`` (warm-up included) sends line ``i`` modulo their number.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit


class _Pool:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened = 0

    async def get(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.idle:
            return self.idle.pop()
        self.opened += 1
        return await asyncio.open_connection(self.host, self.port)

    def put(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self.idle.append(conn)

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


async def _request(pool: _Pool, payload: bytes) -> int:
    reader, writer = await pool.get()
    try:
        writer.write(payload)
        await writer.drain()
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionError("connection closed")
        status = int(status_line.split()[1])
        length, close = 0, False
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
            elif name.strip().lower() == "connection" and value.strip().lower() == "close":
                close = True
        if length:
            await reader.readexactly(length)
    except BaseException:
        writer.close()
        raise
    if close:
        writer.close()
    else:
        pool.put((reader, writer))
    return status


async def run(url: str, rate: float, duration: float, warmup: float, bodies: list[bytes],
              content_type: str = "application/json") -> dict[str, object]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    payloads = [(f"POST {target} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n").encode() + body for body in bodies or [b""]]
    pool = _Pool(host, port)
    total = int((warmup + duration) * rate)
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    late: list[float] = []
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.2
    tasks: list[asyncio.Task[None]] = []

    async def one(due: float, counted: bool, payload: bytes) -> None:
        try:
            status = await _request(pool, payload)
            key = str(status)
        except Exception as exc:
            key = type(exc).__name__
        done = loop.time()
        if counted:
            statuses[key] += 1
            latencies.append(done - due)

    for i in range(total):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        counted = i >= warmup * rate
        if counted:
            late.append(max(0.0, loop.time() - due))
        tasks.append(asyncio.create_task(one(due, counted, payloads[i % len(payloads)])))
    sent_for = loop.time() - start
    await asyncio.gather(*tasks)
    pool.close()
    measured = total - int(warmup * rate)
    return {
        "requests": measured,
        "latencies_s": latencies,
        "statuses": dict(statuses),
        "send_lateness_max_s": max(late) if late else 0.0,
        "send_lateness_p99_s": sorted(late)[int(0.99 * (len(late) - 1))] if late else 0.0,
        "achieved_rate": total / sent_for if sent_for > 0 else 0.0,
        "connections_opened": pool.opened,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    bodies = parser.add_mutually_exclusive_group()
    bodies.add_argument("--body-file", type=Path, help="the body of every request")
    bodies.add_argument("--bodies-file", type=Path, help="one body per line, sent in turn")
    args = parser.parse_args(argv)
    if args.bodies_file:
        payloads = [line for line in args.bodies_file.read_bytes().splitlines() if line.strip()]
    else:
        payloads = [args.body_file.read_bytes() if args.body_file else b""]
    result = asyncio.run(run(args.url, args.rate, args.duration, args.warmup, payloads))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
