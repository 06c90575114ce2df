"""A watchdog for Faust's flow control, and ``kill -USR1``'s dump of where every task waits.

Both read Faust's consumer only through :mod:`streams.faust_state`."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from streams import faust_state
from streams.metrics import WorkerMetrics

log = logging.getLogger("ripple.worker")

#: how long a partition with records waiting may deliver nothing before it is read again
STUCK_S = 15.0


def unhandled_from(app: Any, tp: Any, want: int | None) -> int | None:
    """The first offset of ``tp`` that was delivered but is neither acknowledged by a
    handler, nor in a handler's hands, nor waiting in a stream's queue; None if none."""
    if want is None:
        return None
    consumer = app.consumer
    committed = faust_state.committed_of(consumer, tp)
    first = committed if committed is not None else faust_state.base(consumer).get(tp)
    if first is None or first >= want:
        return None
    acked = faust_state.acked(consumer, tp)
    while first in acked:
        first += 1
    if first >= want:
        return None
    if faust_state.held_by_a_handler(consumer, tp):
        return None  # a handler has it
    if faust_state.queued(app, tp):
        return None  # waiting for its stream
    return int(first)


class Watchdog:
    """A partition with records waiting whose expected offset has not moved for
    ``STUCK_S`` is sought back to that offset and fetched again. Seen under rebalances and
    restarts: the fetcher idle while records of an assigned partition waited, never
    delivered (a partition left out of the fetch set, or records dropped while it was).
    Reading again from the expected offset repeats nothing: records behind it are dropped
    (:mod:`streams.faust_fixes`). Likewise a partition whose records were delivered but,
    for ``STUCK_S``, neither acknowledged nor held by a handler nor queued
    (:func:`unhandled_from`) is read again from the first such record: outputs are
    idempotent, so a false alarm costs only work."""

    def __init__(
        self,
        app: Any,
        topics: Iterable[str],
        end_offsets: Callable[[list[Any]], Awaitable[dict[Any, int]]],
        metrics: WorkerMetrics,
        reclaim: Callable[[Any, int], None] = lambda _tp, _offset: None,
    ) -> None:
        """``reclaim(tp, offset)``: told of a record delivered and never handled before it
        is read again (an ordered input that went past it would skip it as a duplicate)."""
        self.app = app
        self.reclaim = reclaim
        self.topics = frozenset(topics)
        self.end_offsets = end_offsets
        self.metrics = metrics
        self.stuck_since: dict[Any, tuple[int, float]] = {}  # partition -> (expected offset, since when)
        self.lost_since: dict[Any, tuple[int, int, float]] = {}  # partition -> (first unhandled, expected, since)

    async def check(self) -> None:
        app = self.app
        consumer: Any = app.consumer
        if app.in_recovery or not consumer.flow_active:
            self.stuck_since.clear()
            return
        expected = faust_state.expected(consumer)
        tps = [tp for tp in consumer.assignment() if tp.topic in self.topics and tp in expected]
        if not tps:
            return
        ends = await self.end_offsets(tps)
        now = time.monotonic()
        for tp in tps:
            want = expected.get(tp)
            lost = unhandled_from(app, tp, want)
            if lost is not None and want is not None:
                # delivered, yet never reached a handler (dropped by Faust's stream, e.g.
                # while its flow was off) and no seek brought it back
                since = self.lost_since.get(tp)
                if since is None or since[:2] != (lost, want):
                    self.lost_since[tp] = (lost, want, now)
                elif now - since[2] >= STUCK_S:
                    log.warning("%s: offsets from %d were delivered but never handled; reading again", tp, lost)
                    self.metrics.unstuck.labels(tp.topic).inc()
                    self.reclaim(tp, lost)
                    await consumer.seek(tp, lost)
                    self.lost_since.pop(tp, None)
                    continue
            else:
                self.lost_since.pop(tp, None)
            if want is None or ends[tp] <= want or tp in faust_state.paused(consumer):
                self.stuck_since.pop(tp, None)
                continue
            seen = self.stuck_since.get(tp)
            if seen is None or seen[0] != want:
                self.stuck_since[tp] = (want, now)
            elif now - seen[1] >= STUCK_S:
                idle = now - seen[1]
                log.warning("%s: no record delivered from offset %d for %.0f s; reading it again", tp, want, idle)
                self.metrics.unstuck.labels(tp.topic).inc()
                faust_state.fetch(consumer, tp)
                await consumer.seek(tp, want)
                self.stuck_since[tp] = (want, now)


def awaits(coro: Any) -> list[str]:
    """Where a coroutine waits: file:function:line of each frame down its await chain."""
    frames: list[str] = []
    while coro is not None and len(frames) < 40:
        for attr_name in ("cr_frame", "gi_frame", "ag_frame"):
            frame = getattr(coro, attr_name, None)
            if frame is not None:
                code = frame.f_code
                frames.append(f"{code.co_filename.rsplit('/', 1)[-1]}:{code.co_name}:{frame.f_lineno}")
                break
        nxt = None
        for attr_name in ("cr_await", "gi_yieldfrom", "ag_await"):
            nxt = nxt or getattr(coro, attr_name, None)
        coro = nxt.get_coro() if isinstance(nxt, asyncio.Task) else nxt
    return frames


def dump(app: Any, stage: dict[str, tuple[str, float, int]], processed: dict[tuple[str, int], int]) -> None:
    """Log where every agent and task waits and the consumer's view of each partition."""
    now = time.time()
    for name, (label, since, n) in sorted(stage.items()):
        log.warning("agent %s: %s for %.1f s (batch of %d)", name, label, now - since, n)
    for task in asyncio.all_tasks():
        log.warning("task %s: %s", task.get_name(), " -> ".join(awaits(task.get_coro())) or "(done)")
    consumer: Any = app.consumer
    log.warning("paused: %s", sorted(map(str, faust_state.paused(consumer))))
    log.warning("active: %s", sorted(map(str, faust_state.active(consumer) or ())))
    log.warning("buffered: %s", sorted(map(str, faust_state.buffered(consumer))))
    log.warning("read offsets: %s", {str(tp): o for tp, o in faust_state.read_offsets(consumer).items()})
    log.warning("expected: %s", {str(tp): o for tp, o in faust_state.expected(consumer).items()})
    log.warning("processed: %s", dict(sorted(processed.items())))
    # Faust commits a partition only up to its first offset not acked
    acked = {str(tp): r for tp, r in faust_state.acked_ranges(consumer).items()}
    log.warning("acked, not yet committed (first, last, count): %s", acked)
    log.warning("committed by this worker: %s", {str(tp): o for tp, o in faust_state.committed(consumer).items()})
    log.warning("assignment: %s", sorted(map(str, consumer.assignment())))


def serve(app: Any, unsticker: Watchdog, guarded: Any, processed: dict[tuple[str, int], int]) -> None:
    """Run the watchdog every 5 s, and dump where every task waits on ``kill -USR1``
    (``guarded``: the :class:`streams.batch.Guard` whose stages it shows)."""

    @app.timer(5.0)
    async def unstick_partitions() -> None:
        """Partitions Faust's flow control left undelivered or unhandled are read again."""
        await unsticker.check()

    @app.task
    async def dump_tasks_on_signal() -> None:
        """``kill -USR1`` a worker to log where every task waits (a stalled agent shows here)."""
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump, app, guarded.stage, processed)
