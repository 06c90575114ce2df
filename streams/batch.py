"""What one batch of an agent sends: its outputs grouped into one message per topic and
partition, its state changes after them, its input offsets and acknowledgements last
(:class:`Outbox`); each task's stream time and handled positions (:class:`StreamClock`);
the grouping of records into messages both ways; running a batch so that a failure is
read again, never acked (:class:`Guard`); and decoding raw input, dead-lettering what is
invalid (:class:`Intake`)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson

from streams.events import Rejected, decode, message_time
from streams.kafka import Arrays, json_array
from streams.metrics import WorkerMetrics
from streams.ordered_input import OrderedInput
from streams.outbound import Outbound
from streams.partitioner import partition_of
from streams.producer import Record
from streams.records import encode as encode_state
from streams.referrer import Output
from streams.topics import INTERNAL_TOPICS

log = logging.getLogger("ripple.worker")

#: the key prefix of a task's stream clock in its agent's table
STREAM_TIME_KEY = "\x00stream_time"
#: an outgoing message holds records up to about this many bytes (brokers refuse 1 MB by default)
CHUNK_BYTES = 256 * 1024


def _chunks(records: list[tuple[str, bytes]]) -> list[list[tuple[str, bytes]]]:
    """(key, value) records of one topic partition, cut into messages of about CHUNK_BYTES."""
    arrays: Arrays[tuple[str, bytes]] = Arrays(
        max_bytes=CHUNK_BYTES, size=lambda r: len(r[1]), overhead=lambda r: len(r[0]) + 8
    )
    return arrays.split(records)


def keyed_records(msg: Any) -> list[tuple[str, Any]]:
    """The (key, record) pairs of a message of an internal topic: ``[[key, record], ...]``,
    or one record (or an array of records) of the message's key."""
    value = orjson.loads(msg.value)
    if isinstance(value, list) and value and isinstance(value[0], list):
        return [(key, record) for key, record in value]
    key = msg.key.decode()
    return [(key, record) for record in (value if isinstance(value, list) else [value])]


def topic_updates(events: Iterable[Any], box: Outbox) -> list[tuple[int, str, str, Any]]:
    """The ``(partition, topic, key, record)`` updates of a batch of internal-topic
    messages, in order; each message counts as read in ``box``."""
    updates: list[tuple[int, str, str, Any]] = []
    for ev in events:
        msg = ev.message
        box.read(msg)
        updates.extend((msg.partition, msg.topic, key, record) for key, record in keyed_records(msg))
    return updates


def keyed_updates(events: Iterable[Any], box: Outbox) -> list[tuple[int, str, Any]]:
    """:func:`topic_updates` without the topic (an agent that reads one topic)."""
    return [(partition, key, record) for partition, _, key, record in topic_updates(events, box)]


def held(touched: dict[str, tuple[int, Any]], table: Any, key: str) -> Any:
    """The state of ``key``: the copy this batch is changing, else the table's (or None)."""
    entry = touched.get(key)
    return entry[1] if entry else table.data.get(key.encode()) or None


