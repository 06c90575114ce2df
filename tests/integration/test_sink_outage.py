"""ClickHouse refuses writes mid-run: the sink holds back, loses nothing, and recovers by itself.

The sink's embedded ClickHouse keeps its data on a small tmpfs; filling that file system
makes every insert fail for real (``NOT_ENOUGH_SPACE``), as a full or read-only volume of
a ClickHouse server would. While it is full the sink must stop consuming (its buffer stays
bounded), say so on /metrics (``ripple_sink_backpressure`` 1, failures counted — what the
``RippleSinkBackpressure`` and ``RippleSinkFailing`` alerts read), and once space is
freed it must write everything, with results equal to the ground truth.

Mounting a tmpfs needs root, as the CI runs; without it the test fails with the reason.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from stack import assert_paid_as_the_truth, running_stack, sink_metrics, wait_drained

from ripple.simulator import produce
from sinks.clickhouse import ClickHouse

pytestmark = pytest.mark.integration

TMPFS_MB = 256
BATCH_ROWS = 2000  # the sink's insert batch


@dataclass
class Outage:
    ch: ClickHouse
    truth: dict[str, object]
    during: list[dict[str, float]]  # /metrics samples while the disk was full
    after: dict[str, float]
    problem: str


def fill(path: Path) -> None:
    """Write zeros until the file system has no space left."""
    chunk = b"\0" * (1 << 20)
    with path.open("wb") as fh:
        try:
            while True:
                fh.write(chunk)
                fh.flush()
        except OSError:
            pass


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outage]:
    base = tmp_path_factory.mktemp("outage")
    volume = base / "volume"
    volume.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", str(volume)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the sink (needs root): {mounted.stderr.strip()}")
    filler = volume / "filler"
    try:
        with running_stack(base) as stack:
            stack.sink(data_dir=volume, env={"RIPPLE_SINK_BATCH_ROWS": str(BATCH_ROWS)})
            web = stack.web
            stack.worker()
            truth, rest = stack.first_third(seed=41, views=4000)
            fill(filler)  # from here every insert fails
            produce(rest, stack.bootstrap)
            during = []
            for _ in range(20):
                time.sleep(1)
                during.append(sink_metrics(web))
            filler.unlink()  # space again: the sink must find out by itself
            want = sum(1 for v in truth["last_click"].values() if v)
            problem = wait_drained(web, want, 180)
            after = sink_metrics(web)
            stack.stop()
            ch = ClickHouse(f"chdb://{volume / 'clickhouse'}")
            yield Outage(ch, truth, during, after, problem)
            ch.close()
    finally:
        subprocess.run(["umount", "-l", str(volume)], check=False)


def test_the_sink_holds_back_while_clickhouse_refuses_writes(outage: Outage) -> None:
    assert outage.during[-1]["ripple_sink_backpressure"] == 1, outage.during[-1]
    assert outage.during[-1]["ripple_sink_failures_total"] > outage.during[0]["ripple_sink_failures_total"]
    # nothing more is read while it waits: its buffer stays as it was when inserts began to fail
    late = outage.during[len(outage.during) // 2 :]
    assert all(m["ripple_sink_backpressure"] == 1 for m in late), late
    assert len({m["ripple_sink_pending_rows"] for m in late}) == 1, late
    assert late[-1]["ripple_sink_pending_rows"] > 0


def test_the_sink_recovers_by_itself_and_loses_nothing(outage: Outage) -> None:
    assert not outage.problem, outage.problem
    assert outage.after["ripple_sink_backpressure"] == 0
    assert_paid_as_the_truth(outage.ch, outage.truth)
    (dead,) = outage.ch.query("SELECT count() FROM ripple.dead_letters FINAL")[0]
    assert dead == outage.truth["malformed"]
