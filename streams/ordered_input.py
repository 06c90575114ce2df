"""An agent's input read in event-time order per task: the Faust side of
:mod:`streams.ordering` (delivery, acknowledgement, pausing, what counts as lagging)."""

from __future__ import annotations

import asyncio
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

#: how long a record missing ahead of others is read again for before the gap is taken as real
GAP_WINDOW_S = 30.0
#: how often the partition is sought back to it meanwhile
GAP_RESEEK_S = 0.5


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
        backlog_ms: int = 0,
        idle_topics: tuple[str, ...] = (),
    ) -> None:
        """``backlog_ms`` and ``idle_topics``: in a backlog (records more than ``backlog_ms``
        behind the wall clock) these inputs are waited for up to ``max_idle_s`` when empty
        and caught up (:class:`streams.ordering.TaskQueues`)."""
        self.app = app
        self.ends = ends
        #: the broker reports a partition's end as its last batch's first offset + 1 (the
        #: embedded broker does; Kafka reports the true end): seen once a delivered offset
        #: passes the reported end
        self.batch_ends = False
        self.name = name
        self.queues = ordering.TaskQueues(
            topics,
            max_idle_s,
            self._lagging,
            self._fetch_again,
            backlog_ms=backlog_ms,
            idle_topics=frozenset(idle_topics),
        )
        self.metrics = metrics
        self.stream: Any = None
        self.paused: set[tuple[str, int]] = set()
        #: resumed, nothing delivered since: the consumer's high watermark for it is from
        #: before the pause (a paused partition is not fetched), so it says nothing until
        #: a fetch has surely come back (max_task_idle after the resume)
        self.resumed: dict[tuple[str, int], float] = {}
        self.max_idle_s = max_idle_s
        self.timeouts = 0
        #: the generation partitions were revoked in, until the next assignment
        self.revoked_in: int | None = None
        #: partitions with a record missing: (its offset, since when, last seek)
        self.gaps: dict[TP, tuple[int, float, float]] = {}
        self.reseeks: set[asyncio.Future[None]] = set()
        #: per partition: a record delivered before and never handled, to take when it comes again
        self.reclaimed: dict[TP, int] = {}

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
        next_offset = self._expected(tp, next_offset)
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
        generation = self.app.consumer_generation_id
        if msg.generation_id != generation or self.revoked_in == generation:
            # fetched before a rebalance (the stream had it buffered), or handed over between
            # the revocation and the new assignment, while its generation still looks
            # current: the consumer reads it again from the committed offset. Buffered, it
            # would stand in for that copy, which is then ignored as a duplicate, and its
            # acknowledgement (to the old assignment) never moved the commit: the
            # partition's commits stuck for good behind it.
            return []
        again = self.reclaimed.get(msg.tp) == msg.offset
        if again:
            del self.reclaimed[msg.tp]
        elif self._missing(msg.topic, msg.partition, msg.offset):
            return []
        self.resumed.pop((msg.topic, msg.partition), None)
        return [m.token for m in self.queues.add(msg.topic, msg.partition, msg.offset, items, event, again)]

    def reclaim(self, tp: TP, offset: int) -> None:
        """The record at ``offset`` was delivered, yet never handled nor acknowledged, and
        nothing of its partition is buffered (:class:`streams.watchdog.Watchdog`): the
        partition's commits are stuck behind it. Its next delivery is taken though the
        input went past it (if its effect is in the state already, its position says so and
        it is skipped; either way it is acknowledged and the commits go on)."""
        if tp.topic in self.queues.topics:
            log.warning(
                "%s: offset %d never reached the %s agent; taking it when it comes again", tp, offset, self.name
            )
            self.reclaimed[tp] = offset

    def _expected(self, tp: TP, delivered: int | None) -> int | None:
        """The next offset of ``tp`` this input needs: past what was ``delivered`` to it,
        and never behind the group's committed offset — every record before that was
        handled, here or by the worker that had the partition. Nothing delivered since the
        assignment: the committed offset, else where the assignment's seek put the
        partition. (A partition handed back by another worker can first be sought to its
        start, before that worker's last commit is known, and then to the commit: the
        records delivered in between made the input wait for, and read again, thousands
        of records the group had handled.)"""
        consumer = self.app.consumer
        committed = faust_state.committed_of(consumer, tp)
        if delivered is None:
            return committed if committed is not None else faust_state.base(consumer).get(tp)
        return delivered if committed is None else max(delivered, committed)

    def _missing(self, topic: str, partition: int, offset: int) -> bool:
        """Whether an earlier record of the partition never reached this input (dropped on
        its way through Faust's streams): the partition is read again from it, and what
        comes ahead of it is not buffered — taken in the wrong order, the positions in the
        stream clock would skip it as handled, and the commit would pass it. After
        ``GAP_WINDOW_S`` the gap is taken as real, with an error in the log."""
        tp = TP(topic, partition)
        want = self._expected(tp, self.queues.next_offset.get((topic, partition)))
        if want is None or offset <= want:
            self.gaps.pop(tp, None)
            return False
        now = time.monotonic()
        missing, since, last_seek = self.gaps.get(tp, (want, now, 0.0))
        if missing != want:
            since, last_seek = now, 0.0
        if now - since > GAP_WINDOW_S:
            log.error(
                "%s: offsets %d..%d never reached the %s agent; going on from %d",
                tp,
                want,
                offset - 1,
                self.name,
                offset,
            )
            self.gaps.pop(tp, None)
            return False
        if now - last_seek >= GAP_RESEEK_S:
            log.warning(
                "%s: the %s agent got offset %d before %d; reading again from %d", tp, self.name, offset, want, want
            )
            seek = asyncio.ensure_future(self.app.consumer.seek(tp, want))
            self.reseeks.add(seek)  # held until done: a task only weakly referenced may vanish
            seek.add_done_callback(self.reseeks.discard)
            last_seek = now
        self.gaps[tp] = (want, since, last_seek)
        return True

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

    def assigned(self) -> None:
        """Partitions were assigned (the generation may be the same as at the revocation
        when the group first forms)."""
        self.revoked_in = None

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
        """Partitions were revoked: the consumer reads again from the committed offsets
        once they are assigned; until then (:meth:`assigned`, or a new generation) nothing
        handed over is buffered."""
        self.revoked_in = self.app.consumer_generation_id
        self.queues.forget()
        self.gaps.clear()
        self.reclaimed.clear()
        self.paused.clear()
        self.resumed.clear()
        self.timeouts = 0
