"""The worker's producer: librdkafka (confluent-kafka) under the event loop.

Every batch of every agent hands its outputs and changelog records to one producer. The
aiokafka producer Faust configures spends ~13 µs of the event loop's thread per message
(request building, lz4, a future and a callback each); librdkafka batches, compresses and
sends in its own threads, and ``produce`` costs ~1.5 µs. Acknowledgements are counted per
:class:`Ticket` (one per batch and kind) by a thread that serves the delivery callbacks,
and wake the event loop once per ticket, not per message.

A message that cannot be delivered (after the producer's retries) stops the process
before anything else is committed: its batch is read again after a restart, and every
output is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Iterable
from typing import Any, NoReturn

from confluent_kafka import KafkaError

from streams.producer import Producer, QueueFull, Record

log = logging.getLogger("ripple.worker")

#: how long a full producer queue or an unacknowledged batch is waited for before the
#: worker exits (the broker is gone; a restart reads the batch again)
DELIVERY_TIMEOUT_S = 60.0


#: the worker's producer tuning, on top of :func:`streams.kafka.producer_config`
PRODUCER_TUNING: dict[str, Any] = {
    "linger.ms": 5,
    "batch.size": 1_048_576,
    "queue.buffering.max.kbytes": 256 * 1024,
    "queue.buffering.max.messages": 1_000_000,
    "delivery.timeout.ms": int(DELIVERY_TIMEOUT_S * 1000),
    "logger": logging.getLogger("ripple.kafka"),
}


def _fatal(what: str) -> NoReturn:
    log.critical("%s; exiting so the batch is read again after a restart", what)
    logging.shutdown()
    os._exit(70)


class Ticket:
    """The messages of one hand-over; ``done`` resolves once every one is acknowledged."""

    __slots__ = ("_lock", "_loop", "_owner", "done", "pending", "sealed")

    def __init__(self, owner: Outbound, loop: asyncio.AbstractEventLoop) -> None:
        self._owner = owner
        self._loop = loop
        self._lock = owner.lock
        self.done: asyncio.Future[None] = loop.create_future()
        self.pending = 0
        self.sealed = False

    def delivered(self, error: KafkaError | None, _msg: Any) -> None:
        """librdkafka's delivery callback, on the polling thread."""
        if error is not None:
            _fatal(f"a record could not be delivered ({error.str()})")
        with self._lock:
            self.pending -= 1
            finished = self.sealed and self.pending == 0
        if finished:
            self._loop.call_soon_threadsafe(self._finish)

    def seal(self, handed: int) -> None:
        """No more messages after these ``handed`` over: ``done`` resolves once all are
        acknowledged (acknowledgements counted before this took ``pending`` below zero)."""
        with self._lock:
            self.pending += handed
            self.sealed = True
            finished = self.pending == 0
        if finished:
            self._finish()

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)
        self._owner.open.discard(self)


class Outbound:
    """One librdkafka producer for the worker's agents; ``flush`` waits for every ticket
    handed over so far (Faust calls it before it commits offsets)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.producer = Producer(config, "ripple-producer")  # connects on first use
        self.lock = threading.Lock()
        self.open: set[Ticket] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def close(self) -> None:
        """Stop serving callbacks and let the producer go (what was not acknowledged is lost:
        flush first). A worker never needs it: Faust flushes before it stops, then it exits."""
        self.producer.close()

    async def send(self, records: Iterable[Record]) -> Ticket:
        """Hand records to the producer, in order; the ticket resolves once all are in the
        broker. Waits (without blocking the loop) while the producer's queue is full."""
        self.producer.client()  # raises once closed
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        ticket = Ticket(self, self._loop)
        self.open.add(ticket)
        try:
            handed = await self.producer.produce(records, ticket.delivered, DELIVERY_TIMEOUT_S)
        except QueueFull:  # the broker is slow or gone
            _fatal(f"the producer's queue stayed full for {DELIVERY_TIMEOUT_S:.0f} s")
        ticket.seal(handed)
        return ticket

    async def wait(self, tickets: Iterable[Ticket]) -> None:
        """Return once these tickets' records are in the broker (exits after the timeout)."""
        pending = [t.done for t in tickets if not t.done.done()]
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=DELIVERY_TIMEOUT_S)
        if late:
            _fatal(f"{len(late)} batches undelivered after {DELIVERY_TIMEOUT_S:.0f} s")

    async def flush(self) -> None:
        """Return once everything handed over before this call is in the broker."""
        await self.wait(list(self.open))
