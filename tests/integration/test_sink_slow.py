"""ClickHouse slows down mid-run: the sink falls behind without reading ahead, and catches up.

With the embedded ClickHouse the database runs inside the sink's process, so a slow
ClickHouse is a starved sink: the sink is put in a CPU cgroup limited to a twentieth of one
CPU while the rest of a program is produced. Its inserts then take many times longer. The
sink must read only as fast as it writes (the backlog stays in Kafka as consumer lag; its
pending rows stay bounded), show the slow inserts on /metrics
(``ripple_sink_insert_seconds``, what the dashboards plot), and once the limit is lifted
catch up by itself with results equal to the ground truth.

Needs root (a cgroup v1 ``cpu`` hierarchy or cgroup v2 ``cpu.max``), as the CI runs;
without it the test fails with the reason.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from stack import assert_paid_as_the_truth, running_stack, sink_metrics, wait_drained

from ripple.simulator import produce
from ripple.web import OffsetMonitor
from sinks.clickhouse import ClickHouse
from sinks.runner import SINK_GROUP, SINK_TOPICS

pytestmark = pytest.mark.integration

BATCH_ROWS = 500  # the sink's insert batch: many small inserts, each slowed down
SHARE = 0.03  # of one CPU while ClickHouse is slow
SLOW_S = 25


class CpuLimit:
    """A cgroup that holds processes to a share of one CPU (v1 ``cpu`` or v2 ``cpu.max``)."""

    PERIOD_US = 100_000

    def __init__(self, name: str) -> None:
        v2 = Path("/sys/fs/cgroup/cgroup.controllers")
        self.v2 = v2.exists()
        root = Path("/sys/fs/cgroup") if self.v2 else Path("/sys/fs/cgroup/cpu")
        if not self.v2 and not (root / "cpu.cfs_quota_us").exists():
            pytest.fail("no cgroup cpu controller at /sys/fs/cgroup/cpu or cgroup v2 at /sys/fs/cgroup")
        self.parent = root
        self.path = root / name
        try:
            if self.v2 and "cpu" not in (root / "cgroup.subtree_control").read_text().split():
                (root / "cgroup.subtree_control").write_text("+cpu")
            self.path.mkdir(exist_ok=True)
        except OSError as exc:
            pytest.fail(f"cannot create a cgroup to slow the sink down (needs root): {exc}")

    def limit(self, share: float | None) -> None:
        quota = -1 if share is None else int(share * self.PERIOD_US)
        if self.v2:
            value = f"{'max' if quota < 0 else quota} {self.PERIOD_US}"
            (self.path / "cpu.max").write_text(value)
        else:
            (self.path / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def remove(self) -> None:
        self.limit(None)
        for pid in (self.path / "cgroup.procs").read_text().split():
            try:
                (self.parent / "cgroup.procs").write_text(pid)
            except OSError:
                pass  # gone meanwhile
        self.path.rmdir()


@dataclass
class Slowdown:
    ch: ClickHouse
    truth: dict[str, object]
    before: dict[str, float]
    during: list[tuple[dict[str, float], int]]  # /metrics and the sink's lag while slow
    after: dict[str, float]
    total_rows: float
    problem: str


@pytest.fixture(scope="module")
def slowdown(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slowdown]:
    base = tmp_path_factory.mktemp("slow")
    cgroup = CpuLimit(f"ripple-slow-sink-{os.getpid()}")
    try:
        with running_stack(base) as stack:
            sink = stack.sink(env={"RIPPLE_SINK_BATCH_ROWS": str(BATCH_ROWS)})
            web = stack.web
            stack.worker()
            truth, rest = stack.first_third(seed=43, views=14000)
            before = sink_metrics(web)
            cgroup.add(sink.pid)
            cgroup.limit(SHARE)  # from here every insert is slow
            produce(rest, stack.bootstrap)
            during = []
            # the sink's lag as its consumer group's commits show it (asked of the broker: the
            # starved sink answers its own /healthz slowly)
            monitor = OffsetMonitor(stack.bootstrap, SINK_GROUP, SINK_TOPICS)
            slow_until = time.monotonic() + SLOW_S
            while time.monotonic() < slow_until:
                time.sleep(1)
                during.append((sink_metrics(web, timeout=60), sum(v["lag"] for v in monitor.lag().values())))
            monitor.close()
            cgroup.limit(None)  # fast again: the sink must catch up by itself
            want = sum(1 for v in truth["last_click"].values() if v)
            problem = wait_drained(web, want, 180)
            after = sink_metrics(web)
            stack.stop()
            ch = ClickHouse(f"chdb://{base / 'sink' / 'clickhouse'}")
            yield Slowdown(ch, truth, before, during, after, after["ripple_sink_rows_total"], problem)
            ch.close()
    finally:
        cgroup.remove()


def test_a_slow_clickhouse_makes_the_sink_fall_behind_without_reading_ahead(slowdown: Slowdown) -> None:
    during = slowdown.during
    assert during, "no /metrics sample while ClickHouse was slow"
    # the backlog waits in Kafka, not in the sink: lag while slow, and the sink holds at most
    # one batch plus what one read brings, a small part of the rows the run writes
    lags = [lag for _, lag in during]
    assert max(lags) > 100 and lags.index(max(lags)) > 0, lags  # it grew
    most = max(m["ripple_sink_pending_rows"] for m, _ in during)
    assert most < slowdown.total_rows / 4, (most, slowdown.total_rows)
    # the inserts it made meanwhile were slower, and /metrics says so
    first, last = during[0][0], during[-1][0]
    inserts = last["ripple_sink_insert_seconds_count"] - slowdown.before["ripple_sink_insert_seconds_count"]
    seconds = last["ripple_sink_insert_seconds_sum"] - slowdown.before["ripple_sink_insert_seconds_sum"]
    fast = slowdown.before["ripple_sink_insert_seconds_sum"] / slowdown.before["ripple_sink_insert_seconds_count"]
    assert inserts > 0, (first, last)
    assert seconds / inserts > 3 * fast, (seconds / inserts, fast)
    assert slowdown.during[-1][0]["ripple_sink_failures_total"] == slowdown.before["ripple_sink_failures_total"]


def test_the_sink_catches_up_by_itself_and_loses_nothing(slowdown: Slowdown) -> None:
    assert not slowdown.problem, slowdown.problem
    assert_paid_as_the_truth(slowdown.ch, slowdown.truth)
    (dead,) = slowdown.ch.query("SELECT count() FROM ripple.dead_letters FINAL")[0]
    assert dead == slowdown.truth["malformed"]
