"""Event time at the default settings (SPEC §3.5, §8), on the real broker, worker, sink and
collector:

* a view dated 23 hours ahead on every partition is a dead letter, not a clock: the real
  click → order pairs behind it are all credited;
* a shopper whose laptop clock is two hours fast clicks through the snippet's path
  (``POST /v1/events`` with ``sent_ts``) and is credited;
* a click produced after newer events of its partition, within ``max_lateness`` (10
  minutes), restates its order; one 20 minutes behind is stored in ``late_events``,
  counted, and restates nothing.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from stack import get, running_stack, spawn, wait_for

from ripple.broker import free_port
from sinks.clickhouse import ClickHouse
from streams.partitioner import partition_of

pytestmark = pytest.mark.integration

PARTITIONS = 4
SHOP = "http://shop.test"
CREATOR = "cr-et"
CODE = "ETIME"
MIN = 60_000
HOUR = 3_600_000
#: the collector fills a browser's user agent into its clicks (Python's own is on the bot list)
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"


@dataclass
class Outcome:
    ch: ClickHouse
    worker_health: dict[str, Any]
    worker_metrics: str
    future_views: list[str]
    skew_posted_ms: int  # the collector's clock when it got the fast browser's click


def visitor_on(partition: int, prefix: str) -> str:
    return next(f"{prefix}-{n}" for n in range(1000) if partition_of(f"{prefix}-{n}", PARTITIONS) == partition)


def send(producer: Producer, topic: str, key: str, event: dict[str, Any]) -> None:
    producer.produce(topic, key=key.encode(), value=orjson.dumps(event))
    assert producer.flush(10) == 0


def post(url: str, events: list[dict[str, Any]], origin: str | None = None) -> dict[str, Any]:
    headers = {"Content-Type": "application/json", "User-Agent": BROWSER}
    if origin:
        headers["Origin"] = origin
    request = urllib.request.Request(f"{url}/v1/events", data=json.dumps(events).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 202
        body: dict[str, Any] = json.loads(resp.read())
    assert body["rejected"] == [], body
    return body


def worker_metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        lines = resp.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name))


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    base: Path = tmp_path_factory.mktemp("eventtime")
    with running_stack(base, PARTITIONS) as stack:
        producer = Producer({"bootstrap.servers": stack.bootstrap, "partitioner": "murmur2_random"})
        send(producer, "creators", CREATOR, {"creator_id": CREATOR, "handle": "et", "followers": 20_000})
        send(
            producer,
            "codes",
            CODE.lower(),
            {"code": CODE, "referrer_id": CREATOR, "referrer_type": "creator", "issued_ts": 0},
        )
        stack.sink()
        worker_port = free_port()
        stack.worker(port=worker_port)
        collector_port = free_port()
        stack.procs.append(
            spawn(
                *("collect", "--bootstrap", stack.bootstrap, "--port", str(collector_port)),
                *("--data-dir", str(base / "collector")),
                log=base / "collect.log",
                env={"RIPPLE_COLLECTOR_ORIGINS": SHOP},
            )
        )
        collector = f"http://127.0.0.1:{collector_port}"
        wait_for(lambda: get(f"{collector}/healthz")["codes"] == 1, 60, "the collector to know the code")
        wait_for(
            lambda: len(get(f"http://127.0.0.1:{worker_port}/healthz")["tasks"]["visitors"]) == PARTITIONS,
            90,
            "the worker to take its partitions",
        )
        now = int(time.time() * 1000)

        # 1. a view 23 hours ahead on every partition, then real click -> order pairs
        future_views = []
        for p in range(PARTITIONS):
            visitor = visitor_on(p, "ahead")
            view = {"event_id": f"fv-{p}", "ts": now + 23 * HOUR, "visitor_id": visitor}
            send(producer, "views", visitor, {**view, "creator_id": CREATOR, "content_id": "post-1"})
            future_views.append(view["event_id"])
        for i in range(16):
            visitor = f"pair-{i}"
            click = {"event_id": f"pc-{i}", "ts": now - MIN + i, "visitor_id": visitor, "ref": CODE}
            send(producer, "clicks", visitor, click)
            order = {
                "event_id": f"po-{i}",
                "ts": now - 30_000 + i,
                "order_id": f"pair-order-{i}",
                "visitor_id": visitor,
                "customer_id": f"cu-pair-{i}",
                "amount_minor": 2500,
                "currency": "EUR",
            }
            send(producer, "orders", visitor, order)

        # 2. a browser two hours fast: the snippet's click carries its clock as sent_ts
        browser_now = int(time.time() * 1000) + 2 * HOUR
        # clicked a minute ago by the laptop's clock (a sooner order is click injection)
        skewed = {"type": "click", "event_id": "skew-click", "ts": browser_now - MIN, "visitor_id": "skew-1"}
        post(collector, [{**skewed, "ref": CODE, "sent_ts": browser_now}], origin=SHOP)
        skew_posted_ms = int(time.time() * 1000)
        server_order = {
            "type": "order",
            "event_id": "skew-order-ev",
            "ts": int(time.time() * 1000),
            "order_id": "skew-order",
            "visitor_id": "skew-1",
            "customer_id": "cu-skew",
            "amount_minor": 4000,
            "currency": "EUR",
        }
        post(collector, [server_order])  # the shop's server: no Origin

        # 3. an order each, then (once processed) a click behind it: 9 and 25 minutes old
        def order_of(visitor: str, order_id: str, ts: int) -> dict[str, Any]:
            return {
                "event_id": f"ev-{order_id}",
                "ts": ts,
                "order_id": order_id,
                "visitor_id": visitor,
                "customer_id": f"cu-{order_id}",
                "amount_minor": 1000,
                "currency": "EUR",
            }

        now = int(time.time() * 1000)
        before = worker_metric(worker_port, "ripple_orders_attributed_total")
        send(producer, "orders", "ontime-1", order_of("ontime-1", "ontime-order", now - MIN))
        send(producer, "orders", "late-1", order_of("late-1", "late-order", now - 2 * MIN))
        wait_for(
            lambda: worker_metric(worker_port, "ripple_orders_attributed_total") >= before + 2,
            60,
            "the worker to process both orders",
        )
        for visitor, event_id, ago in (("ontime-1", "ontime-click", 9 * MIN), ("late-1", "late-click", 25 * MIN)):
            send(
                producer, "clicks", visitor, {"event_id": event_id, "ts": now - ago, "visitor_id": visitor, "ref": CODE}
            )
        try:
            wait_for(
                lambda: (
                    worker_metric(worker_port, 'ripple_late_events_total{topic="clicks"}') >= 1
                    and get(f"http://127.0.0.1:{stack.web}/api/totals").get("attributed", 0) >= 18
                ),
                90,
                "the late click and 18 credited orders",
            )
        except AssertionError as exc:
            totals = get(f"http://127.0.0.1:{stack.web}/api/totals")
            health = get(f"http://127.0.0.1:{worker_port}/healthz")
            late = worker_metric(worker_port, "ripple_late_events_total")
            raise AssertionError(f"{exc}: totals {totals}, late {late}, worker {health}") from None
        time.sleep(3)  # the last rows through the sink
        health = get(f"http://127.0.0.1:{worker_port}/healthz")
        with urllib.request.urlopen(f"http://127.0.0.1:{worker_port}/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        stack.stop()
        ch = ClickHouse(f"chdb://{base / 'sink' / 'clickhouse'}")
        try:
            yield Outcome(ch, health, metrics, future_views, skew_posted_ms)
        finally:
            ch.close()


def credited(ch: ClickHouse) -> dict[str, str]:
    rows = ch.query(
        "SELECT order_id, referrer_id FROM ripple.attributions FINAL WHERE model = 'last_click' AND credit > 0"
    )
    return dict(rows)


def test_a_future_dated_view_on_every_partition_is_a_dead_letter_not_a_clock(outcome: Outcome) -> None:
    rows = outcome.ch.query("SELECT topic, error, raw FROM ripple.dead_letters FINAL WHERE topic = 'views'")
    assert sorted(orjson.loads(raw)["event_id"] for _, _, raw in rows) == sorted(outcome.future_views)
    assert all("ahead of the message time" in error for _, error, _ in rows)
    (stored,) = outcome.ch.query("SELECT count() FROM ripple.views FINAL WHERE event_id LIKE 'fv-%'")[0]
    assert stored == 0  # the sink applies the same max_future


def test_the_real_pairs_behind_the_future_views_are_all_credited(outcome: Outcome) -> None:
    got = credited(outcome.ch)
    assert {f"pair-order-{i}": got.get(f"pair-order-{i}") for i in range(16)} == {
        f"pair-order-{i}": CREATOR for i in range(16)
    }


def test_a_shopper_with_a_fast_clock_is_credited(outcome: Outcome) -> None:
    assert credited(outcome.ch).get("skew-order") == CREATOR
    ((ts,),) = outcome.ch.query(
        "SELECT toUnixTimestamp64Milli(ts) FROM ripple.clicks FINAL WHERE event_id = 'skew-click'"
    )
    assert abs(outcome.skew_posted_ms - MIN - ts) < 10_000  # server time, not the laptop's


def test_a_click_within_max_lateness_restates_its_order(outcome: Outcome) -> None:
    assert credited(outcome.ch).get("ontime-order") == CREATOR


def test_a_click_20_minutes_behind_is_stored_as_late_and_restates_nothing(outcome: Outcome) -> None:
    assert "late-order" not in credited(outcome.ch)
    rows = outcome.ch.query("SELECT topic, event_id, lateness_ms FROM ripple.late_events FINAL")
    assert [(topic, event_id) for topic, event_id, _ in rows] == [("clicks", "late-click")]
    assert rows[0][2] > 20 * MIN
    assert 'ripple_late_events_total{topic="clicks"} 1.0' in outcome.worker_metrics


def test_health_and_metrics_show_each_tasks_stream_time_and_wait(outcome: Outcome) -> None:
    tasks = outcome.worker_health["tasks"]
    assert set(tasks) == {"visitors", "ledger"}
    assert sorted(tasks["visitors"], key=int) == [str(p) for p in range(PARTITIONS)]
    for task in tasks["visitors"].values():
        assert task["idle_seconds"] == 0 and task["waiting_for"] == [] and task["buffered"] == 0
        # stream time follows the events (minutes old at most), never the views dated ahead
        assert 0 <= task["stream_time_lag_seconds"] < 3600
    assert "ripple_task_idle_seconds{" in outcome.worker_metrics
    assert 'ripple_stream_time_lag_seconds{agent="visitors",partition="0"}' in outcome.worker_metrics
