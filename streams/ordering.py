"""Timestamp-ordered processing of a task's inputs (SPEC §3.5). Pure logic: no Faust or Kafka.

A *task* is one partition number of co-partitioned topics (``views``, ``clicks``, ``orders``
and the flood verdicts for the visitors; ``refunds`` and commission terms for the ledger).
A consumer fetches those partitions at different paces — in a backlog the smallest topic
runs days ahead of the largest — so processing records as they are delivered would move
stream time ahead of the data and turn on-time events into late ones.

:class:`TaskQueues` buffers each partition's records in offset order and hands them out as
Kafka Streams' ``PartitionGroup`` does: always the head record with the lowest ``ts`` among
the task's partitions. While a partition has nothing buffered but has records in Kafka not
delivered yet (``lagging``), the task waits for it: as Kafka Streams since KIP-695, records
known to be in Kafka are waited for until they come, however busy the consumer is (under
load a fetch can take many seconds, and a task that went on without them would turn them
into late events). Each ``max_idle_s`` (``max_task_idle``) of waiting, ``stalled`` asks the
consumer to fetch the partition; only after ``max_wait_s`` (``LAGGING_WAIT_FACTOR`` times
``max_idle_s``, two minutes by default: a consumer that cannot deliver known records for
that long is broken) does the task go on without it.

A partition that is caught up with its end offset is not waited for in live traffic. In a
backlog — the record to take is more than ``backlog_ms`` (``max_lateness``) behind the wall
clock — an empty, caught-up input in ``idle_topics`` is waited for up to ``max_idle_s``, as
Kafka Streams waits ``max.task.idle.ms`` for an empty partition: a producer sending a
backlog in bursts writes each burst's partitions a few milliseconds apart, and hours of
event time may lie in those milliseconds. The wait ends when records come; once it has run
out, the partition is not waited for again until it has had records. Stream time — the
highest ``ts`` processed — is the caller's, moved by what it takes.

Each Kafka message may hold several events (a JSON array); a message is *done* once all of
its events have been taken, and only then may its offset be acknowledged. A message with
no valid event is done once every message before it on its partition is.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

TopicPartition = tuple[str, int]

#: how many times ``max_idle_s`` a task waits for a lagging partition before it goes on
LAGGING_WAIT_FACTOR = 60


@dataclass(eq=False)
class Message:
    """One Kafka message in a task's buffer; ``token`` is the caller's (what it acks)."""

    topic: str
    partition: int
    offset: int
    token: Any
    left: int = 0  # events not taken yet


class Taken(NamedTuple):
    """One event to process now, in order; ``done`` is its message once all of it is taken."""

    topic: str
    partition: int
    ts: int
    event: Any
    done: tuple[Message, ...]


@dataclass
class _Task:
    queues: dict[str, deque[tuple[int, Any, Message]]]
    #: since when (the caller's clock, seconds) each empty partition with records in Kafka
    #: has been waited for; kept until its records come or it is caught up
    waiting: dict[str, float] = field(default_factory=dict)
    #: when ``stalled`` was last called for each waited-for partition
    asked: dict[str, float] = field(default_factory=dict)
    #: whether the task goes on without a lagging partition now, and how often that began
    enforcing: bool = False
    enforced: int = 0
    #: until when (the caller's clock) each empty, caught-up input is waited for in a backlog
    idle_until: dict[str, float] = field(default_factory=dict)


@dataclass
class TaskQueues:
    """Buffers of a worker's tasks over ``topics``; see the module's docstring. Events
    of the same ``ts`` are taken in the order of ``topics``.

    ``lagging(topic, partition, next_offset)`` tells whether Kafka holds records of the
    partition from ``next_offset`` on (``next_offset`` None: nothing delivered yet since the
    last :meth:`clear`); ``stalled(topic, partition)`` is called each ``max_idle_s`` that a
    lagging partition has been waited for."""

    topics: tuple[str, ...]
    max_idle_s: float
    lagging: Callable[[str, int, int | None], bool]
    stalled: Callable[[str, int], None] = lambda _topic, _partition: None
    #: a partition holding more buffered events than this should stop fetching (see :meth:`full`)
    max_buffered: int = 2000
    #: a record this far behind the wall clock is a backlog's (0: caught-up inputs are never waited for)
    backlog_ms: int = 0
    #: the inputs whose caught-up emptiness is waited for in a backlog
    idle_topics: frozenset[str] = frozenset()
    #: the wall clock, ms
    wall_ms: Callable[[], float] = lambda: time.time() * 1000
    tasks: dict[int, _Task] = field(default_factory=dict)
    #: the next offset expected per partition: what was delivered, plus one
    next_offset: dict[TopicPartition, int] = field(default_factory=dict)

    @property
    def max_wait_s(self) -> float:
        """How long a lagging partition is waited for before the task goes on without it."""
        return self.max_idle_s * LAGGING_WAIT_FACTOR

    def _task(self, partition: int) -> _Task:
        task = self.tasks.get(partition)
        if task is None:
            task = self.tasks[partition] = _Task({t: deque() for t in self.topics})
        return task

    def add(
        self,
        topic: str,
        partition: int,
        offset: int,
        events: Iterable[tuple[int, Any]],
        token: Any,
        again: bool = False,
    ) -> list[Message]:
        """Buffer one message's events (``(ts, event)`` in the message's order); return the
        messages that are done already (this one, when it holds no event and nothing is
        ahead of it). A message delivered again (an offset already buffered) is ignored,
        unless ``again``: it was delivered once and never handled (nothing of its partition
        is buffered), and is taken now."""
        tp = (topic, partition)
        expected = self.next_offset.get(tp)
        if expected is not None and offset < expected and not again:
            return []
        self.next_offset[tp] = offset + 1 if expected is None else max(expected, offset + 1)
        queue = self._task(partition).queues[topic]
        message = Message(topic, partition, offset, token)
        for ts, event in events:
            queue.append((ts, event, message))
            message.left += 1
        if message.left == 0:
            if not queue:
                return [message]
            queue.append((_PLACEHOLDER, None, message))  # done when the events before it are
        return []

    def take(self, now: float, limit: int = 1_000_000) -> list[Taken]:
        """Every event that can be processed now, in the order to process them."""
        out: list[Taken] = []
        for partition in sorted(self.tasks):
            self._take_task(partition, self.tasks[partition], now, out, limit)
        return out

    def _take_task(self, partition: int, task: _Task, now: float, out: list[Taken], limit: int) -> None:
        queues, waiting, idle_until = list(task.queues.items()), task.waiting, task.idle_until
        lagging: dict[str, bool] = {}  # asked once per call: nothing is delivered meanwhile
        backlog_before = self.wall_ms() - self.backlog_ms if self.backlog_ms > 0 and self.max_idle_s > 0 else None
        while len(out) < limit:
            best: deque[tuple[int, Any, Message]] | None = None
            best_ts, best_topic = 0, ""
            caught_up: list[str] = []
            for topic, q in queues:  # on a tie the first of ``topics``: a click before its order
                if q:
                    ts = q[0][0]
                    if best is None or ts < best_ts:
                        best, best_ts, best_topic = q, ts, topic
                    if waiting:
                        waiting.pop(topic, None)
                    if idle_until:
                        idle_until.pop(topic, None)
                    continue
                behind = lagging.get(topic)
                if behind is None:
                    behind = lagging[topic] = self.lagging(topic, partition, self.next_offset.get((topic, partition)))
                if behind:
                    since = waiting.setdefault(topic, now)
                    if now - max(since, task.asked.get(topic, since)) >= self.max_idle_s > 0:
                        task.asked[topic] = now
                        self.stalled(topic, partition)
                else:
                    if waiting:
                        waiting.pop(topic, None)
                    if topic in self.idle_topics:
                        caught_up.append(topic)
            if not waiting:
                task.enforcing = False
                task.asked.clear()
            if best is None:
                return
            if backlog_before is not None and caught_up and best_ts < backlog_before:
                # a backlog's record: an empty input may only be a few milliseconds behind
                deadlines = [idle_until.setdefault(topic, now + self.max_idle_s) for topic in caught_up]
                if any(now < deadline for deadline in deadlines):
                    return
            if waiting:
                if any(now - since < self.max_wait_s for since in waiting.values()):
                    return  # wait for the lagging partitions' records
                if not task.enforcing:
                    task.enforcing = True
                    task.enforced += 1  # going on without them: their records may come late
            ts, event, message = best.popleft()
            message.left -= 1
            if message.left:
                done: tuple[Message, ...] = ()
            elif not best or best[0][0] != _PLACEHOLDER:
                done = (message,)
            else:
                finished = [message]
                while best and best[0][0] == _PLACEHOLDER:  # messages without events behind it
                    finished.append(best.popleft()[2])
                done = tuple(finished)
            out.append(Taken(best_topic, partition, ts, event, done))

    def idle_seconds(self, partition: int, now: float) -> float:
        """How long the task has waited for a lagging partition (0 when it does not wait)."""
        task = self.tasks.get(partition)
        if task is None or not task.waiting:
            return 0.0
        return max(0.0, now - min(task.waiting.values()))

    def waiting_for(self, partition: int) -> list[str]:
        """The task's empty partitions with records in Kafka not delivered yet."""
        task = self.tasks.get(partition)
        return sorted(task.waiting) if task else []

    def buffered(self, partition: int) -> int:
        task = self.tasks.get(partition)
        return sum(len(q) for q in task.queues.values()) if task else 0

    def full(self) -> set[TopicPartition]:
        """Partitions with more than ``max_buffered`` events waiting: pause their fetching
        until :meth:`full` no longer names them (as Kafka Streams' ``buffered.records.per.partition``)."""
        return {
            (topic, partition)
            for partition, task in self.tasks.items()
            for topic, q in task.queues.items()
            if len(q) > self.max_buffered
        }

    def forget(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Drop what is buffered (of ``partitions``, or all): after a rebalance the consumer
        reads again from the committed offsets, so these records come again."""
        if partitions is None:
            self.tasks.clear()
            self.next_offset.clear()
            return
        for topic, partition in partitions:
            self.next_offset.pop((topic, partition), None)
            task = self.tasks.get(partition)
            if task is not None:
                task.queues[topic].clear()


#: the ``ts`` of a message without events in a queue: never compared (taken with the one before)
_PLACEHOLDER = -(2**63)
