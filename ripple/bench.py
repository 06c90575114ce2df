"""``ripple bench``: the performance contract (SPEC §7), measured in one run on one broker.

The bench starts its own embedded broker, sends one simulated program to it and measures,
one phase after the other so that they do not share the CPUs:

1. load — the program's reference and input events (E = messages of views, clicks, orders
   and refunds) are sent to the broker;
2. the ceiling — aiokafka reads the E input messages and decodes them with orjson, in this
   process;
3. the plain Faust baseline — ``python -m ripple.bench_faust``: one agent that only decodes,
   one event at a time;
4. Ripple end to end — ``ripple sink`` and ``ripple worker`` as subprocesses read the
   backlog; from the worker's first event to every topic read to its end and the
   attributions in ClickHouse; then the worker's peak RSS and state per visitor, and the
   sink's insert rate;
5. latency — live views, clicks and orders in the program's mix at half the end-to-end
   rate; the sink's histogram of
   the time from an attribution row's event time to it being queryable gives p50 and p99
   (bucket resolution);
6. chDB inserts — attribution rows through ``sinks.clickhouse.ClickHouse.insert``, in this
   process.

Figures are reported, never asserted: targets are printed beside them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from ripple.broker import EmbeddedBroker, create_topics, free_port
from ripple.config import SECURITY_VARIABLES
from ripple.simulate import PRODUCER_TUNING, Dataset, SimConfig, generate, h, parse_inject, produce
from streams.kafka import PLAINTEXT, KafkaSecurity, producer_config
from streams.partitioner import partition_of

ROOT = Path(__file__).resolve().parent.parent
TOPICS = ("views", "clicks", "orders", "refunds")
DAY_MS = 86_400_000
FULL_VIEWS = 120_000
QUICK_VIEWS = 6_000
MICRO_BATCH = 50_000
FAUST_TIMEOUT = 300.0
#: the targets printed beside the figures (SPEC §7); never checked
TARGET_EVENTS_PER_S = 50_000
TARGET_P99_S = 2.0
TARGET_STATE_BYTES = 300
TARGET_SINK_ROWS_PER_S = 200_000


class BenchError(RuntimeError):
    """A phase could not be measured. The message is one line for the user."""


@dataclass(frozen=True)
class BenchConfig:
    quick: bool = False
    views: int = FULL_VIEWS
    partitions: int = 8
    latency_seconds: float = 20.0
    micro_rows: int = 200_000
    seed: int = 1
    days: float = 14.0
    inject_count: int = 2
    profile: Path | None = None  # py-spy profiles of the worker and the sink go here
    input_batch: int = 1  # events per input message (> 1: JSON arrays per partition, as the collector sends)

    @classmethod
    def make(
        cls, quick: bool, views: int | None, partitions: int, profile: Path | None = None, input_batch: int = 1
    ) -> BenchConfig:
        return cls(
            quick=quick,
            profile=profile,
            input_batch=input_batch,
            views=views if views is not None else QUICK_VIEWS if quick else FULL_VIEWS,
            partitions=partitions,
            latency_seconds=5.0 if quick else 20.0,
            micro_rows=50_000 if quick else 200_000,
        )


@dataclass
class Figures:
    input_events: int = 0
    reference_messages: int = 0
    load_seconds: float = 0.0
    raw_events: int = 0
    raw_seconds: float = 0.0
    faust_events: int = 0
    faust_seconds: float = 0.0
    ripple_seconds: float = 0.0
    ripple_startup_seconds: float = 0.0  # from starting the processes to the worker's first event
    ripple_inputs_seconds: float = 0.0  # from the worker's first event to every input topic read
    worker_peak_rss_bytes: int | None = None
    state_keys: float = 0.0
    state_bytes: float = 0.0
    sink_rows: float = 0.0
    sink_insert_seconds: float = 0.0
    attribution_rows: float = 0.0
    late_events: float = 0.0  # the worker's late events in the end-to-end phase (its input is on time)
    idle_timeouts: float = 0.0  # times a task went on without a lagging input (after 60 x max_task_idle)
    live_rate: float = 0.0  # events per second sent in the latency phase
    live_orders: int = 0
    latency_samples: float = 0.0
    latency_p50: float | None = None
    latency_p99: float | None = None
    micro_rows: int = 0
    micro_seconds: float = 0.0

    @staticmethod
    def rate(n: float, seconds: float) -> float | None:
        return n / seconds if seconds > 0 and n > 0 else None

    @property
    def raw_rate(self) -> float | None:
        return self.rate(self.raw_events, self.raw_seconds)

    @property
    def faust_rate(self) -> float | None:
        return self.rate(self.faust_events, self.faust_seconds)

    @property
    def ripple_rate(self) -> float | None:
        return self.rate(self.input_events, self.ripple_seconds)

    @property
    def state_per_visitor(self) -> float | None:
        return self.state_bytes / self.state_keys if self.state_keys > 0 else None

    @property
    def sink_rate(self) -> float | None:
        return self.rate(self.sink_rows, self.sink_insert_seconds)

    @property
    def micro_rate(self) -> float | None:
        return self.rate(self.micro_rows, self.micro_seconds)


# -- small helpers ---------------------------------------------------------------------
def _get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - a loopback address we started
        body: bytes = resp.read()
        return body


def scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    """The samples of a Prometheus text page: (name, labels, value)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = _get(url).decode()
    return [
        (s.name, dict(s.labels), float(s.value)) for fam in text_string_to_metric_families(text) for s in fam.samples
    ]


