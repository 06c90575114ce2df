"""Load on the collector with a real HTTP load generator (Debian's ``wrk``), on loopback.

``ripple collect`` runs on the embedded broker; wrk posts JSON arrays of 100 view events
(unique event ids) for a fixed time from several connections; then ``ripple sink`` writes
what the broker holds to chDB. The
figures (requests/s, events/s, latency percentiles) are printed and written to
``test-artifacts/collector-load.json``, not asserted: they depend on the machine. What is
asserted: every request answered 202 and no event lost or doubled — the events in
ClickHouse are exactly the ones the collector acknowledged.

``RIPPLE_LOAD_SECONDS`` and ``RIPPLE_LOAD_CONNECTIONS`` change the run (15 s, 16).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from stack import get, kill_all, spawn, wait_for

from ripple.broker import EmbeddedBroker, create_topics, free_port
from sinks.clickhouse import ClickHouse

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "wrk" / "collector.lua"
ARTIFACTS = ROOT / "test-artifacts"
BATCH = 100
SECONDS = int(os.environ.get("RIPPLE_LOAD_SECONDS", "15"))
CONNECTIONS = int(os.environ.get("RIPPLE_LOAD_CONNECTIONS", "16"))
PARTITIONS = 8  # the default of every topic


def wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        pytest.fail("the load test needs wrk: apt-get install wrk (scripts/setup.sh --dev does)")
    return path


def metric(url: str, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_collector_under_load_loses_no_event(tmp_path: Path) -> None:
    broker = EmbeddedBroker(tmp_path / "broker.log")
    broker.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        create_topics(broker.bootstrap, PARTITIONS)
        port, sink_port = free_port(), free_port()
        collector = f"http://127.0.0.1:{port}"
        sink = f"http://127.0.0.1:{sink_port}"
        env = {"RIPPLE_PARTITIONS": str(PARTITIONS), "RIPPLE_COLLECTOR_RATE": "0"}  # one client: no rate limit
        procs.append(
            spawn(
                *("collect", "--bootstrap", broker.bootstrap, "--port", str(port), "--data-dir", str(tmp_path)),
                log=tmp_path / "collect.log",
                env=env,
            )
        )
        wait_for(lambda: get(f"{collector}/healthz")["status"] == "ok", 60, "the collector")

        run = subprocess.run(
            [
                wrk(),
                "-t2",
                f"-c{CONNECTIONS}",
                f"-d{SECONDS}s",
                "--timeout",
                "10s",
                "-s",
                str(SCRIPT),
                f"{collector}/v1/events",
            ],
            capture_output=True,
            text=True,
            timeout=SECONDS + 60,
            env={**os.environ, "RIPPLE_WRK_BATCH": str(BATCH)},
        )
        assert run.returncode == 0, run.stderr
        result = json.loads(next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))[7:])
        assert result["not_202"] == 0 and not any(result["errors"].values()), result
        assert result["accepted"] == BATCH * result["requests"]

        # the collector's count includes requests wrk cut off when its time was up: read once
        # those are answered too (the count holds still)
        counts = [-1.0]

        def settled() -> bool:
            counts.append(metric(collector, 'ripple_collector_events_accepted_total{topic="views"}'))
            return counts[-1] == counts[-2]

        wait_for(settled, 30, "the collector to answer the last requests")
        acknowledged = int(counts[-1])
        messages = int(metric(collector, 'ripple_collector_messages_total{topic="views"}'))
        assert acknowledged >= result["accepted"] > 0
        # the sink starts once the load is over: the figures are the collector's and the broker's
        dsn = f"chdb://{tmp_path / 'clickhouse'}"
        procs.append(
            spawn(
                *("sink", "--bootstrap", broker.bootstrap, "--clickhouse", dsn, "--data-dir", str(tmp_path)),
                *("--web-port", str(sink_port)),
                log=tmp_path / "sink.log",
                env=env,
            )
        )
        wait_for(lambda: get(f"{sink}/api/totals")["views"] >= acknowledged, 120, "the sink to store every event")
        seconds = result["duration_us"] / 1e6
        figures = {
            "machine": f"{os.cpu_count()} cores, {platform.machine()}, wrk, collector and broker on the same host",
            "command": f"wrk -t2 -c{CONNECTIONS} -d{SECONDS}s -s tests/wrk/collector.lua (events per request: {BATCH})",
            "requests": result["requests"],
            "requests_per_s": round(result["requests"] / seconds),
            "events_per_s": round(result["accepted"] / seconds),
            "latency_ms": {k: round(v / 1000, 1) for k, v in result["latency_us"].items()},
            "kafka_messages_per_request": round(messages / max(1, acknowledged / BATCH), 2),
            "events_acknowledged": acknowledged,
        }
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            assert proc.wait(30) == 0
    finally:
        kill_all(procs)
        broker.stop()

    ch = ClickHouse(dsn)
    try:
        [(rows, distinct)] = ch.query("SELECT count(), uniqExact(event_id) FROM ripple.views FINAL")
        [(dead,)] = ch.query("SELECT count() FROM ripple.dead_letters")
    finally:
        ch.close()
    figures["events_in_clickhouse"] = rows
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "collector-load.json").write_text(json.dumps(figures, indent=2) + "\n")
    print("\n" + json.dumps(figures, indent=2))
    assert rows == distinct == acknowledged  # no event lost, none doubled
    assert dead == 0
