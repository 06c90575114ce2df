"""The ``ripple`` command line: settings from the environment and the arguments
(:mod:`ripple.arguments`), then the command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ripple.arguments import EXIT_USAGE, build_parser
from ripple.checks import ConfigError, is_loopback
from ripple.config import Settings, load_settings


def _settings(args: argparse.Namespace) -> Settings:
    collector_port = getattr(args, "port", None)
    if collector_port is None:
        collector_port = getattr(args, "collector_port", None)
    return load_settings(
        collector_port=collector_port,
        data_dir=getattr(args, "data_dir", None),
        bootstrap=getattr(args, "bootstrap", None),
        clickhouse=getattr(args, "clickhouse", None),
        web_port=getattr(args, "web_port", None),
        partitions=getattr(args, "partitions", None),
        log_level=getattr(args, "log_level", None),
    )


def _logging(level: str) -> None:
    name = {"crit": "CRITICAL", "warn": "WARNING"}.get(level, level.upper())
    logging.basicConfig(level=name, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"ripple {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _logging("warn" if args.command == "up" and settings.log_level == "info" else settings.log_level)
    try:
        return int(COMMANDS[args.command](args, settings) or 0)
    except ConfigError as exc:
        print(f"ripple {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        message = _failure(exc)
        if message is None:
            raise
        print(f"ripple {args.command}: {message}", file=sys.stderr)
        return 1


def _failure(exc: BaseException) -> str | None:
    """One line for a failure to reach Kafka or ClickHouse (not a bug: no traceback), else None."""
    from clickhouse_connect.driver.exceptions import Error as ClickHouseError
    from confluent_kafka import KafkaException

    from ripple.broker import BrokerError
    from sinks.clickhouse import ClickHouseUnavailable

    if isinstance(exc, BrokerError):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, KafkaException):
        return f"Kafka: {exc.args[0] if exc.args else exc}"
    if isinstance(exc, ClickHouseUnavailable | ClickHouseError):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"ClickHouse: {first}"
    return None


def _make_dir(path: Path, what: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {what} {path}: {exc.strerror or exc}") from None


def _output_file(path: Path | None, flag: str) -> None:
    """A file written at the end of a long run: its folder must exist now."""
    if path is None:
        return
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a directory, not a file")
    if not path.parent.is_dir():
        raise ConfigError(f"{flag} {path}: folder {path.parent} does not exist")


def _output_dir(path: Path | None, flag: str) -> None:
    if path is not None and path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} exists and is not a directory")


def _embedded_broker_only(settings: Settings, command: str) -> None:
    """Kafka security settings apply to an external broker; the embedded one is PLAINTEXT on loopback."""
    if settings.bootstrap is None and settings.kafka_security_protocol != "PLAINTEXT":
        raise ConfigError(
            f"RIPPLE_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol} needs an external broker "
            f"(--bootstrap or RIPPLE_BOOTSTRAP); {command}'s embedded broker speaks PLAINTEXT on 127.0.0.1"
        )


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from ripple.broker import BrokerError
    from ripple.collector import CollectorError
    from ripple.services import AlreadyRunning
    from ripple.supervisor import Up

    _embedded_broker_only(settings, "ripple up")
    _open_api_needs_a_token(settings)
    _make_dir(settings.data_dir, "data dir")
    settings = settings.with_web_port(8080)
    try:
        asyncio.run(Up(settings, args.demo, args.demo_rate, sys.stdout).run())
    except AlreadyRunning as exc:
        print(f"ripple up: {exc}", file=sys.stderr)
        return 1
    except (BrokerError, CollectorError) as exc:
        print(f"ripple up: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.bootstrap:
        raise ConfigError("the worker needs --bootstrap HOST:PORT (or RIPPLE_BOOTSTRAP)")
    import faust
    import uvloop

    from ripple.broker import create_topics
    from streams.app import create_app

    _make_dir(settings.data_dir / "worker", "data dir")
    create_topics(settings.bootstrap, settings.partitions, settings.kafka)  # idempotent: existing topics stay

    settings = settings.with_web_port(6066)
    uvloop.install()
    app = create_app(settings)
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True)
    worker.execute_from_commandline()
    return 0


def _open_api_needs_a_token(settings: Settings) -> None:
    """The web server answers /api/* (every creator's figures) on ``web_host``: off loopback
    only behind a bearer token."""
    if settings.api_token is None and not is_loopback(settings.web_host):
        raise ConfigError(
            f"its API on {settings.web_host} would be open to anyone who can reach it: set "
            "RIPPLE_API_TOKEN (or RIPPLE_API_TOKEN_FILE), or bind 127.0.0.1 (RIPPLE_WEB_HOST)"
        )


def cmd_sink(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.bootstrap:
        raise ConfigError("the sink needs --bootstrap HOST:PORT (or RIPPLE_BOOTSTRAP)")
    _open_api_needs_a_token(settings)
    from ripple.broker import create_topics
    from ripple.services import run_sink

    _make_dir(settings.data_dir, "data dir")
    create_topics(settings.bootstrap, settings.partitions, settings.kafka)
    port = settings.with_web_port(8081).web_port
    asyncio.run(run_sink(settings, port))
    return 0


def cmd_collect(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.bootstrap:
        raise ConfigError("the collector needs --bootstrap HOST:PORT (or RIPPLE_BOOTSTRAP)")
    from ripple.broker import create_topics
    from ripple.collector import DEFAULT_PORT, CollectorError, load_salt, run_collector

    _make_dir(settings.data_dir, "data dir")
    load_salt(settings)  # a salt that cannot be read or created is a setting to fix: exit 2
    create_topics(settings.bootstrap, settings.partitions, settings.kafka)
    port = DEFAULT_PORT if settings.collector_port is None else settings.collector_port
    try:
        asyncio.run(run_collector(settings, port))
    except CollectorError as exc:
        print(f"ripple collect: {exc}", file=sys.stderr)
        return 1
    return 0


def _runtime_bootstrap(settings: Settings) -> str | None:
    import json

    try:
        return str(json.loads(settings.runtime_file.read_text())["bootstrap"])
    except (FileNotFoundError, KeyError, ValueError):
        return None


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import UTC, datetime

    from ripple.simulator import SimConfig, generate, produce, write_out

    if args.start:
        try:
            start = datetime.fromisoformat(args.start)
        except ValueError:
            raise ConfigError(f"--start {args.start!r} is not an ISO 8601 time") from None
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        start_ms = int(start.timestamp() * 1000)
        if start_ms < 0:
            raise ConfigError(f"--start {args.start!r} is before 1970 (event times are epoch milliseconds)")
    else:
        today = int(time.time() // 86_400) * 86_400_000
        start_ms = today - int(args.days * 86_400_000)
    _output_dir(args.out, "--out")
    bootstrap = settings.bootstrap or (None if args.out and not args.data_dir else _runtime_bootstrap(settings))
    if bootstrap is None and args.out is None:
        raise ConfigError("nothing to do: give --bootstrap, a --data-dir of a running 'ripple up', or --out")
    cfg = SimConfig(
        seed=args.seed,
        start_ms=start_ms,
        days=args.days,
        creators=max(1, args.creators),
        views=args.views,
        malformed_share=args.malformed,
        inject=args.inject,
        inject_count=args.inject_count,
    )
    if args.chain_k:
        cfg.chain_k = {**cfg.chain_k, **args.chain_k}
    ds = generate(cfg)
    total = len(ds.reference) + len(ds.events)
    print(
        f"simulated {total} messages: {len(ds.reference)} reference, {len(ds.events)} events "
        f"({ds.truth['malformed']} malformed), {len(ds.truth['last_click'])} orders"
        + (f", {len(ds.truth['incidents'])} fraud incidents" if args.inject else ""),
        file=sys.stderr,
    )
    if args.out:
        _make_dir(args.out, "--out")
        write_out(ds, args.out)
        print(f"wrote {args.out}/events.jsonl and {args.out}/ground_truth.json", file=sys.stderr)
    if bootstrap:
        t0 = time.monotonic()
        produce(ds.reference, bootstrap, security=settings.kafka)
        sent = produce(
            ds.events,
            bootstrap,
            security=settings.kafka,
            rate=args.rate,
            batch=max(1, args.batch),
            progress=lambda n: print(f"\rsent {n}/{len(ds.events)}", end="", file=sys.stderr),
        )
        dt = time.monotonic() - t0
        print(f"\rsent {sent + len(ds.reference)} messages to {bootstrap} in {dt:.1f} s", file=sys.stderr)
    return 0


def cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from ripple.bench import evaluate

    if set(args.seeds) & set(args.honest_seeds):
        raise ConfigError("--seeds and --honest-seeds must differ")
    _output_file(args.json, "--json")
    scenario = evaluate.Scenario(
        seeds=args.seeds,
        honest_seeds=args.honest_seeds,
        inject=args.inject,
        inject_count=args.inject_count,
        creators=args.creators,
        views=args.views,
        rate=args.rate,
    )
    report = evaluate.run(scenario, args.data_dir, lambda line: print(line, file=sys.stderr), settings.fraud_rules)
    print(report.table())
    if args.json:
        args.json.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    if not report.passed:
        print(
            "below target: precision >= 0.90 and recall >= 0.95 per rule, nothing above info on honest traffic,"
            " money equal to the truth",
            file=sys.stderr,
        )
    return 0 if report.passed else 1


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    from ripple import bench
    from ripple.broker import BrokerError

    if args.views is not None and args.views < 1:
        raise ConfigError("--views must be at least 1")
    _output_file(args.json, "--json")
    _output_dir(args.profile, "--profile")
    cfg = bench.BenchConfig.make(args.quick, args.views, settings.partitions, args.profile, args.input_batch)
    try:
        return bench.run(
            cfg, args.data_dir, args.json, sys.stdout, lambda line: print(f"bench: {line}", file=sys.stderr)
        )
    except (bench.BenchError, BrokerError) as exc:
        print(f"ripple bench: {exc}", file=sys.stderr)
        return 1


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from sinks.clickhouse import ClickHouse

    ch = ClickHouse(settings.clickhouse_dsn, settings.clickhouse_ca_file)
    try:
        applied = ch.migrate()
    finally:
        ch.close()
    print(f"applied {len(applied)} migration(s){': ' + ', '.join(applied) if applied else ''}")
    return 0


COMMANDS = {
    "up": cmd_up,
    "worker": cmd_worker,
    "sink": cmd_sink,
    "collect": cmd_collect,
    "simulate": cmd_simulate,
    "evaluate": cmd_evaluate,
    "migrate": cmd_migrate,
    "bench": cmd_bench,
}