def metric(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items()))


def buckets(samples: list[tuple[str, dict[str, str], float]], name: str) -> dict[float, float]:
    """Cumulative counts of a histogram by upper bound (``+Inf`` as ``inf``)."""
    out: dict[float, float] = {}
    for n, lab, v in samples:
        if n == f"{name}_bucket":
            le = float(lab["le"])
            out[le] = out.get(le, 0.0) + v
    return out


def quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """The ``q`` quantile of the observations between two readings of a histogram, linearly
    interpolated within its bucket (bucket resolution). None without observations; an
    observation beyond the last finite bound counts as that bound."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    target = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, cum in zip(bounds, counts, strict=True):
        if cum >= target and cum > below:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (target - below) / (cum - below)
        lower, below = bound, cum
    return lower


def peak_rss(pid: int) -> int | None:
    """``VmHWM`` of a live process, in bytes (Linux)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _child_env(partitions: int) -> dict[str, str]:
    env = {**os.environ, "RIPPLE_PARTITIONS": str(partitions)}  # Ripple's defaults otherwise
    for name in ("RIPPLE_WEB_PORT", "RIPPLE_BOOTSTRAP", "RIPPLE_CLICKHOUSE", "RIPPLE_DATA_DIR"):
        env.pop(name, None)  # given as flags
    for name in SECURITY_VARIABLES:
        env.pop(name, None)  # the bench's own embedded broker speaks PLAINTEXT on loopback
    return env