class Outbox:
    """What one batch sends, sent when the batch ends: one message per topic and partition.

    The cost of producing is per message, so records are grouped: internal topics
    (between the worker's agents) carry ``[[key, record], ...]`` in the partition of
    their keys (the partition that holds each key's state downstream), output topics
    a JSON array of rows (the sink needs no key). State changes go to the tables'
    changelogs in the same flush, once the broker has the outputs. The batch's input
    offsets count as processed only once its outputs are with the producer, which is
    what ``Settled`` (in the app) relies on."""

    def __init__(
        self,
        partitions: int,
        outbound: Outbound,
        metrics: WorkerMetrics,
        changelogs: dict[int, str],
        processed: dict[tuple[str, int], int],
    ) -> None:
        """``changelogs``: each state table's changelog topic by ``id(table)``; ``processed``:
        the last offset handled per input partition, updated by :meth:`flush`."""
        self.partitions = partitions
        self.outbound = outbound
        self.metrics = metrics
        self.changelogs = changelogs
        self.processed = processed
        self.records: dict[tuple[str, int], list[tuple[str, bytes]]] = {}
        self.changes: list[tuple[str, int, bytes, bytes]] = []  # changelog topic, partition, key, value
        self.offsets: dict[tuple[str, int], int] = {}
        self.acks: list[tuple[Any, Any]] = []  # (stream, event) to acknowledge after the flush

    def read(self, msg: Any) -> None:
        self.offsets[(msg.topic, msg.partition)] = msg.offset

    def finish(self, source: OrderedInput, event: Any) -> None:
        """An ordered input's message is handled: processed, and acknowledged once what
        the batch produced is with the producer."""
        self.read(event.message)
        self.acks.append((source.stream, event))

    def add(self, topic: str, key: str, value: Any) -> None:
        partition = partition_of(key, self.partitions)
        self.records.setdefault((topic, partition), []).append((key, orjson.dumps(value)))

    def emit(self, outputs: Iterable[Output]) -> None:
        for topic, key, value in outputs:
            self.add(topic, key, value)

    def put(self, table: Any, partition: int, key: str, value: Any) -> None:
        """Set a key of a state table; its changelog record goes with the batch's outputs.

        An explicit partition: a key's state lives in the changelog partition of the
        input partition that holds the key, whatever the batch's last event was."""
        kb = key.encode()
        if value is None:
            # No tombstone: the embedded broker hands a null value back as empty bytes,
            # which the JSON changelog cannot decode on recovery. 0 reads as "no state".
            if table.data.pop(kb, None):
                self.changes.append((self.changelogs[id(table)], partition, kb, b"0"))
        else:
            table.data[kb] = value
            self.changes.append((self.changelogs[id(table)], partition, kb, encode_state(value)))

    async def flush(self) -> None:
        outputs: list[Record] = []
        for (name, partition), records in self.records.items():
            internal = name in INTERNAL_TOPICS
            for chunk in _chunks(records):
                key = chunk[0][0].encode()
                if internal:
                    parts = [b"[" + orjson.dumps(k) + b"," + v + b"]" for k, v in chunk]
                    outputs.append((name, json_array(parts), key, partition))
                else:  # the partition of the first row's key: any partition suits the sink
                    value = chunk[0][1] if len(chunk) == 1 else json_array(v for _, v in chunk)
                    outputs.append((name, value, key, None))
            self.metrics.rows_out.labels(name).inc(len(records))
        if outputs:
            sent = await self.outbound.send(outputs)
            if self.changes:
                # A key's new state is saved only once what the batch sent is in the broker:
                # a crash in between must not leave a state that says "sent" (a flood
                # verdict, a claim) beside outputs that never arrived. Read again after a
                # restart, the batch meets the old state and sends the same records again.
                await self.outbound.wait([sent])
        if self.changes:
            await self.outbound.send((topic, value, kb, partition) for topic, partition, kb, value in self.changes)
        self.records.clear()
        self.changes.clear()
        self.processed.update(self.offsets)
        self.offsets.clear()
        for stream, event in self.acks:
            await stream.ack(event)
        self.acks.clear()


class StreamClock:
    """Stream time per partition number, and how far each input partition of the task
    has been handled, kept in the agent's own table.

    Both go to the changelog after the batch's state, in the same partition, from an
    idempotent producer: a restored table holds exactly the effect of the events up to
    the stored positions. The consumer's committed offsets trail them (Faust commits
    every few seconds, a backlog's few seconds span hours of event time), so after a
    crash the events between the two are read again: they are skipped, not taken as
    late against a clock they already moved."""

    def __init__(self, table: Any, name: str) -> None:
        self.table = table
        self.key = STREAM_TIME_KEY + name
        self.times: dict[int, int] = {}
        self.handled: dict[int, dict[str, list[int]]] = {}  # partition -> topic -> [offset, index]

    def _load(self, partition: int) -> None:
        stored = self.table.data.get(f"{self.key}:{partition}".encode())
        if isinstance(stored, dict):
            self.times[partition] = int(stored.get("t", 0))
            self.handled[partition] = {t: list(pos) for t, pos in stored.get("at", {}).items()}
        else:  # a number: stream time only (written before positions were kept)
            self.times[partition] = int(stored) if stored is not None else 0
            self.handled[partition] = {}

    def get(self, partition: int) -> int:
        if partition not in self.times:
            self._load(partition)
        return self.times[partition]

    def replayed(self, topic: str, partition: int, position: list[int]) -> bool:
        """Whether the event at ``position`` ([offset, index in its message]) was
        handled already, its effect in the restored state."""
        if partition not in self.handled:
            self._load(partition)
        done = self.handled[partition].get(topic)
        return done is not None and position <= done

    def advance(self, partition: int, topic: str, position: list[int], ts: int | None = None) -> None:
        """The event at ``position`` is handled; an event's ``ts`` moves stream time
        (a flood verdict's does not: it speaks of a click already counted)."""
        self.times[partition] = self.get(partition) if ts is None else max(self.get(partition), ts)
        self.handled[partition][topic] = position

    def persist(self, partitions: Iterable[int], box: Outbox) -> None:
        for p in set(partitions):
            value = {"t": self.times[p], "at": self.handled[p]}
            box.put(self.table, p, f"{self.key}:{p}", value)

    def forget(self) -> None:
        """The table was recovered for a new assignment: read it again."""
        self.times.clear()
        self.handled.clear()


