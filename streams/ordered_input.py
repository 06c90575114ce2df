"""An agent's input read in event-time order per task: the Faust side of
:mod:`streams.ordering` (delivery, acknowledgement, pausing, what counts as lagging)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from faust.types import TP

from streams import faust_fixes, faust_state, ordering
from streams.metrics import WorkerMetrics
from streams.reference_reader import ReferenceReader

log = logging.getLogger("ripple.worker")


class OrderedInput:
    """An agent's input read in event-time order per task (:mod:`streams.ordering`).

    The agent's stream hands over batches of messages without acknowledging them; each is
    decoded into ``(ts, item)`` events by ``split`` and buffered per partition. Whatever
    the task may process now is given, in order, to ``handle``; a message is acknowledged
    (and counts as processed for :class:`Settled`) once all its events are handled and what
    they produced is with the producer. A partition with too much buffered stops fetching
    until the others catch up."""

    def __init__(
        self,
        app: faust.App,
        name: str,
        topics: tuple[str, ...],
        max_idle_s: float,
        metrics: WorkerMetrics,
        ends: ReferenceReader,
    ) -> None:
        self.app = app
        self.ends = ends
        #: the broker reports a partition's end as its last batch's first offset + 1 (the
        #: embedded broker does; Kafka reports the true end): seen once a delivered offset
        #: passes the reported end
        self.batch_ends = False
        self.name = name
        self.queues = ordering.TaskQueues(topics, max_idle_s, self._lagging, self._fetch_again)
        self.metrics = metrics
        self.stream: Any = None
        self.paused: set[tuple[str, int]] = set()
        #: resumed, nothing delivered since: the consumer's high watermark for it is from
        #: before the pause (a paused partition is not fetched), so it says nothing until
        #: a fetch has surely come back (max_task_idle after the resume)
        self.resumed: dict[tuple[str, int], float] = {}
        self.max_idle_s = max_idle_s
        self.timeouts = 0

    def attach(self, stream: Any) -> None:
        """Read the agent's ``stream``. Its partitions stop fetching as ``regulate`` says, per
        partition, and never because the agent's queue is busy.

        Faust stops fetching a partition whose record finds the agent's queue (one for all
        of the task's topics) under pressure, and fetches it again only as the queue drains
        below 40 %. Under a steady load the topics that keep the queue busy go on being
        fetched, and a partition the task waits for was not fetched for as long as that
        lasted (until the watchdog read it again, 15 s): the task then went on without it,
        and its records became late. Kafka Streams pauses a partition for its own buffer only
        (``buffered.records.per.partition``), as ``regulate`` does; the queue still holds at
        most ``stream_buffer_maxsize`` records (a full queue makes the fetcher wait)."""
        self.stream = stream
        faust_fixes.no_queue_pressure(stream)

    def _fetch_again(self, topic: str, partition: int) -> None:
        """A partition waited for ``max_task_idle`` goes back into the consumer's fetch set
        if Faust took it out (its queue's pressure, a rebalance's leftovers); one this
        input paused has records buffered, so it is never waited for."""
        tp = TP(topic, partition)
        if faust_state.fetch(self.app.consumer, tp):
            log.info("%s: waited for %.0f s; fetching it again", tp, self.max_idle_s)

    def _lagging(self, topic: str, partition: int, next_offset: int | None) -> bool:
        """Whether Kafka holds records of the partition not delivered yet (the high
        watermark of the consumer's last fetch; Faust's position after its last seek when
        nothing was delivered since)."""
        since = self.resumed.get((topic, partition))
        if since is not None:
            if time.monotonic() - since < self.max_idle_s:
                return True  # waited for until its records come, or for max_task_idle
            del self.resumed[(topic, partition)]
        consumer: Any = self.app.consumer
        tp = TP(topic, partition)
        try:
            high = consumer.highwater(tp)
        except Exception:  # not assigned (any more): nothing to wait for
            return False
        if next_offset is None:
            next_offset = faust_state.base(consumer).get(tp)
        if high is None or high < 0:
            return True  # not fetched yet
        if next_offset is None or next_offset < high:
            return True
        if next_offset > high:
            self.batch_ends = True
        elif not self.batch_ends:
            return False  # caught up
        # Past the reported end of a broker that reports batches: the rest of the last
        # batch may be fetched and not delivered yet. Its true end is read once per
        # reported end; until then the partition is waited for.
        true_end = self.ends.known_end(topic, partition, high)
        if true_end is None:
            self.ends.probe_end(topic, partition, high)
            return True
        return next_offset < true_end

    def add(self, event: Any, items: list[tuple[int, Any]]) -> list[Any]:
        """Buffer one message's ``(ts, item)`` events; return the Faust events of messages
        that are done already (no event, nothing ahead of them on their partition)."""
        msg = event.message
        if msg.generation_id != self.app.consumer_generation_id:
            # fetched before a rebalance (the stream had it buffered): the consumer reads it
            # again from the committed offset
            return []
        self.resumed.pop((msg.topic, msg.partition), None)
        return [m.token for m in self.queues.add(msg.topic, msg.partition, msg.offset, items, event)]

    async def receive(
        self, events: list[Any], box: Any, items_of: Callable[[Any], Awaitable[list[tuple[int, Any]]]]
    ) -> None:
        """Buffer a batch of the stream's events, each message split by ``items_of``; a
        message done already is acknowledged with ``box`` (an :class:`streams.batch.Outbox`)."""
        for ev in events:
            for done in self.add(ev, await items_of(ev.message)):
                box.finish(self, done)

    def taken(self, box: Any) -> list[Any]:
        """The items that may be processed now, in order; the messages they complete are
        acknowledged with ``box`` once it is flushed."""
        taken = self.take()
        for t in taken:
            for done in t.done:
                box.finish(self, done.token)
        return [t.event for t in taken]

    def take(self) -> list[ordering.Taken]:
        now = time.monotonic()
        taken = self.queues.take(now)
        timeouts = sum(task.enforced for task in self.queues.tasks.values())
        if timeouts > self.timeouts:
            self.metrics.task_idle_timeouts.labels(self.name).inc(timeouts - self.timeouts)
        self.timeouts = timeouts
        self.metrics.task_buffered.labels(self.name).set(sum(map(self.queues.buffered, self.queues.tasks)))
        return taken

    def status(self, partition: int) -> dict[str, Any]:
        """What /healthz shows of one task."""
        return {
            "idle_seconds": round(self.queues.idle_seconds(partition, time.monotonic()), 3),
            "waiting_for": self.queues.waiting_for(partition),
            "buffered": self.queues.buffered(partition),
        }

    def has_buffered(self) -> bool:
        return any(self.queues.buffered(p) for p in self.queues.tasks)

    def regulate(self) -> None:
        """Pause the partitions that hold too much, resume those that no longer do."""
        consumer: Any = self.app.consumer
        if self.app.rebalancing or self.app.in_recovery or not consumer.flow_active:
            return
        full = self.queues.full()
        if full - self.paused:
            consumer.pause_partitions([TP(t, p) for t, p in full - self.paused])
        if self.paused - full:
            consumer.resume_partitions([TP(t, p) for t, p in self.paused - full])
            self.resumed.update(dict.fromkeys(self.paused - full, time.monotonic()))
        self.paused = full

    def forget(self) -> None:
        """After a rebalance the consumer reads again from the committed offsets."""
        self.queues.forget()
        self.paused.clear()
        self.resumed.clear()
        self.timeouts = 0
