"""The collector's Kafka side: the reader of the ``codes`` topic and the producer that
acknowledges each request once the broker has its events."""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from ripple.collector.base import ACK_TIMEOUT_S, CollectorError, say
from ripple.collector.intake import (
    TOPICS,
    Message,
)
from ripple.config import Settings
from streams.events import decode, message_time
from streams.kafka import producer_config
from streams.producer import Producer, QueueFull
from streams.reference import Code, ReferenceData


# -- the codes topic ----------------------------------------------------------------------
class CodeBook:
    """Every referral code, read from the compacted ``codes`` topic from its beginning and
    then continuously, in a thread, with the workers' decoding. No consumer group: nothing
    is committed.

    "Caught up" means every partition was read to the end offset the broker reported at
    start; the embedded broker can report less than the true end (see
    ``streams.reference_reader.ReferenceReader._true_ends``), and reading goes on regardless."""

    def __init__(self, settings: Settings) -> None:
        assert settings.bootstrap is not None
        self.data = ReferenceData()
        self.consumer = Consumer(
            {
                "bootstrap.servers": settings.bootstrap,
                **settings.kafka.confluent(),
                "group.id": f"ripple-collector-{secrets.token_hex(4)}",  # required; never joined or committed
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "fetch.wait.max.ms": 200,
                # the embedded broker returns nothing for a batch larger than this
                "max.partition.fetch.bytes": 2 * 1024 * 1024,
                "logger": logging.getLogger("ripple.kafka"),
            }
        )
        self.caught_up = threading.Event()
        self._ends: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="collector-codes", daemon=True)

    def start(self) -> None:
        meta = self.consumer.list_topics("codes", timeout=10)
        topic = meta.topics.get("codes")
        if topic is None or topic.error is not None or not topic.partitions:
            raise CollectorError("topic codes does not exist: create the topics first (ripple up, worker or sink)")
        parts = sorted(topic.partitions)
        for p in parts:
            _, high = self.consumer.get_watermark_offsets(TopicPartition("codes", p), timeout=10, cached=False)
            if high > 0:
                self._ends[p] = high
        self.consumer.assign([TopicPartition("codes", p, OFFSET_BEGINNING) for p in parts])
        if not self._ends:
            self.caught_up.set()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self.consumer.poll(0.2)
            except Exception as exc:  # the consumer is closing
                say(logging.WARNING, "codes_read_failed", error=type(exc).__name__)
                return
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    say(logging.WARNING, "codes_read_error", error=error.str())
                continue
            _, stamp = msg.timestamp()
            good, _ = decode("codes", msg.value(), message_time(stamp, int(time.time() * 1000)))
            for event in good:
                self.data.apply("codes", event)
            partition, offset = msg.partition(), msg.offset()
            if partition is None or offset is None:
                continue
            end = self._ends.get(partition)
            if end is not None and offset + 1 >= end:
                del self._ends[partition]
                if not self._ends:
                    self.caught_up.set()
                    say(logging.INFO, "codes_loaded", codes=len(self.data.codes))

    def lookup(self, code: str, now_ms: int) -> Code | None:
        """The code's record when it is active and not expired at ``now_ms``, else None
        (codes are case-insensitive)."""
        found = self.data.codes.get(code.lower())
        if found is None or not found.active:
            return None
        if found.expires_ts is not None and now_ms >= found.expires_ts:
            return None
        return found

    def __len__(self) -> int:
        return len(self.data.codes)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.consumer.close()


# -- the producer -----------------------------------------------------------------------------
def producer_tuning(settings: Settings) -> dict[str, Any]:
    """The collector's producer tuning, on top of :func:`streams.kafka.producer_config`."""
    # partitions are chosen here (murmur2, as the workers compute them); for any message
    # without one, the producer places it the same way
    return {
        "linger.ms": settings.collector_linger_ms,
        "batch.size": 512 * 1024,
        "delivery.timeout.ms": 10_000,  # a request learns within this that the broker is not there
        "queue.buffering.max.kbytes": 64 * 1024,
        "logger": logging.getLogger("ripple.kafka"),
    }


class Delivery:
    """The collector's :class:`~streams.producer.Producer`, acknowledged per message: each
    message's future ends with its acknowledgement or its error (a failure is the
    request's, answered 503; the process goes on)."""

    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop) -> None:
        assert settings.bootstrap is not None
        config = producer_config(settings.bootstrap, settings.kafka, producer_tuning(settings))
        self.producer = Producer(config, "collector-producer")
        self.loop = loop
        self.partitions: dict[str, int] = {}

    def start(self) -> None:
        self.refresh_partitions()
        missing = [t for t in TOPICS.values() if t not in self.partitions]
        if missing:
            raise CollectorError(f"topics {', '.join(missing)} do not exist: create the topics first")

    def refresh_partitions(self) -> None:
        meta = self.producer.client().list_topics(timeout=10)
        for topic in TOPICS.values():
            info = meta.topics.get(topic)
            if info is not None and info.error is None and info.partitions:
                self.partitions[topic] = len(info.partitions)

    async def send(self, message: Message) -> asyncio.Future[None]:
        """Hand one message to the producer; the future ends with its acknowledgement (or
        the producer's error). Waits while the producer's queue is full, for at most the
        acknowledgement timeout."""
        future: asyncio.Future[None] = self.loop.create_future()

        def settle(error: KafkaError | None) -> None:
            if future.done():
                return
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(RuntimeError(error.str()))

        def delivered(error: KafkaError | None, _: Any) -> None:
            self.loop.call_soon_threadsafe(settle, error)

        record = (message.topic, message.value, message.key, message.partition)
        try:
            await self.producer.produce([record], delivered, ACK_TIMEOUT_S)
        except QueueFull:
            future.set_exception(RuntimeError("the producer's queue stayed full"))
        return future

    async def send_all(self, batch: list[Message], timeout: float = ACK_TIMEOUT_S) -> list[Message]:
        """Send every message; return those the broker did not acknowledge in time."""
        futures = [await self.send(m) for m in batch]
        if not futures:
            return []
        done, _ = await asyncio.wait(futures, timeout=timeout)
        failed = [m for m, f in zip(batch, futures, strict=True) if f not in done or f.exception() is not None]
        for m, f in zip(batch, futures, strict=True):
            if f.done() and f.exception() is not None:
                say(logging.WARNING, "delivery_failed", topic=m.topic, partition=m.partition, error=f.exception())
            elif not f.done():
                say(logging.WARNING, "delivery_timeout", topic=m.topic, partition=m.partition)
        return failed

    def queued(self) -> int:
        return self.producer.queued()

    def close(self, timeout: float = 10.0) -> int:
        """Deliver what is queued (for at most ``timeout`` seconds); return what was left."""
        return self.producer.close(timeout)
