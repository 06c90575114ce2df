"""Process entry points: the sink service (sink and web), the data directory's lock, and the
commands and addresses of the processes ``ripple up`` starts (:mod:`ripple.supervisor`)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import IO, Any

from ripple.broker import free_port
from ripple.collector import DEFAULT_PORT as COLLECTOR_PORT
from ripple.config import Settings
from ripple.web import OffsetMonitor, build_app, serve
from sinks.clickhouse import ClickHouse
from sinks.runner import SINK_GROUP, SINK_TOPICS, Sink
from streams.metrics import SinkMetrics
from streams.topics import INTERNAL_TOPICS

log = logging.getLogger("ripple")


class AlreadyRunning(RuntimeError):
    pass


class DataDirLock:
    """One ``ripple up`` (or sink owning chDB) per data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "ripple.lock"
        self.fh: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = self.path.open("a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            owner = fh.read().strip() or "another process"
            fh.close()
            raise AlreadyRunning(
                f"Ripple is already running on data dir {self.path.parent} (pid {owner}); "
                "stop it first or use another --data-dir"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self.fh = fh

    def release(self) -> None:
        if self.fh is not None:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()
            self.fh = None


class SinkService:
    """The sink thread plus the web server, in the current process."""

    def __init__(self, settings: Settings, web_port: int | None) -> None:
        self.settings = settings
        self.metrics = SinkMetrics()
        self.ch = ClickHouse(settings.clickhouse_dsn, settings.clickhouse_ca_file)
        self.ch.migrate()
        self.sink = Sink(settings.replace(web_port=web_port), self.ch, self.metrics)
        kafka = settings.kafka
        self.monitor = OffsetMonitor(settings.bootstrap, security=kafka) if settings.bootstrap else None
        self.pipeline = (
            [
                OffsetMonitor(settings.bootstrap, topics=INTERNAL_TOPICS, security=kafka),
                OffsetMonitor(settings.bootstrap, SINK_GROUP, SINK_TOPICS, security=kafka),
            ]
            if settings.bootstrap
            else []
        )
        self.web_port = web_port
        self.thread = threading.Thread(target=self._run, name="sink", daemon=True)
        self.error: BaseException | None = None
        self.runner: Any = None

    def _run(self) -> None:
        try:
            self.sink.run(drain_seconds=3.0)
        except BaseException as exc:  # reported by the supervisor
            self.error = exc
            log.exception("sink stopped with an error")

    async def start(self) -> None:
        self.thread.start()
        if self.web_port is not None:
            app = build_app(
                self.ch,
                self.metrics,
                self.sink.status,
                self.monitor,
                self.pipeline,
                lambda: dict(self.sink.written),
                api_token=self.settings.api_token,
            )
            self.runner = await serve(app, self.settings.web_host, self.web_port)

    async def stop(self) -> None:
        self.sink.stop()
        await asyncio.get_running_loop().run_in_executor(None, self.thread.join, 10.0)
        if self.runner is not None:
            await self.runner.cleanup()
        for monitor in [self.monitor, *self.pipeline]:
            if monitor is not None:
                monitor.close()
        self.ch.close()


async def run_sink(settings: Settings, web_port: int | None) -> None:
    service = SinkService(settings, web_port)
    await service.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set() and service.thread.is_alive():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    await service.stop()
    if service.error is not None:
        raise SystemExit(f"ripple sink: {service.error}")


def worker_command(settings: Settings, web_port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ripple",
        "worker",
        "--bootstrap",
        str(settings.bootstrap),
        "--data-dir",
        str(settings.data_dir),
        "--web-port",
        str(web_port),
    ]


def collector_command(settings: Settings, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ripple",
        "collect",
        "--bootstrap",
        str(settings.bootstrap),
        "--data-dir",
        str(settings.data_dir),
        "--port",
        str(port),
    ]


def collector_port(settings: Settings) -> int:
    """The collector's port for ``ripple up``: the one set (0: any free port), else 8090 when
    it is free, else a free port (``runtime.json`` says which)."""
    host = "127.0.0.1" if settings.collector_host in ("0.0.0.0", "::") else settings.collector_host  # noqa: S104
    if settings.collector_port is not None:
        return settings.collector_port or free_port(host)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, COLLECTOR_PORT))
    except OSError:
        return free_port(host)
    return COLLECTOR_PORT


def collector_url(settings: Settings, port: int) -> str:
    host = settings.collector_host
    if host in ("0.0.0.0", "::"):  # noqa: S104 - what it listens on, not what to call
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"
