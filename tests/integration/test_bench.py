"""``ripple bench --quick``: every phase runs and every figure is there. Figures are not judged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

RATES = ("raw_consume_decode", "faust_baseline", "ripple_end_to_end", "sink_insert_rate", "chdb_insert_rate")


def ripple(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIPPLE_")}
    return subprocess.run(
        [sys.executable, "-m", "ripple", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env
    )


def test_quick_bench_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = ripple("bench", "--quick", "--json", str(out), "--data-dir", str(tmp_path / "data"), timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["machine"]["cpus"] >= 1
    assert report["machine"]["platform"] and report["machine"]["python"]
    assert report["config"]["quick"] is True
    assert report["timestamp"]
    figures = report["figures"]
    for name in RATES:
        assert figures[name]["value"] > 0, name
        assert figures[name]["unit"] in ("events/s", "rows/s"), name
    p50, p99 = figures["latency_p50"], figures["latency_p99"]
    assert p99["value"] >= p50["value"] > 0
    assert p50["unit"] == p99["unit"] == "s"
    assert figures["worker_peak_rss"]["value"] > 0
    assert figures["worker_peak_rss"]["unit"] == "bytes"
    assert figures["state_per_visitor"]["value"] > 0
    assert figures["state_per_visitor"]["unit"] == "bytes"
    for line in (
        "raw aiokafka consume + decode (ceiling)",
        "plain Faust agent, one event at a time",
        "Ripple end to end (Kafka → ClickHouse)",
        "inputs all read / everything queryable after",
        "order → queryable p50 / p99",
        "worker peak RSS",
        "state per active visitor",
        "sink inserts into chDB",
    ):
        assert line in result.stdout, line
    assert "Traceback" not in result.stderr


def test_negative_views_exit_2_with_one_line() -> None:
    result = ripple("bench", "--views", "-1")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "--views" in lines[0] and "negative" in lines[0]
    assert "Traceback" not in result.stderr


def test_quick_bench_with_collector_arrays(tmp_path: Path) -> None:
    """Input as JSON arrays per partition, in the load and in the live phase alike."""
    out = tmp_path / "bench.json"
    result = ripple(
        "bench", "--quick", "--views", "3000", "--input-batch", "50", "--json", str(out),
        "--data-dir", str(tmp_path / "data"), timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["config"]["input_batch"] == 50
    figures = report["figures"]
    # every event of the program is counted by both baselines and the pipeline, arrays or not
    events = report["config"]["input_events"]
    assert figures["raw_consume_decode"]["events"] == events
    assert figures["faust_baseline"]["events"] == events
    assert figures["ripple_end_to_end"]["events"] == events
    # the live arrays were attributed: their rows reached ClickHouse
    assert figures["latency_phase"]["orders"] > 0
    assert figures["latency_phase"]["rows_observed"] >= figures["latency_phase"]["orders"]
    assert "input in arrays of up to 50 events" in result.stdout
