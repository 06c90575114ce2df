"""Fixes to faust-streaming 0.15: never skip a message of a stream topic; recover tables
up to the true end of their changelogs (:func:`install_recovery_ends`); flush the worker's
own producer before a commit (:func:`flush_before_commit`); fetches that wait at most the
configured time (:func:`install_fetch_wait`). Reads of Faust's private state are in
:mod:`streams.faust_state`.

After a rebalance the consumer seeks to the committed offsets, but records fetched from a
later position can still arrive first. Faust then records the missing range as a "gap"
(meant for compacted or transactional topics), commits past it, and drops the records of
that range when they do arrive ("DROPPED MESSAGE ROFF"): those events are lost for good.
Seen on the embedded broker each time a worker took over partitions.

Here every stream topic (neither a changelog nor compacted) is read strictly in offset
order: a record ahead of the next expected offset is not delivered; the partition is
sought back to the expected offset and read again. Records behind it are duplicates and
are dropped. Compacted topics keep Faust's own handling, where gaps are legitimate.

A seek wins over every delivery that overlaps it. After a restart the fetcher hands over
records while Faust still seeks the streams to the committed offsets, and the streams
drop what they are handed meanwhile, counting on the seek to bring it again. A delivery
that ended during or after the seek must not move the expected offset, or those records
would be dropped once more as duplicates when they came again: never processed, the
group's commits stuck behind them for good (the worker stopped making progress after a
restart, about one restart in five on the embedded broker). The same goes for a delivery
cut short by a rebalance stopping the flow. And the client seeks only partitions the
group committed something for: a partition without a commit is sought to its first
offset here, else it would go on from wherever its fetch was.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from faust.tables import recovery as faust_recovery
from faust.transport import consumer as faust_consumer

log = logging.getLogger("ripple.worker")

#: how long a partition is read again from the expected offset before a gap is accepted as
#: real (records of an earlier fetch keep arriving first for a moment after a seek)
RESEEK_WINDOW_S = 30.0
RESEEK_INTERVAL_S = 0.2


def install(compacted_topics: tuple[str, ...]) -> None:
    cls: Any = faust_consumer.Consumer  # patched in place: Any keeps mypy from guarding the methods
    if getattr(cls, "_ripple_strict_offsets", False):
        return
    cls._ripple_strict_offsets = True
    cls._ripple_seeking = False  # True while perform_seek runs
    original_perform_seek = cls.perform_seek

    def expected(self: Any) -> dict[Any, int]:
        table: dict[Any, int] | None = getattr(self, "_ripple_next", None)
        if table is None:
            table = self._ripple_next = {}
        return table

    def seeks(self: Any, tp: Any) -> tuple[int, int]:
        """Seeks so far: of the whole assignment, and of ``tp`` alone."""
        per_tp: dict[Any, int] = getattr(self, "_ripple_tp_seeks", {})
        return int(getattr(self, "_ripple_seeks", 0)), per_tp.get(tp, 0)

    def bump(self: Any) -> None:
        self._ripple_seeks = getattr(self, "_ripple_seeks", 0) + 1

    async def perform_seek(self: Any) -> None:
        # no delivery that overlaps the seek may move the expected offsets: the streams
        # drop what they are handed meanwhile
        self._ripple_seeking = True
        bump(self)
        try:
            await _perform_seek(self)
        finally:
            self._ripple_seeking = False
            bump(self)

    async def _perform_seek(self: Any) -> None:
        await original_perform_seek(self)
        nxt = expected(self)
        nxt.clear()
        for tp, offset in self._read_offset.items():
            if offset is not None and offset >= 0:
                nxt[tp] = offset
        # a partition without a commit would go on from wherever its fetch was
        fresh = [tp for tp in self.assignment() if strict(tp.topic) and tp not in nxt]
        if fresh:
            firsts = dict(await self.earliest_offsets(*fresh))
            await self.seek_wait(firsts)
            nxt.update(firsts)
        self.__dict__["_ripple_base"] = dict(nxt)

    async def seek(self: Any, partition: Any, offset: int) -> None:
        # in the consumer's own thread, as Faust's seek_to_committed does: seeking from the
        # event loop's thread races the fetcher (aiokafka's fetched_records raised KeyError)
        await self.seek_wait({partition: offset})
        expected(self)[partition] = offset
        per_tp = self.__dict__.setdefault("_ripple_tp_seeks", {})
        per_tp[partition] = per_tp.get(partition, 0) + 1

    def strict(topic: str) -> bool:
        return not topic.endswith("-changelog") and topic not in compacted_topics

    async def _drain_messages(self: Any, fetcher: Any) -> None:  # pragma: no cover - exercised by the restart test
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        nxt = expected(self)
        reseeks: dict[Any, tuple[float, int, float]] = {}
        since_yield = 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(faust_consumer.CONSUMER_FETCHING)
                ait = getmany(timeout=1.0)
                await asyncio.sleep(0)
                if self.should_stop:
                    continue
                async for tp, message in ait:
                    since_yield += 1
                    if since_yield > 100:
                        await asyncio.sleep(0)
                        since_yield = 0
                    offset = message.offset
                    want = nxt.get(tp)
                    if want is not None and strict(tp.topic):
                        if offset < want:
                            continue  # already delivered
                        if offset > want:
                            now = time.monotonic()
                            first, at, last_seek = reseeks.get(tp, (now, -1, 0.0))
                            if at != want:
                                first, last_seek = now, 0.0
                            if now - first < RESEEK_WINDOW_S:
                                # the rest of an early batch arrives too: seek once per
                                # interval, not once per record, and keep trying for a while
                                if now - last_seek >= RESEEK_INTERVAL_S:
                                    log.warning(
                                        "%s: got offset %d, expected %d; reading again from %d",
                                        tp,
                                        offset,
                                        want,
                                        want,
                                    )
                                    await self.seek(tp, want)
                                    last_seek = now
                                reseeks[tp] = (first, want, last_seek)
                                continue
                            log.error(
                                "%s: offsets %d..%d never arrived; going on from %d", tp, want, offset - 1, offset
                            )
                            await self._add_gap(tp, want, offset - 1)
                    else:
                        r_offset = get_read_offset(tp)
                        if r_offset is not None and offset < r_offset:
                            continue
                        if r_offset and offset - r_offset > 1 and acks_enabled_for(message.topic):
                            await self._add_gap(tp, r_offset + 1, offset)
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    epoch = seeks(self, tp)
                    delivery = callback(message)
                    outcome = await self.wait_first(delivery, self.suspend_flow.wait())
                    if strict(tp.topic):
                        if delivery not in outcome.done:
                            # the flow stopped first (a rebalance): the record never reached
                            # its stream; it comes again from the expected offset
                            continue
                        if seeks(self, tp) != epoch or self._ripple_seeking:
                            # a seek overlapped the delivery: its position stands, and the
                            # record (which the stream may have dropped) comes again from there
                            continue
                    set_read_offset(tp, offset)
                    nxt[tp] = offset + 1
                self.diag.unset_flag(faust_consumer.CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        finally:
            self.diag.unset_flag(faust_consumer.CONSUMER_FETCHING)

    original_new_offset = cls._new_offset

    def _new_offset(self: Any, tp: Any) -> int | None:
        # Faust commits the first run of consecutive acknowledged offsets, checking only
        # that it starts at most one past the committed offset — which is the next offset
        # to read, not the last one read — and not at all before this process's first
        # commit: a record not acknowledged yet (dropped on its way to its stream, to be
        # read again) just before the run was committed past and lost for good (one
        # order of a chaos run). A stream topic's run must start at the next offset to
        # read; until it does, the record is missing and nothing is committed (the
        # watchdog reads it again).
        acked = self._acked.get(tp)
        if acked and strict(tp.topic):
            start = self._committed_offset.get(tp)
            if start is None:
                start = getattr(self, "_ripple_base", {}).get(tp)
            lowest = min(acked)
            gaps = self._gap.get(tp)
            if gaps:
                lowest = min(lowest, min(interval.begin for interval in gaps))
            if start is not None and lowest > start:
                return None
        result: int | None = original_new_offset(self, tp)
        return result

    original_revoked = cls.on_partitions_revoked

    async def on_partitions_revoked(self: Any, revoked: Any) -> None:
        # where a revoked partition was sought to says nothing of its next assignment: until
        # that assignment's seek, nothing is known of where it starts (an ordered input
        # that took the old position for the next expected offset read a partition again
        # from its first offset after a rebalance)
        base: dict[Any, int] = getattr(self, "_ripple_base", {})
        for tp in revoked:
            base.pop(tp, None)
        await original_revoked(self, revoked)

    cls.on_partitions_revoked = on_partitions_revoked
    cls.perform_seek = perform_seek
    cls.seek = seek
    cls._drain_messages = _drain_messages
    cls._new_offset = _new_offset


def no_queue_pressure(stream: Any) -> None:
    """Faust stops fetching a partition whose record finds ``stream``'s queue under pressure
    (see ``streams.ordered_input.OrderedInput.attach``): not for this stream. The queue
    still holds at most ``stream_buffer_maxsize`` records (a full queue makes the fetcher wait)."""
    stream.channel.queue.in_pressure_high_state = lambda _callback: False


def flush_before_commit(app: Any, flush: Callable[[], Awaitable[None]]) -> None:
    """Faust flushes its producer before it commits offsets: have it flush ``flush`` (the
    worker's own producer of outputs and changelog records) too, so no offset is committed
    before what its records produced is in the broker."""
    producer: Any = app.producer
    faust_flush = producer.flush

    async def flush_both() -> None:
        await faust_flush()
        await flush()

    producer.flush = flush_both


#: set by the app: end offsets that count every record of a partition's last batch
TrueEnds = Callable[[dict[Any, int]], Awaitable[dict[Any, int]]]


def install_recovery_ends(true_ends: TrueEnds) -> None:
    """Recover tables up to the true end of their changelogs.

    Faust reads a changelog until the broker's latest offset; the embedded broker answers
    with the offset of the last record batch plus one, so recovery could end before the
    rest of that batch — the newest state of its keys — was applied, and the worker would
    go on from older state than it had saved. Recovery asks ``true_ends`` instead (see
    ``streams.reference_reader.ReferenceReader.true_ends``); on Kafka the answer is the same."""
    cls: Any = faust_recovery.Recovery

    async def _build_highwaters(self: Any, consumer: Any, tps: Any, destination: Any, title: str) -> None:
        reported = await consumer.highwaters(*tps)
        known = {tp: value for tp, value in reported.items() if value is not None}
        ends = await true_ends(known)
        # Faust counts a partition recovered at its last offset (highwater - 1)
        highwaters = {tp: ends[tp] - 1 if tp in ends else -1 for tp in reported}
        self.log.info("Highwater for %s changelog partitions: %s", title, dict(sorted(highwaters.items())))
        destination.clear()
        destination.update(highwaters)

    cls._build_highwaters = _build_highwaters


def install_fetch_wait(max_wait_ms: int) -> None:
    """Let the worker's consumer wait at most ``max_wait_ms`` for records per fetch.

    Faust fixes the wait at 1.5 s. Kafka answers a fetch as soon as records arrive, so
    there the wait only bounds idle requests; the embedded broker answers only when the
    wait is over, so every hop between agents (a credit, a claim, a flood verdict) cost
    0.75 s on average, and the customer-chain settle rounds one such hop each."""
    from faust.transport.drivers import aiokafka as faust_aiokafka

    cls: Any = faust_aiokafka.AIOKafkaConsumerThread
    original = getattr(cls, "_ripple_create_worker_consumer", None) or cls._create_worker_consumer
    cls._ripple_create_worker_consumer = original

    def _create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = max_wait_ms  # read when the consumer starts its fetcher
        return consumer

    cls._create_worker_consumer = _create_worker_consumer
