"""The traffic ``ripple bench`` sends and reads beside the program: the raw read that sets the
ceiling, live events in the program's mix, attribution rows for the chDB insert phase."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from ripple.bench.figures import TOPICS, BenchConfig, BenchError
from ripple.simulator import PRODUCER_TUNING, Dataset, h
from streams.kafka import PLAINTEXT, KafkaSecurity, producer_config
from streams.partitioner import partition_of


def link_slugs(ds: Dataset) -> list[str]:
    """Referral-link slugs of creators: active, no expiry, no discount."""
    slugs = []
    for m in ds.reference:
        e = m.event or {}
        if m.topic == "codes" and e.get("active") and e.get("discount_pct") is None and "expires_ts" not in e:
            slugs.append(str(e["code"]))
    return slugs or ["jane"]


async def raw_consume(
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


def send_live(
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


def attribution_rows(n: int) -> Iterator[tuple[Any, ...]]:
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
