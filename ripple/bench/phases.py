"""The phases of ``ripple bench`` (see the package's docstring), one after the other, and :func:`run`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from ripple.bench.figures import (
    DAY_MS,
    FAUST_TIMEOUT,
    MICRO_BATCH,
    ROOT,
    TOPICS,
    BenchConfig,
    BenchError,
    Figures,
    num,
    table,
    to_json,
)
from ripple.bench.probes import (
    Child,
    Profiler,
    buckets,
    child_env,
    get,
    metric,
    peak_rss,
    profile_report,
    quantile,
    scrape,
    tail,
)
from ripple.bench.traffic import Mix, attribution_rows, link_slugs, raw_consume, send_live
from ripple.broker import EmbeddedBroker, create_topics, free_port
from ripple.simulator import SimConfig, generate, parse_inject, produce


class Bench:
    def __init__(self, cfg: BenchConfig, data: Path, say: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.data = data
        self.started = time.monotonic()
        self._say = say
        self.fig = Figures()
        self.broker: EmbeddedBroker | None = None
        self.children: list[Child] = []
        self.sink: Child | None = None
        self.worker: Child | None = None
        self.sink_url = ""
        self.worker_url = ""
        self.slugs: list[str] = []
        self.creators: list[str] = []
        self.mix = Mix()
        self.inputs_read = 0.0

    def say(self, line: str) -> None:
        self._say(f"[{time.monotonic() - self.started:5.1f} s] {line}")

    @property
    def bootstrap(self) -> str:
        assert self.broker is not None
        return self.broker.bootstrap

    def run(self) -> Figures:
        for sub in ("logs", "baseline", "sink", "worker", "chdb"):  # what an earlier run left here
            shutil.rmtree(self.data / sub, ignore_errors=True)
        try:
            self.load()
            self.raw_ceiling()
            self.faust_baseline()
            self.ripple_end_to_end()
            self.latency()
        finally:
            self.stop()
        self.chdb_inserts()
        return self.fig

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    # 1 ------------------------------------------------------------------------------
    def load(self) -> None:
        cfg = self.cfg
        now_ms = int(time.time() * 1000)
        sim = SimConfig(
            seed=cfg.seed,
            views=cfg.views,
            days=cfg.days,
            start_ms=now_ms - 30 * DAY_MS,
            malformed_share=0,
            duplicate_share=0,
            inject=parse_inject("all"),
            inject_count=cfg.inject_count,
        )
        t = time.perf_counter()
        ds = generate(sim)
        self.slugs = link_slugs(ds)
        self.creators = sorted({str(m.event["creator_id"]) for m in ds.reference if m.topic == "creators" and m.event})
        events = [m for m in ds.events if m.topic in TOPICS]
        self.mix = Mix.of(events)
        self.fig.input_events = len(events)
        self.fig.reference_messages = len(ds.reference)
        self.say(f"load: simulated {len(events)} input events in {time.perf_counter() - t:.1f} s")
        self.broker = EmbeddedBroker(self.data / "logs" / "broker.log")
        self.broker.start()
        create_topics(self.bootstrap, cfg.partitions)
        t = time.perf_counter()
        produce(ds.reference, self.bootstrap)
        produce(ds.events, self.bootstrap, batch=cfg.input_batch)
        self.fig.load_seconds = time.perf_counter() - t
        self.say(
            f"load: sent {len(ds.reference)} reference messages and {len(events)} events "
            f"({'one per message' if cfg.input_batch <= 1 else f'in arrays of up to {cfg.input_batch}'}) to "
            f"{self.bootstrap} ({cfg.partitions} partitions) in {self.fig.load_seconds:.1f} s"
        )

    # 2 ------------------------------------------------------------------------------
    def raw_ceiling(self) -> None:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            n, seconds = runner.run(raw_consume(self.bootstrap, self.fig.input_events))
        self.fig.raw_events, self.fig.raw_seconds = n, seconds
        self.say(f"ceiling: aiokafka read and decoded {n} events in {seconds:.2f} s")

    # 3 ------------------------------------------------------------------------------
    def faust_baseline(self) -> None:
        log = self.data / "logs" / "faust-baseline.log"
        argv = [
            sys.executable,
            "-m",
            "ripple.bench.faust_baseline",
            "--bootstrap",
            self.bootstrap,
            "--expect",
            str(self.fig.input_events),
            "--data-dir",
            str(self.data / "baseline"),
            "--partitions",
            str(self.cfg.partitions),
        ]
        self.say("faust: starting the plain Faust baseline")
        with log.open("ab") as err:
            try:
                done = subprocess.run(
                    argv, stdout=subprocess.PIPE, stderr=err, cwd=ROOT, timeout=FAUST_TIMEOUT, check=False
                )
            except subprocess.TimeoutExpired:
                raise BenchError(
                    f"plain Faust baseline: not all {self.fig.input_events} events read within "
                    f"{FAUST_TIMEOUT:.0f} s (log: {log})"
                ) from None
        # the result is the last line; Faust may put terminal control codes before it
        lines = done.stdout.decode(errors="replace").strip().splitlines()
        try:
            result = json.loads(lines[-1][lines[-1].index("{") :])
            self.fig.faust_events, self.fig.faust_seconds = int(result["events"]), float(result["seconds"])
        except (IndexError, ValueError, KeyError, TypeError):
            print(tail(log), file=sys.stderr)
            raise BenchError(f"plain Faust baseline: exit code {done.returncode}, no result (log: {log})") from None
        self.say(f"faust: one agent decoded {self.fig.faust_events} events in {self.fig.faust_seconds:.2f} s")

    # 4 ------------------------------------------------------------------------------
    def ripple_end_to_end(self) -> None:
        env = child_env(self.cfg.partitions)
        sink_port, worker_port = free_port(), free_port()
        self.sink_url = f"http://127.0.0.1:{sink_port}"
        self.worker_url = f"http://127.0.0.1:{worker_port}"
        ripple = [sys.executable, "-m", "ripple"]
        started = time.monotonic()
        sink_dir, worker_dir = self.data / "sink", self.data / "worker"
        self.sink = Child(
            "ripple sink",
            [
                *ripple,
                "sink",
                "--bootstrap",
                self.bootstrap,
                "--data-dir",
                str(sink_dir),
                "--clickhouse",
                f"chdb://{(sink_dir / 'clickhouse').resolve()}",
                "--web-port",
                str(sink_port),
            ],
            self.data / "logs" / "sink.log",
            env,
        )
        self.children.append(self.sink)
        self.worker = Child(
            "ripple worker",
            [
                *ripple,
                "worker",
                "--bootstrap",
                self.bootstrap,
                "--data-dir",
                str(worker_dir),
                "--web-port",
                str(worker_port),
            ],
            self.data / "logs" / "worker.log",
            env,
        )
        self.children.append(self.worker)
        self.say(f"ripple: started the sink (pid {self.sink.pid}) and a worker (pid {self.worker.pid})")

        t0 = self._wait_first_event(timeout=120.0)
        self.fig.ripple_startup_seconds = t0 - started
        self.say(f"ripple: first event after {t0 - started:.1f} s; waiting for everything to reach ClickHouse")
        profilers = []
        if self.cfg.profile is not None:
            logs = self.data / "logs"
            for name, child in (("worker", self.worker), ("sink", self.sink)):
                profilers.append(Profiler(child.pid, self.cfg.profile / f"{name}.txt", logs / f"py-spy-{name}.log"))
        try:
            t1 = self._wait_drained(timeout=900.0 if not self.cfg.quick else 300.0, polls=3)
        finally:
            for profiler in profilers:
                profiler.stop()
        for profiler in profilers:
            self.say(profile_report(profiler.out, f"profile of the {profiler.out.stem} while draining"))
        self.fig.ripple_seconds = t1 - t0
        self.fig.ripple_inputs_seconds = self.inputs_read - t0
        sink = scrape(f"{self.sink_url}/metrics")
        self.fig.sink_rows = metric(sink, "ripple_sink_rows_total")
        self.fig.sink_insert_seconds = metric(sink, "ripple_sink_insert_seconds_sum")
        self.fig.attribution_rows = metric(sink, "ripple_sink_rows_total", table="attributions")
        self.say(
            f"ripple: {self.fig.input_events} events end to end in {self.fig.ripple_seconds:.2f} s (inputs read "
            f"after {self.fig.ripple_inputs_seconds:.2f} s); "
            f"{self.fig.sink_rows:.0f} rows in ClickHouse ({self.fig.attribution_rows:.0f} attributions)"
        )
        # the worker samples its state every 5 s: read a sample taken after it read the last
        # input event (visitor state changes with input events only)
        wait = self.inputs_read + 5.5 - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        worker = scrape(f"{self.worker_url}/metrics")
        self.fig.late_events = sum(v for name, _, v in worker if name == "ripple_late_events_total")
        self.fig.idle_timeouts = sum(v for name, _, v in worker if name == "ripple_task_idle_timeouts_total")
        self.say(
            f"ripple: {self.fig.late_events:.0f} late events, {self.fig.idle_timeouts:.0f} waits for a lagging "
            "input ran out (60 x max_task_idle)"
        )
        self.fig.state_keys = metric(worker, "ripple_state_keys", table="visitor_state")
        self.fig.state_bytes = metric(worker, "ripple_state_bytes", table="visitor_state")
        self.say(f"ripple: visitor_state holds {self.fig.state_keys:.0f} keys, {self.fig.state_bytes:.0f} bytes")

    def _children_alive(self) -> None:
        for child in self.children:
            child.check()

    def _wait_first_event(self, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._children_alive()
            now = time.monotonic()
            with contextlib.suppress(OSError, ValueError):
                if metric(scrape(f"{self.worker_url}/metrics"), "ripple_events_in_total") > 0:
                    return now
            time.sleep(0.2)
        raise BenchError(f"the worker read no event within {timeout:.0f} s (log: {self.data / 'logs'})")

    def _wait_drained(self, timeout: float, polls: int) -> float:
        """The time of the first of ``polls`` polls in a row, 0.5 s apart, where the sink's
        /healthz shows lag 0 on every topic and the attribution rows did not change."""
        deadline = time.monotonic() + timeout
        streak: list[tuple[float, float]] = []  # (time, attribution rows) of the quiet polls in a row
        inputs_read = 0.0  # since when the worker group has read every input topic to its end
        while time.monotonic() < deadline:
            self._children_alive()
            now = time.monotonic()
            quiet, rows = False, -1.0
            with contextlib.suppress(OSError, ValueError, KeyError, AttributeError):
                health = json.loads(get(f"{self.sink_url}/healthz"))
                lags = [*health["topics"].values(), *health["pipeline"].values()]
                quiet = bool(lags) and all(v["lag"] == 0 for v in lags)
                # customers' credits wait for their place in a chain: not drained while any do
                quiet = quiet and metric(scrape(f"{self.worker_url}/metrics"), "ripple_parked_referrers") == 0
                rows = metric(scrape(f"{self.sink_url}/metrics"), "ripple_sink_rows_total", table="attributions")
                if all(health["topics"][t]["lag"] == 0 for t in TOPICS):
                    inputs_read = inputs_read or now
                else:
                    inputs_read = 0.0
            if not quiet:
                streak = []
            elif streak and streak[-1][1] != rows:
                streak = [(now, rows)]
            else:
                streak.append((now, rows))
            if len(streak) >= polls:
                self.inputs_read = inputs_read or streak[0][0]
                return streak[0][0]
            time.sleep(max(0.0, 0.5 - (time.monotonic() - now)))
        raise BenchError(f"the pipeline did not drain within {timeout:.0f} s (logs: {self.data / 'logs'})")

    # 5 ------------------------------------------------------------------------------
    def latency(self) -> None:
        assert self.worker is not None
        rate = 0.5 * (self.fig.ripple_rate or 0.0)
        if rate <= 0:
            raise BenchError("latency: no end-to-end rate to take half of")
        self.fig.live_rate = rate
        histogram = "ripple_sink_visible_seconds"
        before = buckets(scrape(f"{self.sink_url}/metrics"), histogram)
        self.say(
            f"latency: live views, clicks and orders ({self.mix.views_per_order:.1f} views and "
            f"{self.mix.clicks_per_order:.1f} clicks per order, as in the program) at {rate:.0f} events/s "
            f"for {self.cfg.latency_seconds:.0f} s"
        )
        self.fig.live_orders = send_live(
            self.bootstrap,
            self.slugs,
            self.creators or ["bench-creator"],
            self.mix,
            rate,
            self.cfg.latency_seconds,
            self.cfg,
        )
        self._wait_drained(timeout=300.0, polls=3)
        after = buckets(scrape(f"{self.sink_url}/metrics"), histogram)
        self.fig.latency_samples = (after.get(float("inf"), 0.0)) - before.get(float("inf"), 0.0)
        self.fig.latency_p50 = quantile(before, after, 0.50)
        self.fig.latency_p99 = quantile(before, after, 0.99)
        self.fig.worker_peak_rss_bytes = peak_rss(self.worker.pid)
        p50, p99 = self.fig.latency_p50, self.fig.latency_p99
        self.say(
            f"latency: {self.fig.live_orders} orders sent, {self.fig.latency_samples:.0f} rows observed; "
            f"p50 {num(p50, 2)} s, p99 {num(p99, 2)} s"
        )

    # 6 ------------------------------------------------------------------------------
    def chdb_inserts(self) -> None:
        from sinks.clickhouse import ClickHouse
        from sinks.tables import JSON_TABLES

        columns = JSON_TABLES["attributions"]
        rows = list(attribution_rows(self.cfg.micro_rows))
        self.say(f"chdb: inserting {len(rows)} attribution rows in batches of {MICRO_BATCH}")
        ch = ClickHouse(f"chdb://{(self.data / 'chdb' / 'ch').resolve()}")
        try:
            ch.migrate()
            seconds = 0.0
            for start in range(0, len(rows), MICRO_BATCH):
                seconds += ch.insert("attributions", rows[start : start + MICRO_BATCH], columns)
        finally:
            ch.close()
        self.fig.micro_rows, self.fig.micro_seconds = len(rows), seconds
        self.say(f"chdb: {len(rows)} rows in {seconds:.2f} s")


def run(cfg: BenchConfig, data_dir: Path | None, json_path: Path, out: IO[str], say: Callable[[str], None]) -> int:
    """Run every phase, print the table to ``out`` and write the JSON report."""
    with tempfile.TemporaryDirectory(prefix="ripple-bench-") as tmp:
        data = data_dir or Path(tmp)
        data.mkdir(parents=True, exist_ok=True)
        fig = Bench(cfg, data, say).run()
    report = to_json(cfg, fig)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    print(table(cfg, fig), file=out)
    say(f"wrote {json_path}")
    return 0
