"""``ripple up``: the whole stack in one command — embedded broker, topics, worker, sink and
web, collector, and with ``--demo`` the simulator — watched, restarted and stopped together."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import subprocess
import threading
import time
import urllib.request
from typing import IO

from ripple.broker import EmbeddedBroker, create_topics, die_with_parent, free_port
from ripple.collector import CollectorError
from ripple.config import Settings
from ripple.services import DataDirLock, SinkService, collector_command, collector_port, collector_url, worker_command

log = logging.getLogger("ripple")


class Up:
    """``ripple up``: broker, topics, worker, sink, web, collector, and optionally the simulator."""

    def __init__(self, settings: Settings, demo: bool, demo_rate: float, out: IO[str]) -> None:
        self.settings = settings
        self.demo = demo
        self.demo_rate = demo_rate
        self.out = out
        self.lock = DataDirLock(settings.data_dir)
        self.broker: EmbeddedBroker | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.collector: subprocess.Popen[bytes] | None = None
        self.collector_url = ""
        self.service: SinkService | None = None
        self.sim_thread: threading.Thread | None = None
        self.sim_stop = threading.Event()
        self.sim_sent = 0
        self.worker_url = ""
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    async def run(self) -> None:
        self.lock.acquire()
        try:
            await self._run()
        finally:
            await self._shutdown()
            self.lock.release()

    async def _run(self) -> None:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        if s.bootstrap is None:
            self.broker = EmbeddedBroker(s.data_dir / "logs" / "broker.log")
            self.broker.start()
            s = self.settings = s.replace(bootstrap=self.broker.bootstrap)
            self.say(f"broker     embedded Tansu on {s.bootstrap}")
        else:
            self.say(f"broker     {s.bootstrap}")
        assert s.bootstrap is not None
        created = create_topics(s.bootstrap, s.partitions, s.kafka)
        self.say(f"topics     {len(created)} created, {s.partitions} partitions each")
        worker_port = free_port()
        self.worker_url = f"http://127.0.0.1:{worker_port}"
        log_path = s.data_dir / "logs" / "worker.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as worker_log:
            self.worker = subprocess.Popen(
                worker_command(s, worker_port),
                stdout=worker_log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            )
        self.say(f"worker     pid {self.worker.pid}, metrics http://127.0.0.1:{worker_port}/metrics")
        port = collector_port(s)
        self.collector_url = collector_url(s, port)
        with (s.data_dir / "logs" / "collector.log").open("ab") as collector_log:
            self.collector = subprocess.Popen(
                collector_command(s, port),
                stdout=collector_log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            )
        self.service = SinkService(s, s.web_port)
        await self.service.start()
        web = f"http://{s.web_host}:{s.web_port}"
        self.say(f"clickhouse {s.clickhouse_display}")
        self.say(f"dashboard  {web}/" + ("?token=<RIPPLE_API_TOKEN> (the API needs the token)" if s.api_token else ""))
        await self._wait_collector(deadline=time.monotonic() + 40)
        self.say(f"collector  {self.collector_url} (POST /v1/events, GET /r/{{code}}, /ripple.js)")
        runtime = {
            "bootstrap": s.bootstrap,
            "web": web,
            "collector": self.collector_url,
            "worker_metrics": f"http://127.0.0.1:{worker_port}",
        }
        s.runtime_file.write_text(json.dumps(runtime, indent=2) + "\n")
        if self.demo:
            self._start_demo()
        await self._watch()

    async def _wait_collector(self, deadline: float) -> None:
        """Until the collector answers /healthz; CollectorError when it exits or never does."""
        assert self.collector is not None
        log_file = self.settings.data_dir / "logs" / "collector.log"
        loop = asyncio.get_running_loop()

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{self.collector_url}/healthz", timeout=2) as resp:  # noqa: S310
                    return bool(resp.status == 200)
            except OSError:
                return False

        while time.monotonic() < deadline:
            if self.collector.poll() is not None:
                lines = log_file.read_text(errors="replace").strip().splitlines()
                raise CollectorError(
                    f"the collector exited with code {self.collector.returncode}"
                    + (f": {lines[-1]}" if lines else f"; see {log_file}")
                )
            if await loop.run_in_executor(None, healthy):
                return
            await asyncio.sleep(0.2)
        raise CollectorError(f"the collector did not answer on {self.collector_url} within 40 s; see {log_file}")

    def _start_demo(self) -> None:
        from ripple.simulator import SimConfig, demo_stream, parse_inject, produce

        now_ms = int(time.time() * 1000)
        cfg = SimConfig(
            seed=7,
            start_ms=now_ms - 30 * 86_400_000,
            days=1.0,
            views=4000,
            run_id=f"demo{now_ms // 1000}",
            creator_prefix="demo",
            inject=parse_inject("all"),  # one incident of every fraud type per simulated day
            inject_count=1,
        )
        bootstrap = str(self.settings.bootstrap)
        security = self.settings.kafka

        def run() -> None:
            try:
                for batch in demo_stream(cfg, self.sim_stop.is_set):
                    n = produce(batch, bootstrap, rate=self.demo_rate, stop=self.sim_stop.is_set, security=security)
                    self.sim_sent += n
            except Exception:
                log.exception("simulator stopped")

        self.sim_thread = threading.Thread(target=run, name="simulator", daemon=True)
        self.sim_thread.start()
        self.say(f"simulator  demo traffic at about {self.demo_rate:.0f} events/s")

    async def _watch(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        last = (time.monotonic(), 0)
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 5.0)
            if stop.is_set():
                break
            if self.collector is not None and self.collector.poll() is not None:
                self.say(
                    f"collector exited with code {self.collector.returncode}; "
                    f"see {self.settings.data_dir}/logs/collector.log"
                )
                break
            if self.worker is not None and self.worker.poll() is not None:
                self.say(
                    f"worker exited with code {self.worker.returncode}; see {self.settings.data_dir}/logs/worker.log"
                )
                break
            assert self.service is not None
            if not self.service.thread.is_alive():
                self.say(f"sink stopped: {self.service.error}")
                break
            last = await self._status_line(last)
        self.say("stopping…")

    async def _status_line(self, last: tuple[float, int]) -> tuple[float, int]:
        assert self.service is not None
        written = self.service.sink.written
        rows = {t: written[t] for t in ("views", "clicks", "orders", "dead_letters")}
        events = rows["views"] + rows["clicks"] + rows["orders"]
        now = time.monotonic()
        rate = (events - last[1]) / max(now - last[0], 1e-6)
        lag = "?"
        loop = asyncio.get_running_loop()
        if self.service.monitor is not None:
            with contextlib.suppress(Exception):
                lags = await loop.run_in_executor(None, self.service.monitor.lag)
                lag = str(sum(v["lag"] for v in lags.values()))
        attributed = await loop.run_in_executor(None, self._orders_attributed)
        self.say(
            f"[{now - self.started:6.0f}s] {rate:8.0f} events/s in | {events} events stored | "
            f"{attributed} orders attributed | {rows['dead_letters']} dead letters | worker lag {lag}"
        )
        return now, events

    async def _wait_worker_caught_up(self, deadline: float) -> None:
        """Give the worker a moment to finish what was sent before it is stopped."""
        if self.service is None or self.service.monitor is None:
            return
        loop = asyncio.get_running_loop()
        while time.monotonic() < deadline:
            try:
                lags = await asyncio.wait_for(loop.run_in_executor(None, self.service.monitor.lag), 2)
            except Exception:
                return
            if sum(v["lag"] for v in lags.values()) == 0:
                return
            await asyncio.sleep(0.3)

    def _orders_attributed(self) -> str:
        """The worker's own count, read from its /metrics."""
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.worker_url}/metrics", timeout=2) as resp:  # noqa: S310 - loopback
                text = resp.read().decode()
        except OSError:
            return "?"
        for line in text.splitlines():
            if line.startswith("ripple_orders_attributed_total "):
                return str(int(float(line.split()[1])))
        return "0"

    async def _shutdown(self) -> None:
        t0 = time.monotonic()
        if self.collector is not None and self.collector.poll() is None:
            # first: no new events; it delivers what it has acknowledged to nobody yet
            self.collector.send_signal(signal.SIGTERM)
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.collector.wait, 8)
            except subprocess.TimeoutExpired:
                self.collector.kill()
                self.collector.wait()
        log.info("collector stopped after %.1f s", time.monotonic() - t0)
        self.sim_stop.set()
        if self.sim_thread is not None:
            self.sim_thread.join(3)
        log.info("simulator stopped after %.1f s", time.monotonic() - t0)
        if self.worker is not None and self.worker.poll() is None:
            await self._wait_worker_caught_up(deadline=time.monotonic() + 4)
            self.worker.send_signal(signal.SIGTERM)
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.worker.wait, 5)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()
        log.info("worker stopped after %.1f s", time.monotonic() - t0)
        if self.service is not None:
            await self.service.stop()
        log.info("sink stopped after %.1f s", time.monotonic() - t0)
        if self.broker is not None:
            self.broker.stop()
        with contextlib.suppress(FileNotFoundError):
            self.settings.runtime_file.unlink()
        self.say(f"stopped in {time.monotonic() - t0:.1f} s")