class Guard:
    """Runs one batch of an agent and sends what it produced; on an unexpected error it
    stops the process before anything is acked.

    Faust acks the events of an agent that raises and restarts it, which would lose the
    batch. Exiting instead leaves the batch uncommitted: the restarted worker reads it
    again (every output is idempotent)."""

    EXIT_CODE = 70

    def __init__(self, new_box: Callable[[], Outbox]) -> None:
        self.new_box = new_box
        #: where each handler is, for ``kill -USR1``: (what it does, since when, events in its batch)
        self.stage: dict[str, tuple[str, float, int]] = {}

    def mark(self, name: str, label: str, events: int) -> None:
        self.stage[name] = (label, time.time(), events)

    async def __call__(
        self,
        handler: Callable[[list[Any], Outbox], Awaitable[Any]],
        events: list[Any],
        lock: Any = None,
        name: str = "",
    ) -> None:
        """``lock``: held from the first read of state to the last changelog record sent,
        when a timer changes the same table. ``name``: what ``kill -USR1`` calls the
        handler (its function's name by default)."""
        name = name or handler.__name__
        try:
            self.mark(name, "waiting for its lock", len(events))
            async with lock or contextlib.nullcontext():
                box = self.new_box()
                self.mark(name, "handling", len(events))
                await handler(events, box)
                self.mark(name, "flushing", len(events))
                await box.flush()
            self.mark(name, "done; back in Faust's stream (ack, commit, next batch)", len(events))
        except Exception:
            log.exception("unexpected error in a batch; exiting so it is read again after a restart")
            logging.shutdown()
            os._exit(self.EXIT_CODE)


class Intake:
    """Decodes raw input messages: the valid events go on, each invalid one to the
    dead-letter topic with where it came from and why (``send``: the topic's send)."""

    def __init__(self, send: Callable[..., Awaitable[Any]], metrics: WorkerMetrics, max_future_ms: int) -> None:
        self.send = send
        self.metrics = metrics
        self.max_future_ms = max_future_ms

    async def dead_letter(self, topic: str, partition: int, offset: int, bad: Iterable[Rejected]) -> None:
        for r in bad:
            self.metrics.dead_letters.labels(topic).inc()
            await self.send(
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

    async def decode(self, msg: Any) -> list[dict[str, Any]]:
        """A message's valid events; the invalid ones go to the dead-letter topic."""
        self.metrics.messages_in.labels(msg.topic).inc()
        now_ms = message_time(msg.timestamp * 1000, int(time.time() * 1000))  # Faust: seconds
        good, bad = decode(msg.topic, msg.value, now_ms, self.max_future_ms)
        if bad:
            await self.dead_letter(msg.topic, msg.partition, msg.offset, bad)
        self.metrics.events_in.labels(msg.topic).inc(len(good))
        return good

    async def decode_batch(self, events: list[Any], box: Outbox) -> None:
        """Read a batch of messages only for its dead letters (the reference topics)."""
        for ev in events:
            box.read(ev.message)
            await self.decode(ev.message)
