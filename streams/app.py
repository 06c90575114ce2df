"""The Faust application: thin agents that decode, call the pure logic, and send results.

* ``visitor_agent`` reads ``views``, ``clicks`` and ``orders`` (co-partitioned by
  visitor) in batches; per-visitor state lives in the ``visitor_state`` table, written once
  per visitor per batch.
* ``other_agent`` validates ``refunds``, ``codes`` and ``creators`` so bad input on them
  reaches the dead-letter topic too.
* :class:`ReferenceReader` keeps every code and creator in memory on every worker (what a
  GlobalTable does, with an explicit "caught up" barrier).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

import faust
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from mode import Service

from ripple.config import COPARTITIONED_TOPICS, Settings
from ripple.metrics import WorkerMetrics
from streams import attribution as attr
from streams.events import Rejected, decode
from streams.reference import ReferenceData

log = logging.getLogger("ripple.worker")

APP_ID = "ripple"
STREAM_TIME_KEY = "\x00stream_time"


class ReferenceReader(Service):
    """Reads the compacted ``codes`` and ``creators`` topics in full, on every worker."""

    def __init__(self, bootstrap: str, data: ReferenceData, metrics: WorkerMetrics) -> None:
        super().__init__()
        self.bootstrap = bootstrap
        self.data = data
        self.metrics = metrics
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()
        self._last_sync = 0.0

    async def on_start(self) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, group_id=None)
        await self._consumer.start()
        await self._consumer.topics()  # loads metadata for every topic
        parts = []
        for topic in ("codes", "creators"):
            for p in self._consumer.partitions_for_topic(topic) or ():
                parts.append(TopicPartition(topic, p))
        self._consumer.assign(parts)
        await self._consumer.seek_to_beginning(*parts)
        await self.sync(force=True)

    async def on_stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    @Service.task
    async def _poll(self) -> None:
        while not self.should_stop:
            await self._read_once(0.2)

    async def _read_once(self, timeout: float) -> None:
        assert self._consumer is not None
        async with self._lock:
            batches = await self._consumer.getmany(timeout_ms=int(timeout * 1000))
        for tp, messages in batches.items():
            for msg in messages:
                good, _ = decode(tp.topic, msg.value, msg.timestamp)  # aiokafka: ms
                for event in good:
                    self.data.apply(tp.topic, event)

    async def sync(self, force: bool = False) -> None:
        """Return once everything written to the reference topics before now is applied."""
        now = time.monotonic()
        if not force and now - self._last_sync < 0.2:
            return
        self._last_sync = now
        consumer = self._consumer
        assert consumer is not None
        parts = list(consumer.assignment())
        if not parts:
            return
        ends = await consumer.end_offsets(parts)
        while not await self._reached(ends):
            await self._read_once(0.05)

    async def _reached(self, ends: dict[TopicPartition, int]) -> bool:
        assert self._consumer is not None
        for tp, end in ends.items():
            if await self._consumer.position(tp) < end:
                return False
        return True


def create_app(settings: Settings) -> faust.App:
    assert settings.bootstrap, "the worker needs a broker address"
    app = faust.App(
        APP_ID,
        broker=f"kafka://{settings.bootstrap}",
        store="memory://",
        datadir=str(settings.data_dir / "worker"),
        topic_partitions=settings.partitions,
        broker_session_timeout=6,
        broker_heartbeat_interval=2,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_enabled=True,
        producer_linger_ms=5,
        producer_compression_type="lz4",
        producer_max_batch_size=1_048_576,
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        stream_wait_empty=False,
        topic_allow_declare=True,
    )
    metrics = WorkerMetrics()
    reference = ReferenceData()
    reader = ReferenceReader(settings.bootstrap, reference, metrics)
    app.service(reader)  # type: ignore[arg-type]  # an instance is accepted at run time
    windows = attr.Windows(
        click_ms=settings.click_window_ms,
        view_ms=settings.view_window_ms,
        max_lateness_ms=settings.max_lateness_ms,
        max_touches=settings.max_touches_per_visitor,
    )

    def raw_topic(*names: str) -> faust.TopicT:
        return app.topic(*names, key_type=bytes, value_type=bytes, value_serializer="raw", key_serializer="raw")

    visitor_topics = raw_topic(*COPARTITIONED_TOPICS)
    other_topics = raw_topic("refunds", "codes", "creators")
    attributions_topic = raw_topic("attributions")
    deadletter_topic = raw_topic("deadletter")
    visitor_state = app.Table(
        "visitor_state",
        default=None,
        schema=faust.Schema(key_type=bytes, key_serializer="raw", value_serializer="json"),
        partitions=settings.partitions,
    )
    stream_time: dict[int, int] = {}

    async def dead_letter(topic: str, partition: int, offset: int, bad: Iterable[Rejected]) -> None:
        for r in bad:
            metrics.dead_letters.labels(topic).inc()
            await deadletter_topic.send(
                key=f"{topic}:{partition}:{offset}".encode(),
                value=r.raw,
                headers=[
                    ("error", r.error.encode()),
                    ("topic", topic.encode()),
                    ("partition", str(partition).encode()),
                    ("offset", str(offset).encode()),
                    ("index", str(r.index).encode()),
                ],
            )

    def table_put(partition: int, key: str, value: Any) -> None:
        # Explicit partition: the state of a visitor lives in the changelog partition of
        # the input partition that holds the visitor, whatever the batch's last event was.
        kb = key.encode()
        if value is None:
            if visitor_state.data.pop(kb, None) is not None:
                visitor_state.send_changelog(partition, kb, None, value_serializer="raw")
        else:
            visitor_state.data[kb] = value
            visitor_state.send_changelog(partition, kb, value)

    async def emit_rows(rows: list[attr.Row]) -> None:
        for row in rows:
            await attributions_topic.send(key=row["order_id"].encode(), value=orjson.dumps(row))
        metrics.rows_out.labels("attributions").inc(len(rows))

    @app.agent(visitor_topics, name="visitors")
    async def visitor_agent(stream: Any) -> None:
        async for events in stream.take_events(settings.worker_batch, within=settings.worker_batch_ms / 1000):
            await handle_visitor_batch(events)

    async def handle_visitor_batch(events: list[Any]) -> None:
        started = time.perf_counter()
        touched: dict[str, tuple[int, attr.State]] = {}
        decoded: list[tuple[str, int, dict[str, Any]]] = []
        for ev in events:
            msg = ev.message
            metrics.messages_in.labels(msg.topic).inc()
            good, bad = decode(msg.topic, msg.value, int(msg.timestamp * 1000), settings.max_future_ms)
            if bad:
                await dead_letter(msg.topic, msg.partition, msg.offset, bad)
            metrics.events_in.labels(msg.topic).inc(len(good))
            decoded.extend((msg.topic, msg.partition, e) for e in good)
        if any(t == "orders" and e.get("discount_code") for t, _, e in decoded):
            await reader.sync()
        rows: list[attr.Row] = []
        for topic, partition, event in decoded:
            visitor = event.get("visitor_id")
            st = stream_time.get(partition)
            if st is None:
                stored = visitor_state.data.get(STREAM_TIME_KEY.encode() + str(partition).encode())
                st = int(stored) if stored is not None else 0
            if attr.is_late(event["ts"], st, windows):
                metrics.late_events.labels(topic).inc()
            if visitor is None:
                stream_time[partition] = max(st, event["ts"])
                continue  # an anonymous view: a fact for the creator, no visitor touch
            entry = touched.get(visitor)
            state = entry[1] if entry else visitor_state.data.get(visitor.encode()) or attr.new_state()
            touched[visitor] = (partition, state)
            if topic == "orders":
                record = attr.add_order(state, event, st, windows)
                rows.extend(attr.attribute(state, record, reference, windows))
                metrics.orders_attributed.inc()
            else:
                if topic == "clicks":
                    touch = [event["ts"], "c", event["ref"].lower(), event["event_id"], 0]
                else:
                    touch = [event["ts"], "v", event["creator_id"], event["event_id"], 0]
                for order in attr.add_touch(state, touch, st, windows):
                    rows.extend(attr.attribute(state, order, reference, windows))
            stream_time[partition] = max(st, event["ts"])
        for visitor, (partition, state) in touched.items():
            attr.expire(state, stream_time[partition], windows)
            table_put(partition, visitor, None if attr.is_empty(state) else state)
        for partition in {p for _, p, _ in decoded}:
            table_put(partition, STREAM_TIME_KEY + str(partition), stream_time[partition])
        await emit_rows(rows)
        metrics.batch_seconds.observe(time.perf_counter() - started)

    @app.agent(other_topics, name="reference")
    async def other_agent(stream: Any) -> None:
        async for events in stream.take_events(settings.worker_batch, within=settings.worker_batch_ms / 1000):
            for ev in events:
                msg = ev.message
                metrics.messages_in.labels(msg.topic).inc()
                good, bad = decode(msg.topic, msg.value, int(msg.timestamp * 1000), settings.max_future_ms)
                metrics.events_in.labels(msg.topic).inc(len(good))
                if bad:
                    await dead_letter(msg.topic, msg.partition, msg.offset, bad)

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        body, content_type = metrics.render()
        return web.bytes(body, content_type=content_type)

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        assignment = sorted(f"{tp.topic}:{tp.partition}" for tp in app.consumer.assignment())
        return web.json({"status": "ok", "assigned": assignment, "stream_time": stream_time})

    return app
