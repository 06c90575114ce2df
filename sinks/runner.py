"""The sink process: consumes raw input and output topics, writes ClickHouse in batches.

Batching contract: rows are added per table; a flush writes every table's buffer and only
then commits the consumed offsets, so a crash replays at most the unflushed batch. Replays
collapse in ReplacingMergeTree tables on their natural keys. When ClickHouse refuses a
write the sink stops consuming (backpressure), keeps its buffer and retries with backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, TopicPartition

from sinks.clickhouse import ClickHouse, ClickHouseUnavailable
from sinks.tables import rows_for_message
from streams.metrics import SinkMetrics
from streams.topics import INPUT_TOPICS, OUTPUT_TOPICS

if TYPE_CHECKING:  # the settings are ripple's: sinks never imports ripple at run time
    from ripple.config import Settings

log = logging.getLogger("ripple.sink")

SINK_GROUP = "ripple-sink"
SINK_TOPICS = (*INPUT_TOPICS, *OUTPUT_TOPICS)


def _epoch_ms(ts: Any) -> float:
    """A row's ``ts``: epoch milliseconds, or a datetime once converted for the insert."""
    return float(ts.timestamp() * 1000) if hasattr(ts, "timestamp") else float(ts)


class Sink:
    def __init__(self, settings: Settings, clickhouse: ClickHouse, metrics: SinkMetrics | None = None) -> None:
        self.settings = settings
        self.ch = clickhouse
        self.metrics = metrics or SinkMetrics()
        self.buffers: dict[str, tuple[tuple[str, ...], list[tuple[Any, ...]]]] = {}
        self.pending_offsets: dict[tuple[str, int], int] = {}
        self.flushed_offsets: dict[str, dict[int, int]] = defaultdict(dict)
        self.buffered_rows = 0
        self.written: dict[str, int] = defaultdict(int)  # rows per table since start
        self.last_flush = time.monotonic()
        self.stopping = threading.Event()
        self.consumer = Consumer(
            {
                "bootstrap.servers": settings.bootstrap,
                **settings.kafka.confluent(),
                "group.id": SINK_GROUP,
                "group.instance.id": settings.group_instance_id("sink"),
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 2000,
                # while ClickHouse refuses writes the sink retries without reading (backpressure):
                # it stays in its group however long that takes, and reads on where it stopped
                "max.poll.interval.ms": 86_400_000,
                "fetch.max.bytes": 64 * 1024 * 1024,
                # the embedded broker answers a fetch only once this wait is over (Kafka: as
                # soon as records arrive); librdkafka's 500 ms would add 0.25 s to every row
                "fetch.wait.max.ms": settings.fetch_wait_ms,
                "queued.max.messages.kbytes": 262144,
                "logger": logging.getLogger("ripple.kafka"),
            }
        )

    # -- batching contract ---------------------------------------------------------
    def add(self, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        buf = self.buffers.setdefault(table, (columns, []))
        buf[1].extend(rows)
        self.buffered_rows += len(rows)
        self.metrics.pending_rows.set(self.buffered_rows)

    def flush(self) -> None:
        """Write every buffer, then commit. Raises :class:`ClickHouseUnavailable`."""
        for table, (columns, rows) in list(self.buffers.items()):
            if not rows:
                continue
            try:
                seconds = self.ch.insert(table, rows, columns)
            except ClickHouseUnavailable:
                self.metrics.failures.inc()
                raise
            self.metrics.insert_seconds.observe(seconds)
            self.metrics.batch_rows.observe(len(rows))
            if table == "attributions":
                now_ms = time.time() * 1000
                ts_at = columns.index("ts")
                for row in rows[:: max(1, len(rows) // 1000)]:  # a sample: at most ~1000 per insert
                    self.metrics.visible_latency.observe(max(0.0, (now_ms - _epoch_ms(row[ts_at])) / 1000))
            self.metrics.rows.labels(table).inc(len(rows))
            self.written[table] += len(rows)
            self.metrics.batches.labels(table).inc()
            del self.buffers[table]
        self.buffered_rows = 0
        self.metrics.pending_rows.set(0)
        self.last_flush = time.monotonic()
        if self.pending_offsets:
            offsets = [TopicPartition(t, p, o + 1) for (t, p), o in self.pending_offsets.items()]
            self.consumer.commit(offsets=offsets, asynchronous=False)
            for (t, p), o in self.pending_offsets.items():
                self.flushed_offsets[t][p] = o + 1
            self.pending_offsets.clear()

    # -- loop ------------------------------------------------------------------------
    def run(self, drain_seconds: float = 3.0) -> None:
        """Consume until :meth:`stop`; then drain what is left (bounded) and flush."""
        self.consumer.subscribe(list(SINK_TOPICS))
        batch_s = self.settings.sink_batch_ms / 1000
        try:
            while not self.stopping.is_set():
                self._step(batch_s)
            deadline = time.monotonic() + drain_seconds
            quiet_since = time.monotonic()
            while time.monotonic() < deadline and time.monotonic() - quiet_since < 0.5:
                if self._step(0.1, force_flush=True):
                    quiet_since = time.monotonic()
            self._flush_with_retry(deadline=time.monotonic() + 3)
        finally:
            self.consumer.close()

    def stop(self) -> None:
        self.stopping.set()

    def _step(self, batch_s: float, force_flush: bool = False) -> int:
        """Consume one round; flush when due. Returns the number of messages read."""
        # consume() waits its whole timeout unless it fills up: never wait past a flush that is due
        until_due = self.last_flush + batch_s - time.monotonic() if self.pending_offsets else batch_s
        # read no more messages than one batch has rows: what waits for a slow ClickHouse stays in Kafka
        most = min(10_000, self.settings.sink_batch_rows)
        messages = self.consumer.consume(num_messages=most, timeout=max(0.01, min(until_due, 0.5)))
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error: %s", err)
                continue
            topic = str(msg.topic())
            headers = msg.headers()
            table, columns, rows = rows_for_message(
                topic,
                msg.value(),
                list(headers) if isinstance(headers, list) else None,
                msg.timestamp()[1],
                self.settings.max_future_ms,
            )
            self.add(table, columns, rows)
            self.pending_offsets[(topic, int(msg.partition() or 0))] = int(msg.offset() or 0)
        due = time.monotonic() - self.last_flush >= batch_s
        if self.pending_offsets and (force_flush or due or self.buffered_rows >= self.settings.sink_batch_rows):
            self._flush_with_retry(deadline=None)
        return len(messages)

    def _flush_with_retry(self, deadline: float | None) -> None:
        backoff = 0.5
        while True:
            try:
                self.flush()
                self.metrics.backpressure.set(0)
                return
            except ClickHouseUnavailable as exc:
                # nothing is consumed while the insert is retried: the buffer stays bounded
                self.metrics.backpressure.set(1)
                log.warning("%s; retrying in %.1f s", exc, backoff)
                if deadline is not None and time.monotonic() + backoff > deadline:
                    raise
                if self.stopping.is_set() and deadline is None:
                    raise
                time.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    def status(self) -> dict[str, Any]:
        return {"flushed_offsets": {t: dict(p) for t, p in self.flushed_offsets.items()}}
