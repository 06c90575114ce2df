"""The whole pipeline on real parts: Tansu broker, Faust worker, sink, chDB.

``ripple up`` runs as a user would start it; the simulator sends a few thousand events
with a fixed seed; after a clean stop the ClickHouse data is opened and compared with
the simulator's ground truth.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ripple.broker import free_port
from sinks.clickhouse import ClickHouse

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


@dataclass
class Run:
    data_dir: Path
    out: Path
    truth: dict[str, Any]
    runtime: dict[str, str]
    healthz: dict[str, Any]
    sink_metrics: str
    worker_metrics: str
    second_up: subprocess.CompletedProcess[str]
    stop_seconds: float
    returncode: int
    stdout: str
    worker_pid: int
    first_event_seconds: float
    chains_api: list[dict[str, Any]]


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read()


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def start_up(data_dir: Path, port: int, extra_env: dict[str, str]) -> subprocess.Popen[str]:
    env = {**os.environ, **extra_env}
    return subprocess.Popen(
        [sys.executable, "-m", "ripple", "up", "--data-dir", str(data_dir), "--web-port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env=env,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    data_dir = tmp_path_factory.mktemp("up") / "data"
    out = data_dir.parent / "sim"
    port = free_port()
    # Ripple's defaults: the lateness above all (SPEC §3.5)
    env: dict[str, str] = {}
    started = time.monotonic()
    proc = start_up(data_dir, port, env)
    try:
        runtime_file = data_dir / "runtime.json"
        wait_for(runtime_file.exists, 60, "runtime.json")
        runtime = json.loads(runtime_file.read_text())
        sim = subprocess.run(
            [
                sys.executable,
                "-m",
                "ripple",
                "simulate",
                "--data-dir",
                str(data_dir),
                "--seed",
                "7",
                "--start",
                "2026-01-01T00:00:00Z",
                "--views",
                "4000",
                "--inject",
                "all",
                "--out",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env={**os.environ, **env},
        )
        assert sim.returncode == 0, sim.stderr
        truth = json.loads((out / "ground_truth.json").read_text())
        totals_url = f"{runtime['web']}/api/totals"

        def first_event() -> bool:
            return json.loads(get(totals_url)).get("views", 0) > 0

        wait_for(first_event, 120, "the first stored event")
        first_event_seconds = time.monotonic() - started
        expected_orders = truth["counts"]["orders"]
        expected_attributed = sum(1 for v in truth["last_click"].values() if v)

        last: dict[str, Any] = {}

        def settled() -> bool:
            t = json.loads(get(totals_url))
            health = json.loads(get(f"{runtime['web']}/healthz"))
            lag = sum(v["lag"] for v in health.get("topics", {}).values())
            last.update(t, lag=lag)
            return (
                t["orders"] == expected_orders
                and t["dead_letters"] == truth["malformed"]
                and t["attributed"] >= expected_attributed
                and lag == 0
                and t["chain_nodes"] >= len(truth["chain_parents"])
            )

        try:
            wait_for(settled, 180, "every event to be processed")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}: last {last}, expected orders {expected_orders}, attributed {expected_attributed}, "
                f"malformed {truth['malformed']}, chain nodes {len(truth['chain_parents'])}"
            ) from None
        time.sleep(2)  # one more sink flush for late restatements
        healthz = json.loads(get(f"{runtime['web']}/healthz"))
        sink_metrics = get(f"{runtime['web']}/metrics").decode()
        chains_api = json.loads(get(f"{runtime['web']}/api/chains?limit=5"))
        worker_metrics = get(f"{runtime['worker_metrics']}/metrics").decode()
        second = subprocess.run(
            [sys.executable, "-m", "ripple", "up", "--data-dir", str(data_dir), "--web-port", str(free_port())],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=30)
        stop_seconds = time.monotonic() - t0
        worker_pid = int(next(line for line in stdout.splitlines() if line.startswith("worker")).split()[2].rstrip(","))
        yield Run(
            data_dir,
            out,
            truth,
            runtime,
            healthz,
            sink_metrics,
            worker_metrics,
            second,
            stop_seconds,
            proc.returncode,
            stdout,
            worker_pid,
            first_event_seconds,
            chains_api,
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def ch(run: Run) -> Iterator[ClickHouse]:
    client = ClickHouse(f"chdb://{run.data_dir / 'clickhouse'}")
    yield client
    client.close()


def test_stops_cleanly_within_15_seconds(run: Run) -> None:
    print(
        f"\nfirst event stored {run.first_event_seconds:.1f} s after 'ripple up'; stopped in {run.stop_seconds:.1f} s"
    )
    assert run.returncode == 0, run.stdout
    assert run.stop_seconds < 15
    assert not (run.data_dir / "runtime.json").exists()


def test_no_child_process_is_left_behind(run: Run) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(run.worker_pid, 0)
    host, port = run.runtime["bootstrap"].split(":")
    with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=1):
        pass


def test_second_up_on_the_same_data_dir_is_refused(run: Run) -> None:
    assert run.second_up.returncode == 1
    assert "already running" in run.second_up.stderr
    assert "Traceback" not in run.second_up.stderr


def test_runtime_file_and_web_endpoints(run: Run) -> None:
    assert run.runtime["bootstrap"].startswith("127.0.0.1:")
    assert run.runtime["web"].startswith("http://127.0.0.1:")
    assert set(run.healthz["topics"]) == {"views", "clicks", "orders", "refunds", "codes", "creators"}
    assert all(v["lag"] == 0 for v in run.healthz["topics"].values())
    assert run.healthz["sink"]["flushed_offsets"]["orders"]
    assert "ripple_sink_rows_total" in run.sink_metrics
    assert 'ripple_events_in_total{topic="orders"}' in run.worker_metrics


@pytest.mark.parametrize("table", ["views", "clicks", "orders", "refunds", "codes", "creators"])
def test_every_valid_event_is_stored_exactly_once(run: Run, ch: ClickHouse, table: str) -> None:
    key = {"orders": "order_id", "codes": "code_lower", "creators": "creator_id"}.get(table, "event_id")
    final = ch.query(f"SELECT count(), uniqExact({key}) FROM ripple.{table} FINAL")[0]
    assert final == (run.truth["counts"][table], run.truth["counts"][table])


def test_every_malformed_message_is_a_dead_letter(run: Run, ch: ClickHouse) -> None:
    rows = ch.query("SELECT topic, error FROM ripple.dead_letters FINAL")
    assert len(rows) == run.truth["malformed"]
    assert all(error for _, error in rows)


def test_last_click_attributions_equal_the_ground_truth(run: Run, ch: ClickHouse) -> None:
    rows = ch.query(
        "SELECT order_id, referrer_id, touch_type, credit FROM ripple.attributions FINAL "
        "WHERE model = 'last_click' AND credit > 0"
    )
    got = {order_id: {"referrer_id": ref, "touch_type": kind} for order_id, ref, kind, _ in rows}
    expected = {k: v for k, v in run.truth["last_click"].items() if v}
    assert got == expected
    assert all(credit == 1.0 for *_, credit in rows)


def test_every_model_equals_the_ground_truth(run: Run, ch: ClickHouse) -> None:
    rows = ch.query("SELECT order_id, model, referrer_id, credit FROM ripple.attributions FINAL WHERE credit > 0")
    got: dict[str, dict[str, dict[str, float]]] = {}
    for order_id, model, referrer, credit in rows:
        got.setdefault(order_id, {}).setdefault(model, {})[referrer] = credit
    expected = {o: m for o, m in run.truth["credits"].items() if m}
    assert set(got) == set(expected)
    for order_id, models in expected.items():
        assert set(got[order_id]) == set(models), order_id
        for model, credits in models.items():
            assert set(got[order_id][model]) == set(credits), (order_id, model)
            for referrer, credit in credits.items():
                assert abs(got[order_id][model][referrer] - credit) < 1e-9


def test_commission_ledger_matches_the_credited_orders(run: Run, ch: ClickHouse) -> None:
    commissions = dict(
        ch.query(
            "SELECT order_id, sum(commission_minor) FROM ripple.commission_ledger FINAL "
            "WHERE kind = 'commission' GROUP BY order_id"
        )
    )
    attributed = dict(
        ch.query(
            "SELECT order_id, sum(commission_minor) FROM ripple.attributions FINAL "
            "WHERE model = 'last_click' AND credit > 0 GROUP BY order_id"
        )
    )
    # an order restated to nobody keeps a commission entry of 0 (its credit was retracted)
    paid = {order_id: minor for order_id, minor in commissions.items() if minor}
    assert paid and paid == {order_id: minor for order_id, minor in attributed.items() if minor}
    assert set(attributed) <= set(commissions)
    refunds = ch.query("SELECT count() FROM ripple.commission_ledger FINAL WHERE kind IN ('reversal', 'clawback')")
    assert refunds[0][0] > 0
    daily = ch.query("SELECT sum(conversions) FROM ripple.creator_daily WHERE model = 'last_click'")[0][0]
    creator_orders = sum(
        1 for v in run.truth["last_click"].values() if v and not v["referrer_id"].startswith("s7-cus-")
    )
    assert round(daily) == creator_orders


def test_chain_parents_equal_the_ground_truth(run: Run, ch: ClickHouse) -> None:
    rows = ch.query("SELECT node_id, parent_id, root_id, generation FROM ripple.chain_nodes FINAL WHERE active = 1")
    parents = {node: parent for node, parent, _, _ in rows if parent}
    assert parents == run.truth["chain_parents"]
    gen = {node: g for node, _, _, g in rows}
    assert all(gen[node] == gen[parent] + 1 for node, parent in parents.items())
    roots = {node for node, parent, root, g in rows if not parent}
    assert all(root in roots for _, _, root, _ in rows)


def test_exactly_the_super_critical_chains_are_viral(run: Run, ch: ClickHouse) -> None:
    flagged = {r[0] for r in ch.query("SELECT root_id FROM ripple.chains FINAL WHERE viral = 1")}
    truth = {root for root, c in run.truth["chains"].items() if c["viral"]}
    supers = {root for root, c in run.truth["chains"].items() if c["class"] == "super"}
    assert flagged == truth != set()
    assert truth <= supers  # referral rings (injected) may cut a super-critical tree short
    alerts = {r[0] for r in ch.query("SELECT referrer_id FROM ripple.alerts FINAL WHERE rule = 'viral_chain'")}
    assert alerts == flagged
    sizes = dict(ch.query("SELECT root_id, nodes FROM ripple.chains FINAL"))
    assert {r: sizes[r] for r in truth} == {r: run.truth["chains"][r]["nodes"] for r in truth}


def test_blocked_orders_equal_the_ground_truth_and_earn_nothing(run: Run, ch: ClickHouse) -> None:
    blocked = ch.query(
        "SELECT order_id, reasons, commission_minor FROM ripple.attributions FINAL "
        "WHERE model = 'last_click' AND status = 'blocked' AND credit > 0"
    )
    expected = run.truth["blocked_orders"]
    assert {r[0]: r[1][0] for r in blocked} == expected
    assert {"self_referral", "referral_ring", "code_leakage"} == set(expected.values())
    assert set(run.truth["rings"]) <= set(expected)
    assert all(r[2] == 0 for r in blocked)
    paid = ch.query(
        "SELECT order_id, sum(commission_minor) FROM ripple.commission_ledger FINAL "
        "WHERE kind IN ('commission', 'reversal', 'clawback') GROUP BY order_id"
    )
    assert all(minor == 0 for order_id, minor in paid if order_id in expected)


def test_every_injected_fraud_is_alerted_and_nothing_else(run: Run, ch: ClickHouse) -> None:
    rows = ch.query("SELECT rule, evidence FROM ripple.alerts FINAL WHERE rule != 'viral_chain'")
    alerted = {(rule, json.loads(evidence)["subject"]) for rule, evidence in rows}
    assert alerted == {(i["rule"], i["subject"]) for i in run.truth["incidents"]}
    values = dict(line.rsplit(" ", 1) for line in run.worker_metrics.splitlines() if line and not line.startswith("#"))
    for rule, severity in [("click_flood", "high"), ("bot_click", "warning"), ("code_leakage", "high")]:
        assert float(values[f'ripple_alerts_total{{rule="{rule}",severity="{severity}"}}']) > 0
    assert float(values['ripple_blocked_touches_total{rule="bot_click"}']) > 0


def test_flooded_and_bot_clicks_earn_no_credit(run: Run, ch: ClickHouse) -> None:
    excluded = run.truth["excluded_clicks"]
    assert set(excluded.values()) == {"bot_click", "click_flood"}
    credited = {r[0] for r in ch.query("SELECT touch_event_id FROM ripple.attributions FINAL WHERE credit > 0")}
    assert credited.isdisjoint(excluded)


def test_the_page_lists_the_top_chains(run: Run) -> None:
    viral = {root for root, c in run.truth["chains"].items() if c["viral"]}
    top = run.chains_api
    assert {c["root_id"] for c in top if c["viral"]} == viral
    assert all({"nodes", "depth", "k_by_generation", "structural_virality"} <= set(c) for c in top)


def test_overrides_pay_the_referrers_parent(run: Run, ch: ClickHouse) -> None:
    rows = ch.query(
        "SELECT l.order_id, l.referrer_id, l.commission_minor, a.referrer_id, a.revenue_minor "
        "FROM ripple.commission_ledger AS l FINAL "
        "INNER JOIN (SELECT order_id, referrer_id, revenue_minor FROM ripple.attributions FINAL "
        "            WHERE model = 'last_click' AND credit > 0 AND status = 'ok') AS a ON a.order_id = l.order_id "
        "WHERE l.kind = 'override'"
    )
    assert rows, "micro and nano creators' plans carry an override rate"
    parents = run.truth["chain_parents"]
    rates = {"nano": 0.03, "micro": 0.02}
    tiers = dict(ch.query("SELECT creator_id, tier FROM ripple.creators FINAL"))
    for order_id, parent, minor, referrer, revenue in rows:
        assert parents[referrer] == parent, order_id
        assert minor == round(revenue * rates[tiers[parent]])
