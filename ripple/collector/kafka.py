"""The collector's Kafka side: the producer that acknowledges each request once the broker
has its events, and the reader of the ``codes`` topic (the workers' reader of the reference
topics, :class:`streams.reference_reader.ReferenceReader`, on ``codes`` only)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka.errors import KafkaError as AIOKafkaError
from confluent_kafka import KafkaError

from ripple.collector.base import ACK_TIMEOUT_S, CollectorError, say
from ripple.collector.intake import (
    TOPICS,
    Message,
)
from ripple.config import Settings
from streams.kafka import producer_config
from streams.producer import Producer, QueueFull
from streams.reference import ReferenceData
from streams.reference_reader import ReferenceReader


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


async def read_codes(settings: Settings) -> ReferenceReader:
    """Every referral code, read from the compacted ``codes`` topic from its beginning (this
    returns once what the topic held at start is read) and then continuously."""
    assert settings.bootstrap is not None
    codes = ReferenceReader(
        settings.bootstrap, ReferenceData(), "ripple-collector", settings.kafka, topics=("codes",), offsets=False
    )
    try:
        await codes.start()
    except AIOKafkaError as exc:
        await codes.stop()
        raise CollectorError(f"cannot read the codes topic from {settings.bootstrap}: {exc}") from None
    if "codes" not in codes.reading():
        await codes.stop()
        raise CollectorError("topic codes does not exist: create the topics first (ripple up, worker or sink)")
    say(logging.INFO, "codes_loaded", codes=len(codes.data.codes))
    return codes
