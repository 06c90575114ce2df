"""Helpers for the tests that run broker, workers and sink as separate processes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ripple.broker import EmbeddedBroker, create_topics, free_port
from ripple.simulator import SimConfig, generate, produce
from sinks.clickhouse import ClickHouse

ROOT = Path(__file__).resolve().parent.parent
#: Ripple's defaults: no setting inherited from the shell; four partitions keep the runs short
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("RIPPLE_")}, "RIPPLE_PARTITIONS": "4"}


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def spawn(*args: str, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "ripple", *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**ENV, **(env or {})},
        )


def assert_paid_as_the_truth(ch: ClickHouse, truth: dict[str, Any], context: str = "") -> None:
    """Every last-click credit equals the ground truth, and the ledger pays what was attributed."""
    rows = ch.query(
        "SELECT order_id, referrer_id FROM ripple.attributions FINAL WHERE model = 'last_click' AND credit > 0"
    )
    assert dict(rows) == {o: v["referrer_id"] for o, v in truth["last_click"].items() if v}, context
    commissions = dict(
        ch.query(
            "SELECT order_id, sum(commission_minor) FROM ripple.commission_ledger FINAL WHERE kind = 'commission' "
            "GROUP BY order_id"
        )
    )
    attributed = dict(
        ch.query(
            "SELECT order_id, sum(commission_minor) FROM ripple.attributions FINAL WHERE model = 'last_click' "
            "AND credit > 0 GROUP BY order_id"
        )
    )
    # orders restated to nobody (a flood verdict) keep a commission entry of 0
    assert {o: c for o, c in commissions.items() if c} == {o: c for o, c in attributed.items() if c}, context


def eventually(predicate: Any, timeout: float, interval: float = 0.5) -> bool:
    """Poll until ``predicate()`` is true (True) or the time is up (False); a web server not
    up yet counts as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except OSError:
            pass  # the web server is not up yet
        time.sleep(interval)
    return False


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    """:func:`eventually`, or an AssertionError that says what did not happen."""
    if not eventually(predicate, timeout):
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def sink_metrics(web_port: int, timeout: float = 10) -> dict[str, float]:
    """The sink's ``ripple_sink_*`` metrics from /metrics, summed over their labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/metrics", timeout=timeout) as resp:
        lines = resp.read().decode().splitlines()
    out: dict[str, float] = {}
    for line in lines:
        if line.startswith("ripple_sink_"):
            name, value = line.rsplit(" ", 1)
            base = name.split("{", 1)[0]
            out[base] = out.get(base, 0.0) + float(value)
    return out


def pipeline_lag(web_port: int) -> int:
    """Messages not yet processed and written anywhere (the workers' inputs and their own
    topics, the sink's), from the sink's /healthz."""
    health = get(f"http://127.0.0.1:{web_port}/healthz")
    return sum(v["lag"] for part in ("topics", "pipeline") for v in health.get(part, {}).values())


def wait_drained(web_port: int, want_attributed: int, timeout: float) -> str:
    """Wait until ClickHouse holds ``want_attributed`` credited orders and nothing waits
    anywhere, three checks in a row: "" then, or what was seen last."""
    deadline = time.monotonic() + timeout
    quiet, seen = 0, "nothing (the sink did not answer)"
    while time.monotonic() < deadline:
        try:
            totals, lag = get(f"http://127.0.0.1:{web_port}/api/totals"), pipeline_lag(web_port)
        except OSError:
            totals, lag = {}, -1
        quiet = quiet + 1 if totals.get("attributed", 0) >= want_attributed and lag == 0 else 0
        if quiet >= 3:
            return ""
        seen = f"{totals}, lag {lag}, want {want_attributed} attributed"
        time.sleep(1)
    return f"not drained after {timeout} s: {seen}"


def kill_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """The end of a test's stack: whatever still runs is killed."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def spawn_service(
    kind: str, bootstrap: str, data_dir: Path, web_port: int, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``ripple sink`` or ``ripple worker`` on ``bootstrap``, with its data dir and web port."""
    args = ("--bootstrap", bootstrap, "--data-dir", str(data_dir), "--web-port", str(web_port))
    return spawn(kind, *args, log=log, env=env)


@dataclass
class Stack:
    """An embedded broker with Ripple's topics, and the sinks and workers started on it."""

    bootstrap: str
    base: Path
    web: int = 0  # the (last started) sink's web port
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def sink(self, data_dir: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.web = free_port()
        data_dir = data_dir or self.base / "sink"
        proc = spawn_service("sink", self.bootstrap, data_dir, self.web, self.base / "sink.log", env=env)
        self.procs.append(proc)
        return proc

    def worker(self, name: str = "w", port: int | None = None, log: str = "worker.log") -> subprocess.Popen[bytes]:
        proc = spawn_service("worker", self.bootstrap, self.base / name, port or free_port(), self.base / log)
        self.procs.append(proc)
        return proc

    def first_third(self, seed: int, views: int) -> tuple[dict[str, Any], list[Any]]:
        """Send a simulated program's reference data and the first third of its events;
        return, once credits reach ClickHouse, its ground truth and the events still to send."""
        ds = generate(SimConfig(seed=seed, start_ms=1_767_225_600_000, views=views))
        produce(ds.reference, self.bootstrap)
        third = len(ds.events) // 3
        produce(ds.events[:third], self.bootstrap)
        url = f"http://127.0.0.1:{self.web}/api/totals"
        wait_for(lambda: get(url).get("attributed", 0) > 10, 120, "first credits")
        return ds.truth, ds.events[third:]

    def stop(self, timeout: float = 60) -> None:
        """A clean stop of every process still running: SIGTERM (they flush and commit), then wait."""
        running = [p for p in self.procs if p.poll() is None]
        for p in running:
            p.send_signal(signal.SIGTERM)
        for p in running:
            p.wait(timeout=timeout)


@contextlib.contextmanager
def running_stack(base: Path, partitions: int = 4) -> Iterator[Stack]:
    """A broker for one test module; whatever still runs at the end is killed."""
    broker = EmbeddedBroker(base / "broker.log")
    broker.start()
    stack = Stack(broker.bootstrap, base)
    try:
        create_topics(broker.bootstrap, partitions)
        yield stack
    finally:
        kill_all(stack.procs)
        broker.stop()


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("headless Chromium is needed: apt-get install chromium")
    return path


def dump_dom(url: str, budget_ms: int, *options: str) -> str:
    """The DOM of the page headless Chromium ends on after opening ``url`` and running its
    scripts for ``budget_ms`` of virtual time."""
    done = subprocess.run(
        [
            chromium(),
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            *options,
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
