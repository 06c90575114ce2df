"""The plain Faust baseline of ``ripple bench``: one agent, one event at a time, decode only.

``python -m ripple.bench.faust_baseline --bootstrap HOST:PORT --expect N --data-dir DIR`` reads the
input topics views, clicks, orders and refunds from the beginning with a raw value
serializer, decodes every value with ``orjson.loads`` (a JSON array counts its items) and,
once ``N`` events are counted, prints ``{"events": N, "seconds": S}`` (``S`` from the first
event to the last) as one JSON line and exits. Nothing else: no state, no output topics.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import faust
import orjson
import uvloop

APP_ID = "ripple-bench-baseline"
TOPICS = ("views", "clicks", "orders", "refunds")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ripple.bench.faust_baseline", description=__doc__)
    p.add_argument("--bootstrap", required=True, help="Kafka HOST:PORT")
    p.add_argument("--expect", type=int, required=True, help="events to count before exiting")
    p.add_argument("--data-dir", type=Path, required=True, help="Faust's data directory")
    p.add_argument("--partitions", type=int, default=8)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    uvloop.install()
    app = faust.App(
        APP_ID,
        broker=f"kafka://{args.bootstrap}",
        store="memory://",
        datadir=str(args.data_dir),
        topic_partitions=args.partitions,
        broker_session_timeout=6,  # the embedded broker holds a new group's first join this long
        broker_heartbeat_interval=2,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
    )
    topic = app.topic(*TOPICS, value_serializer="raw")
    expect = args.expect
    count = 0
    first = 0.0

    @app.agent(topic)
    async def decode(stream: faust.StreamT[bytes]) -> None:
        nonlocal count, first
        async for value in stream:
            if not count:
                first = time.perf_counter()
            try:
                loaded = orjson.loads(value)
            except orjson.JSONDecodeError:
                loaded = None
            count += len(loaded) if isinstance(loaded, list) else 1
            if count >= expect:
                seconds = time.perf_counter() - first
                sys.stdout.flush()
                os.write(1, orjson.dumps({"events": count, "seconds": seconds}) + b"\n")
                os._exit(0)  # Faust's worker does not stop quickly; the measurement is done

    # stdout carries the result: Faust must not turn it into a log stream
    worker = faust.Worker(app, loglevel="warn", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
