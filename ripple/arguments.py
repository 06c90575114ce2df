"""The ``ripple`` command line's arguments: every command, its options and how each value is
checked (a bad one: one line and exit code 2, from :class:`Parser`)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, NoReturn

from ripple.checks import ConfigError, check_hostport

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


def _within(kind: type, low: float, high: float, not_a: str, outside: str) -> Any:
    """A number of ``kind`` in [low, high]; ``outside`` is formatted with ``value`` (as given)
    and ``v`` (as read)."""

    def parse(value: str) -> Any:
        try:
            v = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not {not_a}") from None
        if not low <= v <= high:
            raise argparse.ArgumentTypeError(outside.format(value=value, v=v))
        return v

    return parse


_port = _within(int, 0, 65535, "a port number", "{v} is not between 0 and 65535")


def _hostport(value: str) -> str:
    try:
        check_hostport(value, "--bootstrap")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _positive(kind: type, minimum: int = 0) -> Any:
    def parse(value: str) -> Any:
        try:
            v = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{value!r} is not a finite number")
        if v < minimum:
            raise argparse.ArgumentTypeError(
                f"{value} must not be negative" if minimum == 0 else f"{value} must be at least {minimum}"
            )
        return v

    return parse


def _days(value: str) -> float:
    days = _positive(float)(value)
    if days <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be above 0")
    return float(days)


_share = _within(float, 0, 1, "a number", "{value} must be between 0 and 1")


def _inject(value: str) -> tuple[str, ...]:
    from ripple.simulator import parse_inject

    try:
        return parse_inject(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seeds(value: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a comma list of integers") from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"{value!r}: expected at least one seed")
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{value!r}: seeds must differ")
    return seeds


def _chain_k(value: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in value.split(","):
        name, sep, number = part.partition("=")
        if name not in ("sub", "near", "super") or not sep:
            raise argparse.ArgumentTypeError(f"{part!r}: expected sub=K, near=K or super=K")
        try:
            out[name] = float(number)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{number!r} is not a number") from None
        if not 0 <= out[name] <= 10:  # also refuses nan
            raise argparse.ArgumentTypeError(f"K={number} must be between 0 and 10")
    return out


def _common(p: argparse.ArgumentParser, *, bootstrap: bool = True, clickhouse: bool = False, web: bool = False) -> None:
    p.add_argument(
        "--data-dir", type=Path, help="state and embedded ClickHouse (env RIPPLE_DATA_DIR, default ./.ripple)"
    )
    if bootstrap:
        p.add_argument("--bootstrap", type=_hostport, help="Kafka HOST:PORT (env RIPPLE_BOOTSTRAP)")
    if clickhouse:
        p.add_argument("--clickhouse", help="ClickHouse DSN: chdb://PATH or http://host:8123 (env RIPPLE_CLICKHOUSE)")
    if web:
        p.add_argument("--web-port", type=_port, help="web server port (env RIPPLE_WEB_PORT)")
    p.add_argument("--partitions", type=int, help="partitions per topic when creating topics (default 8)")
    p.add_argument("--log-level", choices=("crit", "error", "warn", "info", "debug"))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ripple", description="Streaming attribution for creator referral programs.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    up = sub.add_parser("up", help="all-in-one: embedded broker, worker, sink, dashboard")
    _common(up, clickhouse=True, web=True)
    up.add_argument("--demo", action="store_true", help="also run the simulator")
    up.add_argument("--demo-rate", type=_positive(float), default=1000.0, help="demo events per second")
    up.add_argument(
        "--collector-port",
        type=_port,
        help="the collector's port (env RIPPLE_COLLECTOR_PORT; default 8090, or a free port when it is taken)",
    )

    worker = sub.add_parser("worker", help="one Faust stream worker")
    _common(worker, web=True)

    sink = sub.add_parser("sink", help="the ClickHouse sink")
    _common(sink, clickhouse=True, web=True)

    collect = sub.add_parser("collect", help="the HTTP collector for storefronts: events, referral links, snippet")
    _common(collect)
    collect.add_argument("--port", type=_port, help="HTTP port (env RIPPLE_COLLECTOR_PORT, default 8090)")

    sim = sub.add_parser("simulate", help="synthetic storefront traffic with ground truth")
    sim.add_argument("--bootstrap", type=_hostport, help="send to this Kafka (else only write --out)")
    sim.add_argument("--data-dir", type=Path, help="read the broker address from a running 'ripple up'")
    sim.add_argument("--out", type=Path, help="write events.jsonl and ground_truth.json here")
    sim.add_argument("--seed", type=int, default=42)
    sim.add_argument("--start", help="first event time, ISO 8601 UTC (default: --days before today)")
    sim.add_argument("--days", type=_days, default=14.0, help="simulated period in days")
    sim.add_argument("--creators", type=_positive(int), default=30)
    sim.add_argument("--views", type=_positive(int), default=3000, help="content views to simulate")
    sim.add_argument("--rate", type=_positive(float), default=0.0, help="messages per second (0: as fast as possible)")
    sim.add_argument(
        "--batch",
        type=_positive(int),
        default=1,
        help="send events as JSON arrays of up to N per topic partition, as a collector does (default 1)",
    )
    sim.add_argument("--malformed", type=_share, default=0.01, help="share of malformed messages, 0 to 1")
    sim.add_argument(
        "--chain-k",
        type=_chain_k,
        help="mean friends referred per customer, by creator class: sub=0.15,near=0.6,super=2.2",
    )

    sim.add_argument(
        "--inject",
        type=_inject,
        default=(),
        help="add labelled fraud: all, or a comma list of self_referral,click_injection,click_flood,bot,"
        "leakage,ring,refund_abuse,spike",
    )
    sim.add_argument("--inject-count", type=_positive(int), default=3, help="incidents per injected fraud type")

    ev = sub.add_parser(
        "evaluate",
        help="precision and recall of the fraud rules: simulated programs through a fresh embedded stack",
    )
    ev.add_argument("--seeds", type=_seeds, default=(1, 2), help="programs with fraud injected (default 1,2)")
    ev.add_argument(
        "--honest-seeds", type=_seeds, default=(11, 12, 13), help="programs without fraud (default 11,12,13)"
    )
    ev.add_argument("--inject", type=_inject, default=("all",), help="fraud types to inject (default all)")
    ev.add_argument("--inject-count", type=_positive(int), default=10, help="incidents per type and program")
    ev.add_argument("--creators", type=_positive(int, minimum=1), default=40)
    ev.add_argument("--views", type=_positive(int, minimum=1), default=4000, help="content views per program")
    ev.add_argument("--rate", type=_positive(float), default=3000.0, help="messages per second sent (0: at once)")
    ev.add_argument("--json", type=Path, help="also write the report as JSON here")
    ev.add_argument("--data-dir", type=Path, help="keep the stack's data here (default: a temporary folder)")

    bench = sub.add_parser(
        "bench",
        help="the performance contract: end-to-end rate, latency, memory and two baselines on one embedded broker",
    )
    bench.add_argument("--quick", action="store_true", help="a small program and short phases (a smoke test)")
    bench.add_argument("--views", type=_positive(int), help="content views to simulate (default 120000, --quick 6000)")
    bench.add_argument("--partitions", type=int, help="partitions per topic (default 8)")
    bench.add_argument(
        "--json", type=Path, default=Path("bench-results.json"), help="write the figures here (default %(default)s)"
    )
    bench.add_argument("--data-dir", type=Path, help="keep logs and data here (default: a temporary folder)")
    bench.add_argument(
        "--input-batch",
        type=_positive(int, minimum=1),
        default=1,
        metavar="N",
        help="send input events as JSON arrays of up to N per partition, as the collector does (default 1)",
    )
    bench.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample the worker and the sink with py-spy while they drain; collapsed stacks go to DIR",
    )

    mig = sub.add_parser("migrate", help="apply deploy/clickhouse DDL")
    mig.add_argument("--clickhouse", help="ClickHouse DSN (env RIPPLE_CLICKHOUSE)")
    mig.add_argument("--data-dir", type=Path)
    return parser