class Child:
    """A subprocess with its log file; stopped with SIGTERM, killed if it lingers."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as fh:
            self.proc = subprocess.Popen(
                argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT, env=env
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check(self) -> None:
        if self.proc.poll() is not None:
            print(_tail(self.log), file=sys.stderr)
            raise BenchError(f"{self.name} exited with code {self.proc.returncode} (log: {self.log})")

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Profiler:
    """``py-spy record`` attached to a running process; collapsed stacks, one line per stack."""

    def __init__(self, pid: int, out: Path, log: Path) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(exe).exists():
            raise BenchError("--profile needs py-spy: pip install py-spy (it is in the [dev] extra)")
        self.out = out
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = [exe, "record", "--pid", str(pid), "--format", "raw", "--rate", "250", "--nonblocking"]
        with log.open("ab") as fh:
            self.proc = subprocess.Popen([*argv, "--output", str(out)], stdout=fh, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def hot_spots(collapsed: str, top: int = 15) -> list[tuple[str, float, float]]:
    """(function, share of samples inside it, share of samples in it as the innermost frame),
    the ``top`` functions by inclusive share, from py-spy's collapsed stacks."""
    total = 0
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        for name in set(frames[1:]):  # the first frame is the process or thread
            inclusive[name] = inclusive.get(name, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    if not total:
        return []
    ranked = sorted(inclusive.items(), key=lambda kv: -kv[1])
    # the entry points hold every sample: skip frames present in (almost) all of them
    ranked = [(name, n) for name, n in ranked if n < 0.97 * total][:top]
    return [(name, n / total, own.get(name, 0) / total) for name, n in ranked]


def profile_report(path: Path, title: str, top: int = 15) -> str:
    try:
        spots = hot_spots(path.read_text(errors="replace"), top)
    except OSError:
        return f"{title}: no profile at {path}"
    lines = [f"{title} ({path}): share of samples, inclusive / own"]
    lines += [f"  {inc * 100:5.1f} % {own_ * 100:5.1f} %  {name}" for name, inc, own_ in spots]
    return "\n".join(lines)


# -- the run -------------------------------------------------------------------------
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
        self.slugs = _link_slugs(ds)
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
            n, seconds = runner.run(_raw_consume(self.bootstrap, self.fig.input_events))
        self.fig.raw_events, self.fig.raw_seconds = n, seconds
        self.say(f"ceiling: aiokafka read and decoded {n} events in {seconds:.2f} s")

    # 3 ------------------------------------------------------------------------------
    def faust_baseline(self) -> None:
        log = self.data / "logs" / "faust-baseline.log"
        argv = [
            sys.executable,
            "-m",
            "ripple.bench_faust",
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
            print(_tail(log), file=sys.stderr)
            raise BenchError(f"plain Faust baseline: exit code {done.returncode}, no result (log: {log})") from None
        self.say(f"faust: one agent decoded {self.fig.faust_events} events in {self.fig.faust_seconds:.2f} s")

    # 4 ------------------------------------------------------------------------------
    def ripple_end_to_end(self) -> None:
        env = _child_env(self.cfg.partitions)
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
                health = json.loads(_get(f"{self.sink_url}/healthz"))
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
        self.fig.live_orders = _send_live(
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
            f"p50 {_num(p50, 2)} s, p99 {_num(p99, 2)} s"
        )

    # 6 ------------------------------------------------------------------------------
    def chdb_inserts(self) -> None:
        from sinks.clickhouse import ClickHouse
        from sinks.tables import JSON_TABLES

        columns = JSON_TABLES["attributions"]
        rows = list(_attribution_rows(self.cfg.micro_rows))
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


def _link_slugs(ds: Dataset) -> list[str]:
    """Referral-link slugs of creators: active, no expiry, no discount."""
    slugs = []
    for m in ds.reference:
        e = m.event or {}
        if m.topic == "codes" and e.get("active") and e.get("discount_pct") is None and "expires_ts" not in e:
            slugs.append(str(e["code"]))
    return slugs or ["jane"]


async def _raw_consume(
    bootstrap: str, expect: int, timeout: float = 300.0, security: KafkaSecurity = PLAINTEXT
) -> tuple[int, float]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    logging.getLogger("aiokafka").setLevel(logging.WARNING)  # not its subscription notices

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        **security.aiokafka(),
    )
    await consumer.start()
    try:
        await consumer.topics()  # loads the metadata of every topic
        tps = [TopicPartition(t, p) for t in TOPICS for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        n, first = 0, 0.0
        deadline = time.monotonic() + timeout
        while n < expect:
            if time.monotonic() > deadline:
                raise BenchError(f"ceiling: read {n} of {expect} events within {timeout:.0f} s")
            # the clock starts with the fetch that brings the first records: one batch can hold
            # the whole backlog of a quick run, so starting it at the first record would leave
            # the fetch out
            fetch = time.perf_counter()
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for records in batches.values():
                if records and not first:
                    first = fetch
                for record in records:
                    value = orjson.loads(record.value)
                    n += len(value) if isinstance(value, list) else 1
        return n, time.perf_counter() - first
    finally:
        await consumer.stop()


@dataclass(frozen=True)
class Mix:
    """The program's shares of input events per order, so that the live phase sends the
    traffic the end-to-end rate was measured on."""

    views_per_order: float = 0.0
    clicks_per_order: float = 1.0

    @classmethod
    def of(cls, events: list[Any]) -> Mix:
        counts = {t: 0 for t in TOPICS}
        for m in events:
            counts[m.topic] = counts.get(m.topic, 0) + 1
        orders = max(1, counts["orders"])
        return cls(counts["views"] / orders, max(1.0, counts["clicks"] / orders))


def _whole(owed: float) -> tuple[int, float]:
    whole = int(owed)
    return whole, owed - whole


def _live_events(slugs: list[str], creators: list[str], mix: Mix) -> Iterator[tuple[str, str, bytes]]:
    """Endless (topic, key, value) in the program's mix: each order's visitor clicked a
    creator's link 61 s before ordering (so the click-injection rule leaves it alone); other
    visitors only view content or click. Event times are the current time."""
    run = f"bench{int(time.time())}"
    agents = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"
    n = 0
    owed_views = owed_clicks = 0.0
    while True:
        n += 1
        now = int(time.time() * 1000)
        visitor = f"{run}-vis-{n:07d}"
        customer = f"{run}-cus-{n:07d}"
        # the program's shares are fractions per order: carry the remainder to the next one
        views, owed_views = _whole(owed_views + mix.views_per_order)
        clicks, owed_clicks = _whole(owed_clicks + mix.clicks_per_order - 1)
        for i in range(views):
            viewer = f"{run}-viewer-{n:07d}-{i}"
            view = {
                "event_id": f"{run}-v-{n:07d}-{i}",
                "ts": now,
                "creator_id": creators[n % len(creators)],
                "content_id": f"post-{n % 50}",
                "visitor_id": viewer,
                "kind": "video_view",
            }
            yield "views", viewer, orjson.dumps(view)
        for i in range(clicks):
            browser = f"{run}-browser-{n:07d}-{i}"
            click = {
                "event_id": f"{run}-b-{n:07d}-{i}",
                "ts": now,
                "visitor_id": browser,
                "ref": slugs[(n + 1) % len(slugs)],
                "ip_hash": h(run, "ip", browser),
                "user_agent": agents,
            }
            yield "clicks", browser, orjson.dumps(click)
        click = {
            "event_id": f"{run}-c-{n:07d}",
            "ts": now - 61_000,
            "visitor_id": visitor,
            "ref": slugs[n % len(slugs)],
            "utm_source": "instagram",
            "utm_medium": "social",
            "ip_hash": h(run, "ip", visitor),
            "user_agent": agents,
        }
        yield "clicks", visitor, orjson.dumps(click)
        order = {
            "event_id": f"{run}-o-{n:07d}",
            "ts": now,
            "order_id": f"{run}-ord-{n:07d}",
            "visitor_id": visitor,
            "customer_id": customer,
            "amount_minor": 4999,
            "currency": "USD",
            "is_new_customer": True,
            "email_hash": h(run, "email", customer),
            "payment_hash": h(run, "pay", customer),
            "device_id": f"{run}-dev-{visitor}",
            "ip_hash": h(run, "ip", visitor),
            "items": [{"sku": "SKU-1", "qty": 1, "price_minor": 4999}],
        }
        yield "orders", visitor, orjson.dumps(order)


class _LiveSender:
    """Produces live events one per message, or (``batch`` > 1) as a collector does: JSON
    arrays per topic partition, sent when ``batch`` events are waiting or 50 ms after the
    first of them."""

    LINGER_S = 0.05

    def __init__(self, bootstrap: str, batch: int, partitions: int) -> None:
        from confluent_kafka import Producer

        self.producer = Producer(producer_config(bootstrap, tuning={**PRODUCER_TUNING, "linger.ms": 5}))
        self.batch = batch
        self.partitions = partitions
        self.waiting: dict[tuple[str, int], tuple[float, bytes, list[bytes]]] = {}  # since, first key, values

    def add(self, topic: str, key: str, value: bytes) -> None:
        if self.batch <= 1:
            self._produce(topic, key.encode(), value, None)
            return
        partition = partition_of(key, self.partitions)
        values = self.waiting.setdefault((topic, partition), (time.monotonic(), key.encode(), []))[2]
        values.append(value)
        if len(values) >= self.batch:
            self._send(topic, partition)

    def tick(self, final: bool = False) -> None:
        now = time.monotonic()
        for (topic, partition), (since, _, _) in list(self.waiting.items()):
            if final or now - since >= self.LINGER_S:
                self._send(topic, partition)
        self.producer.poll(0)

    def _send(self, topic: str, partition: int) -> None:
        _, key, values = self.waiting.pop((topic, partition))
        self._produce(topic, key, b"[" + b",".join(values) + b"]", partition)

    def _produce(self, topic: str, key: bytes | None, value: bytes, partition: int | None) -> None:
        while True:
            try:
                if partition is None:
                    self.producer.produce(topic, key=key, value=value)
                else:
                    self.producer.produce(topic, key=key, value=value, partition=partition)
                return
            except BufferError:
                self.producer.poll(0.05)

    def flush(self) -> int:
        self.tick(final=True)
        remaining: int = self.producer.flush(30)
        return remaining


def _send_live(
    bootstrap: str, slugs: list[str], creators: list[str], mix: Mix, rate: float, seconds: float, cfg: BenchConfig
) -> int:
    """Send the program's mix of events at ``rate`` events per second for ``seconds``, in the
    input shape of the run (``cfg.input_batch``); the orders sent."""
    sender = _LiveSender(bootstrap, cfg.input_batch, cfg.partitions)
    events = _live_events(slugs, creators, mix)
    sent = orders = 0
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        due = int(elapsed * rate) + 1
        while sent < due:
            topic, key, value = next(events)
            sender.add(topic, key, value)
            sent += 1
            orders += topic == "orders"
        sender.tick()
        time.sleep(0.005)
    remaining = sender.flush()
    if remaining:
        raise BenchError(f"latency: {remaining} live messages were not delivered")
    return orders


def _attribution_rows(n: int) -> Iterator[tuple[Any, ...]]:
    from streams.models import MODELS

    now = int(time.time() * 1000)
    for i in range(n):
        order, model = divmod(i, len(MODELS))
        referrer = f"bench-cr-{order % 97}"
        yield (
            f"bench-ord-{order:08d}",
            MODELS[model],
            referrer,
            "creator",
            referrer,
            "click",
            f"bench-c-{order:08d}",
            1.0 if model == 0 else 0.5,
            4999,
            500,
            "USD",
            3_600_000,
            "ok",
            [],
            0,
            1,
            now - order,
        )


# -- the report ------------------------------------------------------------------------
def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}".replace(",", " ")


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a is not None and b else "n/a"


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def table(cfg: BenchConfig, fig: Figures) -> str:
    mode = "quick" if cfg.quick else "full"
    py = ".".join(platform.python_version_tuple()[:2])
    header = (
        f"ripple bench ({mode}) — {_num(fig.input_events)} input events, {cfg.partitions} partitions, "
        f"1 worker process, Python {py}, {os.cpu_count()} CPUs, "
        f"{'one event per message' if cfg.input_batch <= 1 else f'input in arrays of up to {cfg.input_batch} events'}"
    )
    rss = fig.worker_peak_rss_bytes / 2**20 if fig.worker_peak_rss_bytes else None
    p50, p99 = fig.latency_p50, fig.latency_p99
    rows = [
        ("raw aiokafka consume + decode (ceiling)", _num(fig.raw_rate), "ev/s", ""),
        ("plain Faust agent, one event at a time", _num(fig.faust_rate), "ev/s", ""),
        (
            "Ripple end to end (Kafka → ClickHouse)",
            _num(fig.ripple_rate),
            "ev/s",
            f"≥ {_num(TARGET_EVENTS_PER_S)}   ({_ratio(fig.ripple_rate, fig.raw_rate)} ceiling, "
            f"{_ratio(fig.ripple_rate, fig.faust_rate)} Faust)",
        ),
        (
            "  inputs all read / everything queryable after",
            f"{_num(fig.ripple_inputs_seconds, 1)} / {_num(fig.ripple_seconds, 1)}",
            "s",
            "(the rest: customers' chain places settling, the sink's last writes)",
        ),
        (
            "  late events / input waits timed out",
            f"{_num(fig.late_events)} / {_num(fig.idle_timeouts)}",
            "",
            "0 / 0   (default max_lateness 10 min: the program is on time per partition)",
        ),
        (
            "order → queryable p50 / p99 at 50 %",
            f"{_num(p50, 2)} / {_num(p99, 2)}",
            "s",
            f"≤ {TARGET_P99_S:g} s p99   (bucket resolution, {_num(fig.latency_samples)} rows)",
        ),
        ("worker peak RSS", _num(rss), "MiB", ""),
        ("state per active visitor", _num(fig.state_per_visitor), "B", f"≤ {TARGET_STATE_BYTES} B"),
        (
            "sink rows while inserting (pipeline)",
            _num(fig.sink_rate),
            "rows/s",
            f"≥ {_num(TARGET_SINK_ROWS_PER_S)}",
        ),
        (
            f"sink inserts into chDB ({_num(MICRO_BATCH)}-row batches)",
            _num(fig.micro_rate),
            "rows/s",
            f"≥ {_num(TARGET_SINK_ROWS_PER_S)}",
        ),
    ]
    width = max(len(r[0]) for r in rows) + 2
    vwidth = max(len(r[1]) for r in rows)
    lines = [header, f"{'measure':<{width}}{'value':>{vwidth}} {'':<6}  target"]
    for name, value, unit, target in rows:
        lines.append(f"{name:<{width}}{value:>{vwidth}} {unit:<6}  {target}".rstrip())
    return "\n".join(lines)


def to_json(cfg: BenchConfig, fig: Figures) -> dict[str, Any]:
    def fmt(value: float | None, unit: str, **extra: Any) -> dict[str, Any]:
        return {"value": value, "unit": unit, **extra}

    return {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": {
            **asdict(cfg),
            "profile": str(cfg.profile) if cfg.profile else None,
            "worker_processes": 1,
            "input_events": fig.input_events,
        },
        "figures": {
            "raw_consume_decode": fmt(fig.raw_rate, "events/s", events=fig.raw_events, seconds=fig.raw_seconds),
            "faust_baseline": fmt(fig.faust_rate, "events/s", events=fig.faust_events, seconds=fig.faust_seconds),
            "ripple_end_to_end": fmt(
                fig.ripple_rate,
                "events/s",
                events=fig.input_events,
                seconds=fig.ripple_seconds,
                startup_seconds=fig.ripple_startup_seconds,
                inputs_read_seconds=fig.ripple_inputs_seconds,
                target=TARGET_EVENTS_PER_S,
                share_of_ceiling=fig.ripple_rate / fig.raw_rate if fig.ripple_rate and fig.raw_rate else None,
                share_of_faust=fig.ripple_rate / fig.faust_rate if fig.ripple_rate and fig.faust_rate else None,
            ),
            "late_events": fmt(fig.late_events, "events", idle_timeouts=fig.idle_timeouts),
            "latency_p50": fmt(fig.latency_p50, "s", resolution="histogram bucket"),
            "latency_p99": fmt(fig.latency_p99, "s", resolution="histogram bucket", target=TARGET_P99_S),
            "latency_phase": {
                "rate": fig.live_rate,
                "rate_unit": "events/s",
                "seconds": cfg.latency_seconds,
                "orders": fig.live_orders,
                "rows_observed": fig.latency_samples,
            },
            "worker_peak_rss": fmt(fig.worker_peak_rss_bytes, "bytes"),
            "state_per_visitor": fmt(
                fig.state_per_visitor,
                "bytes",
                keys=fig.state_keys,
                state_bytes=fig.state_bytes,
                target=TARGET_STATE_BYTES,
            ),
            "sink_insert_rate": fmt(
                fig.sink_rate,
                "rows/s",
                rows=fig.sink_rows,
                insert_seconds=fig.sink_insert_seconds,
                attribution_rows=fig.attribution_rows,
                target=TARGET_SINK_ROWS_PER_S,
            ),
            "chdb_insert_rate": fmt(
                fig.micro_rate,
                "rows/s",
                rows=fig.micro_rows,
                seconds=fig.micro_seconds,
                batch_rows=MICRO_BATCH,
                target=TARGET_SINK_ROWS_PER_S,
            ),
        },
    }


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
