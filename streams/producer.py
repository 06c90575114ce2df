"""The producer the worker and the collector send with: confluent-kafka under the asyncio
event loop (see :class:`Producer`); its properties come from
:func:`streams.kafka.producer_config`."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import confluent_kafka
from confluent_kafka import KafkaError

#: (topic, value, key, partition or None for the key's partition)
Record = tuple[str, bytes, bytes, int | None]
#: librdkafka's delivery callback: (error or None, message), on the producer's polling thread
OnDelivery = Callable[[KafkaError | None, Any], None]


class QueueFull(Exception):
    """The producer's queue stayed full for longer than the sender would wait."""


class Producer:
    """A confluent-kafka producer under an asyncio event loop: records are handed over on
    the loop without blocking it, and a thread of its own serves the delivery callbacks.
    Each sender passes the callback: one for a whole batch (the worker's :class:`Ticket`
    counts them) or one per message (the collector's futures); what a failure means is
    the sender's to decide.

    The librdkafka producer is made on first use, so a process that never sends never
    connects."""

    def __init__(self, config: dict[str, Any], thread_name: str) -> None:
        self.config = config
        self._producer: confluent_kafka.Producer | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name=thread_name, daemon=True)

    def client(self) -> confluent_kafka.Producer:
        """The librdkafka producer, made (and its callbacks served) from the first call."""
        if self._stop.is_set():
            raise RuntimeError("the producer is closed")
        if self._producer is None:
            self._producer = confluent_kafka.Producer(self.config)
            self._thread.start()
        return self._producer

    def _poll(self) -> None:
        producer = self._producer
        assert producer is not None
        while not self._stop.is_set():
            producer.poll(0.1)

    async def produce(self, records: Iterable[Record], on_delivery: OnDelivery, patience_s: float) -> int:
        """Hand ``records`` to the producer, in order, each with ``on_delivery``; return how
        many. While the queue is full (the broker is slow or gone) a record waits without
        blocking the loop, for at most ``patience_s`` from the first refusal, then
        :class:`QueueFull` is raised (the records before it are handed over)."""
        produce = self.client().produce
        handed = 0
        for topic, value, key, partition in records:
            handed += 1
            deadline = 0.0
            while True:
                try:
                    if partition is None:
                        produce(topic, value, key, on_delivery=on_delivery)
                    else:
                        produce(topic, value, key, partition, on_delivery=on_delivery)
                    break
                except BufferError:
                    deadline = deadline or time.monotonic() + patience_s
                    if time.monotonic() > deadline:
                        raise QueueFull from None
                    await asyncio.sleep(0.01)
        return handed

    def queued(self) -> int:
        """Messages not yet acknowledged (or failed)."""
        return len(self._producer) if self._producer is not None else 0

    def close(self, flush_s: float | None = None) -> int:
        """Stop serving callbacks and let the producer go; with ``flush_s``, first deliver
        what is queued for at most that long. Returns what was left undelivered (what was
        not acknowledged is lost)."""
        left = 0
        if flush_s is not None and self._producer is not None:
            left = int(self._producer.flush(flush_s))
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._producer = None
        return left
