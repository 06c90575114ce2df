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
from streams import commission as comm
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
        half_life_ms=settings.half_life_ms,
    )
    batch, within = settings.worker_batch, settings.worker_batch_ms / 1000

    def raw_topic(*names: str) -> faust.TopicT:
        return app.topic(*names, key_type=bytes, value_type=bytes, value_serializer="raw", key_serializer="raw")

    def state_table(name: str) -> Any:
        return app.Table(
            name,
            default=None,
            schema=faust.Schema(key_type=bytes, key_serializer="raw", value_serializer="json"),
            partitions=settings.partitions,
        )

    out = {name: raw_topic(name) for name in ("attributions", "commission_ledger", "conflicts", "late_events")}
    credits_topic = raw_topic("ripple-credits")
    commissions_topic = raw_topic("ripple-commissions")
    deadletter_topic = raw_topic("deadletter")
    visitor_state = state_table("visitor_state")
    referrer_state = state_table("referrer_state")
    order_state = state_table("order_state")

    async def send(topic: faust.TopicT, key: str, value: dict[str, Any], name: str) -> None:
        await topic.send(key=key.encode(), value=orjson.dumps(value))
        metrics.rows_out.labels(name).inc()

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

    async def decode_batch(events: list[Any]) -> list[tuple[str, int, dict[str, Any]]]:
        decoded: list[tuple[str, int, dict[str, Any]]] = []
        for ev in events:
            msg = ev.message
            metrics.messages_in.labels(msg.topic).inc()
            good, bad = decode(msg.topic, msg.value, int(msg.timestamp * 1000), settings.max_future_ms)
            if bad:
                await dead_letter(msg.topic, msg.partition, msg.offset, bad)
            metrics.events_in.labels(msg.topic).inc(len(good))
            decoded.extend((msg.topic, msg.partition, e) for e in good)
        return decoded

    def table_put(table: Any, partition: int, key: str, value: Any) -> None:
        # Explicit partition: a key's state lives in the changelog partition of the input
        # partition that holds the key, whatever the batch's last event was.
        kb = key.encode()
        if value is None:
            if table.data.pop(kb, None) is not None:
                table.send_changelog(partition, kb, None, value_serializer="raw")
        else:
            table.data[kb] = value
            table.send_changelog(partition, kb, value)

    class StreamClock:
        """Stream time per partition number, kept in the agent's own table."""

        def __init__(self, table: Any, name: str) -> None:
            self.table = table
            self.key = STREAM_TIME_KEY + name
            self.times: dict[int, int] = {}

        def get(self, partition: int) -> int:
            st = self.times.get(partition)
            if st is None:
                stored = self.table.data.get(f"{self.key}:{partition}".encode())
                st = self.times[partition] = int(stored) if stored is not None else 0
            return st

        def advance(self, partition: int, ts: int) -> None:
            self.times[partition] = max(self.get(partition), ts)

        def persist(self, partitions: Iterable[int]) -> None:
            for p in set(partitions):
                table_put(self.table, p, f"{self.key}:{p}", self.times[p])

    visitor_clock = StreamClock(visitor_state, "visitors")
    order_clock = StreamClock(order_state, "orders")

    # -- visitors: views, clicks, orders -> credits ------------------------------------
    @app.agent(raw_topic(*COPARTITIONED_TOPICS), name="visitors")
    async def visitor_agent(stream: Any) -> None:
        async for events in stream.take_events(batch, within=within):
            await handle_visitor_batch(events)

    async def handle_visitor_batch(events: list[Any]) -> None:
        started = time.perf_counter()
        decoded = await decode_batch(events)
        if any(t == "orders" and e.get("discount_code") for t, _, e in decoded):
            await reader.sync()
        touched: dict[str, tuple[int, attr.State]] = {}
        for topic, partition, event in decoded:
            st = visitor_clock.get(partition)
            if attr.is_late(event["ts"], st, windows):
                metrics.late_events.labels(topic).inc()
                await send(
                    out["late_events"],
                    event.get("event_id", ""),
                    {
                        "topic": topic,
                        "event_id": event["event_id"],
                        "ts": event["ts"],
                        "stream_time": st,
                        "lateness_ms": st - event["ts"],
                        "partition": partition,
                    },
                    "late_events",
                )
            visitor_clock.advance(partition, event["ts"])
            visitor = event.get("visitor_id")
            if visitor is None:
                continue  # an anonymous view: a fact for the creator, no visitor touch
            entry = touched.get(visitor)
            state = entry[1] if entry else visitor_state.data.get(visitor.encode()) or attr.new_state()
            touched[visitor] = (partition, state)
            if topic == "orders":
                metrics.orders_attributed.inc()
            for order, result in attr.handle_event(topic, event, state, st, windows, reference, settings.policy):
                for row in attr.rows_for(order, result, reference):
                    await send(credits_topic, row["referrer_id"], row, "ripple-credits")
                conflict = attr.conflict_row(order, result, settings.policy)
                if conflict is not None:
                    await send(out["conflicts"], order[attr.O_ID], conflict, "conflicts")
        for visitor, (partition, state) in touched.items():
            attr.expire(state, visitor_clock.get(partition), windows, reference.longest_override_ms)
            table_put(visitor_state, partition, visitor, None if attr.is_empty(state) else state)
        visitor_clock.persist(p for _, p, _ in decoded)
        metrics.batch_seconds.observe(time.perf_counter() - started)

    # -- referrers: credits -> attributions with commission, commission terms ----------
    @app.agent(credits_topic, name="referrers")
    async def referrer_agent(stream: Any) -> None:
        async for events in stream.take_events(batch, within=within):
            await handle_referrer_batch(events)

    async def handle_referrer_batch(events: list[Any]) -> None:
        touched: dict[str, tuple[int, dict[str, Any]]] = {}
        for ev in events:
            msg = ev.message
            row = orjson.loads(msg.value)
            referrer = row["referrer_id"]
            entry = touched.get(referrer)
            book = entry[1] if entry else referrer_state.data.get(referrer.encode()) or comm.new_book()
            touched[referrer] = (msg.partition, book)
            plan = comm.plan_from(reference.plan(referrer))
            seq = comm.next_seq(book)
            version = (row["version"] << 32) | seq
            if row["model"] != settings.commission_model:
                row["commission_minor"] = round(row["credit"] * row["amount_minor"] * plan.rate)
                await send(out["attributions"], row["order_id"], {**row, "version": version}, "attributions")
                continue
            new_month, changed = comm.book_order(book, row, plan)
            if new_month:
                fee = comm.flat_fee_entry(referrer, comm.month_of(row["ts"]), plan, row["currency"])
                if fee is not None:
                    await send(out["commission_ledger"], fee["entry_id"], fee, "commission_ledger")
            for order_id, b in changed:
                credit_, amount, rate = b[comm.B_CREDIT], b[comm.B_AMOUNT], b[comm.B_RATE]
                attribution = {
                    "order_id": order_id,
                    "model": row["model"],
                    "referrer_id": referrer,
                    **b[comm.B_ROW],
                    "credit": credit_,
                    "revenue_minor": round(credit_ * amount),
                    "commission_minor": round(credit_ * amount * rate),
                    "currency": b[comm.B_CURRENCY],
                    "version": (b[comm.B_VERSION] << 32) | seq,
                    "ts": b[comm.B_TS],
                }
                await send(out["attributions"], order_id, attribution, "attributions")
                await send(
                    commissions_topic,
                    order_id,
                    {
                        "order_id": order_id,
                        "referrer_id": referrer,
                        "credit": credit_,
                        "amount_minor": amount,
                        "rate": rate,
                        "currency": b[comm.B_CURRENCY],
                        "ts": b[comm.B_TS],
                        "hold_days": plan.hold_days,
                        "version": attribution["version"],
                    },
                    "ripple-commissions",
                )
            comm.prune_book(book, row["ts"])
        for referrer, (partition, book) in touched.items():
            table_put(referrer_state, partition, referrer, book)

    # -- orders: refunds + commission terms -> ledger ----------------------------------
    @app.agent(raw_topic("refunds", "ripple-commissions"), name="ledger")
    async def ledger_agent(stream: Any) -> None:
        async for events in stream.take_events(batch, within=within):
            await handle_ledger_batch(events)

    async def handle_ledger_batch(events: list[Any]) -> None:
        refunds = [e for e in events if e.message.topic == "refunds"]
        facts = [e for e in events if e.message.topic != "refunds"]
        items: list[tuple[str, int, dict[str, Any]]] = await decode_batch(refunds) if refunds else []
        items += [("ripple-commissions", e.message.partition, orjson.loads(e.message.value)) for e in facts]
        touched: dict[str, tuple[int, dict[str, Any]]] = {}
        changed: set[str] = set()
        for topic, partition, item in items:
            order_id = item["order_id"]
            entry = touched.get(order_id)
            ledger = entry[1] if entry else order_state.data.get(order_id.encode()) or comm.new_ledger(partition)
            touched[order_id] = (partition, ledger)
            if topic == "refunds":
                if comm.ledger_add_refund(ledger, item):
                    changed.add(order_id)
            elif comm.ledger_set_commission(ledger, item):
                changed.add(order_id)
            order_clock.advance(partition, item["ts"])
        for partition in {p for p, _ in touched.values()}:
            for order_id in pending_due(partition):
                entry = touched.get(order_id)
                ledger = entry[1] if entry else order_state.data.get(order_id.encode())
                if ledger is None:
                    continue
                ledger["approved"] = True
                touched[order_id] = (partition, ledger)
                changed.add(order_id)
        for order_id in sorted(changed):
            partition, ledger = touched[order_id]
            if ledger["c"]:
                for e in comm.ledger_entries(order_id, ledger):
                    await send(out["commission_ledger"], e["entry_id"], e, "commission_ledger")
                end = comm.hold_end(ledger)
                if not ledger["approved"] and end is not None:
                    pending.setdefault(partition, {})[order_id] = end
        for order_id, (partition, ledger) in touched.items():
            table_put(order_state, partition, order_id, ledger)
        order_clock.persist(p for p, _ in touched.values())

    pending: dict[int, dict[str, int]] = {}  # partition -> order_id -> hold end (event time)
    pending_loaded: set[int] = set()

    def pending_due(partition: int) -> list[str]:
        if partition not in pending_loaded:
            # after a start or a rebalance: rebuild the index from the recovered table
            pending_loaded.add(partition)
            for key, ledger in list(order_state.data.items()):
                if isinstance(ledger, dict) and ledger.get("p") == partition and not ledger.get("approved"):
                    end = comm.hold_end(ledger)
                    if end is not None:
                        pending.setdefault(partition, {})[key.decode()] = end
        now = order_clock.get(partition)
        due = [o for o, end in pending.get(partition, {}).items() if end <= now]
        for o in due:
            del pending[partition][o]
        return due

    # -- reference topics: validated for the dead-letter topic --------------------------
    @app.agent(raw_topic("codes", "creators"), name="reference")
    async def reference_agent(stream: Any) -> None:
        async for events in stream.take_events(batch, within=within):
            await decode_batch(events)

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        body, content_type = metrics.render()
        return web.bytes(body, content_type=content_type)

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        assignment = sorted(f"{tp.topic}:{tp.partition}" for tp in app.consumer.assignment())
        return web.json({"status": "ok", "assigned": assignment, "stream_time": visitor_clock.times})

    return app
